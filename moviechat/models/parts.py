"""The model's named parts: freezing them (LoRA adapters of a frozen LLM stay trainable), counting their
parameters, and the trainable state our checkpoints store."""

from __future__ import annotations

from torch import Tensor, nn

PARTS = ("ln_vision", "image_qformer", "video_qformer", "frame_position_embedding", "projection", "llm")


def set_frozen(model: nn.Module, frozen: dict[str, bool]) -> None:
    """Freeze or unfreeze whole parts of ``model``; LoRA adapters of a frozen LLM stay trainable."""
    for name, freeze in frozen.items():
        module = model.part(name)
        if module is None:
            continue
        for pname, p in module.named_parameters():
            p.requires_grad = not freeze or (name == "llm" and "lora_" in pname)


def parameter_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(trainable, frozen) parameters of each part the model has."""
    counts = {}
    for name in PARTS:
        module = model.part(name)
        if module is not None:
            counts[name] = (sum(p.numel() for p in module.parameters() if p.requires_grad),
                            sum(p.numel() for p in module.parameters() if not p.requires_grad))
    return counts


def parameter_summary(model: nn.Module) -> str:
    """A table of trainable and frozen parameter counts per part."""
    lines = [f"{'part':<26}{'trainable':>14}{'frozen':>16}"]
    total = [0, 0]
    for name, (train, frozen) in parameter_counts(model).items():
        total[0] += train
        total[1] += frozen
        lines.append(f"{name:<26}{train:>14,}{frozen:>16,}")
    lines.append(f"{'total':<26}{total[0]:>14,}{total[1]:>16,}")
    return "\n".join(lines)


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the parameters that train (what our checkpoints store)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}
