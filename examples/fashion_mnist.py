"""Quick real-data example: full data vs random batches vs CREST on Fashion-MNIST (CPU, offline).

Trains a small CNN three times with the same epochs and learning-rate schedule (SGD, momentum
0.9, warm-up, ×0.1 at 60% and 85% of the epochs, as in the CREST paper scaled to a short run):

* ``full``: every example every epoch (a shuffled DataLoader);
* ``random``: ``budget`` of the steps, uniform random batches (``RandomBatchSampler``);
* ``crest``: ``budget`` of the steps, CREST's weighted mini-batch coresets
  (``CrestBatchSampler`` with ``GradientProxyCallback`` and ``QuadraticLossMonitor``, with the
  library's defaults, as in the README: see ``docs/benchmarks/end_to_end.md``).

It prints one line per epoch, then a table with test accuracy, relative error to full,
training wall time, effective speedup (full time / method time, every sampler overhead
included) and the sampler's overhead breakdown; it writes a JSON of the results and, when
matplotlib is installed, a plot next to it.

Data: ``apt-get install dataset-fashion-mnist`` (Debian/Ubuntu) puts the IDX files in
``/usr/share/datasets/fashion-mnist``; ``--data-dir`` points elsewhere.

    python examples/fashion_mnist.py                      # about 5 minutes on 2 CPU cores
    python examples/fashion_mnist.py --methods crest --epochs 5
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch
from _data import FASHION_MNIST_DIR, ImageDataset, load_fashion_mnist
from _nets import SmallCNN
from _train import (
    Recipe,
    add_common_args,
    crest_config,
    finish,
    parse_methods,
    seed_everything,
    set_threads,
    train_one,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        default="full,random,crest",
        help="comma-separated, from full,random,crest,craig",
    )
    # CREST with the library's defaults (the README's lines; docs/benchmarks/end_to_end.md)
    add_common_args(parser, epochs=10, threads=1)
    parser.add_argument("--data-dir", default=FASHION_MNIST_DIR)
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv")
    parser.add_argument(
        "--train-subset", type=int, default=None,
        help="train on the first N training examples only (default: all 60,000)",
    )  # fmt: skip
    parser.add_argument("--out", default="results/fashion_mnist.json", help="JSON ('' for none)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    methods = parse_methods(args.methods)
    device = torch.device(args.device)
    set_threads(args.threads)
    try:
        data = load_fashion_mnist(args.data_dir)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    images, labels = data["train"]
    if args.train_subset is not None:
        images, labels = images[: args.train_subset], labels[: args.train_subset]
    train_set = ImageDataset(images, labels)
    test_set = ImageDataset(*data["test"], mean=train_set.mean, std=train_set.std)
    recipe = Recipe(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay,
    )  # fmt: skip
    print(
        f"Fashion-MNIST: {len(train_set)} train / {len(test_set)} test examples"
        + (" (training SUBSET)" if args.train_subset is not None else "")
        + f"; SmallCNN(width={args.width}); {recipe.epochs} epochs, batch {recipe.batch_size}, "
        f"budget {args.budget:g} for random/crest; device {device}, "
        f"{torch.get_num_threads()} torch threads",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for method in methods:
        seed_everything(args.seed)  # the same initial weights for every method
        model = SmallCNN(in_channels=1, num_classes=10, width=args.width)
        results[method] = train_one(
            method, model, train_set, test_set, np.asarray(labels), recipe,
            budget=args.budget, seed=args.seed, device=device, num_workers=args.num_workers,
            max_steps=args.max_steps, crest=crest_config(args),
        )  # fmt: skip
    meta = {
        "title": f"Fashion-MNIST, SmallCNN, budget {args.budget:g}, {recipe.epochs} epochs",
        "example": "fashion_mnist",
        "command": " ".join(["python examples/fashion_mnist.py", *(argv or sys.argv[1:])]),
        "args": vars(args),
        "num_train": len(train_set),
        "total_s": None,
    }
    meta["total_s"] = time.perf_counter() - start
    report = finish(results, meta, args.out or None)
    print(f"total wall time {meta['total_s']:.0f} s (training, selection and evaluation)")
    return report


if __name__ == "__main__":
    main()
