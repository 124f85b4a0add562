"""Synthetic long-video QA over frame tokens (docs/architecture.md, "Data"), seeded and reproducible.

A video is a sequence of scenes; each scene shows one colour: its frames are the colour's prototype
tokens [Q, D] plus noise. Questions need different parts of the memory:

* ``first``    "what color is the first scene"        -> early frames must survive in long-term memory
* ``last``     "what color is the last scene"         -> recent frames
* ``count``    "how many scenes are there"            -> how many distinct scenes the memory keeps
* ``order``    "which came first X or Y"              -> the order of scenes
* ``now``      breakpoint: "what color is on screen now"      -> the question's own frame
* ``previous`` breakpoint: "what color was the previous scene" -> the short-term / recent long-term part

With a FIFO long-term memory shorter than the video, ``first`` and ``order`` fall to chance; that is
what makes memory sweeps on this set informative.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from moviechat.common.atomic import atomic_path
from moviechat.config.data import SyntheticConfig
from moviechat.data.annotations import QA, annotation_json
from moviechat.data.needles import scenery_patterns, training_needle_video
from moviechat.data.scenes import COLORS, prototypes, scene_spans
from moviechat.common.errors import DataError
from moviechat.data.stores import VideoFeatures, default_meta, write_shards

VIDEOS_PER_SHARD = 16  # part of the set's identity: it fixes the order in which shards are read


@dataclass
class SyntheticVideo:
    features: VideoFeatures
    qas: list[QA]
    scenes: list[tuple[str, int, int]]  # (colour, first frame, end frame)


def make_scenes(rng: np.random.Generator, num_frames: int, num_colors: int, min_scene: int, max_scene: int):
    return [(COLORS[c], start, end) for c, start, end in scene_spans(rng, num_frames, num_colors, min_scene, max_scene)]


def make_questions(rng: np.random.Generator, scenes: list[tuple[str, int, int]], breakpoints: int) -> list[QA]:
    colors = [c for c, _, _ in scenes]
    qas = [
        QA("what color is the first scene", colors[0], "global", None, "first"),
        QA("what color is the last scene", colors[-1], "global", None, "last"),
        QA("how many scenes are there", str(len(scenes)), "global", None, "count"),
    ]
    firsts = {}
    for c in colors:
        firsts.setdefault(c, len(firsts))
    if len(firsts) >= 2:
        a, b = rng.choice(list(firsts), size=2, replace=False)
        x, y = (a, b) if rng.random() < 0.5 else (b, a)
        qas.append(QA(f"which came first {x} or {y}", a if firsts[a] < firsts[b] else b, "global", None, "order"))
    for _ in range(breakpoints):
        s = int(rng.integers(0, len(scenes)))
        color, start, end = scenes[s]
        t = int(rng.integers(start, end))
        qas.append(QA("what color is on screen now", color, "breakpoint", float(t), "now"))
        if s > 0:
            qas.append(QA("what color was the previous scene", colors[s - 1], "breakpoint", float(t), "previous"))
    return qas


def generate_video(key: str, seed: int, protos: np.ndarray, min_frames: int, max_frames: int, min_scene: int,
                   max_scene: int, noise: float, breakpoints: int = 2) -> SyntheticVideo:
    """One video of frame tokens (fp16, 1 frame per second) with its questions."""
    rng = np.random.default_rng(seed)
    num_frames = int(rng.integers(min_frames, max_frames + 1))
    scenes = make_scenes(rng, num_frames, len(protos), min_scene, max_scene)
    index = {c: i for i, c in enumerate(COLORS)}
    frames = np.empty((num_frames, *protos.shape[1:]), dtype=np.float32)
    for color, start, end in scenes:
        frames[start:end] = protos[index[color]]
    frames += noise * rng.standard_normal(frames.shape).astype(np.float32)
    feats = VideoFeatures(key, frames.astype(np.float16), default_meta(num_frames, "tokens"), "synthetic")
    return SyntheticVideo(feats, make_questions(rng, scenes, breakpoints), scenes)


def synthetic_keys(cfg: SyntheticConfig) -> list[str]:
    """The video keys of a generated set, known from its config alone."""
    return [f"syn{i:05d}" for i in range(cfg.num_videos)] + [f"ndl{i:05d}" for i in range(cfg.needles.videos)]


def needle_videos(cfg: SyntheticConfig, protos: np.ndarray) -> list:
    """The set's needle videos (``data.synthetic.needles``; none by default), after its scene videos."""
    scenery = scenery_patterns(protos.shape[1], protos.shape[2], cfg.seed)
    return [training_needle_video(i, cfg.seed, protos, scenery, cfg.needles, cfg.min_scene, cfg.max_scene, cfg.noise)
            for i in range(cfg.needles.videos)]


def synthetic_dir(cfg: SyntheticConfig, tokens: int, dim: int, output_dir: str) -> Path:
    """Where a synthetic set lives: ``cfg.dir``, or a folder named by a hash of everything it depends on."""
    if cfg.dir:
        return Path(cfg.dir)
    digest = hashlib.sha256(json.dumps(set_settings(cfg, tokens, dim), sort_keys=True).encode()).hexdigest()[:10]
    return Path(output_dir) / "data" / f"synthetic-{digest}"


def set_settings(cfg: SyntheticConfig, tokens: int, dim: int) -> dict:
    """Everything a generated set's content depends on (its folder's name is a hash of it)."""
    # needles join only when there are any, so a set without them keeps the name it always had
    skip = {"dir"} | ({"needles"} if cfg.needles.videos == 0 else set())
    return {k: v for k, v in asdict(cfg).items() if k not in skip} | {"tokens": tokens, "dim": dim,
                                                                      "videos_per_shard": VIDEOS_PER_SHARD}


def check_set(cfg: SyntheticConfig, tokens: int, dim: int, out: Path) -> None:
    """A set found on disk must be the one the config asks for (``data.synthetic.dir`` can name any folder)."""
    recorded = out / "settings.json"
    if not recorded.is_file():  # written before sets recorded their settings: nothing to compare
        return
    before, wanted = json.loads(recorded.read_text()), json.loads(json.dumps(set_settings(cfg, tokens, dim)))
    if before != wanted:
        keys = sorted(k for k in set(before) | set(wanted) if before.get(k) != wanted.get(k))
        raise DataError(f"{out}: a generated set written with other settings ({', '.join(keys)} differ from "
                        f"data.synthetic and the model's frame tokens): point data.synthetic.dir elsewhere or delete it")


def write_synthetic_set(cfg: SyntheticConfig, tokens: int, dim: int, out: Path,
                        videos_per_shard: int = VIDEOS_PER_SHARD) -> Path:
    """Write shards (``shards/``) and MovieChat-1K style annotations (``annotations/``) into ``out``.

    Written to a temporary folder and renamed into place, so a reader never sees half a set; when the
    folder already exists (an earlier run, or another rank won the race) it is left as it is.
    """
    if (out / "DONE").is_file():
        check_set(cfg, tokens, dim, out)
        return out
    try:
        with atomic_path(out) as tmp:
            protos = prototypes(cfg.num_colors, tokens, dim, cfg.seed)
            videos = [generate_video(f"syn{i:05d}", cfg.seed * 100_003 + i, protos, cfg.min_frames, cfg.max_frames,
                                     cfg.min_scene, cfg.max_scene, cfg.noise, cfg.breakpoints) for i in range(cfg.num_videos)]
            videos += needle_videos(cfg, protos)
            write_shards((v.features for v in videos), str(tmp / "shards" / "syn-%05d.tar"), videos_per_shard)
            (tmp / "annotations").mkdir()
            for v in videos:
                ann = annotation_json(v.features.key, v.qas, fps=1.0, num_frame=v.features.feats.shape[0])
                (tmp / "annotations" / f"{v.features.key}.json").write_text(json.dumps(ann))
            (tmp / "settings.json").write_text(json.dumps(set_settings(cfg, tokens, dim), sort_keys=True) + "\n")
            (tmp / "DONE").write_text("ok\n")
    except OSError:
        if not (out / "DONE").is_file():  # another rank renamed its copy first: use that one
            raise
    return out
