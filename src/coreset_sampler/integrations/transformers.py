"""Hugging Face ``Trainer``: train on a coreset sampler's weighted batches, resume, log.

:class:`CoresetTrainer` is a ``transformers.Trainer`` that takes a ``batch_sampler``::

    proxies = classification_proxies(model, train_set)
    sampler = CrestBatchSampler(train_set, 32, callback=proxies, labels=train_labels, seed=0,
                                monitor=QuadraticLossMonitor(model, proxies.per_sample_loss))
    trainer = CoresetTrainer(model=model, args=args, train_dataset=train_set,
                             batch_sampler=sampler)
    trainer.train()                                  # or train(resume_from_checkpoint=True)

It builds the training loader from the sampler (``WithWeights`` and the trainer's data
collator, the weights as a ``sample_weight`` column), computes the weighted loss
``mean_i w_i ℓ_i`` (cross-entropy per example; for token labels ``[batch, length]`` the mean
over each example's tokens that are not ``-100``), saves every rank's sampler state in each
checkpoint (``coreset_sampler.pt``) and loads it back on ``train(resume_from_checkpoint=...)``,
and adds the sampler's telemetry to the logged metrics (``sampler/selections``, ...).
:func:`classification_proxies` is the proxy callback for a sequence-classification model
(``model(**inputs).logits`` of shape ``[batch, classes]``).

Needs ``transformers`` (tested with 5.25).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence, Sized
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

try:
    from transformers import Trainer, TrainerCallback
    from transformers.data.data_collator import default_data_collator
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
except ImportError as err:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "coreset_sampler.integrations.transformers needs Hugging Face transformers: "
        "pip install transformers"
    ) from err

from coreset_sampler.proxies import GradientProxyCallback
from coreset_sampler.samplers._base import BudgetedSampler
from coreset_sampler.weights import WithWeights

from .checkpoint import AllRanksState

__all__ = ["STATE_FILE", "CoresetTrainer", "Logits", "WeightedCollator", "classification_proxies"]

STATE_FILE = "coreset_sampler.pt"  # the sampler's state in a Trainer checkpoint folder
WEIGHT = "sample_weight"  # the batch column of the weights


class Logits(nn.Module):
    """``model(**inputs).logits``: a Hugging Face model as a module that takes one dict of
    inputs and returns a tensor, as :class:`~coreset_sampler.GradientProxyCallback` calls it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, Any]) -> Tensor:
        logits: Tensor = self.model(**inputs).logits
        return logits


def classification_proxies(
    model: nn.Module,
    dataset: Any,
    data_collator: Callable[[list[Any]], dict[str, Any]] | None = None,
    *,
    label_name: str = "labels",
    **kwargs: Any,
) -> GradientProxyCallback:
    """The gradient-proxy callback of a sequence-classification model on a dataset of dicts.

    Items ``dataset[i]`` are dicts of the model's inputs and ``label_name``, batched with
    ``data_collator`` (default ``transformers.default_data_collator``). The callback runs
    ``model(**inputs).logits`` (``[batch, classes]``) and returns CREST's proxies;
    ``kwargs`` go to :class:`~coreset_sampler.GradientProxyCallback` (``proxy``,
    ``batch_size``, ``label_smoothing``, ...). Its ``per_sample_loss`` is the monitor's
    ``loss_fn``.
    """
    collate = data_collator or default_data_collator

    def load(indices: Sequence[int]) -> tuple[dict[str, Any], Tensor]:
        batch = dict(collate([dataset[int(i)] for i in indices]))
        if label_name not in batch:
            raise KeyError(
                f"the collated batch has no {label_name!r} column (it has {sorted(batch)}); "
                "pass label_name="
            )
        return batch, batch.pop(label_name)

    return GradientProxyCallback(Logits(model), load, **kwargs)


class WeightedCollator:
    """Collate ``WithWeights`` items ``(features, weight)`` with ``collator`` and add the
    weights as the ``sample_weight`` column."""

    def __init__(self, collator: Callable[[list[Any]], Any] | None = None) -> None:
        self.collator = collator or default_data_collator

    def __call__(self, items: list[tuple[Any, Tensor]]) -> dict[str, Any]:
        batch = dict(self.collator([item[0] for item in items]))
        batch[WEIGHT] = torch.stack([item[1] for item in items])
        return batch


def weighted_loss(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """``mean_i w_i ℓ_i``: per-example cross-entropy for labels ``[batch]``; for labels
    ``[batch, length]`` (token classification or language modelling with labels already
    aligned to the logits) each example's loss is the mean over its tokens that are not
    ``-100``."""
    weights = weights.to(logits.dtype)
    if labels.dim() == 1:
        per_example = F.cross_entropy(logits, labels, reduction="none")
    else:
        tokens = F.cross_entropy(
            logits.flatten(0, -2), labels.flatten(), reduction="none", ignore_index=-100
        ).view(labels.shape)
        counted = (labels != -100).sum(dim=1).clamp(min=1)
        per_example = tokens.sum(dim=1) / counted
    return (weights * per_example).mean()


class _SaveSamplerState(TrainerCallback):
    """Every rank's sampler state into the checkpoint folder the Trainer just wrote."""

    def __init__(self, sampler: BudgetedSampler) -> None:
        self.sampler = sampler

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = AllRanksState(self.sampler).state_dict()  # (a collective: on every rank)
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            torch.save(saved, os.path.join(folder, STATE_FILE))


class CoresetTrainer(Trainer):
    """A ``transformers.Trainer`` that trains on ``batch_sampler``'s weighted batches.

    * **Data**: the training loader is ``DataLoader(WithWeights(train_dataset),
      batch_sampler=batch_sampler, collate_fn=WeightedCollator(data_collator))``, not
      prepared by Accelerate (the sampler shards itself in a distributed run: build it with
      ``num_replicas=args.world_size, rank=args.process_index``; Accelerate would shard its
      batches again and read them one ahead). Steps per epoch are ``len(batch_sampler)``.
    * **Loss**: :func:`weighted_loss` of the model's logits and the batch's ``labels``
      (the model is called without them); pass ``compute_loss_func`` for another loss
      ``f(outputs, labels, num_items_in_batch=None, sample_weight=...)``.
    * **Checkpoints**: every rank's sampler state is saved in each checkpoint folder
      (``coreset_sampler.pt``); ``train(resume_from_checkpoint=...)`` loads it, and the
      sampler continues its epoch where it was (the Trainer's own skipping of the first
      batches is turned off), so the resumed run trains on the uninterrupted run's batches.
    * **Logging**: the sampler's ``telemetry.metrics()`` join the Trainer's logs as
      ``sampler/<name>``.

    The other arguments are those of ``transformers.Trainer``.

    Args:
        batch_sampler: one of the library's batch samplers over ``train_dataset``.
    """

    def __init__(self, *args: Any, batch_sampler: BudgetedSampler, **kwargs: Any) -> None:
        if not isinstance(batch_sampler, BudgetedSampler):
            raise TypeError(
                "batch_sampler should be one of coreset_sampler's batch samplers, but got "
                f"{type(batch_sampler).__name__}"
            )
        super().__init__(*args, **kwargs)
        if not hasattr(Trainer, "get_resumed_dataloader"):  # pragma: no cover - old versions
            raise ImportError(
                "CoresetTrainer needs a transformers version whose Trainer has "
                "get_resumed_dataloader (5.x)"
            )
        size = len(self.train_dataset) if isinstance(self.train_dataset, Sized) else None
        if size is not None and size != batch_sampler.num_samples:
            raise ValueError(
                f"batch_sampler draws from {batch_sampler.num_samples} examples but "
                f"train_dataset has {size}"
            )
        self.batch_sampler = batch_sampler
        self.add_callback(_SaveSamplerState(batch_sampler))

    def get_train_dataloader(self) -> DataLoader[Any]:
        if self.train_dataset is None:
            raise ValueError("CoresetTrainer: training requires a train_dataset.")
        workers = self.args.dataloader_num_workers
        return DataLoader(
            WithWeights(self.train_dataset),
            batch_sampler=self.batch_sampler,
            collate_fn=WeightedCollator(self.data_collator),
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
        )

    def get_resumed_dataloader(self, dataloader: DataLoader[Any], num_batches: int) -> Any:
        # the loaded sampler state continues the epoch where it was: nothing to skip
        return dataloader

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        inputs = dict(inputs)
        weights = inputs.pop(WEIGHT, None)
        if weights is None:  # (evaluation batches come from the Trainer's own loaders)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(
                outputs, labels, num_items_in_batch=num_items_in_batch, sample_weight=weights
            )
        else:
            loss = weighted_loss(outputs.logits, labels, weights)
        return (loss, outputs) if return_outputs else loss

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        if resume_from_checkpoint is True:
            last: str | None = get_last_checkpoint(self.args.output_dir)  # type: ignore[no-untyped-call]
            resume_from_checkpoint = last
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in {self.args.output_dir}")
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            path = os.path.join(resume_from_checkpoint, STATE_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} does not exist: the checkpoint was not written by a "
                    "CoresetTrainer, so the sampler's state cannot be restored"
                )
            state = torch.load(path, map_location="cpu", weights_only=False)
            AllRanksState(self.batch_sampler).load_state_dict(state)
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval, **kwargs,
        )  # fmt: skip

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        telemetry = getattr(self.batch_sampler, "telemetry", None)
        if telemetry is not None and "loss" in logs:  # (training logs only)
            logs = {**logs, **{f"sampler/{k}": v for k, v in telemetry.metrics().items()}}
        super().log(logs, *args, **kwargs)
