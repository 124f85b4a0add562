"""Dataset builders by name (the registry's edge) and the train/val datasets of a config."""

from __future__ import annotations

import glob
from dataclasses import replace

from braceexpand import braceexpand

from moviechat.config import Config, DataConfig
from moviechat.data.annotations import load_annotations, split_by_video
from moviechat.data.dataset import VideoQADataset, VideoQASource, check_annotated_videos, mode_keep_probabilities
from moviechat.data.sampling import FrameSampling
from moviechat.data.stores import DataError, FolderStore, ShardStore, SkipCounter
from moviechat.data.synthetic import synthetic_dir, write_synthetic_set
from moviechat.registry import DATASETS


def expand_shards(pattern: str) -> list[str]:
    """Shard paths from a brace pattern (``x-{0000..0009}.tar``) or a glob (``x-*.tar``)."""
    paths: list[str] = []
    for part in braceexpand(pattern):
        paths += sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
    return paths


def open_store(data: DataConfig):
    if bool(data.shards) == bool(data.folder):
        raise DataError(f"set exactly one of data.shards ({data.shards!r}) and data.folder ({data.folder!r})")
    if data.shards:
        return ShardStore(expand_shards(data.shards), data.on_error)
    return FolderStore(data.folder, data.feature_kind, data.on_error, data.folder_fps)


def source_from_annotations(data: DataConfig, seed: int) -> VideoQASource:
    if not data.annotations:
        raise DataError("data.annotations must name the folder of per-video annotation JSON files")
    skips = SkipCounter()  # what set-up leaves out with data.on_error=skip
    qas = load_annotations(data.annotations, data.include_captions, skips if data.on_error == "skip" else None)
    store = open_store(data)
    missing = check_annotated_videos(qas, list(store.keys()), data.on_error, data.annotations)
    for key in missing:
        skips.add("annotated video without features", f"{key} ({len(qas[key])} question(s))")
    train, val = split_by_video(set(qas) - set(missing), data.val_fraction, seed)
    if not train or not val:
        raise DataError(f"split of {len(qas) - len(missing)} videos left train={len(train)}, val={len(val)}; "
                        f"change data.val_fraction={data.val_fraction}")
    return VideoQASource(store, qas, train, val, missing, skips)


@DATASETS.register("moviechat1k")
def build_moviechat1k(cfg: Config) -> VideoQASource:
    """MovieChat-1K style annotations + features (shards or a folder), split by video."""
    return source_from_annotations(cfg.data, cfg.run.seed)


@DATASETS.register("synthetic")
def build_synthetic(cfg: Config) -> VideoQASource:
    """The generated set (written once, then read like MovieChat-1K): frame tokens of the model's size."""
    if cfg.data.feature_kind != "tokens":
        raise DataError(f"data.feature_kind={cfg.data.feature_kind!r}: the synthetic set holds frame tokens ('tokens')")
    q, d = cfg.model.image_qformer.num_query_tokens, cfg.model.image_qformer.hidden_size
    out = write_synthetic_set(cfg.data.synthetic, q, d, synthetic_dir(cfg.data.synthetic, q, d, cfg.run.output_dir))
    data = replace(cfg.data, shards=str(out / "shards" / "syn-*.tar"), folder=None, annotations=str(out / "annotations"),
                   feature_kind="tokens")
    return source_from_annotations(data, cfg.run.seed)


def token_shape(cfg: Config) -> tuple[int, int]:
    """The [N, D] of one frame the model reads: EVA features or frame tokens (``data.feature_kind``)."""
    return cfg.model.frame_shape(cfg.data.feature_kind)


def build_datasets(cfg: Config, rank: int = 0, world_size: int = 1) -> tuple[VideoQASource, VideoQADataset, VideoQADataset]:
    """The named source and its train / val datasets for this rank."""
    source = DATASETS.build(cfg.data.name, cfg)
    common = dict(feature_kind=cfg.data.feature_kind, token_shape=token_shape(cfg), sampling=FrameSampling.of(cfg.memory),
                  seed=cfg.run.seed, rank=rank, world_size=world_size, on_error=cfg.data.on_error,
                  preprocess=cfg.model.vision.preprocess)
    keep = mode_keep_probabilities(source.qas, source.train_keys, cfg.train.breakpoint_fraction)
    train = VideoQADataset(source.store, source.qas, source.train_keys, shuffle_buffer=cfg.data.shuffle_buffer,
                           mode_keep=keep, **common)
    val = VideoQADataset(source.store, source.qas, source.val_keys, shuffle_buffer=0, **common)
    return source, train, val
