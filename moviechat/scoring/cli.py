"""``moviechat score``: MovieChat-1K scoring of a prediction file (``moviechat.scoring.moviechat1k``)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from moviechat.common.atomic import exclusive
from moviechat.common.errors import run_cli, stop_if_only_checking
from moviechat.scoring.judge import add_judge_arguments, check_judge_arguments, judge_from_args
from moviechat.data.annotations import video_fps
from moviechat.scoring.prediction_sources import provenance
from moviechat.scoring.moviechat1k import evaluate, markdown, read_predictions, references, select_split, write_results


CLI_HELP = """Score predictions against MovieChat-1K style annotations, global and breakpoint separately.

Offline scores (no service): exact match, normalised match, token F1, each with a 95% bootstrap interval
over videos. With --judge-url, a judge model behind an OpenAI-compatible API grades every answer as the
field does. Writes OUT/summary.json, summary.md, per_question.jsonl and the layouts lmms-eval and MovieChat
read (lmms_eval_{global,breakpoint}.jsonl, moviechat_{global,breakpoint}.json).

  moviechat score --predictions preds.jsonl --annotations ANN_DIR --out eval/
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=CLI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="JSONL of predictions (moviechat answer --out)")
    p.add_argument("--annotations", required=True,
                   help="MovieChat-1K style annotation JSONs with answers (found in sub-folders too)")
    p.add_argument("--out", default="eval_results", help="results folder (default: %(default)s)")
    add_judge_arguments(p, "lmms-eval", "the harness published MovieChat-1K numbers are compared with")
    p.add_argument("--split", choices=("all", "heldout", "train"), default="all",
                   help="score only the predictions whose 'split' (written by moviechat answer --annotations) is "
                        "this side of the run's train/held-out split")
    p.add_argument("--skip-bad-lines", action="store_true", help="leave out malformed prediction lines (counted)")
    args = p.parse_args(argv)
    check_judge_arguments(p, args)
    stop_if_only_checking()
    return run_cli(lambda: _score(args))


def _score(args: argparse.Namespace) -> int:
    """One scorer per results folder and per judge cache at a time: a second would judge the same questions
    again (each process reads the cache when it starts)."""
    out = Path(args.out)
    with contextlib.ExitStack() as held:
        held.enter_context(exclusive(out / "summary.json"))
        if args.judge_url and args.judge_cache:
            held.enter_context(exclusive(Path(args.judge_cache), "--judge-cache"))
        return _score_held(args, out)


def _score_held(args: argparse.Namespace, out: Path) -> int:
    predictions = select_split(read_predictions(Path(args.predictions), args.skip_bad_lines), args.split,
                               args.predictions)
    judge = judge_from_args(args, out / "judge_cache.jsonl")
    settings = provenance(predictions, args.predictions)
    rows, summary = evaluate(predictions, references(args.annotations), judge)
    summary["split"] = scored_split(args.split, predictions)
    summary["provenance"] = settings
    if summary["duplicate_predictions"]:
        print(f"{args.predictions}: {summary['duplicate_predictions']} duplicate prediction(s) of questions already "
              f"scored: each question counted once")
    write_results(rows, summary, out, video_fps(args.annotations))
    print(markdown(summary))
    return 0



def scored_split(split: str, predictions: list[dict]) -> str:
    """What the summary says was scored: a side of the run's split, all of it, or videos outside it."""
    sides = {p.get("split") for p in predictions}
    if split == "all" and sides == {"external"}:
        return "external (videos outside the run's training data; not split)"
    return split


if __name__ == "__main__":
    sys.exit(main())
