"""Ablation of CREST's knobs on Fashion-MNIST: one training run per (configuration, seed).

Each configuration is a JSON object: ``method`` ("random" or "crest"), ``budget`` (0.1), ``arch``
("cnn": the SmallCNN of the examples, width 16; "mlp": 784-256-128-10 without BatchNorm),
``schedule`` ("steps": the examples' recipe; "cosine"), ``lr`` (0.1), and for CREST the keyword
arguments of ``CrestBatchSampler`` (``sampler``), of ``QuadraticLossMonitor`` (``monitor``;
``{"enabled": false}``: no monitor) and of ``GradientProxyCallback`` (``callback``). Every run
is a fresh process with one torch thread; ``--jobs 2`` runs two side by side. One JSON line per
run is appended to ``--out`` (test accuracy, training seconds, the telemetry's totals).

    python benchmarks/bench_crest_ablation.py --out results/ablation.jsonl \\
        '{"method": "random"}' '{"method": "crest", "monitor": {"threshold": 0.1}}'

The table of ``docs/algorithm.md`` ("Choosing the defaults") came from these runs (10 epochs,
seeds 0 1 2).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """One training run in this process."""
    sys.path.insert(0, str(EXAMPLES))
    import numpy as np
    import torch
    import torch.nn.functional as F
    from _data import ImageDataset, load_fashion_mnist
    from _nets import SmallCNN, mlp
    from _train import (
        Recipe,
        evaluate,
        lr_factor,
        overheads,
        place,
        seed_everything,
        set_threads,
    )
    from torch.utils.data import DataLoader

    from coreset_sampler import (
        CrestBatchSampler,
        DropLearned,
        GradientProxyCallback,
        QuadraticLossMonitor,
        RandomBatchSampler,
        WithWeights,
    )

    set_threads(cfg.get("threads", 1))  # (0: torch's default)
    data = load_fashion_mnist(cfg.get("data_dir"))
    train_set = ImageDataset(*data["train"])
    test_set = ImageDataset(*data["test"], mean=train_set.mean, std=train_set.std)
    labels = torch.from_numpy(np.asarray(data["train"][1]))
    seed = cfg["seed"]
    seed_everything(seed)
    if cfg.get("arch", "cnn") == "cnn":
        model: Any = SmallCNN(in_channels=1, num_classes=10, width=16)
    else:
        model = mlp()
    place(model, torch.device("cpu"))
    if cfg.get("schedule", "steps") == "cosine":  # from lr, no warm-up
        recipe = Recipe(epochs=cfg.get("epochs", 10), lr=cfg.get("lr", 0.1), warmup=0.0,
                        schedule="cosine")  # fmt: skip
    else:
        recipe = Recipe(epochs=cfg.get("epochs", 10), lr=cfg.get("lr", 0.1))
    budget = cfg.get("budget", 0.1)
    sampler: Any
    if cfg["method"] == "random":
        sampler = RandomBatchSampler(train_set, 128, budget=budget, seed=seed)
    else:
        proxies = GradientProxyCallback(model, train_set, **cfg.get("callback", {}))
        mon_kw = dict(cfg.get("monitor", {}))
        monitor = None
        if mon_kw.pop("enabled", True):
            monitor = QuadraticLossMonitor(model, proxies.per_sample_loss, **mon_kw)
        s_kw = dict(cfg.get("sampler", {}))
        if isinstance(s_kw.get("drop_learned"), dict):
            s_kw["drop_learned"] = DropLearned(**s_kw["drop_learned"])
        sampler = CrestBatchSampler(
            train_set, 128, callback=proxies, monitor=monitor, labels=labels, budget=budget,
            seed=seed, **s_kw,
        )  # fmt: skip
    loader = DataLoader(WithWeights(train_set), batch_sampler=sampler)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(recipe, len(loader)))
    train_s = 0.0
    uniform = cfg.get("weights") == "uniform"  # (diagnosis: train on the coresets unweighted)
    for _ in range(recipe.epochs):
        t0 = time.perf_counter()
        for x, y, w in loader:
            if uniform:
                w = torch.ones_like(w)
            loss = (w * F.cross_entropy(model(x), y, reduction="none")).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        train_s += time.perf_counter() - t0
    acc = evaluate(model, test_set, torch.device("cpu"))
    pools = [r.num_pools for r in sampler.telemetry.selections] if cfg["method"] != "random" else []
    return {"cfg": cfg, "test_acc": acc, "train_s": train_s, **overheads(sampler),
            "pools": sum(pools), "pools_per_selection": pools}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="JSON objects, one per configuration")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="results/ablation.jsonl")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # (a single run, in a child process)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run(json.loads(args.one))))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = [{**json.loads(c), "seed": s} for s in args.seeds for c in args.configs]

    def child(cfg: dict[str, Any]) -> str:
        done = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(cfg), "x"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        lines = done.stdout.strip().splitlines()
        line = lines[-1] if lines else json.dumps({"cfg": cfg, "error": done.stderr[-2000:]})
        with out.open("a") as f:
            f.write(line + "\n")
        return line

    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(child, todo):
            print(line[:300], flush=True)


if __name__ == "__main__":
    main()
