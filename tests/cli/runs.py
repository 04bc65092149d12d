"""Helpers of the command-line tests that train: expectations that collect
failures, a small learnable IDX dataset in Fashion-MNIST's layout, and metrics
records without their time fields."""
import gzip
import json
import os
import struct
import subprocess

import numpy as np

TIME_FIELDS = {"wall_time", "epoch_time", "data_wait", "train_time", "selection_ms", "measured_share",
               "measured_step_ms", "full_step_ms"}
failures = []


def check(cond, what):
    """Records a failed expectation and goes on, so one run reports every failure."""
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_data(root, train=3200, test=400):
    """Learnable 28x28 images: each class a bright bar at its own position, plus noise."""
    rng = np.random.default_rng(0)
    os.makedirs(root)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c: 4 + 2 * c, 4:24] = 230
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"), labels)


def strip(record):
    return {k: v for k, v in record.items() if k not in TIME_FIELDS}


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [strip(json.loads(line)) for line in f]


def elastic_setup(elastic, tmp, **data_sizes):
    """Data, one timing profile (MobileNetV2, 32x32, batch 16, 10 classes, 2 threads) and the
    common part of an `elastic train` command line for it: elastic training with checkpoints, with
    the time model never corrected from measured steps (so that selections do not depend on timing).
    Returns (base command, log directory)."""
    data = os.path.join(tmp, "data")
    make_data(data, **data_sizes)
    profile = os.path.join(tmp, "profile.json")
    subprocess.run([elastic, "profile", "--model_name", "mobilenetv2", "--input_size", "32", "--batch_size", "16",
                    "--num_classes", "10", "--threads", "2", "--out", profile], check=True, stdout=subprocess.DEVNULL)
    logs = os.path.join(tmp, "logs")
    base = [elastic, "train", "--model_name", "mobilenetv2", "--dataset_name", "fashion_mnist", "--data_dir", data,
            "--input_size", "32", "--batch_size", "16", "--train_type", "elastic_training", "--rho", "0.6",
            "--learning_rate", "0.01", "--threads", "2", "--profile", profile, "--save_model", "--log_dir", logs,
            "--bn_batch_stats", "--time_control", "off"]
    return base, logs
