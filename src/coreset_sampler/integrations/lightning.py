"""PyTorch Lightning: the sampler's state in checkpoints, its epoch, its telemetry in the logs.

Lightning neither saves a batch sampler's state nor calls its ``set_epoch``. Add
:class:`SamplerCallback` to the ``Trainer`` and it does both, and logs the sampler's
telemetry through :meth:`LightningModule.log_dict` (so TensorBoard, CSV or W&B loggers get it)::

    trainer = Trainer(callbacks=[SamplerCallback()], use_distributed_sampler=False)
    trainer.fit(module)                                # train_dataloader() builds the sampler
    trainer.fit(module, ckpt_path="last.ckpt")         # resumes the sampler too

Needs Lightning (``pip install lightning``).
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as err:  # pragma: no cover - exercised only without lightning
    raise ImportError(
        "coreset_sampler.integrations.lightning needs PyTorch Lightning: pip install lightning"
    ) from err

from coreset_sampler.samplers._base import BudgetedSampler

from .checkpoint import AllRanksState

__all__ = ["SamplerCallback"]


class SamplerCallback(Callback):
    """Keep a coreset sampler's state in Lightning checkpoints, set its epoch, log it.

    * **Checkpoints**: the sampler's state (every rank's, through
      :class:`~coreset_sampler.integrations.checkpoint.AllRanksState`) is saved with the
      callback's state; on
      ``trainer.fit(..., ckpt_path=...)`` it is loaded back before the first batch, so the
      batches and weights after the resume are those of the uninterrupted run (checkpoints
      at the end of an epoch, or mid-epoch with ``num_workers=0``; with workers see
      ``docs/sampler.md``).
    * **Epoch**: ``sampler.set_epoch(trainer.current_epoch)`` at the start of every epoch.
    * **Logging**: :meth:`~coreset_sampler.samplers.SamplerTelemetry.metrics` at every training
      batch, as ``<prefix><name>`` (``sampler/selections``, ``sampler/rho``, ...), on step.

    Args:
        sampler: the batch sampler; by default the first train dataloader's ``batch_sampler``
            that is one of the library's samplers.
        prefix: the logged metrics' name prefix.
        log: whether to log the telemetry.
    """

    def __init__(
        self, sampler: BudgetedSampler | None = None, *, prefix: str = "sampler/", log: bool = True
    ) -> None:
        super().__init__()
        if sampler is not None and not isinstance(sampler, BudgetedSampler):
            raise TypeError(
                "sampler should be one of coreset_sampler's batch samplers, but got "
                f"{type(sampler).__name__}"
            )
        self.sampler = sampler
        self.prefix = prefix
        self.log = log
        self._pending: dict[str, Any] | None = None  # a loaded state, until the sampler exists

    # ------------------------------------------------------------------ the sampler

    def _find(self, trainer: Trainer) -> BudgetedSampler:
        if self.sampler is None:
            loaders = trainer.train_dataloader  # a loader, or a list or dict of them
            if isinstance(loaders, dict):
                loaders = list(loaders.values())
            elif not isinstance(loaders, (list, tuple)):
                loaders = [loaders]
            for loader in loaders:
                found = getattr(loader, "batch_sampler", None)
                if isinstance(found, BudgetedSampler):
                    self.sampler = found
                    break
            else:
                raise RuntimeError(
                    "SamplerCallback found no coreset_sampler batch sampler in the train "
                    "dataloaders: pass it, SamplerCallback(sampler), or build the loader with "
                    "DataLoader(..., batch_sampler=sampler)"
                )
        if self._pending is not None:
            AllRanksState(self.sampler).load_state_dict(self._pending)
            self._pending = None
        return self.sampler

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # before the first batch (Lightning does not prefetch from a loader with a length),
        # also when it resumes mid-epoch and skips on_train_epoch_start
        self._find(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._find(trainer).set_epoch(trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if not self.log or self.sampler is None:
            return
        telemetry = getattr(self.sampler, "telemetry", None)
        if telemetry is None:
            return
        metrics = {f"{self.prefix}{k}": v for k, v in telemetry.metrics().items()}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, logger=True)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        # every rank's state (Lightning writes rank 0's checkpoint; every rank calls this)
        if self.sampler is None:
            return {} if self._pending is None else {"sampler": self._pending}
        return {"sampler": AllRanksState(self.sampler).state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("sampler")
        if state is None:
            return
        if self.sampler is not None:
            AllRanksState(self.sampler).load_state_dict(state)
        else:  # the sampler is built later, in train_dataloader(): load it there
            self._pending = state
