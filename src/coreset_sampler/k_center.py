"""Kept so that imports from before 0.2 keep working: the kernel is in
:mod:`coreset_sampler.kernels.k_center`."""

from __future__ import annotations

from coreset_sampler.kernels.k_center import KCenterResult, greedy_k_center

__all__ = ["KCenterResult", "greedy_k_center"]
