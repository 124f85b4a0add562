"""Frames of consecutive videos encoded together in batches of exactly ``batch_size``, the last one padded with
zeros: short videos (and images) fill a batch, and since every batch has the same shape, the kernels that
compute a frame's features are the same whichever frames share its batch. Any split of the videos between
ranks therefore gives bitwise the same features as one process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor

from moviechat.prepare.media import Decoded


@dataclass
class _Waiting:
    video: Decoded
    batched: int = 0  # frames handed to a batch so far
    chunks: list[Tensor] = field(default_factory=list)  # their features, in order

    @property
    def frames(self) -> int:
        return len(self.video.pixels)

    @property
    def encoded(self) -> int:
        return sum(len(c) for c in self.chunks)


class FrameBatches:
    """Videos in, (video, features) out in the same order, each as soon as all its frames are encoded."""

    def __init__(self, encode: Callable[[Tensor], Tensor], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"--batch-size={batch_size} must be >= 1")
        self.encode, self.batch_size = encode, batch_size
        self.waiting: list[_Waiting] = []
        self.unbatched = 0  # frames of waiting videos not in a batch yet

    def add(self, video: Decoded) -> Iterator[tuple[Decoded, Tensor]]:
        self.waiting.append(_Waiting(video))
        self.unbatched += len(video.pixels)
        while self.unbatched >= self.batch_size:
            self._encode_next(self.batch_size)
        yield from self._finished()

    def flush(self) -> Iterator[tuple[Decoded, Tensor]]:
        """The videos still waiting, their last frames encoded in one padded batch."""
        if self.unbatched:
            self._encode_next(self.unbatched)
        yield from self._finished()

    def _encode_next(self, n: int) -> None:
        parts, owners = [], []
        for entry in self.waiting:
            if n == 0:
                break
            k = min(n, entry.frames - entry.batched)
            if k:
                parts.append(entry.video.pixels[entry.batched:entry.batched + k])
                owners.append((entry, k))
                entry.batched += k
                n -= k
        batch = torch.cat(parts)
        real = len(batch)
        if real < self.batch_size:
            batch = torch.cat([batch, batch.new_zeros(self.batch_size - real, *batch.shape[1:])])
        out = self.encode(batch)[:real]
        self.unbatched -= real
        start = 0
        for entry, k in owners:
            entry.chunks.append(out[start:start + k])
            start += k

    def _finished(self) -> Iterator[tuple[Decoded, Tensor]]:
        while self.waiting and self.waiting[0].encoded == self.waiting[0].frames:
            entry = self.waiting.pop(0)
            yield entry.video, torch.cat(entry.chunks)
