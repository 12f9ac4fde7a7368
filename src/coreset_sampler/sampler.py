"""Kept so that imports from before 0.2 keep working: the samplers are in
:mod:`coreset_sampler.samplers`, the weights in :mod:`coreset_sampler.weights`, the callback
protocol in :mod:`coreset_sampler.proxies`."""

from __future__ import annotations

from coreset_sampler.proxies import ProxyCallback
from coreset_sampler.samplers import (
    CheckRecord,
    CrestBatchSampler,
    RandomBatchSampler,
    SamplerTelemetry,
    SelectionMonitor,
    SelectionRecord,
)
from coreset_sampler.weights import WeightedIndex, WithWeights

__all__ = [
    "CheckRecord",
    "CrestBatchSampler",
    "ProxyCallback",
    "RandomBatchSampler",
    "SamplerTelemetry",
    "SelectionMonitor",
    "SelectionRecord",
    "WeightedIndex",
    "WithWeights",
]
