"""The README's ten lines, as written, in a plain training loop that shares nothing with the
examples: a check of the end-to-end benchmark's results on a third configuration.

Fashion-MNIST (Debian's ``dataset-fashion-mnist``, read here from its IDX files), a per-item
``Dataset`` (no ``__getitems__``, no batch loader: the callback and the DataLoader load item by
item and collate), a LeNet-style network without BatchNorm (conv 20, conv 40, 100 hidden units),
SGD with momentum 0.9 from lr 0.05 without warm-up, ×0.1 after epochs E // 2 and 3E // 4 (7 and
11 of the default E = 15 epochs), batches of 128, one torch thread. None of this was chosen for
CREST or tuned for it.

Methods: ``random-B`` (uniform random batches, a fraction B of an epoch's steps per epoch) and
``crest`` (the README's lines: ``GradientProxyCallback(model, train_set)``,
``QuadraticLossMonitor(model, proxies.per_sample_loss)``, ``CrestBatchSampler(..., labels=...,
budget=0.1, seed=seed)``; ``num_workers=0`` instead of the README's 2 so that every run uses
one core). ``--crest-opts`` adds keyword arguments to ``CrestBatchSampler`` (an ablation; the
default is none). Every (method, seed) run is a fresh process; ``--jobs 2`` runs two side by
side. Wall seconds are the training loop's (every sampler overhead included, test evaluation
excluded). "Equal time" compares each seed's CREST run with the same seed's random batches
interpolated to CREST's seconds.

    python benchmarks/bench_readme_loop.py --jobs 2 --seeds 0 1 2 3 4 5 --out results/readme_loop
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DATA = Path("/usr/share/datasets/fashion-mnist")
METHODS = ("random-0.1", "random-0.15", "random-0.2", "crest")


def read_idx(path: Path, offset: int) -> Any:
    import numpy as np

    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def lenet() -> Any:
    """The loop's network: LeNet-style, no BatchNorm, for 1×28×28 inputs and 10 classes."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 20, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 40, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(40 * 5 * 5, 100), nn.ReLU(), nn.Linear(100, 10),
    )  # fmt: skip


def run(method: str, seed: int, epochs: int, data_dir: Path, crest_opts: dict[str, Any]) -> dict:
    """One training run; returns its test accuracy, wall seconds and (CREST) telemetry."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset

    torch.set_num_threads(1)
    images = {s: read_idx(data_dir / f"{s}-images-idx3-ubyte.gz", 16) for s in ("train", "t10k")}
    labels = {s: read_idx(data_dir / f"{s}-labels-idx1-ubyte.gz", 8) for s in ("train", "t10k")}
    mean, std = images["train"].mean() / 255, images["train"].std() / 255

    class Images(Dataset):
        def __init__(self, split: str) -> None:
            x = (images[split].reshape(-1, 1, 28, 28) / 255.0 - mean) / std
            self.x = torch.from_numpy(x.astype(np.float32))
            self.y = torch.from_numpy(labels[split].astype(np.int64))

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.x[i], self.y[i]

    train_set, test_set = Images("train"), Images("t10k")
    train_labels = train_set.y
    torch.manual_seed(seed)
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    milestones = [epochs // 2, 3 * epochs // 4]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    telemetry: dict[str, float] = {}
    start = time.perf_counter()
    if method.startswith("random-"):
        budget = float(method.split("-", 1)[1])
        steps = -(-int(budget * len(train_set)) // 128)
        gen = torch.Generator().manual_seed(seed)

        class RandomBatches:
            def __iter__(self):  # type: ignore[no-untyped-def]
                order = torch.randperm(len(train_set), generator=gen).tolist()
                for b in range(steps):
                    yield order[b * 128 : (b + 1) * 128]

            def __len__(self) -> int:
                return steps

        plain = DataLoader(train_set, batch_sampler=RandomBatches())
        for _ in range(epochs):
            for x, y in plain:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            schedule.step()
    elif method == "crest":
        from coreset_sampler import (
            CrestBatchSampler,
            GradientProxyCallback,
            QuadraticLossMonitor,
            WithWeights,
        )

        proxies = GradientProxyCallback(model, train_set)
        monitor = QuadraticLossMonitor(model, proxies.per_sample_loss)
        sampler = CrestBatchSampler(
            train_set, batch_size=128, callback=proxies, monitor=monitor,
            labels=train_labels, budget=0.1, seed=seed, **crest_opts,
        )  # fmt: skip
        loader = DataLoader(WithWeights(train_set), batch_sampler=sampler, num_workers=0)
        for _ in range(epochs):
            for x, y, w in loader:
                loss = (w * F.cross_entropy(model(x), y, reduction="none")).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            schedule.step()
        t = sampler.telemetry
        telemetry = {
            "sampler_s": t.selection_seconds + t.check_seconds,
            "callback_s": t.callback_seconds,
            "selections": t.num_selections,
            "checks": t.num_checks,
            "dropped": t.num_dropped,
        }
    else:
        raise ValueError(f"unknown method {method!r}")
    wall = time.perf_counter() - start
    with torch.no_grad():
        correct = sum(
            int((model(test_set.x[s : s + 1000]).argmax(1) == test_set.y[s : s + 1000]).sum())
            for s in range(0, len(test_set), 1000)
        )
    return {"method": method, "seed": seed, "epochs": epochs, "crest_opts": crest_opts,
            "acc": 100 * correct / len(test_set), "wall_s": wall, **telemetry}  # fmt: skip


def equal_time(crest: dict, randoms: list[dict]) -> float | None:
    """CREST's accuracy minus random batches' (same seed) interpolated to CREST's seconds;
    ``None`` when no two random runs bracket it."""
    pts = sorted((r["wall_s"], r["acc"]) for r in randoms)
    for (t0, a0), (t1, a1) in itertools.pairwise(pts):
        if t0 <= crest["wall_s"] <= t1:
            return crest["acc"] - (a0 + (a1 - a0) * (crest["wall_s"] - t0) / (t1 - t0))
    return None


def report(runs: list[dict]) -> str:
    def ms(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {sd:.2f}"

    lines = ["| method | seeds | test acc (%) | wall s | sampler s |", "|---|---|---|---|---|"]
    methods = sorted({r["method"] for r in runs}, key=lambda m: (m == "crest", m))
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        sampler = ms([r["sampler_s"] for r in rs]) if "sampler_s" in rs[0] else ""
        accs, walls = [r["acc"] for r in rs], [r["wall_s"] for r in rs]
        lines.append(f"| {m} | {len(rs)} | {ms(accs)} | {ms(walls)} | {sampler} |")
    out = "\n".join(lines)
    by_seed: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["method"]] = r
    same, equal = [], []
    for _, rs in sorted(by_seed.items()):
        if "crest" in rs and "random-0.1" in rs:
            same.append(rs["crest"]["acc"] - rs["random-0.1"]["acc"])
        randoms = [r for m, r in rs.items() if m.startswith("random-")]
        if "crest" in rs and (gap := equal_time(rs["crest"], randoms)) is not None:
            equal.append(gap)
    if same:
        out += "\n\nCREST − random-0.1, same seed: " + ", ".join(f"{d:+.2f}" for d in same)
        out += f" (mean {statistics.mean(same):+.2f})"
    if equal:
        out += "\nCREST − random at CREST's seconds, same seed: "
        out += ", ".join(f"{d:+.2f}" for d in equal) + f" (mean {statistics.mean(equal):+.2f}"
        if len(equal) < len(same):
            out += f"; {len(same) - len(equal)} seed(s) outside the random runs' times"
        out += ")"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--crest-opts", default="{}", help="JSON: CrestBatchSampler kwargs")
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument("--out", default="results/readme_loop")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # (a single run, in a child process)
    args = parser.parse_args(argv)
    if args.one:
        method, seed = args.one.split(":")
        opts = json.loads(args.crest_opts)
        print(json.dumps(run(method, int(seed), args.epochs, Path(args.data_dir), opts)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(m, s) for s in args.seeds for m in args.methods.split(",")]

    def child(job: tuple[str, int]) -> dict:
        cmd = [
            sys.executable, __file__, "--one", f"{job[0]}:{job[1]}", "--epochs", str(args.epochs),
            "--crest-opts", args.crest_opts, "--data-dir", args.data_dir,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{job} failed:\n{done.stderr[-2000:]}")
        line = done.stdout.strip().splitlines()[-1]
        with (out / "runs.jsonl").open("a") as f:
            f.write(line + "\n")
        print(line, flush=True)
        return json.loads(line)

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(child, todo))
    print(report(runs))


if __name__ == "__main__":
    main()
