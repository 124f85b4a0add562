"""``moviechat recall-map``: where in a long video a run's memory loses a needle (LongVA's V-NIAH, on frame tokens).

    moviechat recall-map RUN --lengths 64,256,1024 --depths 0,0.5,1 --out DIR [--per-cell 12]
        [--modes global,breakpoint] [memory.long_memory_length=64 memory.preset=original ...]

Writes into DIR the needle videos it asks about (``videos/``, seeded apart from every training video, one
needle each; moviechat/data/needles.py) and ``questions.jsonl``, answers them as ``moviechat answer`` does
(``predictions.jsonl``; re-running continues where it stopped), then scores them:

* ``recall_map.csv``: one row per mode, length and depth: questions, correct, accuracy;
* ``recall_map.png``: accuracy by video length x needle depth, one panel per mode;
* ``summary.json``: the mean accuracy (a sweep's or search's objective: ``recall_map/mean``), per mode, the
  grid, the memory it was answered with and the run's provenance.

The memory is the run's unless ``memory.*`` overrides (a preset included) are given. A question is asked in
global mode and at a breakpoint on the video's last frame, so a needle's depth is its distance from the question.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moviechat.answering.answerer import Answerer
from moviechat.answering.lookups import FeatureLookup
from moviechat.answering.whole_split import answer_file
from moviechat.common.atomic import atomic_path, write_text_atomic
from moviechat.common.errors import UserError, stop_if_only_checking
from moviechat.common.jsonl import read_jsonl
from moviechat.config.errors import ConfigError
from moviechat.data.needles import map_grid_problems, map_needle_video, scenery_patterns
from moviechat.data.scenes import prototypes
from moviechat.data.stores import write_folder
from moviechat.memory import MemoryConfig
from moviechat.text.answers import normalized_match

OBJECTIVE = "recall_map/mean"


def memory_with(memory: MemoryConfig, overrides: Sequence[str], position_rows: int) -> MemoryConfig:
    """The run's memory settings with ``memory.key=value`` overrides; any other key, or a bad value, is an error."""
    for item in overrides:
        if not item.startswith("memory.") or "=" not in item:
            raise ConfigError(f"override {item!r}: recall-map takes memory.key=value overrides only")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(memory),
                                 OmegaConf.from_dotlist([o.removeprefix("memory.") for o in overrides]))
        out = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"command-line override: memory.{getattr(e, 'full_key', '?')}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise ConfigError(f"command-line override: {e}") from None
    try:
        out.check_table(position_rows)
    except ValueError as e:
        raise ConfigError(f"command-line override: {e}") from None
    return out


def grid_questions(cfg, lengths: Sequence[int], depths: Sequence[float], per_cell: int, modes: Sequence[str],
                   videos: Path) -> list[dict]:
    """Write the grid's needle videos into ``videos`` (once) and return its questions, one row per video and mode."""
    syn, q = cfg.data.synthetic, cfg.model.image_qformer
    needle_frames = syn.needles.needle_frames
    protos = prototypes(syn.num_colors, q.num_query_tokens, q.hidden_size, syn.seed)
    scenery = scenery_patterns(q.num_query_tokens, q.hidden_size, syn.seed)
    rows, made = [], []
    for length in lengths:
        for depth in depths:
            for i in range(per_cell):
                video = map_needle_video(length, depth, i, syn.seed, protos, scenery, needle_frames, syn.min_scene,
                                         syn.max_scene, syn.noise)
                made.append(video.features)
                for qa in video.qas:
                    if qa.mode in modes:
                        rows.append({"video": video.features.key, "question": qa.question, "answer": qa.answer,
                                     "length": length, "depth": depth, "id": f"{video.features.key}:{qa.mode}",
                                     **({"time": qa.seconds} if qa.mode == "breakpoint" else {})})
    if not videos.is_dir():
        with atomic_path(videos) as tmp:
            write_folder(made, tmp)
    return rows


def score(predictions: Path, modes: Sequence[str], lengths: Sequence[int], depths: Sequence[float]) -> list[dict]:
    """One row per (mode, length, depth): questions, correct and accuracy of the predictions."""
    cells = {(m, n, d): [0, 0] for m in modes for n in lengths for d in depths}
    for row in read_jsonl(predictions):
        cell = cells.get((row["mode"], row["length"], row["depth"]))
        if cell is not None:
            cell[0] += 1
            cell[1] += int(normalized_match(row["prediction"], row["answer"]))
    return [{"mode": m, "length": n, "depth": d, "questions": c[0], "correct": c[1],
             "accuracy": c[1] / c[0] if c[0] else float("nan")} for (m, n, d), c in cells.items()]


def write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def draw(rows: list[dict], modes: Sequence[str], lengths: Sequence[int], depths: Sequence[float], title: str,
         path: Path) -> None:
    """Accuracy heatmaps (length x depth), one per mode, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    acc = {(r["mode"], r["length"], r["depth"]): r["accuracy"] for r in rows}
    fig, axes = plt.subplots(1, len(modes), figsize=(2.0 + (1.2 + 0.75 * len(depths)) * len(modes), 1.9 + 0.5 * len(lengths)),
                             squeeze=False, layout="constrained")
    for ax, mode in zip(axes[0], modes):
        grid = np.array([[acc[(mode, n, d)] for d in depths] for n in lengths])
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black", fontsize=8)
        ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_xlabel("needle depth (0: first frame, 1: last)")
        ax.set_ylabel("video length (frames)")
        ax.set_title(mode)
    fig.colorbar(image, ax=axes[0].tolist(), label="accuracy")
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def claim_folder(out: Path, settings: dict) -> None:
    """Record what a folder's predictions are answered with; a second run with other settings would mix two
    maps in one file (predictions are reused across runs), so it is refused."""
    path = out / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            raise UserError(f"{out} holds a recall map answered with other settings ({', '.join(changed)} differ): "
                            f"give another --out, or delete it")
        return
    write_text_atomic(path, json.dumps(settings, indent=1) + "\n")


def recall_map(answerer: Answerer, lengths: Sequence[int], depths: Sequence[float], per_cell: int,
               modes: Sequence[str], out: Path) -> dict:
    """Answer and score the grid into ``out``; returns the summary (also ``out/summary.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    claim_folder(out, {"memory": asdict(answerer.cfg.memory), "per_cell": per_cell, "modes": list(modes),
                       "max_new_tokens": answerer.max_new_tokens, **answerer.source})
    questions = grid_questions(answerer.cfg, lengths, depths, per_cell, modes, out / "videos")
    write_text_atomic(out / "questions.jsonl", "".join(json.dumps(r) + "\n" for r in questions))
    answer_file(answerer, questions, FeatureLookup(str(out / "videos"), None, "tokens"), out / "predictions.jsonl")
    rows = score(out / "predictions.jsonl", modes, lengths, depths)
    write_csv(rows, out / "recall_map.csv")
    by_mode = {m: _mean([r["accuracy"] for r in rows if r["mode"] == m]) for m in modes}
    mem = answerer.cfg.memory
    summary = {OBJECTIVE: _mean([r["accuracy"] for r in rows]), "by_mode": by_mode, "lengths": list(lengths),
               "depths": list(depths), "per_cell": per_cell, "modes": list(modes), "questions": len(questions),
               "chance": 1 / answerer.cfg.data.synthetic.num_colors, "memory": asdict(mem), **answerer.source}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    title = (f"{Path(answerer.source.get('run', '?')).name} step {answerer.source.get('step')}: L={mem.long_memory_length} "
             f"{mem.long_memory_policy}, K={mem.short_memory_length}, m={mem.short_memory_merge}, preset {mem.preset}")
    draw(rows, modes, lengths, depths, title, out / "recall_map.png")
    return summary


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _numbers(text: str, kind, flag: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}={text!r} must be a comma-separated list of numbers") from None
    if not values:
        raise UserError(f"{flag}={text!r} names no value")
    return values


def parse_grid(args: argparse.Namespace) -> tuple[list[int], list[float], list[str]]:
    lengths, depths = _numbers(args.lengths, int, "--lengths"), _numbers(args.depths, float, "--depths")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [f"--{p.replace('per_cell', 'per-cell')}" for p in map_grid_problems(lengths, depths, modes, args.per_cell)]
    bad += [f"--{k.replace('_', '-')}={getattr(args, k)} (needs >= 1)" for k in ("batch_size", "max_new_tokens")
            if getattr(args, k) < 1]
    if bad:
        raise UserError("recall-map: " + "; ".join(bad))
    return sorted(set(lengths)), sorted(set(depths)), list(dict.fromkeys(modes))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder or checkpoint (moviechat train), or an hf export folder")
    p.add_argument("--lengths", default="64,256,1024", help="video lengths in frames (default: %(default)s)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1] (default: %(default)s)")
    p.add_argument("--per-cell", type=int, default=12, help="videos per length and depth (default: %(default)s)")
    p.add_argument("--modes", default="global,breakpoint", help="(default: %(default)s)")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=32, help="questions generated together (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="(default: %(default)s; answers are one word)")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("overrides", nargs="*", help="memory.key=value settings to answer with instead of the run's")
    args = p.parse_intermixed_args(argv)
    lengths, depths, modes = parse_grid(args)
    stop_if_only_checking()
    answerer = Answerer.load(args.run, args.max_new_tokens, trust=args.trust_checkpoint, batch_size=args.batch_size)
    if args.overrides:
        answerer.use_memory(memory_with(answerer.cfg.memory, args.overrides, answerer.cfg.model.frame_position_rows))
    summary = recall_map(answerer, lengths, depths, args.per_cell, modes, Path(args.out))
    by_mode = ", ".join(f"{m} {v:.3f}" for m, v in summary["by_mode"].items())
    print(f"recall map: mean accuracy {summary[OBJECTIVE]:.3f} ({by_mode}; chance {summary['chance']:.3f}) over "
          f"{summary['questions']} questions -> {args.out}/recall_map.png, recall_map.csv, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
