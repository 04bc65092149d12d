#!/usr/bin/python3
"""Training steps of `elastic step --steps` against PyTorch: the update rule of the fine-tuning job
(SGDW with the reference's decoupled decay, cosine learning rate, frozen batch-norm statistics,
every param trained) from the same weights on the same batches, dropout off.

usage: train_steps_test.py ELASTIC_BINARY MODEL_NAME BATCH STEPS CLASSES INPUT_SIZE LR [fp32|bf16]

Passes when each step's loss is within 1e-4 (relative) of PyTorch's in float64, and each param's
change over the steps is within max(1e-3, 1.5x PyTorch float32's error) of float64's (relative
L2): float32 weights round the change of a param that moves little, in PyTorch as here.

With bf16, elastic trains with --precision bf16 and PyTorch's yardstick runs under bf16
autocast; the bounds are those of tests/parity's bf16 step, over whole training steps: each
loss within max(1.5x the yardstick's error, 1e-2) of float64's (relative); each param's change
within max(5e-2, 1.5x the yardstick's error); the median change error within 1.5x the
yardstick's median and at least 0.1x of it (bf16-sized: steps run in fp32 would be far closer).
"""
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
from export_torchvision import write_safetensors  # noqa: E402
from torch_finetune import build_model, check_steps  # noqa: E402
from parity import cpu_has_bf16, isa_capped  # noqa: E402


def main():
    binary, model_name = sys.argv[1], sys.argv[2]
    batch, steps, classes, size = (int(v) for v in sys.argv[3:7])
    lr = float(sys.argv[7])
    precision = sys.argv[8] if len(sys.argv) > 8 else "fp32"
    if precision == "bf16" and (not cpu_has_bf16() or isa_capped()):
        print("skipped: no native bf16 here (the CPU's flags, or oneDNN capped below it)")
        return 77
    torch.manual_seed(7)
    torch.set_num_threads(2)
    model = build_model(model_name, classes, size)
    images = torch.randn(batch * steps, 3, size, size)
    labels = torch.randint(0, classes, (batch * steps,))
    # Frozen statistics as a pretrained model has them, the images' own (with torchvision's
    # initialization and unit statistics, ResNet50's activations grow through its blocks and the
    # first step diverges).
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None  # a cumulative average: the statistics of the batches seen
        model.train()(images)
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):  # no channel amplified more than 10x
                mod.running_var.clamp_(min=0.01)
    model.eval()
    r = check_steps(binary, model_name, classes, size, model, images, labels, steps, lr, 5e-4, precision=precision)
    failures = []
    for k, (ours, exact, yard) in enumerate(r["losses"]):
        tol = 1e-4 * abs(exact) if precision == "fp32" else max(1.5 * abs(yard - exact), 1e-2 * abs(exact))
        if not abs(ours - exact) <= tol:
            failures.append(f"step {k}: loss {ours} against {exact} (PyTorch {precision} {yard})")
    if len({round(exact, 6) for _, exact, _ in r["losses"]}) < 2:
        failures.append("the losses do not move: the comparison would say nothing of the updates")
    floor, yardstick = (1e-3, "PyTorch float32") if precision == "fp32" else (5e-2, "PyTorch bf16 autocast")
    for name, ours, yard in r["params"]:
        if not ours <= max(floor, 1.5 * yard):
            failures.append(f"{name}: change differs by {ours:.3g} ({yardstick}: {yard:.3g})")
    ours_med = sorted(o for _, o, _ in r["params"])[len(r["params"]) // 2]
    yard_med = sorted(y for _, _, y in r["params"])[len(r["params"]) // 2]
    if precision == "bf16" and not 0.1 * yard_med <= ours_med <= 1.5 * yard_med:
        failures.append(f"median change error {ours_med:.3g} against {yardstick}'s {yard_med:.3g}: "
                        "not within [0.1x, 1.5x]")
    worst = max(r["params"], key=lambda t: t[1])
    print(f"{model_name} {precision} batch {batch} x {steps} steps, lr {lr}: losses "
          f"{[round(a, 6) for a, _, _ in r['losses']]} (float64 {[round(e, 6) for _, e, _ in r['losses']]}); "
          f"{len(r['params'])} params, median change error {ours_med:.3g} ({yardstick} {yard_med:.3g}), worst "
          f"{worst[1]:.3g} ({worst[0]}; {yardstick} {worst[2]:.3g})")
    # Inputs that do not split into the steps are refused, naming the flag.
    with tempfile.TemporaryDirectory() as tmp:
        x = os.path.join(tmp, "x.safetensors")
        write_safetensors(x, {"images": images[:batch * steps - 1], "labels": labels[:batch * steps - 1]})
        cmd = [binary, "step", "--model_name", model_name, "--num_classes", str(classes), "--input_size", str(size),
               "--weights", "unused.safetensors", "--inputs", x, "--out", os.path.join(tmp, "o"), "--steps",
               str(steps)]
        bad = subprocess.run(cmd, capture_output=True, text=True)
        if bad.returncode != 2 or f"--steps {steps}" not in bad.stderr:
            failures.append(f"uneven batches: exit {bad.returncode}, {bad.stderr[-300:]!r}")
    for f in failures[:40]:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
