"""``moviechat recall-map``: the grid it writes, answers equal to ``moviechat answer``'s, and what a trained
memory keeps (keep-everything vs a FIFO shorter than the video)."""

import csv
import json

import pytest

from helpers import run_train
from moviechat.answering import cli as answer_cli
from moviechat.common.errors import UserError
from moviechat.config.errors import ConfigError
from moviechat.memory import MemoryConfig
from moviechat.scoring import recall_map as rm


def run_map(run, out, *extra):
    assert rm.main([str(run), "--out", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text()), list(csv.DictReader((out / "recall_map.csv").open()))


@pytest.mark.slow
def test_the_map_writes_a_row_per_cell_and_answers_as_moviechat_answer_does(tiny_lora_run, tmp_path):
    out = tmp_path / "map"
    summary, rows = run_map(tiny_lora_run, out, "--lengths", "24,40", "--depths", "0,1", "--per-cell", "3")
    assert [(r["mode"], r["length"], r["depth"]) for r in rows] == [
        (m, n, d) for m in ("global", "breakpoint") for n in ("24", "40") for d in ("0.0", "1.0")]
    assert all(r["questions"] == "3" and float(r["accuracy"]) == int(r["correct"]) / 3 for r in rows)
    mean = sum(float(r["accuracy"]) for r in rows) / len(rows)
    assert summary[rm.OBJECTIVE] == pytest.approx(mean) and summary["questions"] == 24
    assert summary["run"] == str(tiny_lora_run.resolve()) and summary["memory"]["long_memory_length"] == 16
    assert (out / "recall_map.png").read_bytes()[:4] == b"\x89PNG"
    # the same questions through `moviechat answer` give the same answers
    theirs = tmp_path / "answer.jsonl"
    assert answer_cli.main([str(tiny_lora_run), "--questions", str(out / "questions.jsonl"), "--features-dir",
                            str(out / "videos"), "--out", str(theirs), "--max-new-tokens", "8"]) == 0
    ours = {r["id"]: r["prediction"] for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    given = {r["id"]: r["prediction"] for r in map(json.loads, theirs.read_text().splitlines())}
    assert ours == given and len(ours) == 24


@pytest.mark.slow
def test_a_second_map_in_the_same_folder_continues_or_is_refused(tiny_lora_run, tmp_path):
    out = tmp_path / "map"
    first, _ = run_map(tiny_lora_run, out, "--lengths", "24", "--depths", "0.5", "--per-cell", "2")
    again, _ = run_map(tiny_lora_run, out, "--lengths", "24", "--depths", "0.5", "--per-cell", "2")
    assert again == first
    with pytest.raises(UserError, match="other settings .*memory"):
        rm.main([str(tiny_lora_run), "--out", str(out), "--lengths", "24", "--depths", "0.5", "--per-cell", "2",
                 "memory.long_memory_policy=fifo"])


@pytest.mark.parametrize("args,message", [
    (["--lengths", "64,x"], "--lengths='64,x' must be a comma-separated list"),
    (["--depths", "0,1.5"], "--depths: 1.5"),
    (["--modes", "global,now"], "--modes: 'now'"),
    (["--per-cell", "0"], "--per-cell=0"),
    (["--lengths", "4"], "--lengths: 4"),
])
def test_a_bad_grid_is_one_line_naming_the_flag(args, message, tmp_path):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(".", r"\.")):
        rm.main(["no-run-needed", "--out", str(tmp_path), *args])


def test_memory_overrides_are_checked_and_only_memory_keys_are_taken():
    base = MemoryConfig(short_memory_length=8, long_memory_length=16)
    assert rm.memory_with(base, ["memory.long_memory_policy=fifo", "memory.preset=original"], 32).preset == "original"
    with pytest.raises(ConfigError, match="memory.long_memory_length=4000 must be <= memory.n_position"):
        rm.memory_with(base, ["memory.long_memory_length=4000"], 32)
    with pytest.raises(ConfigError, match="memory.key=value overrides only"):
        rm.memory_with(base, ["train.lr=1"], 32)
    with pytest.raises(ConfigError, match="memory.long_memory_lenght"):
        rm.memory_with(base, ["memory.long_memory_lenght=4"], 32)


@pytest.fixture(scope="session")
def needle_run(tmp_path_factory):
    """The tiny model trained on scenes and lone needles (1000 steps of 8 videos, about 30 s): it names a needle
    it can see (measured: 16 and 15 of 24 at depths 0 and 1 when every slot is kept; 600 steps of 16 or 800 of 8
    at a higher learning rate did not learn it)."""
    tmp = tmp_path_factory.mktemp("needles")
    run_train(tmp, "run.name=n", "data.synthetic.num_videos=120", "data.synthetic.needles.videos=240",
              "data.synthetic.needles.max_needles=1", "data.synthetic.needles.min_frames=48",
              "data.synthetic.needles.max_frames=96", "train.max_steps=1000", "train.eval_every=0",
              "train.log_every=100", "train.warmup_steps=20", "deepspeed.micro_batch_size=8", cfg="tiny_needles")
    return tmp / "n"


@pytest.mark.slow
def test_a_fifo_memory_forgets_early_needles_that_a_memory_keeping_everything_still_names(needle_run, tmp_path):
    # 64 frames are 8 fragments of 8, consolidated to 2 frames each: 16 slots, all of them kept at L=16
    grid = ["--lengths", "64", "--depths", "0,1", "--per-cell", "24", "--modes", "global"]
    _, keep = run_map(needle_run, tmp_path / "keep", *grid, "memory.long_memory_length=16")
    _, fifo = run_map(needle_run, tmp_path / "fifo", *grid, "memory.long_memory_policy=fifo",
                      "memory.long_memory_length=4")  # the last 2 fragments only
    acc = {(name, float(r["depth"])): float(r["accuracy"]) for name, rows in (("fifo", fifo), ("keep", keep)) for r in rows}
    chance = 1 / 6
    assert acc[("keep", 0.0)] >= chance + 0.2 and acc[("keep", 1.0)] >= chance + 0.2  # named wherever it was
    assert acc[("fifo", 0.0)] <= chance + 0.1  # the early needle left the FIFO before the question
    assert acc[("fifo", 1.0)] - acc[("fifo", 0.0)] >= 0.2  # a late one is still there
    assert acc[("keep", 0.0)] - acc[("fifo", 0.0)] >= 0.2
