"""`moviechat answer` on a trained run: both modes, batches, a chat, video files through the EVA encoder,
questions from an annotations folder."""


import json

import pytest

from helpers import hand_made, synthetic_features
from moviechat.answering import cli as answer_cli
from moviechat.answering import lookups, whole_split
from moviechat.answering import questions as question_files
from moviechat.answering.answerer import Answerer
from moviechat.answering.chat import instruct_prompt_ids
from moviechat.data.annotations import QA, annotation_json
from moviechat.runs.loading import load_run


@pytest.mark.slow
def test_inference_answers_in_both_modes_and_in_batch(tiny_lora_run, tmp_path, capsys):
    cfg, _, _, _ = load_run(tiny_lora_run)
    video = synthetic_features(tmp_path, cfg)
    assert answer_cli.main([str(tiny_lora_run), "--features", str(tmp_path / "clip.npy"), "--question",
                           "what color is the first scene", "--max-new-tokens", "3"]) == 0
    global_answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert global_answer["mode"] == "global" and isinstance(global_answer["prediction"], str)
    assert answer_cli.main([str(tiny_lora_run), "--features", str(tmp_path / "clip.npy"), "--question",
                           "what color is on screen now", "--time", "12.5", "--max-new-tokens", "3"]) == 0
    bp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bp["mode"] == "breakpoint" and bp["frame"] == 12
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"video": "clip", "question": q.question, "time": q.seconds}) + "\n"
                                 for q in video.qas))
    answerer = Answerer.load(tiny_lora_run, max_new_tokens=3)
    counts = whole_split.answer_file(answerer, questions, lookups.FeatureLookup(str(tmp_path), None, "tokens"),
                                   tmp_path / "p.jsonl")
    n = counts["answered"]
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert n == len(video.qas) == len(rows) and {r["mode"] for r in rows} == {"global", "breakpoint"}
    # The streaming memory answers as the batched training path does.
    row = rows[0]
    assert row["prediction"] == answerer.answer(video.features.feats, video.features.meta, row["question"], row["time"], "clip")["prediction"]


@pytest.mark.slow
def test_a_chat_asks_each_question_after_the_earlier_answers(tiny_lora_run, tmp_path, capsys, monkeypatch):
    cfg, _, _, _ = load_run(tiny_lora_run)
    synthetic_features(tmp_path, cfg)
    asked = []
    real = answer_cli.converse
    monkeypatch.setattr(answer_cli, "converse", lambda answerer, *a, **k: asked.append(a) or real(answerer, *a, **k))
    args = [str(tiny_lora_run), "--features", str(tmp_path / "clip.npy"), "--question", "what color is the first scene",
            "--question", "how many scenes are there", "--max-new-tokens", "3"]
    assert answer_cli.main(args) == 0
    turns = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert [t["turn"] for t in turns] == [0, 1] and all(t["mode"] == "global" for t in turns)
    answerer = Answerer.load(tiny_lora_run, max_new_tokens=3)
    first = turns[0]["prediction"]
    # the second prompt holds the first question and the model's own first answer, MovieChat's Chat layout
    text = answerer.format.prompt_text("how many scenes are there", [("what color is the first scene", first)])
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


@pytest.mark.slow
def test_inference_from_a_video_file_through_the_eva_encoder(tiny_lora_run, tmp_path, capsys):
    from helpers import write_video

    write_video(tmp_path / "clip.mp4", frames=16, fps=8)
    assert answer_cli.main([str(tiny_lora_run), "--video-file", str(tmp_path / "clip.mp4"), "--fps", "4",
                           "--question", "what color is on screen now", "--time", "1.0", "--max-new-tokens", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["mode"] == "breakpoint" and result["frame"] == 4  # 1.0 s at 4 fps


@pytest.mark.slow
def test_batch_over_video_files_with_moviechat_sampling(tiny_lora_run, tmp_path, capsys):
    from helpers import write_video

    (tmp_path / "videos").mkdir()
    (tmp_path / "ann").mkdir()
    write_video(tmp_path / "videos" / "clip.mp4", frames=40, fps=8)
    qas = [QA("what color is the first scene", "red", "global"), QA("what color now", "red", "breakpoint", 2.0)]
    (tmp_path / "ann" / "clip.json").write_text(json.dumps(annotation_json("clip", qas, fps=8.0, num_frame=40)))
    args = [str(tiny_lora_run), "--annotations", str(tmp_path / "ann"), "--videos", str(tmp_path / "videos"),
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
    rows = question_files.questions_from_annotations(ann)
    assert rows == [{"video": "v1", "question": "Where is he?", "time": None},
                    {"video": "v1", "question": "What is he holding?", "time": 10.0, "frame_index": 300,
                     "num_frame": 900}]  # the frame index as written, for --breakpoint-convention moviechat
    assert len(question_files.questions_from_annotations(ann, limit=1)) == 1
