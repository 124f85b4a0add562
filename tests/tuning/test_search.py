"""Memory search on Optuna (issue 23): trials in parallel, a killed search resumed, pruning, infeasible
settings, two workers sharing a journal study, the SLURM worker array, and bad search files. Every trial
is a real train.py run of a few steps on the tiny config."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from helpers import REPO, TRAIN_ENV
from prefork import run_moviechat

FAST = ["run.wandb=disabled", "data.synthetic.num_videos=60", "deepspeed.micro_batch_size=4", "train.eval_generate=0",
        "train.eval_samples=8", "train.warmup_steps=1"]


def sweep_module():
    from moviechat.tuning import cli

    return cli


def write_search(tmp_path, name="s", trials=4, steps=4, space=None, extra="", metric="eval/loss",
                 direction="minimize", sampler="random", pruner="none", overrides=()):
    space = space or {"memory.long_memory_length": {"type": "categorical", "choices": [4, 8, 16]},
                      "memory.short_memory_merge": {"type": "int", "low": 1, "high": 3}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({
        "base": str(REPO / "configs/experiments/tiny_synthetic.yaml"), "name": name, "output_dir": str(tmp_path / "out"),
        "overrides": FAST + [f"train.max_steps={steps}", "train.eval_every=2", *overrides],
        "search": {"trials": trials, "metric": metric, "direction": direction, "sampler": sampler, "pruner": pruner,
                   "space": space, **json.loads(extra or "{}")}}))
    return path


def run(args):
    """``moviechat sweep`` as its own process (forked pre-imported: prefork.py); its trials are new interpreters."""
    env = os.environ | TRAIN_ENV
    return run_moviechat(["sweep", *args], cwd=REPO, env=env, timeout=600)


def study_of(tmp_path, name="s", storage=None):
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{tmp_path / 'out' / name / 'study.db'}")


@pytest.mark.slow
def test_a_three_trial_search_runs_two_at_a_time_and_reports_the_best(tmp_path):
    proc = run(["--sweep", str(write_search(tmp_path, trials=3)), "--parallel", "2"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = study_of(tmp_path).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))  # two ran at once
    best = study_of(tmp_path).best_trial
    report = (tmp_path / "out" / "s" / "results.md").read_text()
    assert f"**Best: trial {best.number}**" in report and "3 of 3 trials complete or pruned" in report
    assert {"optimization_history.png", "results.csv"} <= {p.name for p in (tmp_path / "out" / "s").iterdir()}
    for t in trials:  # each trial is a normal run folder
        run_dir = tmp_path / "out" / "s" / f"trial-{t.number:04d}"
        assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
        assert t.user_attrs["memory_tokens"] == t.params["memory.long_memory_length"] * 8


@pytest.mark.slow
def test_a_killed_search_resumes_with_no_trial_lost_or_run_twice(tmp_path):
    sweep = write_search(tmp_path, trials=2, steps=20, overrides=["train.save_every=2", "train.eval_every=10"])
    env = os.environ | TRAIN_ENV
    proc = subprocess.Popen([sys.executable, "-m", "moviechat", "sweep", "--sweep", str(sweep)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    second = tmp_path / "out" / "s" / "trial-0001" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not second.is_file():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the search and its trial, mid-run, as a lost node does
    proc.wait()
    assert second.is_file()
    again = run(["--sweep", str(sweep)])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert "queued again (their runner was gone" in again.stdout
    trials = study_of(tmp_path).get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and len({t.user_attrs["run_dir"] for t in done}) == 2
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [1]  # the killed one, queued again as a new trial with its params
    resumed = [t for t in done if t.user_attrs.get("requeued_from") == 1]
    assert len(resumed) == 1 and resumed[0].params == failed[0].params
    assert "resumed from" in (tmp_path / "out" / "s" / "trial-0001" / "train.log").read_text()


@pytest.mark.slow
def test_a_pruned_trial_stops_at_its_next_checkpoint_and_is_recorded_pruned(tmp_path):
    sweep = write_search(tmp_path, trials=1, steps=200, pruner="threshold", extra='{"pruner_args": {"upper": 0.0}}')
    proc = run(["--sweep", str(sweep)])  # any loss is above 0: pruned at its first evaluation (step 2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = study_of(tmp_path).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED]
    for t in trials:
        status = json.loads((tmp_path / "out" / "s" / f"trial-{t.number:04d}" / "status.json").read_text())
        assert status["status"] == "stopped" and status["step"] < 200  # stopped early, at a checkpoint
        assert t.user_attrs["pruned_at"] == 2
    assert "pruned" in (tmp_path / "out" / "s" / "results.md").read_text()


@pytest.mark.slow
def test_an_infeasible_trial_is_recorded_and_the_search_goes_on(tmp_path):
    space = {"memory.long_memory_length": {"type": "categorical", "choices": [16, 1024]}}  # 1024 > 16 x 16
    proc = run(["--sweep", str(write_search(tmp_path, trials=1, space=space, sampler="grid"))])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = study_of(tmp_path).get_trials()
    states = {t.params["memory.long_memory_length"]: t for t in trials}
    assert states[16].state == optuna.trial.TrialState.COMPLETE
    assert states[1024].state == optuna.trial.TrialState.FAIL
    assert "infeasible" in states[1024].user_attrs["fail_reason"] and "long_memory_length" in \
        states[1024].user_attrs["fail_reason"]


@pytest.mark.slow
def test_two_workers_share_one_journal_study(tmp_path):
    sweep = write_search(tmp_path, trials=3)
    storage = f"journal:{tmp_path / 'study.log'}"
    env = os.environ | TRAIN_ENV
    procs = [subprocess.Popen([sys.executable, "-m", "moviechat", "sweep", "--sweep", str(sweep), "--storage",
                               storage], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.log"))))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 3 and len({t.user_attrs["worker"] for t in done}) == 2, outs  # both pulled trials


@pytest.mark.slow
def test_slurm_workers_dry_run_prints_a_job_array(tmp_path):
    sweep = write_search(tmp_path)
    proc = run(["--sweep", str(sweep), "--slurm", "--workers", "3", "--parallel", "2", "--storage",
                f"journal:{tmp_path / 'j.log'}", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout.split("\n", 1)[1]
    assert "#SBATCH --array=0-2" in script and "#SBATCH --requeue" in script and "--gpus-per-node=2" in script
    assert f"--storage journal:{tmp_path / 'j.log'}" in script and "--devices 0,1" in script
    assert "scontrol requeue" in script
    (tmp_path / "w.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "w.sbatch")]).returncode == 0
    assert not (tmp_path / "out" / "s" / "slurm").exists()  # a dry run writes nothing


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"space": {"memory.nope": {"type": "int", "low": 1, "high": 2}}}, "search.space: command-line override"),
    ({"space": {"memory.long_memory_length": {"type": "int", "low": 9, "high": 2}}}, "low=9 > high=2: an empty range"),
    ({"space": {"memory.long_memory_policy": {"type": "categorical", "choices": []}}}, "choices must be a non-empty"),
    ({"metric": "eval/bleu"}, "search.metric='eval/bleu' is not reported by a run"),
    ({"pruner": "sometimes"}, "search.pruner='sometimes' must be one of"),
])
def test_a_bad_search_file_is_refused_before_any_trial(tmp_path, capsys, change, message):
    path = write_search(tmp_path)
    data = json.loads(path.read_text())
    data["search"].update(change)
    path.write_text(json.dumps(data))
    assert sweep_module().main(["--sweep", str(path)]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out" / "s").exists()


@pytest.mark.slow
def test_a_storage_that_cannot_be_opened_and_parallel_0_are_refused(tmp_path, capsys):
    path = write_search(tmp_path)
    assert sweep_module().main(["--sweep", str(path), "--storage", "nosuchdb://x"]) == 2
    assert "--storage nosuchdb://x: cannot open it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        sweep_module().main(["--sweep", str(path), "--parallel", "0"])
    assert stop.value.code == 2 and "--parallel=0 must be >= 1" in capsys.readouterr().err


def test_each_runner_of_a_study_samples_from_its_own_recorded_seed(tmp_path):
    """Two runners (or a re-run) on one study never draw the same settings by construction; the first keeps the
    study's seed, so a search with one runner is reproducible."""
    from moviechat.tuning import load_sweep
    from moviechat.tuning.search import open_study, runner_seed

    sweep = load_sweep(write_search(tmp_path, space={"train.lr": {"type": "float", "low": 1e-5, "high": 1e-2}}))
    first, second = (open_study(sweep, tmp_path / "out" / "s", None) for _ in range(2))
    seeds = [second.user_attrs["runner_0"]["seed"], second.user_attrs["runner_1"]["seed"]]
    assert seeds == [sweep.search.seed, runner_seed(sweep.search.seed, 1)] and seeds[0] != seeds[1]
    space = {"train.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2)}
    drawn = [[study.ask(space).params["train.lr"] for _ in range(3)] for study in (first, second)]
    assert not set(drawn[0]) & set(drawn[1])


def test_a_trial_killed_by_the_runners_signal_is_interrupted_and_queued_again_not_failed(tmp_path, monkeypatch):
    from moviechat.tuning import load_sweep
    from moviechat.tuning import search as search_module
    from moviechat.tuning.trials import Outcome, error_line

    sweep = load_sweep(write_search(tmp_path, trials=1))
    study = search_module.open_study(sweep, tmp_path / "out" / "s", None)
    runner = search_module.Search(sweep, tmp_path / "out" / "s", 1, None, 1)
    warning = "W1204 12:00:00 No CUDA runtime is found"
    monkeypatch.setattr(search_module, "run_training", lambda *a, **k: Outcome(-15, False, warning, 1.0))
    runner.stop.set()  # Ctrl-C reached the runner; its trial died of the same signal
    search_module.run_one(study, runner, study.ask())
    assert study.user_attrs["requeued_0"] == "interrupted by SIGTERM" and "fail_reason" not in study.trials[0].user_attrs
    assert study.trials[1].state == optuna.trial.TrialState.WAITING  # queued again, to resume its run folder
    runner.stop.clear()  # killed by someone else: a failure, and the reason is the signal, not a warning line
    search_module.run_one(study, runner, study.ask())
    assert study.trials[1].user_attrs["fail_reason"] == "killed by SIGTERM (not by this runner)"
    log = ["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad shape", warning]
    assert error_line(log) == "ValueError: bad shape" and error_line(["a", warning]) == warning


def test_a_trial_that_fails_its_run_its_recall_map_or_its_metric_is_failed_with_the_reason(tmp_path, monkeypatch, capsys):
    from moviechat.tuning import load_sweep
    from moviechat.tuning import search as search_module
    from moviechat.tuning.trials import Outcome

    sweep = load_sweep(write_search(tmp_path, trials=1))
    study = search_module.open_study(sweep, tmp_path / "out" / "s", None)
    runner = search_module.Search(sweep, tmp_path / "out" / "s", 1, None, 1)
    monkeypatch.setattr(search_module, "run_training", lambda *a, **k: Outcome(1, False, "ValueError: bad shape", 1.0))
    search_module.run_one(study, runner, study.ask())
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert study.trials[0].user_attrs["fail_reason"] == "exit 1: ValueError: bad shape"
    monkeypatch.setattr(search_module, "run_training", lambda *a, **k: Outcome(0, False, "", 1.0))
    search_module.run_one(study, runner, study.ask())  # finished, but never evaluated
    assert study.trials[1].user_attrs["fail_reason"] == "no evaluation reported eval/loss"
    assert "its run reported no 'eval/loss'" in capsys.readouterr().out

    def no_map(spec, run_dir, parallel):
        raise RuntimeError("recall map of trial-0002 failed (exit 3, see recall_map.log): no needles")

    monkeypatch.setattr(search_module, "run_recall_map", no_map)
    path = write_search(tmp_path, name="m", trials=1, metric="recall_map/mean", direction="maximize")
    path.write_text(json.dumps(json.loads(path.read_text()) | {"recall_map": {"lengths": [24], "depths": [0.0]}}))
    mapped = load_sweep(path)
    search_module.run_one(study, search_module.Search(mapped, tmp_path / "out" / "s", 1, None, 1), study.ask())
    assert study.trials[2].user_attrs["fail_reason"].endswith("failed (exit 3, see recall_map.log): no needles")


def test_each_sampler_and_a_grid_runs_every_int_and_categorical_setting_once(tmp_path):
    from moviechat.config import ConfigError
    from moviechat.tuning import load_sweep
    from moviechat.tuning.search import sampler_of

    for name, kind in (("random", optuna.samplers.RandomSampler), ("tpe", optuna.samplers.TPESampler)):
        assert isinstance(sampler_of(load_sweep(write_search(tmp_path, sampler=name)), seed=3), kind)
    space = {"memory.long_memory_length": {"type": "int", "low": 4, "high": 12, "step": 4},
             "memory.long_memory_policy": {"type": "categorical", "choices": ["merge", "fifo"]}}
    study = optuna.create_study(sampler=sampler_of(load_sweep(write_search(tmp_path, sampler="grid", space=space))))
    drawn = []

    def objective(trial):
        drawn.append((trial.suggest_int("memory.long_memory_length", 4, 12, step=4),
                      trial.suggest_categorical("memory.long_memory_policy", ["merge", "fifo"])))
        return 0.0

    study.optimize(objective, n_trials=10)  # the grid stops the study once every setting ran
    assert sorted(drawn) == sorted((n, p) for n in (4, 8, 12) for p in ("merge", "fifo"))
    floats = {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-2}}
    with pytest.raises(ConfigError, match="grid needs int or categorical keys, 'float' has no finite choices"):
        sampler_of(load_sweep(write_search(tmp_path, sampler="grid", space=floats)))


def test_importances_from_fewer_than_five_trials_are_called_indicative(tmp_path):
    from moviechat.tuning import load_sweep
    from moviechat.tuning.search import open_study
    from moviechat.tuning.search_report import write_report

    sweep = load_sweep(write_search(tmp_path, space={"train.lr": {"type": "float", "low": 1e-5, "high": 1e-2}}))
    study = open_study(sweep, tmp_path / "out" / "s", None)
    for value in (0.3, 0.2, 0.1):
        trial = study.ask()
        trial.suggest_float("train.lr", 1e-5, 1e-2)
        study.tell(trial, value)
    assert "rest on 3 completed trial(s): indicative only; 5 or more" in write_report(study, sweep, tmp_path / "out" / "s")


def test_an_interrupted_trial_is_listed_interrupted_and_its_queued_copy_shows_its_parameters():
    from moviechat.tuning.search import requeue
    from moviechat.tuning.search_report import trial_rows

    study = optuna.create_study(direction="minimize")
    trial = study.ask({"memory.long_memory_length": optuna.distributions.CategoricalDistribution([4, 8])})
    trial.set_user_attr("run_dir", "/runs/trial-0000")
    failed = study.ask({"memory.long_memory_length": optuna.distributions.CategoricalDistribution([4, 8])})
    study.tell(failed, state=optuna.trial.TrialState.FAIL)  # a real failure stays one
    assert requeue(study, study.trials[0], "/runs/trial-0000", "interrupted by SIGINT")
    rows = trial_rows(study, ["memory.long_memory_length"])
    assert [r["state"] for r in rows] == ["interrupted", "fail", "waiting"]
    assert rows[2]["memory.long_memory_length"] == rows[0]["memory.long_memory_length"] is not None
    assert rows[0]["note"] == "interrupted by SIGINT"


def test_a_dry_run_says_what_the_study_holds_and_would_run_and_runs_nothing(tmp_path, capsys):
    path = write_search(tmp_path, trials=3)
    assert sweep_module().main(["--sweep", str(path), "--dry-run", "--parallel", "2"]) == 0
    storage = f"sqlite:///{(tmp_path / 'out' / 's' / 'study.db').resolve()}"
    assert capsys.readouterr().out.splitlines()[-1] == (f"[search] s: 0 trial(s) in {storage}; would run until 3 "
                                                        "complete or pruned, 2 at a time")
    assert len(study_of(tmp_path).trials) == 0 and not list((tmp_path / "out" / "s").glob("trial-*"))
    assert sweep_module().main(["--sweep", str(path), "--aggregate-only"]) == 0  # a report of no trial, no trial run
    assert "0 of 3 trials complete or pruned" in (tmp_path / "out" / "s" / "results.md").read_text()
    assert len(study_of(tmp_path).trials) == 0


def test_a_slurm_search_writes_its_worker_array_and_submits_it_with_sbatch(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "submitted"}\nexit 3\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = write_search(tmp_path)
    assert sweep_module().main(["--sweep", str(path), "--slurm", "--workers", "2"]) == 3  # sbatch's own exit code
    script = tmp_path / "out" / "s" / "slurm" / "workers.sbatch"
    assert (tmp_path / "submitted").read_text().strip() == str(script)
    assert "#SBATCH --array=0-1" in script.read_text() and script.read_text() in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "sweep config error: --seeds=0 must be >= 1"),
    (["--devices", "0,1", "--parallel", "2", "--gpus-per-trial", "2"],
     "sweep config error: --devices 0,1: --parallel 2 x --gpus-per-trial 2 need 4 devices"),
])
def test_seeds_and_devices_that_cannot_be_served_are_refused_in_one_line(tmp_path, capsys, args, message):
    assert sweep_module().main(["--sweep", "tiny_memory", *args]) == 2
    assert capsys.readouterr().err.strip() == message
