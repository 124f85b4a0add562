"""A plan as a person reads it: one table of parameters, model states, activations, the peak per GPU, and time."""

from __future__ import annotations

from typing import Any

GIB = 2**30


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def size(n: float) -> str:
    """Bytes as a person reads them: 1.52 GiB, 12.3 MiB, 640 KiB."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n < 10 * scale else f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def flop(n: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} FLOP"


def render(plan: dict[str, Any], source: str) -> str:
    c, card, mem = plan["config"], plan["card"], plan["memory"]
    lines = [f"moviechat plan: {source} on {c['gpus']} x {card['name']} ({c['nodes']} node(s)), "
             f"ZeRO-{c['zero_stage']}, {c['precision']}, micro-batch {c['micro_batch']} x "
             f"{c['gradient_accumulation_steps']} accumulation",
             "",
             f"a sample: {mem['frames']} frames -> {mem['fragments']} fragments of {mem['fragment_frames']} -> "
             f"{mem['slots']} memory slots ({mem['mode']}, preset {mem['preset']}; position table {mem['position_table']}, "
             f"MovieChat's rule of thumb (K-2) x (L/2) = {mem['rule_of_thumb_frames']} frames) -> "
             f"{mem['llm_tokens']} LLM tokens with {c['text_tokens']} text tokens",
             *([f"  {mem['frames']} frames is more than the rule of thumb: the long-term memory merges more than "
                "MovieChat's settings were chosen for (memory.long_memory_length, memory.short_memory_length)"]
               if mem['frames'] > mem['rule_of_thumb_frames'] else []),
             "",
             f"{'parameters':<26}{'trainable':>16}{'frozen':>16}"]
    for part, n in plan["parameters"].items():
        lines.append(f"  {part:<24}{n['trainable']:>16,}{n['frozen']:>16,}")
    lines += ["", f"{'model states per GPU, GiB':<26}{'weights':>10}{'gradients':>11}{'optimizer':>11}{'total':>9}"]
    for stage, s in plan["model_states"].items():
        if not stage.startswith("zero"):
            continue
        mark = "  <- this config" if stage == f"zero{c['zero_stage']}" else ""
        lines.append(f"  {stage:<24}{gib(s['weights']):>10}{gib(s['gradients']):>11}{gib(s['optimizer']):>11}"
                     f"{gib(s['total']):>9}{mark}")
    saved = ", ".join(f"{p} {size(b)}" for p, b in sorted(plan["saved_for_backward_bytes"].items(), key=lambda x: -x[1]))
    lines += ["", f"activations, measured on the step: {size(plan['activation_bytes'])} at its peak "
                  f"({size(plan['activation_bytes_per_sample'])} per sample); saved for backward: {saved}; "
                  f"largest tensor {size(plan['largest_transient_bytes'])}",
              f"peak per GPU: {size(plan['peak_bytes'])} of {card['memory_gib']:g} GiB "
              f"(model states + activations + batch {size(plan['batch_bytes'])} + {size(plan['overhead_bytes'])} for the "
              f"CUDA context and buffers): {'fits' if plan['fits'] else 'DOES NOT FIT'}; "
              f"largest micro-batch that fits: {plan['largest_micro_batch']}"]
    lines += [f"  what to change: {a}" for a in plan["advice"]]
    lines += [f"time: {flop(plan['flops_per_micro_step'])} per micro-step; at {plan['mfu']:.0%} of "
              f"{card['tflops']:g} TFLOPS: {plan['seconds_per_step']:.3f} s per optimizer step, "
              f"{plan['samples_per_second']:.1f} samples/s, {c['max_steps']} steps = {plan['gpu_hours']:.1f} GPU-hours"]
    return "\n".join(lines)


def sizing_table(plans: list[dict[str, Any]]) -> str:
    """One Markdown row per card (docs/multi_gpu.md holds this output)."""
    c = plans[0]["config"]
    head = (f"`moviechat plan` of `{plans[0]['source']}`: {c['gpus']} GPUs, ZeRO-{c['zero_stage']}, {c['precision']}, "
            f"micro-batch {c['micro_batch']}, {c['frames']} frames and {c['text_tokens']} text tokens a sample, "
            f"{plans[0]['mfu']:.0%} of peak\n\n"
            "| card | model states | activations | peak per GPU | fits | largest micro-batch | s / step | GPU-hours |\n"
            "|---|---|---|---|---|---|---|---|")
    stage = f"zero{c['zero_stage']}"
    rows = [f"| {p['card']['name']} ({p['card']['memory_gib']:g} GiB) | "
            f"{size(p['model_states'][stage]['total'])} | {size(p['activation_bytes'])} | "
            f"{size(p['peak_bytes'])} | {'yes' if p['fits'] else 'no'} | {p['largest_micro_batch']} | "
            f"{p['seconds_per_step']:.2f} | {p['gpu_hours']:.1f} |" for p in plans]
    return "\n".join([head, *rows])
