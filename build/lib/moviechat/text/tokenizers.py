"""Tokenizers of a run: the LLM's own from its folder, or (tiny random LLMs) a word tokenizer over the data's
texts; ``<ImageHere>`` added either way. Data preview and the trainer build them alike."""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from moviechat.config import LLMConfig
from moviechat.text.prompt import IMAGE_TOKEN, SEPARATOR, build_prompt

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
