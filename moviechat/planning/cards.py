"""GPUs a plan can be sized for: memory and dense peak bf16 tensor throughput (fp16 on V100, which has no bf16),
from the vendors' data sheets. ``--gpu-memory`` and ``--gpu-tflops`` size any other card."""

from __future__ import annotations

from dataclasses import dataclass

from moviechat.common.errors import UserError


@dataclass(frozen=True)
class Card:
    name: str
    memory_gib: float
    tflops: float  # dense peak, bf16 (V100: fp16), without sparsity


CARDS = {c.name: c for c in (
    Card("v100-16g", 16, 125), Card("v100-32g", 32, 125),
    Card("a100-40g", 40, 312), Card("a100-80g", 80, 312),
    Card("l40s", 48, 362), Card("4090", 24, 165.2),
    Card("h100", 80, 989), Card("h200", 141, 989),
)}
ALIASES = {"a100": "a100-80g", "v100": "v100-32g", "rtx4090": "4090", "h100-80g": "h100", "h200-141g": "h200"}


class PlanError(UserError):
    """A plan that cannot be made as asked (an unknown card, a size that cannot run)."""


def parse_gib(text: str) -> float:
    """``80GB``, ``80G``, ``80GiB`` or ``80`` -> 80.0 (GiB)."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b").removesuffix("g").strip()
    try:
        gib = float(value)
    except ValueError:
        raise PlanError(f"--gpu-memory={text!r}: give the card's memory in GB, e.g. 80GB") from None
    if not 0 < gib < 10_000:
        raise PlanError(f"--gpu-memory={text!r} must be a positive size in GB")
    return gib


def find_card(name: str | None, memory: str | None = None, tflops: float | None = None) -> Card:
    """The card named (or a custom one from ``memory``/``tflops``); an unknown name lists the known ones."""
    if name is None and memory is None:
        name = "a100-80g"
    if name is not None:
        key = ALIASES.get(name.lower(), name.lower())
        if key not in CARDS:
            raise PlanError(f"--gpu {name!r} is not a known card; known: {', '.join(CARDS)} "
                            "(or give --gpu-memory and --gpu-tflops)")
        card = CARDS[key]
        return Card(card.name, parse_gib(memory) if memory else card.memory_gib, tflops or card.tflops)
    if tflops is None:
        raise PlanError("--gpu-memory without --gpu: give --gpu-tflops too (the card's dense bf16 peak)")
    return Card(f"custom-{memory}", parse_gib(memory), tflops)
