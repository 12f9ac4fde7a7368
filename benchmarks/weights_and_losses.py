"""What the paper's cluster-size weights do to a coreset: weight against loss of the picks.

Trains the benchmark's MLP or the examples' SmallCNN for a few epochs of random batches (10% of
the steps, lr 0.05, momentum 0.9), then draws 20 class-stratified pools of 384 (CREST's
default pool, three batches of 128), computes the proxies and losses with
``GradientProxyCallback``, selects the coresets as ``CrestBatchSampler`` does with
``weighting="cluster_size"``, and reports, over the 2,560 picks: the rank correlation between a
pick's weight and its loss, the mean weight of the picks whose loss is above the median and
of those below, the largest weight, the share of the total weight held by the heaviest 10% of
the picks, and the fraction of picks weighing less than 1. (``docs/algorithm.md``, "The
weights".)

    python benchmarks/weights_and_losses.py --arch mlp
    python benchmarks/weights_and_losses.py --arch cnn
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from _data import ImageDataset, load_fashion_mnist  # noqa: E402
from _nets import SmallCNN, mlp  # noqa: E402

from coreset_sampler import GradientProxyCallback  # noqa: E402
from coreset_sampler.samplers._selection import (  # noqa: E402
    draw_pools,
    facility_location_coresets,
)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("cnn", "mlp"), default="mlp")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of random batches first")
    parser.add_argument("--pools", type=int, default=20)
    parser.add_argument("--pool-size", type=int, default=384, help="r (CREST's default: 3m)")
    parser.add_argument("--batch-size", type=int, default=128, help="m")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_fashion_mnist(args.data_dir)
    train_set = ImageDataset(*data["train"])
    labels = np.asarray(data["train"][1])
    model = mlp() if args.arch == "mlp" else SmallCNN(in_channels=1, num_classes=10, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    m = args.batch_size
    steps = max(1, len(train_set) // 10 // m)
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(train_set), generator=gen)
        for s in range(steps):
            x, y = train_set.batch(order[s * m : (s + 1) * m].tolist())
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    callback = GradientProxyCallback(model, train_set.batch)
    pools = draw_pools(
        np.random.default_rng(0), np.arange(len(train_set)), labels, args.pool_size, args.pools
    )
    flat = np.concatenate(pools)
    proxies, losses = callback.proxies_and_losses(flat.tolist())
    positions = np.arange(len(flat)).reshape(len(pools), -1)
    coresets, weights = facility_location_coresets(
        pools, positions, proxies, labels, batch_size=m, similarity="neg_distance",
        weighting="cluster_size",
    )  # fmt: skip
    loss_of = dict(zip(flat.tolist(), losses.tolist(), strict=True))
    w = np.concatenate(weights)
    picked = np.array([loss_of[i] for c in coresets for i in c])
    above = picked > np.median(picked)
    out = {
        "spearman": float(spearmanr(w, picked)[0]),
        "weight_above_median_loss": float(w[above].mean()),
        "weight_below_median_loss": float(w[~above].mean()),
        "max_weight": float(w.max()),
        "top10_share": float(np.sort(w)[::-1][: len(w) // 10].sum() / w.sum()),
        "below_one": float((w < 1).mean()),
    }
    print(
        f"{args.arch} after {args.epochs} epochs of random batches (pool loss "
        f"{float(losses.mean()):.3f}), {len(w)} picks: rank correlation of weight and loss "
        f"{out['spearman']:.2f}; mean weight of the picks above the median loss "
        f"{out['weight_above_median_loss']:.2f}, below {out['weight_below_median_loss']:.2f}; "
        f"largest {out['max_weight']:.1f}; the heaviest 10% hold {out['top10_share']:.0%} of "
        f"the weight; {out['below_one']:.0%} of the picks weigh less than 1"
    )
    return out


if __name__ == "__main__":
    main()
