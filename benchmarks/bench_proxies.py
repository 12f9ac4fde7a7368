"""Proxy forward passes against a bare inference forward and a training step, per example.

CREST's main cost on a CPU is forward passes: every selection runs the model over its candidate
pools (``GradientProxyCallback``), every check over its check sample. This script measures, on
the same data, the same model and the same batch size, examples per second of:

* ``bare``: ``model(x)`` in ``torch.inference_mode()`` on an already-gathered batch, eval mode;
* ``bare+load``: the same with the batch loaded per call (``train_set.batch(indices)``, the
  callback's loader in the examples);
* ``callback``: ``GradientProxyCallback.proxies_and_losses(indices)`` (load, forward, losses,
  logit gradients, the head record for the closed-form quadratic model), loading with
  ``train_set.batch``;
* ``callback, no fold``: the same with ``fold_batchnorm=False`` (the model's BatchNorms run
  as they are instead of folded into their convolutions; the same for a model without any);
* ``callback (dataset)``: the same, built as the README builds it, from the dataset (its
  ``__getitems__``, then ``default_collate``);
* ``losses``: ``GradientProxyCallback.per_sample_loss`` under ``torch.no_grad`` (a check);
* ``train step``: forward, backward and an SGD step in train mode at the training batch size.

and reports each as a ratio to ``bare``, and the callback's time per example over the
training step's. ``--arch`` picks the example's SmallCNN, the benchmark's MLP or the LeNet of
``bench_readme_loop.py`` (NCHW, no BatchNorm); weights are the
seed's initial ones (a forward pass costs the same at any weights). The SmallCNN is measured in
both memory layouts side by side: ``nchw`` (PyTorch's default) and ``channels_last`` (what the
examples use on CPU, ``_train.place``). Every call is timed once per round, in turn, and each
reports its median over ``--repeats`` rounds: a drift of the machine's speed reaches all alike.

    python benchmarks/bench_proxies.py                      # SmallCNN, 1 thread
    python benchmarks/bench_proxies.py --arch mlp --repeats 7
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from _data import ImageDataset, load_fashion_mnist  # noqa: E402
from _nets import SmallCNN, mlp  # noqa: E402
from _train import place, set_threads  # noqa: E402

from coreset_sampler import GradientProxyCallback  # noqa: E402

K = TypeVar("K")


def rates_of(calls: dict[K, Callable[[], None]], examples: int, repeats: int) -> dict[K, float]:
    """Median examples per second of each call, timed in turn (one round of every call, then
    the next round, after one warm-up round), so that a drift of the machine's speed reaches
    them all alike."""
    times: dict[K, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 1):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: examples / statistics.median(t) for name, t in times.items()}


def calls_for(
    model: torch.nn.Module, train_set: ImageDataset, args: argparse.Namespace
) -> dict[str, Callable[[], None]]:
    """The timed calls, for this model."""
    gen = torch.Generator().manual_seed(0)
    indices = torch.randperm(len(train_set), generator=gen)[: args.examples].tolist()
    chunks = [indices[s : s + args.batch_size] for s in range(0, len(indices), args.batch_size)]
    gathered = [train_set.batch(c)[0] for c in chunks]
    callback = GradientProxyCallback(model, train_set.batch, batch_size=args.batch_size)
    unfolded = GradientProxyCallback(
        model, train_set.batch, batch_size=args.batch_size, fold_batchnorm=False
    )
    # as the README builds it: items through the dataset's __getitems__ and default_collate
    from_dataset = GradientProxyCallback(model, train_set, batch_size=args.batch_size)

    def bare() -> None:
        model.eval()
        with torch.inference_mode():
            for x in gathered:
                model(x)

    def bare_load() -> None:
        model.eval()
        with torch.inference_mode():
            for c in chunks:
                model(train_set.batch(c)[0])

    def proxies() -> None:
        callback.proxies_and_losses(indices)

    def proxies_unfolded() -> None:
        unfolded.proxies_and_losses(indices)

    def proxies_from_dataset() -> None:
        from_dataset.proxies_and_losses(indices)

    def losses() -> None:
        model.eval()
        with torch.no_grad():
            callback.per_sample_loss(indices)

    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    steps = [indices[s : s + args.train_batch] for s in range(0, len(indices), args.train_batch)]
    batches = [train_set.batch(c) for c in steps]

    def train() -> None:
        model.train()
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return {
        "bare": bare,
        "bare+load": bare_load,
        "callback": proxies,
        "callback, no fold": proxies_unfolded,
        "callback (dataset)": proxies_from_dataset,
        "losses": losses,
        "train step": train,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("cnn", "mlp", "lenet"), default="cnn")
    parser.add_argument("--examples", type=int, default=6000, help="examples per timed call")
    parser.add_argument("--batch-size", type=int, default=128, help="inference batch size")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    data = load_fashion_mnist(args.data_dir)
    train_set = ImageDataset(*data["train"])
    if args.arch == "lenet":
        from bench_readme_loop import lenet

        model = lenet()
    else:
        model = SmallCNN(in_channels=1, num_classes=10, width=16) if args.arch == "cnn" else mlp()
    models = {"default": model}
    if args.arch == "cnn":  # (the same weights in both layouts)
        cpu = torch.device("cpu")
        models = {"nchw": model, "channels_last": place(copy.deepcopy(model), cpu)}
    n = min(args.examples, len(train_set))
    calls = {(layout, name): fn for layout, m in models.items()
             for name, fn in calls_for(m, train_set, args).items()}  # fmt: skip
    timed = rates_of(calls, n, args.repeats)
    rates = {layout: {name: r for (lay, name), r in timed.items() if lay == layout}
             for layout in models}  # fmt: skip
    print(
        f"{args.arch}, {n} examples, inference batch {args.batch_size}, train batch "
        f"{args.train_batch}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    )
    print("| what | " + " | ".join(f"{k} examples/s | time ÷ bare" for k in rates) + " |")
    print("|---|" + "---|---|" * len(rates))
    for name in rates[next(iter(rates))]:
        cells = [f"{r[name]:10.0f} | {r['bare'] / r[name]:5.2f}" for r in rates.values()]
        print(f"| {name:<10} | " + " | ".join(cells) + " |")
    for layout, r in rates.items():
        print(
            f"{layout}: the callback's time per example is {r['train step'] / r['callback']:.2f} "
            "of a training step's"
        )
    if len(rates) == 2:
        a, b = rates.values()
        print(
            f"channels_last over nchw: callback {b['callback'] / a['callback']:.2f}x, "
            f"train step {b['train step'] / a['train step']:.2f}x as fast"
        )
    return rates


if __name__ == "__main__":
    main()
