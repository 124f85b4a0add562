"""The held-out evaluation's baseline (moviechat/training/heldout.py)."""

from moviechat.data.annotations import QA
from moviechat.training.heldout import prior_answers


def test_the_prior_baseline_breaks_ties_the_same_way_whatever_order_the_videos_come_in():
    qas = {"a": [QA("q", "Red", "global", None, "first")], "b": [QA("q", "blue", "global", None, "first")],
           "c": [QA("q", "3", "global", None, "count"), QA("q", "3", "global", None, "count")],
           "d": [QA("q", "2", "global", None, "count")]}
    orders = [["a", "b", "c", "d"], ["d", "c", "b", "a"], ["b", "d", "a", "c"]]
    assert all(prior_answers(qas, order) == {"first": "blue", "count": "3"} for order in orders)
