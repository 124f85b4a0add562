"""DeepSpeed training of MovieChat: the loop.

A :class:`Trainer` is made from what the run is asked to be, then ``setup()`` (claim the folder, start the
process group, build, resume, write the start files), ``train()`` and ``cleanup()``, in that order (torchtune's
recipe shape). :meth:`Trainer.train` reads top to bottom: batch -> ``engine(batch)`` (the model builds every sample's
streaming memory inside its forward: ``MovieChatModel.encode_video``) -> backward -> step -> log, evaluate,
checkpoint. Building the parts (``setup``), resume and save (``resume``), reporting (``run_log``) and stop
requests (``stop``) are functions it calls. The same code runs on CPU (gloo) and GPU nodes (nccl).
"""

from __future__ import annotations

import time

from pathlib import Path
from typing import Any, Optional

import torch

from moviechat.common.distributed import all_reduce_named, any_rank, end_distributed, init_distributed
from moviechat.config import Config, as_dict
from moviechat.data.builders import build_parts
from moviechat.runs.checkpoints import loadable_checkpoint, remove_leftovers, step_of
from moviechat.runs.folder import check_resume_config, claim
from moviechat.runs.train_state import Layout, TrainState
from moviechat.training import setup
from moviechat.training.batches import TrainBatches
from moviechat.training.heldout import combine_records
from moviechat.training.resume import Session, check_planned_layout, resume, save
from moviechat.training.run_log import RunLogger, train_record
from moviechat.training.runtime import deepspeed_config, seed_everything
from moviechat.training.stop import StopRequest


class Trainer:
    """One run: :meth:`setup` builds its parts in an order that keeps runs reproducible (weights from ``run.seed``
    on every rank, then per-rank dropout streams); :meth:`train` runs the loop; :meth:`cleanup` reports the end."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume_from: Optional[str] = None,
                 allow_config_change: bool = False, trust_checkpoint: bool = False):
        """What the run is asked to be; nothing is read, claimed or built until :meth:`setup`."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.resume_from, self.allow_config_change, self.trust_checkpoint = resume_from, allow_config_change, trust_checkpoint
        self.state = TrainState()
        self.batches: Optional[TrainBatches] = None  # built by train(), once the state is final
        self.stopped = False

    def setup(self) -> "Trainer":
        """Claim the run folder and check a resume (before any process group), start the process group, build
        the parts, resume, and write the start files."""
        checkpoint = self._checked_checkpoint()
        forked = claim(self.run_dir, checkpoint)  # every rank decides alike, before any collective
        self.rank, self.world_size, self.device = init_distributed()
        self._build(checkpoint)
        self._announce(forked, checkpoint)
        if self.rank == 0:
            self._remove_partial_saves()
        if checkpoint is not None:
            self.state = resume(self.session, *checkpoint, self.parts[0].name, self.cfg.run.seed, self.cfg.train.max_steps)
        self.log = RunLogger(self.cfg, self.run_dir, self.rank)
        self.log.write_start(self.state.step, self.ds_config, self.world_size, self.tokenizer)
        return self

    def _checked_checkpoint(self) -> Optional[tuple[Path, str]]:
        """The checkpoint to resume from, its config and layout checked (a refused resume starts no process group)."""
        if not self.resume_from:
            return None
        checkpoint = loadable_checkpoint(self.resume_from, self.trust_checkpoint)
        check_resume_config(checkpoint[0].parent, as_dict(self.cfg), self.allow_config_change, step_of(checkpoint[1]),
                            self.run_dir)
        check_planned_layout(self.cfg, checkpoint, self.trust_checkpoint)
        return checkpoint

    def _build(self, checkpoint: Optional[tuple[Path, str]]) -> None:
        cfg = self.cfg
        self.ds_config = deepspeed_config(cfg)  # a missing DeepSpeed JSON fails before data and model are built
        seed_everything(cfg.run.seed)  # identical initial weights on every rank
        self.parts = build_parts(cfg, self.rank, self.world_size)
        setup.check_streams(self.parts, self.world_size, cfg.data.num_workers)
        self.tokenizer = setup.build_tokenizer(cfg, checkpoint[0].parent if checkpoint else self.run_dir, self.parts)
        self.model = setup.build_model(cfg, self.parts, self.tokenizer, self.rank)
        self.engine, self.scheduler = setup.build_engine(cfg, self.model, self.ds_config, self.rank)
        self.micro_batch = self.engine.train_micro_batch_size_per_gpu()
        self.evaluators = {p.name: setup.build_evaluator(cfg, self.engine, self.tokenizer, p, self.micro_batch,
                                                         self.device, self.world_size)
                           for p in self.parts if p.source.val_keys}  # data.val_fraction=0: none held out
        self.session = Session(self.engine, self.model, self.scheduler, self.run_dir, self.rank, self.layout(),
                               self.trust_checkpoint, self.device)
        seed_everything(cfg.run.seed + 1000 * self.rank)  # distinct dropout per rank

    def layout(self) -> Layout:
        return Layout(self.world_size, max(self.cfg.data.num_workers, 1), self.engine.train_batch_size())

    def _announce(self, forked: bool, checkpoint: Optional[tuple[Path, str]]) -> None:
        if self.rank != 0:
            return
        unheld = [p.name for p in self.parts if not p.source.val_keys]
        if unheld:
            print(f"no held-out videos in {', '.join(unheld)} (data.val_fraction=0): evaluation during training is off"
                  f"{' for them' if len(unheld) < len(self.parts) else ''}", flush=True)
        if forked:
            print(f"new run folder {self.run_dir}, started from {checkpoint[0] / checkpoint[1]} of run "
                  f"{checkpoint[0].parent} (left as it is)", flush=True)

    def _remove_partial_saves(self) -> None:
        left = remove_leftovers(self.run_dir / "checkpoints")
        if left:
            print(f"removed partial checkpoint(s) of an interrupted save: {', '.join(left)}")

    def _train_loader(self, part):
        collate = setup.collator(self.cfg, self.tokenizer, part)
        part.train.set_batch_size(self.micro_batch)
        return setup.loader(part.train, collate, self.micro_batch, self.cfg.data.num_workers, self.cfg.run.seed)

    # ----------------------------------------------------------------------------------- the loop

    def train(self) -> dict[str, Any]:
        """Train to ``train.max_steps`` (or until SIGTERM/SIGINT); returns the last evaluation. Call
        :meth:`cleanup` after it."""
        cfg = self.cfg.train
        self.batches = TrainBatches(self.parts, self.state, self._train_loader, self.cfg.run.seed, self.rank)
        bar = self.log.progress(self.state.step)
        window = {"loss": 0.0, "micro": 0, "samples": 0, "time": 0.0, "memory": 0.0}
        last_eval: dict[str, Any] = {}
        with StopRequest() as stop:
            while self.state.step < cfg.max_steps:
                start = time.perf_counter()
                batch = setup.to_device(self.batches.next(), self.device)
                out = self.engine(batch)  # frame tokens -> streaming memory -> video tokens -> LM loss
                self.engine.backward(out["loss"])
                boundary = self.engine.is_gradient_accumulation_boundary()
                norm = self._grad_norm() if boundary else None
                self.engine.step()
                if boundary:
                    reported = self.engine.get_global_grad_norm()
                    window["grad_norm"] = norm if reported is None else float(reported)
                window["loss"] += out["loss"].detach().item()
                window["micro"] += 1
                window["samples"] += len(batch["frames"])
                window["time"] += time.perf_counter() - start
                window["memory"] += out["memory_seconds"]
                if not boundary:
                    continue
                self.state.step += 1
                bar.update(1)
                done = self.state.step == cfg.max_steps
                if self.state.step % cfg.log_every == 0 or done:
                    self.log.train_row(self._train_record(window), bar)
                    window = dict.fromkeys(window, 0.0)
                if (cfg.eval_every and self.state.step % cfg.eval_every == 0) or done:
                    last_eval = self.evaluate()
                if (cfg.save_every and self.state.step % cfg.save_every == 0) or done:
                    self.save()
                if any_rank(stop.requested, self.device) and not done:
                    self._stop()
                    break
            bar.close()
        return last_eval

    def _stop(self) -> None:
        self.save()
        self.stopped = True
        if self.rank == 0:
            print(f"stopped by a signal at step {self.state.step}; resume with: moviechat train --resume {self.run_dir}")

    def _grad_norm(self) -> Optional[float]:
        """The L2 norm of the trainable gradients (ZeRO 0 keeps them whole; ZeRO 1-2 report their own)."""
        grads = [p.grad for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return None
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    def _train_record(self, window: dict[str, float]) -> dict[str, Any]:
        names = [part.name for part in self.parts]
        sums = {key: window[key] for key in ("loss", "micro", "samples", "time", "memory")}
        sums.update({f"data/{n}": self.state.samples.get(n, 0) for n in names})
        reduced = all_reduce_named(sums, self.device, what="train logging")
        epochs = {n: self.state.stream(n).epoch for n in names}
        return train_record(window, self.state.step, self.scheduler.get_last_lr()[0], self.world_size, reduced, epochs)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out loss and accuracy (``moviechat.training.heldout.HeldOutEvaluator``), logged and returned."""
        cfg = self.cfg.train
        if not self.evaluators:
            return {}
        self.engine.eval()
        record = combine_records(self.state.step, {
            name: evaluator(self.state.step, cfg.eval_samples, cfg.eval_generate, cfg.max_new_tokens)
            for name, evaluator in self.evaluators.items()})
        self.engine.train()
        self.log.eval_row(record)
        return record

    def save(self) -> Path:
        return save(self.session, self.state, self.cfg.train.keep_last)

    def cleanup(self) -> None:
        """Report the run's end (samples read per dataset, the final status, the caches' counts), stop the loader
        workers and leave the process group."""
        if self.batches is not None:
            self.batches.report_total()
        self.log.finish(self.state.step, self.model.token_cache)
        self.batches = None  # its loaders' workers shut down here, before the process group goes
        end_distributed()
