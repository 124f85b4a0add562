"""How a training step sees a video (``memory.train_mode``); answering always reads the streaming memory.

* ``simulate``: the memory exactly as it runs at inference, gradients through its weighted sums (the default).
* ``uniform``: MovieChat's training-free recipe. Video-LLaMA was trained on a few frames sampled uniformly and
  the memory was added only at inference; here the step sees as many frames as the memory would hold, spread
  evenly over what the memory has seen (the whole video, or up to the breakpoint), never merged.
* ``detached``: the memory as at inference, but a slot made by merging frames passes no gradient back to its
  frames (MA-LMM keeps its memory bank out of the backward pass). Frames that stand alone in a slot still do.
  Where the frame tokens carry no gradient (precomputed frame tokens, or a frozen image path: MovieChat's
  default) it trains exactly as ``simulate``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from moviechat.memory.planner import MemoryPlan, apply_plan


def uniform_plan(plan: MemoryPlan, num_frames: int, t: Optional[int]) -> MemoryPlan:
    """``plan.num_slots`` frames spread evenly over frames ``[0, t]`` (``[0, num_frames)`` when global), one per
    slot with weight 1, read with the same position table (fewer slots when fewer frames were seen)."""
    last = num_frames - 1 if t is None else int(t)
    frames = np.unique(np.linspace(0, last, plan.num_slots).round().astype(np.int64))
    n, dev = len(frames), plan.frame.device
    return MemoryPlan(torch.from_numpy(frames).to(dev), torch.arange(n, device=dev),
                      torch.ones(n, dtype=torch.float64, device=dev), n, n, plan.n_position)


def merged_entries(plan: MemoryPlan) -> Tensor:
    """Per entry of a plan: whether its slot holds more than one source frame (was made by merging)."""
    sources = torch.bincount(plan.slot, minlength=plan.num_slots)
    return sources[plan.slot] > 1


def _part(plan: MemoryPlan, keep: Tensor) -> MemoryPlan:
    return MemoryPlan(plan.frame[keep], plan.slot[keep], plan.weight[keep], plan.num_slots, plan.num_long,
                      plan.n_position)


def apply_detached(tokens: Tensor, plan: MemoryPlan) -> Tensor:
    """:func:`apply_plan`, with merged slots computed from ``tokens.detach()``: equal values, no gradient
    through a merge."""
    merged = merged_entries(plan)
    if not tokens.requires_grad or not bool(merged.any()):
        return apply_plan(tokens, plan)
    return apply_plan(tokens.detach(), _part(plan, merged)) + apply_plan(tokens, _part(plan, ~merged))


def training_memories(tokens: list[Tensor], plans: list[MemoryPlan], times: list[Optional[int]],
                      train_mode: str) -> tuple[list[Tensor], list[int]]:
    """Each sample's memory as ``train_mode`` trains on it, and the n of its position table."""
    if train_mode == "uniform":
        plans = [uniform_plan(p, v.shape[0], t) for v, p, t in zip(tokens, plans, times)]
    apply = apply_detached if train_mode == "detached" else apply_plan
    return [apply(v, p) for v, p in zip(tokens, plans)], [p.n_position for p in plans]
