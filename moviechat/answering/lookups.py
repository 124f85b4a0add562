"""Features of a video by key, for answering: a folder of ``.npy`` files or shards (:class:`FeatureLookup`), or video
files decoded and encoded by the run's frozen EVA path (:class:`VideoFileLookup`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from moviechat.common.digest import content_digest
from moviechat.data.checks import check_key
from moviechat.data.sampling import FrameSampling
from moviechat.data.video import VIDEO_SUFFIXES, find_video_file
from moviechat.common.errors import DataError
from moviechat.data.stores import (FolderStore, feature_meta, read_npy_video, read_shard_video,
                                   validate_features)



def load_features(path: str | Path, kind_default: str, warn: bool = False) -> tuple[np.ndarray, dict]:
    """A ``<key>.npy`` or ``<key>.feats.npy`` (with an optional ``<key>.json`` of metadata beside it)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such features file")
    video = read_npy_video(path, kind_default, warn=warn)
    validate_features(video.feats, video.meta, video.key, video.source)
    return video.feats, video.meta


class FeatureLookup:
    """Features by video key from a folder of .npy files or from shards. Shards are indexed from their tar
    headers; a lookup reads only the shard that holds the key, and only that video's members."""

    def __init__(self, folder: Optional[str], shards: Optional[str], kind: str):
        self.folder, self.kind = (Path(folder) if folder else None), kind
        self.index: dict[str, str] = {}
        if shards:
            from moviechat.data.stores import expand_shards
            from moviechat.data.stores import ShardStore

            self.index = ShardStore(expand_shards(shards)).keys()

    def __call__(self, video: str) -> tuple[np.ndarray, dict]:
        check_key(video, "--features-dir / --shards")
        if video in self.index:
            found = read_shard_video(self.index[video], video)
            return found.feats, found.meta
        found = FolderStore(self.folder, self.kind).path_of(video) if self.folder is not None else None
        if found is not None:  # <key>.npy or <key>.feats.npy, as training's folder store reads them
            return load_features(found, self.kind)
        raise DataError(f"no features for video {video!r} (looked in --features-dir / --shards)")


class VideoFileLookup:
    """EVA features of ``<folder>/<key>.mp4`` (or another video suffix), decoded with PyAV and encoded by
    the run's frozen ViT (``model.vision.weights``), loaded once."""

    def __init__(self, cfg, folder: str | Path, fps: Optional[float] = None, num_frames: Optional[int] = None,
                 device: Optional[torch.device] = None):
        from moviechat.models.frame_encoders import load_encoder

        self.cfg, self.folder, self.fps, self.num_frames = cfg, Path(folder), fps, num_frames
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder = load_encoder(cfg, frame_tokens=False, device=self.device)
        # recorded with every prediction
        self.sampling = f"fps={fps}" if fps else f"frames={num_frames}" if num_frames else "all frames"

    def cache_key(self, video: str, answerer) -> str:
        """What a video's frame tokens depend on: the file's content (every byte), decoding, preprocessing, the
        frame sampling and every weight on the way (ViT, ln_vision, image Q-Former)."""
        from moviechat.models.token_cache import weights_digest

        if not hasattr(self, "_weights"):
            self._weights = weights_digest(self.encoder, answerer.model.ln_vision, answerer.model.image_qformer)
        parts = [content_digest(self.path_of(video)), self.sampling, self.cfg.model.vision.preprocess, self._weights,
                 FrameSampling.of(answerer.cfg.memory)]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]

    def path_of(self, video: str) -> Path:
        check_key(video, f"--videos {self.folder}")
        found = find_video_file(self.folder, video)
        if found is not None:
            return found
        raise DataError(f"no video file for {video!r} in {self.folder} ({', '.join(VIDEO_SUFFIXES)})")

    def __call__(self, video: str) -> tuple[np.ndarray, dict]:
        return self.read(self.path_of(video))

    def read(self, path: Path) -> tuple[np.ndarray, dict]:
        """A video file the user named (not a key): decoded and encoded."""
        from moviechat.data.video import read_frames

        frames, stamps, duration = read_frames(path, fps=self.fps, num_frames=self.num_frames)
        feats = self.encoder(frames, 64, self.device).numpy()
        return feats, feature_meta("eva", stamps, duration, self.fps or 0, self.cfg.model.vision.preprocess,
                                   video=str(path), sampling=self.sampling)
