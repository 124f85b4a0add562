"""The ``data`` section of a config: which datasets (one, or a mixture), where their features and
annotations are, and how records become tokens. Part of :mod:`moviechat.config`'s one dataclass tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moviechat.config.errors import ConfigError, first_line


@dataclass
class NeedleConfig:
    """Needle videos added to the generated set (moviechat/data/needles.py); ``videos: 0`` adds none."""

    videos: int = 0  # needle videos added to the set (their questions: needle, needle_count, needle_order)
    min_frames: int = 64  # the training videos' lengths (a recall map asks about its own lengths)
    max_frames: int = 192
    needle_frames: int = 3  # frames of one needle scene
    max_needles: int = 3  # a video holds 1 to this many needles, each of another colour

    def __post_init__(self) -> None:
        if self.videos < 0:
            raise ConfigError(f"data.synthetic.needles.videos={self.videos} must be >= 0")
        if self.needle_frames < 1:
            raise ConfigError(f"data.synthetic.needles.needle_frames={self.needle_frames} must be >= 1")
        if not 1 <= self.max_needles <= 8:
            raise ConfigError(f"data.synthetic.needles.max_needles={self.max_needles} must be in [1, 8]")
        if not self.max_needles * self.needle_frames * 2 <= self.min_frames <= self.max_frames:
            raise ConfigError(f"data.synthetic.needles.min_frames={self.min_frames} must be in "
                              f"[2 x max_needles x needle_frames = {2 * self.max_needles * self.needle_frames}, "
                              f"max_frames={self.max_frames}]")


@dataclass
class SyntheticConfig:
    """The generated long-video QA set (moviechat/data/synthetic.py)."""

    num_videos: int = 480
    min_frames: int = 48
    max_frames: int = 96
    min_scene: int = 6
    max_scene: int = 16
    num_colors: int = 6
    noise: float = 0.5
    breakpoints: int = 2  # breakpoint questions per video ("now", and "previous" when there is one)
    seed: int = 0
    dir: Optional[str] = None  # where it is written; None: <run.output_dir>/data/synthetic-<settings hash>
    needles: NeedleConfig = field(default_factory=NeedleConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.min_frames <= self.max_frames:
            raise ConfigError(f"data.synthetic.min_frames={self.min_frames} must be in [1, max_frames={self.max_frames}]")
        if not 1 <= self.min_scene <= self.max_scene:
            raise ConfigError(f"data.synthetic.min_scene={self.min_scene} must be in [1, max_scene={self.max_scene}]")
        if not 2 <= self.num_colors <= 8:
            raise ConfigError(f"data.synthetic.num_colors={self.num_colors} must be in [2, 8]")
        if self.num_videos < 2:
            raise ConfigError(f"data.synthetic.num_videos={self.num_videos} must be >= 2")
        if self.needles.max_needles > self.num_colors:
            raise ConfigError(f"data.synthetic.needles.max_needles={self.needles.max_needles} must be <= "
                              f"data.synthetic.num_colors={self.num_colors} (each needle of a video has its own colour)")


@dataclass
class ConversationConfig:
    """How instruction and caption records become tokens (moviechat/data/conversation.py)."""

    labels: str = "original"  # original (the original preprocess's labels, exactly) | answers (assistant text only)
    # Captions (webvid, cc_sbu_align, laion): BOS, optionally a prompt around the video, then caption + end_sym.
    caption_prompts: list[str] = field(default_factory=list)  # each holds <ImageHere>; one is drawn per sample
    caption_prompts_file: Optional[str] = None  # or a file of them (Video-LLaMA's prompts/alignment_image.txt)
    caption_template: str = "{}"  # a drawn prompt is written into it ('###Human: {} ###Assistant: ' in stage 2)
    end_sym: str = "###"  # what ends a caption (the original model's end_sym)

    def __post_init__(self) -> None:
        if self.labels not in ("original", "answers"):
            raise ConfigError(f"data.conversation.labels={self.labels!r} must be 'original' or 'answers'")
        if self.caption_template.count("{}") != 1:
            raise ConfigError(f"data.conversation.caption_template={self.caption_template!r} must hold one '{{}}'")
        for prompt in self.caption_prompts:
            if prompt.count("<ImageHere>") != 1:
                raise ConfigError(f"data.conversation.caption_prompts: {prompt!r} must hold one <ImageHere>")


@dataclass
class MixturePart:
    """One dataset of a mixture: its name (metrics ``data/<name>``), builder, draw ratio and data settings."""

    name: str
    builder: str
    ratio: float
    data: "DataConfig"


@dataclass
class DataConfig:
    name: str = "synthetic"  # registry name: synthetic | moviechat1k | webvid | videochat_instruct | ... | mixture
    feature_kind: str = "tokens"  # what the store holds: eva (EVA features) | tokens (frame tokens)
    shards: Optional[str] = None  # brace pattern of tar shards, e.g. data/train-{00000..00009}.tar
    folder: Optional[str] = None  # or a folder of <key>.npy (+ <key>.json)
    annotations: Optional[str] = None  # folder of MovieChat-1K style per-video JSON
    val_fraction: float = 0.1  # share of videos held out (split by video, never by question); 0: none held out
    include_captions: bool = False  # the dense caption as one more (global) sample per video
    shuffle_buffer: int = 64
    num_workers: int = 0
    folder_fps: float = 1.0  # frame rate of folder features that have no .json beside them
    on_error: str = "raise"  # raise | skip (skipped samples are counted and reported)
    max_tokens: int = 512  # a conversation or caption sample's text tokens (the original's 512)
    # training batches of similar length (moviechat/data/length_grouping.py); None: on for instruction and caption
    # records (lengths vary), off for question sets (their order and losses as before)
    group_by_length: Optional[bool] = None
    group_window: int = 32  # micro-batches per grouping window (window x micro-batch samples are held at once)
    conversation: ConversationConfig = field(default_factory=ConversationConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # name: mixture -> {dataset name: {ratio, [builder], any key of data}}; an entry's unset keys are data's
    mixture: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ConfigError(f"data.max_tokens={self.max_tokens} must be >= 8")
        if (self.name == "mixture") != bool(self.mixture):
            raise ConfigError("data.mixture must list the datasets of data.name=mixture (and only then): "
                              f"data.name={self.name!r}, {len(self.mixture)} mixture entries")
        self.parts()  # each entry checked now, naming its key
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error={self.on_error!r} must be 'raise' or 'skip'")
        if self.feature_kind not in ("eva", "tokens"):
            raise ConfigError(f"data.feature_kind={self.feature_kind!r} must be 'eva' or 'tokens'")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in [0, 1) (0: no held-out videos)")
        if self.group_window < 1:
            raise ConfigError(f"data.group_window={self.group_window} must be >= 1 (micro-batches per window)")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0")

    def parts(self) -> list[MixturePart]:
        """The datasets this config trains on: each mixture entry (unset keys taken from ``data``), or itself."""
        if not self.mixture:
            return [MixturePart(self.name, self.name, 1.0, self)]
        base = {k: v for k, v in OmegaConf.to_container(OmegaConf.structured(self)).items() if k != "mixture"}
        out = []
        for name, entry in self.mixture.items():
            where = f"data.mixture.{name}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be a mapping of data keys, got {entry!r}")
            entry = dict(entry)
            ratio, builder = entry.pop("ratio", 1.0), entry.pop("builder", name)
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < float("inf"):
                raise ConfigError(f"{where}.ratio={ratio!r} must be a number > 0")
            if builder == "mixture" or "mixture" in entry:
                raise ConfigError(f"{where}: a mixture cannot hold a mixture")
            try:
                merged = OmegaConf.merge(OmegaConf.structured(DataConfig), base, {**entry, "name": builder})
                data = OmegaConf.to_object(merged)
            except OmegaConfBaseException as e:
                raise ConfigError(f"{where}.{getattr(e, 'full_key', '?')}: {first_line(e)}") from None
            except ValueError as e:  # the entry's own check names data.<key>: name the entry's key instead
                raise ConfigError(str(e).replace("data.", f"{where}.", 1) if "data." in str(e) else f"{where}: {e}") from None
            out.append(MixturePart(str(name), str(builder), float(ratio), data))
        return out
