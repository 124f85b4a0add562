"""Held-out accuracy during training: loss by teacher forcing and accuracy by greedy generation, overall,
per mode and per question type, beside the prior baseline, reduced over ranks with fixed metric names."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Optional

from moviechat.common.distributed import all_reduce_named
from moviechat.text.answers import normalize_answer, normalized_match
from moviechat.text.prompt import PromptFormat


def prior_answers(qas_by_video: dict[str, list], keys: Iterable[str]) -> dict[str, str]:
    """The most frequent training answer of each question type: the baseline accuracy to beat. A tie goes to the
    first answer in sorted order, so the baseline never depends on the order ``keys`` come in (a set's order
    changes from process to process)."""
    by_type: dict[str, Counter] = {}
    for key in keys:
        for qa in qas_by_video[key]:
            by_type.setdefault(qa.qtype, Counter())[normalize_answer(qa.answer)] += 1
    return {qtype: min(counts, key=lambda a: (-counts[a], a)) for qtype, counts in by_type.items()}


def accuracy_groups(qas_by_video: dict[str, list]) -> list[str]:
    """Every accuracy group a data set can report, known before training: the same list on every rank,
    whatever questions a rank's evaluation happens to hold."""
    types = sorted({qa.qtype for qas in qas_by_video.values() for qa in qas if qa.qtype})
    return ["all", "global", "breakpoint", "prior"] + [f"type_{t}" for t in types]


class HeldOutEvaluator:
    """Held-out loss (teacher forcing) and QA accuracy (greedy generation) of the model being trained.

    ``batches(limit, with_answers)`` yields this rank's held-out batches on the model's device; ``limit``
    is per rank. Every rank sums the same named counts in the same order (``loss_sum``, ``tokens``, then
    ``correct/<group>`` and ``total/<group>`` for each of :func:`accuracy_groups`), so ranks that saw different
    question types, or different numbers of questions, agree; a group no rank saw is left out of the record
    rather than shown as 0%.
    """

    def __init__(self, *, engine, batches: Callable[[Optional[int], bool], Iterator[dict[str, Any]]], tokenizer,
                 prompt_format: PromptFormat, groups: list[str], prior: dict[str, str], device, world_size: int = 1):
        self.engine, self.batches, self.tokenizer = engine, batches, tokenizer
        self.groups, self.prior, self.format, self.stop = groups, prior, prompt_format, prompt_format.stop()
        self.device, self.world_size = device, world_size

    def __call__(self, step: int, loss_samples: int, generate_samples: int, max_new_tokens: int) -> dict[str, Any]:
        per_rank = lambda n: math.ceil(n / self.world_size) if n else None  # noqa: E731
        loss_sum, tokens = self._loss(per_rank(loss_samples))
        counts = self._accuracy(per_rank(generate_samples), max_new_tokens) if generate_samples else {}
        sums = {"loss_sum": loss_sum, "tokens": tokens}
        for group in self.groups:
            sums[f"correct/{group}"], sums[f"total/{group}"] = counts.get(group, (0.0, 0.0))
        reduced = all_reduce_named(sums, self.device, what="held-out evaluation")
        record: dict[str, Any] = {"step": step, "eval/loss": reduced["loss_sum"] / max(reduced["tokens"], 1),
                                  "eval/tokens": int(reduced["tokens"])}
        if not generate_samples:
            return record
        for group in self.groups:
            correct, total = reduced[f"correct/{group}"], reduced[f"total/{group}"]
            if total:
                record["eval/acc" if group == "all" else f"eval/acc_{group}"] = correct / total
                record[f"eval/n_{group}"] = int(total)
        return record

    def _loss(self, limit: Optional[int]) -> tuple[float, float]:
        loss_sum, tokens = 0.0, 0.0
        for batch in self.batches(limit, True):
            out = self.engine(batch)
            n = float(out["num_tokens"])
            loss_sum += float(out["loss"]) * n
            tokens += n
        return loss_sum, tokens

    def _accuracy(self, limit: Optional[int], max_new_tokens: int) -> dict[str, list[float]]:
        counts = {g: [0.0, 0.0] for g in self.groups}
        for batch in self.batches(limit, False):
            generated = self.engine.module.generate(batch, max_new_tokens, self.stop)
            for ids, answer, mode, qtype in zip(generated, batch["answers"], batch["modes"], batch["qtypes"]):
                hit = normalized_match(self.format.extract_answer(self.tokenizer.decode(ids, skip_special_tokens=True)), answer)
                for group in {"all", mode, f"type_{qtype}" if qtype else mode}:
                    counts[group][0] += hit
                    counts[group][1] += 1
                counts["prior"][0] += normalized_match(self.prior.get(qtype, ""), answer)
                counts["prior"][1] += 1
        return counts


def combine_records(step: int, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One evaluation record for several datasets (a mixture): the loss over all their held-out tokens,
    accuracy and prior over all their questions, and each dataset's own record as ``eval/<name>/...``."""
    if len(records) == 1:
        return next(iter(records.values()))
    out: dict[str, Any] = {"step": step}
    tokens = sum(r["eval/tokens"] for r in records.values())
    out["eval/loss"] = sum(r["eval/loss"] * r["eval/tokens"] for r in records.values()) / max(tokens, 1)
    out["eval/tokens"] = tokens
    for key, n in (("eval/acc", "eval/n_all"), ("eval/acc_prior", "eval/n_prior")):
        total = sum(r.get(n, 0) for r in records.values())
        if total:
            out[key] = sum(r[key] * r[n] for r in records.values() if r.get(n)) / total
            out[n] = total
    for name, record in records.items():
        out.update({f"eval/{name}/{k[len('eval/'):]}": v for k, v in record.items() if k != "step"})
    return out
