#!/usr/bin/python3
"""What kernels the PyTorch peer runs on this CPU, as one JSON object: the OpenBLAS core it
uses (asked from the library loaded into this process, after a matmul) and the rate it gives a
linear layer, the oneDNN ISA its convolutions dispatch to (from oneDNN's verbose line), and the
CPU's vector flags. Run with OPENBLAS_CORETYPE set to see what that setting gives.

usage: peer_probe.py
"""
import ctypes
import json
import os
import sys
import time

os.environ["DNNL_VERBOSE"] = "1"
import torch  # noqa: E402


def openblas_core():
    torch.randn(64, 64) @ torch.randn(64, 64)
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "openblas" in line.lower() or "libblas" in line}
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            lib.openblas_get_config.restype = ctypes.c_char_p
            return lib.openblas_get_corename().decode(), lib.openblas_get_config().decode(), path
        except (OSError, AttributeError):
            continue
    return "none", "", ""


def linear_gflops():
    """The best of five timings of 20 float32 linear layers of ViT-B's MLP shape (788 token rows,
    768 -> 3072), which PyTorch runs on the BLAS: the rate the BLAS core gives the peer."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    x, w = torch.randn(788, 768), torch.randn(3072, 768)
    for _ in range(5):
        torch.nn.functional.linear(x, w)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            torch.nn.functional.linear(x, w)
        best = min(best, (time.perf_counter() - start) / 20)
    return 2 * 788 * 768 * 3072 / best / 1e9


def main():
    core, config, path = openblas_core()
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":")[1].split())
                break
    # oneDNN prints its ISA on the first primitive it creates; this process's stdout is read by
    # the caller, so the verbose lines are captured through a pipe on file descriptor 1.
    r, w = os.pipe()
    saved = os.dup(1)
    os.dup2(w, 1)
    torch.nn.functional.conv2d(torch.randn(4, 64, 56, 56), torch.randn(64, 64, 3, 3), padding=1)
    sys.stdout.flush()
    ctypes.CDLL(None).fflush(None)  # oneDNN writes through C's stdout buffer
    os.dup2(saved, 1)
    os.close(w)
    verbose = os.read(r, 1 << 16).decode(errors="replace")
    isa = next((line.split("isa:")[1].split(",")[0].strip() for line in verbose.splitlines() if "isa:" in line),
               "unknown")
    print(json.dumps({"blas_core": core, "blas_config": config, "blas_library": path,
                      "blas_linear_gflops": round(linear_gflops(), 1), "onednn_isa": isa,
                      "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
                      "avx512_bf16": "avx512_bf16" in flags, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
