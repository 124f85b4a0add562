"""Video-LLaMA's training data (moviechat/data/instruct.py, builders, mixtures, preview) on the generated
instruction set and the tiny model."""

import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from helpers import REPO, TRAIN_ENV, run_train, train_cmd
from prefork import run_python
from moviechat.common.jsonl import read_jsonl
from moviechat.config import ConfigError, load_config
from moviechat.data import Collator
from moviechat.data.builders import build_parts
from moviechat.data.conversation import DialogEncoder, TextSettings
from moviechat.data.instruct import media_key, read_caption_pairs, read_llava, read_videochat, read_webvid
from moviechat.common.errors import DataError
from moviechat.data.preview import preview
from moviechat.data.stores import SkipCounter
from moviechat.data.synthetic_instruct import write_instruct_set
from moviechat.models import build_moviechat
from moviechat.text.tokenizers import run_tokenizer
from moviechat.training.batches import mixture_draw

MIXTURE = REPO / "configs" / "experiments" / "tiny_instruct_mixture.yaml"


@pytest.fixture(scope="module")
def instruct(tmp_path_factory) -> Path:
    return write_instruct_set(tmp_path_factory.mktemp("instruct") / "set", 8, 32, num_videos=24, num_images=24)


def paths(root: Path, name: str) -> dict[str, str]:
    return {"videochat_instruct": {"annotations": root / "videochat_instruct.json", "folder": root / "features/videos"},
            "webvid": {"annotations": root / "webvid", "folder": root / "features/videos"},
            "llava_instruct": {"annotations": root / "llava_instruct.json", "folder": root / "features/images"},
            "cc_sbu_align": {"annotations": root / "cc_sbu_align/filter_cap.json",
                             "folder": root / "features/cc_sbu_align"}}[name]


def mixture_overrides(root: Path, *names: str) -> list[str]:
    return [f"data.mixture.{n}.{k}={v}" for n in names for k, v in paths(root, n).items()]


def test_keys_are_paths_without_extension_and_sub_folders_stay():
    assert media_key("cook/v0.mp4", "x") == "cook/v0" and media_key("./a/b.c.jpg", "x") == "a/b.c"
    with pytest.raises(DataError, match="not a relative path"):
        media_key("../etc/passwd.mp4", "ann.json: record 3")


def test_each_format_is_read_in_file_order(instruct):
    chats, llava = read_videochat(instruct / "videochat_instruct.json"), read_llava(instruct / "llava_instruct.json")
    pairs, webvid = read_caption_pairs(instruct / "cc_sbu_align/filter_cap.json"), read_webvid(instruct / "webvid")
    raw = json.loads((instruct / "videochat_instruct.json").read_text())
    assert [r.key for r in chats] == [media_key(x["video"], "") for x in raw] and chats[0].key == "films/v00000"
    assert chats[0].dialog.kind == "videochat" and len(chats[0].dialog.turns) == 2 * len(raw[0]["QA"])
    assert llava[0].key == "films/i00000" and "<Image><ImageHere>/<Image>" in llava[0].dialog.turns[0].text
    assert pairs[0].key == "c00000" and pairs[0].dialog.answer.startswith("a ")
    assert webvid[0].key == "films/v00000" and webvid[0].dialog.answer == webvid[0].dialog.answer.lower()
    assert "." not in webvid[0].dialog.answer  # BLIP's cleaning, as the original's webvid reads captions


@pytest.mark.parametrize("record, message", [
    ({"video": "a.mp4", "QA": []}, "'QA' must be a non-empty list"),
    ({"video": "a.mp4", "QA": [{"q": "<image> what", "a": "x"}]}, "'<image>' in a video record"),
    ({"QA": [{"q": "q", "a": "a"}]}, "video/image path must be a non-empty text"),
])
def test_a_bad_videochat_record_is_named_or_counted(tmp_path, record, message):
    good = {"video": "b.mp4", "QA": [{"q": "q", "a": "a"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([good, record]))
    with pytest.raises(DataError, match=f"ann.json: record 1: .*{message}"):
        read_videochat(path)
    skips = SkipCounter()
    assert [r.key for r in read_videochat(path, skips)] == ["b"] and skips.total == 1


@pytest.mark.parametrize("conversations, message", [
    ([], "'conversations' must be a non-empty list"),
    ([{"from": "system", "value": "<image> hi"}, {"from": "gpt", "value": "x"}], "'from' must be 'human' or 'gpt'"),
    ([{"from": "human", "value": "no picture"}, {"from": "gpt", "value": "x"}], "exactly one '<image>'"),
])
def test_a_bad_llava_record_is_named(tmp_path, conversations, message):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([{"id": "1", "image": "x.jpg", "conversations": conversations}]))
    with pytest.raises(DataError, match=f"llava.json: record 0: .*{message}"):
        read_llava(path)


def test_a_record_without_features_is_an_error_or_a_counted_skip(instruct, tmp_path):
    records = json.loads((instruct / "videochat_instruct.json").read_text())
    (tmp_path / "ann.json").write_text(json.dumps(records + [{"video": "films/missing.mp4", "QA": [{"q": "q", "a": "a"}]}]))
    common = ["data.name=videochat_instruct", f"data.annotations={tmp_path / 'ann.json'}",
              f"data.folder={instruct / 'features/videos'}", "model.image_qformer.num_query_tokens=8"]
    cfg = load_config(MIXTURE.parent / "tiny_synthetic.yaml", common)
    with pytest.raises(DataError, match="have no features: films/missing"):
        build_parts(cfg)
    part, = build_parts(load_config(MIXTURE.parent / "tiny_synthetic.yaml", common + ["data.on_error=skip"]))
    assert part.source.missing == ["films/missing"] and len(part.source.train_keys | part.source.val_keys) == 24


def test_a_mixture_entry_takes_datas_keys_and_refuses_unknown_ones(instruct):
    cfg = load_config(MIXTURE, ["data.max_tokens=300", "data.mixture.llava_instruct.max_tokens=200"])
    parts = {p.name: p for p in cfg.data.parts()}
    assert parts["videochat_instruct"].ratio == 3 and parts["videochat_instruct"].data.max_tokens == 300
    assert parts["llava_instruct"].data.max_tokens == 200 and parts["cc_sbu_align"].builder == "cc_sbu_align"
    with pytest.raises(ConfigError, match="data.mixture.llava_instruct.ratio=-1 must be a number > 0"):
        load_config(MIXTURE, ["data.mixture.llava_instruct.ratio=-1"])
    with pytest.raises(ConfigError, match="data.mixture.llava_instruct.annotation: Key 'annotation' not in"):
        load_config(MIXTURE, ["data.mixture.llava_instruct.annotation=x"])


def test_a_three_to_one_mixture_draws_near_three_to_one_the_same_every_time():
    draws = [mixture_draw(7, step, ["a", "b"], [3, 1]) for step in range(4000)]
    share = Counter(draws)["a"] / len(draws)
    assert 0.73 < share < 0.77, share
    assert draws == [mixture_draw(7, step, ["a", "b"], [3.0, 1.0]) for step in range(4000)]
    assert draws != [mixture_draw(8, step, ["a", "b"], [3, 1]) for step in range(4000)]


def test_an_image_record_trains_through_the_memory_as_one_frame(instruct, tiny_cfg):
    cfg = load_config(MIXTURE, mixture_overrides(instruct, "videochat_instruct", "llava_instruct", "cc_sbu_align")
                      + ["model.freeze.llm=true"])
    parts = {p.name: p for p in build_parts(cfg)}
    tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, [t for p in parts.values() for t in p.source.texts()])
    llava = parts["llava_instruct"]
    llava.train.set_encoder(DialogEncoder(tokenizer, TextSettings()))
    sample = next(iter(llava.train))
    assert sample.frames.shape[0] == 1 and sample.stamps == (0.0,)
    torch.manual_seed(0)
    model = build_moviechat(cfg.model, cfg.memory, tokenizer, verbose=False)
    batch = Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, "tokens")([sample])
    memories, _ = model.build_memories(batch, model.frame_tokens(batch))
    assert memories[0].shape[0] == 1  # one frame in, one frame of memory out
    out = model(batch)
    out["loss"].backward()
    grads = [p.grad for p in model.video_qformer.parameters() if p.grad is not None]
    assert torch.isfinite(out["loss"]) and grads and any(g.abs().sum() > 0 for g in grads)
    assert out["num_tokens"] == sum(label != -100 for label in sample.text.labels)


@pytest.mark.parametrize("config, name", [("webvid", "webvid"), ("videochat_instruct", "videochat_instruct"),
                                          ("llava_instruct", "llava_instruct"), ("cc_sbu_align", "cc_sbu_align")])
def test_preview_on_each_shipped_dataset_config(instruct, config, name):
    overrides = [f"data.{k}={v}" for k, v in paths(instruct, name).items()]
    cfg = load_config(REPO / "configs" / "datasets" / f"{config}.yaml",
                      overrides + ["data.val_fraction=0.2", "model.image_qformer.num_query_tokens=8",
                                   "model.image_qformer.hidden_size=32",
                                   "model.llm.hidden_size=64"])
    shown = preview(cfg, 2, marked=True)
    assert shown["dataset"] == name and shown["frames"] == (1 if name in ("llava_instruct", "cc_sbu_align") else
                                                            len(json.loads((instruct / "features/videos" / f"{shown['key']}.json").read_text())["timestamps"]))
    assert len(shown["input_ids"]) == len(shown["labels"]) and "[[" in shown["text"]
    assert any(label != -100 for label in shown["labels"])


@pytest.mark.slow
def test_preview_command_prints_one_json_line(instruct, tmp_path):
    args = ["-m", "moviechat.data.preview", "--cfg", str(MIXTURE), "--dataset", "llava_instruct",
            "--index", "0", "--text", *mixture_overrides(instruct, "videochat_instruct", "llava_instruct", "cc_sbu_align")]
    proc = run_python(args, cwd=tmp_path, env=os.environ, timeout=120)
    shown = json.loads(proc.stdout)  # one JSON line, --text or not
    assert "[[" in shown["text"] and shown["text"] in proc.stderr
    first = json.loads((instruct / "llava_instruct.json").read_text())[0]
    assert shown["key"] == media_key(first["image"], "") and shown["frames"] == 1
    assert set(shown) == {"dataset", "key", "frames", "input_ids", "labels", "text"}
    args[args.index("--index") + 1] = "99999"
    bad = run_python(args, cwd=tmp_path, env=os.environ, timeout=120)
    assert bad.returncode == 2 and "--index 99999: llava_instruct has 24 record(s)" in bad.stderr


@pytest.mark.slow
def test_a_mixture_trains_logs_its_datasets_and_resumes_after_a_kill_with_the_same_draws(instruct, tmp_path):
    common = [*mixture_overrides(instruct, "videochat_instruct", "llava_instruct", "cc_sbu_align"),
              "train.max_steps=12", "train.save_every=4", "train.eval_every=0", "train.eval_samples=4",
              "train.eval_generate=0", "data.mixture.llava_instruct.ratio=1", "data.mixture.cc_sbu_align.ratio=1"]
    run_train(tmp_path, "run.name=full", *common, cfg=MIXTURE)
    rows = {r["step"]: r for r in read_jsonl(tmp_path / "full" / "metrics.jsonl") if "loss" in r}
    names = ("videochat_instruct", "llava_instruct", "cc_sbu_align")
    drawn = Counter(mixture_draw(42, s, names, (3, 1, 1)) for s in range(12))
    sizes = {p.name: len(p.train) for p in build_parts(load_config(MIXTURE, common))}  # records per epoch
    batches = {n: ([4] * (k // 4) + ([k % 4] if k % 4 else [])) * 4 for n, k in sizes.items()}  # micro-batch 4
    assert {n: rows[12][f"data/{n}"] for n in names} == {n: sum(batches[n][:drawn[n]]) for n in names}
    evals = [r for r in read_jsonl(tmp_path / "full" / "metrics.jsonl") if "eval/loss" in r]
    assert all(f"eval/{n}/loss" in evals[-1] for n in names) and "eval/loss" in evals[-1]
    # the same run killed (SIGKILL: no checkpoint on the way out) after its step-4 checkpoint, then resumed
    env = os.environ | TRAIN_ENV
    proc = subprocess.Popen(train_cmd(tmp_path, "run.name=killed", *common, cfg=MIXTURE), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "killed" / "checkpoints" / "latest").is_file():
        time.sleep(0.2)
    proc.kill()
    assert proc.wait(timeout=60) == -9  # killed mid-run, not finished
    run_train(tmp_path, "run.name=killed", *common, cfg=MIXTURE, resume=str(tmp_path / "killed"))
    again = {r["step"]: r for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl") if "loss" in r}
    assert sorted(again) == list(range(1, 13))
    assert [again[s]["loss"] for s in again] == [rows[s]["loss"] for s in again]  # same draws, same samples: bitwise
    assert all(again[s][f"data/{n}"] == rows[s][f"data/{n}"] for s in again for n in names)


@pytest.mark.slow
def test_a_run_says_what_it_truncated_and_skipped_each_epoch_and_in_all(instruct, tmp_path):
    # at 170 tokens some conversations lose later turns (learned, counted) and some would lose their first
    # answer (skipped with data.on_error=skip); 2 steps of 4 on 24 videos read more than one epoch
    proc = run_train(tmp_path, "run.name=t", "data.name=videochat_instruct", "data.max_tokens=170",
                     f"data.annotations={instruct / 'videochat_instruct.json'}", "data.on_error=skip",
                     f"data.folder={instruct / 'features/videos'}", "model.image_qformer.num_query_tokens=8",
                     "train.max_steps=2", "train.eval_every=0", "train.eval_generate=0", "data.val_fraction=0")
    out = proc.stdout
    assert out.count("a conversation longer than data.max_tokens was truncated (its later turns are not learned)") == 1
    truncated = int(re.search(r"\[rank 0\] (\d+) training conversation\(s\) truncated at data.max_tokens", out)[1])
    per_epoch = [int(n) for n in re.findall(r"epoch \d+: (\d+) training sample\(s\) skipped this epoch \(data.on_error="
                                            r"skip\); reasons: \{'record that cannot be learned': \d+\}", out)]
    in_all = int(re.search(r"videochat_instruct: skipped in all \(data.on_error=skip\): (\d+) training sample", out)[1])
    assert truncated >= 1 and per_epoch and all(n >= 1 for n in per_epoch)
    assert in_all >= sum(per_epoch)  # the epoch still running when the run ends is counted in all only


def test_a_record_whose_first_answer_truncation_would_cut_is_named_or_counted(instruct):
    common = ["data.name=videochat_instruct", f"data.annotations={instruct / 'videochat_instruct.json'}",
              f"data.folder={instruct / 'features/videos'}", "model.image_qformer.num_query_tokens=8",
              "data.max_tokens=16", "data.shuffle_buffer=0"]
    for on_error in ("raise", "skip"):
        cfg = load_config(MIXTURE.parent / "tiny_synthetic.yaml", common + [f"data.on_error={on_error}"])
        (part,) = build_parts(cfg)
        tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, part.source.texts())
        part.train.set_encoder(DialogEncoder(tokenizer, TextSettings("original", 16)))
        if on_error == "raise":
            with pytest.raises(DataError, match=r"videochat_instruct.json: record \d+: .* tokens; truncation at 16 would "
                                                r"cut inside its first answer"):
                next(iter(part.train))
        else:
            assert list(part.train) == []
            assert part.train.skips.counts["record that cannot be learned"] == len(part.source.train_keys)


def test_an_elastic_merge_keeps_every_datasets_streams_and_counts_samples_once():
    from moviechat.runs.train_state import StreamState, TrainState, upgrade
    from moviechat.training.elastic import merged_train_state

    old = [TrainState(6, {"a": StreamState(1, {0: 5}, {0: 1}, 2), "b": StreamState(0, {0: 3})}, {"a": 40, "b": 8}),
           TrainState(6, {"a": StreamState(1, {1: 4}), "b": StreamState(0, {1: 2})}, {"a": 40, "b": 8})]
    first, second = merged_train_state(old, "a", rank=0), merged_train_state(old, "a", rank=1)
    assert first.step == 6 and first.data["a"].positions == {0: 5, 1: 4} and first.data["b"].positions == {0: 3, 1: 2}
    assert first.samples == {"a": 80, "b": 16} and second.samples == {"a": 0, "b": 0}  # summed once, over all ranks
    assert first.data["a"].skipped_before == 2 and second.data["a"].skipped_before == 0
    before = TrainState.__new__(TrainState)  # a state pickled before mixtures: one dataset's fields on the state
    before.__dict__.update(step=3, epoch=2, positions={0: 7}, skipped={}, skipped_before=1)
    now = upgrade(before, "synthetic")
    assert now.step == 3 and now.data["synthetic"].epoch == 2 and now.data["synthetic"].positions == {0: 7}


def test_a_search_can_target_one_dataset_of_a_mixture():
    from moviechat.tuning.sweep_file import reported_metric

    assert all(map(reported_metric, ["eval/loss", "eval/acc", "eval/acc_type_first", "eval/llava_instruct/acc",
                                     "eval/llava_instruct/loss", "eval/videochat_instruct/acc_prior"]))
    assert not any(map(reported_metric, ["eval/bleu", "eval/llava_instruct/bleu", "loss", "eval/a/b/acc"]))


def test_a_mixtures_evaluation_weighs_each_dataset_by_its_tokens_and_questions():
    from moviechat.training.heldout import combine_records

    a = {"step": 5, "eval/loss": 1.0, "eval/tokens": 30, "eval/acc": 0.5, "eval/n_all": 10, "eval/acc_prior": 0.1,
         "eval/n_prior": 10}
    b = {"step": 5, "eval/loss": 2.0, "eval/tokens": 10, "eval/acc": 1.0, "eval/n_all": 30, "eval/acc_prior": 0.3,
         "eval/n_prior": 30}
    out = combine_records(5, {"a": a, "b": b})
    assert out["eval/loss"] == pytest.approx(1.25) and out["eval/acc"] == pytest.approx(35 / 40)
    assert out["eval/acc_prior"] == pytest.approx(0.25) and out["eval/n_all"] == 40 and out["eval/tokens"] == 40
    assert out["eval/a/acc"] == 0.5 and out["eval/b/loss"] == 2.0 and "eval/a/step" not in out
    assert combine_records(5, {"a": a}) is a  # one dataset: its record as it is


def test_preview_of_a_record_works_when_other_records_are_bad_with_on_error_skip(instruct, tmp_path):
    records = json.loads((instruct / "videochat_instruct.json").read_text())
    records[1] = {"video": "films/v00001.mp4", "QA": "not a list"}
    (tmp_path / "bad.json").write_text(json.dumps(records))
    overrides = [f"data.folder={instruct / 'features/videos'}", f"data.annotations={tmp_path / 'bad.json'}",
                 "data.val_fraction=0", "model.image_qformer.num_query_tokens=8", "model.image_qformer.hidden_size=32"]
    cfg = load_config(REPO / "configs" / "datasets" / "videochat_instruct.yaml", overrides + ["data.on_error=skip"])
    assert preview(cfg, 2)["key"] == media_key(records[2]["video"], "")  # record 2 is still record 2
    with pytest.raises(DataError, match="record 1 is bad and skipped"):
        preview(cfg, 1)
    with pytest.raises(DataError, match="record 1"):  # without skip, the bad record stops the preview, named
        preview(load_config(REPO / "configs" / "datasets" / "videochat_instruct.yaml", overrides), 2)


def test_instruction_and_caption_records_are_grouped_by_length_and_question_sets_are_not(instruct, tmp_path):
    mixture = load_config(MIXTURE, mixture_overrides(instruct, "videochat_instruct", "llava_instruct", "cc_sbu_align"))
    assert {p.name: p.train.group_window for p in build_parts(mixture)} == {
        "videochat_instruct": 32, "llava_instruct": 32, "cc_sbu_align": 32}
    off = load_config(MIXTURE, [*mixture_overrides(instruct, "videochat_instruct", "llava_instruct", "cc_sbu_align"),
                                "data.mixture.llava_instruct.group_by_length=false"])
    assert {p.name: p.train.group_window for p in build_parts(off)}["llava_instruct"] == 0
    synthetic = load_config(MIXTURE.parent / "tiny_synthetic.yaml", [f"run.output_dir={tmp_path}",
                                                                      "data.synthetic.num_videos=40"])
    assert [p.train.group_window for p in build_parts(synthetic)] == [0]  # the embedded default: today's order
