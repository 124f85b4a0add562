"""Typed configuration: one dataclass tree, every default in one place, validated at load time.

A run's config is composed as: the schema defaults <- each file named in the experiment's ``defaults``
list (paths relative to the ``configs/`` folder, without ``.yaml``; the shipped ones where the file's own
folder has none) <- the experiment file itself <-
dotted command-line overrides (``memory.short_memory_merge=4``). Unknown keys, wrong types and
impossible combinations raise :class:`ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moviechat.common.atomic import write_text_atomic
from moviechat.config.errors import ConfigError, first_line, one_line
from moviechat.config.data import DataConfig
from moviechat.config.shipped import find_config
from moviechat.memory.config import MemoryConfig


# ---------------------------------------------------------------------------------------------- model


@dataclass
class VisionConfig:
    """EVA ViT-g as BLIP-2 uses it (224 px, patch 14, last of 40 blocks dropped); its features are taken
    before ``ln_vision``, which belongs to the model's image path (loaded from ``model.qformer_checkpoint``)."""

    img_size: int = 224
    patch_size: int = 14
    embed_dim: int = 1408
    depth: int = 39
    num_heads: int = 16
    mlp_ratio: float = 4.3637
    weights: Optional[str] = None  # eva_vit_g.pth as released, or a LAVIS BLIP-2 .pth (visual_encoder.*)
    # kept so that older run folders load: the ViT is the frozen feature encoder's
    # (moviechat.models.frame_encoders, used by extraction and by answering from video files), never the model's
    enabled: bool = False
    preprocess: str = "blip2"  # blip2 (CLIP mean/std; MovieChat inference) | moviechat1k_train (no normalisation)

    def __post_init__(self) -> None:
        if self.preprocess not in ("blip2", "moviechat1k_train"):
            raise ConfigError(f"model.vision.preprocess={self.preprocess!r} must be 'blip2' or 'moviechat1k_train'")
        if self.enabled:
            raise ConfigError("model.vision.enabled=true: the model holds no ViT; pixels are encoded by the frozen "
                              "feature encoder (moviechat extract-features, or moviechat answer --videos), with "
                              "model.vision.weights")

    @property
    def feature_shape(self) -> tuple[int, int]:
        """[N, D] of one frame's EVA features: the patches and the CLS token, by width."""
        return (self.img_size // self.patch_size) ** 2 + 1, self.embed_dim


@dataclass
class QFormerConfig:
    """A BLIP-2 Q-Former: learned queries cross-attending to an encoder's tokens."""

    num_hidden_layers: int = 12
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408
    num_query_tokens: int = 32
    dropout: float = 0.1  # hidden and attention dropout (BERT's default, as in BLIP-2)


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LLMConfig:
    """A causal LM from a local folder, or (``path: null``) a tiny random LLaMA of the sizes below."""

    path: Optional[str] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.llm.dtype={self.dtype!r} must be one of {DTYPES}")


@dataclass
class FreezeConfig:
    """Which parts are frozen; the original trains the video Q-Former, position embedding and projection."""

    vision: bool = True  # kept so that older run folders load: the ViT is never trained (false is refused)
    image_qformer: bool = True
    video_qformer: bool = False
    position_embedding: bool = False
    projection: bool = False
    llm: bool = True

    def __post_init__(self) -> None:
        if not self.vision:
            raise ConfigError("model.freeze.vision=false: the ViT is never trained (training reads precomputed "
                              "EVA features); the trainable parts are the Q-Formers, position embedding, projection "
                              "and LLM")


def _video_qformer() -> QFormerConfig:
    return QFormerConfig(num_hidden_layers=2, cross_attention_frequency=1, encoder_hidden_size=768)


@dataclass
class ModelConfig:
    name: str = "moviechat"  # registry name of the model builder
    vision: VisionConfig = field(default_factory=VisionConfig)
    image_qformer: QFormerConfig = field(default_factory=QFormerConfig)
    video_qformer: QFormerConfig = field(default_factory=_video_qformer)
    frame_position_rows: int = 32  # rows of the frame position embedding table
    llm: LLMConfig = field(default_factory=LLMConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    qformer_checkpoint: Optional[str] = None  # LAVIS BLIP-2 .pth (ln_vision, image Q-Former, query tokens)
    checkpoint: Optional[str] = None  # Video-LLaMA / MovieChat .pth or one of ours
    max_txt_len: int = 160
    prompt: str = "moviechat"  # moviechat (the original's ###Human/###Assistant) | chat (the tokenizer's template)
    system_prompt: str = (
        "You are able to understand the visual content that the user provides. "
        "Follow the instructions carefully and explain your answers in detail."
    )

    def frame_shape(self, kind: str) -> tuple[int, int]:
        """[N, D] of one frame the model reads: EVA features (``eva``) or frame tokens (``tokens``)."""
        if kind == "tokens":
            return self.image_qformer.num_query_tokens, self.image_qformer.hidden_size
        return self.vision.feature_shape

    def __post_init__(self) -> None:
        if self.prompt not in ("moviechat", "chat"):
            raise ConfigError(f"model.prompt={self.prompt!r} must be 'moviechat' or 'chat'")
        if self.prompt == "chat" and not self.llm.path:
            raise ConfigError("model.prompt=chat needs a tokenizer with a chat template: set model.llm.path "
                              "(the tiny random LLM's word tokenizer has none)")


# ------------------------------------------------------------------------------------ data, train, run


@dataclass
class TrainConfig:
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 10
    warmup_start_ratio: float = 0.0  # warm-up starts from lr * this (Video-LLaMA: warmup_lr 1e-6 / init_lr 3e-5)
    schedule: str = "cosine"  # cosine | constant (after warmup)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    max_steps: int = 100  # optimizer steps
    log_every: int = 10
    eval_every: int = 50  # and at the end; 0: only at the end
    eval_samples: int = 128  # held-out questions for the loss (all ranks together); 0: all
    eval_generate: int = 64  # held-out questions answered by generation for accuracy; 0: none
    max_new_tokens: int = 8
    save_every: int = 0  # checkpoint every N steps (0: only at the end and on SIGTERM/SIGINT)
    keep_last: int = 2  # checkpoints kept
    breakpoint_fraction: Optional[float] = None  # share of breakpoint questions in training; None: as annotated
    token_cache_mb: int = 2048  # in-memory cache of frame tokens (frozen image Q-Former, EVA inputs)
    token_cache_dir: Optional[str] = None  # also keep them on disk (reused across runs and sweeps)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if self.max_steps < 1:
            raise ConfigError(f"train.max_steps={self.max_steps} must be >= 1")
        for key in ("warmup_steps", "eval_every", "eval_samples", "eval_generate", "save_every", "token_cache_mb"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 0")
        if self.log_every < 1 or self.keep_last < 1:
            raise ConfigError(f"train.log_every={self.log_every} and train.keep_last={self.keep_last} must be >= 1")
        if not 0.0 <= self.warmup_start_ratio <= 1.0:
            raise ConfigError(f"train.warmup_start_ratio={self.warmup_start_ratio} must be in [0, 1]")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"train.schedule={self.schedule!r} must be 'cosine' or 'constant'")
        if self.breakpoint_fraction is not None and not 0.0 <= self.breakpoint_fraction <= 1.0:
            raise ConfigError(f"train.breakpoint_fraction={self.breakpoint_fraction} must be in [0, 1]")


@dataclass
class DeepSpeedConfig:
    """A DeepSpeed JSON (ZeRO stage, precision, batch, accumulation, clipping) and optional overrides."""

    config: str = "configs/deepspeed/zero0.json"
    zero_stage: Optional[int] = None
    micro_batch_size: Optional[int] = None  # per GPU / process
    gradient_accumulation_steps: Optional[int] = None

    def __post_init__(self) -> None:
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage={self.zero_stage} must be 0, 1, 2 or 3")
        for key in ("micro_batch_size", "gradient_accumulation_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"deepspeed.{key}={getattr(self, key)} must be >= 1")


@dataclass
class RunConfig:
    output_dir: str = "runs"
    name: Optional[str] = None  # run folder under output_dir; None: <experiment>-<date>-<time>
    seed: int = 42
    wandb: str = "offline"  # offline | online | disabled (metrics.jsonl is always written)
    wandb_project: str = "moviechat"

    def __post_init__(self) -> None:
        if self.wandb not in ("offline", "online", "disabled"):
            raise ConfigError(f"run.wandb={self.wandb!r} must be 'offline', 'online' or 'disabled'")
        if self.name is not None and (self.name in ("", ".", "..") or any(c in self.name for c in "/\\\0")):
            raise ConfigError(f"run.name={self.name!r} must be one folder name inside run.output_dir (no '/', '\\', "
                              f"'.' or '..')")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        try:
            self.memory.check_table(self.model.frame_position_rows)
        except ValueError as e:
            raise ConfigError(f"{e} (model.frame_position_rows={self.model.frame_position_rows})") from None


# ------------------------------------------------------------------------------------------- loading


def config_root(path: Path) -> Path:
    """The ``configs/`` folder a config file lives in (or its parent's parent when there is none)."""
    for parent in path.resolve().parents:
        if parent.name == "configs":
            return parent
    return path.resolve().parent.parent


def _read_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """The file's ``defaults`` (recursively, in order) followed by the file itself."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: defaults form a cycle: {' -> '.join(str(p) for p in seen + (path,))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors come in several types
        raise ConfigError(f"{path}: cannot parse YAML: {one_line(e)}") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{path}: must be a mapping of config sections")
    defaults = data.pop("defaults", [])
    if not OmegaConf.is_list(defaults) and not isinstance(defaults, list):
        raise ConfigError(f"{path}: defaults must be a list of config names, got {defaults!r}")
    layers: list[tuple[str, DictConfig]] = []
    for name in defaults:
        layers += _read_layers(_default_file(path, str(name)), seen + (path,))
    return layers + [(str(path), data)]


def _default_file(path: Path, name: str) -> Path:
    """A ``defaults`` entry of ``path``: beside it under its ``configs/`` folder, else a shipped config."""
    own = config_root(path) / f"{name}.yaml"
    if own.is_file():
        return own
    try:
        return find_config(name)
    except ConfigError:
        raise ConfigError(f"{path}: defaults entry {name!r}: config file not found: {own} (nor a shipped config "
                          f"of that name)") from None


def compose(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> DictConfig:
    """Merge schema defaults, the file and its defaults, and overrides; errors name the source and key."""
    merged = OmegaConf.structured(Config)
    layers = _read_layers(find_config(path)) if path is not None else []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
    if overrides:
        try:
            layers.append(("command-line overrides", OmegaConf.from_dotlist(list(overrides))))
        except Exception as e:  # a value YAML cannot read, e.g. an unclosed [
            bad = next((o for o in overrides if _unreadable(o)), overrides[0])
            raise ConfigError(f"command-line override {bad!r}: not a value YAML can read: {one_line(e)}") from None
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{source}: {getattr(e, 'full_key', '?')}: {first_line(e)}") from None
    return merged


def _unreadable(item: str) -> bool:
    try:
        OmegaConf.from_dotlist([item])
        return False
    except Exception:
        return True


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    """The validated config of an experiment file (None: the schema defaults) plus overrides."""
    merged = compose(path, overrides)
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "?")
        raise ConfigError(f"{_blame(path, overrides, str(key))}: {key}: {first_line(e)}") from None
    except ConfigError as e:
        raise ConfigError(f"{_blame(path, overrides, str(e))}: {e}") from None
    except ValueError as e:  # a section's own check (memory.*, ...) already names its key
        raise ConfigError(f"{_blame(path, overrides, str(e))}: {e}") from None
    assert isinstance(cfg, Config)
    return cfg


def _blame(path, overrides: Sequence[str], message: str) -> str:
    """Where a bad value came from: the command-line override that sets a key the message names, else the file."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if message.startswith(key) or f"{key}=" in message or f"{key} " in message:
            return f"command-line override {item!r}"
    return str(path)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (a reader never sees half a file)."""
    write_text_atomic(Path(path), to_yaml(cfg))


def as_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (for logging and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
