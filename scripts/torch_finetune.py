#!/usr/bin/python3
"""The fine-tuning job of `elastic train`, written as a plain PyTorch loop: the peer of
benchmarks/compare_end_to_end, and the reference of its step check.

What it shares with elastic, point by point:
  - the model: scripts/export_torchvision.build, whose state-dict names are elastic's, so the same
    safetensors backbone loads into both;
  - the data: Fashion-MNIST's IDX files, classes kept and relabelled in order, gray replicated to
    RGB, resized bilinearly (half-pixel centers, no antialiasing) and normalized with ImageNet's
    mean and deviation, as elastic's loader does;
  - the update: SGDW as the reference builds it (momentum 0.9, decoupled decay weight_decay * lr_t
    applied before the momentum step, lr_t a cosine to 0 over the run's steps), written out by
    hand: PyTorch's own `weight_decay` is an L2 term on the gradient, which is not the same;
  - frozen batch-norm statistics (the batch-norm layers in eval mode, their scale and shift
    trained), the head's dropout active in training.

check_steps(...) runs `elastic step --steps N` and the same N steps here in float64, from the same
weights on the same batches with dropout off, and compares the losses and each param's change.
"""
import argparse
import copy
import gzip
import json
import math
import os
import struct
import subprocess
import tempfile
import time

import torch

from export_torchvision import build, read_safetensors, relu6_as_clamp, write_safetensors

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def idx_file(data_dir, stem):
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    raise SystemExit(f"{data_dir}: no {stem}[.gz]")


def fashion_mnist(data_dir, split, classes, size):
    """(images N x 3 x size x size float32, normalized; labels N int64) of a split ("train" or
    "t10k"), keeping `classes` relabelled 0.. in their order."""
    images = read_idx(idx_file(data_dir, f"{split}-images-idx3-ubyte"))
    labels = read_idx(idx_file(data_dir, f"{split}-labels-idx1-ubyte")).long()
    keep = torch.zeros_like(labels, dtype=torch.bool)
    relabel = torch.full((256,), -1, dtype=torch.long)
    for i, c in enumerate(classes):
        keep |= labels == c
        relabel[c] = i
    x = images[keep].float().unsqueeze(1).expand(-1, 3, -1, -1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x / 255 - MEAN) / STD).contiguous(), relabel[labels[keep]]


def freeze_batch_norm(model):
    """Training mode with batch-norm statistics frozen (their layers in eval mode)."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return model


def cosine(lr, step, total):
    t = min(max(step, 0), total) / max(total, 1)
    return lr * 0.5 * (1 + math.cos(math.pi * t))


class SGDW:
    """SGD with momentum 0.9 and decoupled weight decay, as elastic's SGDW:
    v = m v - lr_t g;  w = w - weight_decay lr_t w + v."""

    def __init__(self, params, weight_decay=5e-4, momentum=0.9):
        self.params = [p for p in params if p.requires_grad]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.wd, self.m = weight_decay, momentum

    @torch.no_grad()
    def step(self, lr):
        for p, v in zip(self.params, self.v):
            v.mul_(self.m).add_(p.grad, alpha=-lr)
            p.mul_(1 - self.wd * lr).add_(v)
            p.grad = None


def load_backbone(model, path):
    """The params and buffers of a safetensors file that `model` has with the same shapes (the
    head of another class count is left as initialized); returns the names loaded."""
    state = model.state_dict()
    loaded = []
    for name, t in read_safetensors(path).items():
        if name in state and tuple(state[name].shape) == tuple(t.shape):
            state[name].copy_(t.to(state[name].dtype))
            loaded.append(name)
    return loaded


def rel_l2(a, b):
    a, b = a.double(), b.double()
    d = b.norm().item()
    return (a - b).norm().item() / d if d > 0 else (a - b).norm().item()


def torch_steps(model, images, labels, steps, lr, weight_decay, dtype, autocast=False):
    """`steps` training steps of every param of a copy of `model` in `dtype`, dropout off, on
    `images`/`labels` split into `steps` batches, the cosine over `steps` steps; with `autocast`,
    the forward under torch.autocast("cpu", dtype=torch.bfloat16) (float32 weights, ReLU6 as the
    same clamp: PyTorch 1.13 has no bf16 backward of ReLU6). Returns (losses, {param: its change,
    float64})."""
    model = copy.deepcopy(model).to(dtype)
    if autocast:
        relu6_as_clamp(model)
    for m in model.modules():  # dropout off, as in `elastic step --steps`
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    freeze_batch_norm(model)
    start = {k: p.detach().double().clone() for k, p in model.named_parameters()}
    opt = SGDW(model.parameters(), weight_decay)
    batch = images.shape[0] // steps
    losses = []
    for k in range(steps):
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(images[k * batch:(k + 1) * batch].to(dtype))
            loss = torch.nn.functional.cross_entropy(logits, labels[k * batch:(k + 1) * batch])
        loss.backward()
        opt.step(cosine(lr, k, steps))
        losses.append(loss.item())
    return losses, {k: p.detach().double() - start[k] for k, p in model.named_parameters()}


def check_steps(elastic, model_name, num_classes, size, model, images, labels, steps, lr, weight_decay, threads=2,
                precision="fp32"):
    """`steps` training steps of every param in elastic (`elastic step --steps`) and in PyTorch, from
    `model`'s weights, on `images`/`labels` split into `steps` batches, dropout off, the cosine over
    `steps` steps. Both are measured against PyTorch in float64, the exact computation; PyTorch in
    float32 is the yardstick: a param changes by little against its size over a few steps, so
    float32's rounding of the weights alone puts a floor under the change's error (1.2e-3 for
    MobileNetV2's late 1x1 convolutions at lr 0.05, in PyTorch as in elastic). With precision
    "bf16", elastic trains in bf16 and the yardstick is PyTorch under bf16 autocast.
    Returns {"losses": [(elastic, float64, yardstick)], "params": [(name, elastic's error, the
    yardstick's)]}."""
    with tempfile.TemporaryDirectory() as tmp:
        w, x, out = (os.path.join(tmp, f) for f in ("w.safetensors", "x.safetensors", "o.safetensors"))
        write_safetensors(w, {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")})
        write_safetensors(x, {"images": images, "labels": labels})
        cmd = [elastic, "step", "--model_name", model_name, "--num_classes", str(num_classes), "--input_size",
               str(size), "--weights", w, "--inputs", x, "--out", out, "--threads", str(threads), "--steps",
               str(steps), "--optimizer", "sgd", "--learning_rate", str(lr), "--weight_decay", str(weight_decay),
               "--precision", precision]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
        got = read_safetensors(out)
    exact_losses, exact = torch_steps(model, images, labels, steps, lr, weight_decay, torch.float64)
    yard_losses, yard = torch_steps(model, images, labels, steps, lr, weight_decay, torch.float32,
                                    autocast=precision == "bf16")
    start = dict(model.named_parameters())
    params = []
    for name, change in exact.items():
        ours = got[f"param/{name}"].reshape(change.shape).double() - start[name].detach().double()
        params.append((name, rel_l2(ours, change), rel_l2(yard[name], change)))
    ours_losses = [float(v) for v in got["loss"].reshape(-1)]
    if len(ours_losses) != steps:
        raise SystemExit(f"expected {steps} losses from `elastic step`, got {len(ours_losses)}")
    return {"losses": list(zip(ours_losses, exact_losses, yard_losses)), "params": params}


def build_model(model_name, num_classes, size, memory_format="default"):
    model = build(model_name, num_classes, size)
    if memory_format == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return model


def head_names(model_name):
    """The state-dict prefix of the head elastic builds anew for fine-tuning."""
    return {"mobilenetv2": "classifier.", "resnet50": "fc.", "vgg16": "head.", "vit": "heads."}[model_name]


def parse_classes(text):
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(c) for c in text.split(",")]


def step_time(model, images, labels, batch, steps):
    """Seconds per training step (SGDW) after 3 warm-up steps, on the first batches of `images`."""
    opt = SGDW(model.parameters())
    t0 = 0.0
    for k in range(3 + steps):
        if k == 3:
            t0 = time.perf_counter()
        i = (k * batch) % (images.shape[0] - batch)
        loss = torch.nn.functional.cross_entropy(model(images[i:i + batch]), labels[i:i + batch])
        loss.backward()
        opt.step(1e-6)
    return (time.perf_counter() - t0) / steps


def train(args):
    """The fine-tuning job; writes a JSON of per-epoch training time (evaluation excluded) and
    test accuracy."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    classes = parse_classes(args.classes)
    x, y = fashion_mnist(args.data_dir, "train", classes, args.input_size)
    xt, yt = fashion_mnist(args.data_dir, "t10k", classes, args.input_size)
    model = build_model(args.model_name, len(classes), args.input_size)
    head = head_names(args.model_name)
    loaded = [n for n in load_backbone(model, args.weights) if not n.startswith(head)]
    fresh = build_model(args.model_name, len(classes), args.input_size)  # the head: torch's own initialization
    with torch.no_grad():
        for name, t in fresh.state_dict().items():
            if name.startswith(head):
                model.state_dict()[name].copy_(t)
    fmt = args.memory_format
    if fmt == "best":  # the faster of the two formats on this machine, timed on 10 steps each
        times = {}
        for f in ("default", "channels_last"):
            m = copy.deepcopy(model)
            xm = x[:20 * args.batch_size]
            if f == "channels_last":
                m, xm = m.to(memory_format=torch.channels_last), xm.contiguous(memory_format=torch.channels_last)
            times[f] = step_time(freeze_batch_norm(m), xm, y, args.batch_size, 10)
        fmt = min(times, key=times.get)
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    xt = xt.contiguous(memory_format=memory_format)
    per_epoch = x.shape[0] // args.batch_size  # drop_last, as elastic's training loader
    if args.steps_per_epoch:
        per_epoch = min(per_epoch, args.steps_per_epoch)
    total = per_epoch * args.num_epochs
    opt = SGDW(model.parameters(), args.weight_decay)
    g = torch.Generator().manual_seed(args.seed)
    epochs, train_s, step = [], 0.0, 0
    for epoch in range(args.num_epochs):
        freeze_batch_norm(model)
        order = torch.randperm(x.shape[0], generator=g)
        t0 = time.perf_counter()
        loss_sum = 0.0
        for b in range(per_epoch):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[idx].contiguous(memory_format=memory_format)), y[idx])
            loss.backward()
            opt.step(cosine(args.learning_rate, step, total))
            loss_sum += loss.item()
            step += 1
        train_s += time.perf_counter() - t0
        model.eval()
        correct = 0
        with torch.no_grad():
            for b in range(0, xt.shape[0], 256):
                correct += (model(xt[b:b + 256]).argmax(1) == yt[b:b + 256]).sum().item()
        epochs.append({"epoch": epoch + 1, "train_time": train_s, "train_loss": loss_sum / per_epoch,
                       "test_accuracy": 100.0 * correct / xt.shape[0]})
        print(f"torch epoch {epoch + 1}: {train_s:.1f} s, test accuracy {epochs[-1]['test_accuracy']:.2f}%",
              flush=True)
    with open(args.out, "w") as f:
        json.dump({"memory_format": fmt, "threads": torch.get_num_threads(), "loaded": len(loaded),
                   "steps": step, "epochs": epochs}, f)


def main():
    p = argparse.ArgumentParser(description="the fine-tuning job in PyTorch (see the module's text)")
    p.add_argument("--model_name", default="mobilenetv2")
    p.add_argument("--input_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--classes", default="5-9")
    p.add_argument("--data_dir", default=FASHION_MNIST)
    p.add_argument("--weights", required=True, help="safetensors backbone (elastic's names); the head is new")
    p.add_argument("--num_epochs", type=int, default=3)
    p.add_argument("--steps_per_epoch", type=int, default=0)
    p.add_argument("--learning_rate", type=float, default=0.003)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--memory_format", choices=["default", "channels_last", "best"], default="best")
    p.add_argument("--out", required=True)
    train(p.parse_args())


if __name__ == "__main__":
    main()
