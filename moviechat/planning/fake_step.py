"""One training step of a config's model at full size on fake tensors: nothing is materialised and no weight
file is read, yet every operator runs with its real shapes and dtypes (torch's ``FakeTensorMode``), so the bytes
it keeps and the FLOPs it does are those of the real step. The memory's merge choices depend on the frames'
values: they are planned on small real frames first (the number of slots does not depend on the values)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from moviechat.config import Config
from moviechat.memory import MemoryPlan, memory_plans
from moviechat.models import build_moviechat
from moviechat.models.parts import PARTS, parameter_counts
from moviechat.planning.step_memory import SavedByPart, StepMemory

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepShape:
    """What one micro-batch holds on one GPU."""

    micro_batch: int
    frames: int  # frames per video that stream through the memory
    text_tokens: int  # the prompt and answer of a sample, in tokens (with its one <ImageHere>)


@dataclass
class StepMeasure:
    """What one step of ``StepShape`` measured."""

    frames: int
    text_tokens: int
    trainable: dict[str, int]  # parameters by part
    frozen: dict[str, int]
    weight_bytes: dict[str, int]  # by part, in the dtype the step runs
    saved_bytes: dict[str, int]  # saved for backward, by part
    peak_bytes: int  # live bytes at the step's peak beyond weights, their gradients and the batch
    largest_transient: int  # the largest single tensor of the step
    batch_bytes: int
    flops: int
    memory_mode: str
    memory_slots: int
    position_table: int  # P = n*n of the memory read
    llm_tokens: int  # per sample: text tokens - 1 + video queries
    lora: int = 0
    notes: list[str] = field(default_factory=list)


def worst_memory(cfg: Config, frames: int, seed: int = 0) -> tuple[str, list[MemoryPlan]]:
    """The memory mode (global, or a breakpoint at the last frame) that keeps the most slots, and its plan,
    made on small random frames of ``frames`` frames."""
    gen = torch.Generator().manual_seed(seed)
    video = [torch.randn(frames, 1, 4, generator=gen)]
    plans = {mode: memory_plans(video, cfg.memory, [mode], [None if mode == "global" else frames - 1])
             for mode in ("global", "breakpoint")}
    mode = max(plans, key=lambda m: plans[m][0].num_slots)
    return mode, plans[mode]


def step_batch(model, cfg: Config, shape: StepShape, plan: MemoryPlan, mode: str) -> dict:
    """A micro-batch of ``shape`` (fake inside the fake mode, real outside it): every sample has the same frames,
    memory and text length (the longest a sample can be), so no padding mask is needed."""
    kind = cfg.data.feature_kind
    frame = cfg.model.frame_shape(kind)
    dtype = model.image_qformer.query_tokens.dtype
    b, where = shape.micro_batch, min(1, shape.text_tokens - 1)
    ids = torch.zeros(b, shape.text_tokens, dtype=torch.long)
    ids[:, where] = model.image_token_id
    return {"frames": [torch.zeros(shape.frames, *frame, dtype=dtype) for _ in range(b)], "feature_kind": kind,
            "modes": [mode] * b, "times": [None if mode == "global" else shape.frames - 1] * b,
            "memory_plans": [plan] * b, "image_positions": [where] * b,
            "input_ids": ids, "attention_mask": None, "labels": ids.clone()}


def ready_for_step(model, batch: dict) -> list[torch.Tensor]:
    """Give every trainable parameter its gradient before the step (DeepSpeed keeps them in its buffers), and
    return the tensors that exist before the step: weights, gradients and the batch."""
    grads = [p for p in model.parameters() if p.requires_grad]
    for p in grads:
        p.grad = torch.zeros_like(p)
    return [*model.parameters(), *model.buffers(), *(p.grad for p in grads), *batch["frames"], batch["input_ids"],
            batch["labels"]]


@contextmanager
def conversions_in_place() -> Iterator[None]:
    """``module.to(...)`` (the cast to the step's precision, peft moving its adapters) swaps fake parameters for
    converted ones, and a fake tensor cannot be swapped (torch keeps a weak reference to it): give the
    parameter the converted data instead, as torch does for real tensors."""
    swap = torch.utils.swap_tensors

    def convert(t1, t2):
        if isinstance(t1, FakeTensor) and isinstance(t2, FakeTensor):
            t1.data = t2.data
        else:
            swap(t1, t2)

    torch.utils.swap_tensors = convert
    try:
        yield
    finally:
        torch.utils.swap_tensors = swap


def count_parameters(model) -> tuple[dict[str, int], dict[str, int], dict[str, int], int]:
    """(trainable, frozen, weight bytes) by part, and the LoRA adapters' parameters."""
    counts = parameter_counts(model)
    weight_bytes = {name: sum(p.numel() * p.element_size() for p in model.part(name).parameters()) for name in counts}
    lora = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    return {n: c[0] for n, c in counts.items()}, {n: c[1] for n, c in counts.items()}, weight_bytes, lora


def measure_step(cfg: Config, tokenizer, shape: StepShape, precision: str | None, vocab_size: int = 0) -> StepMeasure:
    """Build the model on fake tensors and run one forward and backward of ``shape``; measure it."""
    mode, (plan,) = worst_memory(cfg, shape.frames)
    with FakeTensorMode(allow_non_fake_inputs=True), conversions_in_place():  # the plan's index tensors are real
        model = build_moviechat(cfg.model, cfg.memory, tokenizer, verbose=False, load_weights=False, vocab_size=vocab_size)
        if precision in PRECISION_DTYPES:  # as DeepSpeed casts the whole module
            model.to(PRECISION_DTYPES[precision])
        model.train()
        trainable, frozen, weight_bytes, lora = count_parameters(model)
        batch = step_batch(model, cfg, shape, plan, mode)
        before = ready_for_step(model, batch)
        parts = {name: model.part(name) for name in PARTS if model.part(name) is not None}
        saved = SavedByPart(parts, before)
        live = StepMemory(before)
        flops = FlopCounterMode(display=False)
        with flops, live, saved.recording():
            model(batch)["loss"].backward()
    batch_bytes = sum(f.numel() * f.element_size() for f in batch["frames"]) + 2 * batch["input_ids"].numel() * 8
    return StepMeasure(
        frames=shape.frames, text_tokens=shape.text_tokens, trainable=trainable, frozen=frozen,
        weight_bytes=weight_bytes, saved_bytes=saved.by_part(), peak_bytes=live.peak, largest_transient=live.largest, batch_bytes=batch_bytes,
        flops=int(flops.get_total_flops()), memory_mode=mode, memory_slots=plan.num_slots,
        position_table=plan.n_position ** 2, llm_tokens=shape.text_tokens - 1 + cfg.model.video_qformer.num_query_tokens,
        lora=lora,
    )
