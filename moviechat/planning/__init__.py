"""Sizing a run before it starts (``moviechat plan``): the config's model built at full size on fake tensors
(no weight file read), one real training step of it measured (bytes saved for backward by part, the live peak,
FLOPs), model states under each ZeRO stage, and what fits which GPU and how long it takes.

Modules: ``cards`` (GPUs: memory and peak bf16 throughput), ``step_memory`` (what a step keeps alive),
``fake_step`` (the step on fake tensors), ``states`` (weights, gradients, optimizer under ZeRO), ``plan``
(the figures for a card), ``report`` (table and JSON), ``cli``. May import: common ... runs, training.
"""
