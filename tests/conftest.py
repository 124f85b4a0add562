import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "experiments" / "tiny_synthetic.yaml"
TINY_CORPUS = ["red green blue yellow what color is the ball how many dogs first second", "0 1 2 3 4 5 6 7 8 9"]


@pytest.fixture
def tiny_cfg():
    from moviechat.config import load_config

    return load_config(TINY, ["model.freeze.llm=true"])  # the original's freezing; tiny_synthetic trains its random LLM


def tiny_tokenizer(cfg):
    from moviechat.text.tokenizers import run_tokenizer

    return run_tokenizer(cfg.model.llm, cfg.model.system_prompt, TINY_CORPUS)


@pytest.fixture
def tokenizer(tiny_cfg):
    return tiny_tokenizer(tiny_cfg)


@pytest.fixture
def tiny_model(tiny_cfg, tokenizer):
    from moviechat.models import build_moviechat

    torch.manual_seed(0)
    return build_moviechat(tiny_cfg.model, tiny_cfg.memory, tokenizer, verbose=False).eval()  # deterministic
