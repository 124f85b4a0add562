"""Atomic writes: a reader never sees half a file, and a crash never leaves one under the real name.

Everything the framework writes for later reading (configs, checkpoints' side files, exports, shards,
cached frame tokens, the generated data set) goes through :func:`atomic_path`: write to a temporary
name in the same folder, flush to disk, then rename over the target. Where several processes may create the
same thing (a study, a converted model), :func:`held_lock` lets one check and create it while the others wait.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from moviechat.common.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed.

    The temporary file is created by the caller with ordinary ``open`` semantics, so it gets the umask's
    mode (not the 0600 of ``mkstemp``). A folder works too, when ``path`` does not exist yet.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, e) from None
        if e.errno is not None and e.filename is None:
            raise OSError(e.errno, f"{e.strerror} (writing {path})") from e
        raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def held_lock(lock_path: str | os.PathLike, wait: bool = True, remove: bool = False) -> Iterator[IO[str]]:
    """Hold an exclusive lock on ``lock_path`` (created with its folder) and yield it open for appending: the one
    file lock of the package. ``wait=False`` raises ``BlockingIOError`` while another process holds it;
    ``remove`` deletes the file at the end, while still held (a process waiting on it then opens it anew)."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = _acquire(lock_path, wait)
    try:
        yield lock
    finally:
        if remove:
            lock_path.unlink(missing_ok=True)
        lock.close()  # closing the file releases the lock


def _acquire(path: Path, wait: bool) -> IO[str]:
    """``path`` open and locked; one that its holder removed between our open and our lock is opened again."""
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.close()
            raise
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


class OutputBusy(UserError, RuntimeError):
    """Another process is writing the same output (a predictions file, a scoring folder, a judge cache)."""


@contextlib.contextmanager
def exclusive(out: Path, flag: str = "--out") -> Iterator[None]:
    """Hold ``<out>.lock`` for the whole run (removed at exit): a second process on the same output is refused,
    saying which process holds it."""
    lock = out.with_name(out.name + ".lock")
    held = contextlib.ExitStack()
    try:
        f = held.enter_context(held_lock(lock, wait=False, remove=True))
    except BlockingIOError:
        try:
            holder = lock.read_text(errors="replace").strip()[:40] or "pid unknown"
        except OSError:
            holder = "pid unknown"
        raise OutputBusy(f"{out} is being written by another process ({holder}); "
                         f"wait for it or give another {flag}") from None
    with held:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class DiskFull(UserError):
    """A write that failed because its file system is full; names the path and the space left."""


def disk_full(path: str | os.PathLike, error: BaseException, then: str = "then resume the run") -> Optional[DiskFull]:
    """A :class:`DiskFull` when ``error`` (an ``OSError``, or torch's ``RuntimeError`` of a failed zip write,
    which does not say why) came from a full file system, else None."""
    full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not full and isinstance(error, (OSError, RuntimeError)):
        full = not _room_for_a_mib(Path(path))
    if not full:
        return None
    free = shutil.disk_usage(_existing(Path(path))).free
    return DiskFull(f"no space left on the device writing {path} ({free / 2**20:.1f} MiB free there): free space, "
                    f"{then}")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def _room_for_a_mib(path: Path) -> bool:
    probe = _existing(path) / f".space-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 2**20)
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError as e:
        return e.errno not in (errno.ENOSPC, errno.EDQUOT)
    finally:
        probe.unlink(missing_ok=True)
