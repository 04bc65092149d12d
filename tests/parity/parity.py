#!/usr/bin/python3
"""Numerical parity of `elastic step` with PyTorch (float64 reference).

usage: parity.py ELASTIC_BINARY MODEL_NAME BATCH CLASSES INPUT_SIZE

Builds the torchvision model with random weights (batch-norm statistics and affine
params randomized too, so frozen batch norm is not an identity), exports them, runs
one step in elastic and in torch (model.eval(), float64), and compares logits, loss
and every param gradient by relative L2 error.
"""
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
from export_torchvision import build, read_safetensors, write_safetensors  # noqa: E402

LOGITS_TOL, GRAD_TOL = 1e-4, 1e-3


def rel_l2(ours, ref):
    ref = ref.double()
    denom = ref.norm().item()
    err = (ours.double() - ref).norm().item()
    return err / denom if denom > 0 else err


def main():
    binary, model_name = sys.argv[1], sys.argv[2]
    batch, classes, size = (int(v) for v in sys.argv[3:6])
    torch.manual_seed(1234)
    model = build(model_name, classes, size)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
        for name, p in model.named_parameters():
            if name in ("class_token", "encoder.pos_embedding"):
                p.normal_(0, 0.5)
            elif isinstance(p, torch.nn.Parameter) and not p.abs().sum():
                # Zero-initialized tensors (ViT's head) would zero every gradient below them.
                p.uniform_(-0.1, 0.1)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, classes, (batch,))
    with tempfile.TemporaryDirectory() as tmp:
        weights, inputs, out = (os.path.join(tmp, f) for f in ("w.safetensors", "x.safetensors", "o.safetensors"))
        write_safetensors(weights, model.state_dict())
        write_safetensors(inputs, {"images": images, "labels": labels})
        cmd = [binary, "step", "--model_name", model_name, "--num_classes", str(classes), "--input_size", str(size),
               "--weights", weights, "--inputs", inputs, "--out", out, "--threads", "2"]
        subprocess.run(cmd, check=True)
        got = read_safetensors(out)

    model = model.double().eval()
    logits = model(images.double())
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()

    failures = []
    if logits.detach().abs().max().item() == 0:
        failures.append("reference logits are all zero: the comparison would be vacuous")
    checks = [("logits", got["logits"], logits.detach(), LOGITS_TOL),
              ("loss", got["loss"].reshape(()), loss.detach(), LOGITS_TOL)]
    params = dict(model.named_parameters())
    missing = [n for n in params if f"grad/{n}" not in got]
    extra = [k[5:] for k in got if k.startswith("grad/") and k[5:] not in params]
    if missing or extra:
        failures.append(f"param sets differ: missing in elastic {missing}, extra in elastic {extra}")
    for name, p in params.items():
        if f"grad/{name}" in got:
            checks.append((f"grad/{name}", got[f"grad/{name}"], p.grad, GRAD_TOL))
    worst = 0.0
    for name, ours, ref, tol in checks:
        if tuple(ours.shape) != tuple(ref.shape):
            failures.append(f"{name}: shape {tuple(ours.shape)} vs torch {tuple(ref.shape)}")
            continue
        e = rel_l2(ours, ref)
        worst = max(worst, e / tol)
        if not e <= tol:
            failures.append(f"{name}: relative L2 error {e:.3g} > {tol:g}")
    print(f"{model_name} batch {batch} classes {classes} input {size}: {len(checks)} tensors compared, "
          f"worst error/tolerance {worst:.3g}; logits error {rel_l2(got['logits'], logits.detach()):.3g}")
    for f in failures[:40]:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
