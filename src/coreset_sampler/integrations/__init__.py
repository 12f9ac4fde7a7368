"""Framework integrations, each in its own module and imported only when used:
:mod:`coreset_sampler.integrations.lightning` (PyTorch Lightning),
:mod:`coreset_sampler.integrations.checkpoint` (every rank's sampler state in a checkpoint that
one process writes: Accelerate, Hugging Face ``Trainer``, plain ``torch.save``) and
:mod:`coreset_sampler.integrations.transformers` (Hugging Face ``Trainer``)."""
