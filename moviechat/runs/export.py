"""Export a trained run: MovieChat .pth, Hugging Face style folder, LoRA adapter, merged LLM.

    moviechat export RUN_OR_CKPT --format moviechat|hf|lora|merged [--out PATH] [--merge-lora]

Every export is verified on write: it is loaded back and must give the same outputs on a fixed input.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from moviechat.common.atomic import atomic_path, disk_full, torch_save_atomic, write_text_atomic
from moviechat.common.errors import UserError, run_cli, stop_if_only_checking
from moviechat.config import save_config, to_yaml
from moviechat.data import Collator, Sample
from moviechat.models.weight_names import load_weights, to_original_names
from moviechat.runs.loading import build_from_config, load_run

FORMATS = ("moviechat", "hf", "lora", "merged")
VIDEO_PARTS = ("video_qformer", "frame_position_embedding", "projection")


def probe_batch(cfg, tokenizer) -> dict:
    """A fixed input: random frame tokens, one global and one breakpoint question."""
    g = torch.Generator().manual_seed(1234)
    q = cfg.model.image_qformer
    samples = [Sample("probe", torch.randn(40, q.num_query_tokens, q.hidden_size, generator=g), "what is shown", "a probe",
                      mode, t) for mode, t in (("global", None), ("breakpoint", 25))]
    return Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, "tokens", prompt=cfg.model.prompt)(samples)


# Merging LoRA into the weights changes the order of fp32 sums: through SmolLM2's 30 layers the logits
# then differ by up to ~5e-5 (measured); anything else reloads bitwise or within rounding.
MERGED_ATOL = 1e-4


def _check(expected: torch.Tensor, got: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    if not torch.allclose(expected, got, rtol=1e-4, atol=atol):
        raise RuntimeError(f"{what}: reloaded export differs (max abs diff {(expected - got).abs().max():.3g})")


def has_lora(model) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


def merged_llm(model):
    return copy.deepcopy(model.llm).merge_and_unload() if has_lora(model) else model.llm


def export_moviechat(cfg, tokenizer, model, out: Path, merge_lora: bool) -> Path:
    """``{"model": state}`` in the original names: the trained parts; a trained LLM (fully, or by LoRA merged
    in with ``merge_lora``) is stored as ``llama_model.*``."""
    state = model.trainable_state_dict()
    llm = model.llm
    if has_lora(model):
        if not merge_lora:
            raise ValueError("the model has LoRA adapters, which the original code cannot load: pass --merge-lora "
                             "(the LLM is merged and stored as llama_model.*) or export --format lora")
        llm = merged_llm(model)  # one merged copy serves the export and its check; the model is left as it is
        state = {k: v for k, v in state.items() if not k.startswith("llm.")}
        state.update({f"llm.{k}": v for k, v in llm.state_dict().items()})
    torch_save_atomic({"model": to_original_names(state)}, out)
    fresh = build_from_config(cfg, tokenizer).eval()
    if has_lora(model):
        fresh.llm = fresh.llm.merge_and_unload()
    load_weights(fresh, out, require=VIDEO_PARTS)
    batch = probe_batch(cfg, tokenizer)
    _check(model.logits(batch, llm), fresh.logits(batch), "moviechat export")
    return out


def export_hf(cfg, tokenizer, model, out: Path) -> Path:
    """A folder: model.safetensors (every tensor, our names), config.yaml, tokenizer, README.md."""
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:  # save_model stores tied weights (lm_head) once
        save_model(model, str(tmp), metadata={"format": "pt"})
    save_config(cfg, out / "config.yaml")
    tokenizer.save_pretrained(out / "tokenizer")
    write_text_atomic(out / "README.md", model_card(cfg, model))
    _, _, again = load_hf(out)
    batch = probe_batch(cfg, tokenizer)
    _check(model.logits(batch), again.logits(batch), "hf export")
    return out


def load_hf(folder: str | Path):
    """(config, tokenizer, model) of an ``hf`` export; every weight comes from its safetensors."""
    from safetensors.torch import load_model
    from transformers import AutoTokenizer

    from moviechat.config import load_config

    folder = Path(folder)
    cfg = load_config(folder / "config.yaml")
    cfg.model.checkpoint = cfg.model.qformer_checkpoint = cfg.model.vision.weights = None
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    model = build_from_config(cfg, tokenizer)
    load_model(model, str(folder / "model.safetensors"), strict=True)  # raises on a missing or unknown key
    return cfg, tokenizer, model.eval()


def model_card(cfg, model) -> str:
    counts = model.parameter_summary()
    return (f"# MovieChat model (exported by the MovieChat training framework)\n\n"
            f"Streaming memory: K={cfg.memory.short_memory_length}, m={cfg.memory.short_memory_merge}, "
            f"L={cfg.memory.long_memory_length} ({cfg.memory.long_memory_policy}), n_position={cfg.memory.n_position}.\n\n"
            f"Load with `from moviechat.runs.export import load_hf; cfg, tokenizer, model = load_hf(folder)`.\n\n"
            f"```\n{counts}\n```\n\n## Config\n\n```yaml\n{to_yaml(cfg)}```\n")


def export_lora(cfg, tokenizer, model, out: Path) -> Path:
    """The peft adapter of the LLM alone (``save_pretrained``)."""
    from peft import PeftModel

    from moviechat.models.llm import build_llm

    if not has_lora(model):
        raise ValueError("the model has no LoRA adapters (model.llm.lora.enabled was false)")
    model.llm.save_pretrained(out)
    torch.manual_seed(cfg.run.seed)
    base = build_llm(cfg.model.llm, vocab_size=len(tokenizer))
    base.load_state_dict(merged_base_state(model), strict=True)
    again = PeftModel.from_pretrained(base, out).eval()
    ids = probe_batch(cfg, tokenizer)["input_ids"]
    with torch.no_grad():
        _check(model.llm(input_ids=ids).logits, again(input_ids=ids).logits, "lora export")
    return out


def merged_base_state(model) -> dict[str, torch.Tensor]:
    """The LLM's base weights (without adapters), in plain Hugging Face names."""
    base = model.llm.get_base_model()
    return {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}


def export_merged(cfg, tokenizer, model, out: Path) -> Path:
    """The LLM with its LoRA merged in, as a Hugging Face causal LM folder (+ tokenizer)."""
    from transformers import AutoModelForCausalLM

    llm = merged_llm(model)
    llm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    again = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ids = probe_batch(cfg, tokenizer)["input_ids"]
    with torch.no_grad():
        _check(model.llm(input_ids=ids).logits, again(input_ids=ids).logits, "merged export", MERGED_ATOL)
    return out


EXPORTED = ".moviechat-export"  # in every folder an export wrote: a later export may write there again


class ExportRefused(UserError):
    """An export that would overwrite what it did not write."""


def check_out(out: Path, ours: bool, force: bool) -> None:
    """Refuse to overwrite a user's file or a non-empty folder that no export wrote (``--force`` allows it);
    ``ours``: the run's own export/ path, which only exports write."""
    if force or not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink():
        if not any(out.iterdir()) or (out / EXPORTED).is_file():
            return
        raise ExportRefused(f"--out {out} is a folder that holds other files and no export: refused (choose an empty "
                            f"or new folder, or --force to write into it)")
    if not (ours and out.is_file() and not out.is_symlink()):
        raise ExportRefused(f"--out {out} exists and no export wrote it: refused (choose a new path, or --force)")


def export(path: str | Path, fmt: str, out: str | Path | None = None, merge_lora: bool = False,
           trust: bool = False, force: bool = False) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} must be one of {FORMATS}")
    if out is not None:
        check_out(Path(out), False, force)  # before loading anything
    cfg, tokenizer, model, ckpt = load_run(path, trust)
    default = ckpt.parent.parent / "export" / (f"moviechat_{ckpt.name}.pth" if fmt == "moviechat" else f"{fmt}_{ckpt.name}")
    out = Path(out) if out else default
    check_out(out, out == default, force)
    try:
        if fmt == "moviechat":
            return export_moviechat(cfg, tokenizer, model, out, merge_lora)
        writer = {"hf": export_hf, "lora": export_lora, "merged": export_merged}[fmt]
        written = writer(cfg, tokenizer, model, out)
        write_text_atomic(written / EXPORTED, f"{fmt} export of {ckpt}\n")
    except (OSError, RuntimeError) as e:  # torch's zip writer and the libraries' save_pretrained do not say "full"
        full = disk_full(out, e, then="then export again (nothing half-written is left as an export)")
        if full is None:
            raise
        raise full from None
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder, its checkpoints/ or one checkpoint folder")
    p.add_argument("--format", choices=FORMATS, default="moviechat")
    p.add_argument("--out")
    p.add_argument("--merge-lora", action="store_true", help="moviechat format: merge LoRA into the stored LLM")
    p.add_argument("--force", action="store_true", help="overwrite --out though no export wrote it")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoint files that need more than plain data (only files you vouch for)")
    args = p.parse_args(argv)
    stop_if_only_checking()

    def run() -> int:
        out = export(args.run, args.format, args.out, args.merge_lora, args.trust_checkpoint, args.force)
        print(f"exported ({args.format}, verified by reloading): {out}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
