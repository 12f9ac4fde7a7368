"""coreset_sampler: CREST mini-batch coresets for any PyTorch training loop.

CREST: Yang, Kang and Mirzasoleiman, "Towards Sustainable Learning: Coresets for
Data-efficient Deep Learning", ICML 2023.
"""

from __future__ import annotations

from coreset_sampler.craig import CraigBatchSampler
from coreset_sampler.facility_location import FacilityLocationResult, greedy_facility_location
from coreset_sampler.gradients import (
    GradientProxyCallback,
    cross_entropy_logit_grad,
    last_layer_grad,
    logit_grad,
    per_sample_grads,
)
from coreset_sampler.k_center import KCenterResult, greedy_k_center
from coreset_sampler.k_center_sampler import KCenterBatchSampler
from coreset_sampler.monitor import (
    AnchorReport,
    CheckReport,
    PerSampleLoss,
    QuadraticLossMonitor,
    hessian_vector_product,
    hutchinson_diagonal,
)
from coreset_sampler.sampler import (
    CheckRecord,
    CrestBatchSampler,
    ProxyCallback,
    RandomBatchSampler,
    SamplerTelemetry,
    SelectionMonitor,
    SelectionRecord,
    WeightedIndex,
    WithWeights,
)

__version__ = "0.1.0.dev0"

# grouped by role; ruff's RUF022 wants one sorted list, so the groups are kept as comments
__all__ = [  # noqa: RUF022
    "__version__",
    # samplers and the weights that travel with their batches
    "CrestBatchSampler",
    "CraigBatchSampler",
    "KCenterBatchSampler",
    "RandomBatchSampler",
    "WeightedIndex",
    "WithWeights",
    "ProxyCallback",
    "SelectionMonitor",
    "SamplerTelemetry",
    "SelectionRecord",
    "CheckRecord",
    # when to reselect
    "QuadraticLossMonitor",
    "PerSampleLoss",
    "AnchorReport",
    "CheckReport",
    "hessian_vector_product",
    "hutchinson_diagonal",
    # gradient proxies
    "GradientProxyCallback",
    "cross_entropy_logit_grad",
    "last_layer_grad",
    "logit_grad",
    "per_sample_grads",
    # selection kernels
    "greedy_facility_location",
    "FacilityLocationResult",
    "greedy_k_center",
    "KCenterResult",
]
