"""Every shell command the README and the docs/ pages show still works as written: each `make` target exists,
and each `moviechat ...` / `python ...` command parses its arguments and config (``MOVIECHAT_CHECK_ARGS=1``
stops a command right there), so a renamed flag, config key or file in the docs fails here instead of in a
user's first hour."""

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import REPO

EXTERNAL = {"huggingface-cli", "source", "pip", "tar"}  # other programs: the README names them, we do not run them
PLACEHOLDER_CFG = "configs/experiments/tiny_synthetic.yaml"  # for `--cfg configs/experiments/X.yaml` / `X.yaml`


PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_commands() -> list[str]:
    """The commands of the README's and docs pages' ```bash blocks, continuation lines joined, comments dropped."""
    text = "\n".join(page.read_text() for page in PAGES)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                commands.append(line.strip())
    return commands


def as_argv(command: str) -> list[str]:
    """Tokens with optional ``[--flag ...]`` parts taken in (so they are checked too) and placeholders filled."""
    command = re.sub(r"\[([^\]]*)\]", r"\1", command)
    argv = shlex.split(command, comments=True)
    return [PLACEHOLDER_CFG if a.endswith("X.yaml") else a for a in argv]


COMMANDS = readme_commands()


def test_the_readme_has_commands_and_no_unfilled_placeholders():
    assert len(COMMANDS) > 15
    assert not [c for c in COMMANDS if re.search(r"<[^>]+>", c)], "README commands with <placeholders>"


def test_every_make_target_of_the_readme_exists():
    targets = set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    used = [as_argv(c)[1] for c in COMMANDS if c.startswith("make ")]
    assert used and set(used) <= targets, set(used) - targets


def check(argv: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"MOVIECHAT_CHECK_ARGS": "1", "DS_ACCELERATOR": "cpu"}
    command = ["-m", "moviechat", *argv[1:]] if argv[0] == "moviechat" else argv[1:]
    return subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_every_moviechat_and_python_command_of_the_docs_parses():
    python = [as_argv(c) for c in COMMANDS if c.startswith(("python ", "moviechat "))]
    other = [as_argv(c)[0] for c in COMMANDS if not c.startswith(("python ", "moviechat ", "make "))]
    assert set(other) <= EXTERNAL, set(other) - EXTERNAL
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(check, python))
    failed = [(" ".join(argv), r.returncode, (r.stderr or r.stdout)[-500:])
              for argv, r in zip(python, results) if r.returncode != 0 or "arguments ok" not in r.stdout]
    assert not failed, "\n\n".join(f"{c}\n-> exit {rc}: {err}" for c, rc, err in failed)


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["train.py", "--cfg", PLACEHOLDER_CFG, "memory.long_memory_policy=banana"],
     "command-line override 'memory.long_memory_policy=banana': memory.long_memory_policy='banana' must be one of"),
    (["-m", "moviechat", "train", "--cfg", "tiny_synthetic", "--resume", "runs/nope"],
     "run folder error: no checkpoint at runs/nope"),
    (["-m", "moviechat", "train", "--cfg", "tiny_synthetc"], "config 'tiny_synthetc' not found"),
    (["-m", "moviechat", "export", "runs/nope"], "error: no checkpoint at runs/nope"),
    (["-m", "moviechat", "answer", "runs/nope", "--question", "q", "--features", "x.npy"],
     "error: no checkpoint at runs/nope"),
    (["-m", "moviechat", "score", "--predictions", "nope.jsonl", "--annotations", "x"],
     "error: --predictions nope.jsonl: no such file"),
    (["-m", "moviechat", "sweep", "--sweep", "nope"], "config 'nope' not found"),
    (["-m", "moviechat", "trian"], "error: unknown verb 'trian'"),
])
def test_a_mistake_is_one_line_and_exit_2(tmp_path, argv, message):
    proc = subprocess.run([sys.executable, *[str(REPO / a) if a.endswith((".py", ".yaml")) else a for a in argv]],
                          cwd=tmp_path,
                          env=os.environ | {"DS_ACCELERATOR": "cpu"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
