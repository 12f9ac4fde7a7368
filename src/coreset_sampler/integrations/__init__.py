"""Framework integrations, each in its own module and imported only when used:
:mod:`coreset_sampler.integrations.lightning` (PyTorch Lightning)."""
