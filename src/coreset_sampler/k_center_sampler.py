"""Kept so that imports from before 0.2 keep working: the sampler is in
:mod:`coreset_sampler.samplers.k_center`."""

from __future__ import annotations

from coreset_sampler.samplers.k_center import KCenterBatchSampler

__all__ = ["KCenterBatchSampler"]
