"""Batches of similar length, so that a batch padded to its longest sample wastes little of the LLM's work.

A data stream's samples are taken a window at a time (``window`` micro-batches of consecutive samples, after
the shuffle buffer); a window is sorted by length, cut into micro-batches, and its batches are shuffled. The
stream stays a pure function of seed, epoch and stream, so resume by position (kill -9, elastic N -> M) and
the mixture's per-step dataset draw are exact as without grouping; each epoch still yields every sample once.
Only the last window of an epoch can leave a short batch: it is kept last, so every batch the loader cuts
from the stream is one the window made.

A sample's length is its record's token count (tokenized once, in the data worker) or, for a question
sample (tokenized by the collator), its question and answer in characters: an order-preserving stand-in.
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence, TypeVar

S = TypeVar("S")


def sample_length(sample) -> int:
    """What a sample adds to its batch's width."""
    if sample.text is not None:
        return len(sample.text.ids)
    return len(sample.question) + len(sample.answer)


def group_by_length(samples: Iterator[S], batch_size: int, window: int, rng: random.Random,
                    length=sample_length) -> Iterator[S]:
    """``samples`` reordered window by window into batches of similar length (see the module docstring)."""
    size = batch_size * window
    held: list[S] = []
    for sample in samples:
        held.append(sample)
        if len(held) == size:
            yield from _window(held, batch_size, rng, length)
            held = []
    if held:
        yield from _window(held, batch_size, rng, length)


def _window(held: Sequence[S], batch_size: int, rng: random.Random, length) -> Iterator[S]:
    order = sorted(range(len(held)), key=lambda i: (length(held[i]), i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    short = batches.pop() if len(batches[-1]) < batch_size else None
    rng.shuffle(batches)
    for batch in batches + ([short] if short else []):
        for i in batch:
            yield held[i]


def padding_share(batches: Sequence[Sequence[int]]) -> float:
    """The share of token slots that are padding, for batches given as their samples' lengths (each batch
    padded to its longest)."""
    slots = sum(max(b) * len(b) for b in batches if b)
    return 1.0 - sum(map(sum, batches)) / slots if slots else 0.0
