#!/usr/bin/python3
"""`elastic data` on generated fixtures: the JSON it prints, the files --verify
reports, and its exit codes (0 usable, 1 broken data, 2 usage errors).

Usage: data_command_test.py ELASTIC_BINARY
"""
import json
import os
import subprocess
import sys
import tempfile

ELASTIC = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
GENERATOR = os.path.join(HERE, "..", "data", "make_datasets.py")

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def run(*args):
    p = subprocess.run([ELASTIC, "data", *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(["/usr/bin/python3", GENERATOR, tmp], check=True)
    manifest = json.load(open(os.path.join(tmp, "manifest.json")))
    for name, key, folder in [("caltech_birds2011", "caltech_birds2011", "cub"),
                              ("oxford_iiit_pet", "oxford_iiit_pet", "pet"),
                              ("stanford_dogs", "dogs", "dogs"),
                              ("stanford_dogs", "dogs_uncompressed", "dogs_uncompressed"),
                              ("image_folder", "image_folder", "folder")]:
        m = manifest[key]
        rc, out, err = run("--dataset_name", name, "--data_dir", os.path.join(tmp, folder))
        got = json.loads(out)
        want = {"dataset": name, "classes": len(m["classes"]), "train": len(m["train"]), "test": len(m["test"])}
        check(rc == 0 and got == want, f"{key}: rc {rc}, {got} != {want}")
        rc, out, err = run("--dataset_name", name, "--data_dir", os.path.join(tmp, folder), "--verify")
        got = json.loads(out)
        corrupt = [os.path.join(tmp, c) for c in m["corrupt"]]
        total = len(m["train"]) + len(m["test"])
        check(got["failed"] == corrupt, f"{key}: failed {got['failed']} != {corrupt}")
        check(got["decoded"] == total - len(corrupt), f"{key}: decoded {got['decoded']} of {total}")
        check(rc == 1 and corrupt[0] in err, f"{key} --verify: rc {rc}, stderr {err!r}")

    rc, out, err = run("--dataset_name", "fashion_mnist", "--data_dir", os.path.join(tmp, "fashion"), "--verify",
                       "--classes", "5-9")
    check(rc == 0 and json.loads(out) == {"dataset": "fashion_mnist", "classes": 5, "train": 15, "test": 10,
                                          "decoded": 25, "failed": []}, f"fashion_mnist: rc {rc} {out}")

    # Broken data: exit 1 and a message naming the file.
    rc, out, err = run("--dataset_name", "stanford_dogs", "--data_dir", os.path.join(tmp, "dogs_missing_image"))
    check(rc == 1 and "test_list.mat" in err and "n02085620_999.jpg" in err and out == "",
          f"missing image: rc {rc}, {err!r}")
    os.remove(os.path.join(tmp, "pet", "annotations", "test.txt"))
    rc, out, err = run("--dataset_name", "oxford_iiit_pet", "--data_dir", os.path.join(tmp, "pet"))
    check(rc == 1 and "annotations/test.txt" in err, f"missing index: rc {rc}, {err!r}")

    # Usage errors: exit 2 naming the flag or value.
    rc, out, err = run("--dataset_name", "imagenet", "--data_dir", tmp)
    check(rc == 2 and "--dataset_name 'imagenet'" in err, f"unknown dataset: rc {rc}, {err!r}")
    rc, out, err = run("--dataset", "x")
    check(rc == 2 and "--dataset" in err, f"unknown flag: rc {rc}, {err!r}")
    rc, out, err = run("--dataset_name", "fashion_mnist", "--classes", "9-2")
    check(rc == 2 and "9-2" in err, f"bad class list: rc {rc}, {err!r}")
    rc, out, err = run("--help")
    check(rc == 0 and "--verify" in out and "--data_dir" in out, "help lists the flags")

print("data command:", "FAILED" if failures else "ok")
sys.exit(1 if failures else 0)
