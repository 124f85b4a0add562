"""Feature stores: webdataset tar shards (one sample per video) and plain folders of ``<key>.npy``.

A shard sample is ``<key>.feats.npy`` (fp16 [T, 257, 1408] EVA features or [T, 32, 768] frame tokens)
and ``<key>.json`` (``kind``, ``fps``, ``duration``, ``timestamps`` in seconds per frame). A folder holds
``<key>.npy`` and, optionally, ``<key>.json`` beside it. Both stores yield :class:`VideoFeatures`,
validated: a bad sample raises :class:`DataError` naming the file and key, or, with ``on_error="skip"``,
is counted in :class:`SkipCounter` and left out.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import random
import tarfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
from braceexpand import braceexpand
from webdataset import tariterators

from moviechat.common.atomic import atomic_path
from moviechat.common.errors import DataError
from moviechat.data.checks import check_meta

FEATURE_KINDS = ("eva", "tokens")
# What "EVA features" are here: the ViT's block outputs before ln_vision, as the MovieChat-1K release stores
# them. Written into every store's metadata; EVA features without it (older shards, computed after
# ln_vision) are refused rather than read as the wrong thing.
EVA_CONVENTION = "vit_blocks_before_ln_vision"
FEATURE_DTYPES = (np.float16, np.float32)


@dataclass
class VideoFeatures:
    key: str
    feats: np.ndarray  # [T, N, D]
    meta: dict
    source: str  # shard or file it came from


@dataclass
class SkipCounter:
    """Reasons for skipped samples (``data.on_error=skip``), reported at the end of an epoch."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, detail: str) -> None:
        """Count one skip; its detail (file, key, error) goes to the log at once."""
        self.counts[reason] += 1
        print(f"skipped ({reason}): {detail}", flush=True)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def feature_meta(kind: str, timestamps: list[float], duration: float, fps: float, preprocess: Optional[str] = None,
                 **extra) -> dict:
    """The metadata every writer stores beside a video's features."""
    meta = {"kind": kind, "fps": fps, "duration": duration, "timestamps": timestamps, **extra}
    if kind == "eva":
        meta["eva_convention"] = EVA_CONVENTION
    if preprocess is not None:
        meta["preprocess"] = preprocess
    return meta


def default_meta(num_frames: int, kind: str, fps: float = 1.0) -> dict:
    """Metadata for frames sampled at ``fps`` from the start; bare EVA arrays are taken as the release's."""
    return feature_meta(kind, [i / fps for i in range(num_frames)], num_frames / fps, fps)


class PreprocessCheck:
    """Reports, once per value, features computed from other pixels than ``model.vision.preprocess`` gives
    (what inference on a video file feeds the ViT): a model trained on them is then evaluated off-distribution."""

    def __init__(self, expected: Optional[str]):
        self.expected = expected
        self.reported: set[str] = set()

    def __call__(self, meta: dict, where: str) -> None:
        got = meta.get("preprocess")
        if self.expected is None or got is None or got == self.expected or got in self.reported:
            return
        self.reported.add(got)
        print(f"warning: {where}: features were computed with preprocess={got!r} but model.vision.preprocess="
              f"{self.expected!r} (what inference on video files uses); set model.vision.preprocess={got} to train "
              f"and infer on the same pixels", flush=True)


def validate_features(feats: np.ndarray, meta: dict, key: str, source: str, expect_kind: Optional[str] = None,
                      expect_shape: Optional[tuple[int, int]] = None) -> None:
    """Raise DataError naming ``source`` and ``key`` unless the features are usable as they are."""
    where = f"{source}: video {key!r}"
    if not isinstance(meta, dict):
        raise DataError(f"{where}: metadata must be a JSON object, got {type(meta).__name__}")
    if meta.get("kind") not in FEATURE_KINDS:
        raise DataError(f"{where}: metadata kind={meta.get('kind')!r} must be one of {FEATURE_KINDS}")
    if expect_kind is not None and meta["kind"] != expect_kind:
        raise DataError(f"{where}: features are {meta['kind']!r} but data.feature_kind={expect_kind!r}")
    if meta["kind"] == "eva" and meta.get("eva_convention") != EVA_CONVENTION:
        raise DataError(f"{where}: EVA features of unknown convention (eva_convention={meta.get('eva_convention')!r}); "
                        f"this framework reads the ViT's block outputs before ln_vision ({EVA_CONVENTION!r}), as the "
                        f"MovieChat-1K release stores them. Re-extract them with moviechat extract-features "
                        f"(or convert the release with moviechat convert-release)")
    if feats.ndim != 3 or feats.shape[0] < 1:
        raise DataError(f"{where}: features must be [T, N, D] with T >= 1, got shape {list(feats.shape)}")
    if expect_shape is not None and tuple(feats.shape[1:]) != tuple(expect_shape):
        raise DataError(f"{where}: features of shape [T, {feats.shape[1]}, {feats.shape[2]}] do not match the "
                        f"model's [T, {expect_shape[0]}, {expect_shape[1]}] for kind {meta['kind']!r}")
    if feats.dtype not in FEATURE_DTYPES:
        raise DataError(f"{where}: dtype {feats.dtype} must be float16 or float32")
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=(1, 2)).sum())
        raise DataError(f"{where}: {bad} frame(s) contain NaN or Inf")
    check_meta(meta, feats.shape[0], where)


# ------------------------------------------------------------------------------------------- writing


def write_shards(videos: Iterable[VideoFeatures], pattern: str, max_per_shard: int = 64,
                 on_shard: Optional[Callable[[str, list[VideoFeatures]], None]] = None) -> list[str]:
    """Write videos to tar shards named by ``pattern`` (e.g. ``out/train-%05d.tar``); returns the paths.

    Each shard is written under a temporary name and renamed when complete, then ``on_shard(path,
    videos)`` is called, so a crash never leaves a truncated shard under a real name. Features go into
    the tar straight from the array (no second copy in memory: a released video's EVA set is ~6 GB).
    """
    paths: list[str] = []
    batch: list[VideoFeatures] = []
    with contextlib.ExitStack() as open_shard:
        tar = None

        def close() -> None:
            tar.close()
            open_shard.close()  # renames the finished shard to its real name
            if on_shard is not None:
                on_shard(paths[-1], batch)

        for video in videos:
            if tar is None or len(batch) == max_per_shard:
                if tar is not None:
                    close()
                paths.append(pattern % len(paths))
                tar, batch = tarfile.open(open_shard.enter_context(atomic_path(paths[-1])), "w"), []
            _add_member(tar, f"{video.key}.feats.npy", _BufferReader(*_npy_buffers(video.feats)))
            _add_member(tar, f"{video.key}.json", _BufferReader(memoryview(json.dumps(video.meta).encode())))
            batch.append(VideoFeatures(video.key, video.feats[:0], video.meta, video.source))  # keep no features
        if tar is not None:
            close()
    return paths


def _add_member(tar: tarfile.TarFile, name: str, reader: "_BufferReader") -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = reader.size, 0o444, 0
    tar.addfile(info, reader)


def _npy_buffers(array: np.ndarray) -> tuple[memoryview, memoryview]:
    """The ``.npy`` header and the array's own buffer (what ``np.save`` would write, without copying)."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return memoryview(header.getvalue()), memoryview(array.reshape(-1)).cast("B")


class _BufferReader:
    """Buffers read one after another in pieces, as a file (what ``tarfile.addfile`` copies from)."""

    def __init__(self, *parts: memoryview):
        self.parts = list(parts)
        self.size = sum(p.nbytes for p in parts)

    def read(self, n: int = -1) -> bytes:
        n = self.size if n < 0 else n
        pieces = []
        while n > 0 and self.parts:
            piece, self.parts[0] = self.parts[0][:n], self.parts[0][n:]
            pieces.append(bytes(piece))
            n -= piece.nbytes
            if not self.parts[0].nbytes:
                self.parts.pop(0)
        return b"".join(pieces)


def write_folder(videos: Sequence[VideoFeatures], folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for video in videos:
        (folder / video.key).parent.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{video.key}.npy", video.feats, allow_pickle=False)
        (folder / f"{video.key}.json").write_text(json.dumps(video.meta))


# ------------------------------------------------------------------------------------------- reading


MEMBER_SUFFIXES = ("feats.npy", "json")


def member_key(name: str) -> tuple[str, str]:
    """(video key, field) of a shard member: the key is everything before a known field suffix, so keys
    with dots (``my.video.feats.npy``) stay whole; webdataset's default split at the first dot would not."""
    for suffix in MEMBER_SUFFIXES:
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    return tariterators.base_plus_ext(name)


def shard_samples(shards: Sequence[str], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """Webdataset's tar reading (streamed, member by member) grouped by :func:`member_key`."""
    streams = tariterators.url_opener([{"url": s} for s in shards], handler=handler)
    files = tariterators.tar_file_expander(streams, handler=handler)
    return tariterators.group_by_keys(files, keys=member_key, handler=handler)


def expand_shards(pattern: str) -> list[str]:
    """Shard paths from a brace pattern (``x-{0000..0009}.tar``) or a glob (``x-*.tar``)."""
    paths: list[str] = []
    for part in braceexpand(pattern):
        paths += sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
    return paths


def assign(items: Sequence, stream: int, num_streams: int) -> list:
    """The items of one (rank, worker) stream: every ``num_streams``-th, so streams never overlap."""
    return list(items[stream::num_streams])


class ShardStore:
    """Videos streamed from tar shards with webdataset: shards split over ranks and workers."""

    def __init__(self, shards: Sequence[str], on_error: str = "raise"):
        if not shards:
            raise DataError("no shards given (data.shards matched no file)")
        missing = [s for s in shards if not Path(s).is_file()]
        if missing:
            raise DataError(f"shard files not found: {', '.join(missing[:5])}")
        self.shards = list(shards)
        self.on_error = on_error
        self._listed: Optional[dict[str, str]] = None  # keys by shard, once keys() has read the headers

    @property
    def units(self) -> int:
        """How many pieces the store splits over data streams (shards)."""
        return len(self.shards)

    def keys(self) -> dict[str, str]:
        """Every video key and its shard, from the tar headers (a truncated shard is reported here)."""
        keys: dict[str, str] = {}
        self._listed = keys
        for shard in self.shards:
            try:
                with tarfile.open(shard) as tar:
                    for name in tar.getnames():
                        keys.setdefault(member_key(name)[0], shard)
            except (tarfile.TarError, OSError, EOFError) as e:
                if self.on_error != "skip":
                    raise DataError(f"{shard}: unreadable or truncated shard: {e}") from None
        return keys

    def videos(self, stream: int, num_streams: int, seed: int, skips: SkipCounter) -> Iterator[VideoFeatures]:
        """This stream's videos; shard order and a sample shuffle buffer are seeded (``seed``)."""
        shards = list(self.shards)
        random.Random(seed).shuffle(shards)
        mine = assign(shards, stream, num_streams)
        if not mine:
            return

        broken: list[str] = []

        def handler(exn: Exception) -> bool:
            if self.on_error != "skip":
                raise DataError(f"reading shards {mine}: {exn}") from exn
            broken.append(repr(exn))
            print(f"unreadable shard, the rest of it is skipped: {exn!r}", flush=True)
            return True

        seen = set()
        for raw in shard_samples(mine, handler):
            seen.add(raw.get("__key__"))
            video = self._decode(raw, skips)
            if video is not None:
                yield video
        if broken and self._listed is None:  # no header listing to tell which videos were lost
            for error in broken:
                skips.add("unreadable shard", error)
        elif broken:  # count the videos lost, not the errors (their headers were read at set-up)
            for key in sorted(k for k, shard in self._listed.items() if shard in mine and k not in seen):
                skips.add("video in an unreadable shard", f"{self._listed[key]}: video {key!r}")

    def _decode(self, raw: dict, skips: SkipCounter) -> Optional[VideoFeatures]:
        source, key = raw.get("__url__", "?"), raw.get("__key__", "?")
        try:
            if "feats.npy" not in raw or "json" not in raw:
                have = sorted(k for k in raw if not k.startswith("__"))
                raise DataError(f"{source}: video {key!r}: incomplete sample (has {have}; needs feats.npy and json); "
                                f"the shard may be truncated")
            try:
                feats = np.load(io.BytesIO(raw["feats.npy"]), allow_pickle=False)
                meta = json.loads(raw["json"])
            except Exception as e:
                raise DataError(f"{source}: video {key!r}: cannot decode: {e}") from None
            return VideoFeatures(key, feats, meta, source)
        except DataError as e:
            if self.on_error != "skip":
                raise
            skips.add("bad sample", str(e))
            return None


class FolderStore:
    """Videos from ``<key>.npy`` (+ optional ``<key>.json``) files in a folder; files split over streams."""

    def __init__(self, folder: str | Path, kind: str, on_error: str = "raise", fps: float = 1.0):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"feature folder not found: {self.folder}")
        self.kind = kind  # for files without a .json beside them
        self.on_error = on_error
        self.fps = fps

    @property
    def units(self) -> int:
        """How many pieces the store splits over data streams (files)."""
        return len(self._files())

    def _files(self) -> list[Path]:
        return sorted(self.folder.rglob("*.npy"))

    def key_of(self, path: Path) -> str:
        """A file's key: its path below the folder without ``.npy`` / ``.feats.npy`` (``cook/v0.npy`` -> ``cook/v0``)."""
        return (path.parent.relative_to(self.folder) / npy_key(path)).as_posix()

    def keys(self) -> dict[str, str]:
        return {self.key_of(p): str(p) for p in self._files()}

    def path_of(self, key: str) -> Optional[Path]:
        """The file of one key (``<key>.npy``, else ``<key>.feats.npy``) without listing the folder; None if absent."""
        for name in (f"{key}.npy", f"{key}.feats.npy"):
            if (self.folder / name).is_file():
                return self.folder / name
        return None

    def videos(self, stream: int, num_streams: int, seed: int, skips: SkipCounter) -> Iterator[VideoFeatures]:
        files = self._files()
        random.Random(seed).shuffle(files)
        for path in assign(files, stream, num_streams):
            try:
                yield replace(read_npy_video(path, self.kind, self.fps), key=self.key_of(path))
            except DataError as e:
                if self.on_error != "skip":
                    raise
                skips.add("unreadable file", str(e))


def read_shard_video(shard: str, key: str) -> VideoFeatures:
    """One video from one shard, read by itself (its two members), validated."""
    try:
        with tarfile.open(shard) as tar:
            feats = np.load(io.BytesIO(tar.extractfile(f"{key}.feats.npy").read()), allow_pickle=False)
            meta = json.loads(tar.extractfile(f"{key}.json").read())
    except (KeyError, AttributeError, tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise DataError(f"{shard}: video {key!r}: cannot read: {type(e).__name__}: {e}") from None
    validate_features(feats, meta, key, shard)
    return VideoFeatures(key, feats, meta, shard)


def npy_key(path: Path) -> str:
    """The video key of a ``.npy`` file: ``<key>.npy``, or ``<key>.feats.npy`` as taken out of a shard."""
    name = path.name
    return name[: -len(".feats.npy")] if name.endswith(".feats.npy") else path.stem


def read_npy_video(path: str | Path, kind: str, fps: float = 1.0, warn: bool = False) -> VideoFeatures:
    """``<key>.npy`` (or ``<key>.feats.npy``) and its ``<key>.json`` metadata (or, without one, frames at
    ``fps`` of ``kind``, said when ``warn``)."""
    path = Path(path)
    key = npy_key(path)
    side = path.with_name(f"{key}.json")
    try:
        feats = np.load(path, allow_pickle=False)
        meta = json.loads(side.read_text()) if side.is_file() else default_meta(len(feats), kind, fps)
    except Exception as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if warn and not side.is_file():
        print(f"warning: no {side.name} beside {path}: its {len(feats)} frames are taken as {kind!r} at {fps} fps "
              f"from 0 s", flush=True)
    return VideoFeatures(key, feats, meta, str(path))
