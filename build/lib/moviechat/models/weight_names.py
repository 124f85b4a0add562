"""Whole-model weight names: ours <-> LAVIS BLIP-2 / Video-LLaMA / MovieChat, and loading with a report.

Original names: ``visual_encoder.*``, ``ln_vision.*``, ``Qformer.bert.*``, ``query_tokens`` (BLIP-2);
``video_Qformer.bert.*``, ``video_query_tokens``, ``video_frame_position_embedding.weight``,
``llama_proj.*``, ``llama_model.*`` (Video-LLaMA / MovieChat). Text-only Q-Former weights of those
checkpoints are ignored and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from torch import Tensor, nn

from moviechat.common.atomic import torch_save_atomic
from moviechat.common.safe_load import load_pt
from moviechat.models.qformer import qformer_from_original, qformer_to_original
from moviechat.models.vision import is_bare_vit, vision_from_lavis, vision_to_lavis

OUR_FORMAT = "moviechat-framework/1"

# (our prefix, original prefix) for parts whose names only move.
_PLAIN = (
    ("ln_vision.", "ln_vision."),
    ("frame_position_embedding.", "video_frame_position_embedding."),
    ("projection.", "llama_proj."),
    ("llm.", "llama_model."),
)


def _sub(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _add(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state.items()}


def to_original_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> the original's names (for export to MovieChat / Video-LLaMA / LAVIS code)."""
    out = dict(vision_to_lavis(_sub(state, "vision.")))
    out.update(qformer_to_original(_sub(state, "image_qformer."), "Qformer.", "query_tokens"))
    out.update(qformer_to_original(_sub(state, "video_qformer."), "video_Qformer.", "video_query_tokens"))
    for ours, theirs in _PLAIN:
        out.update(_add(theirs, _sub(state, ours)))
    return out


def from_original_names(state: dict[str, Tensor], vision_depth: int) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Original names -> ours. Returns (converted, ignored text-only/unused keys, keys not understood).

    ``eva_vit_g.pth`` as released (the ViT's own names, no prefix) is read as ``visual_encoder.*``.
    """
    if is_bare_vit(state):
        state = {f"visual_encoder.{k}": v for k, v in state.items()}
    vision, ignored = vision_from_lavis(state, vision_depth)
    out = _add("vision.", vision)
    image, ign = qformer_from_original(state, "Qformer.", "query_tokens")
    out.update(_add("image_qformer.", image))
    ignored += ign
    video, ign = qformer_from_original(state, "video_Qformer.", "video_query_tokens")
    out.update(_add("video_qformer.", video))
    ignored += ign
    for ours, theirs in _PLAIN:
        out.update(_add(ours, _sub(state, theirs)))
    known = ("visual_encoder.", "ln_vision.", "Qformer.", "video_Qformer.", "query_tokens", "video_query_tokens") + tuple(
        t for _, t in _PLAIN
    )
    unknown = [k for k in state if not k.startswith(known)]
    return out, ignored, unknown


@dataclass
class LoadReport:
    path: str
    source_format: str
    loaded: int = 0
    unexpected: list[str] = field(default_factory=list)  # file keys the model has no place for
    ignored: list[str] = field(default_factory=list)  # text-only / unused keys skipped on purpose

    def __str__(self) -> str:
        text = (f"loaded {self.loaded} tensors from {self.path} ({self.source_format}); "
                f"{len(self.ignored)} text-only/unused keys ignored; {len(self.unexpected)} unexpected")
        if self.unexpected:
            text += f": {', '.join(self.unexpected[:5])}{' ...' if len(self.unexpected) > 5 else ''}"
        return text


def read_state(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """The state dict of a checkpoint file and its format ("ours" or "original")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), "ours"
    ckpt = load_pt(path)  # released .pth files are plain state dicts: no code runs to read them
    if isinstance(ckpt, dict) and ckpt.get("format") == OUR_FORMAT:
        return ckpt["model"], "ours"
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        return ckpt["model"], "original"
    if isinstance(ckpt, dict) and all(isinstance(v, Tensor) for v in ckpt.values()):
        return ckpt, "original"
    raise ValueError(f"{path}: not a checkpoint this framework reads (expected {{'model': state_dict}})")


def load_weights(model: nn.Module, path: str | Path, require: Sequence[str] = (), vision_depth: int = 39) -> LoadReport:
    """Load a checkpoint (ours, LAVIS BLIP-2 or Video-LLaMA / MovieChat) into ``model``.

    Every parameter of the parts named in ``require`` must come from the file, else ValueError lists
    the missing keys; anything else in the model keeps its value. Shape mismatches raise.
    """
    state, fmt = read_state(path)
    ignored: list[str] = []
    unknown: list[str] = []
    if fmt == "original":
        state, ignored, unknown = from_original_names(state, vision_depth)
    own = model.state_dict()
    missing = [k for k in own if k.split(".")[0] in require and k not in state]
    if missing:
        raise ValueError(f"{path}: required weights missing for {sorted({k.split('.')[0] for k in missing})}: "
                         f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    loadable = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(loadable, strict=False)
    return LoadReport(str(path), fmt, loaded=len(loadable), unexpected=unknown + [k for k in state if k not in own],
                      ignored=ignored)


def save_weights(state: dict[str, Tensor], path: str | Path) -> None:
    """Write ``{"format", "model"}`` atomically."""
    torch_save_atomic({"format": OUR_FORMAT, "model": {k: v.detach().cpu() for k, v in state.items()}}, path)
