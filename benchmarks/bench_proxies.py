"""Proxy forward passes against a bare inference forward and a training step, per example.

CREST's main cost on a CPU is forward passes: every selection runs the model over its candidate
pools (``GradientProxyCallback``), every check over its check sample. This script measures, on
the same data, the same model and the same batch size, examples per second of:

* ``bare``: ``model(x)`` in ``torch.inference_mode()`` on an already-gathered batch, eval mode;
* ``bare+load``: the same with the batch loaded per call (``train_set.batch(indices)``, the
  callback's loader in the examples);
* ``callback``: ``GradientProxyCallback.proxies_and_losses(indices)`` (load, forward, losses,
  logit gradients, the head record for the closed-form quadratic model);
* ``losses``: ``GradientProxyCallback.per_sample_loss`` under ``torch.no_grad`` (a check);
* ``train step``: forward, backward and an SGD step in train mode at the training batch size.

and reports each as a ratio to ``bare``. ``--arch`` picks the example's SmallCNN or the
benchmark's MLP; weights are the seed's initial ones (a forward pass costs the same at any
weights).

    python benchmarks/bench_proxies.py                      # SmallCNN, 1 thread
    python benchmarks/bench_proxies.py --arch mlp --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from _data import ImageDataset, load_fashion_mnist  # noqa: E402
from _nets import SmallCNN, mlp  # noqa: E402
from _train import set_threads  # noqa: E402

from coreset_sampler import GradientProxyCallback  # noqa: E402


def rate(fn: Callable[[], None], examples: int, repeats: int) -> float:
    """Median examples per second of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return examples / statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--examples", type=int, default=6000, help="examples per timed call")
    parser.add_argument("--batch-size", type=int, default=256, help="inference batch size")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    data = load_fashion_mnist(args.data_dir)
    train_set = ImageDataset(*data["train"])
    model = SmallCNN(in_channels=1, num_classes=10, width=16) if args.arch == "cnn" else mlp()
    gen = torch.Generator().manual_seed(0)
    indices = torch.randperm(len(train_set), generator=gen)[: args.examples].tolist()
    chunks = [indices[s : s + args.batch_size] for s in range(0, len(indices), args.batch_size)]
    gathered = [train_set.batch(c)[0] for c in chunks]
    callback = GradientProxyCallback(model, train_set.batch, batch_size=args.batch_size)

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

    n = len(indices)
    rates = {
        "bare": rate(bare, n, args.repeats),
        "bare+load": rate(bare_load, n, args.repeats),
        "callback": rate(proxies, n, args.repeats),
        "losses": rate(losses, n, args.repeats),
        "train step": rate(train, n, args.repeats),
    }
    print(
        f"{args.arch}, {n} examples, inference batch {args.batch_size}, train batch "
        f"{args.train_batch}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    )
    print(f"| {'what':<10} | examples/s | time ÷ bare |")
    print("|---|---|---|")
    for name, r in rates.items():
        print(f"| {name:<10} | {r:10.0f} | {rates['bare'] / r:5.2f} |")
    return rates


if __name__ == "__main__":
    main()
