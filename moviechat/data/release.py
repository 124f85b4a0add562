"""The MovieChat-1K train release as shipped, read one video at a time, one chunk at a time.

Hugging Face ``Enxin/MovieChat-1K_train`` holds ``jsons/<key>.json`` (annotations) and ``movies/<key>.tar``:
per video, a tar of HDF5 files of 64 frames each ([64, 257, 1408] EVA features before ``ln_vision``, about
128 files, 8,192 frames). Also read, per video under the same root: a folder ``<key>/`` of ``.h5``/``.npy``
chunks, or one array ``<key>.npy`` / ``<key>.h5``. Chunks are concatenated in natural name order (``2.h5``
before ``10.h5``). The dataset inside an HDF5 file is found, not assumed by name: it must hold exactly one
[n, N, D] array of the expected frame shape. Some public tars are missing or broken (MovieChat issue #55):
a video that cannot be read raises :class:`DataError` naming the file, for the converter to count.
"""

from __future__ import annotations

import contextlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

import h5py
import numpy as np

from moviechat.common.errors import DataError

CHUNK_SUFFIXES = (".h5", ".hdf5", ".npy")
RELEASE_SUFFIXES = (".tar",) + CHUNK_SUFFIXES  # one video's features in the release
# A video that cannot be read: a truncated or corrupt tar, HDF5 or .npy file, or one of the wrong shape.
READ_ERRORS = (DataError, tarfile.TarError, OSError, EOFError, ValueError)


def natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def release_sources(root: str | Path) -> dict[str, Path]:
    """Every video's features under ``root`` by key (``<key>.tar``, ``<key>/``, ``<key>.npy``, ``<key>.h5``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such features folder")
    sources: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            key = path.name
        elif path.suffix in RELEASE_SUFFIXES:
            key = path.stem
        else:
            continue
        if key in sources:
            raise DataError(f"{root}: video {key!r} has features twice ({sources[key].name} and {path.name}); keep one")
        sources[key] = path
    return sources


@dataclass
class Chunk:
    """One array of a video's features, opened but not yet read."""

    name: str  # for messages: the file, or ``tar:member``
    length: int
    read: Callable[[], np.ndarray]  # [length, N, D], floating point


@contextlib.contextmanager
def open_chunks(source: Path, frame_shape: tuple[int, int]) -> Iterator[list[Chunk]]:
    """A video's chunks in order, open while the context lasts (a tar is read member by member)."""
    with contextlib.ExitStack() as stack:
        if source.is_dir():
            files = sorted((p for p in source.iterdir() if p.suffix in CHUNK_SUFFIXES), key=lambda p: natural_key(p.name))
            chunks = [_chunk(str(f), lambda f=f: open(f, "rb"), f.suffix, frame_shape, stack) for f in files]
        elif source.suffix == ".tar":
            tar = stack.enter_context(tarfile.open(source))
            members = sorted((m for m in tar.getmembers() if m.isfile() and Path(m.name).suffix in CHUNK_SUFFIXES),
                             key=lambda m: natural_key(m.name))
            chunks = [_chunk(f"{source}:{m.name}", lambda m=m: tar.extractfile(m), Path(m.name).suffix, frame_shape, stack)
                      for m in members]
        else:
            chunks = [_chunk(str(source), lambda: open(source, "rb"), source.suffix, frame_shape, stack)]
        if not chunks:
            raise DataError(f"{source}: no {'/'.join(CHUNK_SUFFIXES)} chunk in it")
        yield chunks


def _chunk(name: str, opener: Callable[[], IO[bytes]], suffix: str, frame_shape: tuple[int, int],
           stack: contextlib.ExitStack) -> Chunk:
    if suffix == ".npy":
        with opener() as f:
            shape, dtype = _npy_header(f, name)
        _check(name, shape, dtype, frame_shape)

        def read() -> np.ndarray:
            with opener() as f:
                if not isinstance(getattr(f, "raw", None), io.FileIO):  # a tar member: numpy wants a file or bytes
                    f = io.BytesIO(f.read())
                return np.lib.format.read_array(f, allow_pickle=False)

        return Chunk(name, shape[0], read)
    h5 = stack.enter_context(h5py.File(stack.enter_context(opener()), "r"))
    dataset = _only_array(h5, name, frame_shape)
    return Chunk(name, dataset.shape[0], lambda: dataset[()])


def _npy_header(f: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, dtype


def _only_array(h5: h5py.File, name: str, frame_shape: tuple[int, int]) -> h5py.Dataset:
    """The one dataset of shape [n, N, D] in the file, wherever it is and whatever it is called."""
    found: list[h5py.Dataset] = []
    every: list[str] = []

    def visit(path: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            every.append(f"{path} {list(obj.shape)}")
            if obj.ndim == 3 and tuple(obj.shape[1:]) == tuple(frame_shape):
                found.append(obj)

    h5.visititems(visit)
    if len(found) != 1:
        raise DataError(f"{name}: expected exactly one [n, {frame_shape[0]}, {frame_shape[1]}] array, found "
                        f"{len(found)} (datasets: {', '.join(every) or 'none'})")
    _check(name, found[0].shape, found[0].dtype, frame_shape)
    return found[0]


def _check(name: str, shape: tuple[int, ...], dtype: np.dtype, frame_shape: tuple[int, int]) -> None:
    if len(shape) != 3 or tuple(shape[1:]) != tuple(frame_shape) or shape[0] < 1:
        raise DataError(f"{name}: array of shape {list(shape)}, expected [n, {frame_shape[0]}, {frame_shape[1]}]")
    if not np.issubdtype(dtype, np.floating):
        raise DataError(f"{name}: dtype {dtype} is not floating point")


def read_chunk(chunk: Chunk) -> np.ndarray:
    """A chunk's array, refused (naming it) if it is short or holds NaN/Inf."""
    array = chunk.read()
    if array.shape[0] != chunk.length:
        raise DataError(f"{chunk.name}: read {array.shape[0]} frames, header says {chunk.length}")
    if not np.isfinite(array).all():
        raise DataError(f"{chunk.name}: {int((~np.isfinite(array)).any(axis=(1, 2)).sum())} frame(s) contain NaN or Inf")
    return array


def read_video(chunks: list[Chunk], frame_shape: tuple[int, int], dtype=np.float16) -> np.ndarray:
    """All chunks into one preallocated array: the video is held once, plus one chunk while it is read."""
    out = np.empty((sum(c.length for c in chunks), *frame_shape), dtype)
    start = 0
    for chunk in chunks:
        out[start:start + chunk.length] = read_chunk(chunk)
        start += chunk.length
    return out

