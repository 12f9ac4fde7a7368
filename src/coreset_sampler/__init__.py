"""coreset_sampler: CREST mini-batch coresets for any PyTorch training loop."""

from __future__ import annotations

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
]
