"""The plain data a checkpoint records besides weights: where the data streams stood and how the run was laid
out. Kept free of imports; loading a checkpoint allows exactly these types (``STATE_TYPES``, ``moviechat.common.safe_load``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StreamState:
    """Where one dataset's data streams stand on this rank."""

    epoch: int = 0
    positions: dict[int, int] = field(default_factory=dict)  # data stream -> samples consumed this epoch
    skipped: dict[int, int] = field(default_factory=dict)  # data stream -> samples skipped this epoch (on_error=skip)
    skipped_before: int = 0  # samples skipped in earlier epochs (this rank)


@dataclass
class TrainState:
    """Everything besides the engine that a resumed run needs to continue exactly."""

    step: int = 0
    data: dict[str, StreamState] = field(default_factory=dict)  # per dataset (one, or each of a mixture)
    samples: dict[str, int] = field(default_factory=dict)  # per dataset: training samples read on this rank

    def stream(self, name: str) -> StreamState:
        return self.data.setdefault(name, StreamState())


def upgrade(state, name: str) -> TrainState:
    """A train state as this version writes it; one of a checkpoint from before mixtures (a single dataset's
    ``epoch`` / ``positions`` / ``skipped`` on the state itself) is read as dataset ``name``'s."""
    fields = vars(state)
    if "data" in fields:
        fields.setdefault("samples", {})
        return state
    stream = StreamState(fields.get("epoch", 0), fields.get("positions", {}), fields.get("skipped", {}),
                         fields.get("skipped_before", 0))
    return TrainState(fields.get("step", 0), {name: stream})


@dataclass(frozen=True)
class Layout:
    """How a run reads its data and batches its steps."""

    processes: int
    workers: int
    global_batch: int

    @property
    def streams(self) -> int:
        return self.processes * self.workers


STATE_TYPES = (TrainState, StreamState, Layout)  # what safe loading allows in a checkpoint besides tensors
