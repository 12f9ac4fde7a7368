"""The training loop shared by the examples: full data, uniform random batches, or CREST.

The loop is an ordinary PyTorch loop. CREST changes two things in it: the DataLoader's
``batch_sampler`` and the weighted loss ``(w * F.cross_entropy(out, y, reduction="none")).mean()``
(with full data and random batches every weight is 1, so the same line is the plain mean).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from coreset_sampler import (
    CraigBatchSampler,
    CrestBatchSampler,
    GlisterBatchSampler,
    GradientProxyCallback,
    GradMatchBatchSampler,
    InfoBatchSampler,
    QuadraticLossMonitor,
    RandomBatchSampler,
    WithWeights,
)

METHODS: tuple[str, ...] = (
    "full", "random", "crest", "craig", "gradmatch", "adacore", "glister", "infobatch",
)  # fmt: skip


@dataclass
class Recipe:
    """Optimiser and schedule (CREST §5: SGD, momentum 0.9, warm-up, ×0.1 at 60% and 85%)."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.1  # fraction of the epochs with a linear warm-up
    milestones: tuple[float, ...] = (0.6, 0.85)  # fractions of the epochs, lr ×0.1 at each
    schedule: str = "steps"  # "steps" (the milestones) or "cosine" (to 0 over the epochs)


@dataclass
class CrestConfig:
    """CREST's knobs; ``None`` keeps the library's default (``../docs/algorithm.md``)."""

    threshold: float | None = None  # τ: reselect when ρ > τ
    interval_multiplier: float | None = None  # h (the paper's rule: T1 = ceil(h·‖H_0‖/‖H_ℓ‖))
    interval_rule: str | None = None  # "adaptive" (the library's) or "paper"
    curvature: str | None = None  # "auto" (the head's closed form) or "hutchinson"
    warmup_epochs: float = 0.0  # uniform random batches first, in sampler epochs
    pool_multiplier: int | None = None  # b in P = min(b·T1, steps per epoch)
    pool_size: int | None = None  # r (default 3 · the batch size)
    check_size: int | None = None  # |V_r| (default the batch size)
    max_uses: int | None = None  # times a coreset is trained on, at most (0: no cap)
    weighting: str | None = None  # "uniform" (the library's) or "cluster_size" (the paper's)
    precondition: str = "none"  # "hessian": AdaCore's preconditioned proxies

    def monitor_options(self) -> dict[str, Any]:
        names = ("threshold", "interval_multiplier", "interval_rule", "curvature")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def sampler_options(self) -> dict[str, Any]:
        names = ("pool_multiplier", "pool_size", "check_size", "weighting")
        options = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        if self.max_uses is not None:
            options["max_uses"] = self.max_uses or None
        return options


def lr_factor(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier at optimizer step ``k`` (for ``LambdaLR``).

    Defined in epochs, so every method (whatever its steps per epoch) follows the same schedule:
    linear warm-up over the first ``warmup`` of the epochs, then ×0.1 at each milestone (or a
    cosine decay to 0, ``schedule="cosine"``).
    """
    warmup_steps = recipe.warmup * recipe.epochs * steps_per_epoch
    total = recipe.epochs * steps_per_epoch

    def factor(k: int) -> float:
        epoch = k / steps_per_epoch
        if recipe.schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total))
        else:
            decay = 0.1 ** sum(epoch >= m * recipe.epochs for m in recipe.milestones)
        if k < warmup_steps:
            return decay * (k + 1) / warmup_steps
        return decay

    return factor


def augment_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop with zero padding plus random horizontal flip, for a batch ``[n, C, H, W]``."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator)
    rows = (top + torch.arange(h).view(1, h, 1)).to(x.device)
    cols = (left + torch.arange(w).view(1, 1, w)).to(x.device)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
    return torch.where(flip, out.flip(3), out)


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``; on CPU, a convolutional model also in channels-last layout.

    PyTorch's CPU convolutions and pooling are fastest in channels-last (NHWC) layout: with the
    default (NCHW) one, the example SmallCNN spent about 60% of its forward pass in max pooling
    on a 2-core AMD EPYC, and channels-last made its training step about 1.7 times and its
    proxy pass about twice as fast (``benchmarks/bench_proxies.py``,
    ``docs/benchmarks/end_to_end.md``). Inputs stay as they are loaded: a convolution with
    channels-last weights gives channels-last outputs.
    """
    model.to(device)
    if device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, device: torch.device, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` on ``dataset`` (an ``ImageDataset``), in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        x, y = dataset.batch(range(start, min(start + batch_size, len(dataset))))
        correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    model.train()
    return correct / len(dataset)


def make_loader(
    method: str,
    model: nn.Module,
    train_set: Any,
    labels: np.ndarray,
    *,
    budget: float,
    batch_size: int,
    seed: int,
    num_workers: int,
    crest: CrestConfig | None = None,
    lr: float = 0.1,
    epochs: int = 1,
) -> tuple[DataLoader[Any], Any]:
    """The DataLoader of one method, and its batch sampler (``None`` for full data); ``lr``
    is GLISTER's one-step size η, ``epochs`` InfoBatch's for its annealing. InfoBatch's
    loader also returns each example's index (to report its loss)."""
    common: dict[str, Any] = {"num_workers": num_workers}
    if num_workers > 0:
        common["persistent_workers"] = True
    if method == "full":
        g = torch.Generator().manual_seed(seed)
        loader = DataLoader(
            WithWeights(train_set), batch_size=batch_size, shuffle=True, generator=g, **common
        )
        return loader, None
    sampler: Any
    if method == "random":
        sampler = RandomBatchSampler(train_set, batch_size, budget=budget, seed=seed)
    elif method == "crest":
        crest = crest or CrestConfig()
        # the README's lines: proxies for the selection and the monitor that decides when to
        # reselect (with the callback's per_sample_loss it models the head in closed form);
        # train_set.batch loads a whole batch at once (the dataset itself works, item by item)
        proxies = GradientProxyCallback(model, train_set.batch)
        if crest.precondition != "none":  # (AdaCore's proxies: a variant of the benchmark)
            proxies = GradientProxyCallback(model, train_set.batch, precondition=crest.precondition)
        monitor = QuadraticLossMonitor(
            model, proxies.per_sample_loss, seed=seed, **crest.monitor_options()
        )
        steps_per_epoch = math.ceil(budget * len(train_set) / batch_size)
        sampler = CrestBatchSampler(
            train_set,
            batch_size,
            callback=proxies,
            monitor=monitor,
            labels=labels,
            budget=budget,
            seed=seed,
            warmup_steps=round(crest.warmup_epochs * steps_per_epoch),
            **crest.sampler_options(),
        )
    elif method in ("craig", "adacore"):
        # CRAIG (Mirzasoleiman et al., ICML 2020): one weighted coreset of budget·N examples
        # per epoch, selected from the proxies of the whole training set; AdaCore (Pooladzandi
        # et al., ICML 2022): the same on Hessian-preconditioned proxies
        precondition = "hessian" if method == "adacore" else "none"
        proxies = GradientProxyCallback(
            model, train_set.batch, batch_size=1024, precondition=precondition
        )
        sampler = CraigBatchSampler(
            train_set, batch_size, callback=proxies, labels=labels, budget=budget, seed=seed
        )
    elif method == "gradmatch":
        # GradMatch (Killamsetty et al., ICML 2021): per-class OMP towards each class's proxy
        # sum, reselected every epoch like CRAIG here (the paper's R = 20 is for 300 epochs)
        proxies = GradientProxyCallback(model, train_set.batch, batch_size=1024)
        sampler = GradMatchBatchSampler(
            train_set, batch_size, callback=proxies, labels=labels, budget=budget, seed=seed,
            reselect_every=1,
        )  # fmt: skip
    elif method == "glister":
        # GLISTER (Killamsetty et al., AAAI 2021): the subset whose one-step update most lowers
        # the loss on a validation set, here a fixed random 1% of the training set (which
        # stays among the candidates: Fashion-MNIST has no separate validation split)
        proxies = GradientProxyCallback(model, train_set.batch, batch_size=1024)
        pick = np.random.default_rng(seed).choice(len(train_set), max(1, len(train_set) // 100))
        val_idx = sorted(set(pick.tolist()))

        def validation() -> tuple[Tensor, Tensor]:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                inputs, targets = train_set.batch(val_idx)[:2]
                device = next(model.parameters()).device
                logits = model(inputs.to(device))
            model.train(was_training)
            return logits, targets

        sampler = GlisterBatchSampler(
            train_set, batch_size, callback=proxies, validation=validation, budget=budget,
            eta=lr, reselect_every=1, seed=seed,
        )  # fmt: skip
    elif method == "infobatch":
        # InfoBatch (Qin et al., ICLR 2024): each epoch, half of the examples whose last loss
        # is below the mean are left out and the rest of them weigh 2; from 0.875 · epochs on the
        # epochs are full; the losses come from the training steps (report_losses below)
        sampler = InfoBatchSampler(
            train_set, batch_size, num_epochs=epochs, budget=budget, seed=seed
        )
        data = WithWeights(train_set, return_index=True)
        return DataLoader(data, batch_sampler=sampler, **common), sampler
    else:
        raise ValueError(f"method should be one of {METHODS}, but got method={method!r}")
    return DataLoader(WithWeights(train_set), batch_sampler=sampler, **common), sampler


def overheads(sampler: Any) -> dict[str, float | int]:
    """The sampler's telemetry totals (selections and seconds per part), or zeros."""
    t = getattr(sampler, "telemetry", None)
    if t is None:
        return {"selections": 0, "checks": 0, "dropped": 0, "proxies_s": 0.0, "kernel_s": 0.0,
                "anchor_s": 0.0, "check_s": 0.0, "other_s": 0.0,
                "overhead_s": 0.0}  # fmt: skip
    parts = {
        "proxies_s": t.callback_seconds,
        "kernel_s": t.kernel_seconds,
        "anchor_s": t.anchor_seconds,
        "check_s": t.check_seconds,
        # the rest of the selections: drawing pools, weights, bookkeeping
        "other_s": t.selection_seconds - t.callback_seconds - t.kernel_seconds - t.anchor_seconds,
    }
    return {
        "selections": t.num_selections,
        "checks": t.num_checks,
        "dropped": t.num_dropped,
        **parts,
        "overhead_s": sum(parts.values()),
    }


def train_one(
    method: str,
    model: nn.Module,
    train_set: Any,
    test_set: Any,
    labels: np.ndarray,
    recipe: Recipe,
    *,
    budget: float,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
    augment: bool = False,
    max_steps: int | None = None,
    crest: CrestConfig | None = None,
    log_sampler: bool = True,
) -> dict[str, Any]:
    """Train ``model`` with one method; returns per-epoch history and final numbers.

    With ``log_sampler`` the sampler's INFO lines (one per epoch) are shown.

    ``seconds`` is the training wall time (data loading, selection, checks, forward, backward,
    optimizer), without the per-epoch test evaluation, which is timed apart (``eval_s``).
    ``max_steps`` stops each epoch early (for smoke tests).
    """
    place(model, device).train()
    loader, sampler = make_loader(
        method, model, train_set, labels, budget=budget, batch_size=recipe.batch_size,
        seed=seed, num_workers=num_workers, crest=crest, lr=recipe.lr, epochs=recipe.epochs,
    )  # fmt: skip
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
    )  # fmt: skip
    steps_per_epoch = len(loader)
    # the schedule follows the epochs done (fractional): the step count for a loader of fixed
    # length, and right for InfoBatch, whose epochs are shorter once it prunes
    factor = lr_factor(recipe, steps_per_epoch)
    done = [0.0]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda _k: factor(round(done[0] * steps_per_epoch))
    )
    report = sampler.report_losses if method == "infobatch" else None  # (its losses)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    history: list[dict[str, Any]] = []
    train_s = eval_s = 0.0
    steps = 0
    with sampler_logging() if log_sampler else contextlib.nullcontext():
        for epoch in range(recipe.epochs):
            t0 = time.perf_counter()
            loss_sum = correct = seen = 0.0
            num_batches = len(loader)  # (InfoBatch: this epoch's, from the losses so far)
            bar = progress(loader, f"[{method:>6}] epoch {epoch + 1}/{recipe.epochs}")
            for k, batch in enumerate(bar):
                if max_steps is not None and k >= max_steps:
                    break
                x, y, w = (t.to(device) for t in batch[:3])
                if augment:
                    x = augment_crop_flip(x, aug_gen)
                out = model(x)
                per_sample = F.cross_entropy(out, y, reduction="none")
                loss = (w * per_sample).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if report is not None:
                    report(batch[3], per_sample.detach())
                done[0] = epoch + (k + 1) / num_batches
                scheduler.step()
                steps += 1
                loss_sum += float(loss.detach()) * len(y)
                correct += float((out.argmax(1) == y).sum())
                seen += len(y)
            close = getattr(bar, "close", None)
            if close is not None:
                close()
            epoch_s = time.perf_counter() - t0
            train_s += epoch_s
            t1 = time.perf_counter()
            acc = evaluate(model, test_set, device)
            eval_s += time.perf_counter() - t1
            row = {
                "epoch": epoch + 1,
                "loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1),
                "test_acc": acc,
                "seconds": epoch_s,
                "train_s": train_s,
                "lr": optimizer.param_groups[0]["lr"],
                "selections": overheads(sampler)["selections"],
            }
            history.append(row)
            print(
                f"[{method:>6}] epoch {epoch + 1:3d}/{recipe.epochs}  loss {row['loss']:.4f}  "
                f"train acc {100 * row['train_acc']:5.1f}%  test acc {100 * acc:5.2f}%  "
                f"{epoch_s:6.1f} s  selections {row['selections']}",
                flush=True,
            )
    return {
        "method": method,
        "test_acc": history[-1]["test_acc"],
        "seconds": train_s,
        "eval_s": eval_s,
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        **overheads(sampler),
        "history": history,
        "trace": trace(sampler),
    }


def trace(sampler: Any) -> dict[str, Any] | None:
    """The steps of the selections and checks, ρ and T1, from the sampler's telemetry (the
    last ``telemetry_size`` records; ``None`` without telemetry)."""
    t = getattr(sampler, "telemetry", None)
    if t is None:
        return None
    tau = getattr(getattr(sampler, "monitor", None), "threshold", None)
    return {
        "selection_steps": [r.step for r in t.selections],
        "check_steps": [r.step for r in t.checks],
        "rho": [r.rho for r in t.checks],
        "interval": [r.interval for r in t.checks],
        "tau": tau,
    }


def progress(loader: Iterable[Any], desc: str) -> Iterable[Any]:
    """``loader`` with a progress bar inside the epoch when tqdm is installed (the
    ``examples`` extra) and stderr is a terminal; the plain loader otherwise."""
    try:
        # (not tqdm.auto: its asyncio variant calls iter(loader) when built, and a DataLoader
        # with workers starts a pass, drawing the sampler's batches, at each iter)
        from tqdm import tqdm
    except ImportError:
        return loader
    return tqdm(loader, desc=desc, leave=False, disable=None, dynamic_ncols=True)


@contextlib.contextmanager
def sampler_logging() -> Iterator[None]:
    """Show the samplers' INFO lines (one per epoch: selections, checks, dropped examples)
    while the examples run, through tqdm's logging redirect when it is installed; the
    logging configuration is put back afterwards."""
    library = logging.getLogger("coreset_sampler")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("  %(message)s"))
    level, propagate = library.level, library.propagate
    library.setLevel(logging.INFO)
    library.addHandler(handler)
    library.propagate = False
    try:
        try:
            from tqdm.contrib.logging import logging_redirect_tqdm
        except ImportError:
            yield
        else:
            with logging_redirect_tqdm([library]):
                yield
    finally:
        library.removeHandler(handler)
        library.setLevel(level)
        library.propagate = propagate


# --------------------------------------------------------------------------- reporting


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    epochs: int,
    threads: int = 0,
    tau: float | None = None,
    h: float | None = None,
    warmup_epochs: float = 0.0,
    pool_multiplier: int | None = None,
) -> None:
    """Options every example takes."""
    parser.add_argument(
        "--budget", type=float, default=0.1, help="random/crest/craig: fraction of the steps"
    )
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument(
        "--threads", type=int, default=threads, help="torch intra-op threads (0: torch's "
        "default); 1 is fastest for small models on a shared or small CPU",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--tau", type=float, default=tau, help="CREST: reselect when rho > tau (default: the "
        "library's)",
    )  # fmt: skip
    parser.add_argument(
        "--h", type=float, default=h, help="CREST: check-interval multiplier (default: the "
        "library's)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-epochs", type=float, default=warmup_epochs, help="CREST: uniform random "
        "batches before the first selection, in (budget-sized) epochs",
    )  # fmt: skip
    parser.add_argument(
        "--pool-multiplier", type=int, default=pool_multiplier,
        help="CREST: b in P = min(b*T1, steps per epoch) pools per selection (default: the "
        "library's)",
    )  # fmt: skip
    parser.add_argument(
        "--pool-size", type=int, default=None,
        help="CREST: examples per pool (default: 3 times the batch size)",
    )  # fmt: skip
    parser.add_argument(
        "--max-uses", type=int, default=None,
        help="CREST: times a coreset is trained on, at most (0: no cap; default: the library's)",
    )  # fmt: skip
    parser.add_argument(
        "--check-size", type=int, default=None,
        help="CREST: examples in the monitor's check sample (default: the batch size)",
    )  # fmt: skip
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop every epoch after this many steps "
        "(smoke tests)",
    )  # fmt: skip


def crest_config(args: argparse.Namespace, **overrides: Any) -> CrestConfig:
    """The :class:`CrestConfig` of the parsed options (``overrides`` win)."""
    values: dict[str, Any] = {
        "threshold": args.tau,
        "interval_multiplier": args.h,
        "warmup_epochs": args.warmup_epochs,
        "pool_multiplier": args.pool_multiplier,
        "pool_size": args.pool_size,
        "check_size": args.check_size,
        "max_uses": args.max_uses,
    }
    values.update(overrides)
    return CrestConfig(**values)


def set_threads(threads: int) -> None:
    """``torch.set_num_threads`` unless 0 (keep torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (model initialisation; the samplers take `seed`)."""
    torch.manual_seed(seed)


def finish(
    results: dict[str, dict[str, Any]], meta: dict[str, Any], out: str | None
) -> dict[str, Any]:
    """Add relative error and speedup against ``full``, print the table, write JSON and plot."""
    full = results.get("full")
    for r in results.values():
        if full is not None:
            r["rel_err"] = abs(r["test_acc"] - full["test_acc"]) / max(full["test_acc"], 1e-12)
            r["speedup"] = full["seconds"] / max(r["seconds"], 1e-12)
        else:
            r["rel_err"] = r["speedup"] = None
    print_table(results)
    report = {**meta, "hardware": hardware(), "results": results}
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
        png = plot(results, path.with_suffix(".png"), title=str(meta.get("title", "")))
        if png is not None:
            print(f"wrote {png}")
    return report


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """One row per method: accuracy, relative error, wall time, speedup, overheads."""
    cols = ("method", "test acc", "rel err", "train s", "speedup", "steps", "selections",
            "proxies s", "kernel s", "anchor s", "check s", "other s")  # fmt: skip
    rows = []
    for name, r in results.items():
        rows.append((
            name,
            f"{100 * r['test_acc']:.2f}%",
            "-" if r["rel_err"] is None else f"{100 * r['rel_err']:.2f}%",
            f"{r['seconds']:.1f}",
            "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
            str(r["steps"]),
            str(r["selections"]),
            *(f"{r[k]:.2f}" for k in ("proxies_s", "kernel_s", "anchor_s", "check_s", "other_s")),
        ))  # fmt: skip
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))
    print("\n" + line + "\n" + "-" * len(line))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    print(
        "rel err = |acc - acc_full| / acc_full; speedup = full train s / method train s (all "
        "sampler overhead included, test evaluation excluded); proxies/kernel/anchor/check/"
        "other s: the sampler's telemetry (gradient proxies, facility location, quadratic "
        "model, checks, rest of the selections)"
    )
    for name, r in results.items():
        print(
            f"final [{name}] test acc {100 * r['test_acc']:.2f}%  train {r['seconds']:.1f} s  "
            f"overhead {r['overhead_s']:.1f} s (proxies {r['proxies_s']:.1f}, kernel "
            f"{r['kernel_s']:.1f}, anchor {r['anchor_s']:.1f}, check {r['check_s']:.1f}, other "
            f"{r['other_s']:.1f})"
        )


def hardware() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def plot(results: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Test accuracy against epochs and against training seconds and, for the methods whose
    sampler checks (CREST), ρ at each check, T1 and the selections over the steps (needs
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return None
    traced = {n: r["trace"] for n, r in results.items() if (r.get("trace") or {}).get("rho")}
    fig, axes = plt.subplots(1, 3 if traced else 2, figsize=(15 if traced else 10, 4))
    ax1, ax2 = axes[0], axes[1]
    for name, r in results.items():
        epochs = [h["epoch"] for h in r["history"]]
        acc = [100 * h["test_acc"] for h in r["history"]]
        ax1.plot(epochs, acc, marker=".", label=name)
        ax2.plot([h["train_s"] for h in r["history"]], acc, marker=".", label=name)
    ax1.set(xlabel="epoch", ylabel="test accuracy (%)")
    ax2.set(xlabel="training seconds", ylabel="test accuracy (%)", xscale="log")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    if traced:
        ax3 = axes[2]
        twin = ax3.twinx()
        for name, t in traced.items():
            (line,) = ax3.plot(t["check_steps"], t["rho"], ".", ms=3, label=f"{name} rho")
            twin.step(t["check_steps"], t["interval"], where="post", color=line.get_color(),
                      alpha=0.5, ls="--", label=f"{name} T1")  # fmt: skip
            ax3.plot(t["selection_steps"], [0] * len(t["selection_steps"]), "|", ms=12,
                     color=line.get_color(), label=f"{name} selections")  # fmt: skip
            if t.get("tau") is not None:
                ax3.axhline(t["tau"], ls="--", lw=0.8, color="grey", label="tau")
        ax3.set(xlabel="step", ylabel="rho at each check (dots), selections (ticks)")
        ax3.set_ylim(bottom=-0.02)
        twin.set_ylabel("T1, steps between checks (dashed)")
        ax3.legend(loc="upper left", fontsize=8)
        ax3.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_methods(text: str) -> list[str]:
    """``"full,random,crest"`` → a checked list."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise SystemExit(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    return methods
