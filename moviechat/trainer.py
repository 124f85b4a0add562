"""DeepSpeed training of MovieChat with the streaming memory built inside every step (DESIGN.md section 7).

The loop reads top to bottom in :meth:`Trainer.train`: micro-step (memory + forward), backward, step,
log, evaluate, checkpoint. The same code runs on CPU (gloo) and GPU nodes (nccl).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from moviechat.cache import FrameTokenCache, weights_digest
from moviechat.checkpointing import load_checkpoint, resolve_checkpoint, save_checkpoint
from moviechat.config import Config, TrainConfig, as_dict, save_config, write_text_atomic
from moviechat.data import Collator, DataError, build_datasets
from moviechat.data.collator import extract_answer
from moviechat.distributed import all_reduce_sum, any_rank, init_distributed
from moviechat.metrics import JsonlLogger, normalize_answer, normalized_match
from moviechat.models.llm import run_tokenizer, stop_token_ids
from moviechat.registry import MODELS

import moviechat.models  # noqa: F401  (registers the model builders)


@dataclass
class TrainState:
    """Everything besides the engine that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    positions: dict[int, int] = field(default_factory=dict)  # data slot -> samples consumed this epoch
    skipped: dict[int, int] = field(default_factory=dict)  # data slot -> samples skipped (on_error=skip)


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up, then constant or cosine down to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def deepspeed_config(cfg: Config) -> dict[str, Any]:
    """The DeepSpeed JSON named by ``deepspeed.config`` with the config's overrides applied."""
    path = Path(cfg.deepspeed.config)
    if not path.is_file():
        path = Path(__file__).resolve().parents[1] / cfg.deepspeed.config
    if not path.is_file():
        raise FileNotFoundError(f"deepspeed.config={cfg.deepspeed.config!r} not found")
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
    import deepspeed
    import peft
    import timm
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "host": platform.node(),
        "torch": torch.__version__, "transformers": transformers.__version__, "deepspeed": deepspeed.__version__,
        "peft": peft.__version__, "timm": timm.__version__, "cuda": torch.cuda.is_available(),
        "world_size": world_size, "git_commit": commit, "argv": sys.argv,
    }


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: Optional[str] = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rank, self.world_size, self.device = init_distributed()
        import deepspeed

        seed_everything(cfg.run.seed)  # identical initial weights on every rank
        self.source, self.train_data, self.val_data = build_datasets(cfg, self.rank, self.world_size)
        self.tokenizer = self._tokenizer()
        self.model = MODELS.build(cfg.model.name, cfg.model, cfg.memory, self.tokenizer, verbose=self.rank == 0)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                      weight_decay=cfg.train.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train))
        self.ds_config = deepspeed_config(cfg)
        self.engine, _, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    model_parameters=params, config=self.ds_config)
        self.scheduler = scheduler
        self.micro_batch = self.engine.train_micro_batch_size_per_gpu()
        self.collate = Collator(self.tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, cfg.data.feature_kind)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.cache = self._token_cache()
        self.prior = self._prior_answers()
        self.state = TrainState()
        seed_everything(cfg.run.seed + 1000 * self.rank)  # distinct dropout per rank
        if resume:
            self._resume(resume)
        self.logger = JsonlLogger(self.run_dir / "metrics.jsonl") if self.rank == 0 else None
        self.wandb = self._wandb() if self.rank == 0 else None
        self.stop_requested = False
        if self.rank == 0:
            self._write_run_files()

    # ------------------------------------------------------------------------------------ set-up

    def _tokenizer(self):
        saved = self.run_dir / "tokenizer"
        if saved.is_dir() and not self.cfg.model.llm.path:  # a resumed tiny run reuses its exact vocabulary
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(saved, local_files_only=True)
        return run_tokenizer(self.cfg.model.llm, self.cfg.model.system_prompt, self.source.texts())

    def _prior_answers(self) -> dict[str, str]:
        """The most frequent training answer of each question type: the baseline accuracy to beat."""
        by_type: dict[str, Counter] = {}
        for key in self.source.train_keys:
            for qa in self.source.qas[key]:
                by_type.setdefault(qa.qtype, Counter())[normalize_answer(qa.answer)] += 1
        return {qtype: counts.most_common(1)[0][0] for qtype, counts in by_type.items()}

    def _token_cache(self) -> Optional[FrameTokenCache]:
        if self.cfg.data.feature_kind != "eva" or not self.cfg.model.freeze.image_qformer:
            return None
        return FrameTokenCache(weights_digest(self.model.image_qformer), self.cfg.train.token_cache_mb,
                               self.cfg.train.token_cache_dir)

    def _wandb(self):
        if self.cfg.run.wandb == "disabled":
            return None
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.init(project=self.cfg.run.wandb_project, name=self.run_dir.name, dir=str(self.run_dir),
                          mode=self.cfg.run.wandb, config=as_dict(self.cfg), resume="allow", id=self.run_dir.name)

    def _write_run_files(self) -> None:
        save_config(self.cfg, self.run_dir / "config.yaml")
        write_text_atomic(self.run_dir / "environment.json", json.dumps(environment(self.world_size), indent=2))
        write_text_atomic(self.run_dir / "deepspeed.json", json.dumps(self.ds_config, indent=2))
        if not (self.run_dir / "tokenizer").is_dir():
            self.tokenizer.save_pretrained(self.run_dir / "tokenizer")

    def _resume(self, path: str) -> None:
        root, tag = resolve_checkpoint(path)
        saved = load_checkpoint(self.engine, root, tag, self.rank)
        self.state = saved["train_state"]
        set_rng_state(saved["rng"])
        if self.rank == 0:
            print(f"resumed from {root / tag} at step {self.state.step}")

    # ---------------------------------------------------------------------------------------- data

    def _loader(self, dataset, collate, batch_size: int, workers: int) -> DataLoader:
        # Its own generator: creating an iterator must not draw from the global RNG (exact resume).
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers,
                          generator=torch.Generator().manual_seed(self.cfg.run.seed))

    def batches(self) -> Iterator[dict[str, Any]]:
        """Training batches forever, epoch after epoch, from where the state says this rank stopped."""
        while True:
            self.train_data.set_epoch(self.state.epoch)
            self.train_data.set_resume(self.state.positions)
            produced = False
            for batch in self._loader(self.train_data, self.collate, self.micro_batch, self.cfg.data.num_workers):
                produced = True
                for (slot, index), skipped in zip(batch["positions"], batch["skipped"]):
                    self.state.positions[slot] = max(self.state.positions.get(slot, 0), index + 1)
                    self.state.skipped[slot] = max(self.state.skipped.get(slot, 0), skipped)
                yield batch
            if not produced and not self.state.positions:
                raise DataError(f"rank {self.rank} has no training samples (fewer shards than ranks x workers?)")
            self._report_skips(f"epoch {self.state.epoch}")
            self.state.epoch += 1
            self.state.positions = {}

    def _report_skips(self, when: str) -> None:
        total = sum(self.state.skipped.values())
        if total:
            print(f"[rank {self.rank}] {when}: {total} sample(s) skipped (data.on_error=skip); "
                  f"reasons: {dict(self.train_data.skips.counts) or 'see worker logs'}")

    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Move a batch to the device; EVA features become cached frame tokens when the Q-Former is frozen."""
        batch = dict(batch)
        for key in ("input_ids", "attention_mask", "labels"):
            batch[key] = batch[key].to(self.device)
        if self.cache is not None and batch["feature_kind"] == "eva":
            encode = lambda f: self.model.encode_frames(f.to(self.device))  # noqa: E731
            batch["frames"] = [self.cache.get(s, v, f, encode) for s, v, f in
                               zip(batch["sources"], batch["video_ids"], batch["frames"])]
            batch["feature_kind"] = "tokens"
        batch["frames"] = [f.to(self.device) for f in batch["frames"]]
        return batch

    # ----------------------------------------------------------------------------------- the loop

    def train(self) -> dict[str, Any]:
        """Train to ``train.max_steps`` (or until SIGTERM/SIGINT); returns the last evaluation."""
        cfg = self.cfg.train
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        batches = self.batches()
        bar = tqdm(total=cfg.max_steps, initial=self.state.step, disable=self.rank != 0, desc="train", dynamic_ncols=True)
        window = {"loss": 0.0, "micro": 0, "samples": 0, "time": 0.0, "memory": 0.0}
        last_eval: dict[str, Any] = {}
        try:
            while self.state.step < cfg.max_steps:
                start = time.perf_counter()
                batch = self.prepare(next(batches))
                self.model.memory_seconds = 0.0
                loss = self.engine(batch)["loss"]
                self.engine.backward(loss)
                boundary = self.engine.is_gradient_accumulation_boundary()
                self.engine.step()
                window["loss"] += loss.detach().item()
                window["micro"] += 1
                window["samples"] += len(batch["frames"])
                window["time"] += time.perf_counter() - start
                window["memory"] += self.model.memory_seconds
                if not boundary:
                    continue
                self.state.step += 1
                bar.update(1)
                if self.state.step % cfg.log_every == 0 or self.state.step == cfg.max_steps:
                    self._log_train(window, bar)
                    window = dict.fromkeys(window, 0.0)
                done = self.state.step == cfg.max_steps
                if (cfg.eval_every and self.state.step % cfg.eval_every == 0) or done:
                    last_eval = self.evaluate()
                if (cfg.save_every and self.state.step % cfg.save_every == 0) or done:
                    self.save()
                if any_rank(self.stop_requested, self.device) and not done:
                    self.save()
                    if self.rank == 0:
                        print(f"stopped by a signal at step {self.state.step}; resume with --resume {self.run_dir}")
                    break
        finally:
            bar.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        self._finish()
        return last_eval

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True

    def _log_train(self, window: dict[str, float], bar) -> None:
        loss_sum, micro, samples, seconds, memory = all_reduce_sum(
            [window["loss"], window["micro"], window["samples"], window["time"], window["memory"]], self.device)
        record = {
            "step": self.state.step, "epoch": self.state.epoch, "loss": loss_sum / max(micro, 1),
            "lr": self.scheduler.get_last_lr()[0], "grad_norm": _float(self.engine.get_global_grad_norm()),
            "samples_per_s": samples / max(seconds / self.world_size, 1e-9),
            "memory_time_share": memory / max(seconds, 1e-9), "time": time.time(),
        }
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log(record)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    # ------------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out loss and QA accuracy by generation (overall, global, breakpoint, per question type)."""
        cfg = self.cfg.train
        self.engine.eval()
        self.val_data.set_epoch(0)
        self.val_data.set_resume({})
        per_rank = lambda n: math.ceil(n / self.world_size) if n else None  # noqa: E731
        sums = self._eval_loss(per_rank(cfg.eval_samples))
        counts = self._eval_accuracy(per_rank(cfg.eval_generate)) if cfg.eval_generate else {}
        names = sorted(counts)
        reduced = all_reduce_sum(sums + [counts[n][i] for n in names for i in (0, 1)], self.device)
        record: dict[str, Any] = {"step": self.state.step, "eval/loss": reduced[0] / max(reduced[1], 1)}
        for i, name in enumerate(names):
            correct, total = reduced[2 + 2 * i], reduced[3 + 2 * i]
            record[f"eval/acc_{name}" if name != "all" else "eval/acc"] = correct / max(total, 1)
            record[f"eval/n_{name}"] = int(total)
        self._log(record)
        if self.rank == 0:
            shown = {k: round(v, 4) for k, v in record.items() if k.startswith(("eval/loss", "eval/acc"))}
            tqdm.write(f"step {self.state.step}: {shown}")
        self.engine.train()
        return record

    def _eval_batches(self, limit: Optional[int], with_answers: bool) -> Iterator[dict[str, Any]]:
        collate = Collator(self.tokenizer, self.cfg.model.system_prompt, self.cfg.model.max_txt_len,
                           self.cfg.data.feature_kind, with_answers=with_answers)
        seen = 0
        for batch in self._loader(self.val_data, collate, self.micro_batch, 0):
            if limit is not None and seen >= limit:
                return
            take = len(batch["frames"]) if limit is None else min(len(batch["frames"]), limit - seen)
            seen += take
            yield self.prepare(_head(batch, take))

    def _eval_loss(self, limit: Optional[int]) -> list[float]:
        loss_sum, tokens = 0.0, 0.0
        for batch in self._eval_batches(limit, with_answers=True):
            out = self.engine(batch)
            n = float(out["num_tokens"])
            loss_sum += float(out["loss"]) * n
            tokens += n
        return [loss_sum, tokens]

    def _eval_accuracy(self, limit: Optional[int]) -> dict[str, list[float]]:
        counts: dict[str, list[float]] = {"all": [0.0, 0.0], "global": [0.0, 0.0], "breakpoint": [0.0, 0.0],
                                          "prior": [0.0, 0.0]}
        for batch in self._eval_batches(limit, with_answers=False):
            generated = self.engine.module.generate(batch, self.cfg.train.max_new_tokens, self.stop_ids)
            for ids, answer, mode, qtype in zip(generated, batch["answers"], batch["modes"], batch["qtypes"]):
                hit = normalized_match(extract_answer(self.tokenizer.decode(ids, skip_special_tokens=True)), answer)
                prior_hit = normalized_match(self.prior.get(qtype, ""), answer)
                for name, value in ((n, hit) for n in {"all", mode, f"type_{qtype}" if qtype else mode}):
                    counts.setdefault(name, [0.0, 0.0])
                    counts[name][0] += value
                    counts[name][1] += 1
                counts["prior"][0] += prior_hit
                counts["prior"][1] += 1
        return counts

    # ------------------------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        state = {"train_state": self.state, "rng": rng_state()}
        path = save_checkpoint(self.engine, self.run_dir / "checkpoints", self.state.step, state, self.rank,
                               self.cfg.train.keep_last)
        if self.rank == 0:
            tqdm.write(f"checkpoint: {path}")
        return path

    def _finish(self) -> None:
        self._report_skips("end of training")
        if self.rank == 0:
            if self.cache is not None:
                print(f"frame-token cache: {self.cache.hits} hits, {self.cache.misses} misses")
            print(f"run folder:  {self.run_dir}\nmetrics:     {self.run_dir / 'metrics.jsonl'}\n"
                  f"checkpoints: {self.run_dir / 'checkpoints'}")
        if self.logger is not None:
            self.logger.close()
        if self.wandb is not None:
            self.wandb.finish()


def _float(value) -> Optional[float]:
    return None if value is None else float(value)


def _head(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` samples of a collated batch."""
    if n >= len(batch["frames"]):
        return batch
    return {k: (v[:n] if isinstance(v, (list, torch.Tensor)) else v) for k, v in batch.items()}
