"""Dataset builders by name (the registry's edge) and the train/val datasets of a config."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from moviechat.config import Config
from moviechat.config.data import DataConfig
from moviechat.data.annotations import QA, annotation_files, load_annotations, split_by_video, video_key
from moviechat.data.conversation import read_prompts
from moviechat.data.dataset import VideoQADataset, VideoQASource, check_annotated_videos, mode_keep_probabilities
from moviechat.data.sampling import FrameSampling
from moviechat.common.errors import DataError
from moviechat.data.stores import FolderStore, ShardStore, SkipCounter, expand_shards
from moviechat.data.instruct import READERS, is_shard_pattern
from moviechat.data.synthetic import synthetic_dir, synthetic_keys, write_synthetic_set
from moviechat.common.registry import DATASETS


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
    return split_source(data, seed, qas, skips)


def split_source(data: DataConfig, seed: int, qas: dict[str, list[QA]], skips: SkipCounter) -> VideoQASource:
    """Questions by key + the store's features -> a source split by video (keys without features: an error,
    or counted with ``data.on_error=skip``)."""
    store = open_store(data)
    missing = check_annotated_videos(qas, list(store.keys()), data.on_error, data.annotations)
    for key in missing:
        skips.add("annotated video without features", f"{key} ({len(qas[key])} question(s))")
    train, val = checked_split(set(qas) - set(missing), data, seed, data.annotations)
    return VideoQASource(store, qas, train, val, missing, skips)


def checked_split(keys: set[str], data: DataConfig, seed: int, where: object) -> tuple[set[str], set[str]]:
    """(train, held-out) keys of ``data.val_fraction``; a split with no training video, or none held out when
    some should be, is refused, saying what to set."""
    train, val = split_by_video(keys, data.val_fraction, seed)
    if not train:
        raise DataError(f"data.val_fraction={data.val_fraction} held out all {len(keys)} video(s) of "
                        f"{where}: lower it (0 holds out none)")
    if data.val_fraction > 0 and not val:
        raise DataError(f"data.val_fraction={data.val_fraction} held out none of the {len(keys)} video(s) of "
                        f"{where}: raise it to about {min(0.5, 2 / max(len(keys), 1)):.2g} for a held-out "
                        f"split, or set data.val_fraction=0 to train without one (no evaluation during training)")
    return train, val


def annotated_keys(folder: str) -> set[str]:
    """The video keys of an annotations folder's files (a file that cannot be read is left to the full load,
    which names it)."""
    keys = set()
    for f in annotation_files(folder):
        try:
            info = json.loads(f.read_text()).get("info")
        except (OSError, ValueError, AttributeError):
            continue
        keys.add(video_key(info if isinstance(info, dict) else {}, f))
    return keys


def check_split_early(cfg: Config) -> None:
    """The split checks of :func:`checked_split` before anything starts, where the keys are known cheaply: a
    generated set's from its config, an annotations folder's from its files. Fewer keys (videos without
    features) never turn a refused split into a good one, so what is refused here would be refused later."""
    for part in cfg.data.parts():
        if part.builder == "synthetic":
            keys = set(synthetic_keys(part.data.synthetic))
        elif part.builder == "moviechat1k" and part.data.annotations and Path(part.data.annotations).is_dir():
            keys = annotated_keys(part.data.annotations)
        else:
            continue
        checked_split(keys, part.data, cfg.run.seed, part.data.annotations or f"data.synthetic ({part.name})")


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


def source_from_records(data: DataConfig, seed: int, builder: str, prompt_format: str) -> VideoQASource:
    """Video-LLaMA's annotations (moviechat.data.instruct) + features, one QA per record, split by video/image."""
    if prompt_format != "moviechat":
        raise DataError(f"data.name={builder}: its records are written in the original's text; model.prompt="
                        f"{prompt_format!r} is not supported for them (use model.prompt=moviechat)")
    if not data.annotations or not (Path(data.annotations).exists() or is_shard_pattern(data.annotations)):
        raise DataError(f"data.annotations={data.annotations!r} must name the {builder} annotation file "
                        f"(or, for webvid, a folder of CSV files; for caption pairs, their tar shards)")
    skips = SkipCounter()
    records = READERS[builder](Path(data.annotations), skips if data.on_error == "skip" else None)
    qas: dict[str, list[QA]] = {}
    for r in records:
        qas.setdefault(r.key, []).append(r.qa())
    return split_source(data, seed, qas, skips)


@DATASETS.register("webvid")
def build_webvid(cfg: Config) -> VideoQASource:
    """WebVid video captions (Video-LLaMA stage 1): CSV files of videoid, page_dir, name."""
    return source_from_records(cfg.data, cfg.run.seed, "webvid", cfg.model.prompt)


@DATASETS.register("videochat_instruct")
@DATASETS.register("webvid_instruct")  # Video-LLaMA's name for it
def build_videochat_instruct(cfg: Config) -> VideoQASource:
    """VideoChat-instruct-11K (stage 2): multi-turn questions about a video."""
    return source_from_records(cfg.data, cfg.run.seed, "videochat_instruct", cfg.model.prompt)


@DATASETS.register("llava_instruct")
def build_llava_instruct(cfg: Config) -> VideoQASource:
    """LLaVA-Instruct-150K (stage 2): conversations about an image (a video of one frame)."""
    return source_from_records(cfg.data, cfg.run.seed, "llava_instruct", cfg.model.prompt)


@DATASETS.register("cc_sbu_align")
def build_cc_sbu_align(cfg: Config) -> VideoQASource:
    """MiniGPT-4's cc_sbu_align image-caption pairs (stage 2), captions as written."""
    return source_from_records(cfg.data, cfg.run.seed, "cc_sbu_align", cfg.model.prompt)


@DATASETS.register("cc_sbu")
def build_cc_sbu(cfg: Config) -> VideoQASource:
    """CC3M/CC12M/SBU image-caption pairs (Video-LLaMA stage 1, MiniGPT-4's webdataset shards), captions cleaned."""
    return source_from_records(cfg.data, cfg.run.seed, "cc_sbu", cfg.model.prompt)


@DATASETS.register("laion")
def build_laion(cfg: Config) -> VideoQASource:
    """Image-caption pairs (LAION, CC/SBU), captions cleaned as BLIP does."""
    return source_from_records(cfg.data, cfg.run.seed, "laion", cfg.model.prompt)


def token_shape(cfg: Config) -> tuple[int, int]:
    """The [N, D] of one frame the model reads: EVA features or frame tokens (``data.feature_kind``)."""
    return cfg.model.frame_shape(cfg.data.feature_kind)


@dataclass
class DataPart:
    """One dataset of a run (the only one, or a mixture's entry): its source and this rank's train / val sets."""

    name: str
    builder: str
    ratio: float
    data: DataConfig
    source: VideoQASource
    train: VideoQADataset
    val: VideoQADataset


def build_parts(cfg: Config, rank: int = 0, world_size: int = 1, split: bool = True) -> list[DataPart]:
    """Every dataset of the config (``data.mixture``'s entries, or ``data`` itself) with its train / val sets
    (``split=False``: every video in train, as a preview of records needs)."""
    parts = []
    for part in cfg.data.parts():
        sub = replace(cfg, data=part.data if split else replace(part.data, val_fraction=0.0))
        source = DATASETS.build(part.builder, sub)
        train, val = _datasets(sub, source, rank, world_size, part.name)
        parts.append(DataPart(part.name, part.builder, part.ratio, part.data, source, train, val))
    return parts


def build_datasets(cfg: Config, rank: int = 0, world_size: int = 1) -> tuple[VideoQASource, VideoQADataset, VideoQADataset]:
    """The named source and its train / val datasets for this rank (one dataset; a mixture: :func:`build_parts`)."""
    if cfg.data.mixture:
        raise DataError("data.name=mixture holds several datasets: use build_parts")
    part = build_parts(cfg, rank, world_size)[0]
    return part.source, part.train, part.val


def _datasets(cfg: Config, source: VideoQASource, rank: int, world_size: int, name: str):
    data = cfg.data
    prompts = list(data.conversation.caption_prompts)
    if data.conversation.caption_prompts_file:
        prompts += read_prompts(data.conversation.caption_prompts_file)
    common = dict(feature_kind=data.feature_kind, token_shape=token_shape(cfg), sampling=FrameSampling.of(cfg.memory),
                  seed=cfg.run.seed, rank=rank, world_size=world_size, on_error=data.on_error,
                  preprocess=cfg.model.vision.preprocess, name=name, caption_prompts=prompts,
                  caption_template=data.conversation.caption_template)
    dialogs = any(qa.dialog is not None for qas in source.qas.values() for qa in qas)
    keep = {} if dialogs else mode_keep_probabilities(source.qas, source.train_keys, cfg.train.breakpoint_fraction)
    grouped = dialogs if data.group_by_length is None else data.group_by_length
    train = VideoQADataset(source.store, source.qas, source.train_keys, shuffle_buffer=data.shuffle_buffer,
                           mode_keep=keep, group_window=data.group_window if grouped else 0, **common)
    val = VideoQADataset(source.store, source.qas, source.val_keys, shuffle_buffer=0, **common)
    return train, val
