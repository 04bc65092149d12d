#!/usr/bin/python3
"""PyTorch's half of benchmarks/compare_pytorch: times forward and a full training step
(forward, backward, SGD with momentum and weight decay) of the torchvision model that
elastic's model of the same name mirrors, batch-norm statistics frozen as in elastic.

With a file of param names (written by model_step's elastic mode) it instead times the
step that trains only those params, every other one frozen with requires_grad (autograd then
skips what no trained param needs). It also counts the forward pass's multiply-adds (convs,
linears, attention matmuls) so that achieved FLOP rates can be printed.

MODEL is one of elastic's zoo models, or any other torchvision classifier (compared with its
ONNX export run by model_step).

usage: torch_step.py MODEL [batch] [input_size] [threads] [steps] [warmup] [trained_params_file]
                                                                      (prints one JSON object)

PEER_MEMORY_FORMAT=channels_last runs the model and its input in channels_last.
PEER_PRECISION=bf16 runs forward and loss under torch.autocast("cpu", dtype=torch.bfloat16)
(fp32 weights, gradients and optimizer), with ReLU6 as clamp(0, 6): PyTorch 1.13 has no bf16
backward of ReLU6 on the CPU.
"""
import contextlib
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from export_onnx import build as build_torchvision  # noqa: E402
from export_torchvision import build, relu6_as_clamp  # noqa: E402

ZOO = ("resnet50", "mobilenetv2", "vgg16", "vit")


def measure(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def forward_flops(model, x):
    """FLOPs (2 per multiply-add) of one forward pass, from the shapes seen by hooks."""
    total = [0]

    def conv(m, inp, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    def attention(m, inp, out):
        b, t, d = out[0].shape  # called with keyword arguments: the output has the query's shape
        total[0] += 2 * 2 * b * t * t * d  # scores and weighted sum
        total[0] += 2 * b * t * d * 3 * d  # packed input projection (out_proj is a Linear, hooked)

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, torch.nn.MultiheadAttention):
            hooks.append(m.register_forward_hook(attention))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total[0]


def main():
    name = sys.argv[1]
    trained = None
    if len(sys.argv) > 7:
        with open(sys.argv[7]) as f:
            trained = {line.strip() for line in f if line.strip()}
    defaults = ["4", "224", "2", "10", "3"]
    batch, size, threads, steps, warmup = (int(v) for v in (sys.argv[2:7] + defaults[len(sys.argv[2:7]):]))
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    if name in ZOO:
        model = build(name, 1000, size)
        model.train()
    else:  # any torchvision classifier, as scripts/export_onnx.py exports it for elastic:
        model = build_torchvision(name, 1000)  # dropout and stochastic depth the identity
        model.eval()
    for m in model.modules():  # frozen batch-norm statistics, trainable gamma/beta
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    if os.environ.get("PEER_MEMORY_FORMAT") == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if trained is not None:
        names = dict(model.named_parameters())
        unknown = trained - set(names)
        if unknown:
            sys.exit(f"torch_step: {len(unknown)} selected params are not in torchvision's {name}: {sorted(unknown)[:5]}")
        for n, p in names.items():
            p.requires_grad_(n in trained)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    bf16 = os.environ.get("PEER_PRECISION") == "bf16"
    if bf16:
        relu6_as_clamp(model)

    def autocast():
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def forward():
        with torch.no_grad(), autocast():
            model(x)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    if trained is not None:
        out = {"model": name, "trained_params": len(params), "elastic_step": measure(train_step, warmup, steps)}
        print(json.dumps(out))
        return
    out = {"model": name, "batch": batch, "input_size": size, "threads": threads,
           "forward_flops": forward_flops(model, x),
           "forward": measure(forward, warmup, steps), "train_step": measure(train_step, warmup, steps)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
