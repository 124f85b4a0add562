"""The MovieChat-1K test release as downloaded, and MovieChat's own evaluation conventions (issue 22)."""

import json

import pytest

from helpers import answerer_for, token_video
from moviechat.answering.breakpoints import BreakpointConvention, moviechat_breakpoint_seconds
from moviechat.answering.lookups import FeatureLookup
from moviechat.answering.questions import questions_from_annotations
from moviechat.answering.whole_split import answer_file
from moviechat.common.errors import DataError
from moviechat.data.stores import VideoFeatures, write_folder
from moviechat.scoring import cli as score_cli


def gt_json(key, fps=10.0, num_frame=400, times=(100, 390, 450)):
    return {"info": {"video_path": f"{key}.mp4", "url": "", "class": "", "w": 1, "h": 1, "fps": fps,
                     "num_frame": num_frame},
            "caption": "c", "global": [{"question": "what color is the first scene", "answer": "red"}],
            "breakpoint": [{"time": t, "question": f"what color now {i}", "answer": "blue"} for i, t in enumerate(times)]}


def release(tmp_path, cfg):
    """MC1K-test/: gt/gt/*.json beside gt/__init__.py, annotations/ without answers, features of 40 frames at
    1 fps (40 s decoded) while info says 400 frames at 10 fps: the two conventions place breakpoints alike."""
    root = tmp_path / "MC1K-test"
    (root / "gt" / "gt").mkdir(parents=True)
    (root / "gt" / "__init__.py").write_text("")
    (root / "annotations").mkdir()
    for key in ("1", "AWA-1"):
        (root / "gt" / "gt" / f"{key}.json").write_text(json.dumps(gt_json(key)))
        questions = gt_json(key)
        for item in questions["global"] + questions["breakpoint"]:
            del item["answer"]
        (root / "annotations" / f"{key}.json").write_text(json.dumps(questions))
    feats, meta = token_video(cfg)
    write_folder([VideoFeatures(k, feats, meta, "") for k in ("1", "AWA-1")], root / "features")
    return root


def test_the_test_release_as_downloaded_answers_and_scores(tmp_path, tiny_cfg, tokenizer, capsys):
    answerer = answerer_for(tiny_cfg, tokenizer)
    root = release(tmp_path, tiny_cfg)
    lookup = FeatureLookup(str(root / "features"), None, "tokens")
    asked = questions_from_annotations(root / "annotations")  # questions only: enough to answer
    assert len(asked) == 8 and {q["video"] for q in asked} == {"1", "AWA-1"}
    assert "2 breakpoint(s) at or past their video's end" in capsys.readouterr().out
    counts = answer_file(answerer, questions_from_annotations(root / "gt"), lookup, tmp_path / "p.jsonl")
    assert counts["answered"] == 8 and counts["failed_videos"] == 0
    preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    late = [p for p in preds if p.get("past_end")]
    # 450 of 400 frames: answered at the last frame (the features hold 40), not an error
    assert len(late) == 2 and all(p["frame"] == 39 for p in late)
    assert score_cli.main(["--predictions", str(tmp_path / "p.jsonl"), "--annotations", str(root / "gt"),
                            "--out", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["all"]["n"] == 8 and summary["breakpoints_past_end"] == 2 and summary["unmatched_predictions"] == 0
    assert "2 breakpoint(s) past the video's end, answered at its last frame" in \
        (tmp_path / "e" / "summary.md").read_text()
    capsys.readouterr()
    assert score_cli.main(["--predictions", str(tmp_path / "p.jsonl"), "--annotations", str(root / "annotations"),
                            "--out", str(tmp_path / "e2")]) == 2
    assert "scoring needs the ground truth" in capsys.readouterr().err


def test_moviechat_conventions_on_a_video_whose_num_frame_and_fps_disagree_with_its_length(tmp_path, tiny_cfg,
                                                                                          tokenizer):
    """info: 1000 frames at 10 fps (100 s); decoded: 40 frames at 1 fps (40 s). A breakpoint at frame 500 is
    at 50 s by ours (past the decoded end: the last frame) and in fragment int(500 / (1000 / 8)) = 4 of 8 by
    MovieChat's script (fragment 64 of its 128 without memory.fragments), which starts at 20 s."""
    assert moviechat_breakpoint_seconds(500, 1000, 40.0, 8) == 20.0
    assert moviechat_breakpoint_seconds(500, 1000, 40.0, 128) == 20.0  # the script's 128 fragments
    answerer = answerer_for(tiny_cfg, tokenizer)
    feats, meta = token_video(tiny_cfg)
    folder = tmp_path / "f"
    write_folder([VideoFeatures("v", feats, meta, "")], folder)
    rows = [{"video": "v", "question": "what color now", "time": 50.0, "frame_index": 500, "num_frame": 1000}]
    lookup = FeatureLookup(str(folder), None, "tokens")
    answer_file(answerer, rows, lookup, tmp_path / "ours.jsonl")
    answerer.breakpoints = BreakpointConvention("moviechat", "moviechat")
    answer_file(answerer, rows, lookup, tmp_path / "mc.jsonl")
    ours = json.loads((tmp_path / "ours.jsonl").read_text())
    mc = json.loads((tmp_path / "mc.jsonl").read_text())
    assert ours["frame"] == 39 and ours["past_end"] and ours["breakpoint_convention"] == "ours"
    assert mc["frame"] == 20 and "past_end" not in mc
    assert (mc["breakpoint_convention"], mc["current_frame"]) == ("moviechat", "moviechat")
    with pytest.raises(DataError, match="needs each breakpoint's frame index"):
        answerer.question_time({"video": "v", "time": 3.0}, [0.0], {})


def test_split_heldout_answers_and_scores_only_the_runs_held_out_videos(tmp_path, tiny_cfg, tokenizer, capsys):
    from moviechat.answering.questions import run_split

    root = tmp_path / "ann"
    root.mkdir()
    keys = [f"v{i}" for i in range(12)]
    for key in keys:
        (root / f"{key}.json").write_text(json.dumps(gt_json(key, times=(100,))))
    tiny_cfg.data.val_fraction, tiny_cfg.run.seed = 0.3, 5
    tiny_cfg.data.name, tiny_cfg.data.annotations = "moviechat1k", str(root)  # the run trained on these
    held = {k for k in keys if run_split(k, 0.3, 5) == "heldout"}
    assert 0 < len(held) < len(keys)
    rows = questions_from_annotations(root, split="heldout", run_cfg=tiny_cfg)
    assert {r["video"] for r in rows} == held and all(r["split"] == "heldout" for r in rows)
    preds = tmp_path / "p.jsonl"
    rows = questions_from_annotations(root, split="all", run_cfg=tiny_cfg)
    preds.write_text("".join(json.dumps({**r, "prediction": "red"}) + "\n" for r in rows))
    assert score_cli.main(["--predictions", str(preds), "--annotations", str(root), "--out", str(tmp_path / "e"),
                            "--split", "heldout"]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["split"] == "heldout" and summary["all"]["videos"] == len(held)
    assert f"scoring split 'heldout': {2 * len(held)} of {2 * len(keys)}" in capsys.readouterr().out


def test_a_test_set_is_never_split_every_video_is_external(tmp_path, tiny_cfg, capsys):
    """Annotations the run did not train on (MovieChat-1K test): no video is on a side of the run's split."""
    root = tmp_path / "test"
    root.mkdir()
    for key in ("1", "AWA-1"):
        (root / f"{key}.json").write_text(json.dumps(gt_json(key, times=(100,))))
    rows = questions_from_annotations(root, run_cfg=tiny_cfg)  # tiny_cfg trains on its generated set
    assert {r["split"] for r in rows} == {"external"} and {r["video"] for r in rows} == {"1", "AWA-1"}
    with pytest.raises(DataError, match="not the annotations the run trained on .* use --split all"):
        questions_from_annotations(root, split="heldout", run_cfg=tiny_cfg)
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({**r, "prediction": "red"}) + "\n" for r in rows))
    args = ["--predictions", str(preds), "--annotations", str(root), "--out", str(tmp_path / "e")]
    assert score_cli.main(args + ["--split", "heldout"]) == 2
    assert "outside the run's training data ('external'" in capsys.readouterr().err
    assert score_cli.main(args) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["split"].startswith("external") and summary["all"]["videos"] == 2
