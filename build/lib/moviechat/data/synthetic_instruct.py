"""A generated instruction set in Video-LLaMA's formats, over frame tokens: long videos with multi-turn
VideoChat records (and WebVid captions), images with LLaVA conversations, image-caption pairs.

Videos and images are built as in ``moviechat.data.synthetic``: colour scenes of prototype tokens plus noise,
so every question is answerable from the frames. Written once (a ``DONE`` file), atomically::

    OUT/features/videos/<genre>/v00000.npy (+ .json)   videochat_instruct.json, webvid/captions.csv
    OUT/features/images/<genre>/i00000.npy (1 frame)   llava_instruct.json
    OUT/features/cc_sbu_align/c00000.npy (1 frame)     cc_sbu_align/filter_cap.json
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from moviechat.common.atomic import atomic_path
from moviechat.data.stores import VideoFeatures, default_meta, write_folder
from moviechat.data.synthetic import COLORS, generate_video, prototypes

GENRES = ("films", "sports", "cartoons")


def _video_qa(rng: np.random.Generator, qas) -> list[dict]:
    """Two or three of a video's global questions, in a random order: a multi-turn record."""
    pairs = [{"q": qa.question, "a": qa.answer} for qa in qas if qa.mode == "global"]
    order = rng.permutation(len(pairs))[: int(rng.integers(2, 4))]
    return [pairs[i] for i in order]


def _image(rng: np.random.Generator, protos: np.ndarray, noise: float) -> tuple[int, np.ndarray]:
    color = int(rng.integers(len(protos)))
    frame = protos[color] + noise * rng.standard_normal(protos.shape[1:]).astype(np.float32)
    return color, frame[None].astype(np.float16)


def _llava(rng: np.random.Generator, image: str, color: str, colors: list[str], index: int) -> dict:
    turns = [{"from": "human", "value": "<image>\nwhat color is this picture"}, {"from": "gpt", "value": color}]
    if rng.random() < 0.5:
        asked = color if rng.random() < 0.5 else str(rng.choice([c for c in colors if c != color]))
        turns += [{"from": "human", "value": f"is it {asked}"}, {"from": "gpt", "value": "yes" if asked == color else "no"}]
    return {"id": f"{index:06d}", "image": image, "conversations": turns}


def write_instruct_set(out: Path, tokens: int, dim: int, num_videos: int = 120, num_images: int = 120,
                       min_frames: int = 24, max_frames: int = 48, num_colors: int = 6, noise: float = 0.5,
                       seed: int = 0) -> Path:
    """Write the set into ``out`` (left as it is when it is already there)."""
    if (out / "DONE").is_file():
        return out
    with atomic_path(out) as tmp:
        rng = np.random.default_rng(seed)
        protos = prototypes(num_colors, tokens, dim, seed)
        colors = list(COLORS[:num_colors])
        videos, chats, captions = [], [], []
        for i in range(num_videos):
            genre = GENRES[i % len(GENRES)]
            v = generate_video(f"{genre}/v{i:05d}", seed * 100_003 + i, protos, min_frames, max_frames, 4, 12, noise, 0)
            videos.append(v.features)
            chats.append({"video": f"{genre}/v{i:05d}.mp4", "QA": _video_qa(rng, v.qas)})
            scenes = [c for c, _, _ in v.scenes]
            captions.append({"videoid": f"v{i:05d}", "page_dir": genre,
                             "name": f"A video in {len(scenes)} scenes, from {scenes[0]} to {scenes[-1]}."})
        images, llava, pairs = [], [], []
        for i in range(num_images):
            color, frame = _image(rng, protos, noise)
            key = f"{GENRES[i % len(GENRES)]}/i{i:05d}"
            images.append(VideoFeatures(key, frame, default_meta(1, "tokens"), "synthetic"))
            llava.append(_llava(rng, f"{key}.jpg", colors[color], colors, i))
            color, frame = _image(rng, protos, noise)
            pairs.append((VideoFeatures(f"c{i:05d}", frame, default_meta(1, "tokens"), "synthetic"),
                          {"image_id": f"c{i:05d}", "caption": f"a {colors[color]} picture"}))
        write_folder(videos, tmp / "features" / "videos")
        write_folder(images, tmp / "features" / "images")
        write_folder([f for f, _ in pairs], tmp / "features" / "cc_sbu_align")
        (tmp / "videochat_instruct.json").write_text(json.dumps(chats, indent=1))
        (tmp / "llava_instruct.json").write_text(json.dumps(llava, indent=1))
        (tmp / "cc_sbu_align").mkdir()
        (tmp / "cc_sbu_align" / "filter_cap.json").write_text(json.dumps({"annotations": [a for _, a in pairs]}, indent=1))
        (tmp / "webvid").mkdir()
        with open(tmp / "webvid" / "captions.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["videoid", "page_dir", "name"])
            writer.writeheader()
            writer.writerows(captions)
        (tmp / "DONE").write_text("ok\n")
    return out
