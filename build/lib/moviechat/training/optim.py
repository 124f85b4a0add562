"""Optimizer and learning-rate schedule of a run, as the original recipe (LAVIS / Video-LLaMA runner) sets them."""

from __future__ import annotations

import math

import torch
from torch import nn

from moviechat.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: with weight decay, and without it for parameters with
    ``ndim < 2`` and names with ``bias``, ``ln`` or ``bn`` (biases, norms, embeddings' scalars), as
    the LAVIS runner does."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bias" in name or "ln" in name or "bn" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over the trainable parameters (a torch object: no fused-op build on CPU)."""
    groups = [g for g in parameter_groups(model, cfg.weight_decay) if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def describe_groups(optimizer: torch.optim.Optimizer) -> str:
    return "; ".join(f"{g.get('name', i)}: {sum(p.numel() for p in g['params']):,} parameters, "
                     f"weight decay {g['weight_decay']}" for i, g in enumerate(optimizer.param_groups))


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up from ``warmup_start_ratio`` (the LAVIS runner's warmup_lr / init_lr), then constant or
    cosine down to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.warmup_start_ratio + (1 - cfg.warmup_start_ratio) * (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
