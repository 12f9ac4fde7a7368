"""End-to-end benchmark on Fashion-MNIST: full data, random, CRAIG, GradMatch, GLISTER, AdaCore,
InfoBatch and CREST, over seeds.

Every (method, seed) run trains the same SmallCNN from the same seed-dependent initial weights
with the same epochs and learning-rate schedule (``examples/fashion_mnist.py``'s recipe), in a
fresh process with one torch thread. Per method it reports mean ± std over the seeds of the
test accuracy, the relative error to the full-data run *of the same seed*, the training wall
time, the effective speedup (full time / method time of the same seed, every sampler overhead
included, test evaluation excluded), the number of selections and checks, and the overhead
breakdown from the sampler's telemetry.

Methods:

* ``full``: every example every epoch;
* ``random``, ``random-0.15``, ``random-0.2``, ``random-0.3``: uniform random batches,
  ``budget`` (or 15%, 20%, 30%) of the steps: random batches given about the time CREST takes;
* ``craig``: CRAIG, one weighted per-class coreset of ``budget · N`` examples per epoch;
* ``gradmatch``: GradMatch, per-class OMP subsets of ``budget · N`` examples, every epoch;
* ``adacore``: AdaCore, CRAIG on Hessian-preconditioned proxies; ``crest-adacore``: CREST
  (defaults) on those proxies;
* ``glister``: GLISTER, the subset whose one-step update most lowers the loss on a random 1%
  of the training set, every epoch;
* ``infobatch``: InfoBatch (prune half of the below-mean-loss examples each epoch, up-weight
  the rest, full epochs from 0.875 · epochs on), with its epochs as long as what it keeps;
  ``infobatch-0.1``: the same pruning, at most ``budget`` of a full epoch's steps per epoch
  (CREST's number of steps);
* ``crest``: CREST with the library's defaults, built as the README's lines build it;
* ``crest-paper``: CREST with the paper's rule (T1 = ⌈h·‖H_0‖/‖H_ℓ‖⌉, h = 1, τ = 0.05,
  P = 5·T1, pools and a check sample of r = 600 (1% of N), coresets used as long as the
  checks hold, Hutchinson's diagonal over the whole network, cluster-size weights).

Configurations (``--arch``): ``cnn``, the SmallCNN of ``examples/fashion_mnist.py`` with its
recipe (SGD, warm-up, ×0.1 at 60% and 85%), in channels-last layout as the examples train a
convolutional model on a CPU (``_train.place``); ``mlp``, a 784-256-128-10 MLP (no BatchNorm) with a
cosine schedule from lr 0.05.

    python benchmarks/bench_end_to_end.py                        # 3 seeds, all methods
    python benchmarks/bench_end_to_end.py --jobs 2 --out results/end_to_end

``--jobs 2`` runs two single-threaded trainings side by side (one per core of a 2-core
machine); every method shares the machine the same way, so the speedups compare like with
like. Finished runs are kept in ``<out>/runs.jsonl`` and reused with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

PAPER: dict[str, Any] = {
    "interval_rule": "paper",
    "curvature": "hutchinson",
    "pool_multiplier": 5,
    "check_size": 600,
    "pool_size": 600,  # 1% of N
    "max_uses": 0,  # no cap: the coresets serve as long as the checks hold
    "threshold": 0.05,
    "interval_multiplier": 1.0,
    "weighting": "cluster_size",  # the picks weighted by their cluster sizes
}
# name -> (train_one method, budget (None: --budget), CrestConfig overrides)
VARIANTS: dict[str, tuple[str, float | None, dict[str, Any]]] = {
    "full": ("full", None, {}),
    "random": ("random", None, {}),
    "random-0.15": ("random", 0.15, {}),
    "random-0.2": ("random", 0.2, {}),
    "random-0.3": ("random", 0.3, {}),
    "craig": ("craig", None, {}),
    "gradmatch": ("gradmatch", None, {}),
    "adacore": ("adacore", None, {}),
    "glister": ("glister", None, {}),
    # the library's defaults: the README's lines, no knob set
    "crest": ("crest", None, {}),
    # the paper's rule: T1 from the curvature ratio, P = 5·T1, a check sample of r, τ = 0.05,
    # h = 1, the whole network's Hutchinson diagonal
    "crest-paper": ("crest", None, PAPER),
    # CREST on AdaCore's Hessian-preconditioned proxies
    "crest-adacore": ("crest", None, {"precondition": "hessian"}),
    # InfoBatch with its authors' defaults (r = 0.5, δ = 0.875), every epoch up to full length
    "infobatch": ("infobatch", 1.0, {}),
    # InfoBatch's pruning within CREST's budget of steps per epoch
    "infobatch-0.1": ("infobatch", None, {}),
}
# the second configuration: another architecture family (an MLP, no BatchNorm) and another
# learning-rate schedule (cosine from 0.05, no warm-up)
ARCHS = ("cnn", "mlp")
PARTS = ("proxies_s", "kernel_s", "anchor_s", "check_s", "other_s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files")
    parser.add_argument("--train-subset", type=int, default=None, help="first N examples only")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per epoch (smoke)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side")
    parser.add_argument("--out", default="results/end_to_end", help="output directory")
    parser.add_argument("--resume", action="store_true", help="reuse runs in <out>/runs.jsonl")
    parser.add_argument(
        "--arch", choices=ARCHS, default="cnn", help="cnn: SmallCNN, the example's recipe; "
        "mlp: a 784-256-128-10 MLP, cosine schedule from lr 0.05",
    )  # fmt: skip
    return parser


def run_one(name: str, seed: int, opts: dict[str, Any]) -> dict[str, Any]:
    """One training run in this (fresh) process; returns its result without the history."""
    sys.path.insert(0, str(EXAMPLES))
    import numpy as np
    import torch
    from _data import FASHION_MNIST_DIR, ImageDataset, load_fashion_mnist
    from _nets import SmallCNN, mlp
    from _train import CrestConfig, Recipe, seed_everything, set_threads, train_one

    set_threads(1)
    data = load_fashion_mnist(opts["data_dir"] or FASHION_MNIST_DIR)
    images, labels = data["train"]
    if opts["train_subset"] is not None:
        images, labels = images[: opts["train_subset"]], labels[: opts["train_subset"]]
    train_set = ImageDataset(images, labels)
    test_set = ImageDataset(*data["test"], mean=train_set.mean, std=train_set.std)
    method, budget, overrides = VARIANTS[name]
    seed_everything(seed)
    if opts["arch"] == "mlp":
        model: Any = mlp()
        recipe = Recipe(epochs=opts["epochs"], lr=0.05, warmup=0.0, schedule="cosine")
    else:
        model = SmallCNN(in_channels=1, num_classes=10, width=16)
        recipe = Recipe(epochs=opts["epochs"])
    result = train_one(
        method, model, train_set, test_set, np.asarray(labels), recipe,
        budget=opts["budget"] if budget is None else budget, seed=seed,
        device=torch.device("cpu"), max_steps=opts["max_steps"], crest=CrestConfig(**overrides),
        log_sampler=False,
    )  # fmt: skip
    result.pop("history", None)
    result.pop("trace", None)
    return {"name": name, "seed": seed, **result}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: mean ± std of accuracy, relative error, time, speedup; mean overheads."""
    full = {r["seed"]: r for r in runs if r["name"] == "full"}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        rs = sorted((r for r in runs if r["name"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        paired = [r for r in rs if r["seed"] in full]
        errors = [
            abs(r["test_acc"] - full[r["seed"]]["test_acc"]) / full[r["seed"]]["test_acc"]
            for r in paired
        ]
        row: dict[str, Any] = {
            "seeds": [r["seed"] for r in rs],
            "test_acc": mean_std([r["test_acc"] for r in rs]),
            "seconds": mean_std([r["seconds"] for r in rs]),
            "rel_err": mean_std(errors),
            "speedup": mean_std([full[r["seed"]]["seconds"] / r["seconds"] for r in paired]),
            "steps": statistics.fmean(r["steps"] for r in rs),
            "selections": statistics.fmean(r["selections"] for r in rs),
            "checks": statistics.fmean(r["checks"] for r in rs),
            **{p: statistics.fmean(r[p] for r in rs) for p in (*PARTS, "overhead_s")},
        }
        out[name] = row
    return out


def _pm(pair: tuple[float, float], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    mean, std = pair
    if math.isnan(mean):
        return "-"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}{unit}"


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    head = ("method", "test acc (%)", "rel. error (%)", "train s", "speedup", "steps",
            "selections", "checks", "proxies s", "kernel s", "anchor s", "check s",
            "other s")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in summary.items():
        cells = [
            name,
            _pm(r["test_acc"], 100),
            _pm(r["rel_err"], 100),
            _pm(r["seconds"], digits=1),
            _pm(r["speedup"], unit="×"),
            f"{r['steps']:.0f}",
            f"{r['selections']:.1f}",
            f"{r['checks']:.1f}",
            *(f"{r[p]:.1f}" for p in PARTS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or not names:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(VARIANTS)}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs should be at least 1, but got {args.jobs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.jsonl"
    runs: list[dict[str, Any]] = []
    if args.resume and runs_path.exists():
        runs = [json.loads(line) for line in runs_path.read_text().splitlines() if line]
    elif runs_path.exists():
        runs_path.unlink()
    done = {(r["name"], r["seed"]) for r in runs}
    todo = [(n, s) for s in args.seeds for n in names if (n, s) not in done]
    opts = {k: getattr(args, k) for k in ("data_dir", "train_subset", "epochs", "budget",
                                          "max_steps", "arch")}  # fmt: skip
    print(f"{len(todo)} runs to do ({len(done)} reused), {args.jobs} at a time", flush=True)
    start = time.perf_counter()
    # every run in a fresh interpreter (spawn, one run per worker process from Python 3.11;
    # workers are reused on 3.10): a run pays its own first imports and warm-up (numba's,
    # torch's), as a user's training script does, whatever ran before it; a worker that dies
    # raises BrokenProcessPool here
    fresh: dict[str, Any] = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), **fresh) as pool:
        futures = [pool.submit(run_one, n, s, opts) for n, s in todo]
        for future in futures:
            result = future.result()
            runs.append(result)
            with runs_path.open("a") as f:
                f.write(json.dumps(result) + "\n")
            print(
                f"  {result['name']:>11} seed {result['seed']}: test acc "
                f"{100 * result['test_acc']:.2f}%  train {result['seconds']:.1f} s  "
                f"selections {result['selections']}",
                flush=True,
            )
    summary = summarize([r for r in runs if r["seed"] in args.seeds], names)
    table = markdown(summary)
    print("\n" + table)
    sys.path.insert(0, str(EXAMPLES))
    from _train import hardware

    report = {
        "command": " ".join(["python benchmarks/bench_end_to_end.py", *(argv or sys.argv[1:])]),
        "args": vars(args),
        "hardware": hardware(),
        "wall_s": time.perf_counter() - start,
        "summary": summary,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    (out / "summary.md").write_text(table + "\n")
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    plot = plot_accuracy_time(
        [r for r in runs if r["seed"] in args.seeds], out / "accuracy_time.png"
    )
    if plot is not None:
        print(f"wrote {plot}")
    return report


def plot_accuracy_time(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Test accuracy against training seconds, one point per run (method and seed), when
    matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vPX<>*hp"
    for k, name in enumerate(dict.fromkeys(r["name"] for r in runs)):
        rs = [r for r in runs if r["name"] == name]
        ax.scatter(
            [r["seconds"] for r in rs], [100 * r["test_acc"] for r in rs], label=name,
            color=colors[(2 * k) % 20 + (2 * k) // 20 % 2], marker=markers[k % len(markers)],
        )  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training seconds (log scale; every sampler overhead included)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
