"""Generated sets: the needle set (moviechat/data/needles.py) holds its needles where asked, with balanced
answers and apart from training; a set on disk is the one its config asks for; the command that writes it is named."""

from collections import Counter

import numpy as np
import pytest

from moviechat.config import load_config
from moviechat.config.data import NeedleConfig
from moviechat.config.errors import ConfigError
from moviechat.data.needles import (COUNT_QUESTION, NEEDLE_QUESTION, depth_of, map_needle_video, scenery_patterns,
                                    start_at_depth, training_needle_video)
from moviechat.data.scenes import COLORS, prototypes
from moviechat.data.synthetic import synthetic_dir, write_synthetic_set

Q, D, SEED = 8, 32, 0
PROTOS = prototypes(6, Q, D, SEED)
SCENERY = scenery_patterns(Q, D, SEED)


def nearest(frames: np.ndarray) -> list[str]:
    """Per frame, the colour or scenery pattern it was drawn from (nearest pattern)."""
    names = list(COLORS[:6]) + [f"scenery{i}" for i in range(len(SCENERY))]
    patterns = np.concatenate([PROTOS, SCENERY]).reshape(len(names), -1)
    distances = ((frames.astype(np.float32).reshape(len(frames), 1, -1) - patterns[None]) ** 2).sum(-1)
    return [names[i] for i in distances.argmin(1)]


@pytest.mark.parametrize("length,depth", [(64, 0.0), (64, 1.0), (256, 0.5), (300, 0.25), (1000, 0.75)])
def test_a_map_video_holds_its_needle_at_the_depth_asked(length, depth):
    video = map_needle_video(length, depth, 2, SEED, PROTOS, SCENERY, 3, 6, 16, 0.5)
    frames = video.features.feats
    assert frames.shape == (length, Q, D)
    start = start_at_depth(depth, length, 3)
    seen = nearest(frames)
    assert seen[start:start + 3] == [video.needles[0].color] * 3  # the needle, read back from the frames
    assert all(s.startswith("scenery") for i, s in enumerate(seen) if not start <= i < start + 3)
    assert depth_of(video.needles[0], length) == pytest.approx(depth, abs=0.5 / (length - 3) + 1e-9)
    if depth == 0.0:
        assert start == 0
    if depth == 1.0:
        assert start + 3 == length
    asked = {(qa.mode, qa.question, qa.answer, qa.seconds) for qa in video.qas}
    assert asked == {("global", NEEDLE_QUESTION, video.needles[0].color, None),
                     ("breakpoint", NEEDLE_QUESTION, video.needles[0].color, float(length - 1))}


def test_map_answers_are_balanced_over_the_colours_in_every_cell():
    for length, depth in [(64, 0.0), (256, 0.5)]:
        colors = Counter(map_needle_video(length, depth, i, SEED, PROTOS, SCENERY, 3, 6, 16, 0.5).needles[0].color
                         for i in range(12))
        assert sorted(colors.values()) == [2] * 6


def test_training_videos_hold_their_needles_apart_with_balanced_answers():
    cfg = NeedleConfig(videos=300, min_frames=64, max_frames=128, needle_frames=3, max_needles=3)
    videos = [training_needle_video(i, SEED, PROTOS, SCENERY, cfg, 6, 16, 0.5) for i in range(300)]
    counts, colors, firsts = Counter(), Counter(), Counter()
    for v in videos:
        seen = nearest(v.features.feats)
        for n in v.needles:
            assert seen[n.start:n.end] == [n.color] * 3
        starts = [n.start for n in v.needles]
        assert starts == sorted(starts) and all(b.start >= a.end for a, b in zip(v.needles, v.needles[1:]))
        assert len({n.color for n in v.needles}) == len(v.needles)  # each needle its own colour
        by_type = {qa.qtype: qa for qa in v.qas}
        assert by_type["needle_count"].question == COUNT_QUESTION
        counts[by_type["needle_count"].answer] += 1
        if len(v.needles) == 1:
            assert by_type["needle"].answer == v.needles[0].color
            colors[v.needles[0].color] += 1
            bp = [qa for qa in v.qas if qa.mode == "breakpoint"][0]
            assert bp.seconds >= v.needles[0].end - 1  # asked once the needle has been seen
        else:
            order = by_type["needle_order"]
            assert order.answer == next(n.color for n in v.needles if n.color in order.question)
            firsts[order.question.split()[4] == order.answer] += 1
    assert set(counts) == {"1", "2", "3"} and min(counts.values()) > 70  # 1, 2 and 3 needles about equally often
    assert len(colors) == 6 and min(colors.values()) > 5
    assert min(firsts.values()) > 60  # the answer is the first-named colour about half the time


def test_training_and_map_videos_never_share_a_haystack():
    cfg = NeedleConfig(videos=50, min_frames=64, max_frames=64)
    train = [training_needle_video(i, SEED, PROTOS, SCENERY, cfg, 6, 16, 0.5) for i in range(50)]
    test = [map_needle_video(64, d, i, SEED, PROTOS, SCENERY, 3, 6, 16, 0.5) for d in (0.0, 0.5, 1.0) for i in range(17)]
    train_layouts = {tuple(v.scenery) for v in train}
    assert not train_layouts & {tuple(v.scenery) for v in test}
    assert len(train_layouts) == 50  # and no two training videos share one either
    train_frames = {v.features.feats.tobytes() for v in train}
    assert not train_frames & {v.features.feats.tobytes() for v in test}


def test_needles_join_the_generated_set_only_when_asked(tmp_path):
    base = load_config("tiny_synthetic", ["data.synthetic.num_videos=4"])
    with_needles = load_config("tiny_synthetic", ["data.synthetic.num_videos=4", "data.synthetic.needles.videos=3"])
    plain = synthetic_dir(base.data.synthetic, Q, D, str(tmp_path))
    assert synthetic_dir(with_needles.data.synthetic, Q, D, str(tmp_path)) != plain
    out = write_synthetic_set(with_needles.data.synthetic, Q, D, tmp_path / "n")
    assert sorted(p.stem for p in (out / "annotations").iterdir()) == ["ndl00000", "ndl00001", "ndl00002",
                                                                        "syn00000", "syn00001", "syn00002", "syn00003"]
    assert load_config("tiny_needles").data.synthetic.needles.videos == 480


@pytest.mark.parametrize("override,key", [
    ("data.synthetic.needles.max_needles=7", "data.synthetic.needles.max_needles=7"),
    ("data.synthetic.needles.min_frames=10", "data.synthetic.needles.min_frames=10"),
    ("data.synthetic.needles.needle_frames=0", "data.synthetic.needles.needle_frames=0"),
    ("data.synthetic.needles.videos=-1", "data.synthetic.needles.videos=-1"),
])
def test_impossible_needle_settings_fail_at_load_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("tiny_synthetic", [override])


def test_a_generated_set_on_disk_must_be_the_one_the_config_asks_for(tmp_path):
    from moviechat.common.errors import DataError

    asked = load_config("tiny_synthetic", ["data.synthetic.num_videos=4"]).data.synthetic
    out = write_synthetic_set(asked, Q, D, tmp_path / "set")
    assert write_synthetic_set(asked, Q, D, out) == out  # the same settings: read as it is
    other = load_config("tiny_synthetic", ["data.synthetic.num_videos=5", "data.synthetic.needles.videos=2"]).data.synthetic
    with pytest.raises(DataError, match=r"other settings \(needles, num_videos differ"):
        write_synthetic_set(other, Q, D, out)
    with pytest.raises(DataError, match=r"other settings \(dim differ"):
        write_synthetic_set(asked, Q, 64, out)  # another model's frame tokens


def test_the_command_preview_names_writes_the_set_it_asks_for(tmp_path, capsys):
    import shlex

    from moviechat.__main__ import main

    asked = ["--cfg", "tiny_synthetic", "--index", "0", "data.synthetic.num_videos=9", f"run.output_dir={tmp_path}"]
    assert main(["preview", *asked]) == 2
    named = capsys.readouterr().err.split("`")[1]  # the command the message names, run as it is written
    assert "data.synthetic.num_videos=9" in named
    assert main(shlex.split(named)[1:]) == 0
    assert main(["preview", *asked]) == 0  # now there: the 9-video set its folder is named for
    assert len(list(next(tmp_path.glob("data/synthetic-*")).glob("annotations/*.json"))) == 9
