"""Training batches of a run: from its one dataset, or from a mixture where each step's batch comes from one
dataset drawn by ratio (as LAVIS's runner mixes its loaders), epoch after epoch, resumable exactly.

The draw of a step is a function of the run seed and the step alone: every rank and every micro-batch of a
step read the same dataset, a resumed run draws what the first one would have, and a run resumed on another
number of processes too. Each dataset keeps its own data streams and epochs in :class:`TrainState`.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Sequence

from torch.utils.data import DataLoader

from moviechat.common.errors import DataError
from moviechat.runs.train_state import TrainState


def mixture_draw(seed: int, step: int, names: Sequence[str], ratios: Sequence[float]) -> str:
    """The dataset of optimizer step ``step`` (0-based)."""
    if len(names) == 1:
        return names[0]
    return random.Random(f"mixture:{seed}:{step}").choices(list(names), weights=list(ratios))[0]


class TrainBatches:
    """Batches for the step ``state.step`` is at; ``make_loader(part)`` builds a part's training DataLoader."""

    def __init__(self, parts: Sequence, state: TrainState, make_loader: Callable[[Any], DataLoader], seed: int,
                 rank: int):
        self.parts = {p.name: p for p in parts}
        self.names, self.ratios = [p.name for p in parts], [p.ratio for p in parts]
        self.state, self.make_loader, self.seed, self.rank = state, make_loader, seed, rank
        self.iters: dict[str, Iterator[dict[str, Any]]] = {}
        self.truncated = 0  # conversations cut at data.max_tokens (this rank)

    def next(self) -> dict[str, Any]:
        name = mixture_draw(self.seed, self.state.step, self.names, self.ratios)
        if name not in self.iters:
            self.iters[name] = self._epochs(self.parts[name])
        batch = next(self.iters[name])
        self.state.samples[name] = self.state.samples.get(name, 0) + len(batch["frames"])
        cut = sum(batch.get("truncated", []))
        if cut and not self.truncated:
            print(f"[rank {self.rank}] {name}: a conversation longer than data.max_tokens was truncated (its later "
                  f"turns are not learned); the count is reported at the end", flush=True)
        self.truncated += cut
        return batch

    def _epochs(self, part) -> Iterator[dict[str, Any]]:
        """One dataset's batches forever, from where its stream state says this rank stopped."""
        while True:
            stream = self.state.stream(part.name)
            part.train.set_epoch(stream.epoch)
            part.train.set_resume(stream.positions)
            produced = False
            for batch in self.make_loader(part):
                produced = True
                for (index_stream, index), skipped in zip(batch["positions"], batch["skipped"]):
                    stream.positions[index_stream] = max(stream.positions.get(index_stream, 0), index + 1)
                    stream.skipped[index_stream] = max(stream.skipped.get(index_stream, 0), skipped)
                yield batch
            if not produced and not stream.positions:
                raise DataError(f"rank {self.rank} has no training samples of {part.name} (fewer shards/files than "
                                f"ranks x workers?)")
            self._report(part, stream, f"epoch {stream.epoch}")
            stream.skipped_before += sum(stream.skipped.values())
            stream.epoch += 1
            stream.positions, stream.skipped = {}, {}

    def _report(self, part, stream, when: str) -> None:
        count = sum(stream.skipped.values())
        if count:
            print(f"[rank {self.rank}] {part.name} {when}: {count} training sample(s) skipped this epoch "
                  f"(data.on_error=skip); reasons: {dict(part.train.skips.counts) or 'see worker logs'}")

    def report_total(self) -> None:
        """What data.on_error=skip left out, per dataset, and what was truncated, over the whole run (this rank)."""
        if self.truncated:
            print(f"[rank {self.rank}] {self.truncated} training conversation(s) truncated at data.max_tokens")
        for name, part in self.parts.items():
            stream = self.state.stream(name)
            samples, setup = stream.skipped_before + sum(stream.skipped.values()), part.source.skips
            if samples or setup.total:
                print(f"[rank {self.rank}] {name}: skipped in all (data.on_error=skip): {samples} training sample(s); "
                      f"at set-up: {dict(setup.counts) or 'nothing'}")
