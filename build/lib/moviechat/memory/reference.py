"""A plain, per-frame reference of the streaming memory, written straight from the definition
(docs/architecture.md, "Streaming memory").

Every item carries the frames it was made from with their weights, so tests can compare which source
frames each memory slot covers as well as its values. Slow on purpose: full similarity recomputation
after every merge, as the original MovieChat code does.
"""

from __future__ import annotations

import math

import torch

from moviechat.memory.config import MemoryConfig


class Item:
    """A memory frame and, unless ``track`` is off (for timing), the source frames and weights it averages."""

    def __init__(self, value: torch.Tensor, sources: dict[int, float] | None) -> None:
        self.value = value
        self.sources = sources

    @staticmethod
    def frame(tokens: torch.Tensor, i: int, track: bool = True) -> "Item":
        return Item(tokens[i], {i: 1.0} if track else None)

    def average(self, other: "Item") -> "Item":
        if self.sources is None:
            return Item((self.value + other.value) / 2, None)
        sources = {k: w / 2 for k, w in self.sources.items()}
        for k, w in other.sources.items():
            sources[k] = sources.get(k, 0.0) + w / 2
        return Item((self.value + other.value) / 2, sources)


def similarity(a: torch.Tensor, b: torch.Tensor, exact: bool = True) -> float:
    """mean(F_i @ F_j.T): the mean of all Q x Q token dot products (float64 when exact, so ties are exact)."""
    if exact:
        a, b = a.double(), b.double()
    return float((a @ b.T).mean())


def ref_consolidate(items: list[Item], merge_to: int, exact: bool = True) -> list[Item]:
    items = list(items)
    while len(items) > merge_to:
        sims = [similarity(items[i].value, items[i + 1].value, exact) for i in range(len(items) - 1)]
        best = max(range(len(sims)), key=lambda i: (sims[i], -i))  # highest; ties -> lowest index
        items[best : best + 2] = [items[best].average(items[best + 1])]
    return items


def ref_memory(
    tokens: torch.Tensor, cfg: MemoryConfig, mode: str = "global", t: int | None = None, exact: bool = True
) -> list[Item]:
    """The memory as a list of items; ``exact=False`` is the original's fp32 loop without bookkeeping."""
    k, f = cfg.short_memory_length, cfg.fragment
    end = tokens.shape[0] if mode == "global" else (t // f) * f
    buffer: list[Item] = []
    long: list[Item] = []
    in_fragment = 0
    for i in range(end):
        if len(buffer) == k:
            buffer.pop(0)
        buffer.append(Item.frame(tokens, i, track=exact))
        in_fragment += 1
        if in_fragment == f or i == end - 1:
            long += ref_consolidate(buffer, cfg.short_memory_merge, exact)
            buffer, in_fragment = [], 0
            if len(long) > cfg.long_memory_length:
                if cfg.long_memory_policy == "fifo":
                    long = long[-cfg.long_memory_length :]
                else:
                    long = ref_consolidate(long, cfg.long_memory_length, exact)
    if mode == "global":
        return long
    start = (t // f) * f
    short = [Item.frame(tokens, i, track=exact) for i in range(max(start, t - k), t)]
    while len(long) + len(short) + 1 > cfg.capacity:
        if short:
            short.pop(0)
        else:
            long.pop(0)
    return long + short + [Item.frame(tokens, t, track=exact)]


def ref_released_memory(tokens: torch.Tensor, cfg: MemoryConfig, mode: str = "global", t: int | None = None) -> list[Item]:
    """The memory of MovieChat's released inference (``original``) and of MovieChat+ (``moviechat_plus``),
    written as their code runs: per fragment, an empty FIFO of K loads the fragment's first 16 frames (all
    of them for a breakpoint's last processed fragment), its copy is the short-term part, and it is merged
    to m (MovieChat+: 1 for more than 4 frames, else 3) and appended to a long-term memory that is never
    merged back. A breakpoint processes the fragments before t's (at least the first) and reads long-term +
    the copy + frame t, truncated to the n x n table (MovieChat+: n = ceil(sqrt(long-term)), at most 32)."""
    f, k, total = cfg.fragment, cfg.short_memory_length, tokens.shape[0]
    n_fragments = -(-total // f) if mode == "global" else max(t // f, 1)
    plus = cfg.preset == "moviechat_plus"
    long: list[Item] = []
    copy: list[Item] = []
    for j in range(n_fragments):
        frames = list(range(j * f, min((j + 1) * f, total)))
        n_frame = len(frames) if mode == "breakpoint" and j == n_fragments - 1 else 16
        buffer: list[Item] = []
        for i, index in enumerate(frames):
            if i < n_frame:
                if len(buffer) == k:
                    buffer.pop(0)
                buffer.append(Item.frame(tokens, index))
        copy = list(buffer)
        merge_to = (1 if len(frames) > 4 else 3) if plus else cfg.short_memory_merge
        long += ref_consolidate(buffer, merge_to)
    n = min(max(math.ceil(math.sqrt(len(long))), 1), 32) if plus else cfg.n_position
    if mode == "global":
        return long[max(0, len(long) - n * n):] if plus else long
    while len(long) + len(copy) + 1 > n * n:
        if copy:
            copy.pop(0)
        else:
            long.pop(0)
    return long + copy + [Item.frame(tokens, t)]
