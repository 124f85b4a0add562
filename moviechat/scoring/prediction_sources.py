"""What a score's predictions were made with, gathered from the predictions into the summary (run, checkpoint
step, config hash, memory preset, sampling, generation, breakpoint conventions: ``moviechat.runs.provenance``),
so that a number in ``summary.json`` says where it comes from. A file whose predictions differ in any of them
is refused: its scores would average two models or two settings."""

from __future__ import annotations

from collections import Counter
from typing import Any

from moviechat.common.errors import DataError
from moviechat.runs.provenance import FIELDS

FEATURES_AS_STORED = "features as stored"  # predictions made on feature files (no decoding) record no sampling


def provenance(predictions: list[dict], source: Any) -> dict[str, Any]:
    """One value per field (None: the predictions do not say, as older files do not); a field with several
    values is a DataError naming it, its values and how many predictions have each."""
    out: dict[str, Any] = {}
    for field in FIELDS:
        counts = Counter(_value(p, field) for p in predictions)
        if len(counts) > 1:
            seen = ", ".join(f"{v!r} ({n})" for v, n in counts.most_common())
            raise DataError(f"{source}: predictions made with different settings: {field} = {seen}; score each "
                            f"set of predictions apart (one moviechat answer --out per model and setting)")
        out[field] = next(iter(counts)) if counts else None
    return out


def _value(prediction: dict, field: str) -> Any:
    if field == "sampling" and "sampling" not in prediction and "generation" in prediction:
        return FEATURES_AS_STORED
    return prediction.get(field)


def provenance_lines(summary: dict[str, Any]) -> str:
    """The summary's provenance as lines for summary.md."""
    given = summary.get("provenance") or {}
    return "".join(f"{field}: {given[field]}\n" for field in FIELDS if given.get(field) is not None)
