"""Selection kernels: pure functions, batched over many problems, on any device.

- :func:`greedy_facility_location`: the weighted coresets of CREST and CRAIG
  (:mod:`.facility_location`: one entry, one dispatch, a module per solver).
- :func:`greedy_k_center`: farthest-point (k-center) coresets (:mod:`.k_center`).
"""

from __future__ import annotations

from .facility_location import FacilityLocationResult, greedy_facility_location
from .k_center import KCenterResult, greedy_k_center

__all__ = ["FacilityLocationResult", "KCenterResult", "greedy_facility_location", "greedy_k_center"]
