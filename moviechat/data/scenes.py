"""What generated videos are made of: colour prototypes and runs of scenes (moviechat/data/synthetic.py,
moviechat/data/needles.py)."""

from __future__ import annotations

import numpy as np

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")


def prototypes(num_colors: int, tokens: int, dim: int, seed: int) -> np.ndarray:
    """One fixed [tokens, dim] pattern per colour, shared by all videos of a seed."""
    return np.random.default_rng(seed).standard_normal((num_colors, tokens, dim)).astype(np.float32)


def scene_spans(rng: np.random.Generator, num_frames: int, num_patterns: int, min_scene: int,
                max_scene: int) -> list[tuple[int, int, int]]:
    """Scenes covering ``num_frames`` frames: (pattern, first frame, end frame), no pattern twice in a row."""
    scenes, start, last = [], 0, -1
    while start < num_frames:
        pattern = int(rng.choice([c for c in range(num_patterns) if c != last]))
        end = min(num_frames, start + int(rng.integers(min_scene, max_scene + 1)))
        scenes.append((pattern, start, end))
        start, last = end, pattern
    return scenes
