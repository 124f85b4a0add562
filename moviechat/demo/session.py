"""What the demo page does, without the page: open a video once (cached by content), read the memory at a
moment, ask and stream the answer, draw what the memory holds. :mod:`moviechat.demo.page` wires it to Gradio.

An answer is the one ``moviechat answer`` gives for the same run, video, time and settings: the same
:class:`~moviechat.answering.answerer.Answerer` reads the same memory and generates from the same prompt.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from moviechat.answering.answerer import GENERATIONS, Answerer, MemoryRead
from moviechat.answering.lookups import VideoFileLookup, load_features
from moviechat.data.video import VIDEO_SUFFIXES
from moviechat.common.digest import content_digest
from moviechat.common.errors import DataError, UserError
from moviechat.memory import MemoryPlan, memory_plans
from moviechat.text.prompt import MAX_NEW_TOKENS

FEATURE_SUFFIXES = (".npy",)
MODES = ("global", "breakpoint")


class DemoError(UserError):
    """What the page shows instead of an answer (a bad file, a time past the end, an empty question)."""


@dataclass
class OpenVideo:
    """A video's frame tokens, computed once: what every question on it reads."""

    key: str  # a digest of the file's bytes and the sampling
    name: str
    tokens: torch.Tensor
    stamps: list[float]
    meta: dict

    @property
    def duration(self) -> float:
        return float(self.meta.get("duration") or (self.stamps[-1] + 1.0 if self.stamps else 0.0))


@dataclass
class Reply:
    """One answer as it grows (``text``), then finished (``done``) with the numbers the page shows."""

    text: str
    done: bool = False
    result: Optional[dict] = None
    stats: Optional[dict] = None
    read: Optional[MemoryRead] = None  # the memory it was asked on (when done)


class DemoSession:
    """One loaded run answering questions on videos for the page; every video is encoded at most once."""

    def __init__(self, answerer: Answerer, videos: Optional[Path] = None, fps: float = 1.0, max_upload_mb: int = 200,
                 cache_videos: int = 8):
        self.answerer, self.videos, self.fps, self.max_upload_mb = answerer, videos, fps, max_upload_mb
        self.cache: OrderedDict[str, OpenVideo] = OrderedDict()
        self.cache_videos = cache_videos
        self.encoding = threading.Lock()  # one decode + encode at a time, whatever the page's queue does
        self._lookup: Optional[VideoFileLookup] = None
        self.encoded = 0  # videos decoded and encoded so far (a second question on a video adds none)

    # ---------------------------------------------------------------------------------- what is loaded

    def provenance(self) -> dict:
        a, mem = self.answerer, self.answerer.cfg.memory
        return {"run": a.source.get("run"), "step": a.source.get("step"), "config_hash": a.source.get("config_hash"),
                "memory preset": mem.preset, "memory": f"K={mem.short_memory_length}, m={mem.short_memory_merge}, "
                f"L={mem.long_memory_length} ({mem.long_memory_policy}), n={mem.n_position}",
                "video files decoded at": f"{self.fps} frames/s" if mem.num_frames is None else f"{mem.num_frames} frames"}

    def choices(self) -> list[str]:
        """The files of ``--videos`` the page offers."""
        if self.videos is None:
            return []
        return sorted(p.name for p in self.videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES + FEATURE_SUFFIXES)

    def chosen(self, name: str) -> Path:
        """A file of ``--videos`` by name (never a path outside it)."""
        if self.videos is None or name not in self.choices():
            raise DemoError(f"{name!r} is not a video of --videos")
        return self.videos / name

    # --------------------------------------------------------------------------------------- opening

    def open(self, path: str | Path, progress: Callable[[float, str], None] = lambda f, s: None) -> OpenVideo:
        """A video file (decoded and encoded by the run's EVA path) or a features file, cached by content."""
        path = Path(path)
        if not path.is_file():
            raise DemoError(f"{path.name}: no such file")
        if path.stat().st_size > self.max_upload_mb * 2 ** 20:
            raise DemoError(f"{path.name}: {path.stat().st_size / 2 ** 20:.0f} MB is more than the demo takes "
                            f"({self.max_upload_mb} MB, --max-upload-mb)")
        suffix = path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES + FEATURE_SUFFIXES:
            raise DemoError(f"{path.name}: not a video ({', '.join(VIDEO_SUFFIXES)}) nor features (.npy)")
        key = hashlib.sha256(f"{content_digest(path)}|{self.fps}".encode()).hexdigest()[:24]
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        with self.encoding:
            if key not in self.cache:
                self.cache[key] = self._encode(path, key, progress)
                self.encoded += 1
                while len(self.cache) > self.cache_videos:
                    self.cache.popitem(last=False)
        return self.cache[key]

    def _encode(self, path: Path, key: str, progress: Callable[[float, str], None]) -> OpenVideo:
        try:
            if path.suffix.lower() in FEATURE_SUFFIXES:
                progress(0.1, "reading features")
                feats, meta = load_features(path, "tokens")
            else:
                progress(0.1, "decoding and encoding frames")
                if self._lookup is None:
                    self._lookup = VideoFileLookup(self.answerer.cfg, path.parent, self.fps)
                feats, meta = self._lookup.read(path)
            progress(0.8, "frame tokens")
            tokens, stamps = self.answerer.frame_tokens(feats, meta, path.name)
        except DataError as e:  # said with the file's name, not the server's copy of it
            raise DemoError(f"{path.name}: {str(e).replace(str(path) + ': ', '').replace(str(path), path.name)}") from None
        except Exception as e:  # a decoder's own error on a file that is not a video
            raise DemoError(f"{path.name}: cannot be read as a video ({type(e).__name__}: {str(e)[:200]})") from None
        if len(stamps) == 0:
            raise DemoError(f"{path.name}: no frames")
        progress(1.0, "ready")
        return OpenVideo(key, path.name, tokens, list(stamps), meta)

    # ------------------------------------------------------------------------------ memory and answers

    def seconds_of(self, video: OpenVideo, mode: str, seconds: Optional[float]) -> Optional[float]:
        """The breakpoint time a question is asked at (None: global), checked against the video's length."""
        if mode not in MODES:
            raise DemoError(f"mode {mode!r} must be global or breakpoint")
        if mode == "global":
            return None
        if seconds is None or not np.isfinite(seconds) or seconds < 0:
            raise DemoError(f"breakpoint time {seconds!r} must be a number of seconds >= 0")
        if seconds > video.duration:
            raise DemoError(f"breakpoint {seconds:.1f}s is past the end of {video.name} ({video.duration:.1f}s)")
        return float(seconds)

    def read(self, video: OpenVideo, mode: str, seconds: Optional[float]) -> MemoryRead:
        at = self.seconds_of(video, mode, seconds)
        return self.answerer.memory_reads(video.tokens, video.stamps, video.meta, [("", at)], video.name)[0]

    def plan(self, video: OpenVideo, read: MemoryRead) -> MemoryPlan:
        """Which source frames each slot of ``read`` holds (the planner gives the memory streaming does)."""
        mode = "global" if read.frame is None else "breakpoint"
        return memory_plans([video.tokens.float()], self.answerer.cfg.memory, [mode], [read.frame])[0]

    def ask(self, video: OpenVideo, question: str, mode: str, seconds: Optional[float],
            history: list[tuple[str, str]] = (), generation: str = "greedy",
            max_new_tokens: int = MAX_NEW_TOKENS) -> Iterator[Reply]:
        """The answer as it is generated, then finished; follow-up questions (``history``) on the same memory."""
        question = (question or "").strip()
        if not question:
            raise DemoError("ask a question first")
        if generation not in GENERATIONS:
            raise DemoError(f"generation {generation!r} must be one of {GENERATIONS}")
        if not 1 <= int(max_new_tokens) <= 1024:
            raise DemoError(f"max new tokens {max_new_tokens} must be in [1, 1024]")
        answerer = self._answerer(generation, int(max_new_tokens))
        start = time.perf_counter()
        read = self.read(video, mode, seconds)
        prompt = answerer.format.prompt_ids(question, list(history))
        yield from self._stream(answerer, read, prompt, start, video)

    def _answerer(self, generation: str, max_new_tokens: int) -> Answerer:
        a = self.answerer
        out = Answerer(a.cfg, a.tokenizer, a.model, max_new_tokens, 1, generation, a.seed, a.breakpoints)
        out.source = a.source
        return out

    def _stream(self, answerer: Answerer, read: MemoryRead, prompt: list[int], start: float,
                video: OpenVideo) -> Iterator[Reply]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(answerer.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        box: dict = {}

        def generate() -> None:
            try:
                if answerer.generation != "greedy":
                    torch.manual_seed(answerer.seed)
                box["result"] = answerer.generate_one(read, prompt, streamer)
            except BaseException as e:  # handed to the page's thread below
                box["error"] = e
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        text = ""
        for piece in streamer:
            text += piece
            yield Reply(answerer.format.extract_answer(text))
        worker.join()
        if "error" in box:
            raise box["error"]
        result = box["result"]
        stats = {"frames seen": len(video.stamps) if read.frame is None else read.frame + 1,
                 "memory slots": int(read.memory.shape[0]),
                 "LLM tokens": len(prompt) - 1 + answerer.cfg.model.video_qformer.num_query_tokens,
                 "seconds to answer": round(time.perf_counter() - start, 2)}
        yield Reply(result["prediction"], True, result, stats, read)
