"""Memory search on Optuna: a sweep file's ``search:`` section run as an Optuna study.

Each trial is a normal run (its own folder ``<sweep>/trial-NNNN``: config, checkpoints, ``status.json``,
``train.log``) started as its own process (``moviechat.tuning.trials``). Its held-out evaluations
(``train.eval_every``) are reported to the trial as they appear in its ``metrics.jsonl``; when the pruner
says so the run gets SIGTERM, stops at its next checkpoint and the trial is recorded as pruned. A setting
the config refuses (``long_memory_length`` past the position table, ...) fails fast, recorded as failed
with the reason; a run that crashes is recorded as failed with the last line of its log. The search goes
on either way. Trials count towards ``trials`` when they complete or are pruned.

The study lives in Optuna's storage: ``sqlite:///<output_dir>/<name>/study.db`` by default (study name =
the sweep's name), any RDB URL, or ``journal:PATH`` (Optuna's journal file, for a shared file system).
Running the same command again resumes the study: finished trials stay; a running trial whose runner is
gone (its lease went stale) is failed and queued again with the same parameters, and the new trial resumes
the old run folder from its checkpoint, so no trial is lost or counted twice. A runner stopped by SIGTERM
(SLURM preemption) stops its trials at a checkpoint, queues them again the same way and exits 75.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Optional

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what each trial did

from moviechat.common.atomic import held_lock
from moviechat.config import ConfigError, load_config
from moviechat.runs.folder import STOPPED_EXIT
from moviechat.tuning.sweep_file import SweepConfig
from moviechat.tuning.trials import (DevicePool, Lease, base_path, lease_is_stale, run_recall_map, run_training,
                                     train_command)

COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
ATTEMPTS_PER_TRIAL = 4  # a worker gives up after this many attempts per wanted trial (an infeasible space)


class TrialFailed(Exception):
    """A trial that cannot give a value: infeasible, crashed, or without the metric."""


class SearchStopped(Exception):
    """The runner was asked to stop (SIGTERM/SIGINT), or its trial died of that signal: queued again."""

    def __init__(self, run_dir: str, why: str = "stopped at a checkpoint"):
        super().__init__(run_dir)
        self.why = why


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def storage_of(url: Optional[str], sweep_dir: Path):
    """The Optuna storage of a search (``journal:PATH`` for the journal file); refuses one that does not open."""
    url = url or f"sqlite:///{sweep_dir / 'study.db'}"
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # noqa: BLE001  (any reason: the message names the URL)
        raise ConfigError(f"--storage {url}: cannot open it: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def sampler_of(sweep: SweepConfig, seed: Optional[int] = None) -> optuna.samplers.BaseSampler:
    """The search's sampler, seeded with ``seed`` (a runner's own, :func:`runner_seed`) or the study seed."""
    search = sweep.search
    seed = search.seed if seed is None else seed
    if search.sampler == "grid":
        return optuna.samplers.GridSampler({k: _choices(v) for k, v in search.space.items()}, seed=seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def runner_seed(study_seed: int, runner: int) -> int:
    """The sampler seed of the study's ``runner``-th runner (0, 1, ... in the order they open the study): the
    first keeps the study seed (a one-runner search is reproducible); each later runner or re-run draws from
    its own stream, so concurrent and resumed runners never repeat each other's settings by construction."""
    if runner == 0:
        return study_seed
    digest = hashlib.sha256(f"{study_seed}:runner:{runner}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def _choices(spec: dict[str, Any]) -> list:
    if spec["type"] == "categorical":
        return list(spec["choices"])
    if spec["type"] == "int":
        return list(range(int(spec["low"]), int(spec["high"]) + 1, int(spec.get("step") or 1)))
    raise ConfigError(f"sampler: grid needs int or categorical keys, {spec['type']!r} has no finite choices")


def pruner_of(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    kind, kwargs = sweep.search.pruner, dict(sweep.search.pruner_args)
    return {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
            "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}[kind](**kwargs)


def open_study(sweep: SweepConfig, sweep_dir: Path, storage_url: Optional[str]) -> optuna.Study:
    """The sweep's study, created by whichever worker comes first (under a lock beside a journal file: two
    workers starting together must not create it twice)."""
    lock_path = (Path(storage_url[len("journal:"):] + ".create.lock") if storage_url and storage_url.startswith("journal:")
                 else sweep_dir / ".study.create.lock")
    # the storage is read inside the lock too: a journal replayed before it would miss a new study
    with held_lock(lock_path):
        storage = storage_of(storage_url, sweep_dir)
        study = optuna.create_study(storage=storage, study_name=sweep.name, direction=sweep.search.direction,
                                    sampler=sampler_of(sweep), pruner=pruner_of(sweep), load_if_exists=True)
        runner = sum(k.startswith("runner_") for k in study.user_attrs)
        seed = runner_seed(sweep.search.seed, runner)
        study.set_user_attr(f"runner_{runner}", {"seed": seed, "host": socket.gethostname(), "pid": os.getpid()})
        study.sampler = sampler_of(sweep, seed)
        print(f"[search] runner {runner} of study {sweep.name}: sampler seed {seed}", flush=True)
        return study


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            out[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif spec["type"] == "int":
            out[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step") or 1),
                                         log=bool(spec.get("log")))
        else:
            out[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return out


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, run_dir: str, why: str) -> bool:
    """Fail a trial that will not finish here and queue its parameters again, resuming its run folder. Only
    the process whose ``tell`` succeeds queues it (another runner may be doing the same)."""
    try:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    except (RuntimeError, ValueError):
        return False
    study.set_user_attr(f"requeued_{trial.number}", why)
    study.enqueue_trial(trial.params, user_attrs={"resume_dir": run_dir, "requeued_from": trial.number},
                        skip_if_exists=False)
    return True


def requeue_stale(study: optuna.Study) -> list[int]:
    """Running trials whose runner is gone (a killed search): queued again; returns their numbers."""
    out = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run_dir = trial.user_attrs.get("run_dir")
        if run_dir and lease_is_stale(Path(run_dir), trial.datetime_start) and requeue(study, trial, run_dir,
                                                                                      "its runner was gone"):
            out.append(trial.number)
    return out


class Search:
    """The objective and its runner state: devices, the stop flag, the trials in flight."""

    def __init__(self, sweep: SweepConfig, sweep_dir: Path, parallel: int, devices: Optional[list[str]],
                 gpus_per_trial: int):
        self.sweep, self.sweep_dir, self.gpus = sweep, sweep_dir, gpus_per_trial
        self.pool, self.parallel = DevicePool(devices, gpus_per_trial, parallel), parallel
        self.stop = threading.Event()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest(trial, self.sweep.search.space)
        resume_dir = trial.user_attrs.get("resume_dir")
        run_dir = Path(resume_dir) if resume_dir else self.sweep_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", self.worker)
        overrides = self.overrides(params, run_dir)
        try:
            cfg = load_config(base_path(self.sweep.base), overrides)
        except ConfigError as e:
            trial.set_user_attr("fail_reason", f"infeasible: {e}")
            raise TrialFailed(f"trial {trial.number} infeasible: {e}") from None
        trial.set_user_attr("memory_frames", cfg.memory.long_memory_length)
        trial.set_user_attr("memory_tokens", cfg.memory.long_memory_length * cfg.model.video_qformer.num_query_tokens)
        resume = run_dir if (run_dir / "checkpoints" / "latest").is_file() else None
        with Lease(run_dir), self.pool.take() as devices:
            port = 29500 + 1 + trial.number % 1000
            outcome = run_training(train_command(self.sweep.base, overrides, resume, self.gpus, port), run_dir,
                                   devices, lambda row: self._report(trial, row), self.stop.is_set,
                                   parallel=self.parallel)
        trial.set_user_attr("wall_s", round(outcome.wall_s + trial.user_attrs.get("wall_s", 0.0), 1))
        return self._result(trial, outcome, run_dir)

    def overrides(self, params: dict[str, Any], run_dir: Path) -> list[str]:
        return [f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
                f"train.token_cache_dir={self.sweep_dir / 'token_cache'}", *self.sweep.overrides,
                *(f"{k}={v}" for k, v in params.items())]

    def _report(self, trial: optuna.Trial, row: dict) -> bool:
        """Report one evaluation; True asks the run to stop (pruned)."""
        value = row.get(self.sweep.search.metric)
        if value is None:
            return False
        trial.report(float(value), int(row["step"]))
        trial.set_user_attr("last_value", float(value))
        if trial.should_prune():
            trial.set_user_attr("pruned_at", int(row["step"]))
            return True
        return False

    def _result(self, trial: optuna.Trial, outcome, run_dir: Path) -> float:
        if "pruned_at" in trial.user_attrs and outcome.returncode in (0, STOPPED_EXIT):
            raise optuna.TrialPruned(f"pruned at step {trial.user_attrs['pruned_at']}")
        if outcome.returncode == STOPPED_EXIT:  # we are stopping (preempted): the trial goes back to the queue
            raise SearchStopped(str(run_dir))
        if outcome.returncode < 0 and (self.stop.is_set() or outcome.stopped):  # died of the signal we sent or got
            raise SearchStopped(str(run_dir), f"interrupted by {signal_name(-outcome.returncode)}")
        if outcome.returncode < 0:
            reason = f"killed by {signal_name(-outcome.returncode)} (not by this runner)"
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(f"trial {trial.number} failed: {reason}")
        if outcome.returncode != 0:
            trial.set_user_attr("fail_reason", f"exit {outcome.returncode}: {outcome.last_line}")
            raise TrialFailed(f"trial {trial.number} failed (exit {outcome.returncode}): {outcome.last_line}")
        if self.sweep.recall_map is not None:
            try:
                mapped = run_recall_map(self.sweep.recall_map, run_dir, self.parallel)
            except RuntimeError as e:
                trial.set_user_attr("fail_reason", str(e))
                raise TrialFailed(f"trial {trial.number}: {e}") from None
            for key, value in mapped.items():
                trial.set_user_attr(key, value)
            if self.sweep.search.metric in mapped:
                trial.set_user_attr("last_value", mapped[self.sweep.search.metric])
        if "last_value" not in trial.user_attrs:
            trial.set_user_attr("fail_reason", f"no evaluation reported {self.sweep.search.metric}")
            raise TrialFailed(f"trial {trial.number}: its run reported no {self.sweep.search.metric!r}")
        return trial.user_attrs["last_value"]


def run_search(study: optuna.Study, sweep: SweepConfig, sweep_dir: Path, parallel: int = 1,
               devices: Optional[list[str]] = None, gpus_per_trial: int = 1) -> int:
    """Run trials of ``study`` (:func:`open_study`), ``parallel`` at a time, until it holds ``search.trials``
    complete or pruned ones (counting those other workers are running); returns 0, or 75 when stopped by a
    signal (its trials are queued again)."""
    stale = requeue_stale(study)
    if stale:
        print(f"[search] queued again (their runner was gone; they resume from their checkpoints): trials {stale}",
              flush=True)
    search = Search(sweep, sweep_dir, parallel, devices, gpus_per_trial)
    lock, attempts = threading.Lock(), [0]

    def next_trial() -> Optional[optuna.Trial]:
        with lock:  # decide and ask together, so that two threads never take the last trial twice
            busy = len(study.get_trials(deepcopy=False, states=COUNTED + (optuna.trial.TrialState.RUNNING,)))
            if search.stop.is_set() or busy >= sweep.search.trials or attempts[0] >= sweep.search.trials * ATTEMPTS_PER_TRIAL:
                return None
            attempts[0] += 1
            return study.ask()

    def take_trials() -> None:  # one of `parallel` threads, each running one trial at a time
        while (trial := next_trial()) is not None:
            run_one(study, search, trial)

    previous = {s: signal.signal(s, lambda signum, _f: _stop(search, signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        threads = [threading.Thread(target=take_trials) for _ in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return STOPPED_EXIT if search.stop.is_set() else 0


def _stop(search: Search, signum: int) -> None:
    print(f"[search] signal {signum}: stopping the running trials at their next checkpoint", flush=True)
    search.stop.set()


def run_one(study: optuna.Study, search: Search, trial: optuna.Trial) -> None:
    """One trial from ask to tell: complete, pruned, failed (with its reason), or queued again when stopped."""
    try:
        value = search(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        print(f"[search] trial {trial.number} pruned at step {trial.user_attrs.get('pruned_at')}", flush=True)
    except TrialFailed as e:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        print(f"[search] {e}", flush=True)
    except SearchStopped as e:
        frozen = study.get_trials(deepcopy=False)[trial.number]
        requeue(study, frozen, frozen.user_attrs["run_dir"], e.why)
        print(f"[search] trial {trial.number} {e.why}; queued again (it resumes from its last checkpoint)", flush=True)
    except Exception as e:  # noqa: BLE001  (a bug in one trial must not lose the others: recorded, and said)
        trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        print(f"[search] trial {trial.number} failed: {type(e).__name__}: {e}", flush=True)
    else:
        study.tell(trial, value)
        print(f"[search] trial {trial.number} complete: {search.sweep.search.metric} = {value:.4g}", flush=True)
