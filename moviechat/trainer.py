"""DeepSpeed training of MovieChat: the loop, its data stream, logging, evaluation calls and checkpoints.

The loop reads top to bottom in :meth:`Trainer.train`: batch -> ``engine(batch)`` (the model builds every
sample's streaming memory inside its forward, see ``MovieChatModel.encode_video``) -> backward -> step ->
log, evaluate, checkpoint. The same code runs on CPU (gloo) and GPU nodes (nccl).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from moviechat.atomic import write_text_atomic
from moviechat.checkpointing import (PORTABLE, load_checkpoint, loadable_checkpoint, remove_leftovers,
                                     save_checkpoint, saved_layout, step_of)
from moviechat.config import Config, as_dict, save_config
from moviechat.curves import plot_curves
from moviechat.data import Collator, DataError
from moviechat.data.builders import DataPart, build_parts
from moviechat.data.conversation import DialogEncoder, TextSettings
from moviechat.distributed import all_reduce_sum, any_rank, init_distributed
from moviechat.elastic import check_layout, merged_train_state, portable_state, restore_portable
from moviechat.heldout import HeldOutEvaluator, accuracy_groups, combine_records, prior_answers
from moviechat.metrics import JsonlLogger
from moviechat.tokenizers import run_tokenizer
from moviechat.optim import build_optimizer, describe_groups, lr_lambda
from moviechat.registry import MODELS
from moviechat.run_folder import check_resume_config, claim, truncate_metrics, write_status
from moviechat.runtime import deepspeed_config, environment, rng_state, seed_everything, set_rng_state
from moviechat.safe_load import load_pt
from moviechat.train_batches import TrainBatches
from moviechat.train_state import Layout, TrainState, upgrade

import moviechat.models  # noqa: F401  (registers the model builders)


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: Optional[str] = None, allow_config_change: bool = False,
                 trust_checkpoint: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.trust = trust_checkpoint
        self.checkpoint = loadable_checkpoint(resume, trust_checkpoint) if resume else None
        self.forked = claim(self.run_dir, self.checkpoint)  # every rank decides alike, before any collective
        if self.checkpoint is not None:
            check_resume_config(self.checkpoint[0].parent, as_dict(cfg), allow_config_change,
                                step_of(self.checkpoint[1]), self.run_dir)
        self.rank, self.world_size, self.device = init_distributed()
        import deepspeed

        seed_everything(cfg.run.seed)  # identical initial weights on every rank
        self.parts = build_parts(cfg, self.rank, self.world_size)
        streams = self.world_size * max(cfg.data.num_workers, 1)
        for part in self.parts:  # decided alike on every rank: all stop, none waits for the others
            if part.source.store.units < streams:
                raise DataError(f"{part.name}: {part.source.store.units} shard(s)/file(s) cannot feed {streams} data "
                                f"streams ({self.world_size} rank(s) x {max(cfg.data.num_workers, 1)} loader worker(s)): "
                                f"every stream needs at least one; write smaller shards or use fewer ranks/workers")
        self.tokenizer = self._tokenizer()
        for part in self.parts:
            encoder = DialogEncoder(self.tokenizer, TextSettings.of(part.data))
            part.train.set_encoder(encoder)
            part.val.set_encoder(encoder)
        self.model = MODELS.build(cfg.model.name, cfg.model, cfg.memory, self.tokenizer, verbose=self.rank == 0)
        if any(part.data.feature_kind == "eva" for part in self.parts):
            self.model.enable_token_cache(cfg.train.token_cache_mb, cfg.train.token_cache_dir)
        optimizer = build_optimizer(self.model, cfg.train)
        if self.rank == 0:
            print(f"optimizer groups: {describe_groups(optimizer)}")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train))
        self.ds_config = deepspeed_config(cfg)
        self.engine, _, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, lr_scheduler=self.scheduler,
                                                    config=self.ds_config)
        self.micro_batch = self.engine.train_micro_batch_size_per_gpu()
        self.collates = {part.name: Collator(self.tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len,
                                             part.data.feature_kind, prompt=cfg.model.prompt) for part in self.parts}
        self.evaluators = {part.name: self._evaluator(part) for part in self.parts}
        self.state = TrainState()
        self.batches: Optional[TrainBatches] = None  # built by train(), once the state is final
        seed_everything(cfg.run.seed + 1000 * self.rank)  # distinct dropout per rank
        if self.rank == 0 and self.forked:
            print(f"new run folder {self.run_dir}, started from {self.checkpoint[0] / self.checkpoint[1]} of run "
                  f"{self.checkpoint[0].parent} (left as it is)", flush=True)
        if self.rank == 0:
            left = remove_leftovers(self.run_dir / "checkpoints")
            if left:
                print(f"removed partial checkpoint(s) of an interrupted save: {', '.join(left)}")
        if self.checkpoint is not None:
            self._resume(*self.checkpoint)
        self.stopped = False
        self.logger = JsonlLogger(self.run_dir / "metrics.jsonl") if self.rank == 0 else None
        self.wandb = self._wandb() if self.rank == 0 else None
        self.stop_requested = False
        self.tty = sys.stderr.isatty()  # a progress bar on a terminal; in a log file one line per train.log_every
        if self.rank == 0:
            self._write_run_files()

    # ------------------------------------------------------------------------------------ set-up

    def _tokenizer(self):
        source = self.checkpoint[0].parent if self.checkpoint is not None else self.run_dir
        saved = source / "tokenizer"
        if saved.is_dir() and not self.cfg.model.llm.path:  # a resumed tiny run reuses its exact vocabulary
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(saved, local_files_only=True)
        return run_tokenizer(self.cfg.model.llm, self.cfg.model.system_prompt,
                             [t for part in self.parts for t in part.source.texts()])

    def _evaluator(self, part: DataPart) -> HeldOutEvaluator:
        batches = lambda limit, with_answers: self._eval_batches(part, limit, with_answers)  # noqa: E731
        return HeldOutEvaluator(self.engine, batches, self.tokenizer, accuracy_groups(part.source.qas),
                                prior_answers(part.source.qas, part.source.train_keys), self.collates[part.name].format,
                                lambda values, what: all_reduce_sum(values, self.device, what), self.world_size)

    def _wandb(self):
        if self.cfg.run.wandb == "disabled":
            return None
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.init(project=self.cfg.run.wandb_project, name=self.run_dir.name, dir=str(self.run_dir),
                          mode=self.cfg.run.wandb, config=as_dict(self.cfg), resume="allow", id=self.run_dir.name)

    def _write_run_files(self) -> None:
        write_status(self.run_dir, "running", self.state.step, self.cfg.train.max_steps)  # a crash leaves it so
        save_config(self.cfg, self.run_dir / "config.yaml")
        write_text_atomic(self.run_dir / "environment.json", json.dumps(environment(self.world_size), indent=2))
        write_text_atomic(self.run_dir / "deepspeed.json", json.dumps(self.ds_config, indent=2))
        if not (self.run_dir / "tokenizer").is_dir():
            self.tokenizer.save_pretrained(self.run_dir / "tokenizer")

    def layout(self) -> Layout:
        return Layout(self.world_size, max(self.cfg.data.num_workers, 1), self.engine.train_batch_size())

    def _resume(self, root: Path, tag: str) -> None:
        saved = saved_layout(root / tag, self.trust)
        if saved is not None and saved != self.layout():
            check_layout(saved, self.layout(), root / tag)
        if saved is not None and saved.processes != self.world_size:
            portable = load_pt(root / tag / PORTABLE, self.trust)
            restore_portable(self.engine, self.model, self.scheduler, portable)
            self.state = merged_train_state(portable["train_states"], self.parts[0].name, self.rank)
            seed_everything(self.cfg.run.seed + 1000 * self.rank + self.state.step)  # dropout: new per-rank streams
            how = f"written by {saved.processes} process(es), elastic"
        else:
            state = load_checkpoint(self.engine, root, tag, self.rank, self.trust)
            self.state = upgrade(state["train_state"], self.parts[0].name)
            set_rng_state(state["rng"])
            how = "same layout"
        if self.rank == 0:
            dropped = truncate_metrics(self.run_dir / "metrics.jsonl", self.state.step)
            print(f"resumed from {root / tag} at step {self.state.step} ({how})"
                  f"{f'; {dropped} metrics row(s) logged after it dropped' if dropped else ''}")
            if self.state.step >= self.cfg.train.max_steps:
                print(f"the run already finished (step {self.state.step}, train.max_steps={self.cfg.train.max_steps}): "
                      f"nothing to train; raise train.max_steps to continue it")

    # ---------------------------------------------------------------------------------------- data

    def _loader(self, dataset, collate, batch_size: int, workers: int) -> DataLoader:
        # Its own generator: creating an iterator must not draw from the global RNG (exact resume).
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers,
                          generator=torch.Generator().manual_seed(self.cfg.run.seed),
                          worker_init_fn=leave_process_group if workers else None)

    def _train_loader(self, part: DataPart) -> DataLoader:
        return self._loader(part.train, self.collates[part.name], self.micro_batch, self.cfg.data.num_workers)

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The text tensors on the device; the model moves frames itself (it may read them from its cache)."""
        return {**batch, **{k: batch[k].to(self.device) for k in ("input_ids", "attention_mask", "labels")}}

    def _eval_batches(self, part: DataPart, limit: Optional[int], with_answers: bool) -> Iterator[dict[str, Any]]:
        """This rank's held-out batches of one dataset, at most ``limit`` samples."""
        part.val.set_epoch(0)
        part.val.set_resume({})
        collate = Collator(self.tokenizer, self.cfg.model.system_prompt, self.cfg.model.max_txt_len,
                           part.data.feature_kind, with_answers=with_answers, prompt=self.cfg.model.prompt)
        seen = 0
        for batch in self._loader(part.val, collate, self.micro_batch, 0):
            if limit is not None and seen >= limit:
                return
            take = len(batch["frames"]) if limit is None else min(len(batch["frames"]), limit - seen)
            seen += take
            yield self.to_device(_head(batch, take))

    # ----------------------------------------------------------------------------------- the loop

    def train(self) -> dict[str, Any]:
        """Train to ``train.max_steps`` (or until SIGTERM/SIGINT); returns the last evaluation."""
        cfg = self.cfg.train
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        batches = TrainBatches(self.parts, self.state, self._train_loader, self.cfg.run.seed, self.rank)
        self.batches = batches
        bar = tqdm(total=cfg.max_steps, initial=self.state.step, disable=self.rank != 0 or not self.tty, desc="train",
                   dynamic_ncols=True)
        window = {"loss": 0.0, "micro": 0, "samples": 0, "time": 0.0, "memory": 0.0}
        last_eval: dict[str, Any] = {}
        try:
            while self.state.step < cfg.max_steps:
                start = time.perf_counter()
                batch = self.to_device(batches.next())
                out = self.engine(batch)  # frame tokens -> streaming memory -> video tokens -> LM loss
                self.engine.backward(out["loss"])
                boundary = self.engine.is_gradient_accumulation_boundary()
                norm = self._grad_norm() if boundary else None
                self.engine.step()
                if boundary:
                    reported = _float(self.engine.get_global_grad_norm())
                    window["grad_norm"] = norm if reported is None else reported
                window["loss"] += out["loss"].detach().item()
                window["micro"] += 1
                window["samples"] += len(batch["frames"])
                window["time"] += time.perf_counter() - start
                window["memory"] += out["memory_seconds"]
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
                    self.stopped = True
                    if self.rank == 0:
                        print(f"stopped by a signal at step {self.state.step}; resume with --resume {self.run_dir}")
                    break
            bar.close()
            self._finish()
        finally:  # a second signal while finishing (wandb, logs) still exits at once
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return last_eval

    def _on_signal(self, signum, frame) -> None:
        now = time.monotonic()
        if self.stop_requested and now - self.first_signal > SAME_STOP_SECONDS:
            # a second request: leave at once (a partial checkpoint is removed at the next start)
            print(f"second signal {signum}: exiting without a checkpoint", flush=True)
            os._exit(128 + signum)
        if not self.stop_requested:  # a copy within the window is the same request (torchrun forwards the
            self.first_signal = now   # signal that the job's whole process group already got)
        self.stop_requested = True

    def _grad_norm(self) -> Optional[float]:
        """The L2 norm of the trainable gradients (ZeRO 0 keeps them whole; ZeRO 1-2 report their own)."""
        grads = [p.grad for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return None
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    def _log_train(self, window: dict[str, float], bar) -> None:
        names = [part.name for part in self.parts]
        loss_sum, micro, samples, seconds, memory, *read = all_reduce_sum(
            [window["loss"], window["micro"], window["samples"], window["time"], window["memory"],
             *(self.state.samples.get(n, 0) for n in names)], self.device, what="train logging")
        record = {
            "step": self.state.step, "loss": loss_sum / max(micro, 1),
            "lr": self.scheduler.get_last_lr()[0], "grad_norm": window.get("grad_norm"),
            "samples_per_s": samples / max(seconds / self.world_size, 1e-9),
            "memory_time_share": memory / max(seconds, 1e-9), "time": time.time(),
            **{f"data/{n}": int(count) for n, count in zip(names, read)},  # training samples of each dataset so far
        }
        epochs = {n: self.state.stream(n).epoch for n in names}
        record.update({"epoch": epochs[names[0]]} if len(names) == 1 else {f"epoch/{n}": e for n, e in epochs.items()})
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if self.rank == 0 and not self.tty:
            print(f"step {record['step']}/{self.cfg.train.max_steps}: loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
                  f"{record['samples_per_s']:.1f} samples/s", flush=True)
        self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log(record)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out loss and accuracy (``moviechat.heldout.HeldOutEvaluator``), logged and returned."""
        cfg = self.cfg.train
        self.engine.eval()
        record = combine_records(self.state.step, {
            name: evaluator(self.state.step, cfg.eval_samples, cfg.eval_generate, cfg.max_new_tokens)
            for name, evaluator in self.evaluators.items()})
        self.engine.train()
        self._log(record)
        if self.rank == 0:
            shown = {k: round(v, 4) for k, v in record.items() if k.startswith(("eval/loss", "eval/acc"))}
            tqdm.write(f"step {self.state.step}: {shown}")
            plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")
        return record

    # ------------------------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        state = {"train_state": self.state, "rng": rng_state(), "layout": self.layout()}
        portable = portable_state(self.engine, self.model, self.scheduler, self.state, self.layout())
        path = save_checkpoint(self.engine, self.run_dir / "checkpoints", self.state.step, state, self.rank,
                               self.cfg.train.keep_last, portable)
        if self.rank == 0:
            tqdm.write(f"checkpoint: {path}")
        return path

    def _finish(self) -> None:
        if self.batches is not None:
            self.batches.report_total()
        if self.rank == 0:
            finished = self.state.step >= self.cfg.train.max_steps
            write_status(self.run_dir, "finished" if finished else "stopped", self.state.step, self.cfg.train.max_steps)
            cache = self.model.token_cache
            if cache is not None:
                print(f"frame-token cache: {cache.hits} hits, {cache.misses} misses")
            print(f"run folder:  {self.run_dir}\nmetrics:     {self.run_dir / 'metrics.jsonl'}\n"
                  f"checkpoints: {self.run_dir / 'checkpoints'}")
        if self.logger is not None:
            self.logger.close()
        if self.wandb is not None:
            self.wandb.finish()


SAME_STOP_SECONDS = 3.0


def leave_process_group(_worker_id: int) -> None:
    """Loader workers leave the job's process group: a signal to the whole group (SLURM preemption, Ctrl-C,
    ``kill -- -PGID``) then reaches the main process only, which finishes its step, saves and stops them; a
    worker that died of it crashed the run. They still die of a signal sent to them (DataLoader and
    multiprocessing shut them down that way; ignoring SIGTERM instead left a finished run waiting at exit),
    and of their parent's death (DataLoader's watchdog)."""
    os.setpgrp()


def _float(value) -> Optional[float]:
    return None if value is None else float(value)


def _head(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` samples of a collated batch."""
    if n >= len(batch["frames"]):
        return batch
    return {k: (v[:n] if isinstance(v, (list, torch.Tensor)) else v) for k, v in batch.items()}
