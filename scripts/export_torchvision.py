#!/usr/bin/python3
"""Writes a torchvision backbone's state dict as safetensors for elastic.

Pure Python over torch (no safetensors package needed):

  export_torchvision.py --model_name resnet50 --out resnet50.safetensors [--pretrained]

Without --pretrained the weights are torchvision's random initialization (for tests).
The head keeps torchvision's 1000 classes; elastic loads the backbone and builds a new head.

The other way, in Python: import_elastic("model.safetensors") returns the torchvision module
(for vgg16, Vgg16Backbone: torchvision's features with elastic's head) holding a model that
elastic trained, loaded with strict=True.
"""
import argparse
import json
import struct
import sys

import torch
import torchvision

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32"}


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor} to `path` in the safetensors layout (8-byte LE header length, JSON, data)."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise ValueError(f"tensor {name}: dtype {t.dtype} is not supported")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Reads a safetensors file into {name: tensor} (float tensors as float64)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    names = {v: k for k, v in _DTYPES.items()}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:end]), dtype=names[e["dtype"]]) if end > b else torch.empty(0)
        out[name] = t.reshape(e["shape"])
    return out


def read_safetensors_metadata(path):
    """The file's __metadata__ ({} if none)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {})


def import_elastic(path, model_name=None, num_classes=None, input_size=None):
    """A torchvision module in eval mode holding the weights of an elastic model file
    (model.safetensors or a checkpoint), loaded with strict=True. The model, class count and
    input size come from the file's description (metadata "elastic_model") unless given.
    Batch-norm layers get num_batches_tracked = 0: the one buffer elastic does not keep."""
    info = json.loads(read_safetensors_metadata(path).get("elastic_model", "{}"))
    model_name = model_name or info.get("model_name")
    num_classes = num_classes or info.get("num_classes")
    input_size = input_size or info.get("input_size")
    if not (model_name and num_classes and input_size):
        raise SystemExit(f"{path} does not describe its model: give model_name, num_classes and input_size")
    state = {k: v for k, v in read_safetensors(path).items() if not k.startswith("optimizer/")}
    model = build(model_name, num_classes, input_size)
    for name in model.state_dict():
        if name.endswith("num_batches_tracked") and name not in state:
            state[name] = torch.tensor(0)
    model.load_state_dict(state, strict=True)
    return model.eval()


class Vgg16Backbone(torch.nn.Module):
    """torchvision's vgg16 `features` with elastic's head: global average pooling, dropout, `head`."""

    def __init__(self, num_classes, weights=None):
        super().__init__()
        self.features = torchvision.models.vgg16(weights=weights).features
        self.head = torch.nn.Linear(512, num_classes)
        self.dropout = torch.nn.Dropout(0.2)

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.head(self.dropout(x))


def build(model_name, num_classes=1000, input_size=224, pretrained=False):
    """The torchvision module whose state dict names match elastic's model of that name."""
    m = torchvision.models
    if model_name == "resnet50":
        return m.resnet50(weights=m.ResNet50_Weights.IMAGENET1K_V2 if pretrained else None, num_classes=num_classes)
    if model_name == "mobilenetv2":
        return m.mobilenet_v2(weights=m.MobileNet_V2_Weights.IMAGENET1K_V2 if pretrained else None,
                              num_classes=num_classes)
    if model_name == "vgg16":
        return Vgg16Backbone(num_classes, m.VGG16_Weights.IMAGENET1K_V1 if pretrained else None)
    if model_name == "vit":
        if pretrained:
            if input_size != 224:
                raise SystemExit("--pretrained vit weights exist for --input_size 224 only")
            return m.vit_b_16(weights=m.ViT_B_16_Weights.IMAGENET1K_V1)
        return m.vit_b_16(weights=None, image_size=input_size, num_classes=num_classes)
    raise SystemExit(f"--model_name {model_name!r} is not one of resnet50, vgg16, mobilenetv2, vit")


class Clamp6(torch.nn.Module):
    """ReLU6 as clamp(0, 6): the same function, whose backward PyTorch 1.13 has in bf16 on the
    CPU (its ReLU6/hardtanh backward has none)."""

    def forward(self, x):
        return x.clamp(0, 6)


def relu6_as_clamp(model):
    """Replaces every torch.nn.ReLU6 of `model` by Clamp6, in place (for bf16 autocast)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.ReLU6):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, Clamp6())
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name", required=True, choices=["resnet50", "vgg16", "mobilenetv2", "vit"])
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--pretrained", action="store_true", help="torchvision's ImageNet weights (downloads them)")
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--input_size", type=int, default=224, help="vit only: sizes the position embedding")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    model = build(a.model_name, a.num_classes, a.input_size, a.pretrained)
    write_safetensors(a.out, model.state_dict(), {"model_name": a.model_name, "source": "torchvision"})
    print(f"wrote {len(model.state_dict())} tensors to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
