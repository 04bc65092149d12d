#!/usr/bin/python3
"""scripts/plot on synthetic run directories: both figures in PNG and PDF, and
clear errors for a directory that is not a run or a wrong label count.

Usage: plot_test.py SOURCE_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

PLOT = os.path.join(sys.argv[1], "scripts", "plot")
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


with tempfile.TemporaryDirectory() as tmp:
    runs = []
    for name, speed in (("full", 1.0), ("elastic", 0.5)):
        d = os.path.join(tmp, name)
        os.makedirs(d)
        with open(os.path.join(d, "metrics.jsonl"), "w") as f:
            for e in range(1, 4):
                f.write(json.dumps({"type": "train_epoch", "epoch": e, "loss": 1.0 / e, "wall_time": e}) + "\n")
                f.write(json.dumps({"type": "test", "epoch": e, "step": 100 * e, "loss": 1.0 / e,
                                    "accuracy": 60 + 10 * e, "train_time": 100 * e * speed, "wall_time": e}) + "\n")
        runs.append(d)
    out = os.path.join(tmp, "figs", "demo")
    r = subprocess.run(["/usr/bin/python3", PLOT, *runs, "--out", out, "--labels", "full,elastic"],
                       capture_output=True, text=True)
    check(r.returncode == 0, f"plot failed: {r.stderr}")
    for kind in ("curves", "bars"):
        for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
            path = f"{out}_{kind}.{ext}"
            check(os.path.exists(path) and open(path, "rb").read(4) == magic, f"{path} is a {ext}")
    r = subprocess.run(["/usr/bin/python3", PLOT, tmp], capture_output=True, text=True)
    check(r.returncode != 0 and "metrics.jsonl" in r.stderr and "does not exist" in r.stderr,
          f"not a run dir: {r.stderr}")
    r = subprocess.run(["/usr/bin/python3", PLOT, *runs, "--labels", "one"], capture_output=True, text=True)
    check(r.returncode != 0 and "--labels names 1 runs but 2" in r.stderr, f"label count: {r.stderr}")
    with open(os.path.join(runs[0], "metrics.jsonl"), "a") as f:
        f.write("{broken\n")
    r = subprocess.run(["/usr/bin/python3", PLOT, *runs], capture_output=True, text=True)
    check(r.returncode != 0 and "metrics.jsonl:7: not JSON" in r.stderr, f"broken line: {r.stderr}")

print("plot:", "FAILED" if failures else "ok")
sys.exit(1 if failures else 0)
