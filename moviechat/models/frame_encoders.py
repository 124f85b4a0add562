"""The frozen encoders that turn frames into EVA features or frame tokens (feature pipeline, inference)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from moviechat.config import Config
from moviechat.models.weight_names import load_weights
from moviechat.models.qformer import FrameTokenEncoder, build_qformer
from moviechat.models.vision import build_vision, preprocess_frames


class FeatureEncoder(nn.Module):
    """EVA ViT (features before ``ln_vision``), and for frame tokens the image path after it."""

    def __init__(self, cfg: Config, frame_tokens: Optional[FrameTokenEncoder] = None, preprocess: Optional[str] = None):
        super().__init__()
        self.vision = build_vision(cfg.model.vision)
        self.frame_tokens = frame_tokens
        self.img_size = cfg.model.vision.img_size
        self.preprocess = preprocess or cfg.model.vision.preprocess

    @torch.no_grad()
    def forward(self, frames: np.ndarray, batch_size: int, device: torch.device) -> torch.Tensor:
        """uint8 frames [T, H, W, 3] -> fp16 EVA features before ``ln_vision`` [T, 257, 1408], or frame
        tokens [T, 32, 768] (CPU)."""
        out = []
        for start in range(0, len(frames), batch_size):
            batch = torch.from_numpy(frames[start : start + batch_size])
            out.append(self.encode(preprocess_frames(batch, self.img_size, self.preprocess), device))
        return torch.cat(out)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Preprocessed pixels [B, 3, S, S] -> fp16 EVA features or frame tokens (CPU), in the encoder's dtype."""
        dtype = next(self.vision.parameters()).dtype
        features = self.vision(pixels.to(device, dtype))
        return (self.frame_tokens(features) if self.frame_tokens is not None else features).half().cpu()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build under ``seed`` without touching the caller's random state (extraction is reproducible, from
    ``run.seed``, when weights are not given and the encoder is randomly initialised)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_frame_token_encoder(cfg: Config) -> FrameTokenEncoder:
    """The frozen image path (``ln_vision`` + image Q-Former) with the weights of ``model.qformer_checkpoint``
    (a LAVIS BLIP-2 .pth: both must be in it), in eval mode."""
    with seeded(cfg.run.seed):  # without a checkpoint: the same random weights in every process and run
        encoder = FrameTokenEncoder(nn.LayerNorm(cfg.model.vision.embed_dim), build_qformer(cfg.model.image_qformer))
    if cfg.model.qformer_checkpoint:
        print(load_weights(encoder, cfg.model.qformer_checkpoint, require=("image_qformer", "ln_vision")))
    else:
        print("warning: model.qformer_checkpoint is not set: ln_vision and the image Q-Former are randomly initialised")
    return encoder.eval()


def load_encoder(cfg: Config, frame_tokens: bool, device: torch.device, preprocess: Optional[str] = None) -> FeatureEncoder:
    """The encoder with the config's weights (``model.vision.weights``, ``model.qformer_checkpoint``)."""
    tokens = load_frame_token_encoder(cfg) if frame_tokens else None
    with seeded(cfg.run.seed + 1):  # the ViT's random weights (none given) are reproducible too
        encoder = FeatureEncoder(cfg, tokens, preprocess).eval()
    if cfg.model.vision.weights:
        print(load_weights(encoder, cfg.model.vision.weights, require=("vision",), vision_depth=cfg.model.vision.depth))
    else:
        print("warning: model.vision.weights is not set: the ViT is randomly initialised")
    return encoder.to(device)
