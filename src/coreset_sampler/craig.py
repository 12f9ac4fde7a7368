"""Kept so that imports from before 0.2 keep working: the sampler is in
:mod:`coreset_sampler.samplers.craig`."""

from __future__ import annotations

from coreset_sampler.samplers.craig import CraigBatchSampler

__all__ = ["CraigBatchSampler"]
