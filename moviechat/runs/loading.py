"""Load a trained model back from a run folder or one of its checkpoints (any ZeRO stage)."""

from __future__ import annotations

from pathlib import Path

import torch

from moviechat.runs.checkpoints import check_state_files, load_state, resolve_checkpoint
from moviechat.config import Config, load_config


def trained_state(root: Path, tag: str, trust: bool = False) -> dict[str, torch.Tensor]:
    """The trained parameters of a checkpoint in fp32; ZeRO shards are consolidated by DeepSpeed's utility
    (its files checked first: it loads them with ``weights_only=False``)."""
    folder = root / tag
    check_state_files(sorted(folder.glob("*.pt")), trust)
    if any(folder.glob("zero_pp_rank_*_optim_states.pt")) or any(folder.glob("bf16_zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag, exclude_frozen_parameters=True)
    else:  # ZeRO stage 0: the module's trained parameters are saved as they are
        state = load_state(folder / "mp_rank_00_model_states.pt", trust)["module"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def build_from_config(cfg: Config, tokenizer):
    """The model of a run's config with its frozen parts as at the run's start (same seed, same weights)."""
    import moviechat.models  # noqa: F401  (registers the builder)
    from moviechat.common.registry import MODELS

    torch.manual_seed(cfg.run.seed)
    return MODELS.build(cfg.model.name, cfg.model, cfg.memory, tokenizer, verbose=False)


def load_run(path: str | Path, trust: bool = False):
    """(config, tokenizer, model in eval mode, checkpoint folder) of a run folder or checkpoint; ``trust``
    loads checkpoint files that need more than plain data (``moviechat.common.safe_load``)."""
    from transformers import AutoTokenizer

    root, tag = resolve_checkpoint(path)
    run_dir = root.parent
    cfg = load_config(run_dir / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer", local_files_only=True)
    model = build_from_config(cfg, tokenizer)
    state = trained_state(root, tag, trust)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(state))
    if missing:
        raise ValueError(f"{root / tag}: trained parameters missing from the checkpoint: {', '.join(missing[:6])}")
    unexpected = sorted(set(state) - set(model.state_dict()))
    if unexpected:
        raise ValueError(f"{root / tag}: checkpoint parameters the model does not have: {', '.join(unexpected[:6])}")
    model.load_state_dict(state, strict=False)
    return cfg, tokenizer, model.eval(), root / tag


def load_with_config(checkpoint: str | Path, config: str | Path):
    """(config, tokenizer, model in eval mode) of a MovieChat / Video-LLaMA ``.pth`` (or one of ours) loaded into
    the model of an experiment config (``model.checkpoint`` set to it); the LLM's tokenizer from
    ``model.llm.path``."""
    from moviechat.config.shipped import find_config
    from moviechat.text.tokenizers import build_tokenizer

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    found = find_config(config)
    cfg = load_config(found, [f"model.checkpoint={Path(checkpoint).resolve()}"])
    if cfg.model.llm.path:
        tokenizer = build_tokenizer(cfg.model.llm)
    elif (found.parent / "tokenizer").is_dir():  # a run's config.yaml: the run's own tokenizer beside it
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(found.parent / "tokenizer", local_files_only=True)
    else:
        raise ValueError(f"{config}: model.llm.path is empty and no tokenizer/ is beside it; a released checkpoint "
                         f"needs the LLM it was trained with (a local Hugging Face folder)")
    return cfg, tokenizer, build_from_config(cfg, tokenizer).eval()
