"""The memory of MovieChat's released inference (`original`) and MovieChat+ (`moviechat_plus`), against a
plain reference written from how their code runs (moviechat.memory.reference.ref_released_memory)."""

import math

import pytest
import torch

from helpers import integer_tokens, slot_weights
from moviechat.data.sampling import sample_frames
from moviechat.memory import MemoryConfig, StreamingMemory, build_memory, memory_plans
from moviechat.memory.reference import ref_released_memory


def check(tokens: torch.Tensor, cfg: MemoryConfig, mode: str, t=None) -> None:
    expected = ref_released_memory(tokens, cfg, mode, t)
    context = f"preset={cfg.preset} f={cfg.fragment} K={cfg.short_memory_length} T={len(tokens)} {mode} t={t}"
    plan = memory_plans([tokens], cfg, [mode], [t])[0]
    assert slot_weights(plan) == [item.sources for item in expected], context
    memory = build_memory(tokens, cfg, mode, t)
    torch.testing.assert_close(memory, torch.stack([i.value for i in expected]), rtol=1e-5, atol=1e-5)
    stream = StreamingMemory(cfg)
    if mode == "global":
        stream.push(tokens)
        stream.finish()
        streamed = stream.global_memory()
    else:
        stream.push(tokens[:t])
        streamed = stream.breakpoint_memory(tokens[t], upcoming=tokens[t:cfg.fragment])
    torch.testing.assert_close(streamed, memory, rtol=1e-5, atol=1e-5)
    assert stream.n_position == plan.n_position, context


@pytest.mark.parametrize("preset", ["original", "moviechat_plus"])
@pytest.mark.parametrize("fragment", [1, 2, 3, 4, 5, 8, 16, 20])
@pytest.mark.parametrize("seed", [0, 1])
def test_released_presets_match_the_reference(preset, fragment, seed):
    cfg = MemoryConfig(short_memory_length=18, short_memory_merge=2, fragment_frames=fragment, n_position=16,
                       long_memory_length=256, preset=preset)
    tokens = integer_tokens(fragment * 7 + 3, seed, levels=1)  # tie-heavy; the last fragment is shorter
    check(tokens, cfg, "global")
    last = len(tokens) - 1
    for t in sorted({0, fragment // 2, fragment, len(tokens) // 2, last}):  # first, a middle and the last fragment
        check(tokens, cfg, "breakpoint", t)


@pytest.mark.parametrize("preset", ["original", "moviechat_plus"])
def test_a_short_fifo_and_a_small_table_truncate_as_the_original(preset):
    cfg = MemoryConfig(short_memory_length=3, short_memory_merge=2, fragment_frames=6, n_position=4,
                       long_memory_length=16, preset=preset)
    tokens = integer_tokens(40, 3, levels=1)
    for t in (2, 6, 13, 20, 39):
        check(tokens, cfg, "breakpoint", t)


def test_original_breakpoint_repeats_the_last_fragment_raw_and_skips_the_current_fragment():
    cfg = MemoryConfig(short_memory_length=18, short_memory_merge=2, fragment_frames=4, n_position=16,
                       long_memory_length=256, preset="original")
    plan = memory_plans([integer_tokens(20, 0)], cfg, ["breakpoint"], [10])[0]
    sources = plan.sources()
    assert plan.num_long == 4  # fragments [0,4) and [4,8), 2 frames each; [8,12) holds t and is not processed
    assert sources[4:] == [[4], [5], [6], [7], [10]]  # fragment [4,8) again, raw, then frame t
    assert all(f < 8 for s in sources[:4] for f in s)
    first = memory_plans([integer_tokens(20, 0)], cfg, ["breakpoint"], [1])[0]
    assert first.num_long == 2 and first.sources()[2:] == [[0], [1], [2], [3], [1]]  # the whole first fragment


def test_original_global_memory_is_never_merged_back_and_must_fit_the_table():
    cfg = MemoryConfig(short_memory_length=18, short_memory_merge=2, fragment_frames=8, n_position=4,
                       long_memory_length=16, preset="original")
    assert build_memory(integer_tokens(64, 0), cfg).shape[0] == 16  # 8 fragments x 2
    with pytest.raises(ValueError, match="exceeds the 16-entry position table"):
        build_memory(integer_tokens(72, 0), cfg)
    with pytest.raises(ValueError, match="memory.preset=original keeps every fragment"):
        MemoryConfig(short_memory_length=18, short_memory_merge=2, fragment_frames=8, n_position=16,
                     long_memory_length=256, preset="original", fragments=129)
    MemoryConfig(short_memory_length=18, short_memory_merge=2, fragment_frames=8, n_position=16,
                 long_memory_length=256, preset="original", fragments=128)  # MovieChat-1K's 128 x 8 fits


@pytest.mark.parametrize("frames", range(1, 9))
def test_moviechat_plus_merge_target_is_fixed_by_the_fragment_length(frames):
    cfg = MemoryConfig(short_memory_length=18, fragment_frames=frames, preset="moviechat_plus")
    assert cfg.merge_target(frames) == (1 if frames > 4 else 3)  # mean of a softmax over T frames is 1/T
    plan = memory_plans([integer_tokens(frames, 0)], cfg, ["global"], [None])[0]
    assert plan.num_slots == min(frames, 1 if frames > 4 else 3)


def test_moviechat_plus_table_size_follows_the_long_term_length():
    from moviechat.memory.presets import table_size

    cfg = MemoryConfig(preset="moviechat_plus")
    for n_long in range(1, 1101):
        assert table_size(n_long, cfg) == min(math.ceil(math.sqrt(n_long)), 32), n_long
    cfg1 = MemoryConfig(short_memory_length=18, fragment_frames=1, preset="moviechat_plus", n_position=16,
                        long_memory_length=256)
    memory = memory_plans([integer_tokens(1100, 0, levels=3)], cfg1, ["global"], [None])[0]
    assert memory.n_position == 32 and memory.num_slots == 1024  # only past 1,024 frames is anything dropped
    assert memory.sources()[0] == [1100 - 1024]


def test_moviechat_plus_breakpoint_with_64_fragments_of_8_frames():
    cfg = MemoryConfig(short_memory_length=18, fragment_frames=8, preset="moviechat_plus", n_position=16,
                       long_memory_length=256)
    tokens = integer_tokens(65 * 8, 0, levels=3)
    t = 64 * 8 + 3  # 64 complete fragments before t's: 64 long-term frames, n = 8, 64 entries
    plan = memory_plans([tokens], cfg, ["breakpoint"], [t])[0]
    assert plan.n_position == 8 and plan.num_slots == 64
    sources = plan.sources()
    assert sources[-1] == [t] and sources[0] == list(range(8, 16))  # all 8 raw frames and the oldest long-term dropped
    check(tokens, cfg, "breakpoint", t)


def test_model_reads_each_memory_with_its_own_table(tiny_cfg, tokenizer):
    from moviechat.data import Collator, Sample
    from moviechat.models import build_moviechat

    tiny_cfg.memory = MemoryConfig(short_memory_length=8, short_memory_merge=2, fragment_frames=8, n_position=16,
                                   long_memory_length=16, preset="moviechat_plus")
    torch.manual_seed(0)
    model = build_moviechat(tiny_cfg.model, tiny_cfg.memory, tokenizer, verbose=False).eval()
    q = tiny_cfg.model.image_qformer
    videos = [torch.randn(n, q.num_query_tokens, q.hidden_size) for n in (16, 80)]
    samples = [Sample(f"v{i}", v, "what color", "red", "global") for i, v in enumerate(videos)]
    collate = Collator(tokenizer, tiny_cfg.model.system_prompt, tiny_cfg.model.max_txt_len, "tokens")
    together, _ = model.encode_video(collate(samples))
    for i, video in enumerate(videos):
        stream = StreamingMemory(tiny_cfg.memory)
        stream.push(video)
        stream.finish()
        alone = model.encode_memory(stream.global_memory()[None], None, [stream.n_position])
        torch.testing.assert_close(together[i], alone[0], rtol=1e-4, atol=1e-5)
    assert [StreamingMemory(tiny_cfg.memory).cfg.preset] == ["moviechat_plus"]


def test_fragment_sampling_spreads_frames_over_equal_parts():
    chosen, stamps = sample_frames([i * 0.5 for i in range(100)], None, fragments=4, fragment_frames=5)
    assert chosen.tolist() == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95]
    assert stamps[1] == 2.5
    chosen, _ = sample_frames([float(i) for i in range(6)], None, fragments=2, fragment_frames=4)
    assert chosen.tolist() == [0, 0, 1, 2, 3, 3, 4, 5]  # short videos repeat frames, as the original does


@pytest.mark.parametrize("preset", ["original", "moviechat_plus"])
def test_inference_with_a_preset_answers_as_the_batched_training_path(preset, tiny_cfg, tokenizer):
    """Answerer (StreamingMemory) and MovieChatModel.generate (memory plans) give the same answer ids."""
    from moviechat.answering.answerer import Answerer
    from moviechat.data import Collator, Sample
    from moviechat.data.stores import default_meta
    from moviechat.models import build_moviechat

    tiny_cfg.memory = MemoryConfig(short_memory_length=8, short_memory_merge=2, fragment_frames=8, n_position=16,
                                   long_memory_length=16, preset=preset)
    torch.manual_seed(0)
    model = build_moviechat(tiny_cfg.model, tiny_cfg.memory, tokenizer, verbose=False).eval()
    answerer = Answerer(tiny_cfg, tokenizer, model, max_new_tokens=4)
    q = tiny_cfg.model.image_qformer
    feats = torch.randn(37, q.num_query_tokens, q.hidden_size, generator=torch.Generator().manual_seed(1)).numpy()
    meta = default_meta(37, "tokens")
    collate = Collator(tokenizer, tiny_cfg.model.system_prompt, tiny_cfg.model.max_txt_len, "tokens", with_answers=False)
    for mode, t in (("global", None), ("breakpoint", 3), ("breakpoint", 20)):
        got = answerer.answer(feats, meta, "what color is the ball", None if t is None else float(t))
        sample = Sample("v", torch.from_numpy(feats), "what color is the ball", "", mode, t)
        ids = model.generate(collate([sample]), 4, collate.format.stop())[0]
        assert got["prediction"] == tokenizer.decode(ids, skip_special_tokens=True).split("###")[0].strip()
        assert got["frame"] == t
