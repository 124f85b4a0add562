"""MovieChat-1K inside lmms-eval: the model moviechat_ft found through its entry point, answering lmms-eval's
requests (its own moviechat tasks' and ours) exactly as ``moviechat answer`` does, and both tasks end to end
through ``python -m lmms_eval`` offline, judged by a stub on 127.0.0.1 (its results files read, not its exit
code, which is 0 even when a task fails)."""

import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import ChatJudgeStub, run_train, write_video
from moviechat.data.annotations import QA, annotation_json
from moviechat.lmms_eval_plugin.settings import ModelArgsError, PluginSettings

lmms_eval = pytest.importorskip("lmms_eval", reason="the lmms-eval extra: pip install -e '.[lmms-eval]' (make test does)")

ARGS = "sampling=moviechat,max_new_tokens=3,batch_size=4"
VIDEOS = {"clip_a": (40, 8), "clip_b": (24, 8)}  # key -> (frames, fps)


def qas(key: str) -> list[QA]:
    frames, fps = VIDEOS[key]
    return [QA("what color is the first scene", "red", "global"),
            QA("how many dogs", "two", "global"),
            QA("what color now", "blue", "breakpoint", 12 / fps, frame=12, num_frame=frames),
            QA("what color is it now", "green", "breakpoint", 30 / fps, frame=30, num_frame=frames,
               past_end=30 >= frames)]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A tiny trained run and a MovieChat-1K-shaped test set of two generated videos (one breakpoint past the
    end of the shorter one)."""
    tmp = tmp_path_factory.mktemp("lmms")
    run_train(tmp, "run.name=r", "train.max_steps=3", "train.eval_every=0", "train.eval_generate=0")
    (tmp / "ann").mkdir()
    (tmp / "videos").mkdir()
    for key, (frames, fps) in VIDEOS.items():
        write_video(tmp / "videos" / f"{key}.mp4", frames=frames, fps=fps)
        (tmp / "ann" / f"{key}.json").write_text(json.dumps(annotation_json(key, qas(key), fps=float(fps),
                                                                            num_frame=frames)))
    return SimpleNamespace(root=tmp, run=tmp / "r", ann=tmp / "ann", videos=tmp / "videos")


@pytest.fixture(scope="module")
def ours(mini, tmp_path_factory):
    """``moviechat answer``'s predictions on the set, by (video, question, frame index or None)."""
    from moviechat.answering import cli as answer_cli

    out = tmp_path_factory.mktemp("ours") / "p.jsonl"
    assert answer_cli.main([str(mini.run), "--annotations", str(mini.ann), "--videos", str(mini.videos),
                            "--sampling", "moviechat", "--max-new-tokens", "3", "--batch-size", "4",
                            "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {(r["video"], r["question"], r.get("frame_index")): r["prediction"] for r in rows}


@pytest.fixture(scope="module")
def plugin(mini):
    from lmms_eval.models import get_model

    return get_model("moviechat_ft").create_from_arg_string(f"pretrained={mini.run},{ARGS}", {"batch_size": 1})


def requests_for(model, docs: list[dict], doc_to_visual) -> list:
    """lmms-eval's generate_until requests for ``docs`` (args as its Task builds them), the docs as the task."""
    model.task_dict = {"t": {"test": docs}}
    return [SimpleNamespace(args=(d["question"], {}, doc_to_visual, i, "t", "test")) for i, d in enumerate(docs)]


def load_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hub_docs() -> list[dict]:
    """Docs as lmms-eval's moviechat tasks read them from the Hub: video_name, question, answer, time."""
    return [{"video_name": f"{key}.mp4", "question": qa.question, "answer": qa.answer,
             "time": qa.frame if qa.mode == "breakpoint" else None}
            for key in VIDEOS for qa in qas(key)]


@pytest.mark.slow
def test_the_entry_point_gives_lmms_eval_our_model_under_both_names():
    from lmms_eval.models import get_model

    from moviechat.lmms_eval_plugin.model import MovieChatFT

    assert get_model("moviechat_ft") is MovieChatFT and get_model("moviechat_trained") is MovieChatFT


@pytest.mark.slow
def test_requests_of_lmms_evals_own_moviechat_tasks_are_answered_as_moviechat_answer_does(
        mini, ours, plugin, tmp_path, monkeypatch):
    videos = tmp_path / "hf" / "moviechat_1k_test" / "Test_Videos"
    videos.mkdir(parents=True)
    for key in VIDEOS:
        os.symlink(mini.videos / f"{key}.mp4", videos / f"{key}.mp4")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # it reads HF_HOME when imported: a fresh import, not the module (or package attribute) an earlier test made
    package, name = importlib.import_module("lmms_eval.tasks.moviechat"), "lmms_eval.tasks.moviechat.utils"
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(package, "utils", raising=False)
    theirs = importlib.import_module(name)

    docs = hub_docs()
    glob = [d for d in docs if d["time"] is None]
    brk = [d for d in docs if d["time"] is not None]
    answers = plugin.generate_until(requests_for(plugin, glob, theirs.moviechat_doc_to_visual))
    answers += plugin.generate_until(requests_for(plugin, brk, theirs.moviechat_doc_to_visual_breakpoint))
    # their breakpoint visual has no fps: the plugin reads it from the video file (8 fps, as info.fps says)
    expected = [ours[(d["video_name"][:-4], d["question"], d["time"])] for d in glob + brk]
    assert answers == expected and all(isinstance(a, str) for a in answers)
    assert plugin.counts["past_end"] >= 1  # clip_b's breakpoint at frame 30 of 24: answered at its last frame


@pytest.mark.slow
def test_our_task_files_request_the_same_answers_in_request_order(mini, ours, plugin, tmp_path):
    from moviechat.lmms_eval_plugin import task_files

    assert task_files.main(["--annotations", str(mini.ann), "--videos", str(mini.videos),
                            "--out", str(tmp_path / "tasks")]) == 0
    utils = load_file(tmp_path / "tasks" / "moviechat_ft_utils.py", "moviechat_ft_utils")
    docs = [json.loads(x) for x in (tmp_path / "tasks" / task_files.DOCS).read_text().splitlines()]
    assert {d["mode"] for d in docs} == {"global", "breakpoint"} and len(docs) == 8
    mixed = docs[::-1]  # requests of several videos, interleaved: answers come back in request order
    visual = lambda d: (utils.doc_to_visual if d["mode"] == "global" else utils.doc_to_visual_breakpoint)(d)  # noqa: E731
    answers = plugin.generate_until(requests_for(plugin, mixed, visual))
    assert answers == [ours[(Path(d["video_name"]).stem, d["question"], d["time"])] for d in mixed]


@pytest.mark.slow
def test_a_missing_video_is_a_counted_logged_failure_not_a_silent_answer(mini, plugin, tmp_path, caplog):
    docs = [{"question": "what color", "path": str(tmp_path / "gone.mp4")},
            {"question": "what color", "path": str(mini.videos / "clip_a.mp4")}]
    answers = plugin.generate_until(requests_for(plugin, docs, lambda d: [d["path"]]))
    assert answers[0] == "" and plugin.counts["failed_videos"] >= 1
    assert "gone.mp4: no such video file" in caplog.text


def test_model_args_are_checked_by_name():
    with pytest.raises(ModelArgsError, match="unknown key.*colour"):
        PluginSettings.of({"pretrained": "runs/x", "colour": "red"})
    with pytest.raises(ModelArgsError, match="sampling='every'"):
        PluginSettings.of({"pretrained": "runs/x", "sampling": "every"})
    with pytest.raises(ModelArgsError, match="needs config="):
        PluginSettings.of({"pretrained": "moviechat.pth"})
    with pytest.raises(ModelArgsError, match="fps= or num_frames="):
        PluginSettings.of({"pretrained": "r", "fps": 1.0, "num_frames": 8})
    assert PluginSettings.of({"pretrained": "r"}).decoding() == (None, 1024)  # MovieChat's 128 x 8
    assert PluginSettings.of({"pretrained": "r", "fps": 2}).decoding() == (2.0, None)


@pytest.mark.parametrize("word, trusted", [("no", False), ("off", False), ("false", False), (False, False),
                                          ("0", False), ("yes", True), ("on", True), (True, True)])
def test_trust_checkpoint_reads_every_spelling_one_way(word, trusted):
    """``trust_checkpoint=no`` arrives from lmms-eval as the text "no", which once turned unsafe loading on."""
    assert PluginSettings.of({"pretrained": "r", "trust_checkpoint": word}).trust_checkpoint is trusted


@pytest.mark.parametrize("args, message", [({"trust_checkpoint": "maybe"}, "trust_checkpoint='maybe' must be true or false"),
                                           ({"fps": float("nan")}, "fps=nan must be a finite number > 0"),
                                           ({"fps": float("inf")}, "fps=inf must be a finite number > 0")])
def test_model_args_that_read_two_ways_are_refused(args, message):
    with pytest.raises(ModelArgsError, match=message):
        PluginSettings.of({"pretrained": "r", **args})


def test_a_visual_that_is_not_a_video_is_refused_by_name():
    from moviechat.lmms_eval_plugin.requests import RequestError, ask_of

    with pytest.raises(RequestError, match="doc 3: .*not a video path"):
        ask_of("q", [42], "t doc 3")
    with pytest.raises(RequestError, match="timestep=-1"):
        ask_of("q", [{"video_path": "v.mp4", "timestep": -1}], "t doc 0")
    assert ask_of(" q ", [{"video_path": "v.mp4", "timestep": 12}], "w").timestep == 12.0
    with pytest.raises(RequestError, match="doc 1: .*without 'timestep'"):
        ask_of("q", [{"video_path": "v.mp4"}], "t doc 1")
    for key, value in (("num_frame", "x"), ("num_frame", 0), ("fps", float("nan")), ("fps", -2)):
        with pytest.raises(RequestError, match=f"{key}="):
            ask_of("q", [{"video_path": "v.mp4", "timestep": 3, key: value}], "t doc 2")


@pytest.mark.slow
def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path):
    from lmms_eval.models import get_model

    with pytest.raises(Exception, match=str(tmp_path)):
        get_model("moviechat_ft").create_from_arg_string(f"pretrained={tmp_path}")


class StubJudge(ChatJudgeStub):
    """'yes' (score 4) for the global questions' pairs, 'no' (score 1) for the others."""

    def verdict(self, text: str) -> str:
        return "{'pred': 'yes', 'score': 4}" if "first scene" in text or "dogs" in text else "{'pred': 'no', 'score': 1}"


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.distributed)])
def test_both_tasks_end_to_end_through_lmms_eval_offline(mini, ours, tmp_path, ranks):
    from moviechat.lmms_eval_plugin import task_files

    task_files.main(["--annotations", str(mini.ann), "--videos", str(mini.videos), "--out", str(tmp_path / "tasks")])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OPENAI_API_URL": f"http://127.0.0.1:{server.server_port}/v1/chat/completions",
           "OPENAI_API_KEY": "test", "MODEL_VERSION": "stub-judge", "NO_PROXY": "127.0.0.1", "WANDB_MODE": "disabled"}
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks)] if ranks > 1 else []
    cmd = [sys.executable, *launch, "-m", "lmms_eval", "--model", "moviechat_ft", "--model_args", f"pretrained={mini.run},{ARGS}",
           "--tasks", "moviechat_ft_global,moviechat_ft_breakpoint", "--include_path", str(tmp_path / "tasks"),
           "--output_path", str(tmp_path / "out"), "--log_samples", "--batch_size", "1"]
    try:
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
    results = sorted((tmp_path / "out").rglob("*_results.json"))
    assert results, f"no results file\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    got = json.loads(results[-1].read_text())["results"]
    assert got["moviechat_ft_global"]["gpt_eval_acc,none"] == 1.0
    assert got["moviechat_ft_global"]["gpt_eval_score,none"] == 4.0
    assert got["moviechat_ft_breakpoint"]["gpt_eval_acc,none"] == 0.0
    samples = [json.loads(line) for f in (tmp_path / "out").rglob("*_samples_moviechat_ft_*.jsonl")
               for line in f.read_text().splitlines()]
    assert len(samples) == 8
    by_question = {(video, question): answer for (video, question, _), answer in ours.items()}  # each asked once
    for s in samples:  # every answer equals moviechat answer's for the same question
        judged = s["gpt_eval_acc"]
        assert judged["pred"] == by_question[(Path(judged["video_name"]).stem, judged["question"])]


@pytest.mark.slow
def test_multi_round_requests_are_a_chat_on_the_global_memory(mini, plugin):
    from moviechat.answering.chat import converse

    follow_ups = ["and how many dogs", "and the last scene"]

    def doc_to_text(doc, previous_output=None, round_idx=0, previous_round_info=None):
        done = round_idx > len(follow_ups)
        return None, (None if done else follow_ups[round_idx - 1]), done, None, {"asked": round_idx}

    path = mini.videos / "clip_a.mp4"
    plugin.task_dict = {"t": {"test": [{"path": str(path)}]}}
    request = SimpleNamespace(args=("what color is the first scene", {}, lambda d: [d["path"]], doc_to_text, 0, "t",
                                    "test"))
    rounds = plugin.generate_until_multi_round([request])[0]
    feats, meta = plugin.lookup.read(path)
    expected = converse(plugin.answerer, feats, meta, ["what color is the first scene", *follow_ups], "clip_a")
    assert rounds == [r["prediction"] for r in expected] and len(rounds) == 3
    with pytest.raises(NotImplementedError, match="loglikelihood .* not supported"):
        plugin.loglikelihood([request])

    def rewriting(doc, previous_output=None, round_idx=0, previous_round_info=None):
        """The task rewrites the answers so far (lmms-eval's ``updated``) and ends after round 2."""
        return None, "and how many dogs", round_idx >= 2, [f"answer {i}" for i in range(len(previous_output))], None

    rewritten = SimpleNamespace(args=(request.args[0], {}, request.args[2], rewriting, 0, "t", "test"))
    assert plugin.generate_until_multi_round([rewritten])[0] == ["answer 0", "answer 1"]
    single = SimpleNamespace(args=(request.args[0], {}, request.args[2], lambda doc, **kw: "no more rounds", 0, "t", "test"))
    assert plugin.generate_until_multi_round([single])[0] == rounds[:1]  # a step that is not a round: one answer
    endless = SimpleNamespace(args=(request.args[0], {}, request.args[2],
                                    lambda doc, **kw: (None, "and again", False, None, None), 0, "t", "test"))
    from moviechat.lmms_eval_plugin.chat_rounds import MAX_ROUNDS

    assert len(plugin.generate_until_multi_round([endless])[0]) == MAX_ROUNDS  # a task that never ends stops


@pytest.mark.slow
def test_an_original_pth_with_its_config_answers_as_the_run_does(tiny_frozen_run, tmp_path):
    from lmms_eval.models import get_model

    from moviechat.runs.export import export

    run = tiny_frozen_run  # the .pth holds what MovieChat trains; the frozen LLM comes from the config
    pth = export(run, "moviechat", tmp_path / "moviechat.pth")
    write_video(tmp_path / "v.mp4", frames=24, fps=8)
    docs = [{"question": "what color", "path": str(tmp_path / "v.mp4")}]
    answers = []
    for args in (f"pretrained={run}", f"pretrained={pth},config={run / 'config.yaml'}"):
        model = get_model("moviechat_ft").create_from_arg_string(f"{args},{ARGS}")
        answers.append(model.generate_until(requests_for(model, docs, lambda d: [{"video_path": d["path"],
                                                                                  "timestep": 10}])))
    assert answers[0] == answers[1]


def test_task_files_for_the_hub_and_a_local_copy_without_some_videos(tmp_path, capsys):
    import yaml

    from moviechat.common.errors import DataError
    from moviechat.lmms_eval_plugin import task_files

    assert task_files.main(["--hub", "--out", str(tmp_path / "hub")]) == 0
    text = (tmp_path / "hub" / "moviechat_ft_breakpoint.yaml").read_text()
    config = yaml.safe_load("\n".join(line for line in text.splitlines() if "!function" not in line))
    assert config["dataset_path"] == "Enxin/lmms_MovieChat_test" and config["task"] == "moviechat_ft_breakpoint"
    (tmp_path / "ann").mkdir()
    (tmp_path / "videos").mkdir()
    for key in ("a", "b"):
        (tmp_path / "ann" / f"{key}.json").write_text(json.dumps(annotation_json(key, qas("clip_a"), 8.0, 40)))
    write_video(tmp_path / "videos" / "a.mp4", frames=8, fps=8)
    with pytest.raises(DataError, match=r"1 annotated video\(s\) have no file in .*videos \(b\)"):
        task_files.docs(tmp_path / "ann", tmp_path / "videos")
    rows, missing = task_files.docs(tmp_path / "ann", tmp_path / "videos", skip_missing=True)
    assert missing == ["b"] and {r["video_name"] for r in rows} == {"a.mp4"}
    assert [r["time"] for r in rows if r["mode"] == "breakpoint"] == [12, 30]  # frame indices, as the release
