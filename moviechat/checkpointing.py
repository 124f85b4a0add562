"""DeepSpeed checkpoints of a run: trainable parameters, optimizer, scheduler, RNG and data position.

Layout: ``<run>/checkpoints/step00000100/`` (DeepSpeed's files + ``trainer_state_rank{r}.pt``) and
``<run>/checkpoints/latest`` naming the newest. A checkpoint is written under a temporary name and
renamed when every rank has finished, so a crash never leaves a half checkpoint behind ``latest``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from moviechat.atomic import write_text_atomic
from moviechat.distributed import barrier

PARTIAL = ".partial-"


def tag_of(step: int) -> str:
    return f"step{step:08d}"


def save_checkpoint(engine, root: Path, step: int, state: dict[str, Any], rank: int, keep_last: int) -> Path:
    """Save on every rank (each writes its shard and its own trainer state); returns the folder."""
    tag = tag_of(step)
    partial = PARTIAL + tag
    engine.save_checkpoint(str(root), tag=partial, client_state={"step": step}, save_latest=False,
                           exclude_frozen_parameters=True)
    torch.save(state, root / partial / f"trainer_state_rank{rank}.pt")
    barrier()
    if rank == 0:
        final = root / tag
        if final.exists():
            shutil.rmtree(final)
        (root / partial).rename(final)
        write_text_atomic(root / "latest", tag)
        for old in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step"))[:-keep_last]:
            shutil.rmtree(old)
    barrier()
    return root / tag


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """(checkpoints folder, tag) of a run folder, a checkpoints folder or one checkpoint's folder."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        if (root / "latest").is_file():
            return root, (root / "latest").read_text().strip()
    if path.is_dir() and path.name.startswith("step") and any(path.glob("trainer_state_rank*.pt")):
        return path.parent, path.name
    raise FileNotFoundError(f"no checkpoint at {path} (expected a run folder, its checkpoints/ or a step folder)")


def load_checkpoint(engine, root: Path, tag: str, rank: int) -> dict[str, Any]:
    """Restore the engine (module, optimizer, scheduler) and return this rank's trainer state."""
    state_file = root / tag / f"trainer_state_rank{rank}.pt"
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file} missing: was the checkpoint written by a run with as many ranks?")
    load_path, _ = engine.load_checkpoint(str(root), tag=tag, load_module_strict=False, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load {root / tag}")
    return torch.load(state_file, map_location="cpu", weights_only=False)  # our own file: RNG states
