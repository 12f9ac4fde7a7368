"""Batch samplers for any DataLoader, composed of small parts.

The samplers: :class:`CrestBatchSampler` (CREST's mini-batch coresets), :class:`CraigBatchSampler`
(CRAIG's whole-set coreset), :class:`GradMatchBatchSampler` (GradMatch's gradient-matching
subset), :class:`GlisterBatchSampler` (GLISTER's validation-driven subset),
:class:`InfoBatchSampler` (InfoBatch's loss-based pruning),
:class:`KCenterBatchSampler` (k-center batches) and :class:`RandomBatchSampler` (the uniform
baseline). The parts they are made of, each with one
job (``docs/architecture.md``): the budgeted batch stream and the coreset cycle
(:mod:`._stream`), the selection (:mod:`._selection`), the reselection policy
(:mod:`._policy`), the learned-example dropper (:mod:`._dropper`), the telemetry
(:mod:`._telemetry`), and the declared state they save (:mod:`coreset_sampler._state`).
"""

from __future__ import annotations

from ._dropper import DropLearned
from ._policy import SelectionMonitor
from ._telemetry import CheckRecord, SamplerTelemetry, SelectionRecord
from .craig import CraigBatchSampler
from .crest import CrestBatchSampler
from .glister import GlisterBatchSampler
from .gradmatch import GradMatchBatchSampler
from .infobatch import InfoBatchSampler
from .k_center import KCenterBatchSampler
from .random import RandomBatchSampler

__all__ = [
    "CheckRecord",
    "CraigBatchSampler",
    "CrestBatchSampler",
    "DropLearned",
    "GlisterBatchSampler",
    "GradMatchBatchSampler",
    "InfoBatchSampler",
    "KCenterBatchSampler",
    "RandomBatchSampler",
    "SamplerTelemetry",
    "SelectionMonitor",
    "SelectionRecord",
]
