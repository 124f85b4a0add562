"""What feature extraction reads: the videos and images below a folder, or the images of webdataset shards, as
units of work (one file, or one shard's images) split between ranks, and decoded and preprocessed in loader
workers (``--decode-workers``) ahead of the encoder.

A file's key is its path below the folder without its extension (``cook/v0.mp4`` -> ``cook/v0``), as the
annotations of every dataset name it; a shard image's key is webdataset's (``000123.jpg`` -> ``000123``).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset import tariterators

from moviechat.data.instruct import media_key
from moviechat.common.errors import DataError
from moviechat.data.stores import expand_shards
from moviechat.data.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_frames, read_image
from moviechat.models.vision import preprocess_frames



@dataclass(frozen=True)
class Unit:
    """One video or image file (``keys`` = its key), or the images of one tar shard still to extract."""

    path: str
    keys: tuple[str, ...]
    shard: bool = False


@dataclass
class Decoded:
    """One video or image, decoded and preprocessed (``pixels`` float [T, 3, S, S]), or why it could not be."""

    key: str
    source: str
    pixels: Optional[torch.Tensor] = None
    stamps: Optional[list[float]] = None
    duration: float = 0.0
    error: Optional[str] = None


def media_files(src: Path) -> list[Path]:
    """The videos and images below ``src`` (or ``src`` itself), sorted."""
    if not src.is_dir():
        return [src]
    return sorted(f for f in src.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES)


def file_key(path: Path, src: Path) -> str:
    """A file's feature key: its path below ``src`` without the extension (the name alone for one file)."""
    rel = path.relative_to(src) if src.is_dir() else Path(path.name)
    return media_key(rel.as_posix(), str(path))


def file_units(src: Path) -> list[Unit]:
    """Every video and image file below ``src``, one unit each, in path order. Two files with one key
    (``clip.mp4`` and ``clip.mkv``) would write one set of features over the other: refused, naming both."""
    units, seen = [], {}
    for f in media_files(src):
        key = file_key(f, src)
        if key in seen:
            raise DataError(f"{seen[key]} and {f} would both be features {key!r} (a key is the path without its "
                            f"extension): rename or move one of them")
        seen[key] = f
        units.append(Unit(str(f), (key,)))
    return units


def _is_image(member: tarfile.TarInfo) -> bool:
    return member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES


def shard_units(pattern: str) -> list[Unit]:
    """The images of webdataset tar shards, one unit per shard (keys in the shard's order)."""
    shards = expand_shards(pattern)
    if not shards:
        raise DataError(f"--image-shards {pattern!r} matches no file")
    units = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            units.append(Unit(shard, tuple(tariterators.base_plus_ext(m.name)[0] for m in tar if _is_image(m)), True))
    return units


def remaining(units: list[Unit], done: set[str]) -> list[Unit]:
    """The units with their keys not extracted yet (units left with none are dropped)."""
    out = []
    for unit in units:
        keys = tuple(k for k in unit.keys if k not in done)
        if keys:
            out.append(Unit(unit.path, keys, unit.shard))
    return out


def rank_share(units: list[Unit], rank: int, world_size: int) -> list[Unit]:
    """This rank's units: every ``world_size``-th, from its rank on (each unit goes to exactly one rank)."""
    return units[rank::world_size]


class DecodedMedia(IterableDataset):
    """Units decoded (frames at ``fps`` or ``num_frames`` spread over a video) and preprocessed for the ViT;
    loader workers take every n-th unit."""

    def __init__(self, units: list[Unit], fps: Optional[float], num_frames: Optional[int], img_size: int,
                 preprocess: str, decoder: str = "pyav"):
        self.units, self.fps, self.num_frames = units, fps, num_frames
        self.img_size, self.preprocess, self.decoder = img_size, preprocess, decoder

    def __iter__(self) -> Iterator[Decoded]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for unit in self.units[worker::workers]:
            yield from (self._shard(unit) if unit.shard else [self._file(unit)])

    def _pixels(self, frames: np.ndarray) -> torch.Tensor:
        return preprocess_frames(torch.from_numpy(frames), self.img_size, self.preprocess)

    def _file(self, unit: Unit) -> Decoded:
        path = Path(unit.path)
        try:
            frames, stamps, duration = (read_image(path) if path.suffix.lower() in IMAGE_SUFFIXES else
                                        read_frames(path, self.fps, self.num_frames, self.decoder))
        except DataError as e:
            return Decoded(unit.keys[0], unit.path, error=str(e))
        return Decoded(unit.keys[0], unit.path, self._pixels(frames), stamps, duration)

    def _shard(self, unit: Unit) -> Iterator[Decoded]:
        wanted = set(unit.keys)
        with tarfile.open(unit.path) as tar:
            for member in tar:
                key = tariterators.base_plus_ext(member.name)[0] if _is_image(member) else None
                if key not in wanted:
                    continue
                source = f"{unit.path}:{member.name}"
                try:
                    frames, stamps, duration = read_image(io.BytesIO(tar.extractfile(member).read()), source)
                except DataError as e:
                    yield Decoded(key, source, error=str(e))
                    continue
                yield Decoded(key, source, self._pixels(frames), stamps, duration)
