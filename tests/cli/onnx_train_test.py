#!/usr/bin/python3
"""`elastic train` on an imported ONNX model: torchvision's resnet18 exported by
scripts/export_onnx.py, profiled, then trained elastically for two short epochs on
Fashion-MNIST-layout data whose class is drawn into the image (runs.make_data), so that a
working run lowers its loss. Checks the import line, the profile key, that selections stay
within rho and leave units frozen, and that the loss falls.

usage: onnx_train_test.py ELASTIC_BINARY [MODEL]

MODEL is a torchvision classifier (default resnet18, which also checks --num_classes and
--head); the others run the profile and the elastic run only.
"""
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import torch

from runs import check, failures, make_data

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import export_onnx  # noqa: E402

ELASTIC = sys.argv[1]
MODEL = sys.argv[2] if len(sys.argv) > 2 else "resnet18"


def run(*args):
    return subprocess.run([ELASTIC, *args], capture_output=True, text=True, timeout=900)


with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "data")
    make_data(data, train=1200, test=200)
    torch.manual_seed(0)
    model_file = os.path.join(tmp, f"{MODEL}.onnx")
    export_onnx.export(export_onnx.build(MODEL, 10), model_file, 2, 32)

    profile = os.path.join(tmp, "profile.json")
    p = run("profile", "--model_name", model_file, "--input_size", "32", "--batch_size", "16", "--num_classes", "10",
            "--threads", "2", "--repeats", "2", "--warmup", "1", "--out", profile)
    check(p.returncode == 0, f"profile of the ONNX model: {p.stderr}")
    check("kept (10 classes)" in p.stdout, f"profile prints the import: {p.stdout[:300]}")
    with open(profile) as f:
        key = json.load(f)["key"]
    check(key["model"].startswith(f"onnx:{MODEL}:"), f"the profile names the model by file and hash: {key}")

    logs = os.path.join(tmp, "logs")
    common = ["train", "--model_name", model_file, "--dataset_name", "fashion_mnist", "--data_dir", data,
              "--input_size", "32", "--batch_size", "16", "--threads", "2", "--log_dir", logs, "--no_augment"]
    # rho 0.5, or, where this profile's forward pass alone is most of a step (small
    # models at 32x32), half-way between the smallest useful rho the command names and 1.
    # Learning rate 0.003: at 0.01 a random-weight RegNet's loss once rose from epoch 1 to 2
    # (3.06 -> 3.82, on a loaded CI machine); at 0.003 it falls 1.96-1.99 -> 0.98-1.08 here.
    rho = 0.5
    for attempt in range(2):
        r = run(*common, "--train_type", "elastic_training", "--interval", "1", "--rho", str(rho), "--num_epochs",
                "2", "--steps_per_epoch", "40", "--learning_rate", "0.003", "--bn_batch_stats", "--profile", profile,
                "--run_name", f"elastic{attempt}")
        needed = re.search(r"needs rho >= ([0-9.]+)", r.stderr)
        if r.returncode != 2 or not needed:
            break
        rho = round((float(needed.group(1)) + 1) / 2, 3)
    run_dir = os.path.join(logs, f"elastic{attempt}")
    check(r.returncode == 0, f"elastic training of the ONNX model: {r.stderr[-2000:]}")
    check("imported '" in r.stderr + r.stdout, "train prints the import line")
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    sel = summary.get("rho_per_selection", [])
    # Time control is on: every selection keeps the rho in force, which is the asked one unless the
    # machine slowed down so much that even the cheapest unit needs more (said in the log).
    slowed = "cannot be met" in r.stderr + r.stdout
    check(len(sel) >= 2 and all(0 < s["predicted_share"] <= s["rho"] + 1e-9 and (s["rho"] == rho or slowed)
                                for s in sel), f"selections within rho {rho}: {sel}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    epochs = [j for j in records if j["type"] == "train_epoch"]
    # Training learns: the loss well below chance (ln 10 = 2.30 with 10 classes) in some epoch;
    # or, for the deep ones that start above chance from random weights, falling from epoch to
    # epoch; or the test accuracy well above chance (10%) after some epoch. The last is for a
    # random-weight RegNet whose epoch-2 selection (measured times decide it) held early units
    # and not the head: its training loss then rose (2.09 -> 2.57, on a loaded machine).
    losses = [e["loss"] for e in epochs]
    accuracies = [j["accuracy"] for j in records if j["type"] == "test"]
    said = "\n".join(line for line in (r.stderr + r.stdout).splitlines()
                     if "selection at" in line or "probe at" in line or "cannot be met" in line)
    check(len(losses) == 2 and (min(losses) < 0.8 * math.log(10) or losses[1] < losses[0]
                                or max(accuracies, default=0) >= 30),
          f"training learns: losses {losses}, test accuracies {accuracies}; the run's selections:\n{said}")
    selections = [j for j in records if j["type"] == "selection"]
    masks = [s["unit_mask"] for s in selections]
    check(len(masks) >= 2 and all(0 < m.count("1") < len(m) for m in masks),
          f"each selection trains some units and freezes others: {masks}")

    # Another class count re-creates the classifier; an unknown --head is refused.
    if MODEL == "resnet18":
        r = run(*common, "--train_type", "full_training", "--num_epochs", "1", "--steps_per_epoch", "2",
                "--num_classes", "12", "--run_name", "head")
        check(r.returncode == 0
              and "classifier 'fc' re-created with 12 classes (the file has 10)" in r.stderr + r.stdout,
              f"head re-created: {r.returncode} {r.stderr[-500:]}")
        r = run(*common, "--train_type", "full_training", "--num_epochs", "1", "--head", "nope", "--run_name",
                "nohead")
        check(r.returncode == 1 and "no Gemm or MatMul named 'nope'" in r.stderr,
              f"unknown --head: {r.returncode} {r.stderr}")

print("FAILED" if failures else "ok")
sys.exit(1 if failures else 0)
