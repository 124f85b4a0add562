"""Question samples streamed from a feature store, split over ranks and data-loader workers.

Each (rank, worker) pair reads its own deterministic *stream* of samples (seeded by run seed and epoch), so
every video is read by exactly one stream per epoch and a stream can be resumed by skipping the samples it
already produced (``set_resume``). Each sample carries its ``(stream, index)`` position.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from torch import Tensor

from moviechat.data.annotations import QA
from moviechat.data.conversation import MARKUP_TEXTS, Dialog, DialogEncoder, EncodedText, with_caption_prompt
from moviechat.data.length_grouping import group_by_length
from moviechat.data.sampling import FrameSampling, frame_at
from moviechat.common.errors import DataError
from moviechat.data.stores import SkipCounter, VideoFeatures, PreprocessCheck, validate_features


@dataclass
class Sample:
    """One question about one video, with its frames already sampled (``time`` indexes ``frames``)."""

    video_id: str
    frames: Tensor  # EVA features [T, 257, 1408] or frame tokens [T, 32, 768]
    question: str
    answer: str
    mode: str = "global"  # or "breakpoint"
    time: Optional[int] = None
    qtype: str = ""  # question type, for per-type accuracy
    source: str = ""  # the shard or file the features came from
    position: tuple[int, int] = (0, 0)  # (data stream, index in that stream): where to resume
    skipped: int = 0  # samples the producing stream had skipped so far (data.on_error=skip)
    stamps: tuple[float, ...] = ()  # seconds of the sampled frames (a VideoChat record's frame message)
    dataset: str = ""  # the dataset it came from (a mixture's entry name)
    text: Optional[EncodedText] = None  # an instruction or caption record's tokens (else question/answer are the text)


@dataclass
class VideoQASource:
    """What a dataset builder returns: features, questions by video key, and the split."""

    store: object  # ShardStore | FolderStore
    qas: dict[str, list[QA]]
    train_keys: set[str]
    val_keys: set[str]
    missing: list[str] = field(default_factory=list)  # annotated videos without features (skipped)
    skips: SkipCounter = field(default_factory=SkipCounter)  # annotation entries, files and videos left out

    def texts(self) -> list[str]:
        """All questions, answers and conversation turns (to build a tiny model's word tokenizer)."""
        out = [t for qas in self.qas.values() for qa in qas for t in (qa.question, qa.answer)]
        dialogs = [qa.dialog for qas in self.qas.values() for qa in qas if qa.dialog is not None]
        return out + [t for d in dialogs for t in d.texts()] + (MARKUP_TEXTS if dialogs else [])


class VideoQADataset(IterableDataset):
    def __init__(self, store, qas: dict[str, list[QA]], keys: set[str], *, feature_kind: str,
                 token_shape: tuple[int, int], sampling: FrameSampling, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 0, on_error: str = "raise",
                 mode_keep: Optional[dict[str, float]] = None, preprocess: Optional[str] = None, name: str = "",
                 caption_prompts: Sequence[str] = (), caption_template: str = "{}", group_window: int = 0):
        self.store = store
        self.qas = qas
        self.keys = keys
        self.feature_kind = feature_kind
        self.token_shape = tuple(token_shape)
        self.sampling = sampling
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.on_error = on_error
        self.mode_keep = mode_keep or {}  # probability of keeping a question of each mode
        self.check_preprocess = PreprocessCheck(preprocess)
        self.name = name
        self.encoder: Optional[DialogEncoder] = None  # set once the tokenizer exists (set_encoder)
        self.caption_prompts, self.caption_template = list(caption_prompts), caption_template
        self.group_window = group_window  # micro-batches per length-grouping window; 0: stream order
        self.batch_size = 1  # the micro-batch the loader cuts (set_batch_size); grouping needs it
        self.epoch = 0
        self.resume: dict[int, int] = {}
        self.skips = SkipCounter()

    def set_encoder(self, encoder: DialogEncoder) -> None:
        """How dialog records become tokens; a record that cannot (a cut first answer) is then a bad sample."""
        self.encoder = encoder

    def set_batch_size(self, batch_size: int) -> None:
        """The micro-batch its loader cuts: length-grouped windows are made of batches of this size."""
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_resume(self, positions: dict[int, int]) -> None:
        """Skip, per stream, the samples it already produced in the current epoch."""
        self.resume = dict(positions)

    def __len__(self) -> int:
        """Questions in this split (all ranks together)."""
        return sum(len(self.qas[k]) for k in self.keys)

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream, num_streams = self.rank * workers + worker, self.world_size * workers
        seed = self.seed * 1_000_003 + self.epoch
        skip = self.resume.get(stream, 0)
        self.skips = SkipCounter()  # this epoch's (a resumed stream counts again what it passes over)
        samples = self._shuffled(self._samples(stream, num_streams, seed), random.Random(seed * 7919 + stream))
        if self.group_window and self.batch_size > 1:
            samples = group_by_length(samples, self.batch_size, self.group_window,
                                      random.Random(f"group:{seed}:{stream}"))
        for index, sample in enumerate(samples):
            if index >= skip:
                sample.position = (stream, index)
                sample.skipped = self.skips.total
                yield sample

    def _samples(self, stream: int, num_streams: int, seed: int) -> Iterator[Sample]:
        for video in self.store.videos(stream, num_streams, seed, self.skips):
            if video.key not in self.keys:
                continue
            try:
                samples = self.video_samples(video, random.Random(f"{seed}:{video.key}"))
            except DataError as e:
                if self.on_error != "skip":
                    raise
                self.skips.add("bad video", str(e))
                continue
            yield from samples

    def video_samples(self, video: VideoFeatures, rng: random.Random) -> list[Sample]:
        """The validated, frame-sampled questions of one video."""
        validate_features(video.feats, video.meta, video.key, video.source, self.feature_kind, self.token_shape)
        self.check_preprocess(video.meta, video.source)
        frames, stamps = self.sampled(video)
        out = []
        for qa in self.qas[video.key]:
            if rng.random() >= self.mode_keep.get(qa.mode, 1.0):
                continue
            sample = self.sample(video, frames, stamps, qa, rng)
            if sample is not None:
                out.append(sample)
        rng.shuffle(out)
        return out

    def sampled(self, video: VideoFeatures) -> tuple[Tensor, list[float]]:
        """The frames the model sees of a video and their timestamps."""
        chosen, stamps = self.sampling(video.meta["timestamps"])
        return torch.from_numpy(np.ascontiguousarray(video.feats[chosen])), stamps

    def sample(self, video: VideoFeatures, frames: Tensor, stamps: list[float], qa: QA,
               rng: random.Random) -> Optional[Sample]:
        """One question or record on a video's sampled frames (None: a record skipped with on_error=skip)."""
        time, text = None, None
        if qa.mode == "breakpoint":
            time = frame_at(qa.seconds, stamps, video.key, video.source, video.meta.get("duration"))
        if qa.dialog is not None:
            dialog = with_caption_prompt(qa.dialog, self.caption_prompts, self.caption_template, rng)
            text = self._encode(dialog, stamps, video.source)
            if text is None:
                return None
        return Sample(video.key, frames, qa.question, qa.answer, qa.mode, time, qa.qtype, video.source,
                      stamps=tuple(stamps), dataset=self.name, text=text)

    def _encode(self, dialog: Dialog, stamps: list[float], source: str) -> Optional[EncodedText]:
        """A record's tokens; one that cannot be learned raises, or (``on_error=skip``) is counted and None."""
        if self.encoder is None:
            raise DataError(f"{self.name or 'dataset'}: instruction records need a tokenizer (set_encoder) first")
        try:
            return self.encoder(dialog, stamps)
        except DataError as e:
            if self.on_error != "skip":
                raise DataError(f"{source}: {e}") from None
            self.skips.add("record that cannot be learned", str(e))
            return None

    def _shuffled(self, samples: Iterator[Sample], rng: random.Random) -> Iterator[Sample]:
        """A seeded shuffle buffer (so questions of one video spread over batches)."""
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        buffer: list[Sample] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer


def mode_keep_probabilities(qas: dict[str, list[QA]], keys: set[str], breakpoint_fraction: Optional[float]) -> dict[str, float]:
    """Keep probabilities per mode so that breakpoint questions make ``breakpoint_fraction`` of the samples."""
    if breakpoint_fraction is None:
        return {}
    modes = [qa.mode for k in keys for qa in qas[k]]
    native = modes.count("breakpoint") / max(len(modes), 1)
    p = breakpoint_fraction
    if native in (0.0, 1.0) and p not in (native,):
        raise DataError(f"train.breakpoint_fraction={p} is impossible: the training questions are "
                        f"{'all global' if native == 0 else 'all breakpoint'}")
    if p >= native:
        return {"breakpoint": 1.0, "global": native * (1 - p) / (p * (1 - native)) if p < 1 else 0.0}
    return {"global": 1.0, "breakpoint": p * (1 - native) / (native * (1 - p))}


def check_annotated_videos(qas: dict[str, list[QA]], store_keys: Sequence[str], on_error: str, where: str) -> list[str]:
    """Annotated videos that have no features: an error, or (``on_error=skip``) the list of them."""
    missing = sorted(set(qas) - set(store_keys))
    if missing and on_error != "skip":
        raise DataError(f"{where}: {len(missing)} annotated video(s) have no features: {', '.join(missing[:10])}"
                        f"{' ...' if len(missing) > 10 else ''} (data.on_error=skip leaves them out and counts them)")
    return missing
