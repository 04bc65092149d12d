#!/usr/bin/python3
"""A model fine-tuned by `elastic train` (new head of another class count), handed back to
PyTorch: its model.safetensors loads into the matching torchvision module with strict=True
(scripts/export_torchvision.py import_elastic, which reads the file's model description),
and on the same preprocessed images that module's logits equal elastic's (`elastic step`,
inference semantics) within 1e-4 relative L2.

usage: roundtrip_test.py ELASTIC_BINARY MODEL_NAME INPUT_SIZE
"""
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts"))
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
from export_torchvision import import_elastic, read_safetensors, write_safetensors  # noqa: E402
from runs import make_data  # noqa: E402

CLASSES = 12  # the new head: not torchvision's 1000, not the dataset's 10


def main():
    binary, model_name, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        make_data(data, train=64, test=8)
        logs = os.path.join(tmp, "logs")
        subprocess.run([binary, "train", "--model_name", model_name, "--dataset_name", "fashion_mnist",
                        "--data_dir", data, "--input_size", str(size), "--batch_size", "2", "--num_classes",
                        str(CLASSES), "--train_type", "full_training", "--num_epochs", "1", "--steps_per_epoch", "3",
                        "--learning_rate", "0.01", "--log_dir", logs, "--run_name", "r", "--threads", "2",
                        "--checkpoint_every", "0", "--save_model"], check=True, stdout=subprocess.DEVNULL)
        weights = os.path.join(logs, "r", "model.safetensors")

        torch.manual_seed(5)
        module = import_elastic(weights).double()
        images = torch.randn(2, 3, size, size)
        inputs, out = os.path.join(tmp, "x.safetensors"), os.path.join(tmp, "o.safetensors")
        write_safetensors(inputs, {"images": images, "labels": torch.tensor([1, CLASSES - 1])})
        subprocess.run([binary, "step", "--model_name", model_name, "--num_classes", str(CLASSES), "--input_size",
                        str(size), "--weights", weights, "--inputs", inputs, "--out", out, "--threads", "2"],
                       check=True, stdout=subprocess.DEVNULL)
        ours = read_safetensors(out)["logits"].double()
        with torch.no_grad():
            theirs = module(images.double())
        err = ((ours - theirs).norm() / theirs.norm()).item()
        print(f"{model_name} {size}x{size}, {CLASSES} classes: logits relative L2 {err:.2e}")
        if tuple(theirs.shape) != (2, CLASSES) or not err <= 1e-4:
            print("FAIL: logits differ")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
