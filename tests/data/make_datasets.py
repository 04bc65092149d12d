#!/usr/bin/python3
"""Writes small datasets in the exact on-disk layouts of CUB-200-2011, Oxford-IIIT
Pet, Stanford Dogs, a folder-per-class tree and Fashion-MNIST, for the data
pipeline's tests.

Usage: make_datasets.py OUT_DIR

Each image dataset holds a progressive JPEG, a grayscale JPEG, a CMYK JPEG, a PNG
named .jpg and one corrupt (truncated) file. OUT_DIR/manifest.json records what
was written: per dataset the class names and, per split, the (path relative to
OUT_DIR, 0-based label) pairs in the order the loader must produce them, the
corrupt files, and the special files. OUT_DIR/expected/<n>.rgb holds Pillow's
RGB decoding of each special file (raw bytes, H x W x 3) with its size in
manifest["expected"], the independent reference for the decoder.
"""
import gzip
import io
import json
import os
import random
import struct
import sys

import numpy as np
from PIL import Image
import scipy.io

rng = np.random.default_rng(1234)
OUT = sys.argv[1]
manifest = {"expected": []}


def picture(width, height):
    """A smooth colour picture with some texture (JPEG-friendly)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 6.28, 3)
    channels = [
        127 + 100 * np.sin(x / (5 + 3 * c) + phase[c]) * np.cos(y / (7 + 2 * c) - phase[c]) for c in range(3)
    ]
    rgb = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def write_image(path, kind):
    """Writes one image file of the given kind; returns True if it is decodable."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    width, height = int(rng.integers(24, 64)), int(rng.integers(20, 56))
    img = picture(width, height)
    if kind == "jpeg":
        img.save(path, "JPEG", quality=90)
    elif kind == "progressive":
        img.save(path, "JPEG", quality=85, progressive=True)
    elif kind == "gray":
        img.convert("L").save(path, "JPEG", quality=90)
    elif kind == "cmyk":
        img.convert("CMYK").save(path, "JPEG", quality=95)
    elif kind == "png_as_jpg":
        img.save(path, "PNG")
    elif kind == "corrupt":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])  # truncated inside the entropy-coded data
        return False
    else:
        raise ValueError(kind)
    if kind != "jpeg":
        rel = os.path.relpath(path, OUT)
        with Image.open(path) as im:
            ref = im.convert("RGB")
        n = len(manifest["expected"])
        os.makedirs(os.path.join(OUT, "expected"), exist_ok=True)
        with open(os.path.join(OUT, "expected", f"{n}.rgb"), "wb") as f:
            f.write(ref.tobytes())
        manifest["expected"].append({"file": rel, "kind": kind, "width": ref.width, "height": ref.height,
                                     "raw": f"expected/{n}.rgb"})
    return True


SPECIAL = ["progressive", "gray", "cmyk", "png_as_jpg", "corrupt"]


def kinds(count):
    """Kinds for `count` train images: the special ones first, then plain JPEGs."""
    return [SPECIAL[i] if i < len(SPECIAL) else "jpeg" for i in range(count)]


def record(name, classes, train, test, corrupt):
    rel = lambda items: [[os.path.relpath(p, OUT), label] for p, label in items]
    manifest[name] = {"classes": classes, "train": rel(train), "test": rel(test),
                      "corrupt": [os.path.relpath(p, OUT) for p in corrupt]}


def write_rows(path, values):
    """One 'id value' line per value, ids from 1."""
    with open(path, "w") as f:
        f.writelines(f"{i + 1} {v}\n" for i, v in enumerate(values))


def cub():
    root = os.path.join(OUT, "cub", "CUB_200_2011")
    classes = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    images, labels, split = [], [], []
    train, test, corrupt = [], [], []
    special = iter(kinds(5))
    for c, name in enumerate(classes):
        folder = f"{c + 1:03d}.{name}"
        for k in range(4):
            rel = f"{folder}/{name}_{k:04d}_{100 + k}.jpg"
            is_train = k % 2 == 0
            kind = next(special, "jpeg") if is_train else "jpeg"
            path = os.path.join(root, "images", rel)
            if not write_image(path, kind):
                corrupt.append(path)
            images.append(rel)
            labels.append(c + 1)
            split.append(1 if is_train else 0)
            (train if is_train else test).append((path, c))
    write_rows(os.path.join(root, "classes.txt"), [f"{c + 1:03d}.{name}" for c, name in enumerate(classes)])
    write_rows(os.path.join(root, "images.txt"), images)
    write_rows(os.path.join(root, "image_class_labels.txt"), labels)
    write_rows(os.path.join(root, "train_test_split.txt"), split)
    record("caltech_birds2011", classes, train, test, corrupt)


def pet():
    root = os.path.join(OUT, "pet")
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1), ("great_pyrenees", 2)]
    special = iter(kinds(5))
    train, test, corrupt = [], [], []
    lines = {"trainval.txt": [], "test.txt": []}
    for c, (breed, species) in enumerate(breeds):
        for k in range(3):
            name = f"{breed}_{10 + k}"
            is_train = k < 2
            kind = next(special, "jpeg") if is_train else "jpeg"
            path = os.path.join(root, "images", name + ".jpg")
            if not write_image(path, kind):
                corrupt.append(path)
            (train if is_train else test).append((path, c))
            lines["trainval.txt" if is_train else "test.txt"].append(f"{name} {c + 1} {species} {c + 1}")
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for file, rows in lines.items():
        with open(os.path.join(root, "annotations", file), "w") as f:
            f.write("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n")
            f.write("\n".join(rows) + "\n")
    record("oxford_iiit_pet", [b for b, _ in breeds], train, test, corrupt)


def save_list(path, files, labels, compressed):
    cells = np.empty((len(files), 1), dtype=object)
    for i, f in enumerate(files):
        cells[i, 0] = f
    scipy.io.savemat(path, {"file_list": cells, "annotation_list": cells.copy(),
                            "labels": np.array(labels, dtype=np.float64).reshape(-1, 1)},
                     do_compression=compressed, format="5")


def dogs(name, compressed_train, break_labels=False, missing_image=False):
    root = os.path.join(OUT, name)
    breeds = [("n02085620", "Chihuahua"), ("n02085782", "Japanese_spaniel"), ("n02086910", "papillon")]
    special = iter(kinds(5))
    train, test, corrupt = [], [], []
    lists = {"train": ([], []), "test": ([], [])}
    for c, (wnid, breed) in enumerate(breeds):
        for k in range(4):
            rel = f"{wnid}-{breed}/{wnid}_{500 + k}.jpg"
            is_train = k < 3
            kind = next(special, "jpeg") if is_train else "jpeg"
            path = os.path.join(root, "Images", rel)
            if not write_image(path, kind):
                corrupt.append(path)
            (train if is_train else test).append((path, c))
            files, labels = lists["train" if is_train else "test"]
            files.append(rel)
            labels.append(c + 1)
    if missing_image:
        lists["test"][0].append(f"{breeds[0][0]}-{breeds[0][1]}/{breeds[0][0]}_999.jpg")
        lists["test"][1].append(1)
    if break_labels:
        lists["train"][1].pop()
    os.makedirs(os.path.join(root, "lists"), exist_ok=True)
    save_list(os.path.join(root, "lists", "train_list.mat"), *lists["train"], compressed=compressed_train)
    save_list(os.path.join(root, "lists", "test_list.mat"), *lists["test"], compressed=not compressed_train)
    if not (break_labels or missing_image):
        record(name, [b for _, b in breeds], train, test, corrupt)


def folder():
    root = os.path.join(OUT, "folder")
    classes = ["cat", "dog", "zebra"]  # written out of order below; the loader sorts
    special = iter(kinds(5))
    train, test, corrupt = [], [], []
    for c in [2, 0, 1]:
        for split, count in (("train", 3), ("test", 2)):
            for k in range(count):
                kind = next(special, "jpeg") if split == "train" else "jpeg"
                path = os.path.join(root, split, classes[c], f"img{k}.jpg")
                if not write_image(path, kind):
                    corrupt.append(path)
                (train if split == "train" else test).append((path, c))
    png = os.path.join(root, "train", "dog", "img9.PNG")  # extensions match in any case
    write_image(png, "png_as_jpg")
    train.append((png, 1))
    with open(os.path.join(root, "train", "cat", "notes.txt"), "w") as f:
        f.write("not an image: ignored\n")
    train.sort(key=lambda t: (t[1], t[0]))
    test.sort(key=lambda t: (t[1], t[0]))
    record("image_folder", classes, train, test, corrupt)


def idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fashion():
    root = os.path.join(OUT, "fashion")
    os.makedirs(root, exist_ok=True)
    out = {}
    for prefix, n in (("train", 30), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28))
        images[:, 0, 0] = labels * 20  # the label is readable from the first pixel
        idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"), images)
        idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"), labels)
        out[prefix] = labels.tolist()
    manifest["fashion_mnist"] = {"train_labels": out["train"], "test_labels": out["t10k"]}


os.makedirs(OUT, exist_ok=True)
cub()
pet()
dogs("dogs", compressed_train=True)
dogs("dogs_uncompressed", compressed_train=False)
dogs("dogs_bad_labels", compressed_train=True, break_labels=True)
dogs("dogs_missing_image", compressed_train=False, missing_image=True)
folder()
fashion()
with open(os.path.join(OUT, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
