"""coreset_sampler: CREST mini-batch coresets for any PyTorch training loop."""

from __future__ import annotations

from coreset_sampler.facility_location import FacilityLocationResult, greedy_facility_location

__version__ = "0.1.0.dev0"

__all__ = [
    # selection kernel
    "FacilityLocationResult",
    "__version__",
    "greedy_facility_location",
]
