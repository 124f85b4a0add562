"""Task functions of moviechat_ft_global and moviechat_ft_breakpoint (lmms-eval loads this file by path).

Each task keeps its own questions (lmms-eval's moviechat_global and moviechat_breakpoint both run over every
doc). Judging and aggregation are lmms-eval's own moviechat functions, re-exported here, so the judged numbers
are lmms-eval's; its judge is ``OPENAI_API_URL`` with model ``MODEL_VERSION``.

A doc names its video by ``video_path`` (absolute, or relative to this folder) or, as the Hub copy does, by
``video_name`` under ``$MOVIECHAT_VIDEOS`` (default ``$HF_HOME/moviechat_1k_test/Test_Videos``). A breakpoint's
``time`` is a frame index of the original video; ``fps`` and ``num_frame`` (the release's ``info``), when the doc
has them, go with it to the model.
"""

import os
from pathlib import Path

# lmms-eval's moviechat utils read HF_HOME when imported
os.environ.setdefault("HF_HOME", str(Path.home() / ".cache" / "huggingface"))

from lmms_eval.tasks.moviechat.utils import (  # noqa: E402,F401  (re-exported for the task files)
    moviechat_aggregate_acc, moviechat_aggregate_score, moviechat_doc_to_answer, moviechat_doc_to_text,
    moviechat_process_results_generic)

from moviechat.data.video import VIDEO_SUFFIXES  # noqa: E402

HERE = Path(__file__).resolve().parent
SUFFIXES = ("",) + VIDEO_SUFFIXES + tuple(s.upper() for s in VIDEO_SUFFIXES)


def is_global(doc) -> bool:
    """A global question: ``mode`` says so, or (docs without it) it has no breakpoint ``time``."""
    if doc.get("mode"):
        return doc["mode"] == "global"
    return doc.get("time") is None or doc["time"] < 0


def global_docs(dataset):
    return dataset.filter(is_global)


def breakpoint_docs(dataset):
    return dataset.filter(lambda doc: not is_global(doc))


def video_path(doc) -> str:
    """The doc's video file; a missing one is an error naming the doc's video and where it was looked for."""
    if doc.get("video_path"):
        base = HERE / doc["video_path"]
    else:
        folder = os.environ.get("MOVIECHAT_VIDEOS") or os.path.join(os.environ["HF_HOME"], "moviechat_1k_test",
                                                                   "Test_Videos")
        base = Path(folder) / doc["video_name"]
    stem = base.with_suffix("") if base.suffix.lower() in SUFFIXES[1:] else base
    for candidate in [base] + [stem.with_name(stem.name + s) for s in SUFFIXES[1:]]:
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"video {doc.get('video_name')!r}: no file at {base} (or with another video suffix)")


def doc_to_visual(doc):
    return [video_path(doc)]


def doc_to_visual_breakpoint(doc):
    visual = {"video_path": video_path(doc), "timestep": doc["time"]}
    for key in ("fps", "num_frame"):
        if doc.get(key) is not None:
            visual[key] = doc[key]
    return [visual]
