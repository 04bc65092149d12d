#!/usr/bin/python3
"""A training run killed with SIGKILL mid-epoch and resumed with --resume ends
with the same metrics as an uninterrupted run with the same seed.

Elastic training (re-selection every 2 epochs, so a selection happens after a
resume), augmentation on, two decoding threads: every source of randomness and
threading is in play. Time fields are the only ones allowed to differ.

Usage: resume_test.py ELASTIC_BINARY
"""
import json
import os
import re
import struct
import signal
import subprocess
import sys
import tempfile
import time

from runs import check, elastic_setup, failures, records, strip

ELASTIC = sys.argv[1]


def checkpoint_state(path):
    """The trainer state in a checkpoint's metadata."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(json.loads(raw[8:8 + n])["__metadata__"]["elastic_state"])


with tempfile.TemporaryDirectory() as tmp:
    base, logs = elastic_setup(ELASTIC, tmp)
    base += ["--interval", "2", "--num_epochs", "5", "--seed", "5", "--workers", "2"]

    start = time.time()
    subprocess.run(base + ["--run_name", "straight"], check=True, stdout=subprocess.DEVNULL)
    print(f"uninterrupted run: {time.time() - start:.1f} s")

    run = base + ["--run_name", "killed"]
    checkpoint = os.path.join(logs, "killed", "checkpoint.safetensors")
    kills = 0
    for attempt, (after_epochs, delay) in enumerate([(1, 0.6), (3, 0.3)]):
        cmd = run + (["--resume"] if attempt else [])
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Wait for the checkpoint of epoch `after_epochs`, then kill inside the next epoch.
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            if os.path.exists(checkpoint):
                with open(os.path.join(logs, "killed", "metrics.jsonl")) as f:
                    tests = sum('"type":"test"' in line for line in f)
                if tests >= after_epochs:
                    break
            time.sleep(0.02)
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
        else:
            print("run ended before it could be killed:", p.stderr.read())
    check(kills == 2, f"killed {kills} times")
    r = subprocess.run(run + ["--resume"], capture_output=True, text=True)
    check(r.returncode == 0, f"final resume failed: {r.stderr}")
    check("resuming" in r.stdout, "the resumed run says where it resumes")

    a, b = records(os.path.join(logs, "straight")), records(os.path.join(logs, "killed"))
    check(len(a) == len(b), f"{len(a)} records uninterrupted, {len(b)} killed and resumed")
    for i, (x, y) in enumerate(zip(a, b)):
        check(x == y, f"record {i} differs:\n  {x}\n  {y}")
    check(sum(x["type"] == "selection" for x in a) == 3, "selections at epochs 1, 3 and 5")
    sa = json.load(open(os.path.join(logs, "straight", "summary.json")))
    sb = json.load(open(os.path.join(logs, "killed", "summary.json")))
    check(sa["best_test_accuracy"] == sb["best_test_accuracy"], "best test accuracy")
    check([strip(e) for e in sa["epochs"]] == [strip(e) for e in sb["epochs"]], "per-epoch summaries")
    # From random weights in 5 epochs the best accuracy varies with the seed and with the measured
    # profile (49-95% here for seeds 5-7; 48% once on CI); chance is 10%.
    check(sa["best_test_accuracy"] > 25, f"the run learns ({sa['best_test_accuracy']}%, chance is 10%)")

    def same_as_straight(name, what):
        a, b = records(os.path.join(logs, "straight")), records(os.path.join(logs, name))
        check(a == b, f"{what}: the metrics differ from the uninterrupted run's ({len(a)} and {len(b)} records)")
        sb = json.load(open(os.path.join(logs, name, "summary.json")))
        check(sa["best_test_accuracy"] == sb["best_test_accuracy"], f"{what}: best test accuracy")

    def signal_at(cmd, pattern, signo):
        """Sends `signo` when a stdout line matches `pattern`; returns (exit code, stdout after it)."""
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        for line in p.stdout:
            if re.match(pattern, line):
                p.send_signal(signo)
                break
        out, err = p.communicate(timeout=300)
        return p.returncode, out, err

    # SIGINT mid-epoch: the step in progress ends, a checkpoint is written, exit 130 with the way back;
    # SIGTERM during an evaluation: the evaluation and its epoch-end checkpoint finish, exit 143.
    run = base + ["--run_name", "sigint"]
    code, out, err = signal_at(run, r"epoch 2/5 step", signal.SIGINT)
    check(code == 130 and "stopped by SIGINT after step" in out and "--resume" in out,
          f"SIGINT: exit {code}, {out[-400:]!r} {err[-400:]!r}")
    check(os.path.exists(os.path.join(logs, "sigint", "checkpoint.safetensors")), "SIGINT: a checkpoint")
    code, out, err = signal_at(run + ["--resume"], r"epoch 3/5 step 200/200", signal.SIGTERM)
    check(code == 143 and "stopped by SIGTERM" in out, f"SIGTERM at the end of epoch 3: exit {code}, {err[-400:]!r}")
    meta = checkpoint_state(os.path.join(logs, "sigint", "checkpoint.safetensors"))
    check(meta["run"]["epoch"] == 2 and meta["epoch"]["epoch"] == -1,
          f"SIGTERM in the evaluation: the epoch-end checkpoint of epoch 3 ({meta['run']['epoch']}, {meta['epoch']})")
    r = subprocess.run(run + ["--resume"], capture_output=True, text=True)
    check(r.returncode == 0, f"resume after the signals: {r.stderr}")
    same_as_straight("sigint", "stopped by SIGINT and SIGTERM, resumed")

    # Periodic checkpoints within epochs: killed with SIGKILL between two of them, a resume continues
    # from the last one exactly.
    # Killed as soon as a periodic checkpoint within epoch 2 exists (polled, not timed: a slow
    # machine may take seconds for the 23 steps).
    run = base + ["--run_name", "periodic", "--checkpoint_every", "23"]
    periodic = os.path.join(logs, "periodic", "checkpoint.safetensors")
    p = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        try:
            state = checkpoint_state(periodic)
            if state["epoch"]["epoch"] == 1 and state["epoch"]["batches"] > 0:
                break
        except (OSError, ValueError, KeyError, struct.error):
            pass  # not written yet
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    meta = checkpoint_state(periodic)
    # Counted from the last checkpoint, which is epoch 1's end here.
    check(meta["epoch"]["epoch"] == 1 and meta["epoch"]["batches"] % 23 == 0 and meta["epoch"]["batches"] > 0,
          f"the last checkpoint is a periodic one within epoch 2: step {meta['step']}, {meta['epoch']}")
    r = subprocess.run(run + ["--resume"], capture_output=True, text=True)
    check(r.returncode == 0 and f"steps of epoch 2 (step {meta['step']})" in r.stdout,
          f"resume from a periodic checkpoint: {r.stderr[-400:]!r}")
    same_as_straight("periodic", "killed between periodic checkpoints, resumed")

    # Resuming with a different setting is refused, naming it.
    r = subprocess.run(run + ["--resume", "--learning_rate", "0.02"], capture_output=True, text=True)
    check(r.returncode == 2 and "learning_rate" in r.stderr, f"changed flag on resume: {r.returncode} {r.stderr}")
    # Starting over an existing run without --resume is refused.
    r = subprocess.run(run, capture_output=True, text=True)
    check(r.returncode == 2 and "already holds a run" in r.stderr, f"existing run: {r.returncode} {r.stderr}")

print("resume:", "FAILED" if failures else "ok")
sys.exit(1 if failures else 0)
