"""EVA ViT-g feature encoder (timm), as BLIP-2 / MovieChat use it, and the frame preprocessing choices.

Only the feature pipeline and video-file inference run it: training reads the features it wrote. Output:
the ViT's block outputs **before** ``ln_vision`` (the convention of the MovieChat-1K release), [B, 257,
1408] for 224 px frames with the original sizes (1 class token + 16 x 16 patches). ``ln_vision`` belongs
to the model's frozen image path (``MovieChatModel.ln_vision``), see docs/architecture.md, "Conventions".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moviechat.config import VisionConfig

EVA_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's mean and std, as BLIP-2's processor uses them
EVA_STD = (0.26862954, 0.26130258, 0.27577711)
# blip2: resize (bicubic), [0, 1], CLIP mean/std: what MovieChat's inference feeds the ViT.
# moviechat1k_train: resize, [0, 1], no normalisation: what the released MovieChat-1K train features used.
PREPROCESSING = ("blip2", "moviechat1k_train")


class EvaVisionEncoder(nn.Module):
    """EVA ViT without its final norm (BLIP-2 reads the last block's tokens; ``ln_vision`` comes after)."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        # timm is imported here, not at the top: it imports wandb, seconds of start-up for every process that
        # loads the model without a ViT (training and answering on features)
        from timm.models.eva import Eva

        self.vit = Eva(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, qkv_bias=True, qkv_fused=True, use_abs_pos_emb=True, use_rot_pos_emb=False,
            num_classes=0, global_pool="", use_post_transformer_norm=False,
        )

    @property
    def num_tokens(self) -> int:
        return self.vit.patch_embed.num_patches + 1

    def forward(self, pixels: Tensor) -> Tensor:
        """Preprocessed pixels [B, 3, H, W] -> features before ``ln_vision`` [B, 1 + patches, embed_dim]."""
        return self.vit.forward_features(pixels)


def build_vision(cfg: VisionConfig) -> EvaVisionEncoder:
    return EvaVisionEncoder(cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio)


# Keys of EVA-CLIP / LAVIS checkpoints that BLIP-2 never uses (its features skip the final norm/head).
_UNUSED_VIT_PREFIXES = ("norm.", "fc_norm.", "head.", "lm_head.")
_BARE_VIT_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.")


def is_bare_vit(state: dict[str, Tensor]) -> bool:
    """True for ``eva_vit_g.pth`` as released: the ViT's own state dict, without a ``visual_encoder.`` prefix."""
    return any(k.startswith(_BARE_VIT_KEYS) for k in state) and not any(k.startswith("visual_encoder.") for k in state)


def vision_from_lavis(state: dict[str, Tensor], depth: int) -> tuple[dict[str, Tensor], list[str]]:
    """Map ``visual_encoder.*`` (LAVIS BLIP-2) to :class:`EvaVisionEncoder` names.

    Returns the converted entries and the source keys deliberately left out (unused norm/head, blocks
    past ``depth``: BLIP-2 drops EVA-g's last block). Keys of other parts are not looked at.
    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if key.startswith("visual_encoder."):
            name = key[len("visual_encoder."):]
            block = name.split(".")[1] if name.startswith("blocks.") else None
            if name.startswith(_UNUSED_VIT_PREFIXES) or (block is not None and int(block) >= depth):
                ignored.append(key)
            else:
                out["vit." + name] = value
    return out, ignored


def vision_to_lavis(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`vision_from_lavis` for an :class:`EvaVisionEncoder` state dict."""
    return {"visual_encoder." + k[len("vit."):]: v for k, v in state.items() if k.startswith("vit.")}


def preprocess_frames(frames: Tensor, img_size: int, preprocess: str = "blip2") -> Tensor:
    """uint8 frames [T, H, W, 3] -> float pixels [T, 3, img_size, img_size] as ``preprocess`` names."""
    if preprocess not in PREPROCESSING:
        raise ValueError(f"preprocess={preprocess!r} must be one of {PREPROCESSING}")
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    x = nn.functional.interpolate(x, size=(img_size, img_size), mode="bicubic", align_corners=False).clamp(0, 1)
    if preprocess == "moviechat1k_train":
        return x
    mean = torch.tensor(EVA_MEAN, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(EVA_STD, dtype=x.dtype)[None, :, None, None]
    return (x - mean) / std
