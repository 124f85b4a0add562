"""Every bad input named, nothing answered or counted twice, nothing read from outside its root (issue 24).
Each test was written against the failure it describes; none needs a trained run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from moviechat.training.launch import LaunchError
import torch

from helpers import TINY, answerer_for, moviechat1k_json, rows_for, token_video, write_annotation
from moviechat.scoring import cli as score_cli
from moviechat.answering.whole_split import FeatureLookup, OutputBusy, answer_file, answered_ids, exclusive
from moviechat.data.annotations import QA, annotation_json, load_annotations, parse_moviechat1k
from moviechat.data.stores import DataError, ShardStore, SkipCounter, VideoFeatures, default_meta, validate_features, \
    write_folder, write_shards


# --------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a\\b", "", "a//b"])
def test_keys_that_would_leave_the_feature_folder_are_refused(tmp_path, key):
    (tmp_path / "inside").mkdir()
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 32), np.float16))  # outside the folder
    with pytest.raises(DataError, match="is not a relative path inside --features-dir"):
        FeatureLookup(str(tmp_path / "inside"), None, "tokens")(key)


def test_a_key_in_a_sub_folder_is_read(tmp_path):
    (tmp_path / "cook").mkdir()
    np.save(tmp_path / "cook" / "v0.npy", np.zeros((2, 8, 32), np.float16))
    feats, meta = FeatureLookup(str(tmp_path), None, "tokens")("cook/v0")
    assert feats.shape == (2, 8, 32) and meta["kind"] == "tokens"


@pytest.mark.slow
def test_the_sbatch_script_quotes_every_value_and_runs(tmp_path):
    """A run name with a space and $(...) reaches train.py as one literal argument; nothing executes."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("scontrol", "srun"):
        (fake / tool).write_text(f"#!/bin/bash\necho {tool} \"$@\" >> {tmp_path}/calls\n"
                                 + ('for a in "$@"; do echo "ARG[$a]"; done >> ' + f"{tmp_path}/calls\n"))
        (fake / tool).chmod(0o755)
    marker = tmp_path / "pwned"
    name = f"a b$(touch {marker})"
    script = tmp_path / "job.sbatch"
    proc = subprocess.run([sys.executable, "-m", "moviechat", "launch", "slurm", "--cfg", str(TINY),
                           f"run.output_dir={tmp_path}", f"run.name={name}", "--script", str(script),
                           "--log-dir", str(tmp_path / "logs"), "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    script.write_text(proc.stdout.split("\n", 1)[1].rsplit("\n", 2)[0] + "\n")  # the printed script
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    os.makedirs(tmp_path / name / "checkpoints")
    (tmp_path / name / "checkpoints" / "latest").write_text("step00000001")
    env = os.environ | {"PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "n1", "SLURM_NNODES": "1",
                        "SLURM_NODEID": "0", "SLURM_JOB_ID": "7"}
    subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, timeout=60)
    calls = (tmp_path / "calls").read_text()
    assert not marker.exists()
    assert f"ARG[run.name={name}]" in calls and f"ARG[{tmp_path / name}]" in calls  # --resume "<run dir>", whole
    with pytest.raises(LaunchError, match="only letters, digits"):
        from moviechat.training import launch

        launch.main(["slurm", "--cfg", str(TINY), "--name", "x y", "run.name=a", "--dry-run"])


# --------------------------------------------------------------------------------------------- judge


def test_the_judge_key_goes_only_to_https_or_this_machine(tmp_path, capsys):
    from moviechat.scoring.judge import check_judge_url

    for url in ("https://api.example.com/v1", "http://127.0.0.1:8000/v1", "http://localhost:1/v1", "http://[::1]:1/v1"):
        check_judge_url(url, sends_key=True, allow_insecure=False)
    check_judge_url("http://10.0.0.5:8000/v1", sends_key=False, allow_insecure=False)  # no key: nothing to leak
    with pytest.raises(DataError, match="plain http to another machine"):
        check_judge_url("http://judge.example.com/v1", sends_key=True, allow_insecure=False)
    check_judge_url("http://judge.example.com/v1", sends_key=True, allow_insecure=True)
    assert "sending the judge API key unencrypted" in capsys.readouterr().out
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"video": "1", "question": "Where is he?", "prediction": "x"}\n')
    write_annotation(tmp_path / "ann", "1", moviechat1k_json())
    os.environ["MOVIECHAT_TEST_KEY"] = "secret"
    try:
        assert score_cli.main(["--predictions", str(preds), "--annotations", str(tmp_path / "ann"), "--out",
                                str(tmp_path / "e"), "--judge-url", "http://judge.example.com/v1", "--judge-model", "m",
                                "--judge-key-env", "MOVIECHAT_TEST_KEY"]) == 2
    finally:
        del os.environ["MOVIECHAT_TEST_KEY"]
    assert "--judge-allow-insecure" in capsys.readouterr().err


def test_a_half_written_judge_cache_line_is_judged_again(tmp_path, capsys):
    from moviechat.scoring.judge import JudgeClient

    cache = tmp_path / "c.jsonl"
    cache.write_text('{"key": "a", "reply": "{\'pred\': \'yes\', \'score\': 5}"}\n{"key": "b", "rep')
    client = JudgeClient("http://127.0.0.1:9/v1", "m", cache)
    assert client.cache.replies == {"a": "{'pred': 'yes', 'score': 5}"}
    assert "1 unreadable line(s) ignored" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- predictions


def test_a_rerun_after_a_file_was_added_answers_exactly_the_new_questions(tmp_path, tiny_cfg, tokenizer):
    answerer = answerer_for(tiny_cfg, tokenizer)
    videos = {f"v{i}": token_video(tiny_cfg, seed=i) for i in range(3)}
    out = tmp_path / "p.jsonl"
    first = answer_file(answerer, rows_for(["v1", "v2"]), videos.__getitem__, out)
    assert first["answered"] == 12  # 6 distinct questions per video
    second = answer_file(answerer, rows_for(["v0", "v1", "v2"]), videos.__getitem__, out)  # v0 sorts first now
    assert second == {"answered": 6, "already": 12, "failed_videos": 0, "failed_questions": 0}
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got) == 18 and len({r["qid"] for r in got}) == 18
    assert sorted({r["video"] for r in got}) == ["v0", "v1", "v2"]


def test_a_second_process_on_the_same_out_is_refused(tmp_path, tiny_cfg, tokenizer):
    answerer = answerer_for(tiny_cfg, tokenizer)
    videos = {"v0": token_video(tiny_cfg)}
    out = tmp_path / "p.jsonl"
    with exclusive(out):  # another answering run holds the file (flock: per open file, so this process too)
        with pytest.raises(OutputBusy, match=f"{out} is being written by another process \\(pid {os.getpid()}\\)"):
            answer_file(answerer, rows_for(["v0"]), videos.__getitem__, out)
    assert not out.exists() or out.read_text() == ""
    assert answer_file(answerer, rows_for(["v0"]), videos.__getitem__, out)["answered"] == 6  # lock released


def test_a_garbage_line_in_an_existing_out_is_said_and_does_not_stop_the_run(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    out.write_text('{"video": "v", "question": "q", "time": null, "prediction": "a"}\nnot json\n[1, 2]\n')
    assert len(answered_ids(out)) == 1
    assert "2 line(s) are not predictions (lines [2, 3])" in capsys.readouterr().out


def test_bad_metadata_sends_its_video_to_the_failures_file_and_the_rest_are_answered(tmp_path, tiny_cfg, tokenizer):
    answerer = answerer_for(tiny_cfg, tokenizer)
    folder = tmp_path / "f"
    good_feats, good_meta = token_video(tiny_cfg)
    bad_metas = {"list": [1, 2], "null": None, "strings": {**good_meta, "timestamps": ["0"] * 40},
                 "nan": {**good_meta, "timestamps": [float("nan")] * 40},
                 "descending": {**good_meta, "timestamps": list(range(40, 0, -1))}}
    write_folder([VideoFeatures("good", good_feats, good_meta, "")], folder)
    for key, meta in bad_metas.items():
        np.save(folder / f"{key}.npy", good_feats)
        (folder / f"{key}.json").write_text(json.dumps(meta))
    rows = [{"video": k, "question": "what color now", "time": 3.0} for k in ["good", *bad_metas]]
    counts = answer_file(answerer, rows, FeatureLookup(str(folder), None, "tokens"), tmp_path / "p.jsonl")
    assert counts == {"answered": 1, "already": 0, "failed_videos": 5, "failed_questions": 5}
    failures = {r["video"]: r["error"] for r in map(json.loads, (tmp_path / "p.failures.jsonl").read_text().splitlines())}
    assert "metadata must be a JSON object, got list" in failures["list"]
    assert "metadata must be a JSON object, got NoneType" in failures["null"]
    assert "timestamps[0]='0' must be a finite number" in failures["strings"]
    assert "timestamps[0]=nan must be a finite number" in failures["nan"]
    assert "timestamps[1]=39 comes before timestamps[0]=40" in failures["descending"]


def test_inference_cli_numbers_are_checked(tmp_path, capsys):
    from moviechat.answering import cli as answer_cli

    for flag, value in (("--limit", "-5"), ("--max-new-tokens", "0"), ("--batch-size", "0")):
        with pytest.raises(SystemExit) as stop:
            answer_cli.main([str(tmp_path), "--annotations", str(tmp_path), flag, value])
        assert stop.value.code == 2 and f"{flag}={value} must be >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ evaluation


def test_evaluation_counts_each_question_once_and_says_how_many_were_repeated(tmp_path, capsys):
    write_annotation(tmp_path / "ann", "1", moviechat1k_json())
    rows = [{"video": "1", "question": "Where is he?", "prediction": "Outside."},
            {"video": "1", "question": "What is he doing?", "time": 10.0, "prediction": "sitting"}]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows + rows + rows[:1]))
    assert score_cli.main(["--predictions", str(preds), "--annotations", str(tmp_path / "ann"), "--out",
                            str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["all"]["n"] == 2 and summary["all"]["normalized"] == 0.5 and summary["duplicate_predictions"] == 3
    assert "3 duplicate prediction(s) of questions already scored" in capsys.readouterr().out


@pytest.mark.parametrize("line, problem", [
    ('{"video": "1", "question": "q", "time": "abc"}', "'time'='abc' must be a number of seconds"),
    ('{"video": "1", "question": 5}', "'question' must be a non-empty string, got 5"),
    ('{"video": "1", "question": "q", "prediction": 3}', "'prediction'=3 must be a string"),
])
def test_evaluation_names_a_field_of_the_wrong_type(tmp_path, capsys, line, problem):
    write_annotation(tmp_path / "ann", "1", moviechat1k_json())
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"video": "1", "question": "Where is he?", "prediction": "x"}\n' + line + "\n")
    args = ["--predictions", str(preds), "--annotations", str(tmp_path / "ann"), "--out", str(tmp_path / "e")]
    assert score_cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"{preds}: line 2: {problem}" in err and "Traceback" not in err
    assert score_cli.main(args + ["--skip-bad-lines"]) == 0
    assert "skipped 1 malformed prediction line(s)" in capsys.readouterr().out


def test_evaluation_of_a_missing_predictions_file_is_one_line(tmp_path, capsys):
    assert score_cli.main(["--predictions", str(tmp_path / "nope.jsonl"), "--annotations", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --predictions {tmp_path / 'nope.jsonl'}: no such file"


# ------------------------------------------------------------------------------------ annotations


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update({"global": None}), "'global' must be a list of questions, got None"),
    (lambda d: d.update({"global": 5}), "'global' must be a list of questions, got 5"),
    (lambda d: d["info"].update({"video_path": 123}), "info.video_path=123 must be a string"),
    (lambda d: d["info"].update({"fps": float("nan")}), "info.fps=nan must be a finite number"),
    (lambda d: d["info"].update({"fps": "30"}), "info.fps='30' must be a finite number"),
    (lambda d: d["info"].update({"num_frame": True}), "info.num_frame=True must be a finite integer"),
    (lambda d: d.update({"info": []}), "not a MovieChat-1K annotation (needs an object with an 'info' object)"),
])
def test_annotations_of_the_wrong_type_are_named_also_when_skipping(tmp_path, change, message):
    data = moviechat1k_json()
    change(data)
    path = tmp_path / "ann" / "1.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"1.json: {message}".replace("(", r"\(").replace(")", r"\)")):
        parse_moviechat1k(path)
    (tmp_path / "ann" / "2.json").write_text(json.dumps(moviechat1k_json(key="2")))
    skips = SkipCounter()
    assert list(load_annotations(tmp_path / "ann", skips=skips)) == ["2"] and skips.counts == {"bad annotation file": 1}


def test_a_breakpoint_past_the_end_is_asked_at_the_last_frame_and_counted(tmp_path, capsys):
    path = write_annotation(tmp_path, "1", moviechat1k_json(time=950))  # num_frame is 900
    key, qas = parse_moviechat1k(path)
    assert qas[-1].past_end and qas[-1].seconds == pytest.approx(950 / 30)
    load_annotations(tmp_path)
    assert "1 breakpoint(s) at or past their video's end (info.num_frame), answered at its last frame" in \
        capsys.readouterr().out


# ---------------------------------------------------------------------------- caches, sweeps, keys


def test_the_training_token_cache_misses_when_features_are_re_extracted_at_the_same_path(tmp_path):
    from moviechat.models.token_cache import FrameTokenCache

    cache = FrameTokenCache("digest", max_mb=64, folder=str(tmp_path / "cache"))
    shard = tmp_path / "s.tar"
    encode = lambda f: f * 2  # noqa: E731
    feats = torch.ones(3, 4, 8)
    shard.write_bytes(b"a" * 100)
    cache.get(str(shard), "v", feats, encode)
    cache.get(str(shard), "v", feats, encode)
    assert (cache.hits, cache.misses) == (1, 1)
    stat = shard.stat()
    shard.write_bytes(b"b" * 100)  # re-extracted: same path, same size, same time
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = FrameTokenCache("digest", max_mb=64, folder=str(tmp_path / "cache"))  # a later run, from disk
    assert torch.equal(again.get(str(shard), "v", feats * 3, encode), feats * 6)
    assert (again.hits, again.misses) == (0, 1)


def test_the_token_caches_are_keyed_by_every_byte_and_a_corrupt_entry_is_a_miss_said_once(tmp_path, capsys):
    from moviechat.common.digest import content_digest
    from moviechat.models.token_cache import FrameTokenCache

    shard = tmp_path / "s.tar"
    body = bytearray(b"x" * (3 * 2**20))  # a change in the middle, past the first and last MiB, same size and times
    shard.write_bytes(body)
    before, stat = content_digest(shard), shard.stat()
    body[3 * 2**19] = ord("y")
    shard.write_bytes(body)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_digest(shard) != before
    encode = lambda f: f * 2  # noqa: E731
    cache = FrameTokenCache("digest", max_mb=64, folder=str(tmp_path / "cache"))
    cache.get(str(shard), "v", torch.ones(3, 4, 8), encode)
    cache.get(str(shard), "w", torch.ones(3, 4, 8), encode)
    for entry in (tmp_path / "cache" / "digest").glob("*.safetensors"):
        entry.write_bytes(entry.read_bytes()[:20])  # truncated on disk
    again = FrameTokenCache("digest", max_mb=64, folder=str(tmp_path / "cache"))
    assert torch.equal(again.get(str(shard), "v", torch.ones(3, 4, 8), encode), torch.full((3, 4, 8), 2.0))
    assert torch.equal(again.get(str(shard), "w", torch.ones(3, 4, 8), encode), torch.full((3, 4, 8), 2.0))
    assert (again.hits, again.misses, again.corrupt) == (0, 2, 2)
    assert capsys.readouterr().out.count("is unreadable") == 1  # said once
    third = FrameTokenCache("digest", max_mb=64, folder=str(tmp_path / "cache"))  # rewritten: read back whole
    third.get(str(shard), "v", torch.ones(3, 4, 8), encode)
    assert (third.hits, third.corrupt) == (1, 0)


def test_sweep_run_names_are_unique_per_setting():
    from moviechat.tuning import check_unique_names, short_names, slug, swept_keys

    settings = [{"model.video_qformer.dropout": 0.1}, {"model.llm.lora.dropout": 0.1}]
    names = [slug(s, swept_keys(settings)) for s in settings]
    assert names == ["video_qformer.dropout-0.1", "lora.dropout-0.1"]
    check_unique_names(settings)
    assert short_names(["memory.short_memory_merge", "memory.long_memory_length"]) == {
        "memory.short_memory_merge": "short_memory_merge", "memory.long_memory_length": "long_memory_length"}


def test_keys_with_dots_stay_whole_in_shards(tmp_path):
    vids = [VideoFeatures(k, np.ones((2, 8, 32), np.float16), default_meta(2, "tokens"), "") for k in ("my.video", "b")]
    paths = write_shards(vids, str(tmp_path / "s-%03d.tar"))
    store = ShardStore(paths)
    assert sorted(store.keys()) == ["b", "my.video"]
    assert sorted(v.key for v in store.videos(0, 1, 0, SkipCounter())) == ["b", "my.video"]
    feats, _ = FeatureLookup(None, str(tmp_path / "s-000.tar"), "tokens")("my.video")
    assert feats.shape == (2, 8, 32)


def test_the_converter_reads_npy_chunks_in_a_tar_and_keeps_dotted_keys(tmp_path, tiny_cfg):
    from test_pipelines import load_script, write_tar

    import io

    frame_shape = tiny_cfg.model.vision.feature_shape
    root = tmp_path / "MC1K"
    (root / "jsons").mkdir(parents=True)
    (root / "movies").mkdir()
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((n, *frame_shape)).astype(np.float32) for n in (3, 2)]

    def npy(array):
        buf = io.BytesIO()
        np.save(buf, array)
        return buf.getvalue()

    write_tar(root / "movies" / "my.video.tar", {f"c_{i}.npy": npy(c) for i, c in enumerate(chunks)})
    qas = [QA("what happens", "a chase", "global")]
    (root / "jsons" / "my.video.json").write_text(json.dumps(annotation_json("my.video", qas, fps=1.0, num_frame=5)))
    convert = load_script("convert_moviechat1k")
    out = tmp_path / "out"
    assert convert.main(["--release", str(root), "--out", str(out), "--cfg", str(TINY)]) == 0
    (video,) = ShardStore([str(out / "shards" / "mc1k-00000.tar")]).videos(0, 1, 0, SkipCounter())
    assert video.key == "my.video" and np.array_equal(video.feats, np.concatenate(chunks).astype(np.float16))
    validate_features(video.feats, video.meta, video.key, "x")
    assert list(load_annotations(out / "annotations")) == ["my.video"]


def test_features_taken_out_of_a_shard_keep_their_metadata(tmp_path, capsys):
    """``tar -xf SHARD KEY.feats.npy KEY.json``: the .json beside a .feats.npy is its metadata."""
    import tarfile

    from moviechat.answering.whole_split import load_features

    meta = default_meta(3, "tokens", fps=2.0)
    write_shards([VideoFeatures("clip", np.ones((3, 8, 32), np.float16), meta, "")], str(tmp_path / "s-%03d.tar"))
    with tarfile.open(tmp_path / "s-000.tar") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    feats, got = load_features(tmp_path / "x" / "clip.feats.npy", "tokens")
    assert got["timestamps"] == [0.0, 0.5, 1.0] and feats.shape == (3, 8, 32)
    np.save(tmp_path / "bare.npy", feats)
    load_features(tmp_path / "bare.npy", "tokens", warn=True)
    assert "no bare.json beside" in capsys.readouterr().out


def test_an_answering_option_that_does_not_apply_is_said(tmp_path, capsys, monkeypatch):
    from moviechat.answering import cli as answer_cli

    monkeypatch.setenv("MOVIECHAT_CHECK_ARGS", "1")
    with pytest.raises(SystemExit):
        answer_cli.main(["runs/r", "--features", "x.npy", "--question", "q", "--limit", "3", "--split", "heldout",
                         "--token-cache", "c", "--sampling", "moviechat"])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: --limit applies to --annotations only; ignored",
                     "note: --split applies to --annotations only; ignored",
                     "note: --sampling applies to --videos only; ignored",
                     "note: --token-cache applies to --videos only; ignored"]
    with pytest.raises(SystemExit):
        answer_cli.main(["runs/r", "--annotations", "a", "--videos", "v", "--limit", "3", "--split", "heldout"])
    assert "note:" not in capsys.readouterr().err
