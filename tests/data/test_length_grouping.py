"""Length-grouped batches: a permutation of the same samples per epoch, batches of similar length (little
padding), deterministic, resumable at any position like the ungrouped stream, and off where lengths do not vary
(question sets keep today's order)."""

import random
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import TINY
from moviechat.config import load_config
from moviechat.data.annotations import QA
from moviechat.data.dataset import VideoQADataset
from moviechat.data.length_grouping import group_by_length, padding_share, sample_length
from moviechat.data.sampling import FrameSampling
from moviechat.data.stores import FolderStore, VideoFeatures, default_meta, write_folder

Q, D = 4, 8


def lognormal_lengths(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(4.5, 0.9, n), 8, 512)]


def test_grouping_is_a_permutation_with_little_padding_and_the_short_batch_last():
    lengths = lognormal_lengths(203)
    items = [SimpleNamespace(text=None, question="q" * n, answer="", i=i) for i, n in enumerate(lengths)]
    grouped = list(group_by_length(iter(items), 4, 32, random.Random(0)))
    assert sorted(s.i for s in grouped) == list(range(203))  # every sample once
    batches = [[sample_length(s) for s in grouped[i:i + 4]] for i in range(0, 203, 4)]
    plain = [[sample_length(s) for s in items[i:i + 4]] for i in range(0, 203, 4)]
    assert padding_share(batches) < 0.1 < padding_share(plain)
    assert len(batches[-1]) == 203 % 4  # the last window's short batch: last, so the loader cuts the same batches
    again = list(group_by_length(iter(items), 4, 32, random.Random(0)))
    assert [s.i for s in again] == [s.i for s in grouped]  # a function of the seed


def test_padding_share_counts_slots_of_batches_padded_to_their_longest():
    assert padding_share([[2, 4], [3]]) == pytest.approx(1 - 9 / 11)
    assert padding_share([]) == 0.0


def grouped_dataset(tmp_path, window: int) -> VideoQADataset:
    rng = np.random.default_rng(0)
    vids = [VideoFeatures(f"v{i:02d}", rng.standard_normal((6, Q, D)).astype(np.float16), default_meta(6, "tokens"), "")
            for i in range(30)]
    write_folder(vids, tmp_path)
    qas = {v.key: [QA("q" * (1 + (i * 37) % 50), "a" * (1 + (i * 11) % 30), "global")] for i, v in enumerate(vids)}
    ds = VideoQADataset(FolderStore(tmp_path, "tokens"), qas, set(qas), feature_kind="tokens", token_shape=(Q, D),
                        sampling=FrameSampling(), seed=3, shuffle_buffer=8, group_window=window)
    ds.set_batch_size(4)
    return ds


def test_a_grouped_epoch_is_a_permutation_of_the_ungrouped_one_and_resumes_at_any_position(tmp_path):
    plain = [(s.video_id, s.question) for s in grouped_dataset(tmp_path, 0)]
    ds = grouped_dataset(tmp_path, 3)
    grouped = [(s.video_id, s.question) for s in ds]
    assert sorted(grouped) == sorted(plain) and grouped != plain
    for at in (4, 13, 29):  # a resumed stream continues exactly where it stopped
        ds.set_resume({0: at})
        assert [(s.video_id, s.question) for s in ds] == grouped[at:]
    ds.set_resume({})
    ds.set_epoch(1)
    assert sorted((s.video_id, s.question) for s in ds) == sorted(plain)


def test_grouping_is_on_for_instruction_records_and_off_for_question_sets():
    from moviechat.config.errors import ConfigError

    assert load_config(TINY).data.group_by_length is None  # auto: the builders decide (records: on)
    with pytest.raises(ConfigError, match="data.group_window=0 must be >= 1"):
        load_config(TINY, ["data.group_window=0"])
