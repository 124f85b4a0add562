"""Where a breakpoint question is asked, in one place: ``ours`` (at ``time / fps`` seconds, its own frame
as the current frame) or ``moviechat`` (MovieChat's evaluation script: the fragment
``int(time / (num_frame / fragments))``, and the frame 1 s in as the current frame of every question, its
``cap.set(POS_FRAMES, fps)``). Both are recorded with every prediction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moviechat.data.sampling import frame_at
from moviechat.common.errors import DataError

CONVENTIONS = ("ours", "moviechat")
MOVIECHAT_EVAL_FRAGMENTS = 128  # N_SAMPLES of MovieChat's eval_code/result_prepare/run_inference_qa_moviechat.py


def moviechat_breakpoint_seconds(frame: float, num_frame: int, duration: float, fragments: int) -> float:
    """Where MovieChat's evaluation script puts a breakpoint: its fragment is ``int(time / (num_frame /
    fragments))`` (``cal_frame_middle``) and the memory holds the fragments before it; here, the start of
    that fragment in the decoded video. Equal to ``time / fps`` only when ``num_frame / fps`` is the decoded
    duration."""
    k = int(frame / (num_frame / fragments))
    return k * duration / fragments


@dataclass(frozen=True)
class BreakpointConvention:
    """``where``: where a breakpoint falls; ``current_frame``: which frame a breakpoint question sees as now."""

    where: str = "ours"
    current_frame: str = "ours"

    def __post_init__(self) -> None:
        for name in ("where", "current_frame"):
            if getattr(self, name) not in CONVENTIONS:
                raise ValueError(f"breakpoint convention {name}={getattr(self, name)!r} must be one of {CONVENTIONS}")

    def seconds(self, row: dict, stamps: list[float], meta: dict, fragments: Optional[int]) -> Optional[float]:
        """The breakpoint time (seconds in the decoded video) a question row is asked at; None: global."""
        if row.get("time") is None or self.where == "ours":
            return row.get("time")
        if row.get("frame_index") is None or not row.get("num_frame"):
            raise DataError(f"video {row['video']!r}: --breakpoint-convention moviechat needs each breakpoint's frame "
                            f"index and info.num_frame: ask with --annotations")
        duration = float(meta.get("duration") or (stamps[-1] if stamps else 0.0))
        return moviechat_breakpoint_seconds(float(row["frame_index"]), int(row["num_frame"]), duration,
                                            fragments or MOVIECHAT_EVAL_FRAGMENTS)

    def one_second(self, stamps: list[float], key: str) -> Optional[int]:
        """MovieChat's current frame (1 s in) for every breakpoint of a video; None: each question's own."""
        return frame_at(1.0, stamps, key, key) if self.current_frame == "moviechat" else None

    def record(self) -> dict[str, str]:
        """What every prediction records of the convention."""
        return {"breakpoint_convention": self.where, "current_frame": self.current_frame}
