"""Kept so that imports from before 0.2 keep working: the kernel is in
:mod:`coreset_sampler.kernels.facility_location`."""

from __future__ import annotations

from coreset_sampler.kernels.facility_location import (
    FacilityLocationResult,
    greedy_facility_location,
)

__all__ = ["FacilityLocationResult", "greedy_facility_location"]
