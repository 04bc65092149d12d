#!/usr/bin/python3
"""scripts/export_torchvision.py end to end: export a random torchvision backbone from the
command line, check the file against torchvision's state dict, and load it in `elastic step`.

usage: export_test.py ELASTIC_BINARY MODEL_NAME INPUT_SIZE
"""
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts"))
from export_torchvision import build, read_safetensors, write_safetensors  # noqa: E402


def main():
    binary, model_name, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "w.safetensors")
        subprocess.run(["/usr/bin/python3", os.path.join(HERE, "..", "..", "scripts", "export_torchvision.py"),
                        "--model_name", model_name, "--out", weights, "--seed", "3"], check=True)
        got = read_safetensors(weights)
        torch.manual_seed(3)
        want = build(model_name, 1000, 224).state_dict()
        assert set(got) == set(want), f"names differ: {sorted(set(got) ^ set(want))[:10]}"
        for name, t in want.items():
            assert tuple(got[name].shape) == tuple(t.shape), f"{name}: {tuple(got[name].shape)} vs {tuple(t.shape)}"
            assert torch.equal(got[name], t), f"{name}: values differ from torchvision's"
        inputs, out = os.path.join(tmp, "x.safetensors"), os.path.join(tmp, "o.safetensors")
        write_safetensors(inputs, {"images": torch.randn(2, 3, size, size), "labels": torch.tensor([3, 999])})
        subprocess.run([binary, "step", "--model_name", model_name, "--num_classes", "1000", "--input_size",
                        str(size), "--weights", weights, "--inputs", inputs, "--out", out, "--threads", "2"],
                       check=True)
        result = read_safetensors(out)
        assert tuple(result["logits"].shape) == (2, 1000)
        assert torch.isfinite(result["loss"]).all()
    print(f"{model_name}: exported {len(want)} tensors, identical to torchvision's, loaded by elastic step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
