#!/usr/bin/python3
"""PyTorch's half of benchmarks/compare_pytorch: times forward and a full training step
(forward, backward, SGD with momentum and weight decay) of the torchvision model that
elastic's model of the same name mirrors, batch-norm statistics frozen as in elastic.

usage: torch_step.py MODEL [batch] [input_size] [threads] [steps] [warmup]   (prints one JSON object)
"""
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from export_torchvision import build  # noqa: E402


def measure(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def main():
    name = sys.argv[1]
    defaults = ["4", "224", "2", "10", "3"]
    batch, size, threads, steps, warmup = (int(v) for v in (sys.argv[2:7] + defaults[len(sys.argv[2:7]):]))
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    model = build(name, 1000, size)
    model.train()
    for m in model.modules():  # frozen batch-norm statistics, trainable gamma/beta
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def forward():
        with torch.no_grad():
            model(x)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    out = {"model": name, "batch": batch, "input_size": size, "threads": threads,
           "forward": measure(forward, warmup, steps), "train_step": measure(train_step, warmup, steps)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
