"""Building a run's parts before the loop: its datasets (checked against the number of data streams), the
tokenizer, the model, the DeepSpeed engine with the original's optimizer groups and schedule, collators,
loaders and the held-out evaluators."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader

from moviechat.common.registry import MODELS
from moviechat.config import Config
from moviechat.common.errors import DataError
from moviechat.data import Collator
from moviechat.data.builders import DataPart
from moviechat.data.conversation import DialogEncoder, TextSettings
from moviechat.text.tokenizers import run_tokenizer
from moviechat.training.heldout import HeldOutEvaluator, accuracy_groups, prior_answers
from moviechat.training.optim import build_optimizer, describe_groups, lr_lambda
from moviechat.training.stop import leave_process_group

import moviechat.models  # noqa: F401  (registers the model builders)


def check_streams(parts: list[DataPart], world_size: int, workers: int) -> None:
    """Every data stream (rank x loader worker) needs a shard or file of its own; decided alike on every rank,
    so all stop and none waits for the others."""
    streams = world_size * max(workers, 1)
    for part in parts:
        if part.source.store.units < streams:
            raise DataError(f"{part.name}: {part.source.store.units} shard(s)/file(s) cannot feed {streams} data "
                            f"streams ({world_size} rank(s) x {max(workers, 1)} loader worker(s)): "
                            f"every stream needs at least one; write smaller shards or use fewer ranks/workers")


def build_tokenizer(cfg: Config, source: Path, parts: list[DataPart]):
    """The run's tokenizer: a resumed tiny run reuses its exact saved vocabulary; otherwise the LLM's (or a word
    tokenizer over the data's texts). Each dataset's conversations are encoded with it."""
    saved = source / "tokenizer"
    if saved.is_dir() and not cfg.model.llm.path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(saved, local_files_only=True)
    else:
        tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, [t for p in parts for t in p.source.texts()])
    for part in parts:
        encoder = DialogEncoder(tokenizer, TextSettings.of(part.data))
        part.train.set_encoder(encoder)
        part.val.set_encoder(encoder)
    return tokenizer


def build_model(cfg: Config, parts: list[DataPart], tokenizer, rank: int) -> torch.nn.Module:
    model = MODELS.build(cfg.model.name, cfg.model, cfg.memory, tokenizer, verbose=rank == 0)
    if any(part.data.feature_kind == "eva" for part in parts):
        model.enable_token_cache(cfg.train.token_cache_mb, cfg.train.token_cache_dir)
    return model


def build_engine(cfg: Config, model: torch.nn.Module, ds_config: dict, rank: int):
    """(DeepSpeed engine, LR scheduler) with the original's optimizer groups (no decay for ndim < 2)."""
    import deepspeed

    optimizer = build_optimizer(model, cfg.train)
    if rank == 0:
        print(f"optimizer groups: {describe_groups(optimizer)}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine, scheduler


def collator(cfg: Config, tokenizer, part: DataPart, with_answers: bool = True) -> Collator:
    return Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, part.data.feature_kind,
                    with_answers=with_answers, prompt=cfg.model.prompt)


def loader(dataset, collate, batch_size: int, workers: int, seed: int) -> DataLoader:
    # Its own generator: creating an iterator must not draw from the global RNG (exact resume).
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=leave_process_group if workers else None)


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    """The text tensors on the device; the model moves frames itself (it may read them from its cache)."""
    return {**batch, **{k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}}


def eval_batches(cfg: Config, tokenizer, part: DataPart, micro_batch: int, device, limit: Optional[int],
                 with_answers: bool) -> Iterator[dict[str, Any]]:
    """This rank's held-out batches of one dataset, at most ``limit`` samples."""
    part.val.set_epoch(0)
    part.val.set_resume({})
    seen = 0
    for batch in loader(part.val, collator(cfg, tokenizer, part, with_answers), micro_batch, 0, cfg.run.seed):
        if limit is not None and seen >= limit:
            return
        take = len(batch["frames"]) if limit is None else min(len(batch["frames"]), limit - seen)
        seen += take
        yield to_device(head(batch, take), device)


def build_evaluator(cfg: Config, engine, tokenizer, part: DataPart, micro_batch: int, device,
                    world_size: int) -> HeldOutEvaluator:
    return HeldOutEvaluator(engine=engine, batches=functools.partial(eval_batches, cfg, tokenizer, part, micro_batch, device),
                            tokenizer=tokenizer, prompt_format=collator(cfg, tokenizer, part).format,
                            groups=accuracy_groups(part.source.qas),
                            prior=prior_answers(part.source.qas, part.source.train_keys),
                            device=device, world_size=world_size)


def head(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` samples of a collated batch."""
    if n >= len(batch["frames"]):
        return batch
    return {k: (v[:n] if isinstance(v, (list, torch.Tensor)) else v) for k, v in batch.items()}
