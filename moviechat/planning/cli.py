"""``moviechat plan``: will a run fit, and how long will it take, before it starts."""

from __future__ import annotations

import argparse
import json
from typing import Optional

from moviechat.common.atomic import write_text_atomic
from moviechat.common.errors import stop_if_only_checking
from moviechat.config import load_config
from moviechat.config.shipped import find_config
from moviechat.planning.cards import CARDS, PlanError, find_card
from moviechat.planning.plan import Layout, check_context, default_frames, default_text_tokens, make_plan, measure
from moviechat.planning.report import render, sizing_table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moviechat plan", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cfg", required=True, help="experiment config (a file or a shipped name)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. deepspeed.micro_batch_size=2")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu", default=None, help=f"card, or several with commas: {', '.join(CARDS)} (default a100-80g)")
    p.add_argument("--gpu-memory", default=None, help="the card's memory, e.g. 80GB (another card, or to override)")
    p.add_argument("--gpu-tflops", type=float, default=None, help="the card's dense bf16 peak, for another card")
    p.add_argument("--mfu", type=float, default=0.4, help="share of the card's peak a step reaches")
    p.add_argument("--overhead-gb", type=float, default=1.5, help="per GPU: CUDA context, NCCL buffers, slack")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: the config's sampling)")
    p.add_argument("--tokens", type=int, default=None, help="text tokens per sample (default: the config's limit)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="the LLM's vocabulary where the config names no LLM folder (Vicuna: 32001)")
    p.add_argument("--json", default=None, help="also write the plan here (a list of plans for several cards)")
    p.add_argument("--markdown", action="store_true", help="print one sizing table row per card instead")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    for name in ("gpus", "nodes", "frames", "tokens", "vocab_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise PlanError(f"--{name.replace('_', '-')}={value} must be >= 1")
    if not 0 < args.mfu <= 1:
        raise PlanError(f"--mfu={args.mfu} must be in (0, 1]")
    cards = [find_card(name, args.gpu_memory, args.gpu_tflops) for name in (args.gpu or "").split(",")] \
        if args.gpu else [find_card(None, args.gpu_memory, args.gpu_tflops)]
    source = find_config(args.cfg, "experiments")
    cfg = load_config(source, args.overrides)
    layout = _layout(cfg, args)
    frames = args.frames or default_frames(cfg)
    tokens = args.tokens or default_text_tokens(cfg)
    tokenizer, context = _tokenizer(cfg)
    check_context(tokens - 1 + cfg.model.video_qformer.num_query_tokens, context, tokens)
    stop_if_only_checking()
    measured = measure(cfg, tokenizer, layout, frames, tokens, args.vocab_size or 0)
    plans = [make_plan(cfg, measured, layout, card) | {"source": str(args.cfg)} for card in cards]
    print(sizing_table(plans) if args.markdown else "\n\n".join(render(p, str(args.cfg)) for p in plans))
    if args.json:
        write_text_atomic(args.json, json.dumps(plans if len(plans) > 1 else plans[0], indent=2) + "\n")
    return 0


def _layout(cfg, args) -> Layout:
    from moviechat.training.runtime import deepspeed_config

    ds = deepspeed_config(cfg)
    precision = "bf16" if ds.get("bf16", {}).get("enabled") else "fp16" if ds.get("fp16", {}).get("enabled") else None
    return Layout(args.gpus, args.nodes, int(ds.get("zero_optimization", {}).get("stage", 0)), precision,
                  int(ds.get("gradient_accumulation_steps", 1)), int(ds.get("train_micro_batch_size_per_gpu", 1)),
                  args.mfu, args.overhead_gb)


def _tokenizer(cfg):
    """The run's tokenizer (the LLM folder's, without its weights) and the LLM's context length."""
    from transformers import AutoConfig

    from moviechat.text.tokenizers import run_tokenizer

    tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, [])
    context = AutoConfig.from_pretrained(cfg.model.llm.path, local_files_only=True).max_position_embeddings \
        if cfg.model.llm.path else 2048
    return tokenizer, context
