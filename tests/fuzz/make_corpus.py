#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/:
small valid inputs of every parser (committed; rerun only to change them).

Usage: make_corpus.py [OUT_DIR]   (default: the corpus directory beside this file)
"""
import gzip
import io
import json
import os
import struct
import sys

import numpy as np
import scipy.io
from PIL import Image

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


f32 = lambda a: np.asarray(a, dtype="<f4").tobytes()
put("safetensors", "f32", safetensors({"w": ("F32", [2, 3], f32(np.arange(6))), "b": ("F32", [3], f32([1, 2, 3]))}))
put("safetensors", "mixed", safetensors({"h": ("F16", [4], np.arange(4, dtype="<f2").tobytes()),
                                         "l": ("I64", [2], np.array([3, -1], dtype="<i8").tobytes()),
                                         "e": ("F32", [0], b"")}, {"format": "pt"}))
put("safetensors", "bf16_f64", safetensors({"x": ("BF16", [2], b"\x80\x3f\x00\x40"),
                                            "y": ("F64", [1], np.array([2.5], dtype="<f8").tobytes())}))

def idx(array):
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape) + \
        array.astype(np.uint8).tobytes()

put("idx", "images", idx(np.arange(12).reshape(3, 2, 2)))
put("idx", "labels", idx(np.array([1, 2, 3])))
put("idx", "images_gz", gzip.compress(idx(np.arange(8).reshape(2, 2, 2))))

rng = np.random.default_rng(0)
img = Image.fromarray(rng.integers(0, 255, (8, 8, 3)).astype(np.uint8), "RGB")
for name, mode, kw, fmt in [("baseline.jpg", "RGB", {}, "JPEG"), ("progressive.jpg", "RGB", {"progressive": True}, "JPEG"),
                            ("gray.jpg", "L", {}, "JPEG"), ("cmyk.jpg", "CMYK", {}, "JPEG"),
                            ("rgb.png", "RGB", {}, "PNG"), ("palette.png", "P", {}, "PNG"), ("la.png", "LA", {}, "PNG"),
                            ("rgba.png", "RGBA", {}, "PNG")]:
    buf = io.BytesIO()
    img.convert(mode).save(buf, fmt, **kw)
    put("image", name, buf.getvalue())
buf = io.BytesIO()
Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)).save(buf, "PNG")
put("image", "gray16.png", buf.getvalue())

put("dataset_index", "cub", "1 001.a/a_1.jpg\n2 002.b/b_2.jpg\n\x001 1\n2 2\n\x001 1\n2 0\n\x001 001.a\n2 002.b\n")
put("dataset_index", "pet", "#comment\nCat_1 1 1 1\n\x00dog_2 2 2 2\n\x00\x00")

for compressed in (False, True):
    buf = io.BytesIO()
    cells = np.empty((2, 1), dtype=object)
    cells[0, 0], cells[1, 0] = "n1-a/x.jpg", "n2-b/y.jpg"
    scipy.io.savemat(buf, {"file_list": cells, "labels": np.array([[1.0], [2.0]])}, do_compression=compressed)
    put("mat_list", "compressed.mat" if compressed else "plain.mat", buf.getvalue())

put("profile", "profile.json", json.dumps({
    "key": {"model": "mobilenetv2", "input_size": 32, "num_classes": 5, "batch": 32, "threads": 2, "cpu": "x",
            "optimizer": "sgdw"},
    "units": ["a", "b"], "t_fwd_ms": 1.5, "t_fwd_spread_ms": 0.1, "t_fwd_frozen_ms": 1.25, "t_fw_ms": [0.125, 0.125],
    "t_dw_ms": [0.5, 0.25], "t_dy_ms": [0.1, 0.2],
    "t_dw_spread_ms": [0.0, 0.0], "t_dy_spread_ms": [0.0, 0.0]}))

put("checkpoint_state", "state.json", json.dumps({
    "step": 12, "mask": "1011",
    "selections": [{"epoch": 0, "step": 0, "reason": "probe", "rho": 0.5, "unit_mask": "101", "importance": 1.5,
                    "predicted_share": 0.5, "measured_share": 0.48, "measured_step_ms": 4.8, "full_step_ms": 10.0,
                    "steps": 12, "selected_units": ["a", "c"], "selection_ms": 3.5}],
    "optimizer_steps": {"conv.weight": 12, "fc.bias": 3},
    "control": {"fwd_scale": 1.1, "bwd_scale": 0.9, "other_ms": 0.2, "resolves": 1, "since_install": 12,
                "window": 7, "fwd_sum": 7.0, "bwd_sum": 21.0, "other_sum": 1.4, "threads": 1, "windows_on": 3,
                "lost_trials": 1, "trial_from": 0, "trial_full": 12.5, "trial_fwd_scale": 1.2, "trial_bwd_scale": 1.1},
    "importance": [0.5, -0.1, 1.0], "rho": 0.5, "train_ms": 1234.5, "open_selection": True, "deadline_missed": False,
    "run": {"epoch": 0, "best_test_accuracy": 50.0, "metrics_bytes": 100}}))


def onnx_seeds():
    """Tiny classifiers covering the importer's operators, exported as scripts/export_onnx.py does."""
    import torch
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
    import export_onnx
    nn = torch.nn

    class Tiny(nn.Module):
        """conv, batch norm, relu, max pool, a residual add, an SE gate (sigmoid, mul), concat,
        a channel shuffle with split, hardswish, relu6, global pooling, linear."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.pool = nn.MaxPool2d(2)
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
            self.se = nn.Conv2d(4, 4, 1)
            self.act = nn.Hardswish()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn(self.conv(x))))
            x = x + self.dw(x)
            x = x * torch.sigmoid(self.se(nn.functional.adaptive_avg_pool2d(x, 1)))
            x = torch.cat([x, nn.functional.relu6(x)], 1)
            n, c, h, w = x.shape
            x = x.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            a, b = x.chunk(2, dim=1)
            x = torch.cat([self.act(a), b * torch.sigmoid(b)], 1)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class TinyNeXt(nn.Module):
        """ConvNeXt's block: channels-last layer norm, linear, GELU, layer scale."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 2, stride=2)
            self.norm = nn.LayerNorm(4, eps=1e-6)
            self.lin = nn.Linear(4, 8)
            self.lin2 = nn.Linear(8, 4)
            self.layer_scale = nn.Parameter(torch.full((4, 1, 1), 0.5))
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = self.conv(x)
            y = self.lin2(nn.functional.gelu(self.lin(self.norm(x.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
            x = x + self.layer_scale * y
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    for name, model in (("tiny.onnx", Tiny()), ("tiny_next.onnx", TinyNeXt())):
        path = os.path.join(OUT, "onnx", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        export_onnx.export(model, path, 1, 16)


onnx_seeds()
