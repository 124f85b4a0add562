"""DeepSpeed checkpoints of a run: trainable parameters, optimizer, scheduler, RNG and data position.

Layout: ``<run>/checkpoints/step00000100/`` (DeepSpeed's files + ``trainer_state_rank{r}.pt``) and
``<run>/checkpoints/latest`` naming the newest. A checkpoint is written under a temporary name and
renamed when every rank has finished, so a crash never leaves a half checkpoint behind ``latest``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from moviechat.common.errors import UserError
from moviechat.common.atomic import disk_full, write_text_atomic
from moviechat.common.distributed import any_rank, barrier
from moviechat.common.safe_load import UnsafeFileError, check_files, load_pt
from moviechat.common.values import excerpt
from moviechat.runs.train_state import STATE_TYPES

PARTIAL = ".partial-"
PORTABLE = "portable.pt"  # rank 0's copy of the trainable state for another process count (moviechat.training.elastic)


class CheckpointNotFound(UserError, FileNotFoundError):
    """A path that names no run folder or checkpoint."""


def tag_of(step: int) -> str:
    return f"step{step:08d}"


@contextlib.contextmanager
def frozen_left_out(module: torch.nn.Module) -> Iterator[None]:
    """Leave every frozen weight out of ``module.state_dict()`` while saving. DeepSpeed's
    ``exclude_frozen_parameters`` misses a tied alias (a frozen LLM's ``lm_head.weight`` tied to its input
    embeddings is not among ``named_parameters()``), which put 113 MB of SmolLM2 into every checkpoint."""
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def drop(_module, state, prefix, _metadata) -> None:
        for name in frozen:
            state.pop(prefix + name, None)

    handle = module.register_state_dict_post_hook(drop)
    try:
        yield
    finally:
        handle.remove()


def step_of(tag: str) -> int:
    return int(tag[len("step"):])


def step_folders(root: Path) -> list[Path]:
    """Complete checkpoints (``stepNNNNNNNN`` folders), oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step") and p.name[4:].isdigit())


def save_checkpoint(engine, root: Path, step: int, state: dict[str, Any], rank: int, keep_last: int,
                    portable: Optional[dict[str, Any]] = None, device: Optional[torch.device] = None) -> Path:
    """Save on every rank (each writes its shard and its own trainer state; rank 0 the ``portable`` state
    of ``moviechat.training.elastic``); returns the folder. A write that fails on any rank (a full disk:
    :class:`~moviechat.common.atomic.DiskFull`) fails on every rank, its partial folder removed and ``latest``
    left on the previous checkpoint, which stays complete."""
    refuse_links(root)
    tag = tag_of(step)
    partial = PARTIAL + tag
    error: Optional[BaseException] = None
    try:
        with frozen_left_out(engine.module):
            engine.save_checkpoint(str(root), tag=partial, client_state={"step": step}, save_latest=False,
                                   exclude_frozen_parameters=True)
        torch.save(state, root / partial / f"trainer_state_rank{rank}.pt")
        if portable is not None:
            torch.save(portable, root / partial / PORTABLE)
    except (OSError, RuntimeError) as e:
        error = disk_full(root / partial, e) or e
    if any_rank(error is not None, device or torch.device("cpu")):
        barrier()
        shutil.rmtree(root / partial, ignore_errors=True)
        raise error or RuntimeError(f"saving {root / tag} failed on another rank; {root / 'latest'} is unchanged")
    barrier()
    if rank == 0:
        final = root / tag
        if final.exists():
            shutil.rmtree(final)
        (root / partial).rename(final)
        try:
            write_text_atomic(root / "latest", tag)
        except OSError as e:
            raise disk_full(root / "latest", e) or e
        prune(root, step, keep_last)
        if not (root / (root / "latest").read_text().strip()).is_dir():
            raise RuntimeError(f"{root / 'latest'} names a checkpoint that does not exist after saving {tag}")
    barrier()
    return root / tag


def prune(root: Path, step: int, keep_last: int) -> None:
    """Keep the checkpoint just written and the ``keep_last - 1`` before it; never touch later steps (a run
    resumed from an earlier checkpoint leaves the checkpoints it rolled back from alone)."""
    older = [p for p in step_folders(root) if step_of(p.name) < step]
    for old in older[: max(len(older) - (keep_last - 1), 0)]:
        shutil.rmtree(old)


def remove_leftovers(root: Path) -> list[str]:
    """Partial checkpoints of a run that was killed while saving; returns their names."""
    names = [p.name for p in root.glob(PARTIAL + "*")] if root.is_dir() else []
    for name in names:
        shutil.rmtree(root / name, ignore_errors=True)
    return names


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """(checkpoints folder, tag) of a run folder, a checkpoints folder or one checkpoint's folder."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        if (root / "latest").is_file():
            refuse_links(root)
            return root, inside(root, (root / "latest").read_text(errors="replace").strip())
    if path.is_dir() and path.name.startswith("step") and any(path.glob("trainer_state_rank*.pt")):
        return path.parent, path.name
    raise CheckpointNotFound(f"no checkpoint at {path} (expected a run folder, its checkpoints/ or a step folder)")


def refuse_links(root: Path) -> None:
    """A run's ``checkpoints/`` folder and its ``latest`` are its own: a link to another run's would load its
    weights and, on resume, prune and write its checkpoints; a linked ``latest`` could print another file."""
    for path in (root, root / "latest"):
        if path.is_symlink():
            raise CheckpointNotFound(f"{path} is a link (to {excerpt(os.readlink(path), 80)}): refused; a run reads "
                                     f"and writes only its own checkpoints")


def inside(root: Path, tag: str) -> str:
    """``tag`` as ``latest`` names it, if it is a step folder of ``root`` itself: a name such as
    ``../../A/checkpoints/step00000004`` or a link that leads out of the run would load (and export into)
    another run's folder."""
    if not (tag.startswith("step") and tag[4:].isdigit()) or not (root / tag).resolve().is_relative_to(root.resolve()):
        raise CheckpointNotFound(f"{root / 'latest'} names {excerpt(tag)}, which is not a checkpoint inside {root}: refused "
                                 f"(it must name a stepNNNNNNNN folder of this run)")
    return tag


def explicit_step(path: str | Path) -> bool:
    """Whether ``--resume`` named one checkpoint's folder (no fallback then) rather than a run."""
    path = Path(path)
    return path.name.startswith("step") and not (path / "latest").is_file() and not (path / "checkpoints").is_dir()


def unreadable(folder: Path, trust: bool = False) -> Optional[str]:
    """Why a checkpoint cannot be loaded (a missing folder or file, a file that torch cannot read), or None.
    Every file is read as ``moviechat.common.safe_load`` reads it: a file that would need code to load raises
    :class:`~moviechat.common.safe_load.UnsafeFileError` (refused outright, never skipped for an earlier one)."""
    if not folder.is_dir():
        return f"{folder} does not exist"
    files = sorted(folder.glob("*.pt"))
    missing = [name for name, pattern in (("the model states (*model_states.pt)", "*model_states.pt"),
                                          ("trainer_state_rank0.pt", "trainer_state_rank0.pt"))
               if not any(folder.glob(pattern))]
    ranks, optim = len(list(folder.glob("trainer_state_rank*.pt"))), len(list(folder.glob("*optim_states.pt")))
    if optim and optim != ranks:
        missing.append(f"optimizer shards ({optim} *optim_states.pt for {ranks} rank(s))")
    if missing:
        return f"{folder} lacks {' and '.join(missing)}"
    for f in files:  # load_pt refuses a file that would run code (UnsafeFileError), before anything loads it
        try:
            load_state(f, trust)
        except UnsafeFileError:
            raise
        except Exception as e:  # noqa: BLE001  (any reason makes it unusable; the message names it)
            return f"{f}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"
    return None


def loadable_checkpoint(path: str | Path, trust: bool = False) -> tuple[Path, str]:
    """The checkpoint to resume from: ``latest`` (or the named step folder), else, for a run, the newest
    earlier one that loads, with a warning naming what failed and why. A file that would run code on load
    stops the resume (:class:`~moviechat.common.safe_load.UnsafeFileError`)."""
    root, tag = resolve_checkpoint(path)
    reason = unreadable(root / tag, trust)
    if reason is None:
        return root, tag
    if explicit_step(path):
        raise RuntimeError(f"cannot resume from {root / tag}: {reason}")
    for folder in reversed([p for p in step_folders(root) if step_of(p.name) < step_of(tag)]):
        if unreadable(folder, trust) is None:
            print(f"warning: checkpoint {root / tag} cannot be loaded ({reason}); resuming from {folder} instead",
                  flush=True)
            return root, folder.name
    raise RuntimeError(f"cannot resume from {root / tag}: {reason}; no earlier checkpoint loads either")


def saved_layout(folder: Path, trust: bool = False):
    """The :class:`~moviechat.runs.train_state.Layout` that wrote a checkpoint; None for checkpoints older than it."""
    return load_state(folder / "trainer_state_rank0.pt", trust).get("layout")


def load_checkpoint(engine, root: Path, tag: str, rank: int, trust: bool = False) -> dict[str, Any]:
    """Restore the engine (module, optimizer, scheduler) and return this rank's trainer state."""
    state_file = root / tag / f"trainer_state_rank{rank}.pt"
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file} missing: was the checkpoint written by a run with as many ranks?")
    check_state_files(sorted((root / tag).glob("*.pt")), trust)  # DeepSpeed reads them with weights_only=False
    load_path, _ = engine.load_checkpoint(str(root), tag=tag, load_module_strict=False, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load {root / tag}")
    return load_state(state_file, trust)


def load_state(path: Path, trust: bool = False) -> Any:
    """A file of one of our checkpoints, read without running code (tensors, containers and the train state)."""
    return load_pt(path, trust, allow=STATE_TYPES)


def check_state_files(files: list[Path], trust: bool = False) -> None:
    """Refuse any of a checkpoint's files that would need more than plain data to load (before DeepSpeed reads
    them with ``weights_only=False``)."""
    check_files(files, trust, allow=STATE_TYPES)
