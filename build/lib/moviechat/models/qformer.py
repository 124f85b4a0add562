"""Q-Formers (image and video) on ``transformers``' BLIP-2 Q-Former, with converters to and from the
names of LAVIS BLIP-2 and Video-LLaMA / MovieChat checkpoints."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from moviechat.config import QFormerConfig


class QFormer(nn.Module):
    """Learned query tokens that cross-attend to encoder tokens; only the query path (no text input)."""

    def __init__(self, num_query_tokens: int, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
                 intermediate_size: int, cross_attention_frequency: int, encoder_hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.empty(1, num_query_tokens, hidden_size).normal_(std=0.02))
        config = Blip2QFormerConfig(
            hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size, cross_attention_frequency=cross_attention_frequency,
            encoder_hidden_size=encoder_hidden_size, use_qformer_text_input=False,
            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        )
        self.bert = Blip2QFormerModel(config)

    @property
    def num_query_tokens(self) -> int:
        return self.query_tokens.shape[1]

    def forward(self, encoder_hidden_states: Tensor, encoder_attention_mask: Tensor | None = None) -> Tensor:
        """Encoder tokens [B, N, encoder_hidden] (mask [B, N], 1 = attend) -> query outputs [B, queries, hidden]."""
        queries = self.query_tokens.expand(encoder_hidden_states.shape[0], -1, -1)
        out = self.bert(
            query_embeds=queries,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
        )
        return out.last_hidden_state


def encode_frame_tokens(ln_vision: nn.LayerNorm, image_qformer: QFormer, features: Tensor, chunk: int = 256) -> Tensor:
    """The frozen image path: EVA features before ``ln_vision`` [T, N, E] -> ``image_qformer(ln_vision(x))``
    = frame tokens [T, queries, hidden], ``chunk`` frames at a time (a long video's frames do not fit one
    batch), in the Q-Former's dtype and on its device."""
    param = image_qformer.query_tokens
    return torch.cat([image_qformer(ln_vision(x.to(param.device, param.dtype))) for x in features.split(chunk)])


class FrameTokenEncoder(nn.Module):
    """``ln_vision`` + image Q-Former under their checkpoint names, for the feature pipeline and converters."""

    def __init__(self, ln_vision: nn.LayerNorm, image_qformer: QFormer):
        super().__init__()
        self.ln_vision = ln_vision
        self.image_qformer = image_qformer

    def forward(self, features: Tensor) -> Tensor:
        return encode_frame_tokens(self.ln_vision, self.image_qformer, features)


def build_qformer(cfg: QFormerConfig) -> QFormer:
    return QFormer(cfg.num_query_tokens, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
                   cfg.intermediate_size, cfg.cross_attention_frequency, cfg.encoder_hidden_size, cfg.dropout)


# (ours, LAVIS) name fragments inside ``bert.`` of a Q-Former; applied in order.
_RENAMES = (
    ("layernorm.", "embeddings.LayerNorm."),
    (".attention.attention.", ".attention.self."),
    (".crossattention.attention.", ".crossattention.self."),
)
# LAVIS keys of the text path, which the query-only Q-Former does not have.
_TEXT_ONLY = ("embeddings.word_embeddings.", "embeddings.position_embeddings.", "embeddings.position_ids")


def _is_text_only(name: str) -> bool:
    if name.startswith(_TEXT_ONLY):
        return True
    parts = name.split(".")  # encoder.layer.{i}.intermediate.dense.weight / encoder.layer.{i}.output.*
    return len(parts) > 3 and parts[0] == "encoder" and parts[3] in ("intermediate", "output")


def qformer_from_original(
    state: dict[str, Tensor], module_prefix: str, query_key: str
) -> tuple[dict[str, Tensor], list[str]]:
    """Convert a LAVIS-style Q-Former (``{module_prefix}bert.*``, ``{module_prefix}cls.*``, ``query_key``)
    to :class:`QFormer` names. Returns the converted entries and the text-only keys that were ignored.

    Image Q-Former: ``module_prefix="Qformer."``, ``query_key="query_tokens"``; video Q-Former of
    Video-LLaMA / MovieChat: ``"video_Qformer."``, ``"video_query_tokens"``.
    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    bert = module_prefix + "bert."
    for key, value in state.items():
        if key == query_key:
            out["query_tokens"] = value
        elif key.startswith(module_prefix + "cls."):
            ignored.append(key)
        elif key.startswith(bert):
            name = key[len(bert):]
            if _is_text_only(name):
                ignored.append(key)
                continue
            for ours, theirs in _RENAMES:
                name = name.replace(theirs, ours)
            out["bert." + name] = value
    return out, ignored


def qformer_to_original(state: dict[str, Tensor], module_prefix: str, query_key: str) -> dict[str, Tensor]:
    """Inverse of :func:`qformer_from_original` for a :class:`QFormer` state dict."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "query_tokens":
            out[query_key] = value
        elif key.startswith("bert."):
            name = key[len("bert."):]
            for ours, theirs in _RENAMES:
                name = name.replace(ours, theirs)
            out[module_prefix + "bert." + name] = value
    return out
