#!/usr/bin/python3
"""Exports a torchvision classifier as ONNX in the form `elastic`'s importer takes.

usage: scripts/export_onnx.py --model_name NAME [--pretrained] [--num_classes N] [--input_size S]
                              [--batch B] [--opset K] --out F.onnx

NAME is a torchvision classification model (resnet18, mobilenet_v3_large, efficientnet_b0, ...).
Without --pretrained (or without internet) the weights are random. Run with Debian's
python3-torch (/usr/bin/python3).

The export keeps batch norm as BatchNormalization nodes with the state-dict names: exported
in eval mode, PyTorch folds batch norm into the convolutions and the parameters lose their
names, so batch-norm modules are exported in training mode while every other module
(dropout, stochastic depth) stays in eval mode, where it is the identity. The batch, height
and width are dynamic axes: `elastic` takes them from --batch_size and --input_size.
"""
import argparse
import sys
import warnings

import torch
import torchvision


def build(model_name, num_classes=1000, pretrained=False):
    """The torchvision classifier NAME, random or with its default pretrained weights."""
    fn = getattr(torchvision.models, model_name, None)
    if model_name.startswith("_") or not callable(fn) or isinstance(fn, type):
        raise SystemExit(f"--model_name {model_name!r} is not a torchvision classification model")
    if pretrained:
        return fn(weights="DEFAULT")
    return fn(weights=None, num_classes=num_classes)


def export(model, path, batch=2, input_size=224, opset=14):
    """Writes `model` to `path` as ONNX (batch norm kept, named; the rest in eval mode)."""
    model.eval()
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.train()
    # The export runs the model once; batch norm in training mode would update
    # its running statistics, so the state is restored afterwards.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(batch, 3, input_size, input_size)
    # PyTorch warns once per batch norm that its num_batches_tracked update is not exported.
    warnings.filterwarnings("ignore", message=".*Removing mutation from node.*")
    torch.onnx.export(model, x, path, opset_version=opset, training=torch.onnx.TrainingMode.PRESERVE,
                      do_constant_folding=False, input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
    model.load_state_dict(state)
    model.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_name", required=True)
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--opset", type=int, default=14)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    try:
        model = build(a.model_name, a.num_classes, a.pretrained)
    except Exception as e:  # no internet: the weights cannot be fetched
        if not a.pretrained:
            raise
        print(f"export_onnx: pretrained weights unavailable ({type(e).__name__}); exporting random weights",
              file=sys.stderr)
        model = build(a.model_name, a.num_classes, False)
    export(model, a.out, a.batch, a.input_size, a.opset)
    print(f"wrote {a.out} ({a.model_name}, {sum(p.numel() for p in model.parameters())} params)")


if __name__ == "__main__":
    main()
