"""Shared set-up for benchmarks: a config, its tokenizer and model, batches from its data."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from moviechat.config import load_config
from moviechat.data import Collator, build_datasets
from moviechat.models import build_moviechat
from moviechat.text.tokenizers import run_tokenizer

TINY = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "tiny_synthetic.yaml"


def setup(cfg_path: Path, overrides: list[str], output_dir: str):
    cfg = load_config(cfg_path, overrides + [f"run.output_dir={output_dir}"])
    source, train, _ = build_datasets(cfg)
    tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, source.texts())
    collate = Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, cfg.data.feature_kind, prompt=cfg.model.prompt)
    return cfg, train, tokenizer, collate


def timed(fn, repeats: int) -> float:
    """Seconds per call, best of ``repeats`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def build_model(cfg, tokenizer):
    torch.manual_seed(0)
    return build_moviechat(cfg.model, cfg.memory, tokenizer, verbose=False)
