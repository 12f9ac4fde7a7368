"""CIFAR-10 (ResNet-20) and CIFAR-100 (ResNet-18) with the CREST paper's recipe.

One method per run, ``--method full|random|crest|craig``: SGD with momentum 0.9, batch 128, lr 0.1
warmed up over the first 10% of the epochs, ×0.1 at 60% and 85%, weight decay 5e-4, 200 epochs,
random crop 32 with padding 4 plus horizontal flip; CREST at a 10% budget with the paper's rule
(``--rule paper``, the default here: T1 = ceil(h·‖H_0‖/‖H_ℓ‖), Hutchinson's diagonal over the
network, P = 5·T1, a check sample of one pool, cluster-size weights) and its τ and h (Table 6:
CIFAR-10 τ=0.05, h=1; CIFAR-100 τ=0.01, h=10), or with the library's defaults
(``--rule library``).

The data are the standard python tarballs (``cifar-10-python.tar.gz``,
``cifar-100-python.tar.gz``), read in place with numpy and pickle; a missing tarball is
downloaded into ``--data-dir`` and checked against its md5.

    python examples/cifar.py --dataset cifar10 --method crest --device cuda
    python examples/cifar.py --dataset cifar100 --method full --device cuda --num-workers 4

Prints one line per epoch, a final line with test accuracy, training wall time and the
sampler's overhead breakdown, and writes a JSON of the results (``--out``). Runs of different
methods compare through their JSON files (relative error and speedup against ``full``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import torch
from _data import CIFAR, ImageDataset, load_cifar
from _nets import resnet18, resnet20
from _train import (
    METHODS,
    Recipe,
    add_common_args,
    crest_config,
    finish,
    seed_everything,
    set_threads,
    train_one,
)

# the paper's network and tuned (τ, h) per data set (Table 6)
SETUPS: dict[str, dict[str, Any]] = {
    "cifar10": {"model": resnet20, "model_name": "ResNet-20", "tau": 0.05, "h": 1.0},
    "cifar100": {"model": resnet18, "model_name": "ResNet-18", "tau": 0.01, "h": 10.0},
}


def _paper_rule(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """The paper's rule, pools and check sample (``--pool-multiplier``, ``--pool-size``,
    ``--check-size`` override them): the check sample is the pool, so both are set here (the
    paper's pool, 1% of N but at least two batches), and the coresets serve as long as the
    checks hold (no cap on their uses), weighted by their cluster sizes."""
    pool_size = args.pool_size or max(math.ceil(0.01 * n), 2 * args.batch_size)
    return {
        "interval_rule": "paper", "curvature": "hutchinson",
        "pool_multiplier": args.pool_multiplier or 5, "pool_size": pool_size,
        "check_size": args.check_size or pool_size,
        "max_uses": 0 if args.max_uses is None else args.max_uses,
        "weighting": "cluster_size",
    }  # fmt: skip


def _num(value: float | None) -> str:
    return "library default" if value is None else f"{value:g}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SETUPS), default="cifar10")
    parser.add_argument("--method", choices=METHODS, default="crest")
    add_common_args(parser, epochs=200, tau=None, h=None)  # None: the paper's (τ, h)
    parser.add_argument(
        "--rule", choices=("paper", "library"), default="paper",
        help="CREST: the paper's rule, tau and h (default), or the library's defaults",
    )  # fmt: skip
    parser.add_argument("--data-dir", default="data", help="where the tarball is (or goes)")
    parser.add_argument("--no-download", action="store_true", help="never download")
    parser.add_argument(
        "--out", default=None, help="JSON (default results/DATASET_METHOD_seedSEED.json; '' none)"
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup = SETUPS[args.dataset]
    paper = args.rule == "paper"
    tau = setup["tau"] if args.tau is None and paper else args.tau
    h = setup["h"] if args.h is None and paper else args.h
    device = torch.device(args.device)
    set_threads(args.threads)
    try:
        data = load_cifar(args.dataset, args.data_dir, download=not args.no_download)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    images, labels = data["train"]
    train_set = ImageDataset(images, labels)
    test_set = ImageDataset(*data["test"], mean=train_set.mean, std=train_set.std)
    recipe = Recipe(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay,
    )  # fmt: skip
    num_classes = CIFAR[args.dataset]["num_classes"]
    print(
        f"{args.dataset}: {len(train_set)} train / {len(test_set)} test; {setup['model_name']}; "
        f"{args.method}, budget {args.budget:g}, {args.rule} rule, tau {_num(tau)}, h {_num(h)}; "
        f"{recipe.epochs} epochs, batch {recipe.batch_size}, lr {recipe.lr:g}; device {device}",
        flush=True,
    )
    seed_everything(args.seed)
    model = setup["model"](num_classes=num_classes)
    start = time.perf_counter()
    result = train_one(
        args.method, model, train_set, test_set, labels, recipe,
        budget=args.budget, seed=args.seed, device=device, num_workers=args.num_workers,
        augment=True, max_steps=args.max_steps,
        crest=crest_config(args, threshold=tau, interval_multiplier=h, **(
            _paper_rule(args, len(train_set)) if paper else {}
        )),
    )  # fmt: skip
    out = args.out
    if out is None:
        out = f"results/{args.dataset}_{args.method}_seed{args.seed}.json"
    meta = {
        "title": f"{args.dataset}, {setup['model_name']}, {args.method}, budget {args.budget:g}",
        "example": "cifar",
        "command": " ".join(["python examples/cifar.py", *(argv or sys.argv[1:])]),
        "args": {**vars(args), "tau": tau, "h": h},
        "num_train": len(train_set),
        "total_s": time.perf_counter() - start,
    }
    return finish({args.method: result}, meta, out or None)


if __name__ == "__main__":
    main()
