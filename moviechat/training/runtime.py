"""The process around a run: seeds and RNG state, the DeepSpeed config, and the environment record."""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moviechat.config import Config, ConfigError, find_config


def deepspeed_config(cfg: Config) -> dict[str, Any]:
    """The DeepSpeed JSON named by ``deepspeed.config`` with the config's overrides applied."""
    try:
        path = find_config(cfg.deepspeed.config, "deepspeed")
    except ConfigError as e:
        raise ConfigError(f"deepspeed.config={cfg.deepspeed.config!r}: {e}") from None
    ds = json.loads(path.read_text())
    if cfg.deepspeed.zero_stage is not None:
        ds.setdefault("zero_optimization", {})["stage"] = cfg.deepspeed.zero_stage
    if cfg.deepspeed.micro_batch_size is not None:
        ds["train_micro_batch_size_per_gpu"] = cfg.deepspeed.micro_batch_size
    if cfg.deepspeed.gradient_accumulation_steps is not None:
        ds["gradient_accumulation_steps"] = cfg.deepspeed.gradient_accumulation_steps
    ds.pop("train_batch_size", None)  # derived: micro batch x accumulation x world size
    ds["zero_allow_untested_optimizer"] = True  # our torch AdamW: no fused-op build on CPU
    return ds


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment(world_size: int) -> dict[str, Any]:
    from importlib.metadata import version

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "host": platform.node(),
        "torch": torch.__version__, "transformers": version("transformers"), "deepspeed": version("deepspeed"),
        "peft": version("peft"), "timm": version("timm"), "cuda": torch.cuda.is_available(),
        "world_size": world_size, "git_commit": commit, "argv": sys.argv,
    }
