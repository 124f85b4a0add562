"""The plain data a checkpoint records besides weights: where the data stream stood and how the run was laid
out. Kept free of imports so that loading a checkpoint can allow exactly these types (``moviechat.safe_load``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainState:
    """Everything besides the engine that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    positions: dict[int, int] = field(default_factory=dict)  # data stream -> samples consumed this epoch
    skipped: dict[int, int] = field(default_factory=dict)  # data stream -> samples skipped this epoch (on_error=skip)
    skipped_before: int = 0  # samples skipped in earlier epochs (this rank)


@dataclass(frozen=True)
class Layout:
    """How a run reads its data and batches its steps."""

    processes: int
    workers: int
    global_batch: int

    @property
    def streams(self) -> int:
        return self.processes * self.workers
