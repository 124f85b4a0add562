"""Streaming-memory speed: our batched consolidation against the original-style per-frame loop.

    python benchmarks/memory.py                 # 8,192 frames of 32 x 768 tokens, default + a sweep
    python benchmarks/memory.py --frames 2048   # quicker

Prints frames/s of both and their ratio (timed in the same run; this machine is noisy), checks that both
produce the same memory, and prints the memory's size against the number of frames streamed.
"""

from __future__ import annotations

import argparse
import time

import torch

from moviechat.memory import MemoryConfig, StreamingMemory, build_memory
from moviechat.memory.reference import ref_memory


def synthetic_video(frames: int, q: int = 32, d: int = 768, scene_len: int = 200, seed: int = 0) -> torch.Tensor:
    """Scenes of similar frames (a shared base plus noise), like a real video's frame tokens."""
    g = torch.Generator().manual_seed(seed)
    scenes = torch.randn(frames // scene_len + 1, q, d, generator=g)
    base = scenes.repeat_interleave(scene_len, dim=0)[:frames]
    return base + 0.5 * torch.randn(frames, q, d, generator=g)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compare(tokens: torch.Tensor, cfg: MemoryConfig, label: str) -> float:
    ours = best_time(lambda: build_memory(tokens, cfg), repeats=3)
    start = time.perf_counter()
    expected = torch.stack([item.value for item in ref_memory(tokens, cfg, exact=False)])
    reference = time.perf_counter() - start
    got = build_memory(tokens, cfg)
    same = got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    n = tokens.shape[0]
    print(
        f"{label:<44} ours {n / ours:>9.0f} frames/s   reference {n / reference:>7.0f} frames/s   "
        f"ratio {reference / ours:>6.1f}x   memory {got.shape[0]} frames   same={same}"
    )
    return reference / ours


def streaming_cost(tokens: torch.Tensor, cfg: MemoryConfig) -> None:
    """Inference's StreamingMemory (frame by frame) against the training planner on the same frames."""
    def stream() -> torch.Tensor:
        s = StreamingMemory(cfg)
        s.push(tokens)
        s.finish()
        return s.global_memory()

    streaming, planner = best_time(stream, repeats=2), best_time(lambda: build_memory(tokens, cfg), repeats=2)
    fragments = tokens.shape[0] / cfg.fragment
    same = torch.allclose(stream(), build_memory(tokens, cfg), rtol=1e-4, atol=1e-4)
    print(f"\nStreamingMemory: {streaming / fragments * 1000:.2f} ms per fragment of {cfg.fragment} frames; "
          f"{planner / streaming:.2f}x the training planner's speed on the whole video; same={same}")


def memory_growth(tokens: torch.Tensor, cfg: MemoryConfig, every: int) -> None:
    print(f"\nmemory size while streaming ({cfg.long_memory_policy}, L={cfg.long_memory_length}):")
    stream = StreamingMemory(cfg)
    for start in range(0, tokens.shape[0], every):
        stream.push(tokens[start : start + every])
        memory = stream.global_memory()
        print(f"  {start + every:>6} frames streamed -> {memory.shape[0]:>4} memory frames "
              f"({memory.numel() * 2 / 2**20:.1f} MiB in fp16)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8192)
    parser.add_argument("--no-sweep", action="store_true", help="only the default settings")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokens = synthetic_video(args.frames)
    print(f"{args.frames} frames x 32 tokens x 768, fp32, {torch.get_num_threads()} threads\n")
    ratio = compare(tokens, MemoryConfig(), "default (K=18, m=2, L=256, merge)")
    if not args.no_sweep:
        for kwargs in (
            dict(short_memory_length=8, short_memory_merge=2, long_memory_length=64, n_position=8),
            dict(short_memory_length=32, short_memory_merge=4, long_memory_length=128, n_position=16),
            dict(short_memory_length=18, short_memory_merge=2, long_memory_length=256, long_memory_policy="fifo"),
        ):
            cfg = MemoryConfig(**kwargs)
            label = f"K={cfg.short_memory_length}, m={cfg.short_memory_merge}, L={cfg.long_memory_length}, " \
                    f"{cfg.long_memory_policy}"
            compare(tokens, cfg, label)
    streaming_cost(tokens, MemoryConfig())
    memory_growth(tokens, MemoryConfig(), every=args.frames // 8)
    print(f"\nspeed-up on the default settings: {ratio:.1f}x (goal: >= 20x)")


if __name__ == "__main__":
    main()
