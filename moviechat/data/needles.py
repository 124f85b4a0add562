"""Needles in a long video, over frame tokens: where in a video does a memory setting start to forget?

A needle video is a haystack of scenery (scenes of a few patterns that no question names) with one or more short
needle scenes, each of one colour of the generated set (moviechat/data/synthetic.py), at chosen depths:
depth 0 puts a needle's first frame on the video's first frame, depth 1 its last frame on the last one. The
questions, as LongVA's V-NIAH and VNBench ask them:

* ``needle``       "what color is the needle"                  (one needle; global, or a breakpoint after it)
* ``needle_count`` "how many needles are there"                (1 to ``max_needles``)
* ``needle_order`` "which needle came first X or Y"            (two needles or more)

Training videos (``data.synthetic.needles``, keys ``ndl*``) and the recall map's videos (``moviechat recall-map``,
keys ``map-*``) are drawn from separate seed streams, so no test haystack is a training haystack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moviechat.config.data import NeedleConfig
from moviechat.data.annotations import QA
from moviechat.data.stores import VideoFeatures, default_meta
from moviechat.data.scenes import COLORS, scene_spans

SCENERY_PATTERNS = 4  # haystack patterns; none of them is a colour a question can name
_SCENERY_STREAM, _TRAIN_STREAM, _MAP_STREAM = 0x5CE7E, 0x7A1D, 0x4D4150  # tags that keep the seed streams apart

MAP_MODES = ("global", "breakpoint")
MIN_MAP_LENGTH = 6  # frames of the shortest map video: room for a needle and some haystack around it
NEEDLE_QUESTION = "what color is the needle"
COUNT_QUESTION = "how many needles are there"


@dataclass
class Needle:
    color: str
    start: int  # first frame
    end: int  # one past the last frame


@dataclass
class NeedleVideo:
    features: VideoFeatures
    needles: list[Needle]
    scenery: list[tuple[int, int, int]]  # the haystack: (pattern, first frame, end frame) per scene
    qas: list[QA]


def scenery_patterns(tokens: int, dim: int, seed: int) -> np.ndarray:
    """The haystack's [SCENERY_PATTERNS, tokens, dim] patterns, fixed by the set's seed (not the colours')."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SCENERY_STREAM]))
    return rng.standard_normal((SCENERY_PATTERNS, tokens, dim)).astype(np.float32)


def start_at_depth(depth: float, num_frames: int, needle_frames: int) -> int:
    """The first frame of a needle at ``depth`` in [0, 1] of a video of ``num_frames`` frames."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"needle depth {depth} must be in [0, 1]")
    return int(round(depth * (num_frames - needle_frames)))


def depth_of(needle: Needle, num_frames: int) -> float:
    """Where a needle sits, as the depth :func:`start_at_depth` would have put it at (0 for a one-needle video)."""
    room = num_frames - (needle.end - needle.start)
    return needle.start / room if room > 0 else 0.0


def render(key: str, rng: np.random.Generator, protos: np.ndarray, scenery: np.ndarray, num_frames: int,
           needles: list[tuple[int, int]], needle_frames: int, min_scene: int, max_scene: int,
           noise: float) -> tuple[VideoFeatures, list[Needle], list[tuple[int, int, int]]]:
    """Frames of a haystack of ``num_frames`` with needles ``(colour index, first frame)`` painted over it."""
    spans = scene_spans(rng, num_frames, len(scenery), min_scene, max_scene)
    frames = np.empty((num_frames, *protos.shape[1:]), dtype=np.float32)
    for pattern, start, end in spans:
        frames[start:end] = scenery[pattern]
    placed = []
    for color, start in sorted(needles, key=lambda n: n[1]):
        frames[start:start + needle_frames] = protos[color]
        placed.append(Needle(COLORS[color], start, start + needle_frames))
    frames += noise * rng.standard_normal(frames.shape).astype(np.float32)
    return VideoFeatures(key, frames.astype(np.float16), default_meta(num_frames, "tokens"), "synthetic"), placed, spans


def needle_questions(rng: np.random.Generator, needles: list[Needle], num_frames: int) -> list[QA]:
    """The questions of a training video: its count, the colour of a lone needle (global and at a breakpoint
    after it), the order of two of several."""
    qas = [QA(COUNT_QUESTION, str(len(needles)), "global", None, "needle_count")]
    if len(needles) == 1:
        qas.append(QA(NEEDLE_QUESTION, needles[0].color, "global", None, "needle"))
        t = int(rng.integers(needles[0].end - 1, num_frames))
        qas.append(QA(NEEDLE_QUESTION, needles[0].color, "breakpoint", float(t), "needle"))
    else:
        a, b = sorted(rng.choice(len(needles), size=2, replace=False))
        x, y = (needles[a].color, needles[b].color)
        asked = (x, y) if rng.random() < 0.5 else (y, x)
        qas.append(QA(f"which needle came first {asked[0]} or {asked[1]}", x, "global", None, "needle_order"))
    return qas


def training_needle_video(index: int, seed: int, protos: np.ndarray, scenery: np.ndarray, cfg: NeedleConfig,
                          min_scene: int, max_scene: int, noise: float) -> NeedleVideo:
    """Training needle video ``index`` of a set: 1 to ``max_needles`` needles of distinct colours, one in
    each of as many equal parts of the video, so they never overlap and their order is clear."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TRAIN_STREAM, index]))
    num_frames = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
    count = int(rng.integers(1, cfg.max_needles + 1))
    colors = rng.choice(len(protos), size=count, replace=False)
    bounds = np.linspace(0, num_frames, count + 1).astype(int)
    starts = [int(rng.integers(lo, hi - cfg.needle_frames + 1)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    feats, needles, spans = render(f"ndl{index:05d}", rng, protos, scenery, num_frames,
                                   list(zip(colors.tolist(), starts)), cfg.needle_frames, min_scene, max_scene, noise)
    return NeedleVideo(feats, needles, spans, needle_questions(rng, needles, num_frames))


def map_needle_video(length: int, depth: float, index: int, seed: int, protos: np.ndarray, scenery: np.ndarray,
                     needle_frames: int, min_scene: int, max_scene: int, noise: float) -> NeedleVideo:
    """Video ``index`` of a recall map's cell (length, depth): one needle, its colour cycling over the colours
    so each answer is asked equally often; asked in global mode and at a breakpoint on the last frame."""
    if length < needle_frames:
        raise ValueError(f"a video of {length} frames cannot hold a needle of {needle_frames} frames")
    tag = int(round(depth * 1_000_000))
    rng = np.random.default_rng(np.random.SeedSequence([seed, _MAP_STREAM, length, tag, index]))
    color = (index + length + tag) % len(protos)  # cycles over the colours within a cell
    start = start_at_depth(depth, length, needle_frames)
    feats, needles, spans = render(f"map-{length}-{tag:07d}-{index:03d}", rng, protos, scenery, length,
                                   [(color, start)], needle_frames, min_scene, max_scene, noise)
    qas = [QA(NEEDLE_QUESTION, needles[0].color, "global", None, "needle"),
           QA(NEEDLE_QUESTION, needles[0].color, "breakpoint", float(length - 1), "needle")]
    return NeedleVideo(feats, needles, spans, qas)


def map_grid_problems(lengths: list[int], depths: list[float], modes: list[str], per_cell: int) -> list[str]:
    """What is wrong with a recall map's grid (``moviechat recall-map`` and a sweep's ``recall_map:``), each
    naming its setting; empty when it can be mapped."""
    return ([f"lengths: {n} (needs >= {MIN_MAP_LENGTH} frames)" for n in lengths if n < MIN_MAP_LENGTH]
            + [f"depths: {d} (needs 0 to 1)" for d in depths if not 0.0 <= d <= 1.0]
            + [f"modes: {m!r} (global or breakpoint)" for m in modes if m not in MAP_MODES]
            + ([f"per_cell={per_cell} (needs >= 1)"] if per_cell < 1 else [])
            + [f"{name} is empty" for name, values in (("lengths", lengths), ("depths", depths), ("modes", modes))
               if not values])
