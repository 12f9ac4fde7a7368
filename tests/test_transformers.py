"""The Hugging Face Trainer integration: CREST batches and weights in a real Trainer with a tiny
model built from a config (no download), resume from a Trainer checkpoint, logged telemetry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from coreset_sampler import CrestBatchSampler, QuadraticLossMonitor  # noqa: E402
from coreset_sampler.integrations.transformers import (  # noqa: E402
    STATE_FILE,
    CoresetTrainer,
    WeightedCollator,
    classification_proxies,
    weighted_loss,
)

N, BATCH, BUDGET, EPOCHS, LENGTH = 256, 16, 0.25, 3, 8  # 4 steps per epoch


class Texts(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences; the label says whether token 5 occurs in the first half."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 30, (N, LENGTH), generator=g)
        self.labels = (self.ids[:, : LENGTH // 2] < 10).any(dim=1).long()

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                "labels": self.labels[i]}  # fmt: skip


def tiny_bert() -> Any:
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=LENGTH, num_labels=2,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


class Recording(CoresetTrainer):
    """Records every training batch (its token ids and weights)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[list[list[int]], list[float]]] = []

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kw: Any) -> Any:
        if "sample_weight" in inputs:
            self.batches.append((inputs["input_ids"].tolist(), inputs["sample_weight"].tolist()))
        return super().compute_loss(model, inputs, *args, **kw)


class StopAt(transformers.TrainerCallback):  # type: ignore[misc]
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def trainer(out: Path, *, stop_at: int | None = None, save_steps: int = 6) -> Recording:
    train_set = Texts()
    model = tiny_bert()
    proxies = classification_proxies(model, train_set)
    sampler = CrestBatchSampler(
        train_set, BATCH, callback=proxies,
        monitor=QuadraticLossMonitor(model, proxies.per_sample_loss, seed=0),
        labels=train_set.labels, budget=BUDGET, seed=0,
    )  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(out), num_train_epochs=EPOCHS, learning_rate=5e-3,
        lr_scheduler_type="linear", warmup_steps=0, save_strategy="steps",
        save_steps=save_steps, logging_steps=1, report_to=[], use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0, save_only_model=False,
    )  # fmt: skip
    callbacks = [StopAt(stop_at)] if stop_at is not None else []
    return Recording(
        model=model, args=args, train_dataset=train_set, batch_sampler=sampler,
        callbacks=callbacks,
    )  # fmt: skip


def params(t: CoresetTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.model.parameters()]


@pytest.mark.parametrize("stop_at", [6, 8])  # mid-epoch 1, end of epoch 1
def test_resume_from_a_trainer_checkpoint_continues_the_uninterrupted_run(
    tmp_path: Path, stop_at: int
) -> None:
    full = trainer(tmp_path / "full", save_steps=stop_at)
    full.train()
    assert len(full.batches) == EPOCHS * 4 == full.state.global_step
    assert full.batch_sampler.telemetry.num_selections >= 2
    first = trainer(tmp_path / "run", stop_at=stop_at, save_steps=stop_at)
    first.train()
    assert first.batches == full.batches[:stop_at]
    checkpoint = tmp_path / "run" / f"checkpoint-{stop_at}"
    assert (checkpoint / STATE_FILE).is_file()
    rest = trainer(tmp_path / "run", save_steps=stop_at)
    rest.train(resume_from_checkpoint=str(checkpoint))
    # the batches and weights after the resume are the uninterrupted run's, and so is the model
    assert rest.batches == full.batches[stop_at:]
    for a, b in zip(params(rest), params(full), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_loss_is_the_weighted_cross_entropy_and_telemetry_is_logged(tmp_path: Path) -> None:
    t = trainer(tmp_path / "one")
    t.train()
    logged = [h for h in t.state.log_history if "loss" in h]
    assert len(logged) == EPOCHS * 4
    assert all("sampler/selections" in h and "sampler/dropped" in h for h in logged)
    assert "sampler/rho" in logged[-1]  # (once there was a check)
    assert logged[-1]["sampler/selections"] == t.batch_sampler.telemetry.num_selections
    saved = json.loads((tmp_path / "one" / "checkpoint-12" / "trainer_state.json").read_text())
    assert "sampler/checks" in saved["log_history"][0]
    # weighted_loss: mean_i w_i CE_i, and per-token means for [batch, length] labels
    g = torch.Generator().manual_seed(1)
    logits, labels, w = torch.randn(5, 3, generator=g), torch.tensor([0, 2, 1, 1, 0]), torch.rand(5)
    expected = (w * F.cross_entropy(logits, labels, reduction="none")).mean()
    torch.testing.assert_close(weighted_loss(logits, labels, w), expected)
    tokens = torch.randn(2, 4, 3, generator=g)
    tl = torch.tensor([[0, 1, -100, -100], [2, 2, 1, 0]])
    per = [F.cross_entropy(tokens[0, :2], tl[0, :2]), F.cross_entropy(tokens[1], tl[1])]
    torch.testing.assert_close(
        weighted_loss(tokens, tl, torch.tensor([1.0, 3.0])), (per[0] + 3 * per[1]) / 2
    )


def test_weights_reach_the_batch_and_errors_are_clear(tmp_path: Path) -> None:
    batch = WeightedCollator()([({"x": torch.tensor([1.0])}, torch.tensor(0.5)),
                                ({"x": torch.tensor([2.0])}, torch.tensor(2.0))])  # fmt: skip
    assert batch["sample_weight"].tolist() == [0.5, 2.0] and batch["x"].shape == (2, 1)
    t = trainer(tmp_path / "e")
    loader = t.get_train_dataloader()
    first = next(iter(loader))
    assert set(first) == {"input_ids", "attention_mask", "labels", "sample_weight"}
    assert len(loader) == 4
    with pytest.raises(TypeError, match="batch_sampler should be one of"):
        CoresetTrainer(model=t.model, args=t.args, train_dataset=Texts(), batch_sampler=[[0]])
    with pytest.raises(FileNotFoundError, match="not written by a CoresetTrainer"):
        (tmp_path / "plain").mkdir()
        t.train(resume_from_checkpoint=str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="no checkpoint found"):
        t.train(resume_from_checkpoint=True)
    proxies = classification_proxies(t.model, Texts(), label_name="label")
    with pytest.raises(KeyError, match="no 'label' column"):
        proxies([0, 1])
