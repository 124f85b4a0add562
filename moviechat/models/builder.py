"""Builds a MovieChat model from its typed config (the only place that knows the sizes)."""

from __future__ import annotations

from torch import nn

from moviechat.config import ModelConfig
from moviechat.memory import MemoryConfig
from moviechat.models.weight_names import load_weights as load_weight_file
from moviechat.models.llm import apply_lora, build_llm
from moviechat.models.moviechat import MovieChatModel
from moviechat.models.qformer import build_qformer
from moviechat.text.prompt import IMAGE_TOKEN
from moviechat.common.registry import MODELS


@MODELS.register("moviechat")
def build_moviechat(cfg: ModelConfig, memory: MemoryConfig, tokenizer, verbose: bool = True, load_weights: bool = True,
                    vocab_size: int = 0) -> MovieChatModel:
    """The model of ``cfg`` with weights from its checkpoints, frozen parts set, LoRA applied if asked.

    Without ``load_weights`` no weight file is read (sizing a run on fake tensors, ``moviechat plan``);
    ``vocab_size`` widens the LLM's vocabulary past the tokenizer's (a random LLM of a real one's shape).
    """
    image_qformer = build_qformer(cfg.image_qformer)
    video_qformer = build_qformer(cfg.video_qformer)
    if cfg.video_qformer.encoder_hidden_size != cfg.image_qformer.hidden_size:
        raise ValueError(f"model.video_qformer.encoder_hidden_size={cfg.video_qformer.encoder_hidden_size} must equal "
                         f"model.image_qformer.hidden_size={cfg.image_qformer.hidden_size} (it reads frame tokens)")
    llm = build_llm(cfg.llm, vocab_size=max(len(tokenizer), vocab_size), load_weights=load_weights)
    model = MovieChatModel(
        ln_vision=nn.LayerNorm(cfg.vision.embed_dim),
        image_qformer=image_qformer,
        video_qformer=video_qformer,
        frame_position_embedding=nn.Embedding(cfg.frame_position_rows, cfg.image_qformer.hidden_size),
        projection=nn.Linear(cfg.video_qformer.hidden_size, llm.config.hidden_size),
        llm=llm,
        memory_cfg=memory,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    # The video Q-Former, position embedding and projection have no other source than model.checkpoint.
    loads = [(cfg.qformer_checkpoint, ("image_qformer", "ln_vision")),
             (cfg.checkpoint, ("video_qformer", "frame_position_embedding", "projection"))]
    for path, require in loads:
        if path and load_weights:
            report = load_weight_file(model, path, require=require, vision_depth=cfg.vision.depth)
            if verbose:
                print(report)
    if cfg.llm.lora.enabled:
        model.llm = apply_lora(model.llm, cfg.llm.lora)
    model.set_frozen({
        "ln_vision": cfg.freeze.image_qformer, "image_qformer": cfg.freeze.image_qformer,
        "video_qformer": cfg.freeze.video_qformer,
        "frame_position_embedding": cfg.freeze.position_embedding, "projection": cfg.freeze.projection,
        "llm": cfg.freeze.llm,
    })
    if verbose:
        print(model.parameter_summary())
    return model
