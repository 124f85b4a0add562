"""A run's plan: the step measured at the config's micro-batch and at one sample (activations grow linearly
with the micro-batch), model states under the DeepSpeed config's ZeRO stage and the others, the peak per GPU
and whether it fits the card, the largest micro-batch that fits, and time from the step's FLOPs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from moviechat.config import Config
from moviechat.planning.cards import Card, PlanError
from moviechat.planning.fake_step import StepMeasure, StepShape, measure_step
from moviechat.planning.states import STAGES, deepspeed_estimates, model_states

GIB = 2**30
TEXT_SETS = ("moviechat1k", "synthetic")  # question sets: text is the prompt and a short answer (model.max_txt_len)


@dataclass(frozen=True)
class Layout:
    gpus_per_node: int
    nodes: int
    stage: int
    precision: Optional[str]  # bf16 | fp16 | None (fp32)
    accumulation: int
    micro_batch: int
    mfu: float  # the share of the card's peak a step reaches (model FLOPs utilisation)
    overhead_gib: float  # CUDA context, NCCL buffers, allocator slack

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes


def default_text_tokens(cfg: Config) -> int:
    """The longest text a sample of the config's data may have (the collator truncates to it)."""
    return max(cfg.model.max_txt_len if p.data.name in TEXT_SETS else p.data.max_tokens for p in cfg.data.parts())


def default_frames(cfg: Config) -> int:
    """Frames per video the memory streams: the config's sampling, or the generated set's longest video."""
    mem = cfg.memory
    if mem.fragments:
        return mem.fragments * mem.fragment
    if mem.num_frames:
        return mem.num_frames
    if cfg.data.name == "synthetic":
        return cfg.data.synthetic.max_frames
    raise PlanError("memory.num_frames and memory.fragments are unset, so a video's frames are all its frames: "
                    "give --frames (MovieChat-1K train videos have 8192)")


def check_context(llm_tokens: int, context: Optional[int], text_tokens: int) -> None:
    if context and llm_tokens > context:
        raise PlanError(f"a sample of {text_tokens} text tokens (model.max_txt_len / data.max_tokens, or --tokens) and "
                        f"the video queries is {llm_tokens} LLM tokens, past the LLM's context of {context}")


@dataclass(frozen=True)
class Measured:
    """The step at the config's micro-batch and at another, for the activations' slope."""

    at_batch: StepMeasure
    at_other: StepMeasure
    other: int


def measure(cfg: Config, tokenizer, layout: Layout, frames: int, text_tokens: int, vocab_size: int = 0) -> Measured:
    """The two fake steps a plan needs (they do not depend on the card)."""
    other = 2 if layout.micro_batch == 1 else 1
    run = lambda b: measure_step(cfg, tokenizer, StepShape(b, frames, text_tokens), layout.precision, vocab_size)  # noqa: E731
    return Measured(run(layout.micro_batch), run(other), other)


def make_plan(cfg: Config, measured: Measured, layout: Layout, card: Card) -> dict[str, Any]:
    """Everything ``moviechat plan`` reports for one card, as one JSON-ready dict."""
    at_batch, b = measured.at_batch, layout.micro_batch
    per_sample = (at_batch.peak_bytes - measured.at_other.peak_bytes) / (b - measured.other)
    fixed = at_batch.peak_bytes - per_sample * b
    trainable = sum(at_batch.trainable.values())
    frozen_bytes = sum(at_batch.weight_bytes.values()) - trainable * (2 if layout.precision else 4)
    states = {s: model_states(trainable, frozen_bytes, s, layout.gpus, layout.precision is not None) for s in STAGES}
    chosen = states[layout.stage].total
    overhead = int(layout.overhead_gib * GIB)
    peak = chosen + at_batch.peak_bytes + at_batch.batch_bytes + overhead
    room = card.memory_gib * GIB - chosen - overhead - fixed
    largest = max(0, math.floor(room / (per_sample + at_batch.batch_bytes / b)))
    step_seconds = at_batch.flops / (card.tflops * 1e12 * layout.mfu) * layout.accumulation
    estimates = deepspeed_estimates(trainable, max(at_batch.trainable.values()), layout.gpus_per_node,
                                    layout.nodes) if layout.precision else None
    return {
        "config": {"frames": at_batch.frames, "text_tokens": at_batch.text_tokens, "micro_batch": b,
                   "gradient_accumulation_steps": layout.accumulation, "gpus": layout.gpus, "nodes": layout.nodes,
                   "zero_stage": layout.stage, "precision": layout.precision or "fp32",
                   "max_steps": cfg.train.max_steps},
        "card": asdict(card),
        "parameters": _parameters(at_batch),
        "trainable_parameters": trainable,
        "model_states": {f"zero{s}": asdict(v) | {"total": v.total} for s, v in states.items()},
        "deepspeed_estimate_trainable": estimates,
        "activation_bytes": at_batch.peak_bytes,
        "activation_bytes_per_sample": int(per_sample),
        "saved_for_backward_bytes": at_batch.saved_bytes,
        "largest_transient_bytes": at_batch.largest_transient,
        "batch_bytes": at_batch.batch_bytes,
        "overhead_bytes": overhead,
        "peak_bytes": peak,
        "fits": peak <= card.memory_gib * GIB,
        "largest_micro_batch": largest,
        "advice": _advice(peak, card, states, layout, at_batch, largest),
        "flops_per_step": at_batch.flops * layout.accumulation,
        "flops_per_micro_step": at_batch.flops,
        "mfu": layout.mfu,
        "seconds_per_step": step_seconds,
        "samples_per_second": b * layout.accumulation * layout.gpus / step_seconds,
        "gpu_hours": step_seconds * cfg.train.max_steps * layout.gpus / 3600,
        "memory": _memory(cfg, at_batch),
    }


def _parameters(m: StepMeasure) -> dict[str, dict[str, int]]:
    out = {part: {"trainable": m.trainable[part], "frozen": m.frozen[part]} for part in m.trainable}
    out["lora"] = {"trainable": m.lora, "frozen": 0}
    return out


def _memory(cfg: Config, m: StepMeasure) -> dict[str, Any]:
    mem, frames = cfg.memory, m.frames
    k, l = mem.short_memory_length, mem.long_memory_length
    return {"frames": frames, "fragments": mem.fragments or math.ceil(frames / mem.fragment),
            "fragment_frames": mem.fragment, "mode": m.memory_mode, "slots": m.memory_slots,
            "short_memory_length": k, "long_memory_length": l, "position_table": m.position_table,
            "llm_tokens": m.llm_tokens, "rule_of_thumb_frames": (k - 2) * (l // 2),
            "preset": mem.preset}


def _advice(peak: int, card: Card, states, layout: Layout, m: StepMeasure, largest: int) -> list[str]:
    if peak <= card.memory_gib * GIB:
        return []
    out = []
    chosen = states[layout.stage].total
    smallest = min(states, key=lambda s: states[s].total)
    if chosen > card.memory_gib * GIB * 0.5 and states[smallest].total < chosen:
        out.append(f"model states take {chosen / GIB:.1f} GiB: ZeRO-{smallest} takes "
                   f"{states[smallest].total / GIB:.1f} GiB (deepspeed.zero_stage={smallest})")
    if largest >= 1:
        out.append(f"activations take {m.peak_bytes / GIB:.1f} GiB: micro-batch {largest} fits "
                   f"(deepspeed.micro_batch_size={largest}, raise gradient_accumulation_steps to keep the batch)")
    else:
        out.append("even one sample does not fit: a shorter memory (memory.long_memory_length), shorter text "
                   "(model.max_txt_len) or LoRA off frees activations; ZeRO-3 frees weights")
    return out
