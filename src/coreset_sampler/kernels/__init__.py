"""Selection kernels: pure functions, batched over many problems, on any device.

- :func:`greedy_facility_location`: the weighted coresets of CREST and CRAIG
  (:mod:`.facility_location`: one entry, one dispatch, a module per solver);
  :func:`load_compiled_kernel` loads its numba kernel at once.
- :func:`greedy_k_center`: farthest-point (k-center) coresets (:mod:`.k_center`).
- :func:`nonnegative_omp`: GradMatch's weighted subsets that match a target gradient
  (:mod:`.omp`).
"""

from __future__ import annotations

from .facility_location import (
    FacilityLocationResult,
    greedy_facility_location,
    load_compiled_kernel,
)
from .k_center import KCenterResult, greedy_k_center
from .omp import OMPResult, nonnegative_omp

__all__ = [
    "FacilityLocationResult",
    "KCenterResult",
    "OMPResult",
    "greedy_facility_location",
    "greedy_k_center",
    "load_compiled_kernel",
    "nonnegative_omp",
]
