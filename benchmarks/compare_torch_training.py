"""Same architecture, same hyper-parameters, same initial weights and data order: test
accuracy of cnndsl and PyTorch after N epochs on Fashion-MNIST (issue: within 1 point).

    python benchmarks/compare_torch_training.py [--epochs 3]

The network is examples/fashion_small.cnn; PyTorch starts from cnndsl's initial weights
(the layouts are PyTorch's, so they copy unchanged) and sees the same batches. Adam,
lr 0.001, batch 64, 10% held out as in `cnndsl train`. Prints a table; asserts nothing.
OpenBLAS runs with its best kernels (OPENBLAS_CORETYPE/L2_SIZE dropped before numpy loads,
as in bench_train.py: this machine's environment forces Haswell kernels, half the speed).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

for _name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # before numpy loads OpenBLAS
    os.environ.pop(_name, None)

import numpy as np

import cnndsl
from cnndsl.data import load_dataset, split_validation
from cnndsl.optim import Adam
from cnndsl.train import evaluate

ROOT = Path(__file__).resolve().parent.parent


def torch_model(model):
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    ours = list(model.parameters().values())
    with torch.no_grad():
        for theirs, array in zip(net.parameters(), ours, strict=True):
            theirs.copy_(torch.from_numpy(array.copy()))
    return net


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default="fashion-mnist")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(args.data)
    x, y, _, _ = split_validation(data.x_train, data.y_train, 0.1, 0)
    model = cnndsl.load(str(ROOT / "examples" / "fashion_small.cnn"))
    net = torch_model(model)
    ours_opt = Adam(model.parameters(), lr=1e-3)
    theirs_opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    print(f"{'epoch':>5} {'cnndsl test acc':>16} {'torch test acc':>15} {'diff':>7} "
          f"{'cnndsl s':>9} {'torch s':>8}")
    for epoch in range(args.epochs):
        order = np.random.default_rng([0, epoch]).permutation(len(x))
        ours_time = theirs_time = 0.0
        for start in range(0, len(x), 64):
            index = order[start:start + 64]
            began = time.perf_counter()
            _, _, grads = model.loss_and_grads(x[index], y[index])
            ours_opt.step(grads)
            ours_time += time.perf_counter() - began
            began = time.perf_counter()
            batch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x[index], -1, 1)))
            theirs_opt.zero_grad()
            loss_fn(net(batch), torch.from_numpy(y[index])).backward()
            theirs_opt.step()
            theirs_time += time.perf_counter() - began
        ours_acc = evaluate(model, data.x_test, data.y_test)["accuracy"]
        net.eval()
        with torch.no_grad():
            logits = net(torch.from_numpy(np.ascontiguousarray(np.moveaxis(data.x_test, -1, 1))))
        net.train()
        theirs_acc = float((logits.argmax(1).numpy() == data.y_test).mean())
        print(f"{epoch + 1:5d} {ours_acc:16.4f} {theirs_acc:15.4f} "
              f"{(ours_acc - theirs_acc) * 100:+6.2f}p {ours_time:9.1f} {theirs_time:8.1f}")


if __name__ == "__main__":
    main()
