"""coreset_sampler: CREST mini-batch coresets for any PyTorch training loop.

CREST: Yang, Kang and Mirzasoleiman, "Towards Sustainable Learning: Coresets for
Data-efficient Deep Learning", ICML 2023.

The names below are what a training loop imports. Everything else is reachable from its
module: the sampler parts and records in :mod:`coreset_sampler.samplers`, the proxy functions
in :mod:`coreset_sampler.gradients`, the curvature functions in :mod:`coreset_sampler.hessian`,
the kernels' result types in :mod:`coreset_sampler.kernels`.
"""

from __future__ import annotations

import importlib
from typing import Any

from coreset_sampler.kernels import greedy_facility_location, greedy_k_center
from coreset_sampler.monitor import QuadraticLossMonitor
from coreset_sampler.proxies import GradientProxyCallback
from coreset_sampler.samplers import (
    CraigBatchSampler,
    CrestBatchSampler,
    DropLearned,
    GlisterBatchSampler,
    GradMatchBatchSampler,
    InfoBatchSampler,
    KCenterBatchSampler,
    RandomBatchSampler,
)
from coreset_sampler.weights import WithWeights

__version__ = "0.2.0.dev0"

# grouped by role; ruff's RUF022 wants one sorted list, so the groups are kept as comments
__all__ = [  # noqa: RUF022
    "__version__",
    # samplers, and the weights that travel with their batches
    "CrestBatchSampler",
    "CraigBatchSampler",
    "GradMatchBatchSampler",
    "GlisterBatchSampler",
    "InfoBatchSampler",
    "KCenterBatchSampler",
    "RandomBatchSampler",
    "DropLearned",
    "WithWeights",
    # gradient proxies and when to reselect
    "GradientProxyCallback",
    "QuadraticLossMonitor",
    # selection kernels
    "greedy_facility_location",
    "greedy_k_center",
]

# names importable from here before 0.2, now reached through their modules (kept working)
_ELSEWHERE = {
    "WeightedIndex": "coreset_sampler.weights",
    "ProxyCallback": "coreset_sampler.proxies",
    "SelectionMonitor": "coreset_sampler.samplers",
    "SamplerTelemetry": "coreset_sampler.samplers",
    "SelectionRecord": "coreset_sampler.samplers",
    "CheckRecord": "coreset_sampler.samplers",
    "PerSampleLoss": "coreset_sampler.monitor",
    "AnchorReport": "coreset_sampler.monitor",
    "CheckReport": "coreset_sampler.monitor",
    "hessian_vector_product": "coreset_sampler.hessian",
    "hutchinson_diagonal": "coreset_sampler.hessian",
    "cross_entropy_logit_grad": "coreset_sampler.gradients",
    "last_layer_grad": "coreset_sampler.gradients",
    "logit_grad": "coreset_sampler.gradients",
    "per_sample_grads": "coreset_sampler.gradients",
    "FacilityLocationResult": "coreset_sampler.kernels",
    "KCenterResult": "coreset_sampler.kernels",
}


def __getattr__(name: str) -> Any:
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
