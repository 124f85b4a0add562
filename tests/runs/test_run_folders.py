"""Run folders and resumes under what users do: re-used names, roll-backs, changed configs, corrupt or
missing checkpoints, a `latest` that points elsewhere. Each scenario runs the real train.py on the tiny config."""

import json
import os
import shutil

import pytest

from helpers import TINY, attempt_train, run_train
from moviechat.common.jsonl import read_jsonl
from moviechat.runs.folder import config_changes, truncate_metrics
from moviechat.runs.loading import load_run

BASE = ["train.max_steps=6", "train.save_every=2", "train.keep_last=3", "train.eval_every=0", "train.eval_generate=0"]


def steps(run) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step"))


def corrupt(folder) -> str:
    states = folder / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:100])
    return str(states)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Six steps of the tiny model, trained once per module and never changed: each test gets its own copy."""
    tmp = tmp_path_factory.mktemp("reliability")
    run_train(tmp, "run.name=r", *BASE)
    return tmp / "r"


@pytest.fixture
def base_run(trained_run, tmp_path):
    """A copy of the trained run in a folder of its own: tests that resume, corrupt or re-configure it pass in
    any order (they shared one folder, and one test's config change broke another in a random order)."""
    shutil.copytree(trained_run, tmp_path / "r", symlinks=True)
    return tmp_path, tmp_path / "r"


@pytest.mark.slow
def test_a_finished_run_logs_real_grad_norms_and_its_status(base_run):
    _, run = base_run
    norms = [r["grad_norm"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert len(norms) == 6 and all(isinstance(n, float) and n > 0 for n in norms)
    status = json.loads((run / "status.json").read_text())
    assert status.pop("time") > 0 and status == {"status": "finished", "step": 6, "max_steps": 6}
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for path in (run / "config.yaml", run / "status.json", run / "checkpoints" / "latest"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path  # the umask's mode, not mkstemp's 0600


@pytest.mark.slow
def test_reusing_a_run_name_without_resume_is_refused_and_destroys_nothing(base_run):
    tmp, run = base_run
    before = steps(run)
    proc = attempt_train(tmp, "run.name=r", "train.max_steps=2", "train.save_every=1")
    assert proc.returncode == 2
    assert f"already holds checkpoints; continue it with --resume {run}" in proc.stderr
    assert "another run.name" in proc.stderr and steps(run) == before


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_and_a_named_one_fails(base_run):
    tmp, run = base_run
    bad = corrupt(run / "checkpoints" / "step00000006")
    proc = attempt_train(tmp, "run.name=r", *BASE, resume=str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"warning: checkpoint {run / 'checkpoints' / 'step00000006'} cannot be loaded ({bad}:" in proc.stdout
    assert "resumed from" in proc.stdout and "step00000004 at step 4" in proc.stdout
    logged = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert logged == [1, 2, 3, 4, 5, 6]  # steps 5 and 6 logged once: the first attempt's rows were dropped
    bad = corrupt(run / "checkpoints" / "step00000004")
    proc = attempt_train(tmp, "run.name=r", *BASE, resume=str(run / "checkpoints" / "step00000004"))
    assert proc.returncode == 1 and f"cannot resume from {run / 'checkpoints' / 'step00000004'}: {bad}" in proc.stderr


@pytest.mark.slow
def test_resume_refuses_a_changed_memory_key_unless_allowed_and_records_it(base_run):
    tmp, run = base_run
    proc = attempt_train(tmp, "run.name=r", *BASE, "memory.long_memory_length=8", resume=str(run))
    assert proc.returncode == 2 and "memory.long_memory_length: 16 -> 8" in proc.stderr
    assert "--allow-config-change" in proc.stderr
    proc = attempt_train(tmp, "run.name=r", *BASE, "memory.long_memory_length=8", resume=str(run),
                   extra=["--allow-config-change"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the run already finished (step 6, train.max_steps=6)" in proc.stdout
    change = json.loads((run / "config_changes.jsonl").read_text().splitlines()[-1])
    assert change["step"] == 6 and change["changes"] == {"memory.long_memory_length": [16, 8]}
    assert config_changes({"train": {"max_steps": 6, "lr": 1.0}}, {"train": {"max_steps": 9, "lr": 1.0}}) == {}


@pytest.mark.slow
def test_rolling_back_with_keep_last_1_keeps_later_checkpoints_and_a_loadable_latest(base_run):
    tmp, run = base_run
    (run / "checkpoints" / ".partial-step00000008").mkdir()  # left by a run killed while saving
    proc = run_train(tmp, "run.name=r", "train.max_steps=5", "train.save_every=1", "train.keep_last=1",
                     "train.eval_every=0", "train.eval_generate=0", resume=str(run / "checkpoints" / "step00000004"))
    assert "removed partial checkpoint(s) of an interrupted save: .partial-step00000008" in proc.stdout
    assert steps(run) == ["step00000005", "step00000006"]  # the rolled-back-from step 6 is left alone
    assert (run / "checkpoints" / "latest").read_text() == "step00000005"
    assert load_run(run)[3].name == "step00000005"


def test_truncate_metrics_drops_later_rows_and_a_half_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    assert truncate_metrics(path, 2) == 2 and path.read_text() == '{"step": 1}\n{"step": 2}\n'


@pytest.mark.slow
def test_resuming_one_runs_checkpoint_under_another_name_never_touches_either(base_run):
    tmp, run = base_run
    run_train(tmp, "run.name=other", "train.max_steps=4", "train.save_every=2", "train.eval_every=0",
              "train.eval_generate=0")
    other = tmp / "other"
    before = {p: p.read_bytes() for p in [other / "metrics.jsonl", *sorted((other / "checkpoints").rglob("*.pt"))]}
    r_before = steps(run)
    proc = attempt_train(tmp, "run.name=other", *BASE, resume=str(run / "checkpoints" / "step00000004"))
    assert proc.returncode == 2 and f"belongs to run {run}, but run.name points at {other}, which holds another run" \
        in proc.stderr
    assert {p: p.read_bytes() for p in before} == before and steps(run) == r_before
    # a new name: a new run folder started from that checkpoint, said at start; the source is left alone
    proc = attempt_train(tmp, "run.name=fork", *BASE, "train.keep_last=1", resume=str(run / "checkpoints" / "step00000004"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"new run folder {tmp / 'fork'}, started from {run / 'checkpoints' / 'step00000004'}" in proc.stdout
    assert steps(run) == r_before and steps(tmp / "fork") == ["step00000006"]
    assert [r["step"] for r in read_jsonl(tmp / "fork" / "metrics.jsonl") if "loss" in r] == [5, 6]


@pytest.mark.slow
def test_a_folder_with_metrics_but_no_checkpoint_is_refused(tmp_path):
    (tmp_path / "died").mkdir()
    (tmp_path / "died" / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    proc = attempt_train(tmp_path, "run.name=died", "train.max_steps=1")
    assert proc.returncode == 2 and "already holds metrics.jsonl of a run (no checkpoint)" in proc.stderr
    assert (tmp_path / "died" / "metrics.jsonl").read_text() == '{"step": 1, "loss": 3.0}\n'


@pytest.mark.slow
def test_a_checkpoint_missing_its_model_states_falls_back_like_a_corrupt_one(base_run):
    tmp, run = base_run
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text()
    (latest / "mp_rank_00_model_states.pt").unlink()
    proc = attempt_train(tmp, "run.name=r", *BASE, resume=str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"warning: checkpoint {latest} cannot be loaded ({latest} lacks the model states" in proc.stdout
    assert "resuming from" in proc.stdout


@pytest.mark.slow
def test_resume_of_a_missing_run_is_one_line_and_exit_2(tmp_path):
    proc = attempt_train(tmp_path, "train.max_steps=1", resume=str(tmp_path / "nope"))
    assert proc.returncode == 2 and "run folder error: no checkpoint at" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("latest", ["../../A/checkpoints/step00000004", "step00000004/../../../A/checkpoints/x",
                                    "/etc", "stepX"])
def test_latest_must_name_a_checkpoint_inside_its_own_run(tmp_path, capsys, latest):
    """A ``latest`` leading out of the run would answer with, export from and write into another run's folder."""
    from moviechat.__main__ import main

    other = tmp_path / "A" / "checkpoints" / "step00000004"
    other.mkdir(parents=True)
    (other / "trainer_state_rank0.pt").write_bytes(b"")
    run = tmp_path / "L" / "checkpoints"
    run.mkdir(parents=True)
    (run / "latest").write_text(latest)
    commands = [["answer", str(tmp_path / "L"), "--question", "q", "--features", str(tmp_path / "x.npy")],
                ["export", str(tmp_path / "L"), "--format", "moviechat"],
                ["train", "--cfg", "tiny_synthetic", "--resume", str(tmp_path / "L")]]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "is not a checkpoint inside" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in (tmp_path / "A").rglob("*")) == ["checkpoints", "step00000004",
                                                                     "trainer_state_rank0.pt"]  # nothing written


@pytest.mark.parametrize("link", ["checkpoints", "latest"])
def test_a_linked_checkpoints_folder_or_latest_is_refused_and_never_printed(tmp_path, capsys, link):
    """A link to another run's checkpoints would answer with its weights and, on resume, prune and write them; a
    ``latest`` linked to a file would print the file in the error."""
    from moviechat.__main__ import main

    other = tmp_path / "B" / "checkpoints"
    (other / "step00000004").mkdir(parents=True)
    (other / "step00000004" / "trainer_state_rank0.pt").write_bytes(b"")
    (other / "latest").write_text("step00000004")
    secret = tmp_path / "secret.env"
    secret.write_text("TOKEN=sk-do-not-print-me\n" * 50)
    run = tmp_path / "L"
    run.mkdir()
    if link == "checkpoints":
        (run / "checkpoints").symlink_to(other)
    else:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "latest").symlink_to(secret)
    for argv in (["answer", str(run), "--question", "q", "--features", str(tmp_path / "x.npy")],
                 ["export", str(run), "--format", "moviechat"],
                 ["train", "--cfg", "tiny_synthetic", "--resume", str(run)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "is a link" in err and "refused" in err and len(err.splitlines()) == 1, err
        assert "sk-do-not-print-me" not in err
    assert sorted(p.name for p in (tmp_path / "B").rglob("*")) == ["checkpoints", "latest", "step00000004",
                                                                     "trainer_state_rank0.pt"]  # nothing written


def test_a_latest_naming_no_checkpoint_is_quoted_short(tmp_path):
    from moviechat.runs.checkpoints import CheckpointNotFound, resolve_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("root:x:0:0:root:/root:/bin/bash\n" * 40)
    with pytest.raises(CheckpointNotFound) as e:
        resolve_checkpoint(tmp_path)
    assert len(str(e.value)) < 400 and "more characters" in str(e.value)


@pytest.mark.slow
def test_resume_alone_takes_the_runs_own_config_and_folder_and_names_what_it_lacks(base_run, capsys):
    from moviechat.config import load_config
    from moviechat.training import cli

    tmp, run = base_run
    args = cli.parse_args(["--resume", str(run), "train.max_steps=8"])
    path, overrides = cli.config_source(args)
    assert path == str(run / "config.yaml")
    assert overrides == ["train.max_steps=8", f"run.output_dir={tmp}", "run.name=r"]  # back into its own folder
    assert cli.run_folder(load_config(TINY), str(TINY), str(run)) == run  # --cfg and --resume, no run.name
    assert cli.main([]) == 2 and "give --cfg EXPERIMENT (or --resume RUN" in capsys.readouterr().err
    assert cli.main(["--resume", str(tmp / "nope")]) == 2
    assert "config error: no checkpoint at" in capsys.readouterr().err
    (run / "config.yaml").unlink()
    assert cli.main(["--resume", str(run)]) == 2
    assert f"config error: {run} has no config.yaml to resume from: give --cfg" in capsys.readouterr().err
