"""The language model: any causal LM from a local folder, or a tiny random LLaMA; freezing and optional
LoRA (peft). Its tokenizer: ``moviechat.text.tokenizers``."""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from moviechat.config import LLMConfig, LoraConfig

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_llm(cfg: LLMConfig, vocab_size: int, load_weights: bool = True) -> torch.nn.Module:
    """The causal LM in ``cfg.dtype``, its embeddings covering ``vocab_size`` tokens (with ``<ImageHere>``);
    without ``load_weights``, a folder's architecture only (its config.json; sizing a run reads no weights)."""
    dtype = TORCH_DTYPES[cfg.dtype]
    if cfg.path and load_weights:
        llm = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype, local_files_only=True)
    elif cfg.path:
        llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.path, local_files_only=True), dtype=dtype)
    else:
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
            max_position_embeddings=2048, tie_word_embeddings=False,
        )
        llm = LlamaForCausalLM._from_config(config, dtype=dtype)  # built in dtype: no fp32 copy of a 7B model
    old = llm.get_input_embeddings().weight.shape[0]
    if old < vocab_size:
        # New rows (<ImageHere>) are the mean embedding, deterministically: the row is never looked up (the
        # video replaces it), and a frozen LLM must come out of every build bitwise the same.
        llm.resize_token_embeddings(vocab_size, mean_resizing=False)
        with torch.no_grad():
            for weights in {id(m.weight): m.weight for m in (llm.get_input_embeddings(), llm.get_output_embeddings())
                            if m is not None}.values():
                weights[old:] = weights[:old].mean(0)
    return llm


def apply_lora(llm: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """Wrap the LLM with LoRA adapters (trainable); the base weights stay frozen."""
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(llm, peft_cfg)
