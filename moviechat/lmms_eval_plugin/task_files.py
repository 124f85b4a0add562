"""``moviechat lmms-eval-tasks``: the tasks moviechat_ft_global and moviechat_ft_breakpoint in a folder for
lmms-eval's ``--include_path``, over a local copy of the MovieChat-1K test release or over the Hub's.

    moviechat lmms-eval-tasks --annotations MC1K_TEST/gt --videos MC1K_TEST/videos --out tasks/mc1k
    moviechat lmms-eval-tasks --hub --out tasks/mc1k_hub   # Enxin/lmms_MovieChat_test, videos under $HF_HOME

The local copy (the layout ``moviechat answer --annotations ... --videos ...`` reads: one JSON per video with
``info``, ``global``, ``breakpoint``, and ``<key>.mp4`` files) becomes ``moviechat_1k_test.jsonl``, one doc per
question in the Hub copy's shape (``video_name``, ``question``, ``answer``, ``time`` = the breakpoint's frame
index) plus ``mode``, ``video_path``, ``fps`` and ``num_frame``. Videos without a file are an error naming them,
or left out and counted with ``--skip-missing``.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

from moviechat.common.atomic import write_text_atomic
from moviechat.common.errors import DataError, run_cli, stop_if_only_checking
from moviechat.data.annotations import load_annotations, video_fps
from moviechat.data.video import find_video_file

DOCS = "moviechat_1k_test.jsonl"
TASKS = ("moviechat_ft_global", "moviechat_ft_breakpoint")
HUB_DATASET = """dataset_path: Enxin/lmms_MovieChat_test
dataset_kwargs:
  token: True
  video: True
  cache_dir: moviechat_1k_test
"""


def task_folder(out: Path, hub: bool = False) -> list[Path]:
    """The task files (YAML + their functions) written into ``out``; with ``hub``, reading the Hub's copy."""
    out.mkdir(parents=True, exist_ok=True)
    shipped = resources.files("moviechat.lmms_eval_plugin") / "tasks"
    written = []
    for name in [f"{t}.yaml" for t in TASKS] + ["moviechat_ft_utils.py"]:
        text = (shipped / name).read_text()
        if hub and name.endswith(".yaml"):
            local = text[text.index("dataset_path:"):text.index("test_split:")]
            text = text.replace(local, HUB_DATASET).replace("read from a local copy", "read from the Hub's copy")
        write_text_atomic(out / name, text)
        written.append(out / name)
    return written


def docs(annotations: Path, videos: Path, skip_missing: bool = False) -> tuple[list[dict], list[str]]:
    """(one doc per question, the videos left out for having no file)."""
    loaded = load_annotations(annotations)
    fps = video_fps(annotations)
    rows, missing = [], []
    for key, qas in sorted(loaded.items()):
        path = find_video_file(videos, key)
        if path is None:
            missing.append(key)
            continue
        for i, qa in enumerate(qas):
            rows.append({"video_name": path.name, "question": qa.question, "answer": qa.raw[1] or qa.answer,
                         "time": qa.frame if qa.mode == "breakpoint" else None, "mode": qa.mode,
                         "video_path": str(path.resolve()), "fps": fps[key], "num_frame": qa.num_frame,
                         "question_id": f"{key}/{qa.mode}/{i}"})
    if missing and not skip_missing:
        raise DataError(f"{len(missing)} annotated video(s) have no file in {videos} ({', '.join(missing[:10])}"
                        f"{' ...' if len(missing) > 10 else ''}): add them, or leave them out with --skip-missing")
    return rows, missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the task folder (give it to lmms-eval as --include_path)")
    p.add_argument("--annotations", help="the release's ground truth: one JSON per video (gt/)")
    p.add_argument("--videos", help="the videos: <key>.mp4 (or another video suffix)")
    p.add_argument("--hub", action="store_true", help="read Enxin/lmms_MovieChat_test from the Hub instead")
    p.add_argument("--skip-missing", action="store_true", help="leave out (and count) videos without a file")
    args = p.parse_args(argv)
    if args.hub == bool(args.annotations or args.videos) or (not args.hub and not (args.annotations and args.videos)):
        p.error("give --annotations and --videos (a local copy), or --hub")
    stop_if_only_checking()
    return run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.hub:
        task_folder(out, hub=True)
        print(f"{out}: {', '.join(TASKS)} over Enxin/lmms_MovieChat_test (videos under $HF_HOME/moviechat_1k_test/"
              f"Test_Videos or $MOVIECHAT_VIDEOS)")
        return 0
    rows, missing = docs(Path(args.annotations), Path(args.videos), args.skip_missing)
    task_folder(out)
    write_text_atomic(out / DOCS, "".join(json.dumps(r) + "\n" for r in rows))
    n_global = sum(r["mode"] == "global" for r in rows)
    print(f"{out}: {n_global} global and {len(rows) - n_global} breakpoint question(s) of "
          f"{len({r['video_name'] for r in rows})} video(s) -> {', '.join(TASKS)}"
          + (f"; {len(missing)} video(s) without a file left out ({', '.join(missing[:10])})" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
