"""What the boosted ranker's builds share, on the session's small DATA."""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import numpy as np
import pytest

from ncf.data import layout
from ncf.evaluate.baselines import BoostedRanker, PointInTime, boosted
from ncf.evaluate.protocol import period_start
from ncf.rank.state import RankingState
from ncf.splits import TEST

SMALL_BOOSTER = {"num_leaves": 7, "rounds": 20}


@pytest.fixture(autouse=True)
def no_booster_kept(monkeypatch):
    """Each test trains its own boosters: none from the test before (:data:`boosted._BOOSTERS`)."""
    monkeypatch.setattr(boosted, "_BOOSTERS", {})


@pytest.fixture
def counted(small_data, monkeypatch):
    """A test period's PointInTime of the small DATA, with every load of the ranking state and
    every read of the training rows the boosted ranker makes recorded (the real ones, counted)."""
    data, _ = small_data
    start = period_start(TEST, layout.DataStats(data).boundaries)
    loaded = RankingState.load(data)
    context = PointInTime.build(loaded.states, loaded.vocabs, start, data)
    calls = SimpleNamespace(loads=[], reads=[])

    def load(directory):
        calls.loads.append(directory)
        return RankingState.load(directory)

    def training_rows(*args, **kwargs):
        calls.reads.append(False)
        return read(*args, **kwargs)

    read = boosted.training_rows
    monkeypatch.setattr(boosted, "RankingState", SimpleNamespace(load=load))
    monkeypatch.setattr(boosted, "training_rows", training_rows)
    return context, calls


def rankings(ranker, households, at) -> list:
    return [ranker.rank(int(u), at, 10).tolist() for u in households]


def test_builds_on_one_context_load_the_state_and_read_the_rows_once(counted):
    """Each build loaded the ranking state (a pass over every purchase and the neighbours' fit:
    about 110 s at 10M households) and read every training row again: the tuning's three trials
    of one context did it three times over, to the same result."""
    context, calls = counted
    households, at = context.households()[:20], context.start
    first = BoostedRanker(context, **SMALL_BOOSTER)
    expected = rankings(first, households, at)
    again = BoostedRanker(context, **SMALL_BOOSTER)
    BoostedRanker(context, num_leaves=15, rounds=20)  # the search's next setting
    assert len(calls.loads) == 1 and calls.reads == [False]
    assert again.state is first.state and rankings(again, households, at) == expected
    # Built on a context of its own, it loads the state afresh (its booster the one kept for
    # these lists and settings, rows not read again): the same rankings.
    fresh = dataclasses.replace(context, memo={})
    assert rankings(BoostedRanker(fresh, **SMALL_BOOSTER), households, at) == expected
    assert len(calls.loads) == 2 and calls.reads == [False]


def test_a_context_of_the_evaluations_state_is_not_loaded_again(counted, small_data):
    """The evaluation holds DATA's ranking state at the period's start; the boosted ranker loaded
    it from disk again (about 110 s and 5-6 GiB at 10M households): the same rankings without."""
    context, calls = counted
    households, at = context.households()[:20], context.start
    expected = rankings(BoostedRanker(context, **SMALL_BOOSTER), households, at)
    state = RankingState.load(small_data[0]).as_of(at)
    of_state = PointInTime.of_state(state, at, small_data[0])
    ranker = BoostedRanker(of_state, **SMALL_BOOSTER)
    assert ranker.state is state and rankings(ranker, households, at) == expected
    earlier = PointInTime.of_state(state, at - 7 * 86_400, small_data[0])  # the validation weeks' start, say
    assert boosted.ranking_state(earlier).stats.cutoff == at - 7 * 86_400
    assert len(calls.loads) == 1  # the counted context's own load alone


def test_what_builds_share_is_kept_for_their_moment_and_shared_by_their_modes(counted):
    """The memo is shared by a context's modes (``in_mode``): both train on the same rows, read
    once; a state of one moment must not serve another."""
    context, calls = counted
    excluding = BoostedRanker(context.in_mode(True), **SMALL_BOOSTER)
    assert calls.reads == [False] and len(calls.loads) == 1
    at = context.start
    for user in context.households()[:20].tolist():
        bought = context.states.timeline(user).products_before(at)
        ranked = excluding.rank(user, at, 10)
        assert len(ranked) == 10 and not np.isin(ranked, bought).any()
    BoostedRanker(context, **SMALL_BOOSTER)  # the plain mode: the same state and rows
    assert calls.reads == [False] and len(calls.loads) == 1
    later = context.start + 86_400  # no evaluation shares a memo across moments; the key still holds it
    state = boosted.ranking_state(dataclasses.replace(context, start=later))
    assert len(calls.loads) == 2 and state.stats.cutoff == later


def test_the_tunings_booster_of_the_winning_settings_ranks_the_test_weeks_without_training_again(counted):
    """The booster depends on the validated lists and its settings, not on the period: the
    evaluation trained the tuning's winner again for the test weeks (a minute on Complete
    Journey: a review of ncf/evaluate, 2026-12-07). Other settings, or DATA preprocessed again,
    train afresh."""
    context, calls = counted
    tuned = BoostedRanker(context, **SMALL_BOOSTER)  # the grid's first point, its winner on Complete Journey
    other = BoostedRanker(context, num_leaves=15, rounds=20)  # a later point, trained after it
    assert other.booster is not tuned.booster and calls.reads == [False]  # one read for the grid
    test_weeks = dataclasses.replace(context, memo={}, start=context.start + 86_400)
    again = BoostedRanker(test_weeks, **SMALL_BOOSTER)
    assert again.booster is tuned.booster and calls.reads == [False]
    seed_1 = BoostedRanker(test_weeks, **SMALL_BOOSTER, seed=1)  # another seed: trained afresh
    assert seed_1.booster is not tuned.booster and calls.reads == [False, False]
    other = BoostedRanker(test_weeks, num_leaves=15, rounds=20)  # seed 0's boosters went with the seed
    assert other.booster is not tuned.booster and calls.reads == [False, False, False]
    stats = layout.stats_path(context.data)
    times = os.stat(stats)
    os.utime(stats, ns=(times.st_atime_ns, times.st_mtime_ns + 1))  # as a new DATA would be
    try:
        rebuilt = BoostedRanker(dataclasses.replace(context, memo={}), num_leaves=15, rounds=20)
    finally:
        os.utime(stats, ns=(times.st_atime_ns, times.st_mtime_ns))  # the session's DATA as it was
    assert rebuilt.booster is not other.booster and calls.reads == [False, False, False, False]
