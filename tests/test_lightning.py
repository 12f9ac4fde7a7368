"""coreset_sampler.integrations.lightning.SamplerCallback in a real Trainer: checkpoint,
resume, epochs and logged telemetry (CPU, tiny data, seconds)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler import (
    CrestBatchSampler,
    GradientProxyCallback,
    QuadraticLossMonitor,
    RandomBatchSampler,
    WithWeights,
)

lightning = pytest.importorskip("lightning")
from coreset_sampler.integrations.lightning import SamplerCallback  # noqa: E402

# Lightning's expected notes on these resumes (another checkpoint directory, a checkpoint
# written without a callback, a mid-epoch checkpoint, which the sampler makes exact)
pytestmark = [
    pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning"),
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`:UserWarning"),
    pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended:UserWarning"),
]

N, BATCH, BUDGET = 480, 16, 0.2  # 6 batches per epoch


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())


class Module(lightning.LightningModule):  # type: ignore[misc,name-defined]
    """CREST built in train_dataloader (the model it reads exists only there); records every
    batch's indices and weights, and every loss."""

    def __init__(self, kind: str = "crest") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
        self.kind = kind
        self.ds = data()
        self.seen: list[tuple[int, list[int], list[float]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, w, idx = batch
        self.seen.append((self.current_epoch, idx.tolist(), w.tolist()))
        return (w * F.cross_entropy(self(x), y, reduction="none")).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)

    def train_dataloader(self) -> DataLoader[Any]:
        sampler: Any
        if self.kind == "random":
            sampler = RandomBatchSampler(self.ds, BATCH, budget=BUDGET, seed=0)
        else:
            proxies = GradientProxyCallback(self, self.ds)
            monitor = QuadraticLossMonitor(self, proxies.per_sample_loss, threshold=0.05)
            sampler = CrestBatchSampler(
                self.ds, BATCH, callback=proxies, monitor=monitor, labels=self.ds.tensors[1],
                budget=BUDGET, seed=0, pool_size=48,
            )  # fmt: skip
        return DataLoader(WithWeights(self.ds, return_index=True), batch_sampler=sampler)


def fit(
    module: Module, tmp: Path, epochs: int, ckpt_path: Path | None = None, **checkpoint: Any
) -> Any:
    trainer = lightning.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, use_distributed_sampler=False,
        callbacks=[
            SamplerCallback(),
            lightning.pytorch.callbacks.ModelCheckpoint(
                dirpath=tmp / "ckpt", save_top_k=-1, **checkpoint
            ),
        ],
        logger=lightning.pytorch.loggers.CSVLogger(tmp, name="logs"),
        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


def params(module: Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("kind", ["crest", "random"])
def test_resume_from_an_epoch_end_checkpoint_continues_the_uninterrupted_run(
    kind: str, tmp_path: Path
) -> None:
    full = Module(kind)
    fit(full, tmp_path / "full", 3)
    assert [e for e, _, _ in full.seen] == [0] * 6 + [1] * 6 + [2] * 6

    first = Module(kind)
    fit(first, tmp_path / "first", 2)
    assert first.seen == full.seen[:12]
    ckpt = tmp_path / "first" / "ckpt" / "epoch=1-step=12.ckpt"
    resumed = Module(kind)  # a fresh process would build everything again
    fit(resumed, tmp_path / "resumed", 3, ckpt_path=ckpt)
    assert resumed.seen == full.seen[12:]  # epoch 2: the same batches and weights
    assert all(torch.equal(a, b) for a, b in zip(params(full), params(resumed), strict=True))


def test_the_epoch_follows_the_trainer_without_a_saved_sampler_state(tmp_path: Path) -> None:
    # a checkpoint written without the callback: the random batches of epoch 2 still are epoch
    # 2's, because the callback sets the sampler's epoch from the trainer's
    full = Module("random")
    fit(full, tmp_path / "full", 3)
    fit(Module("random"), tmp_path / "first", 2)
    ckpt = torch.load(tmp_path / "first" / "ckpt" / "epoch=1-step=12.ckpt", weights_only=False)
    ckpt["callbacks"] = {k: v for k, v in ckpt["callbacks"].items() if "Sampler" not in k}
    torch.save(ckpt, tmp_path / "bare.ckpt")
    resumed = Module("random")
    fit(resumed, tmp_path / "resumed", 3, ckpt_path=tmp_path / "bare.ckpt")
    assert resumed.seen == full.seen[12:]


def test_resume_mid_epoch_continues_the_uninterrupted_run(tmp_path: Path) -> None:
    full = Module()
    fit(full, tmp_path / "full", 2)
    first = Module()
    fit(first, tmp_path / "first", 2, every_n_train_steps=4, save_on_train_epoch_end=False)
    resumed = Module()
    fit(
        resumed,
        tmp_path / "resumed",
        2,
        ckpt_path=tmp_path / "first" / "ckpt" / "epoch=0-step=4.ckpt",
    )
    assert resumed.seen == full.seen[4:]
    assert all(torch.equal(a, b) for a, b in zip(params(full), params(resumed), strict=True))


def test_the_telemetry_reaches_the_logger_and_the_epoch_is_set(tmp_path: Path) -> None:
    module = Module()
    trainer = fit(module, tmp_path, 2)
    sampler = trainer.train_dataloader.batch_sampler
    # the last pass's epoch, as set by the callback (Lightning stops after len batches, so
    # the pass's end is seen only by the next pass)
    assert sampler.epoch == 1 and sampler.telemetry.num_selections >= 2
    with open(next(tmp_path.glob("logs/*/metrics.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("sampler/selections")]
    assert len(logged) == 12  # one row per step
    assert float(logged[-1]["sampler/selections"]) == sampler.telemetry.num_selections
    assert float(logged[-1]["sampler/steps"]) == 12
    assert {"sampler/rho", "sampler/interval", "sampler/num_pools"} <= set(rows[0])


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="one of coreset_sampler's batch samplers"):
        SamplerCallback(torch.utils.data.BatchSampler(range(4), 2, False))  # type: ignore[arg-type]

    class Plain(Module):
        def train_dataloader(self) -> DataLoader[Any]:
            return DataLoader(WithWeights(self.ds, return_index=True), batch_size=BATCH)

    with pytest.raises(RuntimeError, match="found no coreset_sampler batch sampler"):
        fit(Plain(), tmp_path, 1)


@pytest.mark.ddp
def test_resume_under_ddp_gives_each_rank_its_own_batches(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(root / "tests" / "_lightning_ddp.py"), str(tmp_path)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=root)
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, result in enumerate(ranks):
        assert result["rank"] == r and result["world"] == 2
        assert [e for e, _, _ in result["full"]] == [0] * 3 + [1] * 3  # 3 batches per rank
        assert result["first"] == result["full"]  # (the run that wrote the checkpoint)
        assert result["resumed"] == result["full"][4:]  # this rank's batches, after step 4
        assert result["params"][0] == result["params"][1]
    assert ranks[0]["full"] != ranks[1]["full"]  # each rank its share
