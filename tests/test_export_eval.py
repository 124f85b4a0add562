import http.server
import json
import threading

import pytest
import torch

from moviechat.scoring import cli as score_cli

from moviechat.scoring.judge import JudgeClient

from moviechat.scoring import moviechat1k

from moviechat.answering import cli as answer_cli

from moviechat.answering.answerer import Answerer

from moviechat.answering import whole_split

from moviechat.answering.chat import instruct_prompt_ids

from moviechat.runs import export
from moviechat.data.annotations import QA, annotation_json
from moviechat.runs.loading import load_run
from helpers import ChatJudgeStub, lavis_bert_names, run_train, synthetic_features

LORA = ["model.llm.lora.enabled=true", "model.freeze.llm=true", "train.max_steps=3", "train.eval_every=0",
        "train.eval_generate=0"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    run_train(tmp, "run.name=r", *LORA)
    return tmp / "r"


@pytest.mark.slow
def test_moviechat_export_uses_the_original_names_and_reloads_equal(lora_run, tmp_path):
    with pytest.raises(ValueError, match="--merge-lora"):
        export.export(lora_run, "moviechat", tmp_path / "x.pth")
    out = export.export(lora_run, "moviechat", tmp_path / "moviechat.pth", merge_lora=True)
    keys = set(torch.load(out, map_location="cpu", weights_only=True)["model"])
    cfg, _, model, _ = load_run(lora_run)
    v = cfg.model.video_qformer
    expected = {n for n in lavis_bert_names("video_Qformer.", v.num_hidden_layers, v.cross_attention_frequency, text=False)}
    expected |= {"video_query_tokens", "video_frame_position_embedding.weight", "llama_proj.weight", "llama_proj.bias"}
    assert {k for k in keys if not k.startswith("llama_model.")} == expected
    llm_keys = {k[len("llama_model."):] for k in keys if k.startswith("llama_model.")}
    assert "model.layers.0.self_attn.q_proj.weight" in llm_keys and not any("lora" in k for k in llm_keys)


@pytest.mark.slow
def test_hf_lora_and_merged_exports_reload_with_equal_logits(lora_run, tmp_path):
    hf = export.export(lora_run, "hf", tmp_path / "hf")
    cfg, tokenizer, again = export.load_hf(hf)
    _, _, model, _ = load_run(lora_run)
    batch = export.probe_batch(cfg, tokenizer)
    assert torch.equal(model.logits(batch), again.logits(batch))
    assert "Streaming memory" in (hf / "README.md").read_text()
    lora = export.export(lora_run, "lora", tmp_path / "lora")
    assert (lora / "adapter_config.json").is_file()
    merged = export.export(lora_run, "merged", tmp_path / "merged")
    assert (merged / "config.json").is_file() and (merged / "tokenizer_config.json").is_file()


@pytest.mark.slow
@pytest.mark.distributed
def test_zero2_checkpoint_of_a_two_process_run_exports(tmp_path):
    run_train(tmp_path, "run.name=z", "train.max_steps=2", "train.eval_every=0", "train.eval_generate=0",
              "deepspeed.zero_stage=2", nproc=2)
    out = export.export(tmp_path / "z", "moviechat", tmp_path / "z.pth")
    state = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert "llama_proj.weight" in state and state["llama_proj.weight"].dtype == torch.float32


@pytest.mark.slow
def test_inference_answers_in_both_modes_and_in_batch(lora_run, tmp_path, capsys):
    cfg, _, _, _ = load_run(lora_run)
    video = synthetic_features(tmp_path, cfg)
    assert answer_cli.main([str(lora_run), "--features", str(tmp_path / "clip.npy"), "--question",
                           "what color is the first scene", "--max-new-tokens", "3"]) == 0
    global_answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert global_answer["mode"] == "global" and isinstance(global_answer["prediction"], str)
    assert answer_cli.main([str(lora_run), "--features", str(tmp_path / "clip.npy"), "--question",
                           "what color is on screen now", "--time", "12.5", "--max-new-tokens", "3"]) == 0
    bp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bp["mode"] == "breakpoint" and bp["frame"] == 12
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"video": "clip", "question": q.question, "time": q.seconds}) + "\n"
                                 for q in video.qas))
    answerer = Answerer.load(lora_run, max_new_tokens=3)
    counts = whole_split.answer_file(answerer, questions, whole_split.FeatureLookup(str(tmp_path), None, "tokens"),
                                   tmp_path / "p.jsonl")
    n = counts["answered"]
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert n == len(video.qas) == len(rows) and {r["mode"] for r in rows} == {"global", "breakpoint"}
    # The streaming memory answers as the batched training path does.
    row = rows[0]
    assert row["prediction"] == answerer.answer(video.features.feats, video.features.meta, row["question"], row["time"], "clip")["prediction"]


@pytest.mark.slow
def test_a_chat_asks_each_question_after_the_earlier_answers(lora_run, tmp_path, capsys, monkeypatch):
    cfg, _, _, _ = load_run(lora_run)
    synthetic_features(tmp_path, cfg)
    asked = []
    real = answer_cli.converse
    monkeypatch.setattr(answer_cli, "converse", lambda answerer, *a, **k: asked.append(a) or real(answerer, *a, **k))
    args = [str(lora_run), "--features", str(tmp_path / "clip.npy"), "--question", "what color is the first scene",
            "--question", "how many scenes are there", "--max-new-tokens", "3"]
    assert answer_cli.main(args) == 0
    turns = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert [t["turn"] for t in turns] == [0, 1] and all(t["mode"] == "global" for t in turns)
    answerer = Answerer.load(lora_run, max_new_tokens=3)
    first = turns[0]["prediction"]
    # the second prompt holds the first question and the model's own first answer, MovieChat's Chat layout
    text = answerer.prompt.prompt_text("how many scenes are there", [("what color is the first scene", first)])
    assert text.endswith(f"first scene###Assistant: {first}###Human: how many scenes are there###Assistant:")
    assert turns[0]["prediction"] == answerer.answer(*asked[0][:2], "what color is the first scene", None, "x")["prediction"]
    assert answer_cli.main(args[:3] + ["--question", "what color is the first scene", "--chat-style", "instruct",
                                      "--max-new-tokens", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["turn"] == 0
    ids = instruct_prompt_ids("how many scenes are there", [("what color is the first scene", "red")],
                                        [0.0, 1.0], answerer.tokenizer)
    assert answerer.tokenizer.decode(ids).replace(" ", "").endswith(
        "firstscene###Assistant:red###Human:howmanyscenesarethere###Assistant:")
    with pytest.raises(SystemExit):
        answer_cli.main(args + ["--time", "3"])


def hand_made(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    qas = [QA("Where is he?", "In the kitchen.", "global"), QA("What is he holding?", "A red cup", "breakpoint", 10.0)]
    (ann / "v1.json").write_text(json.dumps(annotation_json("v1", qas, fps=30.0, num_frame=900)))
    preds = [
        {"video": "v1", "question": "Where is he?", "prediction": "in the kitchen"},  # normalised match, not exact
        {"video": "v1", "question": "What is he holding?", "time": 10.0, "prediction": "a blue cup"},  # F1 2/3... see below
        {"video": "v9", "question": "Who?", "prediction": "nobody"},  # no reference
    ]
    path = tmp_path / "preds.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    return ann, path


def test_offline_scores_on_a_hand_made_set(tmp_path):
    ann, preds = hand_made(tmp_path)
    assert score_cli.main(["--predictions", str(preds), "--annotations", str(ann), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["unmatched_predictions"] == 1
    scores = lambda entry: {k: entry[k] for k in ("n", "videos", "exact", "normalized", "f1")}  # noqa: E731
    assert scores(summary["global"]) == {"n": 1, "videos": 1, "exact": 0.0, "normalized": 1.0, "f1": 1.0}
    # "a blue cup" vs "A red cup": normalised tokens [blue, cup] vs [red, cup]: P = R = 1/2 -> F1 = 1/2
    assert scores(summary["breakpoint"]) == {"n": 1, "videos": 1, "exact": 0.0, "normalized": 0.0, "f1": 0.5}
    assert summary["breakpoint"]["f1_ci"] == [0.5, 0.5]  # one video: nothing to resample
    lmms = [json.loads(x) for x in (tmp_path / "out" / "lmms_eval_breakpoint.jsonl").read_text().splitlines()]
    assert lmms == [{"video_name": "v1.mp4", "question": "What is he holding?", "answer": "A red cup", "time": 300,
                     "pred": "a blue cup"}]  # time: the frame index (10 s at 30 fps), as the annotations give it
    original = json.loads((tmp_path / "out" / "moviechat_breakpoint.json").read_text())
    assert original == {"v1.mp4": [{"question": "What is he holding?", "answer": "A red cup", "time": 300,
                                    "pred": "a blue cup"}]}


class StubJudge(ChatJudgeStub):
    replies = {"in the kitchen": "{'pred': 'yes', 'score': 5}", "a blue cup": "Sure! My verdict is yes, 3"}

    def verdict(self, text: str) -> str:
        return next(r for pred, r in self.replies.items() if f"Predicted Answer: {pred}" in text)


def test_judge_on_a_localhost_stub_counts_malformed_and_caches(tmp_path):
    ann, preds = hand_made(tmp_path)
    server = http.server.HTTPServer(("127.0.0.1", 0), StubJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        args = ["--predictions", str(preds), "--annotations", str(ann), "--out", str(tmp_path / "j"), "--judge-url", url,
                "--judge-model", "stub-judge-1", "--judge-protocol", "ours"]
        assert score_cli.main(args) == 0
        summary = json.loads((tmp_path / "j" / "summary.json").read_text())
        assert summary["judge_model"] == "stub-judge-1" and summary["judge_protocol"] == "ours"
        assert summary["judge_models_reported"] == ["stub-judge-1"]
        assert summary["global"]["judge_accuracy"] == 1.0 and summary["global"]["judge_score"] == 5
        assert summary["breakpoint"]["judge_malformed"] == 1 and summary["breakpoint"]["judge_accuracy"] is None
        assert StubJudge.count == 2
        assert score_cli.main(args) == 0  # cached: no new requests
        assert StubJudge.count == 2
    finally:
        server.shutdown()


def test_judge_failures_are_retried_then_counted(tmp_path):
    ann, preds = hand_made(tmp_path)
    judge = JudgeClient("http://127.0.0.1:9", "none", tmp_path / "c.jsonl", retries=2, timeout=1, backoff=0)
    rows, summary = moviechat1k.evaluate([json.loads(x) for x in preds.read_text().splitlines()],
                                        moviechat1k.references(ann), judge)
    assert judge.requests == 4 and summary["all"]["judge_failed"] == 2
    # lmms-eval (the default) keeps a failed judgement in the mean as "no" / 0
    assert summary["all"]["judge_accuracy"] == 0.0 and summary["all"]["judge_score"] == 0.0


@pytest.mark.parametrize("reply, expected", [
    ("{'pred': 'yes', 'score': 4}", (1.0, 4.0)), ('Here: {"pred": "no", "score": 1}', (0.0, 1.0)),
    ("{'pred': 'maybe', 'score': 3}", None), ("{'pred': 'yes', 'score': 9}", None), ("no dict", None),
])
def test_our_forgiving_parser(reply, expected):
    from moviechat.scoring.judge_protocols import ours_verdict

    verdict = ours_verdict(reply)
    assert ((verdict.acc, verdict.score) if verdict.status == "ok" else None) == expected


@pytest.mark.slow
def test_inference_from_a_video_file_through_the_eva_encoder(lora_run, tmp_path, capsys):
    from helpers import write_video

    write_video(tmp_path / "clip.mp4", frames=16, fps=8)
    assert answer_cli.main([str(lora_run), "--video-file", str(tmp_path / "clip.mp4"), "--fps", "4",
                           "--question", "what color is on screen now", "--time", "1.0", "--max-new-tokens", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["mode"] == "breakpoint" and result["frame"] == 4  # 1.0 s at 4 fps


@pytest.mark.slow
def test_batch_over_video_files_with_moviechat_sampling(lora_run, tmp_path, capsys):
    from helpers import write_video

    (tmp_path / "videos").mkdir()
    (tmp_path / "ann").mkdir()
    write_video(tmp_path / "videos" / "clip.mp4", frames=40, fps=8)
    qas = [QA("what color is the first scene", "red", "global"), QA("what color now", "red", "breakpoint", 2.0)]
    (tmp_path / "ann" / "clip.json").write_text(json.dumps(annotation_json("clip", qas, fps=8.0, num_frame=40)))
    args = [str(lora_run), "--annotations", str(tmp_path / "ann"), "--videos", str(tmp_path / "videos"),
            "--sampling", "moviechat", "--out", str(tmp_path / "p.jsonl"), "--max-new-tokens", "2"]
    assert answer_cli.main(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["global", "breakpoint"] and {r["sampling"] for r in rows} == {"frames=1024"}
    capsys.readouterr()
    assert answer_cli.main(args) == 0  # a re-run finds everything answered
    printed = capsys.readouterr().out
    assert "answered 0 questions" in printed and "(2 answered before;" in printed


def test_questions_come_from_an_annotations_folder(tmp_path):
    ann, _ = hand_made(tmp_path)
    rows = whole_split.questions_from_annotations(ann)
    assert rows == [{"video": "v1", "question": "Where is he?", "time": None},
                    {"video": "v1", "question": "What is he holding?", "time": 10.0, "frame_index": 300,
                     "num_frame": 900}]  # the frame index as written, for --breakpoint-convention moviechat
    assert len(whole_split.questions_from_annotations(ann, limit=1)) == 1


@pytest.mark.slow
def test_moviechat_export_leaves_the_model_as_it_was(lora_run, tmp_path):
    cfg, tokenizer, model, _ = load_run(lora_run)
    llm = model.llm
    export.export_moviechat(cfg, tokenizer, model, tmp_path / "m.pth", merge_lora=True)
    assert model.llm is llm and export.has_lora(model)  # still the adapted LLM, not its merged copy


def test_bootstrap_interval_resamples_videos_not_questions():
    # 40 videos of 5 questions; a video is all right or all wrong: the spread is that of 40 draws, not 200.
    rows = [{"video": f"v{v}", "exact": float(v < 20)} for v in range(40) for _ in range(5)]
    lo, hi = moviechat1k.bootstrap_ci(rows, lambda r: r["exact"])
    assert lo < 0.5 < hi and 0.25 < hi - lo < 0.4  # ~ +-1.96 * sqrt(0.25 / 40); questions alone give ~ +-0.07
    assert moviechat1k.bootstrap_ci(rows, lambda r: r["exact"]) == [lo, hi]  # seeded
    assert moviechat1k.bootstrap_ci([{"video": "a", "exact": 1.0}] * 3, lambda r: r["exact"]) == [1.0, 1.0]
