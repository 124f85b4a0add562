"""The ``--model_args`` of ``moviechat_ft``, typed and checked: an unknown key or an impossible value is one line
naming it. Defaults: MovieChat's MovieChat-1K inference sampling (128 fragments x 8 frames spread over the video),
greedy decoding, our breakpoint conventions (``moviechat answer``'s)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from moviechat.answering.answerer import GENERATIONS
from moviechat.answering.breakpoints import CONVENTIONS
from moviechat.answering.cli import MOVIECHAT_FRAGMENT_FRAMES, MOVIECHAT_FRAGMENTS
from moviechat.common.errors import UserError
from moviechat.common.values import finite_number, parse_bool
from moviechat.memory.config import PRESETS
from moviechat.text.prompt import MAX_NEW_TOKENS

SAMPLINGS = ("moviechat", "fps", "all")


class ModelArgsError(UserError, ValueError):
    """A ``--model_args`` key or value moviechat_ft cannot use."""


@dataclass(frozen=True)
class PluginSettings:
    pretrained: str  # a run folder or checkpoint, an ``hf`` export folder, or an original MovieChat .pth (+ config)
    config: Optional[str] = None  # with a .pth: the config (path or shipped name) whose model it loads into
    sampling: str = "moviechat"  # moviechat | fps | all; fps= or num_frames= choose for themselves
    fps: Optional[float] = None
    num_frames: Optional[int] = None
    preset: Optional[str] = None  # memory.preset instead of the run's
    generation: str = "greedy"  # greedy | moviechat (the paper's sampling)
    batch_size: int = 16  # questions generated together
    max_new_tokens: int = MAX_NEW_TOKENS
    token_cache: Optional[str] = None  # a folder keeping each video's frame tokens for later runs
    breakpoint_convention: str = "ours"
    current_frame: str = "ours"
    trust_checkpoint: bool = False
    device: Optional[str] = None  # default: cuda:<LOCAL_RANK> when a GPU is there, else cpu

    def __post_init__(self) -> None:
        try:  # lmms-eval turns only true/false into booleans: trust_checkpoint=no arrives as the text "no"
            object.__setattr__(self, "trust_checkpoint", parse_bool(self.trust_checkpoint, "--model_args trust_checkpoint"))
        except ValueError as e:
            raise ModelArgsError(str(e)) from None
        for key, value, allowed in (("sampling", self.sampling, SAMPLINGS), ("generation", self.generation, GENERATIONS),
                                    ("preset", self.preset, PRESETS + (None,)),
                                    ("breakpoint_convention", self.breakpoint_convention, CONVENTIONS),
                                    ("current_frame", self.current_frame, CONVENTIONS)):
            if value not in allowed:
                raise ModelArgsError(f"--model_args {key}={value!r} must be one of {[a for a in allowed if a]}")
        for key in ("batch_size", "max_new_tokens", "num_frames"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ModelArgsError(f"--model_args {key}={value!r} must be an integer >= 1")
        if self.fps is not None and not (finite_number(self.fps) and self.fps > 0):
            raise ModelArgsError(f"--model_args fps={self.fps!r} must be a finite number > 0")
        if self.fps is not None and self.num_frames is not None:
            raise ModelArgsError("--model_args: give fps= or num_frames=, not both")
        if str(self.pretrained).endswith(".pth") and not self.config:
            raise ModelArgsError(f"--model_args pretrained={self.pretrained}: an original MovieChat .pth needs "
                                 f"config=<experiment config> naming the model it loads into")

    @classmethod
    def of(cls, args: dict[str, Any]) -> "PluginSettings":
        """Settings from parsed ``--model_args`` (lmms-eval turns numbers and true/false into values)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ModelArgsError(f"--model_args: unknown key(s) {', '.join(unknown)} (moviechat_ft takes "
                                 f"{', '.join(sorted(known))})")
        if "pretrained" not in args:
            raise ModelArgsError("--model_args pretrained=<run folder | hf export | MovieChat .pth> is required")
        return cls(**{k: (str(v) if k in ("pretrained", "config", "token_cache") else v) for k, v in args.items()})

    def decoding(self) -> tuple[Optional[float], Optional[int]]:
        """(fps, num_frames) to decode each video with."""
        if self.fps is not None or self.num_frames is not None:
            return (float(self.fps) if self.fps is not None else None), self.num_frames
        if self.sampling == "fps":
            return 1.0, None
        return (None, MOVIECHAT_FRAGMENTS * MOVIECHAT_FRAGMENT_FRAMES) if self.sampling == "moviechat" else (None, None)

    def cache_folder(self) -> Optional[Path]:
        return Path(self.token_cache) if self.token_cache else None
