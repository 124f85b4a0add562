"""Run folders and resumes under what users do: re-used names, roll-backs, changed configs, corrupt files,
signals (issue 15). Each scenario runs the real train.py on the tiny config."""

import json
import shutil
import os
import subprocess

import pytest

from moviechat.common.jsonl import read_jsonl
from moviechat.runs.folder import STOPPED_EXIT, config_changes, truncate_metrics
from moviechat.runs.loading import load_run
from helpers import REPO, losses, run_train, train_cmd

BASE = ["train.max_steps=6", "train.save_every=2", "train.keep_last=3", "train.eval_every=0", "train.eval_generate=0"]


def attempt(tmp_path, *overrides, resume=None, extra=()):
    import os

    env = os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = train_cmd(tmp_path, *overrides, resume=resume) + list(extra)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def steps(run) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step"))


def corrupt(folder) -> str:
    states = folder / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:100])
    return str(states)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    run_train(tmp, "run.name=r", *BASE)
    return tmp, tmp / "r"


@pytest.mark.slow
def test_a_finished_run_logs_real_grad_norms_and_its_status(base_run):
    _, run = base_run
    norms = [r["grad_norm"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert len(norms) == 6 and all(isinstance(n, float) and n > 0 for n in norms)
    status = json.loads((run / "status.json").read_text())
    assert status.pop("time") > 0 and status == {"status": "finished", "step": 6, "max_steps": 6}
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for path in (run / "config.yaml", run / "status.json", run / "checkpoints" / "latest"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path  # the umask's mode, not mkstemp's 0600


@pytest.mark.slow
def test_reusing_a_run_name_without_resume_is_refused_and_destroys_nothing(base_run):
    tmp, run = base_run
    before = steps(run)
    proc = attempt(tmp, "run.name=r", "train.max_steps=2", "train.save_every=1")
    assert proc.returncode == 2
    assert f"already holds checkpoints; continue it with --resume {run}" in proc.stderr
    assert "another run.name" in proc.stderr and steps(run) == before


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_and_a_named_one_fails(base_run):
    tmp, run = base_run
    bad = corrupt(run / "checkpoints" / "step00000006")
    proc = attempt(tmp, "run.name=r", *BASE, resume=str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"warning: checkpoint {run / 'checkpoints' / 'step00000006'} cannot be loaded ({bad}:" in proc.stdout
    assert "resumed from" in proc.stdout and "step00000004 at step 4" in proc.stdout
    logged = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert logged == [1, 2, 3, 4, 5, 6]  # steps 5 and 6 logged once: the first attempt's rows were dropped
    bad = corrupt(run / "checkpoints" / "step00000004")
    proc = attempt(tmp, "run.name=r", *BASE, resume=str(run / "checkpoints" / "step00000004"))
    assert proc.returncode == 1 and f"cannot resume from {run / 'checkpoints' / 'step00000004'}: {bad}" in proc.stderr


@pytest.mark.slow
def test_resume_refuses_a_changed_memory_key_unless_allowed_and_records_it(base_run):
    tmp, run = base_run  # after the corrupt-checkpoint test, which leaves the run finished at step 6 again
    proc = attempt(tmp, "run.name=r", *BASE, "memory.long_memory_length=8", resume=str(run))
    assert proc.returncode == 2 and "memory.long_memory_length: 16 -> 8" in proc.stderr
    assert "--allow-config-change" in proc.stderr
    proc = attempt(tmp, "run.name=r", *BASE, "memory.long_memory_length=8", resume=str(run),
                   extra=["--allow-config-change"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the run already finished (step 6, train.max_steps=6)" in proc.stdout
    change = json.loads((run / "config_changes.jsonl").read_text().splitlines()[-1])
    assert change["step"] == 6 and change["changes"] == {"memory.long_memory_length": [16, 8]}
    assert config_changes({"train": {"max_steps": 6, "lr": 1.0}}, {"train": {"max_steps": 9, "lr": 1.0}}) == {}


@pytest.mark.slow
def test_rolling_back_with_keep_last_1_keeps_later_checkpoints_and_a_loadable_latest(tmp_path):
    run_train(tmp_path, "run.name=b", *BASE)
    run = tmp_path / "b"
    (run / "checkpoints" / ".partial-step00000008").mkdir()  # left by a run killed while saving
    proc = run_train(tmp_path, "run.name=b", "train.max_steps=5", "train.save_every=1", "train.keep_last=1",
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
def test_a_stopped_setting_is_not_recorded_and_the_sweep_stops_to_resume_it(tmp_path, monkeypatch):
    from moviechat.tuning import cli as sweep
    from moviechat.tuning import load_sweep, run_result

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "status.json").write_text(json.dumps({"status": "stopped", "step": 100, "max_steps": 400}))
    with pytest.raises(RuntimeError, match="not finished"):
        run_result(tmp_path / "s", {}, 1.0)
    from moviechat.tuning import runner
    from moviechat.tuning.trials import Outcome

    monkeypatch.setattr(runner, "run_training", lambda *a, **k: Outcome(STOPPED_EXIT, False, "", 1.0))
    spec_file = tmp_path / "sw.yaml"
    spec_file.write_text(f"name: sw\nbase: {REPO / 'configs/experiments/tiny_synthetic.yaml'}\n"
                         f"output_dir: {tmp_path}\ngrid:\n  memory.short_memory_merge: [2]\n")
    cfg = load_sweep(spec_file)
    with pytest.raises(SystemExit) as stop:
        runner.run_local(cfg, sweep.expand(cfg), tmp_path / "sw", None)
    assert stop.value.code == STOPPED_EXIT and not list((tmp_path / "sw").glob("*/result.json"))


ELASTIC = ["train.max_steps=4", "train.save_every=2", "train.eval_every=0", "train.eval_generate=0",
           "deepspeed.zero_stage=2", "train.lr=1e-3"]
TWO = ["deepspeed.gradient_accumulation_steps=1", "data.num_workers=1"]  # 2 processes x 1 worker, global batch 8
ONE = ["deepspeed.gradient_accumulation_steps=2", "data.num_workers=2"]  # 1 process x 2 workers, global batch 8


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("before,after,stage,grouped", [(2, 1, 2, False), (1, 2, 2, False), (2, 1, 0, False),
                                                         (2, 1, 2, True)])
def test_elastic_resume_continues_as_the_uninterrupted_run(before, after, stage, grouped, tmp_path):
    """A ZeRO checkpoint of N processes resumed on M: the same data streams and global batch, so steps 3-4
    give the losses of the uninterrupted run on N (with length-grouped batches too)."""
    layout = {2: TWO, 1: ONE}
    group = ["data.group_by_length=true", "data.group_window=2"] if grouped else []
    run_train(tmp_path, "run.name=full", *ELASTIC, *layout[before], f"deepspeed.zero_stage={stage}", *group,
              nproc=before)
    step2 = tmp_path / "full" / "checkpoints" / "step00000002"
    proc = run_train(tmp_path, "run.name=cut", *ELASTIC, *layout[after], f"deepspeed.zero_stage={stage}", *group,
                     resume=str(step2), nproc=after)
    assert f"at step 2 (written by {before} process(es), elastic)" in proc.stdout
    full, cut = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(cut) == [3, 4]
    for step in (3, 4):
        assert cut[step] == pytest.approx(full[step], rel=1e-4), (step, full, cut)


@pytest.mark.slow
@pytest.mark.distributed
def test_elastic_resume_refuses_other_data_streams_or_global_batch_saying_what_to_set(tmp_path):
    run_train(tmp_path, "run.name=two", *ELASTIC, *TWO, nproc=2)
    proc = attempt(tmp_path, "run.name=two", *ELASTIC, resume=str(tmp_path / "two"))
    assert proc.returncode == 2
    assert "= 2 data streams; this run has 1 x 1 = 1: set data.num_workers=2" in proc.stderr
    proc = attempt(tmp_path, "run.name=two", *ELASTIC, "data.num_workers=2", resume=str(tmp_path / "two"))
    assert proc.returncode == 2 and "global batch of 8; this run's is 4" in proc.stderr


@pytest.mark.slow
def test_inference_and_evaluation_refuse_bad_input_naming_it(tmp_path, capsys):
    import numpy as np

    from moviechat.scoring import cli as score_cli

    from moviechat.scoring import moviechat1k
    from moviechat.answering import cli as answer_cli
    from test_export_eval import synthetic_features

    run_train(tmp_path, "run.name=i", "train.max_steps=1", "train.eval_every=0", "train.eval_generate=0")
    cfg = load_run(tmp_path / "i")[0]
    synthetic_features(tmp_path, cfg)
    ask = [str(tmp_path / "i"), "--features", str(tmp_path / "clip.npy"), "--question", "what color", "--max-new-tokens", "2"]
    for bad in ("-5", "nan", "inf"):
        assert answer_cli.main(ask + ["--time", bad]) == 2
        assert "must be a finite number of seconds >= 0" in capsys.readouterr().err
    q = cfg.model.image_qformer
    np.save(tmp_path / "wide.npy", np.zeros((4, q.num_query_tokens + 1, q.hidden_size), np.float16))
    assert answer_cli.main([str(tmp_path / "i"), "--features", str(tmp_path / "wide.npy"), "--question", "what"]) == 2
    err = capsys.readouterr().err
    assert f"wide.npy: features of shape [4, {q.num_query_tokens + 1}, {q.hidden_size}] do not match the model's " \
           f"[T, {q.num_query_tokens}, {q.hidden_size}]" in err
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"video": "clip", "question": "q", "prediction": "red"}\n5\n{"video": "cl')
    assert score_cli.main(["--predictions", str(preds), "--annotations", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert f"{preds}: line 2: a JSON int, not an object" in capsys.readouterr().err
    rows = moviechat1k.read_predictions(preds, skip_bad=True)
    assert len(rows) == 1 and "skipped 2 malformed prediction line(s)" in capsys.readouterr().out


# ------------------------------------------------------------------ second pass (issue 24): security, ownership


class RunsCode:
    """A pickle that runs a shell command when loaded with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def plant(path, marker):
    import torch

    torch.save({"module": RunsCode(marker)}, path)


@pytest.mark.slow
def test_a_crafted_pickle_runs_no_code_on_resume_inference_or_export_and_is_named(tmp_path, capsys):
    from moviechat.answering import cli as answer_cli
    from moviechat.runs import export

    run_train(tmp_path, "run.name=p", "train.max_steps=2", "train.save_every=1", "train.eval_every=0",
              "train.eval_generate=0")
    run, marker = tmp_path / "p", tmp_path / "pwned"
    for name in ("trainer_state_rank0.pt", "mp_rank_00_model_states.pt"):  # ours, and one DeepSpeed reads
        target = run / "checkpoints" / "step00000002" / name
        original = target.read_bytes()
        plant(target, marker)
        proc = attempt(tmp_path, "run.name=p", "train.max_steps=3", resume=str(run))
        assert proc.returncode == 2 and f"unsafe checkpoint: {target}: refused to load: it needs " in proc.stderr
        assert "system" in proc.stderr and "--trust-checkpoint" in proc.stderr and "Traceback" not in proc.stderr
        assert answer_cli.main([str(run), "--features", "x.npy", "--question", "q"]) == 2
        assert export.main([str(run), "--out", str(tmp_path / "e.pth")]) == 2
        err = capsys.readouterr().err
        assert err.count(f"error: {target}: refused to load") == 2 and not marker.exists()
        target.write_bytes(original)
    assert not marker.exists() and export.main([str(run), "--out", str(tmp_path / "e.pth")]) == 0


def test_released_pth_files_load_as_plain_state_dicts_and_others_are_refused(tmp_path):
    import argparse

    import torch

    from moviechat.models.weight_names import read_state
    from moviechat.common.safe_load import UnsafeFileError, load_pt

    torch.save({"model": {"llama_proj.weight": torch.ones(2, 2)}}, tmp_path / "ok.pth")
    assert torch.equal(load_pt(tmp_path / "ok.pth")["model"]["llama_proj.weight"], torch.ones(2, 2))
    torch.save({"model": argparse.Namespace(a=1)}, tmp_path / "odd.pth")
    with pytest.raises(UnsafeFileError, match=r"odd.pth: refused to load: it needs argparse.Namespace"):
        load_pt(tmp_path / "odd.pth")
    assert load_pt(tmp_path / "odd.pth", trust=True)["model"] == argparse.Namespace(a=1)  # --trust-checkpoint
    plant(tmp_path / "bad.pth", tmp_path / "pwned")
    with pytest.raises(UnsafeFileError):
        read_state(tmp_path / "bad.pth")  # what load_weights reads released MovieChat / BLIP-2 files with
    assert not (tmp_path / "pwned").exists()


def test_a_crafted_pickle_outside_the_zip_format_is_refused_before_deepspeed_loads_it(tmp_path):
    """torch's scan reads only zip-format files; a legacy-format or raw pickle is loaded with weights_only to
    check it, so none reaches DeepSpeed's weights_only=False load. A truncated file stays the caller's check."""
    import pickle

    import torch

    from moviechat.common.safe_load import UnsafeFileError, check_files, load_pt

    marker = tmp_path / "pwned"
    torch.save({"module": RunsCode(marker)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"module": RunsCode(marker)}))
    for name in ("legacy.pt", "raw.pt"):
        with pytest.raises(UnsafeFileError, match=f"{name}: refused to load: it needs pickled objects outside"):
            check_files([tmp_path / name])
        with pytest.raises(UnsafeFileError, match=f"{name}: refused to load"):
            load_pt(tmp_path / name)
    assert not marker.exists()
    torch.save({"a": torch.ones(2)}, tmp_path / "plain_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"a": torch.ones(2)}, tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:100])
    check_files([tmp_path / "plain_legacy.pt", tmp_path / "cut.pt"])  # plain data, and a corrupt file: not refused
    assert torch.equal(load_pt(tmp_path / "plain_legacy.pt")["a"], torch.ones(2))


@pytest.mark.slow
def test_resuming_one_runs_checkpoint_under_another_name_never_touches_either(tmp_path):
    tmp, run = tmp_path, tmp_path / "r"  # a run of its own: the module's shared run has corrupted checkpoints by now
    run_train(tmp, "run.name=r", *BASE)
    run_train(tmp, "run.name=other", "train.max_steps=4", "train.save_every=2", "train.eval_every=0",
              "train.eval_generate=0")
    other = tmp / "other"
    before = {p: p.read_bytes() for p in [other / "metrics.jsonl", *sorted((other / "checkpoints").rglob("*.pt"))]}
    r_before = steps(run)
    proc = attempt(tmp, "run.name=other", *BASE, resume=str(run / "checkpoints" / "step00000004"))
    assert proc.returncode == 2 and f"belongs to run {run}, but run.name points at {other}, which holds another run" \
        in proc.stderr
    assert {p: p.read_bytes() for p in before} == before and steps(run) == r_before
    # a new name: a new run folder started from that checkpoint, said at start; the source is left alone
    proc = attempt(tmp, "run.name=fork", *BASE, "train.keep_last=1", resume=str(run / "checkpoints" / "step00000004"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"new run folder {tmp / 'fork'}, started from {run / 'checkpoints' / 'step00000004'}" in proc.stdout
    assert steps(run) == r_before and steps(tmp / "fork") == ["step00000006"]
    assert [r["step"] for r in read_jsonl(tmp / "fork" / "metrics.jsonl") if "loss" in r] == [5, 6]


@pytest.mark.slow
def test_a_folder_with_metrics_but_no_checkpoint_is_refused(tmp_path):
    (tmp_path / "died").mkdir()
    (tmp_path / "died" / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    proc = attempt(tmp_path, "run.name=died", "train.max_steps=1")
    assert proc.returncode == 2 and "already holds metrics.jsonl of a run (no checkpoint)" in proc.stderr
    assert (tmp_path / "died" / "metrics.jsonl").read_text() == '{"step": 1, "loss": 3.0}\n'


@pytest.mark.slow
def test_a_checkpoint_missing_its_model_states_falls_back_like_a_corrupt_one(tmp_path):
    tmp, run = tmp_path, tmp_path / "r"
    run_train(tmp, "run.name=r", "train.max_steps=2", "train.save_every=1", "train.eval_every=0", "train.eval_generate=0")
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text()
    (latest / "mp_rank_00_model_states.pt").unlink()
    proc = attempt(tmp, "run.name=r", "train.max_steps=3", resume=str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"warning: checkpoint {latest} cannot be loaded ({latest} lacks the model states" in proc.stdout
    assert "resuming from" in proc.stdout


@pytest.mark.slow
def test_resume_of_a_missing_run_is_one_line_and_exit_2(tmp_path):
    proc = attempt(tmp_path, "train.max_steps=1", resume=str(tmp_path / "nope"))
    assert proc.returncode == 2 and "run folder error: no checkpoint at" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two cores")
def test_sigterm_to_a_two_process_torchrun_job_with_loader_workers_checkpoints_and_stops(tmp_path):
    """As SLURM preempts: SIGTERM to the job's whole process group (torchrun, trainers, loader workers)."""
    import signal
    import time

    from test_trainer import train_cmd

    env = os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = train_cmd(tmp_path, "run.name=pre", "train.max_steps=100000", "train.eval_every=0", "train.eval_generate=0",
                    "data.num_workers=1", nproc=2)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    run, deadline = tmp_path / "pre", time.time() + 300
    while time.time() < deadline and (not (run / "metrics.jsonl").exists() or len(losses(run)) < 3):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert "DataLoader worker" not in err, err[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "stopped", err[-3000:]
    assert (run / "checkpoints" / "latest").read_text() == f"step{status['step']:08d}" and status["step"] >= 3
    assert "stopped by a signal" in out


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


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs (root mounts it; elsewhere the test is skipped, saying why)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_keeps_the_last_checkpoint_and_resume_continues(tmp_path, small_disk):
    common = ["train.max_steps=6", "train.save_every=2", "train.keep_last=1", "train.eval_every=0",
              "train.eval_generate=0", f"data.synthetic.dir={tmp_path / 'data'}"]
    run_train(tmp_path, "run.name=full", *common)
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (free - int(4.5 * 2**20)))  # room for one checkpoint (~3 MiB), not for a second
    env = os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(train_cmd(small_disk, "run.name=r", *common), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 74, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device writing" in errors[0] and "MiB free there" in errors[0]
    assert "Traceback" not in proc.stderr
    run = small_disk / "r"
    assert (run / "checkpoints" / "latest").read_text() == "step00000002"
    from moviechat.runs.checkpoints import unreadable

    assert unreadable(run / "checkpoints" / "step00000002") is None  # complete and loadable
    assert not list((run / "checkpoints").glob(".partial*"))
    filler.unlink()  # space freed: the run continues as if it had never stopped
    run_train(small_disk, "run.name=r", *common, resume=str(run))
    assert losses(run) == losses(tmp_path / "full")
