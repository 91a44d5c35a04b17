"""The boosted ranker's training rows and what its builds share, on the session's small DATA."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from ncf.data import layout
from ncf.evaluate.baselines import BoostedRanker, PointInTime, boosted
from ncf.evaluate.protocol import period_start
from ncf.rank.state import RankingState
from ncf.splits import TEST, VALIDATED

SMALL_BOOSTER = {"num_leaves": 7, "rounds": 20}


@pytest.fixture
def lists(small_data):
    """(DATA, its validated cutoffs, every candidate of their lists: :func:`boosted.training_lists`)."""
    data, _ = small_data
    cutoffs = layout.DataStats(data).cutoffs(VALIDATED)
    return data, cutoffs, boosted.training_lists(data, cutoffs)


def never_bought_first_stage(data: str, lists: dict) -> np.ndarray:
    """The first stage's rows of ``lists`` whose product the household had not bought before."""
    return boosted.first_stage(lists["log_q"], boosted.own_log_q(data)) & (lists["features"][:, boosted.OWN] == 0)


def test_rankings_that_leave_out_what_was_bought_train_on_products_never_bought(lists):
    """With exclude_purchased it ranks only products the household never bought, yet trained on
    every first-stage row: its own products too, most of the positives and every one a repeat."""
    data, cutoffs, every = lists
    plain = boosted.first_stage(every["log_q"], boosted.own_log_q(data))
    expected = never_bought_first_stage(data, every)
    features, labels, log_q = boosted.training_rows(data, cutoffs, never_bought=True)
    assert np.array_equal(features, every["features"][expected]) and np.array_equal(labels, every["label"][expected])
    assert not features[:, boosted.OWN].any() and not log_q.any()
    # The own products' rows are gone, with most of the positives; products new to it are left.
    assert 0 < labels.sum() < every["label"][plain].sum() and len(labels) < plain.sum()
    # Plain rankings train on every first-stage row, as before.
    features, labels, _ = boosted.training_rows(data, cutoffs)
    assert np.array_equal(features, every["features"][plain]) and np.array_equal(labels, every["label"][plain])


def test_capped_rows_of_products_never_bought_are_whole_households(lists):
    """The households are counted by the rows kept: counted by every first-stage row, a capped
    read of the never-bought rows fell short of the count and raised."""
    data, cutoffs, every = lists
    expected = never_bought_first_stage(data, every)
    cap = int(expected.sum()) // 3
    features, labels, _ = boosted.training_rows(data, cutoffs, max_rows=cap, seed=1, never_bought=True)
    assert 0 < len(labels) <= cap
    # Every never-bought row of the households drawn, and nothing else, in the order read. A
    # household is drawn when every one of its rows was read (one row of it matching another
    # household's by chance does not make it drawn).
    taken = {tuple(f) for f in features}
    read = np.array([tuple(f) in taken for f in every["features"][expected]])
    owners = every["user"][expected]
    users = np.setdiff1d(np.unique(owners), owners[~read])
    chosen = expected & np.isin(every["user"], users)
    assert np.array_equal(features, every["features"][chosen]) and np.array_equal(labels, every["label"][chosen])
    assert len(users) < len(np.unique(every["user"][expected]))


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

    def training_rows(*args, never_bought=False, **kwargs):
        calls.reads.append(never_bought)
        return read(*args, never_bought=never_bought, **kwargs)

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
    # Built on a context of its own, it loads and reads afresh: the same rankings.
    fresh = dataclasses.replace(context, memo={})
    assert rankings(BoostedRanker(fresh, **SMALL_BOOSTER), households, at) == expected
    assert len(calls.loads) == 2 and calls.reads == [False, False]


def test_what_builds_share_is_kept_for_their_mode_and_moment(counted):
    """The memo is shared by a context's modes (``in_mode``) and by a copy at another moment
    (``dataclasses.replace``): rows of one mode, or a state of one moment, must not serve another."""
    context, calls = counted
    excluding = BoostedRanker(context.in_mode(True), **SMALL_BOOSTER)
    assert calls.reads == [True] and len(calls.loads) == 1
    at = context.start
    for user in context.households()[:20].tolist():
        bought = context.states.timeline(user).products_before(at)
        ranked = excluding.rank(user, at, 10)
        assert len(ranked) == 10 and not np.isin(ranked, bought).any()
    BoostedRanker(context, **SMALL_BOOSTER)  # the plain mode: the same state, its own rows
    assert calls.reads == [True, False] and len(calls.loads) == 1
    later = context.start + 86_400  # no evaluation shares a memo across moments; the key still holds it
    state = boosted.ranking_state(dataclasses.replace(context, start=later))
    assert len(calls.loads) == 2 and state.stats.cutoff == later
