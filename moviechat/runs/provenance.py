"""Where a prediction's model comes from, recorded with every prediction and gathered by scoring into its
summary: the run (or export / checkpoint file) it was loaded from, the checkpoint step, a hash of the config
that built it, and the memory preset it streamed with."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Optional

from moviechat.config import Config
from moviechat.config.schema import as_dict

# what a prediction records of its model and settings; scoring refuses a file that mixes values of any of them
FIELDS = ("run", "step", "config_hash", "memory_preset", "sampling", "generation", "breakpoint_convention",
          "current_frame")


def config_hash(cfg: Config) -> str:
    """12 hex digits over every setting of the config except the run's name and folder (which do not change
    the model)."""
    data = as_dict(cfg)
    data["run"] = {k: v for k, v in data.get("run", {}).items() if k not in ("name", "output_dir")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def step_of(checkpoint: Optional[Path]) -> Optional[int]:
    """The training step of a ``stepNNNNNNNN`` checkpoint folder (None for anything else)."""
    match = re.fullmatch(r"step(\d+)", checkpoint.name) if checkpoint is not None else None
    return int(match.group(1)) if match else None


def source_of(cfg: Config, loaded_from: Path, checkpoint: Optional[Path] = None) -> dict[str, Any]:
    """``run``, ``step`` and ``config_hash`` of a model loaded from ``loaded_from`` (its run folder when
    ``checkpoint`` is one of the run's checkpoints)."""
    run = checkpoint.parent.parent if step_of(checkpoint) is not None else loaded_from
    return {"run": str(Path(run).resolve()), "step": step_of(checkpoint), "config_hash": config_hash(cfg)}


def training_folder(run_dir: str | Path, output_dir: str) -> Optional[Path]:
    """The working folder ``moviechat train`` ran in, read back from where its run folder is: a run's relative
    paths (``run.output_dir``, ``data.annotations``, a generated set's folder) are relative to it, not to
    wherever a later command runs. None where it cannot be told (``output_dir`` absolute or going up)."""
    parts = Path(output_dir).parts
    parent = Path(run_dir).resolve().parent
    if Path(output_dir).is_absolute() or ".." in parts or not parts or parts == (".",):
        return parent if parts in ((), (".",)) else None
    if parent.parts[-len(parts):] != parts:
        return None
    return parent.parents[len(parts) - 1]
