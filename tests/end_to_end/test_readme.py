"""Every shell command the README and the docs/ pages show still works as written: each `make` target exists,
and each `moviechat ...` / `python ...` command parses its arguments and config (``MOVIECHAT_CHECK_ARGS=1``
stops a command right there), so a renamed flag, config key or file in the docs fails here instead of in a
user's first hour."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import REPO
from prefork import run_python

# other programs: the docs name them, this test does not run them (tests/lmms_eval_plugin/test_lmms_eval_plugin.py runs lmms-eval)
EXTERNAL = {"huggingface-cli", "source", "pip", "tar", "export", "lmms-eval", "accelerate", "torchrun"}
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


CHECK_ENV = {"MOVIECHAT_CHECK_ARGS": "1", "DS_ACCELERATOR": "cpu"}


def check(argv: list[str]) -> subprocess.CompletedProcess:
    """A ``python ...`` command of the docs (forked pre-imported: prefork.py)."""
    return run_python(argv[1:], cwd=REPO, env=os.environ | CHECK_ENV, timeout=300)


# every `moviechat` command in one process (the package imported once), each as the command line runs it
CHECK_VERBS = """
import contextlib, io, json, sys
from moviechat.__main__ import main
results = []
for argv in json.loads(open(sys.argv[1]).read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results.append({"code": code or 0, "out": out.getvalue(), "err": err.getvalue()})
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


def check_verbs(commands: list[list[str]], tmp_path) -> list[dict]:
    (tmp_path / "verbs.json").write_text(json.dumps([c[1:] for c in commands]))
    proc = run_python(["-c", CHECK_VERBS, tmp_path / "verbs.json", tmp_path / "results.json"], cwd=REPO,
                      env=os.environ | CHECK_ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text())


@pytest.mark.slow
def test_every_moviechat_and_python_command_of_the_docs_parses(tmp_path):
    verbs = [as_argv(c) for c in COMMANDS if c.startswith("moviechat ")]
    python = [as_argv(c) for c in COMMANDS if c.startswith("python ")]
    other = [as_argv(c)[0] for c in COMMANDS if not c.startswith(("python ", "moviechat ", "make "))]
    assert set(other) <= EXTERNAL, set(other) - EXTERNAL
    assert len(verbs) > 15
    results = [(r["code"], r["out"], r["err"]) for r in check_verbs(verbs, tmp_path)]
    results += [(r.returncode, r.stdout, r.stderr) for r in map(check, python)]
    failed = [(" ".join(argv), code, (err or out)[-500:])
              for argv, (code, out, err) in zip(verbs + python, results) if code != 0 or "arguments ok" not in out]
    assert not failed, "\n\n".join(f"{c}\n-> exit {rc}: {err}" for c, rc, err in failed)


MISTAKES = [
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
]


FRESH = {"train.py", "answer"}  # in new interpreters: nothing else printed while torch, transformers, DeepSpeed import


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", MISTAKES)
def test_a_mistake_is_one_line_and_exit_2(tmp_path, argv, message):
    args = [str(REPO / a) if a.endswith((".py", ".yaml")) else a for a in argv]
    env = os.environ | {"DS_ACCELERATOR": "cpu"}
    if FRESH & set(argv):
        proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
    else:  # forked pre-imported (prefork.py)
        proc = run_python(args, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
