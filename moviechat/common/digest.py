"""Content digests of files: every byte (xxh3-128, several GB/s), computed once per version of a file in a
process. Caches keyed by them never serve stale entries for a file rewritten in place, whatever its size and
times say (docs/benchmarks.md: the digest's cost against reading the file)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import xxhash

CHUNK = 8 * 2**20


@functools.lru_cache(maxsize=4096)
def _digest(path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> str:
    """Memoised on the file's version: any rewrite changes its ctime, so it is hashed again."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def content_digest(path: str | os.PathLike) -> str:
    """A digest of every byte of ``path`` (a link is followed)."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    return _digest(real, stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


def is_file(source: str | os.PathLike) -> bool:
    try:
        return Path(source).is_file()
    except (OSError, ValueError):
        return False
