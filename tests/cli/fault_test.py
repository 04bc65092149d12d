#!/usr/bin/python3
"""Faults a long training run must survive (issue: a crash never loses a run).

1. Killed with SIGKILL at 12 points (inside steps, during evaluation, during a
   checkpoint write, caught as its temporary file appears) and resumed after each: the final metrics equal an
   uninterrupted run's, record for record; at least one kill must land inside a
   checkpoint write (a torn temporary file left behind), and the previous
   checkpoint must then still load.
2. A full disk during a checkpoint write (the temporary file is a symlink to
   /dev/full): a clear error naming the file and the cause, the previous
   checkpoint kept; the run resumes from it once space is back.
3. NaN weights: training stops with the step number and the last checkpoint
   (NaN in the backbone while scoring tensors; NaN in the head during a step).

Usage: fault_test.py ELASTIC_BINARY
"""
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

from runs import check, elastic_setup, failures, records

ELASTIC = sys.argv[1]


def kill_at(cmd, pattern, delay, appears=None):
    """Starts `cmd` and SIGKILLs it `delay` s after a stdout line matches `pattern`
    or, with `appears`, as soon as that file exists after the line (polled).
    Returns True if it was killed, False if it ended first."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    for line in p.stdout:
        if re.match(pattern, line):
            if appears:
                deadline = time.time() + 5
                while not os.path.exists(appears) and time.time() < deadline and p.poll() is None:
                    pass
            if delay:
                time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            p.wait()
            return True
    p.wait()
    return False


with tempfile.TemporaryDirectory() as tmp:
    base, logs = elastic_setup(ELASTIC, tmp, train=1920, test=800)
    base += ["--interval", "3", "--num_epochs", "8", "--seed", "9"]
    subprocess.run(base + ["--run_name", "straight"], check=True, stdout=subprocess.DEVNULL)
    want = records(os.path.join(logs, "straight"))

    # 1. Twelve kills; each resume is the next victim. Kill points rotate through
    # a step (after a progress line), evaluation (after the epoch's training line,
    # printed just before it) and the checkpoint write (after the test line,
    # printed just before the checkpoint is written).
    run = base + ["--run_name", "killed"]
    run_dir = os.path.join(logs, "killed")
    checkpoint = os.path.join(run_dir, "checkpoint.safetensors")
    torn_file = checkpoint + ".tmp"
    rng = random.Random(3)
    kills, torn = 0, 0
    def next_cmd():
        if os.path.exists(checkpoint):
            return run + ["--resume"]
        if os.path.isdir(run_dir):
            shutil.rmtree(run_dir)  # killed before its first checkpoint: start over
        return run

    for i in range(12):
        cmd = next_cmd()
        kind = ("step", "evaluation", "checkpoint")[i % 3]
        if kind == "step":
            killed = kill_at(cmd, r"epoch \d+/\d+ step", rng.uniform(0.0, 0.3))
        elif kind == "evaluation":
            killed = kill_at(cmd, r"epoch \d+: \d+ steps", rng.uniform(0.0, 0.05))
        else:  # the moment the temporary checkpoint file appears
            killed = kill_at(cmd, r"epoch \d+/\d+: test loss", 0.0, appears=torn_file)
        kills += killed
        if os.path.exists(torn_file):  # killed between creating the temporary file and renaming it
            torn += 1
            os.remove(torn_file)  # so the next kill sees only its own write
    r = subprocess.run(next_cmd(), capture_output=True, text=True)
    check(r.returncode == 0, f"final run failed: {r.stderr}")
    print(f"{kills} kills, {torn} of them inside a checkpoint write")
    check(kills >= 10, f"only {kills} kills landed")
    check(torn >= 1, "no kill landed inside a checkpoint write")
    got = records(run_dir)
    check(got == want, f"metrics differ after {kills} kills: {len(got)} records against {len(want)}" +
          "".join(f"\n  {x}\n  {y}" for x, y in zip(want, got) if x != y)[:2000])

    # 2. Disk full while writing a checkpoint.
    full = base + ["--run_name", "full", "--num_epochs", "3"]
    full_dir = os.path.join(logs, "full")
    check(kill_at(full, r"epoch 2/3 step", 0.0), "the disk-full run was stopped in epoch 2")
    before = open(os.path.join(full_dir, "checkpoint.safetensors"), "rb").read()
    os.symlink("/dev/full", os.path.join(full_dir, "checkpoint.safetensors.tmp"))
    r = subprocess.run(full + ["--resume"], capture_output=True, text=True)
    line = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    check(r.returncode == 1 and "checkpoint.safetensors.tmp" in line and "No space left on device" in line,
          f"disk full: exit {r.returncode}, {r.stderr!r}")
    check(open(os.path.join(full_dir, "checkpoint.safetensors"), "rb").read() == before,
          "the previous checkpoint is kept byte for byte")
    check(not os.path.lexists(os.path.join(full_dir, "checkpoint.safetensors.tmp")), "the failed temporary is removed")
    r = subprocess.run(full + ["--resume"], capture_output=True, text=True)
    check(r.returncode == 0, f"resume after the disk is back: {r.stderr}")

    # 3. NaN in the weights: the loss is NaN at the first step.
    weights = os.path.join(logs, "straight", "model.safetensors")
    raw = bytearray(open(weights, "rb").read())
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k.startswith("features.0.0.weight"))
    begin = 8 + n + header[name]["data_offsets"][0]
    raw[begin:begin + 4] = struct.pack("<f", float("nan"))
    nan_weights = os.path.join(tmp, "nan.safetensors")
    open(nan_weights, "wb").write(raw)
    r = subprocess.run(base + ["--run_name", "nan_elastic", "--weights", nan_weights], capture_output=True, text=True)
    check(r.returncode == 1 and "the loss on the probe batch is not finite" in r.stderr and "step 1" in r.stderr,
          f"NaN weights, elastic: exit {r.returncode}, {r.stderr!r}")
    # NaN after a checkpoint: the message names the last checkpoint.
    nan_run = base + ["--run_name", "nan_later", "--train_type", "full_training", "--num_epochs", "3"]
    nan_dir = os.path.join(logs, "nan_later")
    check(kill_at(nan_run, r"epoch 2/3 step", 0.0), "stopped in epoch 2")
    ck = os.path.join(nan_dir, "checkpoint.safetensors")
    raw = bytearray(open(ck, "rb").read())
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    # The head: ReLU6 maps NaN to a number, so only a NaN after the last activation reaches the loss.
    begin = 8 + n + header["classifier.1.weight"]["data_offsets"][0]
    raw[begin:begin + 4] = struct.pack("<f", float("nan"))
    open(ck, "wb").write(raw)
    r = subprocess.run(nan_run + ["--resume"], capture_output=True, text=True)
    check(r.returncode == 1 and "at step 121 (epoch 2)" in r.stderr and f"the last good checkpoint is '{ck}' "
          "(end of epoch 1)" in r.stderr, f"NaN after a checkpoint: exit {r.returncode}, {r.stderr!r}")

print("faults:", "FAILED" if failures else "ok")
sys.exit(1 if failures else 0)
