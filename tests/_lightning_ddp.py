"""SamplerCallback under DDP: two CPU processes (``python -m torch.distributed.run
--nproc-per-node 2 tests/_lightning_ddp.py OUT_DIR``). Fits 2 epochs uninterrupted, then again
with a checkpoint mid-epoch 1, then resumes from it; each rank writes what it trained on.

Lightning writes the checkpoint from rank 0 only: each rank's sampler state reaches it through
``AllRanksState``, and each rank resumes its own batches.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning  # noqa: E402
import torch.distributed as dist  # noqa: E402

from coreset_sampler.integrations.lightning import SamplerCallback  # noqa: E402
from tests.test_lightning import Module  # noqa: E402


def fit(module: Module, out: Path, ckpt_path: Path | None = None, **checkpoint: Any) -> None:
    trainer = lightning.Trainer(
        max_epochs=2, accelerator="cpu", devices=2, strategy="ddp",
        use_distributed_sampler=False,
        callbacks=[
            SamplerCallback(),
            lightning.pytorch.callbacks.ModelCheckpoint(
                dirpath=out / "ckpt", save_top_k=-1, **checkpoint
            ),
        ],
        logger=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, ckpt_path=ckpt_path)


def main(out: Path) -> None:
    warnings.filterwarnings("ignore")
    full = Module()
    fit(full, out / "full")
    first = Module()
    # 3 batches per rank and epoch: step 4 is the second batch of epoch 1
    fit(first, out / "first", every_n_train_steps=4, save_on_train_epoch_end=False)
    resumed = Module()
    fit(resumed, out / "resumed", ckpt_path=out / "first" / "ckpt" / "epoch=1-step=4.ckpt")
    rank = dist.get_rank()
    params = [[p.detach().tolist() for p in m.parameters()] for m in (full, resumed)]
    result = {
        "rank": rank,
        "world": dist.get_world_size(),
        "full": full.seen,
        "first": first.seen,
        "resumed": resumed.seen,
        "params": params,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
