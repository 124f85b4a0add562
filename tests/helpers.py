"""What several test modules share: paths, the tiny config's tokenizer, running the real trainer in a
subprocess, and small generated inputs (videos of frame tokens, annotations, memory inputs)."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from moviechat.data.annotations import QA, annotation_json
from moviechat.data.video import check_decoder, write_frames
from prefork import run_moviechat

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "experiments" / "tiny_synthetic.yaml"
TINY_CORPUS = ["red green blue yellow what color is the ball how many dogs first second", "0 1 2 3 4 5 6 7 8 9"]
SMOLLM2_EXPERIMENT = REPO / "configs" / "experiments" / "smollm2_synthetic.yaml"


def tiny_tokenizer(cfg):
    from moviechat.text.tokenizers import run_tokenizer

    return run_tokenizer(cfg.model.llm, cfg.model.system_prompt, TINY_CORPUS)


# ------------------------------------------------------------------------------- the real trainer

FAST = ["run.wandb=disabled", "data.synthetic.num_videos=60", "train.eval_samples=16", "train.eval_generate=8",
        "train.log_every=1", "train.warmup_steps=2", "deepspeed.micro_batch_size=4"]


def train_args(tmp_path: Path, *overrides: str, resume: str | None = None, cfg: Path = TINY) -> list[str]:
    """``moviechat train``'s arguments on the tiny config with fast settings, writing under ``tmp_path``."""
    args = ["train", "--cfg", str(cfg), f"run.output_dir={tmp_path}", *FAST, *overrides]
    return args + (["--resume", resume] if resume else [])


def train_cmd(tmp_path: Path, *overrides: str, resume: str | None = None, nproc: int = 1, cfg: Path = TINY) -> list[str]:
    """``python -m moviechat train`` (under torchrun for ``nproc`` > 1): a real interpreter, for the tests that
    signal it or run several ranks."""
    from moviechat.common.distributed import free_port

    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                     f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    return launcher + ["-m", "moviechat", *train_args(tmp_path, *overrides, resume=resume, cfg=cfg)]


TRAIN_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def attempt_train(tmp_path: Path, *overrides: str, resume: str | None = None, extra=(), cfg: Path = TINY,
                  env: dict | None = None, timeout: float = 300, nproc: int = 1) -> subprocess.CompletedProcess:
    """``moviechat train`` in one process or ``nproc`` ranks, whatever its exit code (forked from the pre-imported
    server, with the environment torchrun gives its ranks: see prefork.py)."""
    return run_moviechat(train_args(tmp_path, *overrides, resume=resume, cfg=cfg) + list(extra), cwd=tmp_path,
                         env=os.environ | TRAIN_ENV | (env or {}), timeout=timeout, nproc=nproc)


def run_train(tmp_path: Path, *overrides: str, resume: str | None = None, nproc: int = 1,
              cfg: Path = TINY) -> subprocess.CompletedProcess:
    """A training that must succeed, in one process or ``nproc`` ranks."""
    proc = attempt_train(tmp_path, *overrides, resume=resume, cfg=cfg, nproc=nproc)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    from moviechat.common.jsonl import read_jsonl

    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r}


# ------------------------------------------------------------------------------- answering inputs

QUESTIONS = [("what color is the first scene", None), ("what color now", 3.0), ("what color now", 21.0),
             ("how many scenes", None), ("what color now", 3.0), ("what color now", 0.0), ("what came before", 36.0)]


def answerer_for(cfg, tokenizer, preset: str = "streaming"):
    from moviechat.answering.answerer import Answerer
    from moviechat.memory import MemoryConfig
    from moviechat.models import build_moviechat

    cfg.memory = MemoryConfig(short_memory_length=8, short_memory_merge=2, fragment_frames=8, n_position=16,
                              long_memory_length=16, preset=preset)
    torch.manual_seed(0)
    model = build_moviechat(cfg.model, cfg.memory, tokenizer, verbose=False).eval()
    return Answerer(cfg, tokenizer, model, max_new_tokens=3)


def token_video(cfg, frames: int = 40, seed: int = 1) -> tuple[np.ndarray, dict]:
    from moviechat.data.stores import default_meta

    q = cfg.model.image_qformer
    feats = torch.randn(frames, q.num_query_tokens, q.hidden_size, generator=torch.Generator().manual_seed(seed))
    return feats.numpy(), default_meta(frames, "tokens")


def rows_for(keys):
    return [{"video": k, "question": q, "time": t} for k in keys for q, t in QUESTIONS]


def synthetic_features(tmp_path, cfg):
    """One generated video's frame tokens as ``clip.npy`` + ``clip.json`` in ``tmp_path``."""
    from moviechat.data.synthetic import generate_video, prototypes

    q = cfg.model.image_qformer
    video = generate_video("clip", 3, prototypes(6, q.num_query_tokens, q.hidden_size, 0), 40, 40, 6, 10, 0.3)
    np.save(tmp_path / "clip.npy", video.features.feats)
    (tmp_path / "clip.json").write_text(json.dumps(video.features.meta))
    return video


# ------------------------------------------------------------------------------- annotations

def write_annotation(folder, key, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{key}.json").write_text(json.dumps(data))
    return folder / f"{key}.json"


def moviechat1k_json(key="1", time=300, question="What is he doing?", answer="Running."):
    return {"info": {"video_path": f"{key}.mp4", "url": "", "class": "film", "w": 640, "h": 360, "num_frame": 900,
                     "fps": 30.0},
            "caption": "A man runs.",
            "global": [{"question": "Where is he?", "answer": "Outside."}],
            "breakpoint": [{"time": time, "question": question, "answer": answer}]}


# ------------------------------------------------------------------------------- weights and memory

def lavis_bert_names(prefix: str, layers: int, cross_every: int, text: bool) -> list[str]:
    """The key layout of LAVIS's BertLMHeadModel Q-Former, written out from its layer structure."""
    names = [f"{prefix}bert.embeddings.LayerNorm.weight", f"{prefix}bert.embeddings.LayerNorm.bias"]
    if text:
        names += [f"{prefix}bert.embeddings.word_embeddings.weight", f"{prefix}bert.embeddings.position_embeddings.weight",
                  f"{prefix}bert.embeddings.position_ids"]
    for i in range(layers):
        base = f"{prefix}bert.encoder.layer.{i}."
        blocks = ["attention"] + (["crossattention"] if i % cross_every == 0 else [])
        for blk in blocks:
            for lin in ("self.query", "self.key", "self.value", "output.dense", "output.LayerNorm"):
                names += [f"{base}{blk}.{lin}.weight", f"{base}{blk}.{lin}.bias"]
        for lin in ("intermediate_query.dense", "output_query.dense", "output_query.LayerNorm"):
            names += [f"{base}{lin}.weight", f"{base}{lin}.bias"]
        if text:
            for lin in ("intermediate.dense", "output.dense", "output.LayerNorm"):
                names += [f"{base}{lin}.weight", f"{base}{lin}.bias"]
    if text:
        names += [f"{prefix}cls.predictions.bias", f"{prefix}cls.predictions.transform.dense.weight"]
    return names


MEMORY_Q, MEMORY_D = 4, 8  # tokens per frame and width of the memory tests' frames


def integer_tokens(t: int, seed: int, levels: int = 2) -> torch.Tensor:
    """Small integers: every similarity and average is exact in fp32, so ties are real ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-levels, levels + 1, (t, MEMORY_Q, MEMORY_D), generator=g).float()


def slot_weights(plan) -> list[dict[int, float]]:
    out: list[dict[int, float]] = [{} for _ in range(plan.num_slots)]
    for f, s, w in zip(plan.frame.tolist(), plan.slot.tolist(), plan.weight.tolist()):
        out[s][f] = w
    return out


def write_video(path, frames: int = 16, fps=8, size: int = 32, codec: str = "mpeg4"):
    """A small video of coloured noise (``fps`` may be a Fraction, e.g. 30000/1001)."""
    noise = np.random.default_rng(0).integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
    return write_frames(path, noise, fps, codec)


class ChatJudgeStub(http.server.BaseHTTPRequestHandler):
    """An OpenAI-style chat-completions judge on 127.0.0.1: ``verdict(user message)`` gives each reply's text."""

    count = 0

    def verdict(self, text: str) -> str:
        raise NotImplementedError

    def do_POST(self):
        type(self).count += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = json.dumps({"model": body["model"],
                           "choices": [{"message": {"content": self.verdict(body["messages"][1]["content"])}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def torchcodec_or_skip():
    """Skip, saying why, where torchcodec or FFmpeg's shared libraries cannot load (.ci/run installs both)."""
    try:
        check_decoder("torchcodec")
    except RuntimeError as e:
        pytest.skip(str(e))


def hand_made(tmp_path):
    """Two annotated questions of one video and three predictions: one matching after normalisation, one
    partly, one for a video without annotations."""
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
