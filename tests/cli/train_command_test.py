#!/usr/bin/python3
"""`elastic train` and `elastic profile` from outside: help, flag errors, the
files a run writes, progress output, and an example main.

Usage: train_command_test.py ELASTIC_BINARY EXAMPLE_BINARY
"""
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

ELASTIC, EXAMPLE = sys.argv[1], sys.argv[2]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def run(*args, binary=ELASTIC):
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=600)


def write_safetensors(path, tensors):
    """A safetensors file of numpy arrays (F32 or I64)."""
    header, blobs, at = {}, [], 0
    for name, a in tensors.items():
        blob = a.tobytes()
        header[name] = {"dtype": {np.float32: "F32", np.int64: "I64"}[a.dtype.type], "shape": list(a.shape),
                        "data_offsets": [at, at + len(blob)]}
        blobs.append(blob)
        at += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_f32(path, name):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    t = header[name]
    begin, end = t["data_offsets"]
    return np.frombuffer(body[begin:end], dtype=np.float32).reshape(t["shape"])


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 3400), ("t10k", 100)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 255, (n, 28, 28))
        write_idx(os.path.join(data, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(data, f"{prefix}-labels-idx1-ubyte.gz"), labels)

    # Help documents every flag with its default.
    h = run("train", "--help")
    for flag in ["--model_name", "--dataset_name", "--train_type", "--input_size", "--batch_size", "--num_classes",
                 "--optimizer", "--learning_rate", "--weight_decay", "--num_epochs", "--run_name", "--save_model",
                 "--save_txt", "--interval", "--rho", "--data_dir", "--weights", "--threads", "--seed", "--log_dir",
                 "--resume", "--profile"]:
        check(flag in h.stdout, f"train --help lists {flag}")
    for default in ["0.533", "caltech_birds2011", "elastic_training", "myexp", "224"]:
        check(default in h.stdout, f"train --help shows the default {default}")
    check(h.returncode == 0, "train --help exits 0")
    h = run("profile", "--help")
    check(h.returncode == 0 and all(f in h.stdout for f in ["--model_name", "--input_size", "--batch_size",
                                                            "--num_classes", "--threads", "--out"]),
          "profile --help lists its flags")
    h = run("--help", binary=EXAMPLE)
    check(h.returncode == 0 and "mobilenetv2" in h.stdout and "stanford_dogs" in h.stdout,
          "the example main presets its model and dataset")
    r = run("--data_dir", "/nonexistent", binary=EXAMPLE)
    check(r.returncode == 1 and "/nonexistent" in r.stderr, f"example main with a missing dir: {r.stderr}")

    # Wrong flags and values: exit 2, one line naming them.
    common = ["train", "--model_name", "mobilenetv2", "--dataset_name", "fashion_mnist", "--data_dir", data,
              "--input_size", "32", "--batch_size", "16", "--log_dir", os.path.join(tmp, "logs"), "--threads", "2"]
    for args, needle in [(["--rho", "1.5"], "--rho"), (["--rho", "0"], "--rho"),
                         (["--train_type", "foo"], "--train_type 'foo'"), (["--model_name", "foo"], "foo"),
                         (["--optimizer", "rmsprop"], "--optimizer"), (["--batch_size", "0"], "0 is not > 0"),
                         (["--input_size", "8"], "8 is not >= 16"), (["--workers", "-1"], "-1 is not >= 0"),
                         (["--bogus"], "--bogus"), (["--num_classes", "3"], "--num_classes 3"),
                         (["--classes", "3-1"], "3-1"), (["--dataset_name", "cifar"], "cifar"),
                         (["--rho", "0.5", "--deadline", "60"], "--rho and --deadline"),
                         (["--deadline", "soon"], "--deadline 'soon'"), (["--deadline", "-3m"], "--deadline '-3m'"),
                         (["--deadline", "2h", "--train_type", "full_training"], "--deadline needs an elastic"),
                         (["--precision", "fp16"], "--precision")]:
        r = run(*common, *args)
        lines = r.stderr.strip().splitlines()
        check(r.returncode == 2 and len(lines) == 1 and needle in lines[0], f"{args}: exit {r.returncode}, {r.stderr!r}")
        check(len(lines[0]) < 200 if lines else False, f"{args}: a message of {len(lines[0])} characters")

    # bf16 on a CPU without native bf16 (oneDNN capped at plain AVX-512 here): refused in one line
    # naming the missing CPU feature, by train, profile and step alike.
    capped = dict(os.environ, DNNL_MAX_CPU_ISA="AVX512_CORE")
    for args in (common + ["--precision", "bf16"],
                 ["profile", "--model_name", "mobilenetv2", "--num_classes", "10", "--out", os.path.join(tmp, "x.json"),
                  "--precision", "bf16"],
                 ["step", "--model_name", "mobilenetv2", "--num_classes", "10", "--weights", "w", "--inputs", "i",
                  "--out", "o", "--precision", "bf16"]):
        r = subprocess.run([ELASTIC, *args], capture_output=True, text=True, timeout=600, env=capped)
        lines = r.stderr.strip().splitlines()
        check(r.returncode == 2 and len(lines) == 1 and "avx512_bf16" in lines[0],
              f"bf16 without avx512_bf16 ({args[0]}): exit {r.returncode}, {r.stderr!r}")
    with open("/proc/cpuinfo") as f:
        has_bf16 = "avx512_bf16" in f.read().split()

    # A profile from another configuration is refused, naming what differs.
    profile = os.path.join(tmp, "p.json")
    p = run("profile", "--model_name", "mobilenetv2", "--input_size", "32", "--batch_size", "8", "--num_classes",
            "10", "--threads", "2", "--out", profile)
    check(p.returncode == 0 and "classifier.1" in p.stdout and os.path.exists(profile), "profile writes its table")
    r = run(*common, "--profile", profile, "--run_name", "wrongprofile", "--num_epochs", "1")
    check(r.returncode == 1 and "batch size" in r.stderr, f"mismatched profile: {r.returncode} {r.stderr!r}")

    if has_bf16:
        # An fp32 profile is refused for a bf16 run, naming the field; a bf16 run trains
        # elastically with its own profile, time control on, its losses between 0 and 10.
        fp32_profile = os.path.join(tmp, "p16.json")
        p = run("profile", "--model_name", "mobilenetv2", "--input_size", "32", "--batch_size", "16",
                "--num_classes", "10", "--threads", "2", "--out", fp32_profile)
        r = run(*common, "--profile", fp32_profile, "--run_name", "bf16wrong", "--num_epochs", "1", "--precision",
                "bf16")
        check(r.returncode == 1 and "precision fp32, but this run has precision bf16" in r.stderr,
              f"fp32 profile for a bf16 run: {r.returncode} {r.stderr!r}")
        r = run(*common, "--precision", "bf16", "--train_type", "elastic_training", "--num_epochs", "2",
                "--interval", "1", "--rho", "0.6", "--steps_per_epoch", "40", "--learning_rate", "0.01",
                "--bn_batch_stats", "--run_name", "bf16")
        check(r.returncode == 0, f"bf16 elastic run: {r.stderr}")
        with open(os.path.join(tmp, "logs", "bf16", "summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(tmp, "logs", "bf16", "profile.json")) as f:
            check(json.load(f)["key"]["precision"] == "bf16", "the bf16 run's profile is keyed bf16")
        sel = summary.get("rho_per_selection", [])
        # Time control is on: the rho in force is 0.6 unless the machine slowed down too much for it (logged).
        slowed = "cannot be met" in r.stderr + r.stdout
        check(len(sel) >= 2 and all(0 < s["predicted_share"] <= s["rho"] + 1e-9 and (s["rho"] == 0.6 or slowed)
                                    for s in sel), f"bf16 selections within rho: {sel}")
        with open(os.path.join(tmp, "logs", "bf16", "metrics.jsonl")) as f:
            epochs = [j for j in map(json.loads, f) if j["type"] == "train_epoch"]
        check(len(epochs) == 2 and all(0 < e["loss"] < 10 for e in epochs), f"bf16 training losses: {epochs}")
        # `elastic profile --precision bf16` times the bf16 step and keys its table bf16; that
        # table is refused for an fp32 run.
        bf16_profile = os.path.join(tmp, "pbf16.json")
        p = run("profile", "--model_name", "mobilenetv2", "--input_size", "32", "--batch_size", "16",
                "--num_classes", "10", "--threads", "2", "--out", bf16_profile, "--precision", "bf16")
        check(p.returncode == 0 and "classifier.1" in p.stdout, f"profile --precision bf16: {p.returncode} {p.stderr!r}")
        if p.returncode == 0:
            with open(bf16_profile) as f:
                check(json.load(f)["key"]["precision"] == "bf16", "profile --precision bf16 is keyed bf16")
        r = run(*common, "--profile", bf16_profile, "--run_name", "fp32wrong", "--num_epochs", "1")
        check(r.returncode == 1 and "precision bf16, but this run has precision fp32" in r.stderr,
              f"bf16 profile for an fp32 run: {r.returncode} {r.stderr!r}")

    # A run: progress lines (stdout is a pipe), metrics, summary, log.txt, checkpoint and weights.
    r = run(*common, "--train_type", "elastic_training", "--num_epochs", "2", "--interval", "1", "--rho", "0.7",
            "--run_name", "r", "--save_model", "--save_txt", "--learning_rate", "0.01")
    check(r.returncode == 0, f"train run: {r.stderr}")
    out = r.stdout.splitlines()
    warning = [l for l in out if l.startswith("warning: no --weights")]
    check(len(warning) == 1 and "--bn_batch_stats" in warning[0] and out.index(warning[0]) < 3,
          f"one warning line up front naming --weights and --bn_batch_stats: {out[:3]}")
    progress = [l for l in out if l.startswith("epoch 1/2 step")]
    check(len(progress) in (10, 11), f"about ten plain progress lines per epoch, got {len(progress)}")
    check(all("img/s" in l and "loss" in l and "acc" in l and "ETA" in l for l in progress), "progress fields")
    check(not any("\r" in l for l in out), "no carriage returns when stdout is not a terminal")
    check(any(l.startswith("Best test accuracy:") for l in out) and any(l.startswith("Total training time:")
                                                                        for l in out), "summary lines")
    run_dir = os.path.join(tmp, "logs", "r")
    recs = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    kinds = [x["type"] for x in recs]
    steps_per_epoch = 3400 // 16
    sels = [x for x in recs if x["type"] == "selection"]
    check([x["reason"] for x in sels].count("probe") == 2 and kinds.count("test") == 2 and
          kinds.count("train_epoch") == 2, f"record kinds {kinds}")
    check(all(x["reason"] in ("probe", "correction") and x["rho"] == 0.7 for x in sels), f"selection reasons {sels}")
    # Each selection that ran a measurement window (5 settling + 20 steps) carries its measured share.
    check(all((x["measured_share"] is not None) == (x["steps"] >= 25) for x in sels), "measured shares")
    check(all(x["full_step_ms"] > 0 for x in sels if x["measured_share"] is not None), "full step times")
    check(all(x["measured_share"] is not None for x in recs if x["type"] == "train_epoch"),
          "epoch records carry the measured share")
    check([x["step"] for x in recs if x["type"] == "train"] == [200, 400], "train records every 200 steps")
    sel = next(x for x in recs if x["type"] == "selection")
    check(len(sel["unit_mask"]) == 105 and 0 < sel["predicted_share"] <= 0.7 and sel["importance"] > 0,
          f"selection record {sel}")
    for x in recs:
        check("wall_time" in x, "every record has wall time")
    tests = [x for x in recs if x["type"] == "test"]
    check(tests[-1]["step"] == 2 * steps_per_epoch, "test records carry the step")
    s = json.load(open(os.path.join(run_dir, "summary.json")))
    check(s["best_test_accuracy"] == max(x["accuracy"] for x in tests), "summary best accuracy")
    check(abs(s["training_time_h"] * 3600 - tests[-1]["train_time"]) < 1e-6, "summary training time")
    check(len(s["epochs"]) == 2, "summary per epoch")
    check(s["deadline_s"] is None and len(s["rho_per_selection"]) == len(sels), "summary: rho per selection")
    check(s["config"]["precision"] == "fp32", f"the default precision is fp32: {s['config']}")
    with open(os.path.join(run_dir, "profile.json")) as f:
        check(json.load(f)["key"]["precision"] == "fp32", "the default run's profile is keyed fp32")
    txt = open(os.path.join(run_dir, "log.txt")).read()
    check("Best test accuracy" in txt and "selection at epoch 1" in txt, "log.txt holds the log lines")
    for f in ["checkpoint.safetensors", "model.safetensors", "profile.json"]:
        check(os.path.exists(os.path.join(run_dir, f)), f"{f} written")

    # A deadline instead of rho: rho is planned (what the run's times are is for benchmarks, not this test).
    r = run(*common, "--train_type", "elastic_training", "--num_epochs", "1", "--steps_per_epoch", "40",
            "--deadline", "2m", "--run_name", "deadline", "--learning_rate", "0.01")
    check(r.returncode == 0 and "deadline 120 s" in r.stdout, f"deadline run: {r.returncode} {r.stderr[-300:]!r}")
    s = json.load(open(os.path.join(tmp, "logs", "deadline", "summary.json")))
    check(s["deadline_s"] == 120 and s["config"]["deadline_s"] == 120, "summary records the deadline")
    check(all(0 < x["rho"] <= 1 for x in s["rho_per_selection"]) and s["rho_per_selection"], "planned rho")

    # Weights of another model, and a resume with another class count: one line naming the culprit.
    r = run("train", "--model_name", "resnet50", "--dataset_name", "fashion_mnist", "--data_dir", data,
            "--input_size", "32", "--batch_size", "2", "--log_dir", os.path.join(tmp, "logs"), "--run_name", "other",
            "--train_type", "full_training", "--weights", os.path.join(run_dir, "model.safetensors"))
    lines = r.stderr.strip().splitlines()
    check(r.returncode == 1 and len(lines) == 1 and "model.safetensors' does not fit the model: missing" in lines[0],
          f"weights of another model: {r.returncode} {r.stderr[:300]!r}")
    r = run(*common, "--train_type", "elastic_training", "--num_epochs", "2", "--interval", "1", "--rho", "0.7",
            "--run_name", "r", "--save_model", "--learning_rate", "0.01", "--resume", "--num_classes", "12")
    check(r.returncode == 2 and "started with num_classes 10 but this command has 12" in r.stderr,
          f"resume with another class count: {r.returncode} {r.stderr!r}")

    # A resume in another precision is refused, naming it (on a CPU without bf16, the CPU is named).
    r = run(*common, "--train_type", "elastic_training", "--num_epochs", "2", "--interval", "1", "--rho", "0.7",
            "--run_name", "r", "--save_model", "--learning_rate", "0.01", "--resume", "--precision", "bf16")
    needle = 'started with precision "fp32" but this command has "bf16"' if has_bf16 else "avx512_bf16"
    check(r.returncode == 2 and needle in r.stderr, f"resume in another precision: {r.returncode} {r.stderr!r}")

    # `elastic step` computes in fp32 unless told otherwise: its output is the --precision fp32
    # one, bit for bit; in bf16 the logits differ, to bf16's accuracy.
    inputs = os.path.join(tmp, "step_in.safetensors")
    write_safetensors(inputs, {"images": rng.standard_normal((2, 3, 32, 32)).astype(np.float32),
                               "labels": np.array([3, 7], dtype=np.int64)})
    step = ["step", "--model_name", "mobilenetv2", "--num_classes", "10", "--input_size", "32", "--threads", "2",
            "--weights", os.path.join(run_dir, "model.safetensors"), "--inputs", inputs]
    outs = {}
    for name, extra in (("default", []), ("fp32", ["--precision", "fp32"]), ("bf16", ["--precision", "bf16"])):
        if name == "bf16" and not has_bf16:
            continue
        outs[name] = os.path.join(tmp, f"step_{name}.safetensors")
        r = run(*step, "--out", outs[name], *extra)
        check(r.returncode == 0, f"step ({name}): {r.returncode} {r.stderr!r}")
    with open(outs["default"], "rb") as a, open(outs["fp32"], "rb") as b:
        check(a.read() == b.read(), "step's default output is --precision fp32's, bit for bit")
    if "bf16" in outs:
        lo, lb = read_f32(outs["fp32"], "logits"), read_f32(outs["bf16"], "logits")
        err = float(np.linalg.norm(lb - lo) / np.linalg.norm(lo))
        check(0 < err < 5e-2, f"step --precision bf16: logits {err:.3g} from fp32's")

    # `step --steps` trains at the Trainer's rate: SGDW's along the cosine, whose length changes
    # the second step's rate; Adam's constant, on which the cosine's length has no effect.
    batches = os.path.join(tmp, "step_batches.safetensors")
    write_safetensors(batches, {"images": rng.standard_normal((4, 3, 32, 32)).astype(np.float32),
                                "labels": np.array([1, 3, 5, 7], dtype=np.int64)})
    for opt, same in (("adam", True), ("sgd", False)):
        results = []
        for length in ("2", "50"):
            o = os.path.join(tmp, f"steps_{opt}_{length}.safetensors")
            r = run("step", "--model_name", "mobilenetv2", "--num_classes", "10", "--input_size", "32", "--threads", "2",
                    "--weights", os.path.join(run_dir, "model.safetensors"), "--inputs", batches, "--out", o,
                    "--steps", "2", "--optimizer", opt, "--learning_rate", "0.01", "--schedule_steps", length)
            check(r.returncode == 0, f"step --steps 2 --optimizer {opt}: {r.returncode} {r.stderr!r}")
            results.append(open(o, "rb").read() if r.returncode == 0 else b"")
        check((results[0] == results[1]) == same,
              f"step --steps with {opt}: the cosine's length {'must not matter' if same else 'must matter'}")

    # On a terminal the progress line redraws in place.
    import pty
    import select
    master, slave = pty.openpty()
    p = subprocess.Popen([ELASTIC, *common, "--train_type", "full_training", "--num_epochs", "1",
                          "--steps_per_epoch", "30", "--run_name", "tty"], stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    p.wait()
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    check(p.returncode == 0, f"tty run exit {p.returncode}: {text[-500:]}")
    check("\r\x1b[Kepoch 1/1 step" in text, "the progress line redraws with carriage return and clear-line")
    check(text.rfind("Best test accuracy") > text.rfind("\r\x1b[Kepoch 1/1 step"), "summary after progress")

print("train command:", "FAILED" if failures else "ok")
sys.exit(1 if failures else 0)
