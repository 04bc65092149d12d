#!/usr/bin/python3
"""`elastic eval` and `elastic predict` from outside: a model trained by `elastic train --save_model` is
evaluated with the same top-1 accuracy and loss as the trainer's own evaluation of
it; the confusion matrix and per-class figures agree with each other; files
without a model description need the flags; wrong flags and wrong models fail
with one line naming them; --out draws the confusion matrix.

Usage: eval_test.py ELASTIC_BINARY
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

from runs import check, failures, make_data

ELASTIC = sys.argv[1]


def run(*args):
    return subprocess.run([ELASTIC, *args], capture_output=True, text=True, timeout=600)


def strip_metadata(src, dst):
    """A copy of a safetensors file without its __metadata__ (as files written before it)."""
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        rest = f.read()
    header.pop("__metadata__", None)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + rest)


with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "data")
    make_data(data, train=1600, test=150)
    rng = np.random.default_rng(3)
    logs = os.path.join(tmp, "logs")
    r = run("train", "--model_name", "mobilenetv2", "--dataset_name", "fashion_mnist", "--data_dir", data,
            "--input_size", "32", "--batch_size", "16", "--log_dir", logs, "--run_name", "r", "--threads", "2",
            "--train_type", "full_training", "--num_epochs", "2", "--learning_rate", "0.01", "--bn_batch_stats",
            "--save_model")
    check(r.returncode == 0, f"training: {r.stderr[-400:]!r}")
    model = os.path.join(logs, "r", "model.safetensors")
    summary = json.load(open(os.path.join(logs, "r", "summary.json")))

    # The trainer's evaluation of the final model, again: same top-1 and loss.
    r = run("eval", "--weights", model, "--dataset_name", "fashion_mnist", "--data_dir", data, "--threads", "2",
            "--batch_size", "8")
    check(r.returncode == 0, f"eval: {r.returncode} {r.stderr[-400:]!r}")
    e = json.loads(r.stdout)
    trained = summary["epochs"][-1]
    check(e["images"] == 150, f"every test image counted: {e['images']}")
    check(abs(e["top1_accuracy"] - trained["test_accuracy"]) < 1e-6,
          f"top-1 {e['top1_accuracy']} equals the trainer's {trained['test_accuracy']}")
    check(abs(e["loss"] - trained["test_loss"]) < 1e-4 * max(1.0, trained["test_loss"]),
          f"loss {e['loss']} equals the trainer's {trained['test_loss']}")
    check(e["top1_accuracy"] > 20, f"the model learned something: {e['top1_accuracy']}")
    m = np.array(e["confusion"])
    check(m.shape == (10, 10) and m.sum() == 150, f"confusion matrix {m.shape} of {m.sum()} images")
    check(abs(100 * np.trace(m) / 150 - e["top1_accuracy"]) < 1e-9, "its diagonal is the top-1 accuracy")
    check(e["top1_accuracy"] <= e["top5_accuracy"] <= 100, "top-5 >= top-1")
    per = e["per_class"]
    check([p["images"] for p in per] == list(m.sum(axis=1)), "per-class image counts are the matrix's rows")
    check(all(p["accuracy"] is None or abs(p["accuracy"] - 100 * m[i, i] / m[i].sum()) < 1e-9
              for i, p in enumerate(per)), "per-class accuracy is the diagonal over the row")
    check(e["class_names"][0] == "T-shirt/top" and per[9]["class"] == "Ankle boot",
          f"classes by name, in label order: {e['class_names']}")
    check(e["images_per_s"] > 0, "images per second reported")

    # The run's checkpoint describes the model too (its optimizer state is ignored).
    r = run("eval", "--weights", os.path.join(logs, "r", "checkpoint.safetensors"), "--dataset_name", "fashion_mnist",
            "--data_dir", data, "--threads", "2")
    check(r.returncode == 0 and json.loads(r.stdout)["top1_accuracy"] == e["top1_accuracy"],
          f"eval of the checkpoint: {r.returncode} {r.stderr[-300:]!r}")

    # A file without a description: the flags are needed, and then give the same numbers.
    bare = os.path.join(tmp, "bare.safetensors")
    strip_metadata(model, bare)
    common = ["--dataset_name", "fashion_mnist", "--data_dir", data, "--threads", "2"]
    r = run("eval", "--weights", bare, *common)
    check(r.returncode == 2 and "--model_name, --num_classes and --input_size" in r.stderr,
          f"no description: {r.returncode} {r.stderr!r}")
    r = run("eval", "--weights", bare, *common, "--model_name", "mobilenetv2", "--num_classes", "10",
            "--input_size", "32")
    check(r.returncode == 0 and json.loads(r.stdout)["top1_accuracy"] == e["top1_accuracy"],
          f"flags for a bare file: {r.returncode} {r.stderr[-300:]!r}")

    # Wrong models and flags: one line naming the culprit.
    r = run("eval", "--weights", bare, *common, "--model_name", "resnet50", "--num_classes", "10",
            "--input_size", "32")
    lines = r.stderr.strip().splitlines()
    check(r.returncode == 1 and len(lines) == 1 and "does not fit the model" in lines[0],
          f"weights of another model: {r.returncode} {r.stderr[:300]!r}")
    r = run("eval", "--weights", model, *common, "--model_name", "resnet50")
    check(r.returncode == 2 and "--model_name resnet50 but" in r.stderr and "mobilenetv2" in r.stderr,
          f"a flag against the description: {r.returncode} {r.stderr!r}")
    r = run("eval", "--weights", model, *common, "--classes", "0-3")
    check(r.returncode == 0 and json.loads(r.stdout)["images"] < 150, f"a class subset: {r.stderr[-300:]!r}")
    r = run("eval", "--weights", os.path.join(tmp, "missing.safetensors"), *common)
    check(r.returncode == 1 and "missing.safetensors" in r.stderr, f"a missing file: {r.stderr!r}")

    # --out: the result and the figure.
    out = os.path.join(tmp, "eval")
    r = run("eval", "--weights", model, *common, "--out", out)
    check(r.returncode == 0 and os.path.getsize(os.path.join(out, "confusion.png")) > 1000
          and json.load(open(os.path.join(out, "eval.json")))["images"] == 150,
          f"--out: {r.returncode} {r.stderr[-300:]!r}")

    # predict: the images of an image_folder dataset, against eval on the same files.
    from PIL import Image
    folder = os.path.join(tmp, "folder")
    names = ["Pullover", "T-shirt", "Trouser"]  # sorted, as image_folder labels them
    files = []
    for split, n in (("train", 1), ("test", 4)):
        for c, name in enumerate(names):
            os.makedirs(os.path.join(folder, split, name))
            for i in range(n):
                px = np.clip(c * 25 + rng.integers(0, 40, (28, 28)), 0, 255).astype(np.uint8)
                path = os.path.join(folder, split, name, f"{i}.png")
                Image.fromarray(px).convert("RGB").save(path)
                if split == "test":
                    files.append((path, c))
    r = run("eval", "--weights", model, "--dataset_name", "image_folder", "--data_dir", folder, "--threads", "2")
    check(r.returncode == 0, f"eval on a folder: {r.stderr[-300:]!r}")
    folder_top1, folder_top5 = json.loads(r.stdout)["top1_accuracy"], json.loads(r.stdout)["top5_accuracy"]
    r = run("predict", "--weights", model, "--json", "--threads", "2", "--batch_size", "5",
            *[p for p, _ in files])
    check(r.returncode == 0, f"predict: {r.returncode} {r.stderr[-300:]!r}")
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    check([x["file"] for x in lines] == [p for p, _ in files], "one line per image, in order")
    check(all(len(x["top"]) == 5 and all(a["probability"] >= b["probability"] for a, b in zip(x["top"], x["top"][1:]))
              and 0 < sum(t["probability"] for t in x["top"]) <= 1 + 1e-6 for x in lines),
          "top 5 by falling probability")
    hits = sum(x["top"][0]["label"] == c for x, (_, c) in zip(lines, files))
    check(abs(100 * hits / len(files) - folder_top1) < 1e-9,
          f"predict's top-1 agrees with eval on the same files: {hits}/{len(files)} vs {folder_top1}%")
    hits5 = sum(c in [t["label"] for t in x["top"]] for x, (_, c) in zip(lines, files))
    check(abs(100 * hits5 / len(files) - folder_top5) < 1e-9,
          f"predict's top-5 agrees with eval's top-5: {hits5}/{len(files)} vs {folder_top5}%")
    check(all(x["top"][0]["class"] == e["class_names"][x["top"][0]["label"]] for x in lines), "classes by name")
    check("images/s" in r.stderr, f"images/s printed: {r.stderr!r}")

    # A folder with an undecodable file: one line naming it, the rest predicted, exit 1; a table.
    mixed = os.path.join(tmp, "mixed")
    os.makedirs(mixed)
    for i in range(2):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(os.path.join(mixed, f"ok{i}.png"))
    with open(os.path.join(mixed, "broken.jpg"), "wb") as f:
        f.write(b"not an image at all")
    r = run("predict", "--weights", model, mixed, "--top_k", "2", "--threads", "2")
    out = r.stdout.strip().splitlines()
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    check(r.returncode == 1 and len(out) == 2 and all(line.count("%") == 2 for line in out),
          f"undecodable file: exit {r.returncode}, {out}")
    check(len(errors) == 1 and "broken.jpg" in errors[0], f"one error line naming the file: {r.stderr!r}")
    r = run("predict", "--weights", model, os.path.join(tmp, "nothing.png"))
    check(r.returncode == 2 and "nothing.png" in r.stderr, f"a missing image: {r.returncode} {r.stderr!r}")

print("eval:", "FAILED" if failures else "ok")
sys.exit(1 if failures else 0)
