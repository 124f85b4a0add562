"""Model states per GPU under each ZeRO stage: weights, gradients and optimizer states of an AdamW run.

Per trainable parameter, as DeepSpeed keeps them: with bf16/fp16, a 16-bit weight (2 bytes), a 16-bit
gradient (2) and an fp32 gradient (4), an fp32 master weight (4) and Adam's two moments (8); in fp32, the
weight (4), its gradient (4) and the moments (8). Stage 1 splits the optimizer states over the GPUs, stage 2
the gradients too, stage 3 the weights too (frozen weights included). DeepSpeed's own estimators
(``estimate_zero2/3_model_states_mem_needs``, which count every parameter as trainable) are reported beside
ours for the trainable parameters: the two agree there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

STAGES = (0, 1, 2, 3)


@dataclass(frozen=True)
class ModelStates:
    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def model_states(trainable: int, frozen_bytes: int, stage: int, gpus: int, mixed: bool) -> ModelStates:
    """Bytes per GPU of ``trainable`` parameters (and ``frozen_bytes`` of frozen weights) under ZeRO ``stage``
    over ``gpus`` GPUs; ``mixed``: bf16/fp16 weights with fp32 masters."""
    weight, grad16, grad32, optim = (2, 2, 4, 12) if mixed else (4, 4, 0, 8)
    split = lambda n, from_stage: n // gpus if stage >= from_stage else n  # noqa: E731
    weights = split(trainable * weight + frozen_bytes, 3)
    gradients = split(trainable * grad16, 2) + split(trainable * grad32, 1)
    return ModelStates(weights, gradients, split(trainable * optim, 1))


def deepspeed_estimates(trainable: int, largest_layer: int, gpus_per_node: int, nodes: int) -> dict[str, int]:
    """DeepSpeed's own GPU-memory estimates of ZeRO-2 and ZeRO-3 model states (no offload) for ``trainable``
    parameters."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the estimators are arithmetic: no accelerator needed
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, zero2 = estimate_zero2_model_states_mem_needs(trainable, gpus_per_node, nodes, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(trainable, largest_layer, gpus_per_node, nodes,
                                                        cpu_offload=False, cpu_offload_params=False)
    return {"zero2": int(zero2), "zero3": int(zero3)}
