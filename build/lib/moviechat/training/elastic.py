"""Elastic resume: a checkpoint written by N processes continues on M.

DeepSpeed refuses to load ZeRO optimizer partitions into another data-parallel size, so every checkpoint
also holds ``portable.pt``: the trainable parameters in fp32 with their AdamW moments and step, the
scheduler, and every rank's data-stream positions (the trainable part is small: Q-Former, projection,
LoRA). On another number of processes the engine is built as usual and this state is written into it
(``deepspeed.utils.safe_set_full_*`` for ZeRO 1-2, the optimizer's own state for ZeRO 0).

Data: a run reads ``processes x loader workers`` data streams; the resumed run must read as many
(``data.num_workers`` = N x W / M) and keep the global batch, so every stream continues where it stopped
and each step sees the samples the uninterrupted run would have seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from moviechat.runs.train_state import Layout, TrainState, upgrade  # noqa: F401  (Layout re-exported)


def _zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def _trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _base_optimizer(engine):
    """The torch optimizer that holds the AdamW state (ZeRO wraps it; stage 0 may use it as it is)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def portable_state(engine, model, scheduler, train_state, layout: Layout) -> Optional[dict[str, Any]]:
    """Collective: every rank calls it; rank 0 gets the state, the others None."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    stage, base = _zero_stage(engine), _base_optimizer(engine)
    if stage in (1, 2):  # ZeRO-3 gathers full states itself
        _link_optimizer_state(engine)
    params: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in _trainable(model):
        if stage >= 1:
            value = {"param": safe_get_full_fp32_param(p)}
            value.update({k: safe_get_full_optimizer_state(p, k) for k in ("exp_avg", "exp_avg_sq")})
        else:
            state = base.state.get(p, {})
            value = {"param": p.detach().float(), **{k: state[k] for k in ("exp_avg", "exp_avg_sq") if k in state}}
        params[name] = {k: v.detach().cpu().clone() for k, v in value.items() if v is not None}
    states = [None] * dist.get_world_size() if dist.is_initialized() else [train_state]
    if dist.is_initialized():
        dist.all_gather_object(states, train_state)
    if (dist.get_rank() if dist.is_initialized() else 0) != 0:
        return None
    return {"params": params, "optimizer_step": _optimizer_step(base), "scheduler": scheduler.state_dict(),
            "train_states": states, "layout": layout}


def _link_optimizer_state(engine) -> None:
    """Point DeepSpeed's per-parameter fragments at the AdamW state as it is now (it links them once, and
    AdamW creates its state lazily)."""
    engine.optimizer._hp_optimizer_states_linked = False
    engine.optimizer._lazy_init_hp_params_optimizer_state()


def _optimizer_step(base) -> float:
    for state in base.state.values():
        if "step" in state:
            return float(state["step"])
    return 0.0


def check_layout(saved: Layout, now: Layout, folder: Path) -> None:
    """Refuse a resume that would change the data streams or the global batch, saying what to set."""
    from moviechat.runs.folder import RunFolderError

    if saved.streams != now.streams:
        need = saved.streams / now.processes
        hint = (f"set data.num_workers={int(need)}" if need == int(need) and need >= 1 else
                f"use a number of processes that divides {saved.streams}")
        raise RunFolderError(f"{folder} was written by {saved.processes} process(es) x {saved.workers} loader "
                             f"worker(s) = {saved.streams} data streams; this run has {now.processes} x {now.workers} "
                             f"= {now.streams}: {hint}, so that every stream continues where it stopped")
    if saved.global_batch != now.global_batch:
        raise RunFolderError(f"{folder} was trained with a global batch of {saved.global_batch}; this run's is "
                             f"{now.global_batch}: set deepspeed.gradient_accumulation_steps so that micro-batch x "
                             f"accumulation x processes = {saved.global_batch}")


def restore_portable(engine, model, scheduler, portable: dict[str, Any]) -> None:
    """Write a portable state into an engine built for this number of processes."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    stage, base = _zero_stage(engine), _base_optimizer(engine)
    step = torch.tensor(portable["optimizer_step"], dtype=torch.float32)
    if stage >= 1:  # AdamW creates its state at the first step: create it, then let DeepSpeed map it
        for group in base.param_groups:
            for flat in group["params"]:
                base.state[flat] = {"step": step.clone(), "exp_avg": torch.zeros_like(flat),
                                    "exp_avg_sq": torch.zeros_like(flat)}
        _link_optimizer_state(engine)
    for name, p in _trainable(model):
        saved = portable["params"][name]
        with torch.no_grad():
            p.copy_(saved["param"].to(p.dtype))
        if stage >= 1:
            safe_set_full_fp32_param(p, saved["param"].to(p.device))
            for key in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, saved[key].to(p.device), key)
        elif "exp_avg" in saved:
            base.state[p] = {"step": step.clone(), "exp_avg": saved["exp_avg"].to(p.device).clone(),
                             "exp_avg_sq": saved["exp_avg_sq"].to(p.device).clone()}
    scheduler.load_state_dict(portable["scheduler"])
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr
    steps = int(portable["train_states"][0].step)
    engine.global_steps = steps
    engine.global_samples = steps * engine.train_batch_size()
    engine.micro_steps = steps * engine.gradient_accumulation_steps()


def merged_train_state(states: list, name: str, rank: int):
    """One train state holding every old rank's data-stream positions and skip counts, per dataset; the
    samples read so far go to rank 0 only (they are summed over ranks when logged)."""
    states = [upgrade(s, name) for s in states]
    merged = TrainState(states[0].step)
    for old in states:
        for dataset, stream in old.data.items():
            into = merged.stream(dataset)
            into.epoch = stream.epoch
            into.positions.update(stream.positions)
            into.skipped.update(stream.skipped)
            into.skipped_before += stream.skipped_before if rank == 0 else 0
        for dataset, count in old.samples.items():
            merged.samples[dataset] = merged.samples.get(dataset, 0) + (count if rank == 0 else 0)
    return merged
