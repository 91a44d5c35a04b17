"""Point-in-time features: nothing from the event's own basket or later leaks in."""

import numpy as np
import pytest

from ncf.data.examples import Catalog, ExampleConfig, draw_negatives, user_examples
from ncf.data.features import NEVER_BOUGHT_DAYS
from ncf.data.timeline import UserTimeline

DAY = 86_400


def timeline():
    # basket at day 1: products 5, 7; day 2: 5; day 4: 9, 5
    products = np.array([7, 5, 5, 9, 5])
    times = np.array([1, 1, 2, 4, 4]) * DAY
    return UserTimeline(products, times)


def test_history_is_strictly_before_the_moment():
    tl = timeline()
    hist, ages = tl.history(np.array([4 * DAY, 1 * DAY, 2 * DAY]), length=4)
    # At day 4: the day-2 and day-1 purchases, most recent first; not the day-4 basket.
    assert hist[0].tolist()[:1] == [5] and sorted(hist[0, 1:3].tolist()) == [5, 7] and hist[0, 3] == 0
    assert ages[0].tolist() == [2.0, 3.0, 3.0, 0.0]
    assert hist[1].tolist() == [0, 0, 0, 0]  # nothing before the first basket
    assert sorted(hist[2, :2].tolist()) == [5, 7]


def test_history_of_a_long_and_of_an_empty_timeline():
    tl = UserTimeline(np.arange(1, 31), np.arange(30) * DAY)
    hist, ages = tl.history(np.array([30 * DAY, 3 * DAY]), length=5)
    assert hist.tolist() == [[30, 29, 28, 27, 26], [3, 2, 1, 0, 0]]
    assert ages.tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 0.0, 0.0]]
    hist, ages = UserTimeline(np.zeros(0, np.int64), np.zeros(0, np.int64)).history(np.array([DAY]), length=3)
    assert hist.tolist() == [[0, 0, 0]] and ages.tolist() == [[0.0, 0.0, 0.0]]


def test_repeat_stats_count_only_earlier_baskets():
    tl = timeline()
    count, days = tl.repeat_stats(np.array([5, 5, 9, 9, 42]), np.array([4, 2, 4, 5, 5]) * DAY)
    assert count.tolist() == [2, 1, 0, 1, 0]
    assert days.tolist() == [2.0, 1.0, NEVER_BOUGHT_DAYS, 1.0, NEVER_BOUGHT_DAYS]


def test_bought_at_marks_the_same_basket():
    tl = timeline()
    assert tl.bought_at(np.array([9, 7, 5]), np.array([4, 4, 2]) * DAY).tolist() == [True, False, True]


def test_negatives_never_come_from_the_same_basket():
    tl = timeline()
    catalog = Catalog.build(np.zeros(12), np.zeros(12), np.ones(12), "popularity")
    at = np.repeat(np.array([4 * DAY]), 500)
    negatives = draw_negatives(tl, at, ExampleConfig(own_negative_share=0.9), catalog, np.random.default_rng(0))
    valid = negatives[negatives >= 0]
    assert len(valid) > 450
    assert not tl.bought_at(valid, np.full(len(valid), 4 * DAY)).any()
    assert 0 not in valid  # the unknown product is never a negative


def test_user_examples_splits_and_labels():
    group = {"user": np.full(5, 3), "product": np.array([7, 5, 5, 9, 5]), "ts": np.array([1, 1, 2, 4, 4]) * DAY}
    catalog = Catalog.build(np.arange(12) % 3, np.arange(12), np.ones(12), "uniform")
    table = user_examples(
        group, ExampleConfig(history_length=3, negatives_per_positive=2), catalog, 0, 2 * DAY, 4 * DAY
    )
    frame = table.to_pandas()
    positives = frame[frame.label == 1]
    assert positives.split.tolist().count("train") == 2 and positives.split.tolist().count("val") == 1
    assert positives.split.tolist().count("test") == 2
    negatives = frame[frame.label == 0]
    assert set(negatives.split) == {"train"} and 0 < len(negatives) <= 4
    # Every example's history is made of purchases strictly before it.
    for row in frame.itertuples():
        earlier = group["product"][group["ts"] < row.ts]
        assert set(np.asarray(row.history)[np.asarray(row.history) > 0]) <= set(earlier)
        assert np.all(np.asarray(row.history_age_days)[np.asarray(row.history) > 0] > 0)


@pytest.mark.parametrize("mode", ["uniform", "popularity"])
def test_catalog_sampling_follows_the_mode(mode):
    counts = np.array([0, 1, 1, 98])
    catalog = Catalog.build(np.zeros(4), np.zeros(4), counts, mode)
    draws = catalog.sample(np.random.default_rng(0), 20_000)
    share = np.mean(draws == 3)
    assert 0 not in draws
    assert share > 0.9 if mode == "popularity" else abs(share - 1 / 3) < 0.02
