"""The language model: any causal LM from a local folder, or a tiny random LLaMA; tokenizer with
``<ImageHere>``; freezing and optional LoRA (peft)."""

from __future__ import annotations

from typing import Iterable

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from moviechat.config import LLMConfig, LoraConfig
from moviechat.prompt import IMAGE_TOKEN, SEPARATOR, build_prompt

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def word_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word and punctuation run of ``corpus``.

    Used with the tiny random LLM, which has no tokenizer of its own: it is built from the prompts and
    the data set's texts, deterministically (sorted vocabulary).
    """
    splitter = pre_tokenizers.Whitespace()
    words = sorted({w for text in corpus for w, _ in splitter.pre_tokenize_str(text)})
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + [w for w in words if w not in _SPECIALS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def build_tokenizer(cfg: LLMConfig, corpus: Iterable[str] = ()):
    """The LLM's tokenizer (local folder) or a word tokenizer over ``corpus``; ``<ImageHere>`` added."""
    if cfg.path:
        tokenizer = AutoTokenizer.from_pretrained(cfg.path, local_files_only=True)
    else:
        tokenizer = word_tokenizer(corpus)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:  # LLaMA has none; the original pads with unk
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def run_tokenizer(cfg: LLMConfig, system_prompt: str, texts: Iterable[str]):
    """The tokenizer of a run: the LLM's own, or a word tokenizer over the prompt template and ``texts``."""
    return build_tokenizer(cfg, [build_prompt(system_prompt, ""), SEPARATOR, *texts])


def build_llm(cfg: LLMConfig, vocab_size: int) -> torch.nn.Module:
    """The causal LM in ``cfg.dtype``, its embeddings covering ``vocab_size`` tokens (with ``<ImageHere>``)."""
    dtype = TORCH_DTYPES[cfg.dtype]
    if cfg.path:
        llm = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype, local_files_only=True)
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
