#!/usr/bin/python3
"""ResNet50 imported from ONNX against the built-in resnet50: the same weights and batch
through `elastic step` give the same logits, loss and param gradients (within 1e-6
relative L2; the same layers in the same order make them bit for bit equal). And a
default (eval-mode, batch norm folded) export imports with PyTorch's logits.

usage: onnx_equal_test.py ELASTIC_BINARY
"""
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import export_onnx  # noqa: E402
from export_torchvision import read_safetensors, write_safetensors  # noqa: E402


def main():
    binary = sys.argv[1]
    batch, classes, size = 2, 6, 64
    torch.manual_seed(7)
    model = export_onnx.build("resnet50", classes)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    with tempfile.TemporaryDirectory() as tmp:
        weights, inputs, onnx_file = (os.path.join(tmp, f) for f in ("w.safetensors", "x.safetensors", "r.onnx"))
        write_safetensors(weights, model.state_dict())
        write_safetensors(inputs, {"images": torch.randn(batch, 3, size, size),
                                   "labels": torch.randint(0, classes, (batch,))})
        export_onnx.export(model, onnx_file, batch, size)
        outs = {}
        for name in ("resnet50", onnx_file):
            out = os.path.join(tmp, f"o{len(outs)}.safetensors")
            cmd = [binary, "step", "--model_name", name, "--num_classes", str(classes), "--input_size", str(size),
                   "--weights", weights, "--inputs", inputs, "--out", out, "--threads", "2"]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                print(run.stdout, run.stderr)
                print(f"FAIL {' '.join(cmd)} exited with {run.returncode}")
                return 1
            outs[name] = read_safetensors(out)
    a, b = outs["resnet50"], outs[onnx_file]
    failures = []
    if sorted(a) != sorted(b):
        failures.append(f"different tensors: {sorted(set(a) ^ set(b))}")
    identical, worst = 0, 0.0
    for k in sorted(set(a) & set(b)):
        x, y = a[k].double(), b[k].double()
        if x.shape != y.shape:
            failures.append(f"{k}: shapes {tuple(x.shape)} and {tuple(y.shape)}")
            continue
        identical += bool(torch.equal(x, y))
        e = ((x - y).norm() / max(x.norm().item(), 1e-30)).item()
        worst = max(worst, e)
        if not e <= 1e-6:
            failures.append(f"{k}: relative L2 {e:.3g} > 1e-6")
    if a["logits"].abs().max().item() == 0:
        failures.append("logits are all zero: the comparison would be vacuous")
    print(f"resnet50 built in vs imported from ONNX: {len(a)} tensors, {identical} bit for bit equal, "
          f"worst relative L2 {worst:.3g}")
    failures += eval_mode_export(binary)
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


def eval_mode_export(binary):
    """A model exported the default way (eval mode: batch norm folded into the convolutions,
    parameters under generated names) imports too; `elastic step` without --weights uses the
    file's weights, and its logits are PyTorch's (float64, relative L2 <= 1e-4)."""
    torch.manual_seed(3)
    model = export_onnx.build("resnet18", 4).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    images = torch.randn(2, 3, 32, 32)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file, inputs, out = (os.path.join(tmp, f) for f in ("folded.onnx", "x.safetensors", "o.safetensors"))
        torch.onnx.export(model, images, onnx_file, opset_version=14, input_names=["images"], output_names=["logits"])
        write_safetensors(inputs, {"images": images, "labels": torch.zeros(2, dtype=torch.int64)})
        cmd = [binary, "step", "--model_name", onnx_file, "--num_classes", "4", "--input_size", "32", "--inputs",
               inputs, "--out", out, "--threads", "2"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            return [f"eval-mode export: {' '.join(cmd)} exited with {run.returncode}: {run.stderr[-500:]}"]
        got = read_safetensors(out)["logits"].double()
    ref = model.double()(images.double()).detach()
    e = ((got - ref).norm() / ref.norm()).item()
    print(f"resnet18 exported in eval mode (batch norm folded): logits relative L2 {e:.3g}")
    return [] if e <= 1e-4 else [f"eval-mode export: logits relative L2 {e:.3g} > 1e-4"]


if __name__ == "__main__":
    sys.exit(main())
