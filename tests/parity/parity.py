#!/usr/bin/python3
"""Numerical parity of `elastic step` with PyTorch (float64 reference).

usage: parity.py ELASTIC_BINARY MODEL_NAME BATCH CLASSES INPUT_SIZE [fp32|bf16]

MODEL_NAME is a zoo model (resnet50, vgg16, mobilenetv2, vit) or onnx:NAME[@OPSET] for a
torchvision classifier NAME exported by scripts/export_onnx.py (at opset OPSET, default 14) and
imported by elastic from that file.

Builds the torchvision model with random weights (batch-norm statistics and affine
params randomized too, so frozen batch norm is not an identity), exports them, runs
one step in elastic and in torch (model.eval(), float64), and compares logits, loss
and every param gradient by relative L2 error.

With bf16, elastic runs `step --precision bf16` and torch runs the same step a second
time in float32 under torch.autocast("cpu", dtype=torch.bfloat16); both are measured
against the float64 step. Ours must be as close as PyTorch's own bf16: logits and loss
within max(1.5x PyTorch's error, 1e-2); over the param gradients, the median error
within 1.5x PyTorch's median, and every gradient within max(5e-2, 1.5x PyTorch's error on
it) (on the random-weight ResNet50 and VGG16 here PyTorch's own bf16 gradients are up to
0.6 and 0.3 from float64, so 5e-2 alone is out of anyone's reach). Ours must also be
bf16-sized: at least 0.1x PyTorch bf16's error on the logits and the median gradient, so that
a step which ran in fp32 fails. Elastic refusing bf16 skips the test (exit 77) only where the
CPU's flags lack avx512_bf16 or oneDNN is capped below it (DNNL_MAX_CPU_ISA). PyTorch 1.13 has no bf16 backward of ReLU6 on the CPU, so
its bf16 MobileNetV2 runs ReLU6 as clamp(0, 6), the same function.
"""
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import export_onnx  # noqa: E402
from export_torchvision import build, read_safetensors, relu6_as_clamp, write_safetensors  # noqa: E402
from torch_finetune import rel_l2  # noqa: E402

LOGITS_TOL, GRAD_TOL = 1e-4, 1e-3
BF16_FLOOR, BF16_RATIO, BF16_GRAD_MAX = 1e-2, 1.5, 5e-2
# Ours at least this share of PyTorch bf16's error on the logits and the median gradient: a
# step that ignored --precision and ran in fp32 would be about 1e-6 from float64 (1e-4 of it).
BF16_SIZED = 0.1


def main():
    binary, model_name = sys.argv[1], sys.argv[2]
    batch, classes, size = (int(v) for v in sys.argv[3:6])
    precision = sys.argv[6] if len(sys.argv) > 6 else "fp32"
    torch.manual_seed(1234)
    onnx_name = model_name[5:] if model_name.startswith("onnx:") else None
    opset = 14
    if onnx_name and "@" in onnx_name:
        onnx_name, opset = onnx_name.split("@")[0], int(onnx_name.split("@")[1])
    model = export_onnx.build(onnx_name, classes) if onnx_name else build(model_name, classes, size)
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
        elastic_model = model_name
        if onnx_name:
            elastic_model = os.path.join(tmp, onnx_name + ".onnx")
            export_onnx.export(model, elastic_model, batch, size, opset)
        cmd = [binary, "step", "--model_name", elastic_model, "--num_classes", str(classes), "--input_size", str(size),
               "--weights", weights, "--inputs", inputs, "--out", out, "--threads", "2", "--precision", precision]
        run = subprocess.run(cmd, capture_output=True, text=True)
        sys.stdout.write(run.stdout)
        sys.stderr.write(run.stderr)
        if precision == "bf16" and run.returncode == 2 and "avx512_bf16" in run.stderr:
            if cpu_has_bf16() and not isa_capped():
                print("FAIL elastic refused bf16 on a CPU whose flags include avx512_bf16")
                return 1
            print("skipped: this CPU has no native bf16")
            return 77
        if run.returncode != 0:
            print(f"FAIL {' '.join(cmd)} exited with {run.returncode}")
            return 1
        got = read_safetensors(out)

    torch_bf16 = None
    if precision == "bf16":
        torch_bf16 = autocast_step(model, images, labels)
    model = model.double().eval()
    logits = model(images.double())
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    if torch_bf16 is not None:
        return compare_bf16(model_name, got, torch_bf16, model, logits.detach(), loss.detach())

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
    return verdict(failures)


def cpu_has_bf16():
    """Whether Linux lists avx512_bf16 among the CPU's flags."""
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_bf16" in f.read().split()
    except OSError:
        return False


def isa_capped():
    """Whether oneDNN is told to stay below the CPU's instruction set (its environment variables)."""
    return "DNNL_MAX_CPU_ISA" in os.environ or "ONEDNN_MAX_CPU_ISA" in os.environ


def verdict(failures):
    for f in failures[:40]:
        print("FAIL", f)
    return 1 if failures else 0


def autocast_step(model, images, labels):
    """One step of the float32 model under CPU bf16 autocast: logits, loss, param gradients."""
    relu6_as_clamp(model)
    model = model.float().eval()
    model.zero_grad()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    out = {"logits": logits.detach().float(), "loss": loss.detach().float().reshape(())}
    for name, p in model.named_parameters():
        out[f"grad/{name}"] = p.grad.detach().clone()
    model.zero_grad()
    return out


def compare_bf16(model_name, got, theirs, model, logits, loss):
    failures = []
    report = []
    if logits.abs().max().item() == 0:
        failures.append("reference logits are all zero: the comparison would be vacuous")
    params = dict(model.named_parameters())
    extra = [k[5:] for k in got if k.startswith("grad/") and k[5:] not in params]
    if extra:
        failures.append(f"params in elastic's output that the model does not have: {extra}")
    for name, ref in (("logits", logits), ("loss", loss)):
        ours_e = rel_l2(got[name].reshape(ref.shape), ref)
        torch_e = rel_l2(theirs[name].reshape(ref.shape), ref)
        tol = max(BF16_RATIO * torch_e, BF16_FLOOR)
        report.append(f"{name} {ours_e:.3g} (torch bf16 {torch_e:.3g})")
        if not ours_e <= tol:
            failures.append(f"{name}: relative L2 error {ours_e:.3g} > {tol:.3g}")
        # The step really ran in bf16: an fp32 step's logits are about 1e-6 from float64's.
        if name == "logits" and not ours_e >= BF16_SIZED * torch_e:
            failures.append(f"logits: error {ours_e:.3g} is not bf16-sized (torch bf16 {torch_e:.3g}): "
                            "the step did not compute in bf16")
    ours_g, torch_g = [], []
    for name, p in model.named_parameters():
        key = f"grad/{name}"
        if key not in got:
            failures.append(f"{key}: missing in elastic's output")
            continue
        e = rel_l2(got[key].reshape(p.grad.shape), p.grad)
        ours_g.append(e)
        torch_g.append(rel_l2(theirs[key], p.grad))
        tol = max(BF16_GRAD_MAX, BF16_RATIO * torch_g[-1])
        if not e <= tol:
            failures.append(f"{key}: relative L2 error {e:.3g} > {tol:.3g} (torch bf16 {torch_g[-1]:.3g})")
    ours_med = float(torch.tensor(ours_g).median())
    torch_med = float(torch.tensor(torch_g).median())
    if not ours_med <= BF16_RATIO * torch_med:
        failures.append(f"median gradient error {ours_med:.3g} > {BF16_RATIO}x torch bf16's {torch_med:.3g}")
    if not ours_med >= BF16_SIZED * torch_med:
        failures.append(f"median gradient error {ours_med:.3g} is not bf16-sized (torch bf16 {torch_med:.3g})")
    print(f"{model_name} bf16 against float64: {', '.join(report)}; gradients of {len(ours_g)} params: median "
          f"{ours_med:.3g} (torch bf16 {torch_med:.3g}), max {max(ours_g):.3g} (torch bf16 {max(torch_g):.3g})")
    return verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
