"""Baselines, their tuning and the point-in-time catalog, on hand-built purchase states (no Ray)."""

from __future__ import annotations

import functools
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

import ncf.evaluate.baselines as baselines_module
from ncf.data.catalog import catalog_before, households_before, popularity_before
from ncf.data.features import HALF_LIVES
from ncf.data.neighbours import ProductNeighbours
from ncf.data.user_state import UserStates
from ncf.data.vocab import Vocabularies, Vocabulary
from ncf.errors import InputError
from ncf.evaluate import tuning
from ncf.evaluate.baselines import (
    BASELINES,
    DecayedFrequencyRanker,
    OwnFrequencyRanker,
    PointInTime,
    PopularityRanker,
    TifuKnnRanker,
    boosted,
    rank_with_ties,
    tifu_vectors,
    tifuknn,
)
from ncf.evaluate.evaluation import _baseline_row, point_in_time_period
from ncf.evaluate.metrics import ranking_metrics
from ncf.evaluate.protocol import Period, evaluate, evaluate_households, full_ranking, load_period
from ncf.rank.candidates import RankingSettings

DAY = 86_400


def vocabularies(num_users: int, num_products: int, first_ts=None) -> Vocabularies:
    """Vocabularies of ``num_users`` users and ``num_products`` products (indices 1..n)."""
    extra = {"first_ts": list(first_ts)} if first_ts is not None else None
    return Vocabularies(
        Vocabulary.from_ids([f"u{i}" for i in range(1, num_users + 1)]),
        Vocabulary.from_ids([f"p{i}" for i in range(1, num_products + 1)], extra=extra),
        Vocabulary.from_ids([]),
        Vocabulary.from_ids([]),
    )


def states_of(purchases) -> UserStates:
    """{user: [(product, day), ...]} -> UserStates (timestamps in seconds)."""
    users = [u for u, rows in purchases.items() for _ in rows]
    products = [p for rows in purchases.values() for p, _ in rows]
    times = [int(d * DAY) for rows in purchases.values() for _, d in rows]
    num_users = max(purchases, default=0) + 1
    return UserStates.from_purchases(np.array(users, np.int64), np.array(products), np.array(times), num_users)


# -- the point-in-time catalog -------------------------------------------------------------


def test_catalog_households_and_popularity_before_a_moment():
    states = states_of({1: [(1, 0), (2, 5), (2, 6)], 2: [(3, 9)], 3: [(1, 20)]})
    vocabs = vocabularies(3, 4, first_ts=[0, 5 * DAY, 9 * DAY, 30 * DAY])
    assert catalog_before(vocabs, 9 * DAY).tolist() == [False, True, True, False, False]
    # Without first_ts (vocabularies built before the test period) every known product is in.
    assert catalog_before(vocabularies(3, 4), 0).tolist() == [False, True, True, True, True]
    assert popularity_before(states, 9 * DAY, 5).tolist() == [0, 1, 2, 0, 0]
    assert households_before(states, 9 * DAY).tolist() == [1]
    assert households_before(states, 9 * DAY + 1).tolist() == [1, 2]


def test_rank_with_ties_breaks_ties_by_popularity_whatever_the_scale():
    scores = np.array([-np.inf, 1e-12, 2e-12, 1e-12, 0.0])
    assert rank_with_ties(scores, np.array([0, 3, 2, 1, 0]), 3).tolist() == [2, 3, 1]
    states = states_of({1: [(3, 0), (3, 1), (4, 2)], 2: [(1, 3)]})
    context = PointInTime.build(states, vocabularies(2, 4), 10 * DAY)
    # Zeros are ranked by popularity too (4 once, 1 once: the lower index first), never index 0.
    assert context.rank(np.array([0.0, 0.0, 5e-300, 0.0, 0.0]), 4).tolist() == [2, 3, 1, 4]


@pytest.mark.faults
def test_a_nan_score_ranks_nowhere_and_the_list_stays_full():
    """np.partition puts NaN last, above every score: [nan, 1, 2, 0.5] at depth 3 gave [2, 1],
    and a ranker's NaN sent its negative scores the non-negative way (a NaN's min is NaN)."""
    nan = np.nan
    assert rank_with_ties(np.array([nan, 1.0, 2.0, 0.5]), np.arange(4), 3).tolist() == [2, 1, 3]
    assert rank_with_ties(np.array([nan, nan]), np.arange(2), 2).tolist() == []
    # Ties by index need no array of ranks (TIFU-KNN's neighbours: one per household ranked).
    scores = np.random.default_rng(0).integers(0, 5, 200).astype(float)
    for depth in (1, 7, 50, 200):
        assert rank_with_ties(scores, None, depth).tolist() == rank_with_ties(scores, np.arange(200), depth).tolist()
    states = states_of({1: [(3, 0), (3, 1), (4, 2)], 2: [(1, 3)]})
    context = PointInTime.build(states, vocabularies(2, 4), 10 * DAY)
    scores = np.array([0.0, -1.0, nan, -3.0, -2.0])
    assert context.rank(scores, 4).tolist() == [1, 4, 3]  # 2 (NaN) is not ranked, as index 0
    assert context.masked(scores).tolist() == [-np.inf, -1.0, -np.inf, -3.0, -2.0]


# -- personal frequency --------------------------------------------------------------------


def test_decayed_frequency_ranks_by_hand_computed_scores():
    # Household 1 at day 30: product 2 bought at days 0 and 10, product 3 at day 28, product 4
    # at days 1, 2 and 3; a purchase at day 30 itself is not before the moment. Household 2
    # makes product 6 the most popular, then 5.
    states = states_of({1: [(2, 0), (4, 1), (4, 2), (4, 3), (2, 10), (3, 28), (7, 30)], 2: [(6, 0), (6, 1), (5, 2)]})
    context = PointInTime.build(states, vocabularies(2, 7), 30 * DAY)
    ranker = DecayedFrequencyRanker(context, half_life_days=10.0)
    expected = {2: 0.5**3 + 0.5**2, 3: 0.5**0.2, 4: 0.5**2.9 + 0.5**2.8 + 0.5**2.7}  # 0.375, 0.871, 0.432
    products, values = ranker.personal(1, 30 * DAY)
    assert dict(zip(products.tolist(), values)) == pytest.approx(expected)  # not 7, bought at the moment
    assert ranker.rank(1, 30 * DAY, 6).tolist() == [3, 4, 2, 6, 5, 1]
    # A long half-life is the plain count: 4 (3 purchases) > 2 (2) > 3 (1), as own frequency.
    slow = DecayedFrequencyRanker(context, half_life_days=1e6).rank(1, 30 * DAY, 3).tolist()
    assert slow == [4, 2, 3] == OwnFrequencyRanker(context).rank(1, 30 * DAY, 3).tolist()
    assert PopularityRanker(context).rank(1, 30 * DAY, 3).tolist() == [4, 2, 6]  # 4: 3, 2: 2, 6: 2
    with pytest.raises(ValueError, match="cannot rank"):
        ranker.rank(1, 29 * DAY, 3)  # before the period it was built for


def test_a_faint_decayed_purchase_stays_above_a_popular_product_never_bought_in_the_scores():
    """The sampled protocol reads scores: a fixed popularity prior of 1e-9 put popular products
    never bought above one bought 440 days ago at a 14-day half-life (3.5e-10), which the full
    ranking puts first."""
    states = states_of({1: [(2, 0)], 2: [(3, 1), (3, 2), (3, 3)]})
    context = PointInTime.build(states, vocabularies(2, 4), 440 * DAY)
    ranker = DecayedFrequencyRanker(context, half_life_days=14.0)
    scores = ranker.scores(1, 440 * DAY, np.array([2, 3, 4]))
    assert 0 < ranker.personal(1, 440 * DAY)[1][0] < 1e-9
    assert scores[0] > scores[1] > scores[2] and ranker.rank(1, 440 * DAY, 2).tolist() == [2, 3]
    # Nor does the prior reorder two scores it should only break ties between.
    from ncf.evaluate.baselines.base import tie_prior, tie_scale

    personal = np.array([0.0, 1.0, 0.9, 0.6, 0.0])
    blended = personal + tie_prior(np.array([4, 2, 0, 3, 1]), 5, tie_scale(personal))
    assert np.argsort(-blended).tolist() == [1, 2, 3, 4, 0]


def test_popularitys_sampled_scores_break_ties_as_its_ranking_does():
    """The sampled protocol counts a tie against the positive: popularity's scores were the raw
    counts, so a positive tied with a negative lost where the full ranking puts it first."""
    # Products 2 and 3 bought twice each (2 first: the lower index), 4 three times, 1 and 5 once.
    states = states_of({1: [(2, 0), (3, 1), (4, 2)], 2: [(2, 3), (3, 4), (4, 5), (4, 6), (1, 7), (5, 8)]})
    context = PointInTime.build(states, vocabularies(2, 6), 10 * DAY)
    ranker = PopularityRanker(context)
    ranked = ranker.rank(1, 10 * DAY, 6)
    assert ranked.tolist() == [4, 2, 3, 1, 5, 6]
    scores = ranker.scores(1, 10 * DAY, ranked)
    assert (np.diff(scores) < 0).all()  # strictly: no two products tie
    assert np.floor(scores).tolist() == context.popularity[ranked].tolist()  # the counts' order kept
    assert ranker.scores(1, 10 * DAY, np.array([0]))[0] == -np.inf  # outside the catalog


def test_the_sampled_scores_of_personal_baselines_break_ties_as_their_rankings_do():
    """Own frequency, decayed frequency and TIFU-KNN add a tie term to the scores the sampled
    protocol reads: it was the products' counts, so two equally popular products the household
    never bought tied, and the protocol counted the tie against the positive that the ranking
    puts first (a review, 2026-12-07)."""
    # Household 1 bought product 1 alone; 2 and 3 were bought once each by household 2, 4 twice.
    states = states_of({1: [(1, 0)], 2: [(2, 1), (3, 2), (4, 3), (4, 4)]})
    context = PointInTime.build(states, vocabularies(2, 5), 10 * DAY)
    for ranker in (
        OwnFrequencyRanker(context),
        DecayedFrequencyRanker(context, half_life_days=14.0),
        TifuKnnRanker(context, groups=2, within_decay=0.9, across_decay=0.8, alpha=1.0),  # its own vector
    ):
        ranked = ranker.rank(1, 10 * DAY, 5)
        assert ranked.tolist() == [1, 4, 2, 3, 5], ranker
        scores = ranker.scores(1, 10 * DAY, ranked[::-1].copy())[::-1]
        assert (np.diff(scores) < 0).all(), (ranker, scores)  # strictly: 2 above 3, as ranked


def test_popularitys_ranking_is_the_catalog_in_popularity_order(monkeypatch):
    """It partitioned the whole catalog once per depth asked (kept for ever) for the list the
    point in time already holds: the same products, ties by index, at every depth."""
    # 4 three times, 2 and 3 twice, 1 and 5 once, 6 never; 7 first sold after the start.
    states = states_of({1: [(2, 0), (3, 1), (4, 2)], 2: [(2, 3), (3, 4), (4, 5), (4, 6), (1, 7), (5, 8)]})
    context = PointInTime.build(states, vocabularies(2, 7, first_ts=[0] * 6 + [20 * DAY]), 10 * DAY)
    ranker = PopularityRanker(context)
    dense = {depth: context.rank(context.masked(context.popularity), depth).tolist() for depth in range(1, 9)}
    monkeypatch.setattr(PointInTime, "rank", lambda *a: pytest.fail("a pass over the catalog"))
    for depth in range(1, 9):
        assert ranker.rank(1, 10 * DAY, depth).tolist() == dense[depth] == [4, 2, 3, 1, 5, 6][:depth]


def test_a_baselines_memo_goes_with_it_and_the_moments_own_entries_stay():
    """The boosted ranker's training rows (up to 1.3 GB) stayed in the context's memo through
    every later baseline's tuning and evaluation; popularity, which they all read, stays."""
    states = states_of({1: [(2, 0), (3, 1)], 2: [(2, 3), (4, 4)]})
    context = PointInTime.build(states, vocabularies(2, 5), 10 * DAY)
    with context.one_baseline() as inside:
        inside.memoised(("rows", 1), lambda: np.zeros(3))
        assert inside.memoised(("rows", 2), lambda: np.ones(2)).tolist() == [1, 1]
        assert [k for k in context.memo if k[:1] == ("rows",)] == [("rows", 2)]  # one of a kind
        inside.in_mode(True).by_popularity()  # a mode's copy shares the memo
    assert "by_popularity" in context.memo and not any(isinstance(key, tuple) for key in context.memo)
    with pytest.raises(ZeroDivisionError), context.one_baseline():
        context.memo[("left",)] = 1 / 0 if context.memo.setdefault(("kept?",), True) else None
    assert ("kept?",) not in context.memo  # dropped on an error too


# -- TIFU-KNN ----------------------------------------------------------------------------


def test_tifu_vectors_by_hand():
    # Five baskets (days 0..4: products 1, 2, 1, 3, 1), 2 groups: the reference code puts 2
    # baskets in the first group and 3 in the second (the recent groups are the larger).
    users, products, days = np.zeros(5, np.int64), np.array([1, 2, 1, 3, 1]), np.arange(5)
    v = tifu_vectors(users, products, days, (1, 4), groups=2, within=0.5, across=0.5).toarray()[0]
    within = 0.5 ** np.array([4, 3, 2, 1, 0])
    group_weight = np.array([0.5 / 2, 0.5 / 2, 1 / 3, 1 / 3, 1 / 3]) / 2  # across / size / groups formed
    w = within * group_weight
    assert v.tolist() == pytest.approx([0.0, w[0] + w[2] + w[4], w[1], w[3]])
    # Fewer baskets than groups: each basket a group, the newest weighing across ** (groups - n).
    one = tifu_vectors(np.zeros(1, np.int64), np.array([2]), np.array([0]), (1, 4), 3, 0.5, 0.5).toarray()[0]
    assert one.tolist() == pytest.approx([0, 0, 0.25, 0])
    # A product bought twice in one basket counts once (baskets are multi-hot).
    twice = tifu_vectors(np.zeros(2, np.int64), np.array([2, 2]), np.array([0, 0]), (1, 4), 1, 0.5, 0.5)
    assert twice.toarray()[0].tolist() == [0, 0, 1.0, 0]


def reference_vector(baskets, num_products, groups, within, across):
    """One household's vector as the authors' code computes it, loop by loop: a transcription
    of ``temporal_decay_sum_history`` and ``group_history_list`` of github.com/HaojiHu/TIFUKNN
    (TIFUKNN.py, Apache-2.0), kept apart from the vectorised code it checks."""
    n = len(baskets)
    decayed = []
    for idx, basket in enumerate(baskets, start=1):
        vec = np.zeros(num_products)
        vec[list(set(basket))] = within ** (n - idx)
        decayed.append(vec)
    if n < groups:
        grouped = decayed
    else:
        base, extra = n // groups, n - (n // groups) * groups  # extra = round(residual * groups)
        sizes = [base] * (groups - extra) + [base + 1] * extra
        starts = np.cumsum([0] + sizes)
        grouped = [sum(decayed[starts[i] : starts[i + 1]]) / sizes[i] for i in range(groups)]
    total = sum(g * across ** (groups - 1 - i) for i, g in enumerate(grouped))
    return total / len(grouped)


def test_tifu_vectors_equal_the_reference_code_on_random_histories():
    rng = np.random.default_rng(0)
    for _ in range(50):
        groups, within, across = int(rng.integers(1, 10)), float(rng.choice([0.5, 0.9, 1.0])), rng.uniform(0.1, 1)
        histories = [
            [rng.choice(12, size=int(rng.integers(1, 5))).tolist() for _ in range(int(rng.integers(1, 30)))]
            for _ in range(3)
        ]
        # Baskets at days 0, 10, 20...; a product drawn twice in a basket is one line twice.
        rows = [
            (u, p, 10 * b) for u, baskets in enumerate(histories) for b, basket in enumerate(baskets) for p in basket
        ]
        u, p, t = (np.array(c) for c in zip(*rows))
        got = tifu_vectors(u, p, t, (3, 12), groups, within, across).toarray()
        expected = [reference_vector(baskets, 12, groups, within, across) for baskets in histories]
        assert got == pytest.approx(np.array(expected))


def neighbourhood():
    """Households 1 and 2 share staples 1 and 2; 2 also buys 9. Household 3 buys other,
    more popular products (4, 5, 6), so 9 is never reached by popularity."""
    return {
        1: [(1, 0), (2, 0), (1, 7), (2, 7), (1, 14)],
        2: [(1, 1), (2, 1), (9, 1), (1, 8), (9, 8)],
        3: [(p, d) for d in range(0, 20, 2) for p in (4, 5, 6)],
    }


def test_tifu_knn_without_neighbours_is_the_personal_vector_and_neighbours_bring_their_products():
    states = states_of(neighbourhood())
    context = PointInTime.build(states, vocabularies(3, 9), 20 * DAY)
    at = 21 * DAY
    u, p, t = states.all_purchases()
    own = tifu_vectors(u[u == 1], p[u == 1], t[u == 1], (4, 10), 3, 0.9, 0.8).toarray()[1]
    for settings in ({"alpha": 1.0, "neighbours": 2}, {"alpha": 0.6, "neighbours": 0}):
        ranker = TifuKnnRanker(context, groups=3, within_decay=0.9, across_decay=0.8, **settings)
        products, values = ranker.predict(1, at)
        assert products.tolist() == np.flatnonzero(own).tolist()
        assert values == pytest.approx(settings["alpha"] * own[products])
        assert ranker.rank(1, at, 5).tolist() == [1, 2, 4, 5, 6]  # own products, then popularity
    blended = TifuKnnRanker(context, groups=3, within_decay=0.9, across_decay=0.8, alpha=0.5, neighbours=1)
    assert blended.neighbours_of(1, blended.personal(1, at)[0], True).tolist() == [2]  # not itself, not 3
    assert blended.rank(1, at, 3).tolist() == [1, 2, 9]
    # A purchase between the period start and ``at`` counts for the household itself.
    rows = neighbourhood()
    rows[1] = rows[1] + [(7, 20.5)]
    later = TifuKnnRanker(PointInTime.build(states_of(rows), vocabularies(3, 9), 20 * DAY), alpha=0.5, neighbours=1)
    assert 7 in later.rank(1, at, 4).tolist() and 7 not in later.rank(1, 20 * DAY, 4).tolist()


def test_tifu_knn_fills_its_neighbours_past_those_sharing_a_product_in_a_seeded_order_not_by_index():
    """Where fewer than k households share a product with this one, equally similar ones (at 0)
    filled the k places by index, and household indices follow the whole log's purchase counts:
    the held-out weeks' most active households came first (a review of ncf/evaluate, session 67)."""
    rows = {1: [(1, 0), (2, 3)], 2: [(1, 1), (2, 2), (9, 4)], **{h: [(10 + h, h)] for h in range(3, 8)}}
    context = PointInTime.build(states_of(rows), vocabularies(7, 17), 20 * DAY)
    ranker = TifuKnnRanker(context, alpha=0.5, neighbours=3)
    got = ranker.neighbours_of(1, ranker.personal(1, 21 * DAY)[0], True).tolist()
    order = np.random.default_rng(0).permutation(context.num_users)
    unrelated = sorted(range(3, 8), key=lambda h: order[h])
    assert got == sorted([2, *unrelated[:2]]) and got != [2, 3, 4], got


def test_the_sparse_scores_are_the_dense_ones_to_the_bit(monkeypatch):
    """The frequency baselines and TIFU-KNN build a household's scores at its own products (and
    its neighbours'), no longer over the whole catalog (3 ms a household at 1M products): the
    rankings and the sampled protocol's scores must be the dense formulas' exactly, ties included,
    through both of TIFU-KNN's blends."""
    from ncf.evaluate.baselines import tifuknn
    from ncf.evaluate.baselines.base import tie_prior, tie_scale

    rng = np.random.default_rng(7)
    # 30 households over 60 products, some bought several times a day, some never; first
    # sold over the first 40 days, so some are outside the catalog at the start.
    purchases = {
        u: [(int(rng.integers(1, 61)), float(d)) for d in np.sort(rng.uniform(0, 40, int(rng.integers(1, 30))))]
        for u in range(1, 31)
    }
    first = rng.uniform(0, 40, 60) * DAY
    context = PointInTime.build(states_of(purchases), vocabularies(30, 60, first_ts=first.tolist()), 30 * DAY)

    def dense_rankings(ranker, dense, prior_scale):
        for user in range(1, 31):
            for at in (30 * DAY, 36 * DAY):
                scores = dense(user, at)
                asked = rng.choice(context.num_products, 20, replace=False)
                prior = tie_prior(context.popularity_rank(), context.num_products, prior_scale(scores))
                expected = context.masked(scores + prior)[asked]
                np.testing.assert_array_equal(ranker.scores(user, at, asked), expected)
                assert ranker.rank(user, at, 12).tolist() == context.rank(scores, 12).tolist()

    def counts(user, at, half_life=None):
        timeline = context.states.timeline(user)
        k = int(timeline.count_before(np.array([at]))[0])
        weights = None if half_life is None else np.exp2(-(at - timeline.timestamps[:k]) / DAY / half_life)
        return np.bincount(timeline.products[:k], weights=weights, minlength=context.num_products).astype(np.float64)

    dense_rankings(OwnFrequencyRanker(context), counts, lambda scores: 1.0)
    decayed = DecayedFrequencyRanker(context, half_life_days=3.0)
    dense_rankings(decayed, lambda u, at: counts(u, at, 3.0), tie_scale)
    for blend in (0, 10**9):  # always sparse, always dense
        monkeypatch.setattr(tifuknn, "DENSE_BLEND", blend)
        tifu = TifuKnnRanker(
            context, groups=3, within_decay=0.9, across_decay=0.7, alpha=0.6, neighbours=3
        )  # 1/3: inexact

        def blended(user, at, tifu=tifu):
            own, at_start = tifu.personal(user, at)
            merged = tifu.alpha * own.toarray().ravel()
            neighbours = tifu.neighbours_of(user, own, at_start) if own.nnz else ()
            if len(neighbours):
                mean = np.asarray(tifu.vectors[neighbours].sum(axis=0)).ravel() / len(neighbours)
                merged += (1.0 - tifu.alpha) * mean
            return merged

        dense_rankings(tifu, blended, tie_scale)


def test_tifu_knn_keeps_one_vector_settings_matrices_and_ranks_the_same_after_recomputing():
    """The tuning's 27 vector settings each left a households x products matrix, an index and the
    households' neighbours in the shared memo (about 17 GB at the 10M run's log: the scale review
    of 2026-12-05). One setting's are kept; a setting met again is computed again, the same."""
    context = PointInTime.build(states_of(neighbourhood()), vocabularies(3, 9), 20 * DAY)
    at = 21 * DAY
    first = TifuKnnRanker(context, groups=3, within_decay=0.9, across_decay=0.8, alpha=0.5, neighbours=1)
    expected = [first.rank(u, at, 5).tolist() for u in (1, 2, 3)]
    TifuKnnRanker(context, groups=2, within_decay=0.95, across_decay=0.7, alpha=0.5, neighbours=1).rank(1, at, 5)
    settings = {key[1:4] for key in context.memo if isinstance(key, tuple) and key[0].startswith("tifu_")}
    assert settings == {(2, 0.95, 0.7)}
    again = TifuKnnRanker(context, groups=3, within_decay=0.9, across_decay=0.8, alpha=0.5, neighbours=1)
    assert [again.rank(u, at, 5).tolist() for u in (1, 2, 3)] == expected


def test_tifu_knn_keeps_the_neighbours_of_a_bounded_number_of_households(monkeypatch):
    """A period ranked in full with one setting kept every household's neighbours (4M x 300 at
    10M households: about 10 GB). The first MEMO_HOUSEHOLDS are kept; the rest are found each
    time they are asked, the same households."""
    monkeypatch.setattr(tifuknn, "MEMO_HOUSEHOLDS", 2)
    context = PointInTime.build(states_of(neighbourhood()), vocabularies(3, 9), 20 * DAY)
    ranker = TifuKnnRanker(context, groups=3, within_decay=0.9, across_decay=0.8, alpha=0.5, neighbours=1)
    found = {u: ranker.neighbours_of(u, ranker.vectors[u], True) for u in (1, 2, 3)}
    (kept,) = [v for k, v in context.memo.items() if isinstance(k, tuple) and k[0] == "tifu_neighbours"]
    assert sorted(kept) == [1, 2] and all(kept[u] is found[u] for u in (1, 2))
    again = ranker.neighbours_of(3, ranker.vectors[3], True)
    assert again is not found[3] and again.tolist() == found[3].tolist() and len(found[3]) == 1


def brute_force_nearest(x: np.ndarray, own: np.ndarray, user: int, k: int, metric: str) -> list:
    """The k rows of ``x`` most similar to ``own`` by a dense search over every row, never
    ``user`` nor a row without purchases (sorted indices; ties broken by index)."""
    norms = np.linalg.norm(x, axis=1)
    if metric == "cosine":
        sim = x @ own / np.maximum(norms * np.linalg.norm(own), 1e-300)
    else:
        sim = -((x - own) ** 2).sum(-1)
    sim[user] = -np.inf
    sim[norms == 0] = -np.inf
    order = np.argsort(-sim, kind="stable")
    return sorted(order[np.isfinite(sim[order])][:k].tolist())


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_tifu_knn_neighbours_on_demand_are_the_dense_similaritys_nearest(metric):
    """Neighbours are searched one household at a time (no households x households matrix):
    the same k nearest as a brute-force dense search over every household with purchases before
    the period, for several k on one context, never the household itself nor one without
    purchases. A search from a vector other than the period start's is not kept."""
    rng = np.random.default_rng(5)
    purchases = {
        u: [(int(p), float(d)) for p, d in zip(rng.integers(1, 30, 12), rng.uniform(0, 19, 12))] for u in range(1, 40)
    }
    purchases[40] = [(3, 25.0)]  # buys only after the period start: never a neighbour
    context = PointInTime.build(states_of(purchases), vocabularies(40, 29), 20 * DAY)
    for k in (1, 5, 38, 60):  # 38: every other household with purchases; 60: more than there are
        ranker = TifuKnnRanker(
            context, groups=3, within_decay=0.9, across_decay=0.8, alpha=0.5, neighbours=k, metric=metric
        )
        x = ranker.vectors.toarray()
        for user in range(1, 40):
            found = ranker.neighbours_of(user, ranker.vectors[user], True)
            assert sorted(found.tolist()) == brute_force_nearest(x, x[user], user, k, metric), (k, user)
            assert user not in found and 40 not in found and 0 not in found
            # Asked again, the period's answer is kept (per k), not searched again.
            assert ranker.neighbours_of(user, ranker.vectors[user], True) is found
        # From another vector (as after purchases since the start): searched each time, and
        # the start's answer is neither replaced nor returned.
        start_answer = ranker.neighbours_of(1, ranker.vectors[1], True)
        later = ranker.neighbours_of(1, ranker.vectors[2], False)
        assert later is not ranker.neighbours_of(1, ranker.vectors[2], False)
        assert sorted(later.tolist()) == brute_force_nearest(x, x[2], 1, k, metric), k
        assert ranker.neighbours_of(1, ranker.vectors[1], True) is start_answer


def test_tifu_knn_builds_the_period_vectors_a_chunk_of_households_at_a_time(monkeypatch):
    """Every vector setting loaded the whole log (three int64 arrays of every purchase, the later
    ones too: about 80 GB at 1B purchases), then masked and sorted it. The vectors are now built
    a chunk of households at a time: the whole log's, to the bit."""
    rng = np.random.default_rng(8)
    purchases = {
        u: [(int(p), float(d)) for p, d in zip(rng.integers(1, 15, 25), rng.integers(0, 30, 25))] for u in range(1, 12)
    }
    purchases[5] = [(3, 25.0)]  # only after the start
    del purchases[7]  # none at all
    states = states_of(purchases)
    users, products, times = states.all_purchases()
    before = times < 20 * DAY
    setting = {"groups": 3, "within_decay": 0.9, "across_decay": 0.7}
    whole = tifu_vectors(users[before], products[before], times[before], (12, 15), 3, 0.9, 0.7)
    monkeypatch.setattr(UserStates, "all_purchases", lambda self: pytest.fail("the whole log at once"))
    chunks = UserStates.chunks
    for rows in (None, 1, 7):  # the default (one chunk here), one household a chunk, a few
        if rows is not None:
            monkeypatch.setattr(
                UserStates, "chunks", lambda self, chunk_rows=0, rows=rows, **kw: chunks(self, rows, **kw)
            )
        context = PointInTime.build(states, vocabularies(11, 14), 20 * DAY)
        vectors = TifuKnnRanker(context, alpha=1.0, neighbours=0, **setting).vectors
        assert vectors.shape == whole.shape and vectors.has_canonical_format
        for name in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(vectors, name), getattr(whole, name))


@pytest.mark.faults
def test_tifu_knn_refuses_a_bad_vector_setting_even_without_purchases_before_the_period():
    """The chunks of a log with nothing before the start never reach tifu_vectors' own check."""
    context = PointInTime.build(states_of({1: [(1, 5)]}), vocabularies(1, 2), DAY)
    with pytest.raises(ValueError, match="decays in"):
        TifuKnnRanker(context, within_decay=0.0)


def test_tifu_knn_neighbours_equally_near_go_by_a_fixed_shuffle_of_the_households():
    """Households as similar as the k-th nearest were chosen by argpartition's pivots (3 of 2-10
    for k=1 here), a choice that could move with the library or the array's length; then by
    index, which follows the held-out weeks' purchases (session 67): by a seeded shuffle now."""
    identical = {u: [(1, 0), (2, 0), (1, 7)] for u in range(1, 11)}
    context = PointInTime.build(states_of(identical), vocabularies(10, 3), 20 * DAY)
    order = np.random.default_rng(0).permutation(context.num_users)
    for k in (1, 3, 20):
        ranker = TifuKnnRanker(context, groups=3, within_decay=0.9, across_decay=0.8, alpha=0.5, neighbours=k)
        for user, at_start in ((1, True), (5, False)):
            others = sorted((u for u in range(1, 11) if u != user), key=lambda u: order[u])
            got = ranker.neighbours_of(user, ranker.vectors[user], at_start).tolist()
            assert got == sorted(others[:k]), (k, user, got)
    three = TifuKnnRanker(context, alpha=0.5, neighbours=3)
    assert three.neighbours_of(1, three.vectors[1], True).tolist() != [2, 3, 4]  # not the index order


# -- tuning on validation, never on test -----------------------------------------------------


def synthetic_purchases(trap: bool, seed: int = 3):
    """30 households over 100 days: validation from day 70, test from day 85. With ``trap``,
    every household buys product 40 (new) many times in the test period; without, the test
    period has no purchases."""
    rng = np.random.default_rng(seed)
    purchases = {}
    for u in range(1, 31):
        staples = rng.choice(np.arange(1, 30), size=6, replace=False)
        rows = []
        for day in range(0, 100, int(rng.integers(2, 6))):
            basket = rng.choice(staples, size=3, replace=False).tolist() + [int(rng.integers(1, 40))]
            rows += [(int(p), day + rng.random()) for p in basket]
        trap_days = 85 + 14 * rng.random(20)  # drawn either way: the rest stays the same
        if trap:
            rows += [(40, d) for d in trap_days]
        else:
            rows = [(p, d) for p, d in rows if d < 85]
        purchases[u] = rows
    return purchases


def period_of(states: UserStates, start: float, end: float, context: PointInTime) -> Period:
    truth, first, visit = {}, {}, {}
    for u in context.households().tolist():
        tl = states.timeline(u)
        inside = (tl.timestamps >= start * DAY) & (tl.timestamps < end * DAY) & context.catalog[tl.products]
        if inside.any():
            truth[u] = np.unique(tl.products[inside])
            visit[u] = int(tl.timestamps[inside][0])
            first[u] = np.unique(tl.products[inside & (tl.timestamps == visit[u])])
    return Period("val", int(start * DAY), truth, first, visit)


def tune_all(purchases):
    states = states_of(purchases)
    vocabs = vocabularies(30, 40, first_ts=[0] * 39 + [85 * DAY])
    context = PointInTime.build(states, vocabs, 70 * DAY)
    period = period_of(states, 70, 85, context)
    tuned = {
        name: tuning.tune(BASELINES[name], context, period, period.users, log=lambda m: None)
        for name in ("decayed_frequency", "tifu_knn")
    }
    rankings = {
        name: [BASELINES[name].build(context, **t.params).rank(u, period.first_visit[u], 40) for u in period.users]
        for name, t in tuned.items()
    }
    return tuned, rankings


def test_tuning_never_reads_the_test_period():
    with_trap, rankings = tune_all(synthetic_purchases(trap=True))
    without, clean_rankings = tune_all(synthetic_purchases(trap=False))
    for name in with_trap:
        # Every setting scores the same on validation, so the same one wins.
        assert with_trap[name].trials == without[name].trials and with_trap[name].params == without[name].params
        assert len(with_trap[name].trials) > 3
        assert all(np.array_equal(a, b) for a, b in zip(rankings[name], clean_rankings[name]))
        assert not any(40 in r for r in rankings[name])  # the trap product is not in the catalog yet


def test_tuned_parameters_are_kept_in_data_and_retuned_on_request(tmp_path, monkeypatch):
    states = states_of(synthetic_purchases(trap=False))
    context = PointInTime.build(states, vocabularies(30, 40), 70 * DAY)
    period = period_of(states, 70, 85, context)
    baselines = [BASELINES["decayed_frequency"], BASELINES["popularity"]]
    searched = []
    real_tune = tuning.tune
    monkeypatch.setattr(tuning, "tune", lambda b, *a, **k: searched.append(b.name) or real_tune(b, *a, **k))
    quiet = {"log": lambda m: None}
    first = tuning.tuned_params(baselines, str(tmp_path), context, period, period.users, **quiet)
    assert list(first) == ["decayed_frequency"] and searched == ["decayed_frequency"]
    kept = json.loads((tmp_path / "baselines" / "tuned.json").read_text())
    assert kept["decayed_frequency"]["params"] == first["decayed_frequency"].params
    again = tuning.tuned_params(baselines, str(tmp_path), context, period, period.users, **quiet)
    assert searched == ["decayed_frequency"] and again["decayed_frequency"].params == first["decayed_frequency"].params
    tuning.tuned_params(baselines, str(tmp_path), context, period, period.users, retune=True, **quiet)
    assert searched == ["decayed_frequency"] * 2
    # A changed baseline (another digest of its code) is searched again, and the log says why.
    monkeypatch.setattr(baselines_module, "code_digest", lambda build, rules=(): "changed")
    said = []
    tuning.tuned_params(baselines, str(tmp_path), context, period, period.users, log=said.append)
    assert searched == ["decayed_frequency"] * 3
    assert any("another version of its code: searching again" in line for line in said)


@pytest.mark.faults
def test_a_search_that_fails_keeps_the_searches_before_it_and_with_on_error_the_rest_go_on(tmp_path):
    """Old code wrote tuned.json after every search: one that raised (ALS out of memory at
    scale) lost the minutes of those before it, and ended the others."""
    from dataclasses import replace

    states = states_of(synthetic_purchases(trap=False))
    context = PointInTime.build(states, vocabularies(30, 40), 70 * DAY)
    period = period_of(states, 70, 85, context)

    def out_of_memory(context, **params):
        raise MemoryError("no room for the factors")

    failing = replace(BASELINES["tifu_knn"], build=out_of_memory)
    quiet = {"log": lambda m: None}
    with pytest.raises(MemoryError):
        tuning.tuned_params(
            [BASELINES["decayed_frequency"], failing], str(tmp_path), context, period, period.users, **quiet
        )
    kept = json.loads((tmp_path / "baselines" / "tuned.json").read_text())
    assert list(kept) == ["decayed_frequency"]  # written as its search ended, before the failure

    failed = []
    out = tuning.tuned_params(
        [failing, BASELINES["decayed_frequency"]],
        str(tmp_path / "again"),
        context,
        period,
        period.users,
        on_error=lambda baseline, error: failed.append((baseline.name, type(error))),
        **quiet,
    )
    assert failed == [("tifu_knn", MemoryError)] and list(out) == ["decayed_frequency"]
    assert list(json.loads((tmp_path / "again" / "baselines" / "tuned.json").read_text())) == ["decayed_frequency"]


def test_the_code_digest_covers_the_modules_a_baseline_takes_names_from_and_its_libraries(monkeypatch):
    """Old code digested the baseline's own module alone: the boosted ranker's candidate counts
    (ncf.rank.candidates) or features changed, or LightGBM upgraded, and tuned.json stayed."""
    import inspect

    from ncf.evaluate.baselines.boosted import BoostedRanker

    names = [m.__name__ for m in baselines_module._project_modules(inspect.getmodule(BoostedRanker))]
    assert {"ncf.model.ranking", "ncf.data.features", "ncf.evaluate.baselines.boosted"} <= set(names)
    # The tuning rules (its objective, its tie rule) and the time filters the protocol reaches
    # through its own imports were left out: a changed OBJECTIVE kept the old choices.
    from ncf.evaluate import metrics, protocol
    from ncf.evaluate.baselines import base

    reached = baselines_module._modules_reached([inspect.getmodule(BoostedRanker), base, protocol, metrics])
    assert {"ncf.data.catalog", "ncf.data.timeline", "ncf.data.user_state"} <= set(reached)
    assert "ncf.evaluate.baselines.als" not in reached  # another baseline's change keeps this one's choice
    from ncf.evaluate.baselines import BASELINES
    from ncf.evaluate.tuning import _grid

    boosted = next(b for b in BASELINES.values() if b.build is BoostedRanker)
    assert _grid(boosted, False)["code"] != boosted.grid()["code"]  # the search's rules digested too
    before = baselines_module.code_digest(BoostedRanker)
    baselines_module.code_digest.cache_clear()
    monkeypatch.setattr(baselines_module, "_version", lambda name: "9.9" if name == "lightgbm" else "1")
    try:
        assert baselines_module.code_digest(BoostedRanker) != before
    finally:
        baselines_module.code_digest.cache_clear()


def test_the_code_digest_keeps_through_edits_of_words_and_of_what_the_search_does_not_run(tmp_path, monkeypatch):
    """Old code digested whole source files, tuning.py's too: a comment, a docstring or a change
    to how tuned.json is read searched every baseline again (five minutes on Complete Journey,
    days at 10M households)."""
    import importlib.util
    import sys

    from ncf.evaluate.baselines.frequency import OwnFrequencyRanker

    def rules(name: str, source: str):
        (tmp_path / f"{name}.py").write_text(source)
        spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return baselines_module.code_digest(OwnFrequencyRanker, (module.tune,))

    original = '''OBJECTIVE = "ndcg@10"


def tune(trials):
    """Picks the best."""
    return max(trials, key=_score)


def _score(trial):
    return trial[OBJECTIVE]


def read_cache(path):
    return open(path).read()
'''
    before = rules("rules_original", original)
    reworded = original.replace('"""Picks the best."""', "# the first of the best\n    ")
    assert rules("rules_reworded", reworded) == before
    cache_reading = original.replace("open(path).read()", "open(path, encoding='utf-8').read()")
    assert rules("rules_cache_reading", cache_reading) == before  # not what the search runs
    for name, changed in (
        ("rules_objective", original.replace('"ndcg@10"', '"recall@10"')),  # a constant a helper uses
        ("rules_helper", original.replace("return trial[OBJECTIVE]", "return -trial[OBJECTIVE]")),
        ("rules_tie", original.replace("max(trials, key=_score)", "max(reversed(trials), key=_score)")),
        ("rules_rebound", original + 'OBJECTIVE, _ = "recall@10", None\n'),  # no definition, but it runs
    ):
        assert rules(name, changed) != before, name
    assert baselines_module.code_digest(OwnFrequencyRanker) != before


# -- metrics -------------------------------------------------------------------------------


def test_recall_lit_and_repeat_explore_split_by_hand():
    # Top 3 of [5, 1, 7, 2]: relevant {1, 2, 7, 8}; bought before {1, 2, 5, 9}.
    m = ranking_metrics(np.array([5, 1, 7, 2]), np.array([1, 2, 7, 8]), k=3, bought_before=np.array([1, 2, 5, 9]))
    assert m["recall"] == pytest.approx(2 / 3) and m["recall_lit"] == 0.5
    assert m["repeat_hits"] == 1 and m["explore_hits"] == 1  # 1 (bought before), 7 (new)
    assert m["repeat_recall"] == 0.5 and m["explore_recall"] == 0.5  # of {1, 2} and of {7, 8}
    assert m["repeat_share"] == pytest.approx(2 / 3)  # 5 and 1 of the top 3 were bought before
    only_new = ranking_metrics(np.array([3]), np.array([3]), k=1, bought_before=np.array([], np.int64))
    assert np.isnan(only_new["repeat_recall"]) and only_new["explore_recall"] == 1.0
    assert "repeat_hits" not in ranking_metrics(np.array([3]), np.array([3]), k=1)


def test_tifu_knn_is_tuned_on_its_neighbours_where_rankings_leave_out_what_was_bought():
    """Leaving out the household's products leaves its own vector 0 on every product ranked:
    old code tuned groups and decays on that vector alone (every setting the same ranking, the
    grid's first kept) and kept alpha at its first value. They are now searched with neighbours."""
    from ncf.evaluate.protocol import excluding_purchased

    states = states_of(synthetic_purchases(trap=False))
    context = PointInTime.build(states, vocabularies(30, 40), 70 * DAY)
    period = period_of(states, 70, 85, context)
    for u in list(period.truth):  # relevant: products new to the household, as --exclude-purchased has them
        new = np.setdiff1d(period.truth[u], states.timeline(u).products_before(period.first_visit[u]))
        if len(new):
            period.truth[u] = new
        else:
            del period.truth[u]
    tuned = tuning.tune(BASELINES["tifu_knn"], context, period, period.users, lambda m: None, exclude_purchased=True)
    assert tuned.params["alpha"] < 1 and tuned.params["neighbours"] > 0
    assert tuned.grid["stages"][0]["neighbours"] == [50] and tuned.grid["stages"][0]["alpha"] == [0.5]
    first_stage, second_stage = tuned.trials[:27], tuned.trials[27:]
    assert {t["params"]["neighbours"] for t in first_stage} == {50} and len(first_stage) == 27
    assert len({t["val"]["ndcg@10"] for t in first_stage}) > 1  # the groups and decays now matter
    assert {10, 20, 100, 300} <= {t["params"]["neighbours"] for t in second_stage} <= {10, 20, 50, 100, 300}
    rank = excluding_purchased(BASELINES["tifu_knn"].build(context, **tuned.params).rank, states)
    u = int(period.users[0])
    ranked = rank(u, period.first_visit[u], 10)
    assert not np.isin(ranked, states.timeline(u).products_before(period.first_visit[u])).any()


def test_decayed_frequency_is_not_searched_where_rankings_leave_out_what_was_bought():
    """Every product it scores is one the household bought: left out, they leave popularity,
    the same at every half-life. Its seven trials there were one ranking seven times."""
    from ncf.evaluate.protocol import excluding_purchased

    states = states_of(synthetic_purchases(trap=False))
    context = PointInTime.build(states, vocabularies(30, 40), 70 * DAY)
    period = period_of(states, 70, 85, context)
    rankings = [
        excluding_purchased(DecayedFrequencyRanker(context, half_life_days=h).rank, states) for h in (14.0, 365.0)
    ]
    popular = excluding_purchased(PopularityRanker(context).rank, states)
    for u in period.users:
        at = period.first_visit[u]
        assert rankings[0](u, at, 20).tolist() == rankings[1](u, at, 20).tolist() == popular(u, at, 20).tolist()
    baseline = BASELINES["decayed_frequency"]
    tuned = tuning.tune(baseline, context, period, period.users, lambda m: None, exclude_purchased=True)
    assert tuned.trials == [] and tuned.grid["stages"] == [] and tuned.params == baseline.defaults
    assert tuned.val["ndcg@10"] > 0  # still scored on the validation weeks, for its row
    plain = tuning.tune(baseline, context, period, period.users, lambda m: None)
    assert len(plain.trials) == 7


def test_excluding_purchased_products_leaves_them_out_of_the_relevant_sets_too():
    # Household 1 bought 1 and 2 before the period, then 1, 3 (day 11) and 2, 3 (day 12): only 3
    # is new. Household 2 only rebuys 4: nothing is left to find. Household 3's 1 is new to it.
    states = states_of(
        {1: [(1, 0), (2, 1), (1, 11), (3, 11), (2, 12), (3, 12)], 2: [(4, 0), (4, 11)], 3: [(5, 2), (1, 12)]}
    )
    bounds = {"val_start": 5 * DAY, "test_start": 10 * DAY, "end": 20 * DAY}
    everything = load_period(states, "test", bounds)
    assert {u: t.tolist() for u, t in everything.truth.items()} == {1: [1, 2, 3], 2: [4], 3: [1]}
    assert everything.only_rebought is None
    period = load_period(states, "test", bounds, exclude_purchased=True)
    assert {u: t.tolist() for u, t in period.truth.items()} == {1: [3], 3: [1]}
    assert {u: b.tolist() for u, b in period.first_basket.items()} == {1: [3], 3: [1]}
    assert period.first_visit == {1: 11 * DAY, 3: 12 * DAY}
    assert {u: b.tolist() for u, b in everything.first_basket.items()} == {1: [1, 3], 2: [4], 3: [1]}
    assert period.only_rebought == 1
    # The period's exclusive end, not the last household's row count (a loop reused its name;
    # nothing read it yet: a review of ncf/evaluate, 2026-12-07).
    assert everything.start == 10 * DAY and everything.end == period.end == 20 * DAY + 1
    row = evaluate("never bought", lambda u, at, depth: np.array([3, 1]), None, period, period.users)
    assert row["recall@10"] == 1.0 and row["users"] == 2 and row["period_users_only_rebought"] == 1
    assert row["period_users"] == 2
    assert "period_users_only_rebought" not in evaluate(
        "all", lambda u, at, d: np.array([3]), None, everything, np.array([1])
    )


@pytest.mark.faults
def test_a_period_with_no_household_to_evaluate_is_one_clear_error():
    """Every household of the test period only bought again what it had bought before: with
    --exclude-purchased nothing is left to rank, and the metrics came back empty (the tuning's
    KeyError, a report without figures)."""
    states = states_of({1: [(1, 0), (1, 11)], 2: [(2, 1), (2, 12)]})
    state = SimpleNamespace(states=states, vocabs=vocabularies(2, 2, first_ts=[0, DAY]))
    bounds = {"val_start": 5 * DAY, "test_start": 10 * DAY, "end": 20 * DAY}
    _, period = point_in_time_period(state, "test", bounds)
    assert sorted(period.users.tolist()) == [1, 2]
    with pytest.raises(InputError, match=r"no household of the test period .*\(2 only bought again"):
        point_in_time_period(state, "test", bounds, exclude_purchased=True)


def test_a_baseline_is_paired_with_the_model_household_by_household():
    # Household 1 bought 1 then 3 and 2 in the test period; household 2 bought 4 then 4 and 5.
    states = states_of({1: [(1, 0), (3, 11), (2, 11)], 2: [(4, 0), (4, 11), (5, 11)]})
    bounds = {"val_start": 5 * DAY, "test_start": 10 * DAY, "end": 20 * DAY}
    period = load_period(states, "test", bounds)
    users = period.users
    model_row, model = evaluate_households("model", lambda u, at, d: np.array([3, 2, 4]), None, period, users)
    row = evaluate("baseline", lambda u, at, d: np.array([2, 8, 9]), None, period, users, against=model)
    # Recall@10: the model 1.0 and 0.5 (4 of 4, 5), the baseline 0.5 and 0.0: differences -0.5 and -0.5.
    assert model["recall@10"].tolist() == [1.0, 0.5] and row["recall@10"] == 0.25
    assert row["recall@10_minus_model"] == -0.5 and row["recall@10_minus_model_se"] == 0.0
    assert "recall@10_minus_model" not in model_row
    with pytest.raises(ValueError, match="other households"):
        evaluate("baseline", lambda u, at, d: np.array([2]), None, period, users[::-1], against=model)
    # No household to rank: no figure, and nothing to pair.
    empty = evaluate("baseline", lambda u, at, d: np.array([2]), None, period, users[:0], against=model)
    assert empty["users"] == 0 and not any(k.startswith("recall") for k in empty)


def test_full_ranking_averages_the_split_over_users_who_have_each_kind():
    states = states_of({1: [(1, 0), (2, 0)], 2: [(3, 0)]})
    truth = {1: np.array([1, 4]), 2: np.array([5])}
    period = Period("test", DAY, truth, {1: np.array([1]), 2: np.array([5])}, {1: DAY, 2: DAY})
    ranked = {1: np.array([1, 2, 4]), 2: np.array([3, 6, 7])}
    m = full_ranking(lambda u, at, depth: ranked[u], period, period.users, states)
    assert m["recall@10"] == 0.5 and m["recall_lit@10"] == 0.5  # (1 + 0) / 2 users
    assert m["repeat_recall@10"] == 1.0  # household 1 only (2 has no repeat item)
    assert m["explore_recall@10"] == 0.5  # household 1: 4 of {4}; household 2: 0 of {5}
    assert m["repeat_hits@10"] == 0.5 and m["explore_hits@10"] == 0.5
    assert m["repeat_share@10"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_the_next_basket_and_the_first_stage_coverage_by_hand():
    # Household 1 bought 1, 4 and 6 in the period, 1 and 4 in its next basket; household 2 bought 5.
    truth = {1: np.array([1, 4, 6]), 2: np.array([5])}
    period = Period("test", DAY, truth, {1: np.array([1, 4]), 2: np.array([5])}, {1: DAY, 2: DAY})
    ranked = {1: np.array([6, 1, 2]), 2: np.array([3, 5])}
    listed = {1: np.array([1, 2, 6, 7]), 2: np.array([3, 8])}
    m = full_ranking(
        lambda u, at, depth: ranked[u],
        period,
        period.users,
        first_stage=lambda users, at: [listed[u] for u in users.tolist()],
    )
    # The next basket: household 1 finds 1 of {1, 4} at rank 2 (6 is not in it), household 2 its 5 at rank 2.
    assert m["recall@10"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["next_basket_recall@10"] == pytest.approx((1 / 2 + 1) / 2)
    at_two = 1 / np.log2(3)
    assert m["next_basket_ndcg@10"] == pytest.approx((at_two / (1 + at_two) + at_two) / 2)
    # The candidates hold 1 and 6 of household 1's three products and none of household 2's.
    assert m["first_stage_recall"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["first_stage_candidates"] == 3.0
    assert "first_stage_recall" not in full_ranking(lambda u, at, depth: ranked[u], period, period.users)


def test_a_two_stage_rankings_candidates_come_with_it_a_chunk_at_a_time(monkeypatch):
    """The model's rankings (``model_two_stage``) bring their candidates along; households are
    ranked a chunk at a time, each row still its own household's."""
    from ncf.evaluate import protocol
    from ncf.rank.ranker import Ranking

    monkeypatch.setattr(protocol, "EVALUATION_CHUNK", 2)
    truth = {1: np.array([1, 4, 6]), 2: np.array([5]), 3: np.array([2, 3])}
    period = Period("test", DAY, truth, {u: t[:1] for u, t in truth.items()}, {1: DAY, 2: DAY, 3: 2 * DAY})
    listed = {1: np.array([1, 2, 6, 7]), 2: np.array([3, 8]), 3: np.array([2, 3, 9])}
    calls = []

    def rank_many(users, at, depth):
        calls.append(users.tolist())
        return [Ranking(listed[u][:2], np.zeros(2), False, candidates=listed[u]) for u in users.tolist()]

    monkeypatch.setattr(protocol, "PROGRESS_EVERY_S", 0.0)  # said after every chunk but the last
    said = []
    frame = protocol.per_user_ranking(None, period, period.users, rank_many=rank_many, progress=said.append)
    assert calls == [[1, 2], [3]] and frame.index.tolist() == [1, 2, 3]
    assert len(said) == 1 and said[0].startswith("ranked 2 of 3 households ("), said
    assert frame["first_stage_recall"].tolist() == pytest.approx([2 / 3, 0.0, 1.0])
    assert frame["recall@10"].tolist() == pytest.approx([1 / 3, 0.0, 1.0])  # 1 of {1, 4, 6}; none; 2 and 3


def test_the_sampled_protocols_negatives_are_drawn_as_from_the_whole_pool():
    """Each household's 99 negatives are drawn from the catalog without its products; the pool is
    no longer built (O(catalog) a household), and the draws must not change with it."""
    from ncf.evaluate.protocol import _NeverBought

    rng = np.random.default_rng(0)
    for trial in range(200):
        products = np.sort(rng.choice(np.arange(1, 5_000), size=int(rng.integers(1, 3_000)), replace=False))
        seen = np.unique(rng.integers(0, 5_200, int(rng.integers(0, 400))))
        pool = np.setdiff1d(products, seen, assume_unique=True)
        never = _NeverBought(products, seen)
        assert len(never) == len(pool)
        size = min(99, len(pool))
        expected = np.random.default_rng([0, trial]).choice(pool, size=size, replace=False)
        got = never.take(np.random.default_rng([0, trial]).choice(len(never), size=size, replace=False))
        assert np.array_equal(got, expected)


def test_the_sampled_protocols_positive_is_drawn_from_the_whole_first_basket():
    """The positive was the first basket's lowest product index, and indices follow popularity:
    the basket's most popular product, which flattered popularity-like scorers (popularity's
    sampled HR@10 0.916 against 0.686 with a product of the basket drawn, on Complete Journey's
    test weeks: BENCHMARKS). Drawn now from the basket, the same for every scorer of a household."""
    from ncf.evaluate.protocol import sampled_ranking

    households = range(1, 41)
    states = states_of({u: [(9, 0), (1, 10), (7, 10), (8, 12)] for u in households})
    basket = {u: np.array([1, 7]) for u in households}
    truth, visits = {u: np.array([1, 7, 8]) for u in households}, {u: 10 * DAY for u in households}
    period = Period("val", 5 * DAY, truth, basket, visits)
    positives = {}

    def score(u, at, items):
        positives.setdefault(u, []).append(int(items[0]))
        return np.zeros(len(items))

    for _ in range(2):
        sampled_ranking(score, period, np.array(list(households)), states, num_products=30)
    assert {p for first, again in positives.values() for p in (first, again)} == {1, 7}
    assert all(first == again for first, again in positives.values())  # seeded per household


def test_the_sampled_protocols_negatives_may_be_what_the_household_buys_after_the_period():
    """The pool left out the household's whole log: a validation period's negatives never held
    what it buys in the test weeks, a future no ranking at that moment knows (the point-in-time
    review of 2026-12-05). Left out now: what it bought before the period, and in it."""
    from ncf.evaluate.protocol import sampled_ranking

    # Household 1: product 2 before the period (day 0), 3 in it (day 10), 4 after it (day 30).
    states = states_of({1: [(2, 0), (3, 10), (4, 30)]})
    period = Period("val", 5 * DAY, {1: np.array([3])}, {1: np.array([3])}, {1: 10 * DAY}, 20 * DAY)
    asked = []

    def score(user, at, items):
        asked.append(items)
        return np.zeros(len(items))

    sampled_ranking(score, period, period.users, states, num_products=9)
    (items,) = asked
    assert items[0] == 3 and sorted(items[1:]) == [1, 4, 5, 6, 7, 8]  # 4 may be a negative; 2 and 3 not


@pytest.mark.faults
def test_a_positive_scored_nan_is_a_miss_in_the_sampled_protocol():
    """(NaN >= NaN) is False: a scorer giving every product NaN (a diverged model: its logits are
    not masked) had no negative at or above its positive, so rank 0, HR@10 1 and NDCG@10 1 (a
    review of the evaluation code, 2026-12-06). A NaN among the negatives counts against a
    finite positive, as a tie does."""
    from ncf.evaluate.protocol import sampled_ranking

    states = states_of({1: [(2, 0), (3, 10)]})
    period = Period("val", 5 * DAY, {1: np.array([3])}, {1: np.array([3])}, {1: 10 * DAY}, 20 * DAY)
    diverged = sampled_ranking(lambda u, at, items: np.full(len(items), np.nan), period, period.users, states, 30)
    assert diverged == {"sampled_hr@10": 0.0, "sampled_ndcg@10": 0.0}

    def positive_first_but_nan_negatives(u, at, items):
        scores = np.full(len(items), np.nan)
        scores[0] = 1.0
        return scores

    below = sampled_ranking(positive_first_but_nan_negatives, period, period.users, states, 30)
    assert below == {"sampled_hr@10": 0.0, "sampled_ndcg@10": 0.0}  # 27 NaN negatives: ranked 28th

    def infinite(positive, negatives):  # a saturated logit is a score: the positive at +inf ranks first
        return lambda u, at, items: np.r_[positive, np.full(len(items) - 1, negatives)]

    assert sampled_ranking(infinite(np.inf, 0.0), period, period.users, states, 30)["sampled_hr@10"] == 1.0
    assert sampled_ranking(infinite(-np.inf, 0.0), period, period.users, states, 30)["sampled_hr@10"] == 0.0
    assert sampled_ranking(infinite(np.inf, np.inf), period, period.users, states, 30)["sampled_hr@10"] == 0.0


def test_als_counts_are_built_a_chunk_of_households_at_a_time(monkeypatch):
    from ncf.evaluate.baselines.als import purchase_counts

    rng = np.random.default_rng(3)
    purchases = {
        u: [(int(p), float(d)) for p, d in zip(rng.integers(1, 12, 40), rng.integers(0, 30, 40))] for u in range(1, 9)
    }
    states = states_of(purchases)
    context = PointInTime.build(states, vocabularies(8, 11), 20 * DAY)
    expected = np.zeros((context.num_users, context.num_products), np.float32)
    for u, rows in purchases.items():
        for p, d in rows:
            expected[u, p] += d < 20
    whole = purchase_counts(context)
    chunks = UserStates.chunks
    monkeypatch.setattr(UserStates, "chunks", lambda self, chunk_rows=0, **kw: chunks(self, 7, **kw))
    chunked = purchase_counts(context)
    for counts in (whole, chunked):
        assert counts.dtype == np.float32 and counts.has_canonical_format
        np.testing.assert_array_equal(counts.toarray(), expected)


def test_als_past_its_household_cap_fits_a_sample_and_solves_the_others_from_their_purchases(monkeypatch, capfd):
    """10M households held 10M x 512 factors twice while ALS fitted (about 41 GB). Past
    MAX_FIT_HOUSEHOLDS a seeded sample fits; any other household's factor is the least-squares
    solution of its weighted purchases against the products' factors (ALS's own user step)."""
    from ncf.evaluate.baselines import als

    rng = np.random.default_rng(4)
    purchases = {
        u: [(int(p), float(d)) for p, d in zip(rng.integers(1, 12, 30), rng.integers(0, 19, 30))] for u in range(1, 9)
    }
    context = PointInTime.build(states_of(purchases), vocabularies(8, 11), 20 * DAY)
    whole = als.ALSRanker(context, factors=4, iterations=5, regularization=1.0)
    assert len(whole.model.user_factors) == len(purchases) and "als: fitting" not in capfd.readouterr().err
    monkeypatch.setattr(als, "MAX_FIT_HOUSEHOLDS", 3)
    capped = als.ALSRanker(context, factors=4, iterations=5, regularization=1.0)
    assert len(capped.model.user_factors) == 3 and "als: fitting 3 of 8 households" in capfd.readouterr().err
    fitted = capped._households[capped._fit_row >= 0]
    assert len(fitted) == 3 and set(fitted) <= set(purchases)
    y, reg = capped._items, 1.0
    for user in sorted(purchases):
        if user in fitted:
            np.testing.assert_array_equal(capped.user_factor(user), capped._users[capped._fit_row[capped.row(user)]])
            continue
        row = capped._weighted[capped.row(user)]
        a, b = y.T @ y + reg * np.eye(y.shape[1]), np.zeros(y.shape[1])
        for product, confidence in zip(row.indices, row.data):
            a += (confidence - 1.0) * np.outer(y[product], y[product])
            b += confidence * y[product]
        np.testing.assert_allclose(capped.user_factor(user), np.linalg.solve(a, b), rtol=1e-3, atol=1e-4)
        every = np.arange(1, y.shape[0])
        np.testing.assert_allclose(capped.scores(user, 21 * DAY, every), y[1:] @ capped.user_factor(user), rtol=1e-5)


def test_als_weighs_and_fits_only_households_with_purchases_before_the_period():
    """Its BM25 counted every row of the household vocabulary in N and in the average length:
    row 0 and the households first seen in the validation or test weeks moved every weight (and
    a product every household bought weighed 0 or less); the fit held their empty rows too."""
    from ncf.evaluate.baselines import als

    rng = np.random.default_rng(6)
    purchases = {
        u: [(int(p), float(d)) for p, d in zip(rng.integers(2, 12, 30), rng.integers(0, 19, 30))] + [(1, 3.0)]
        for u in range(1, 9)
    }
    rankers = []
    for later in (0, 5):  # households 9.. buy only after the start
        rows = {**purchases, **{u: [(2, 25.0)] for u in range(9, 9 + later)}}
        context = PointInTime.build(states_of(rows), vocabularies(8 + later, 11), 20 * DAY)
        rankers.append(als.ALSRanker(context, factors=4, iterations=5, regularization=1.0))
    alone, among_later = rankers
    np.testing.assert_array_equal(alone._weighted.toarray(), among_later._weighted.toarray())
    assert alone._weighted.shape[0] == len(alone.model.user_factors) == 8
    for user in purchases:
        assert alone.rank(user, 21 * DAY, 10).tolist() == among_later.rank(user, 21 * DAY, 10).tolist()
    # Product 1, bought by every household: an idf of log 8 - log 9, floored at 0 (never a dislike).
    product_1 = alone._weighted[:, 1]
    assert product_1.nnz == 8 and (product_1.data == 0).all() and (alone._weighted.data >= 0).all()
    # A household without purchases before the period has no factor: popularity orders it.
    context = among_later.context
    assert among_later.row(10) == -1 and not among_later.user_factor(10).any()
    assert among_later.rank(10, 26 * DAY, 5).tolist() == context.by_popularity()[:5].tolist()


def test_als_grid_points_on_one_context_count_the_purchases_once(monkeypatch):
    """Each ALS ranker of the tuning grid passed over every purchase again (six passes on one
    context: a review of ncf/evaluate, 2026-12-07); the counts are memoised, each weighting's
    matrix its own (the counts' weighting does not share the memoised data)."""
    from ncf.evaluate.baselines import als

    rng = np.random.default_rng(7)
    rows = {
        u: [(int(p), float(d)) for p, d in zip(rng.integers(1, 12, 20), rng.integers(0, 19, 20))] for u in range(1, 9)
    }
    context = PointInTime.build(states_of(rows), vocabularies(8, 11), 20 * DAY)
    passes = []
    counted = als.purchase_counts
    monkeypatch.setattr(als, "purchase_counts", lambda c: passes.append(c.start) or counted(c))
    rankers = [
        als.ALSRanker(context, factors=4, iterations=3, regularization=1.0, weighting=weighting)
        for weighting in ("counts", "bm25", "counts")
    ]
    assert passes == [20 * DAY]
    rankers[0]._weighted.data[:] = 0  # the first ranker's matrix is its own
    assert rankers[2]._weighted.data.any()
    np.testing.assert_array_equal(rankers[2]._weighted.toarray(), counted(context)[rankers[2]._households].toarray())


def test_als_bm25_by_hand_over_the_documents_with_purchases():
    from ncf.evaluate.baselines.als import bm25_weight

    # Rows 0 and 5 empty (no purchases): N = 4 documents, average length (3 + 1 + 2 + 2) / 4 = 2.
    counts = np.array([[0, 0, 0], [2, 1, 0], [0, 1, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0]], np.float32)
    weighted = bm25_weight(sp.csr_matrix(counts), k1=1.0, b=0.5).toarray()
    norm = 0.5 + 0.5 * np.array([0, 3, 1, 2, 2, 0]) / 2
    idf = np.maximum(np.log(4) - np.log1p([2, 4, 1]), 0)  # column 1 in every document: log 4 - log 5 -> 0
    expected = counts * 2.0 / (norm[:, None] + counts) * idf
    np.testing.assert_allclose(weighted, expected, rtol=1e-12)
    assert (weighted[:, [0, 2]][counts[:, [0, 2]] > 0] > 0).all() and (weighted[:, 1] == 0).all()


@pytest.mark.faults
def test_a_tuning_cache_entry_this_code_cannot_read_is_searched_again(tmp_path, capsys):
    """An entry of another version's fields (or a damaged tuned.json) raised TypeError before the
    evaluation, or after the whole search with --retune, until the file was deleted by hand."""
    from ncf.data import layout

    data = str(tmp_path)
    os.makedirs(layout.baselines_dir(data))
    good = {"params": {"half_life_days": 30}, "val": {"ndcg@10": 0.4}, "val_start": 5}
    with open(tuning.tuned_path(data), "w") as f:
        entries = {"tifu_knn": {**good, "renamed_field": 1}, "als": [1], "popularity": {**good, "grid": None}}
        json.dump({"decayed_frequency": good, **entries}, f)
    assert list(tuning.read_tuned(data)) == ["decayed_frequency"]
    err = capsys.readouterr().err
    assert all(f"{name}'s entry is not one this code reads" in err for name in ("tifu_knn", "als", "popularity"))
    with open(tuning.tuned_path(data), "w") as f:
        f.write('{"decayed_frequency": ')
    assert tuning.read_tuned(data) == {} and "does not read as JSON" in capsys.readouterr().err
    with open(tuning.tuned_path(data), "w") as f:
        f.write("[]")
    assert tuning.read_tuned(data) == {} and "holds no entries by baseline" in capsys.readouterr().err
    # One it cannot read (another account's, a folder) ended the evaluation before any baseline's row.
    os.remove(tuning.tuned_path(data))
    os.makedirs(tuning.tuned_path(data))
    assert tuning.read_tuned(data) == {}
    assert "cannot be read (Is a directory): searching again" in capsys.readouterr().err
    # Keeping a search's parameters then reads it again: said once, not again for each baseline.
    messages = []
    tuning._keep(data, "decayed_frequency", tuning.Tuned(params={"half_life_days": 30}, val={}), messages.append)
    assert not capsys.readouterr().err and len(messages) == 1 and "are not kept in" in messages[0], messages
    # A file that will not read but could be written (EACCES on reading only): written over, it lost
    # the other baselines' entries without a word (the session's final read). Left as it is.
    os.rmdir(tuning.tuned_path(data))
    kept = {"tifu_knn": {"params": {"k": 1}, "val": {}, "val_start": 5}}
    with open(tuning.tuned_path(data), "w") as f:
        json.dump(kept, f)
    real_open = open

    def unreadable(path, mode="r", *args, **kwargs):  # as chmod 200 would, for a test that may run as root
        if str(path) == tuning.tuned_path(data) and "r" in mode:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    messages.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.open", unreadable)
        tuning._keep(data, "decayed_frequency", tuning.Tuned(params={"half_life_days": 30}, val={}), messages.append)
    assert len(messages) == 1 and "Permission denied" in messages[0] and "are not kept in" in messages[0], messages
    with open(tuning.tuned_path(data)) as f:
        assert json.load(f) == kept


@pytest.mark.faults
def test_an_evaluation_that_cannot_keep_its_tuned_parameters_beside_data_goes_on(tmp_path):
    """An evaluation only reads DATA; one it could not write (another account's, a read-only
    mount) ended with exit 1 after the first baseline's search, no baseline row printed (a review
    of the jobs, 2026-12-07). The parameters are searched again next run, said."""
    from ncf.data import layout

    data = str(tmp_path)
    with open(layout.baselines_dir(data), "w") as f:  # where the folder would go: makedirs fails
        f.write("not a folder")
    messages = []
    tuning._keep(data, "decayed_frequency", tuning.Tuned(params={"half_life_days": 30}, val={}), messages.append)
    assert len(messages) == 1 and messages[0].startswith("decayed_frequency: the tuned parameters are not kept in ")
    assert messages[0].endswith(": searched again next run") and tuning.read_tuned(data) == {}


# -- the boosted ranker's candidates -----------------------------------------------------------


class _ByIndex(boosted.OwnNeighboursAndPopular):
    """The boosted ranker's first stage, scored by product index (no features, no booster)."""

    def features(self, user, timeline, candidates, at):
        return np.zeros((len(candidates), 1))

    def score(self, user, candidates, features):
        return -candidates.astype(np.float64)


def first_stage_of(tmp_path, monkeypatch, examples, exclude_purchased):
    """Household 1 bought products 1-6 before day 10 (1 most, then 2...); products 7-10 are the
    co-purchase neighbours of 1-4 (in that order), and popularity follows the index (1 first)."""
    purchases = {1: [(p, d) for p in range(1, 7) for d in range(7 - p)], 2: [(p, 1) for p in range(1, 21)]}
    states = states_of(purchases)
    rows = {1: [(7, 0.9), (2, 0.95)], 2: [(8, 0.8)], 3: [(9, 0.7)], 4: [(10, 0.6)]}
    indptr = np.cumsum([0] + [len(rows.get(p, ())) for p in range(21)])
    indices = [n for p in range(21) for n, _ in rows.get(p, ())]
    weights = [w for p in range(21) for _, w in rows.get(p, ())]
    neighbours = ProductNeighbours(indptr.astype(np.int64), np.array(indices, np.int32), np.array(weights, np.float32))
    stats = SimpleNamespace(popularity_order=np.r_[np.arange(1, 21), 0], neighbours=neighbours)
    state = SimpleNamespace(states=states, stats=stats, catalog=None)
    monkeypatch.setattr(
        boosted, "RankingState", SimpleNamespace(load=lambda data: SimpleNamespace(as_of=lambda at: state))
    )
    with open(tmp_path / "stats.json", "w") as f:
        json.dump({"config": {"examples": examples}} if examples is not None else {}, f)
    vocabs = vocabularies(2, 20)
    context = PointInTime.build(states, vocabs, 10 * DAY, str(tmp_path), exclude_purchased=exclude_purchased)
    ranker = _ByIndex(context)
    return ranker, ranker.state.states.timeline(1).aggregates(10 * DAY, HALF_LIVES)


def test_the_boosted_ranker_ranks_as_many_of_each_as_its_training_lists_hold(tmp_path, monkeypatch):
    """It ranked RankingSettings' 250 own, 100 neighbours and 50 popular whatever the lists were
    built with (jobs.preprocess --own-candidates ...)."""
    sizes = {"own_candidates": 3, "neighbour_candidates": 2, "popular_candidates": 4}
    ranker, bought = first_stage_of(tmp_path, monkeypatch, sizes, exclude_purchased=False)
    # Own 1-3, neighbours 7 and 8, popular 1-4.
    assert ranker.candidates(bought).tolist() == [1, 2, 3, 4, 7, 8]
    assert ranker.rank(1, 10 * DAY, 20).tolist() == [1, 2, 3, 4, 7, 8]
    drawn = ranker._drawn[1, 10 * DAY]
    listed = ranker.first_stage_candidates(np.array([1]), np.array([10 * DAY]))
    # Those rank drew, not drawn again (the evaluation's coverage of a chunk it just ranked: a
    # review of ncf/evaluate, 2026-12-07); asked again, drawn afresh, the same.
    assert listed[0] is drawn and [c.tolist() for c in listed] == [[1, 2, 3, 4, 7, 8]]
    again = ranker.first_stage_candidates(np.array([1]), np.array([10 * DAY]))
    assert again[0] is not drawn and again[0].tolist() == [1, 2, 3, 4, 7, 8]
    for household in range(boosted.DRAWN_KEPT + 1):  # a tuning never asks for them: bounded
        ranker._drawn[household, 0] = drawn
        ranker.rank(1, 10 * DAY, 1)
    assert len(ranker._drawn) == boosted.DRAWN_KEPT
    # A DATA that records no counts: RankingSettings' (every product of this small catalog).
    ranker, bought = first_stage_of(tmp_path, monkeypatch, None, exclude_purchased=False)
    assert ranker.candidates(bought).tolist() == list(range(1, 21))


def test_the_boosted_ranker_ranks_a_full_first_stage_of_products_never_bought(tmp_path, monkeypatch):
    """With exclude_purchased its candidates were the own, neighbour and popular products less the
    own ones: a household that bought most of the popular products ranked a handful (here the
    neighbours 7 and 8 alone), where every other ranker ranks the whole catalog and the model its
    300 candidates. Now the neighbours take the own products' place and popular products it never
    bought complete the list, as many as the model's first stage."""
    from ncf.evaluate.protocol import excluding_purchased

    sizes = {"own_candidates": 3, "neighbour_candidates": 2, "popular_candidates": 4}
    monkeypatch.setattr(boosted, "RankingSettings", functools.partial(RankingSettings, candidates=8, **sizes))
    ranker, bought = first_stage_of(tmp_path, monkeypatch, sizes, exclude_purchased=True)
    # Neighbours 7-10 (8 - 4 popular), then the most popular never bought: 11-14.
    assert ranker.candidates(bought).tolist() == list(range(7, 15))
    ranked = excluding_purchased(ranker.rank, ranker.context.states)(1, 10 * DAY, 100)
    assert ranked.tolist() == list(range(7, 15))  # before: [7, 8]
    monkeypatch.setattr(boosted, "RankingSettings", RankingSettings)  # 300: every product never bought
    ranker, bought = first_stage_of(tmp_path, monkeypatch, sizes, exclude_purchased=True)
    assert ranker.candidates(bought).tolist() == list(range(7, 21))
    ranked = excluding_purchased(ranker.rank, ranker.context.states)(1, 10 * DAY, 100)
    assert ranked.tolist() == list(range(7, 21))


def test_the_evaluation_tells_its_baselines_when_rankings_leave_out_what_was_bought():
    states = states_of({1: [(1, 0), (1, 11), (2, 11)]})
    state = SimpleNamespace(states=states, vocabs=vocabularies(1, 2, first_ts=[0, DAY]))
    bounds = {"val_start": 5 * DAY, "test_start": 10 * DAY, "end": 20 * DAY}
    assert not point_in_time_period(state, "test", bounds)[0].exclude_purchased
    context, period = point_in_time_period(state, "test", bounds, exclude_purchased=True)
    assert context.exclude_purchased

    # Whatever context a caller hands them, the tuning and the evaluation build every ranker for
    # their own mode (a second reading: a context built without it gave the boosted ranker its
    # old pool and no test failed).
    class Built(Exception):
        pass

    def build(context, **params):
        raise Built(context.exclude_purchased)

    recorder = SimpleNamespace(name="recorder", defaults={}, stages_for=lambda exclude: [], build=build)
    plain = context.in_mode(False)
    assert not plain.exclude_purchased and plain.in_mode(False) is plain and plain.memo is context.memo
    for mode in (True, False):
        with pytest.raises(Built) as built:
            tuning.tune(recorder, plain.in_mode(not mode), period, period.users, exclude_purchased=mode)
        assert built.value.args == (mode,)
        with pytest.raises(Built) as built:
            _baseline_row(recorder, {}, None, state, plain.in_mode(not mode), period, period.users, mode, None)
        assert built.value.args == (mode,)
