
import pytest
import torch

from helpers import MEMORY_D, MEMORY_Q, integer_tokens, slot_weights
from moviechat.data.sampling import uniform_frame_indices
from moviechat.memory import (
    MemoryConfig,
    StreamingMemory,
    apply_plan,
    build_memory,
    consolidate,
    frame_means,
    memory_plans,
    position_table,
)
from moviechat.memory.reference import Item, ref_consolidate, ref_memory, similarity

Q, D = MEMORY_Q, MEMORY_D


def memories(videos, cfg, modes, times, **cached):
    """Each video's memory, planned in one batch (the way a training batch is)."""
    return [apply_plan(v, p) for v, p in zip(videos, memory_plans(videos, cfg, modes, times, **cached))]


def random_tokens(t: int, seed: int) -> torch.Tensor:
    return torch.randn(t, Q, D, generator=torch.Generator().manual_seed(seed))


def assert_matches_reference(tokens: torch.Tensor, cfg: MemoryConfig, mode: str = "global", t: int | None = None):
    expected = ref_memory(tokens, cfg, mode, t)
    plan = memory_plans([tokens], cfg, [mode], [t])[0]
    context = f"cfg={cfg} T={tokens.shape[0]} mode={mode} t={t}"
    assert slot_weights(plan) == [item.sources for item in expected], context
    memory = build_memory(tokens, cfg, mode, t)
    torch.testing.assert_close(memory, torch.stack([item.value for item in expected]), rtol=1e-5, atol=1e-5)
    assert memory.shape[0] <= cfg.capacity


def test_similarity_is_dot_product_of_token_means():
    a, b = random_tokens(2, 0)
    assert similarity(a, b) == pytest.approx(float(a.double().mean(0) @ b.double().mean(0)), rel=1e-12)
    assert similarity(a, b) == pytest.approx(float(frame_means(a) @ frame_means(b)), rel=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_consolidate_matches_reference_on_a_masked_batch(seed):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(5, 12, Q, D, generator=g)
    mask = torch.rand(5, 12, generator=g) > 0.3
    mask[0] = True
    mask[1, :] = False
    mask[1, :2] = True  # fewer valid frames than merge_to: kept as they are
    out = consolidate(frames, 3, mask)
    for b in range(5):
        valid = mask[b].nonzero().flatten().tolist()
        expected = ref_consolidate([Item.frame(frames[b], i) for i in valid], 3)
        got = out[b, : len(expected)]
        torch.testing.assert_close(got, torch.stack([e.value for e in expected]), rtol=1e-5, atol=1e-5)
        assert out[b, len(expected) :].abs().sum() == 0


def test_consolidate_ties_go_to_the_lowest_index():
    same = torch.ones(Q, D)
    # All pairs tie at every step, so the first pair keeps absorbing its neighbour.
    frames = torch.stack([same] * 5)[None]
    expected = ref_consolidate([Item.frame(frames[0], i) for i in range(5)], 2)
    assert [sorted(e.sources) for e in expected] == [[0, 1, 2, 3], [4]]
    plan = memory_plans([frames[0]], MemoryConfig(short_memory_length=5, short_memory_merge=2))
    assert plan[0].sources() == [[0, 1, 2, 3], [4]]
    # (0,1) and (2,3) tie and beat (1,2); the first is merged first.
    frames = torch.stack([same, same, -same, -same])[None]
    plan = memory_plans([frames[0]], MemoryConfig(short_memory_length=4, short_memory_merge=3))
    assert plan[0].sources() == [[0, 1], [2], [3]]


CONFIGS = [
    dict(),  # the defaults: K=18, m=2, L=256, n=16
    dict(short_memory_length=4, short_memory_merge=2, long_memory_length=6, n_position=3),
    dict(short_memory_length=5, short_memory_merge=1, long_memory_length=4, n_position=2, long_memory_policy="fifo"),
    dict(short_memory_length=6, short_memory_merge=3, fragment_frames=9, long_memory_length=7, n_position=3),
    dict(short_memory_length=8, short_memory_merge=2, fragment_frames=3, long_memory_length=5, n_position=4),
    dict(short_memory_length=3, short_memory_merge=2, fragment_frames=1, long_memory_length=4, n_position=2),
    dict(short_memory_length=7, short_memory_merge=4, long_memory_length=9, n_position=3, long_memory_policy="fifo"),
]


@pytest.mark.parametrize("cfg_kwargs", CONFIGS)
@pytest.mark.parametrize("num_frames", [1, 2, 5, 13, 40, 300])
def test_global_memory_matches_reference(cfg_kwargs, num_frames):
    cfg = MemoryConfig(**cfg_kwargs)
    assert_matches_reference(random_tokens(num_frames, num_frames), cfg)


@pytest.mark.parametrize("cfg_kwargs", CONFIGS)
def test_breakpoint_memory_matches_reference(cfg_kwargs):
    cfg = MemoryConfig(**cfg_kwargs)
    tokens = random_tokens(61, 7)
    for t in sorted({0, 1, cfg.fragment - 1, cfg.fragment, cfg.fragment + 1, 30, 59, 60}):
        assert_matches_reference(tokens, cfg, "breakpoint", t)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("policy", ["merge", "fifo"])
def test_memory_with_many_ties_matches_reference(seed, policy):
    cfg = MemoryConfig(short_memory_length=5, short_memory_merge=2, long_memory_length=6, n_position=3,
                       long_memory_policy=policy)
    tokens = integer_tokens(47, seed, levels=1)
    assert_matches_reference(tokens, cfg)
    assert_matches_reference(tokens, cfg, "breakpoint", 23)


def test_random_configs_match_reference():
    g = torch.Generator().manual_seed(123)
    for case in range(40):
        k = int(torch.randint(2, 10, (1,), generator=g))
        m = int(torch.randint(1, k, (1,), generator=g))
        n = int(torch.randint(3, 5, (1,), generator=g))  # n*n >= 9 > m
        lm = int(torch.randint(m, n * n + 1, (1,), generator=g))
        f = int(torch.randint(1, 2 * k, (1,), generator=g))
        policy = ["merge", "fifo"][case % 2]
        cfg = MemoryConfig(short_memory_length=k, short_memory_merge=m, fragment_frames=f, long_memory_length=lm,
                           n_position=n, long_memory_policy=policy)
        num = int(torch.randint(1, 120, (1,), generator=g))
        tokens = random_tokens(num, case) if case % 3 else integer_tokens(num, case)
        assert_matches_reference(tokens, cfg)
        t = int(torch.randint(0, num, (1,), generator=g))
        assert_matches_reference(tokens, cfg, "breakpoint", t)


def test_batched_videos_equal_one_at_a_time():
    cfg = MemoryConfig(short_memory_length=6, short_memory_merge=2, long_memory_length=8, n_position=3)
    videos = [random_tokens(n, n) for n in (3, 50, 17, 90)]
    modes = ["global", "breakpoint", "breakpoint", "global"]
    times = [None, 49, 0, None]
    batched = memories(videos, cfg, modes, times)
    for video, mode, t, got in zip(videos, modes, times, batched):
        torch.testing.assert_close(got, build_memory(video, cfg, mode, t))


def test_gradient_reaches_each_frame_with_its_total_weight():
    cfg = MemoryConfig(short_memory_length=4, short_memory_merge=2, long_memory_length=5, n_position=3)
    tokens = random_tokens(30, 3).requires_grad_()
    build_memory(tokens, cfg).sum().backward()
    plan = memory_plans([tokens.detach()], cfg)[0]
    expected = torch.zeros(30, dtype=torch.float64).index_add(0, plan.frame, plan.weight)
    torch.testing.assert_close(tokens.grad[:, 0, 0].double(), expected)
    assert (tokens.grad.abs().sum((1, 2)) > 0).sum() == (expected > 0).sum() > 20


def test_memory_size_is_flat_past_the_cap():
    cfg = MemoryConfig(short_memory_length=4, short_memory_merge=2, long_memory_length=9, n_position=3)
    sizes = [build_memory(random_tokens(t, t), cfg).shape[0] for t in (4, 8, 16, 32, 64, 128)]
    assert sizes == [2, 4, 8, 9, 9, 9]


@pytest.mark.parametrize("policy", ["merge", "fifo"])
@pytest.mark.parametrize("fragment", [None, 3, 11])
def test_streaming_memory_equals_build_memory(policy, fragment):
    cfg = MemoryConfig(short_memory_length=6, short_memory_merge=2, fragment_frames=fragment, long_memory_length=7,
                       n_position=3, long_memory_policy=policy)
    tokens = random_tokens(70, 11)
    stream = StreamingMemory(cfg)
    for t in range(70):
        if t in (0, 5, 6, 33, 69):
            expected = build_memory(tokens, cfg, "breakpoint", t)
            torch.testing.assert_close(stream.breakpoint_memory(tokens[t]), expected, rtol=1e-5, atol=1e-5)
        stream.push(tokens[t])
    stream.finish()
    torch.testing.assert_close(stream.global_memory(), build_memory(tokens, cfg), rtol=1e-5, atol=1e-5)


def test_apply_plan_works_in_half_precision():
    cfg = MemoryConfig(short_memory_length=4, short_memory_merge=2, long_memory_length=5, n_position=3)
    tokens = random_tokens(20, 1)
    plan = memory_plans([tokens], cfg)[0]
    half = apply_plan(tokens.half(), plan)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), apply_plan(tokens, plan), rtol=1e-2, atol=1e-2)


def test_position_table_hand_checked():
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    table = position_table(weight, n=2, alpha=0.25)
    # u0 = p0 = (1, 0); u1 = (p1 - 0.25 p0) / 0.75 = (-1/3, 4/3); entry i*n+j = 0.25 u_i + 0.75 u_j
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2 / 3, 1 / 3], [-1 / 3, 4 / 3]])
    torch.testing.assert_close(table, expected)


def test_position_table_carries_gradient_to_the_embedding():
    weight = torch.randn(8, 4, requires_grad=True)
    position_table(weight, n=3, alpha=0.01).sum().backward()
    assert weight.grad[:3].abs().sum() > 0 and weight.grad[3:].abs().sum() == 0
    with pytest.raises(ValueError, match="n_position=9"):
        position_table(weight, n=9, alpha=0.01)


def test_uniform_frame_indices():
    assert uniform_frame_indices(10, None).tolist() == list(range(10))
    assert uniform_frame_indices(3, 8).tolist() == [0, 1, 2]
    assert uniform_frame_indices(9, 3).tolist() == [0, 4, 8]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(short_memory_merge=18), "memory.short_memory_merge=18 must be < memory.short_memory_length=18"),
        (dict(fragment_frames=0), "memory.fragment_frames=0"),
        (dict(long_memory_length=1), "memory.long_memory_length=1 must be >= memory.short_memory_merge"),
        (dict(long_memory_length=300), "memory.long_memory_length=300 must be <= memory.n_position"),
        (dict(long_memory_policy="lru"), "memory.long_memory_policy='lru'"),
        (dict(alpha=1.0), "memory.alpha=1.0"),
        (dict(num_frames=0), "memory.num_frames=0"),
    ],
)
def test_impossible_memory_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace("*", r"\*")):
        MemoryConfig(**kwargs)


def test_bad_breakpoint_time_names_the_frame():
    with pytest.raises(ValueError, match="t=10 must be in"):
        build_memory(random_tokens(10, 0), MemoryConfig(), "breakpoint", 10)


def test_plan_cache_reuses_plans_and_gives_the_same_memory_and_gradients():
    from moviechat.memory import PlanCache

    cfg = MemoryConfig(short_memory_length=4, short_memory_merge=2, long_memory_length=5, n_position=3)
    videos = [random_tokens(n, n).requires_grad_() for n in (20, 33)]
    modes, times = ["global", "breakpoint"], [None, 30]
    expected = memories(videos, cfg, modes, times)
    cache = PlanCache()
    for _ in range(2):
        got = memories(videos, cfg, modes, times, keys=["a", "b"], cache=cache)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e)
    assert (cache.misses, cache.hits) == (2, 2)
    sum(m.sum() for m in got).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in videos)
    other = MemoryConfig(short_memory_length=4, short_memory_merge=1, long_memory_length=5, n_position=3)
    memories(videos, other, modes, times, keys=["a", "b"], cache=cache)
    assert cache.misses == 4  # other settings never read a stale plan
