"""The frozen encoders that turn frames into EVA features or frame tokens (feature pipeline, inference)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from moviechat.config import Config
from moviechat.models.weight_names import load_weights
from moviechat.models.qformer import QFormer, build_qformer
from moviechat.models.vision import build_vision, preprocess_frames


class FeatureEncoder(nn.Module):
    """EVA ViT + ln_vision (and the image Q-Former for frame tokens), named as in MovieChatModel."""

    def __init__(self, cfg: Config, image_qformer: Optional[QFormer] = None):
        super().__init__()
        self.vision = build_vision(cfg.model.vision)
        self.image_qformer = image_qformer
        self.img_size = cfg.model.vision.img_size

    @torch.no_grad()
    def forward(self, frames: np.ndarray, batch_size: int, device: torch.device) -> torch.Tensor:
        """uint8 frames [T, H, W, 3] -> fp16 EVA features [T, 257, 1408] or frame tokens [T, 32, 768] (CPU)."""
        out = []
        for start in range(0, len(frames), batch_size):
            pixels = preprocess_frames(torch.from_numpy(frames[start : start + batch_size]), self.img_size).to(device)
            features = self.vision(pixels)
            out.append((self.image_qformer(features) if self.image_qformer is not None else features).half().cpu())
        return torch.cat(out)


def load_image_qformer(cfg: Config) -> QFormer:
    """The frozen image Q-Former with the weights of ``model.qformer_checkpoint`` (LAVIS names), in eval mode."""
    holder = nn.Module()  # gives the Q-Former the ``image_qformer.`` prefix that checkpoints use
    holder.image_qformer = build_qformer(cfg.model.image_qformer)
    if cfg.model.qformer_checkpoint:
        print(load_weights(holder, cfg.model.qformer_checkpoint, require=("image_qformer",)))
    else:
        print("warning: model.qformer_checkpoint is not set: the image Q-Former is randomly initialised")
    return holder.image_qformer.eval()


def load_encoder(cfg: Config, frame_tokens: bool, device: torch.device) -> FeatureEncoder:
    """The encoder with the config's weights (``model.vision.weights``, ``model.qformer_checkpoint``)."""
    encoder = FeatureEncoder(cfg, load_image_qformer(cfg) if frame_tokens else None).eval()
    if cfg.model.vision.weights:
        print(load_weights(encoder, cfg.model.vision.weights, require=("vision",), vision_depth=cfg.model.vision.depth))
    else:
        print("warning: model.vision.weights is not set: the ViT is randomly initialised")
    return encoder.to(device)
