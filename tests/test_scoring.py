"""Metrics, baselines, the one ranking path and the evaluation on a small preprocessed dataset."""

import dataclasses
import json
import math
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import torch
from helpers import BASELINES_WITHOUT_ALS

from bench import feature_mlp, ranker_objectives
from ncf.data import layout
from ncf.data.examples import listed_rows
from ncf.data.features import CATEGORY_HALF_LIVES, HALF_LIVES
from ncf.data.timeline import UserTimeline
from ncf.data.vocab import Vocabularies, Vocabulary
from ncf.evaluate.baselines import OwnFrequencyRanker, PointInTime, PopularityRanker, top_k
from ncf.evaluate.baselines.boosted import training_lists, training_rows
from ncf.evaluate.evaluation import evaluate_all, point_in_time_period
from ncf.evaluate.metrics import paired_difference, ranking_metrics
from ncf.evaluate.protocol import period_start
from ncf.model import ann
from ncf.model.directory import ModelDir
from ncf.moments import day_of, first_rankable, run_date_of
from ncf.rank import candidates as candidate_sources
from ncf.rank import recommender as recommender_module
from ncf.rank.candidates import CATEGORY_SPREAD, MAX_K, CandidateGenerator, RankingSettings
from ncf.rank.ranker import Ranker, attention_spread
from ncf.rank.recommender import AS_OF_DAYS, BeforeTheData, PassBusy, PassNeeded, Recommender
from ncf.rank.state import EmbeddingRows, RankingState
from ncf.splits import TEST, VALIDATED


def test_a_paired_difference_is_the_mean_difference_with_its_standard_error():
    mean, se = paired_difference(np.array([0.5, 0.2, 0.9, 0.4]), np.array([0.4, 0.2, 0.6, 0.5]))
    differences = np.array([0.1, 0.0, 0.3, -0.1])
    assert mean == pytest.approx(0.075) and se == pytest.approx(differences.std(ddof=1) / 2)
    # Two scorers that differ by the same amount for every household differ without any doubt.
    assert paired_difference(np.array([0.3, 0.5, 0.7]), np.array([0.2, 0.4, 0.6])) == pytest.approx((0.1, 0.0))


def test_ranking_metrics_by_hand():
    m = ranking_metrics(np.array([3, 1, 2, 9]), np.array([1, 2]), k=2)
    assert m["recall"] == 0.5 and m["hr"] == 1.0 and m["mrr"] == m["mrr_at_k"] == 0.5
    assert m["ndcg"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert ranking_metrics(np.array([5, 6]), np.array([1]), k=2) == {
        "recall": 0.0,
        "recall_lit": 0.0,
        "ndcg": 0.0,
        "hr": 0.0,
        "mrr_at_k": 0.0,
        "mrr": 0.0,
    }
    # MRR@k counts the first hit within the top k only; MRR, anywhere in the list.
    beyond = ranking_metrics(np.array([5, 6, 7, 1]), np.array([1]), k=2)
    assert beyond["mrr_at_k"] == 0.0 and beyond["mrr"] == 0.25 and beyond["hr"] == 0.0
    # Recall divides by min(k, |relevant|): a perfect top-2 is 1 even with 3 relevant items.
    assert ranking_metrics(np.array([1, 2]), np.array([1, 2, 3]), k=2)["recall"] == 1.0
    # A product named twice in the top k would count as two hits (recall 1.5 here): refused.
    with pytest.raises(ValueError, match="names a product twice"):
        ranking_metrics(np.array([5, 5, 6]), np.array([5, 6]), k=3)
    assert ranking_metrics(np.array([5, 6, 5]), np.array([5, 6]), k=2)["recall"] == 1.0  # beyond k: no count


def test_top_k_never_returns_the_unknown_product():
    assert top_k(np.array([100.0, 1.0, 3.0, 2.0]), 2).tolist() == [2, 3]


@pytest.fixture(scope="module")
def recommender(small_model_dir, small_data):
    return Recommender.load(small_model_dir, data=small_data[0])


def test_own_frequency_ranks_the_users_staples_first(recommender):
    states, at = recommender.state.states, recommender.default_at
    user = int(states.users()[0])
    timeline = states.timeline(user)
    context = PointInTime.build(states, recommender.vocabs, at)
    top = OwnFrequencyRanker(context).rank(user, at, 3)
    counts = np.bincount(timeline.products, minlength=recommender.state.num_products)
    assert counts[top[0]] == counts.max()
    assert np.all(np.diff(counts[top]) <= 0)
    assert PopularityRanker(context).rank(user, at, 1)[0] == int(np.argmax(context.popularity))


def test_recommend_returns_raw_ids_and_cold_start_is_the_same_path(recommender):
    raw_user = recommender.vocabs.users.raw_of([1])[0]
    lists = recommender.recommend([raw_user, "no-such-user"], k=5)
    assert [len(x) for x in lists] == [5, 5]
    assert all(isinstance(p, int) for p in lists[0])  # synthetic ids are integers
    known = set(recommender.vocabs.products.raw_of(np.arange(1, recommender.state.num_products)))
    assert set(lists[0]) <= known and set(lists[1]) <= known
    warm, cold = recommender.rank([raw_user, "no-such-user"], k=5)
    assert cold.cold_start and not warm.cold_start
    # The cold start is scored by the model (its unknown household row): probabilities, best first.
    assert all(0 < s < 1 for s in cold.scores) and cold.scores == sorted(cold.scores, reverse=True)


def test_a_household_before_its_first_purchase_is_scored_like_an_unknown_one(recommender):
    """Old code: flagged a cold start, yet scored with its own row, trained on later purchases."""
    served = recommender.ranker
    user = next(int(u) for u in served.state.states.users() if served.rows.user[u] > 0)
    before_first = int(served.state.states.timeline(user).timestamps[0])
    # Products' statistics as of that moment: the data end's would hold later purchases.
    ranker = Ranker(served.model, served.state.as_of(before_first), served.rows, served.settings)
    own, unknown = ranker.rank([user, 0], [before_first, before_first], k=10)
    assert own.cold_start and unknown.cold_start
    assert own.products.tolist() == unknown.products.tolist()
    np.testing.assert_allclose(own.scores, unknown.scores, rtol=1e-6)
    scores, cold = ranker.score(user, own.products, before_first)
    assert cold and np.allclose(scores, ranker.score(0, own.products, before_first)[0], rtol=1e-6)


@pytest.mark.faults
def test_a_model_that_scores_nan_is_refused_not_ranked_in_its_candidates_order(recommender, monkeypatch):
    """A stable sort of NaN scores keeps the candidates' order, the household's own products
    first: a model whose training diverged ranked as decayed frequency, and its validation NDCG
    looked plausible, so the diverged epoch could be kept as the best (a review of ncf/rank,
    2026-12-07). The ranking refuses NaN scores; validation reports the epoch as diverged."""
    import copy
    from types import SimpleNamespace

    from ncf.model.files import DIVERGED_SCORE, VAL_DIVERGED, VAL_METRIC
    from ncf.rank.ranker import ScoresNotANumber
    from ncf.train import loop

    served = recommender.ranker
    diverged = copy.deepcopy(served.model)
    with torch.no_grad():
        for weights in diverged.parameters():
            weights.fill_(float("nan"))
    ranker = Ranker(diverged, served.state, served.rows, served.settings)
    user, at = int(served.state.states.users()[0]), recommender.default_at
    with pytest.raises(ScoresNotANumber, match="candidates NaN"):
        ranker.rank([user], [at], k=10)
    assert served.rank([user], [at], k=10)[0].products.size == 10  # the model itself still ranks

    def full_ranking(rank, period, users, rank_many=None, progress=None):
        return rank_many(users, np.full(len(users), at), 10)

    monkeypatch.setattr(loop, "full_ranking", full_ranking)
    monkeypatch.setattr(loop, "model_from_weights", lambda config, weights, device: diverged)
    monkeypatch.setattr(loop.EmbeddingRows, "between", lambda *args: served.rows)
    worker = SimpleNamespace(validation=(served.state, None, np.array([user])), model_config=None, rank=0)
    worker.device, worker.world_size, worker.vocabs = torch.device("cpu"), 1, served.state.vocabs
    worker.rows_trained_before, worker.listed_rows = None, None
    metrics = loop.validate(worker, {})
    assert metrics == {VAL_METRIC: DIVERGED_SCORE, VAL_DIVERGED: 1.0}


def test_score_names_unknown_products_and_matches_the_ranking(recommender):
    raw_user = recommender.vocabs.users.raw_of([1])[0]
    ranked = recommender.rank([raw_user], k=3)[0]
    scores = recommender.score(raw_user, ranked.product_ids)
    np.testing.assert_allclose(scores, ranked.scores, atol=1e-6)
    with pytest.raises(KeyError, match="no-such-product"):
        recommender.score(raw_user, [ranked.product_ids[0], "no-such-product"])


def test_two_stage_ranking_agrees_with_brute_force_on_its_candidates(recommender):
    ranker = recommender.ranker
    user, at = int(ranker.state.states.users()[3]), recommender.default_at
    two_stage = ranker.rank([user], [at], k=10)[0]
    brute = ranker.rank([user], [at], k=ranker.state.num_products, brute_force=True)[0]
    scores = dict(zip(brute.products.tolist(), brute.scores.tolist()))
    # The re-ranked candidates carry exactly the full model's scores, in its order.
    assert np.allclose([scores[p] for p in two_stage.products.tolist()], two_stage.scores, atol=1e-5)
    assert np.all(np.diff(two_stage.scores) <= 0)


def test_saturated_probabilities_are_ranked_by_the_models_logits(small_model_dir, small_data):
    """float32's sigmoid rounds every logit above about 17 to exactly 1.0 (a third of Complete
    Journey's top-10 scores): the order among those is the model's logits', not the candidates'."""
    loud = Recommender.load(small_model_dir, data=small_data[0])
    with torch.no_grad():
        loud.ranker.model.final[0].bias.add_(100.0)  # every logit near 100: every probability 1.0
    ranker = loud.ranker
    user, at = int(ranker.state.states.users()[0]), loud.default_at
    ranked = ranker.rank([user], [at], k=10)[0]
    assert np.all(ranked.scores == 1.0), ranked.scores  # the drill
    with torch.no_grad():
        logits = ranker.model.logits(ranker.inputs(user, at, ranked.products))[0].numpy()
    assert np.all(np.diff(logits) <= 0), logits
    assert len(np.unique(logits)) == len(logits)  # an order the model decided, not ties
    # The sampled protocol scores with the same logits (its ties count against the positive).
    np.testing.assert_allclose(ranker.score(user, ranked.products, at, logits=True)[0], logits, rtol=1e-6)


def test_exclude_purchased_keeps_k_when_a_household_bought_more_than_the_candidates(recommender, monkeypatch):
    """Past purchases are removed before the candidate cut: a household with more distinct past
    products than ``candidates`` still gets k products it never bought."""
    ranker = Ranker(recommender.ranker.model, recommender.state, recommender.ranker.rows)
    ranker.settings.candidates = 20
    user = int(max(ranker.state.states.users(), key=lambda u: len(set(ranker.state.states.timeline(u).products))))
    at = recommender.default_at
    bought = set(ranker.state.states.timeline(user).products_before(at).tolist())
    assert len(bought) > ranker.settings.candidates
    ranking = ranker.rank([user], [at], k=10, exclude_purchased=True, explain=True)[0]
    assert len(ranking.products) == 10 and not set(ranking.products.tolist()) & bought
    history, _ = ranker.state.states.timeline(user).history(np.array([at]), ranker.history_length)
    for items in ranking.explanations:
        assert items and all(product in set(history[0].tolist()) for product, _ in items)
        weights = [w for _, w in items]
        assert weights == sorted(weights, reverse=True) and all(0 < w <= 1 for w in weights)


def test_explanations_name_distinct_products_the_model_attends_to(recommender):
    """Old code: named products on the model's unknown row (masked: weight exactly 0), and a
    product bought twice in the history twice."""
    ranker, at = recommender.ranker, recommender.default_at
    length = ranker.history_length

    for user in ranker.state.states.users().tolist():
        history = ranker.state.states.timeline(user).history(np.array([at]), length)[0][0]
        other_products = history[(history > 0) & (history != history[0])]
        if len(other_products) > len(set(other_products.tolist())):
            break
    else:
        pytest.fail("no household bought a product twice among its latest purchases")
    product_rows = ranker.rows.product.copy()
    product_rows[history[0]] = 0  # its latest purchase: unknown to the model's tables
    rows = dataclasses.replace(ranker.rows, product=product_rows)
    explained = Ranker(ranker.model, ranker.state, rows, ranker.settings)
    ranking = explained.rank([user], [at], k=5, explain=True, explain_top=length)[0]
    assert len(ranking.explanations) == 5
    for because in ranking.explanations:
        named = [p for p, _ in because]
        assert because and len(named) == len(set(named)) and history[0] not in named
        assert all(product_rows[named] > 0) and all(w > 0 for _, w in because)


@pytest.mark.faults
def test_a_household_whose_sources_list_few_products_still_gets_k_of_them(recommender):
    """Without exclude_purchased the candidates were not completed: a household whose sources
    listed fewer than k (no MF path, a short history) got a shorter ranking than asked for
    (a review, 2026-12-05: 98 products for k=100 on Complete Journey without the MF path)."""
    at, model = recommender.default_at, recommender.ranker.model
    few = RankingSettings(
        candidates=MAX_K,
        own_candidates=2,
        neighbour_candidates=0,
        mf_candidates=0,
        category_candidates=0,
        popular_candidates=5,
    )
    ranker = Ranker(model, recommender.state, recommender.ranker.rows, few)
    users = ranker.state.states.users()[:5]
    for exclude in (False, True):
        for ranking in ranker.rank(users, np.full(len(users), at), MAX_K, exclude):
            assert len(ranking.products) == MAX_K == len(set(ranking.products.tolist())), exclude


def test_a_ranking_carries_the_candidates_it_was_drawn_from(recommender):
    """Evaluation reports the first stage's coverage from each :class:`Ranking`'s candidates: they
    must be what the ranking scored, with and without exclude_purchased."""
    at, ranker = recommender.default_at, recommender.ranker
    users = ranker.state.states.users()[:6]
    moments = np.full(len(users), at)
    for exclude in (False, True):
        rankings = ranker.rank(users, moments, MAX_K, exclude, keep_candidates=True)
        assert ranker.rank(users[:1], moments[:1], MAX_K, exclude)[0].candidates is None  # not held unasked
        for user, ranking in zip(users.tolist(), rankings):
            assert MAX_K <= len(ranking.candidates) <= ranker.settings.candidates
            assert np.isin(ranking.products, ranking.candidates).all(), (user, exclude)
            if exclude:
                assert not np.isin(ranking.candidates, ranker.state.states.timeline(user).products_before(at)).any()
    few = RankingSettings(candidates=MAX_K, own_candidates=2, neighbour_candidates=0, mf_candidates=0)
    narrow = Ranker(ranker.model, recommender.state, ranker.rows, few)
    for ranking in narrow.rank(users, moments, MAX_K, keep_candidates=True):
        assert sorted(ranking.candidates.tolist()) == sorted(ranking.products.tolist())


@pytest.mark.faults
def test_a_model_directorys_ranking_with_unknown_or_non_count_sizes_is_one_line():
    """A hand-edited config.json's ranking was a bare TypeError at load (an unknown name) or a
    ranking answered short (a review of ncf/rank, 2026-12-07)."""
    from ncf.errors import InputError

    assert RankingSettings.of_model({"candidates": 150}, "M").candidates == 150
    for ranking, says in (
        ({"candidate": 150}, r"unknown settings \['candidate'\]"),
        ({"candidates": "150"}, r"sizes that are not counts \['candidates'\]"),
        ({"own_candidates": -1}, r"sizes that are not counts \['own_candidates'\]"),
        ({"popular_candidates": True}, r"sizes that are not counts \['popular_candidates'\]"),
    ):
        with pytest.raises(InputError, match=rf"^M: config.json's ranking holds {says}; expected counts"):
            RankingSettings.of_model(ranking, "M")


@pytest.mark.faults
def test_reasons_are_the_purchase_timing_and_the_scores_without_those_purchases(recommender, monkeypatch):
    """Each explained product's reason: its distinct purchase days, days since the last one and
    typical gap, counted here from the raw timeline, and the model's score for it on the
    household's timeline without its purchases (then without its category's), scored one
    product at a time: a reason assigned to the wrong product or computed on the wrong timeline
    fails."""
    at, model = recommender.default_at, recommender.ranker.model
    # Own and popular candidates only, all of them returned.
    settings = RankingSettings(12, 6, 0, 0, 0, 6)
    ranker = Ranker(model, recommender.state, recommender.ranker.rows, settings)
    catalog = ranker.state.catalog
    users = ranker.state.states.users()[:8]
    moments = np.full(len(users), at)
    # With exclude_purchased, only products new to the households; and a past moment, where what
    # a household bought only later is no purchase of its (a review, 2026-12-07: each was asked
    # again, occluded, for the score it had).
    state = recommender.state
    past = np.full(len(users), state.first_purchase + (state.end - state.first_purchase) * 2 // 3)
    then = Ranker(model, recommender.as_of(int(past[0])).ranker.state, recommender.ranker.rows, settings)
    rankings = ranker.rank(users, moments, k=12, explain=True) + ranker.rank(users, moments, 12, True, explain=True)
    given, questions = then._given, []
    monkeypatch.setattr(then, "_given", lambda *args: questions.append(args) or given(*args))
    rankings += then.rank(users, past, k=12, explain=True)
    # No occluded question where nothing before the moment is removed: its score is the ranking's.
    for user, at_then, products, occluded_timeline in questions:
        whole = then.state.states.timeline(user)
        occluded_read, whole_read = (int((t.timestamps < at_then).sum()) for t in (occluded_timeline, whole))
        assert len(products) > 1 or occluded_read < whole_read or occluded_timeline is whole
    repeats = explores = later = 0
    moved = []  # how far a repeat's score moves without its purchases
    asked = [ranker] * (2 * len(users)) + [then] * len(users)
    asked_at = np.concatenate([moments, moments, past]).tolist()
    for ranker, user, at, ranking in zip(asked, np.tile(users, 3).tolist(), asked_at, rankings):
        assert not ranking.cold_start and len(ranking.reasons) == len(ranking.products)
        timeline = ranker.state.states.timeline(user)
        before = timeline.timestamps < at
        for product, score, reason in zip(ranking.products.tolist(), ranking.scores, ranking.reasons):
            bought = timeline.timestamps[before & (timeline.products == product)]
            days = np.unique(bought // 86_400)
            assert reason.days_bought == len(days)
            if len(days):
                repeats += 1
                moved.append(abs(float(score) - reason.score_if_never_bought))
                assert reason.days_since_last == pytest.approx((at - bought.max()) / 86_400)
                expected_gap = (days[-1] - days[0]) / (len(days) - 1) if len(days) > 1 else None
                assert reason.typical_gap_days == pytest.approx(expected_gap)
            else:
                explores += 1
                later += bool((timeline.products == product).any())
                assert reason.days_since_last is None and reason.typical_gap_days is None
                # Nothing to remove: the occluded question is the ranking's own, not asked again
                # (a review, 2026-12-07: every product of an exclude_purchased ranking was).
                assert reason.score_if_never_bought == float(score)
            kept = (timeline.products != product) & before
            # The unknown category 0 is no category: only the product itself is removed.
            category = catalog.category[product]
            in_category = (catalog.category[timeline.products] == category) & (category > 0)
            for removed, expected in (
                (kept, reason.score_if_never_bought),
                (kept & ~in_category, reason.score_if_category_never_bought),
            ):
                alone = UserTimeline(timeline.products[removed], timeline.timestamps[removed])
                occluded, _ = ranker.score(user, np.array([product]), at, timeline=alone)
                assert expected == pytest.approx(float(occluded[0]), abs=1e-6)
    assert repeats >= 8 and explores and later, (repeats, explores, later)
    # A category's ranked products share one occluded question: some ranking holds several.
    shared = [np.bincount(catalog.category[r.products])[1:].max(initial=0) for r in rankings]
    assert max(shared) >= 2, shared
    # Even untrained weights read the timing features: a timeline that were not occluded would
    # leave every score where it is (and the comparison above would still hold).
    assert max(moved) > 1e-4, max(moved)


def test_a_household_occluded_down_to_nothing_is_scored_as_a_cold_start(recommender):
    """Occlusion can leave a household no purchase before the moment (all it bought was the
    product, or its category): it is then scored as any household without purchases, from the
    model's unknown row, not from its own row beside empty features."""
    ranker, at = recommender.ranker, recommender.default_at
    user = int(ranker.state.states.users()[0])
    products = ranker.state.states.timeline(user).products[:3]
    nothing = UserTimeline(np.zeros(0, np.int64), np.zeros(0, np.int64))
    occluded, cold = ranker.score(user, products, at, timeline=nothing, logits=True)
    unknown, unknown_cold = ranker.score(ranker.state.states.num_users, products, at, logits=True)
    assert cold and unknown_cold
    np.testing.assert_allclose(occluded, unknown, rtol=0, atol=1e-6)
    own, _ = ranker.score(user, products, at, logits=True)
    assert not np.allclose(own, occluded, rtol=0, atol=1e-6)


def test_a_cold_start_has_no_reasons(recommender):
    """No purchases before the moment: nothing to remove, no reason (the API leaves it out)."""
    ranker, at = recommender.ranker, recommender.default_at
    unknown = ranker.state.states.num_users  # outside the state
    cold = ranker.rank([unknown], [at], k=5, explain=True)[0]
    assert cold.cold_start and cold.reasons is None and cold.explanations is not None


def test_a_model_without_attention_explains_with_reasons_alone(small_data, tmp_path):
    """No attention, no weights to show (no ``because``), but the reasons come from the scores."""
    from conftest import SMALL_MODEL

    from ncf.model.directory import save_untrained_model_dir

    data = small_data[0]
    model = save_untrained_model_dir(str(tmp_path / "m"), data, version="v1", **SMALL_MODEL, use_attention=False)
    recommender = Recommender.load(model, data=data)
    user = recommender.vocabs.users.raw_of(recommender.state.states.users()[:1])[0]
    ranked = recommender.rank([user], k=4, explain=True)[0]
    assert ranked.because is None and len(ranked.reasons) == len(ranked.product_ids) == 4


def test_attention_entropy_is_over_the_history_and_the_null_slot_is_apart():
    """Old code: the entropy of weights without the null slot's share, which do not sum to 1,
    set against log(n) of uniform weights that do."""
    # 0.6 on the null slot; the history's 0.3 and 0.1 renormalised: 0.75 and 0.25.
    entropy, null = attention_spread(np.array([[0.3, 0.1, 0.0], [0.0, 0.0, 0.0]]))
    assert entropy[0] == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert null[0] == pytest.approx(0.6)
    assert entropy[1] == 0.0 and null[1] == 1.0  # nothing attended: all on the null slot


def test_attention_on_one_past_purchase_has_no_entropy(recommender):
    """Old code: -w log w > 0 for the one attended place's weight w < 1 (the rest: null slot)."""
    ranker, at = recommender.ranker, recommender.default_at
    user = int(ranker.state.states.users()[0])
    history = ranker.state.states.timeline(user).history(np.array([at]), ranker.history_length)[0][0]
    product_rows = ranker.rows.product.copy()
    product_rows[history[1:]] = 0  # all but its latest purchase: unknown to the model's tables
    product_rows[history[0]] = ranker.rows.product[history[0]]
    rows = dataclasses.replace(ranker.rows, product=product_rows)
    ranking = Ranker(ranker.model, ranker.state, rows, ranker.settings).rank([user], [at], k=5, explain=True)[0]
    np.testing.assert_allclose(ranking.attention_entropy, 0.0, atol=1e-5)
    for because, null in zip(ranking.explanations, ranking.attention_null):
        assert 0 < null < 1 and because == [(int(history[0]), pytest.approx(1.0 - null, abs=1e-5))]


def test_many_households_in_one_call_equal_each_alone(recommender):
    served = recommender.ranker
    users = [int(u) for u in served.state.states.users()[:6]] + [0]  # the last: cold start
    # Moments days apart, each household's history cut at its own: products' statistics as of the earliest.
    at = [recommender.default_at - i * 86400 for i in range(len(users))]
    ranker = Ranker(served.model, served.state.as_of(min(at)), served.rows, served.settings)
    for exclude in (False, True):
        together = ranker.rank(users, at, k=5, exclude_purchased=exclude)
        assert len(together) == len(users)
        for user, moment, ranking in zip(users, at, together):
            alone = ranker.rank([user], [moment], k=5, exclude_purchased=exclude)[0]
            assert ranking.products.tolist() == alone.products.tolist() and ranking.cold_start == alone.cold_start
            np.testing.assert_allclose(ranking.scores, alone.scores, atol=1e-5)


def test_kept_first_stage_lists_equal_fresh_ones(recommender, monkeypatch):
    """Each household's MF top list is computed once (it does not depend on the moment) and
    kept; rankings from kept lists equal those of a ranker that keeps none."""
    r = recommender.ranker
    warmed = Ranker(r.model, r.state, r.rows, r.settings)
    assert warmed.warm() == len(r.state.states)
    # A step of 3 households' scores (a large catalog's): the same lists.
    monkeypatch.setattr(candidate_sources, "WARM_SCORES", 3 * len(r.state.vocabs.products))
    stepped = Ranker(r.model, r.state, r.rows, r.settings)
    steps, compute = [], stepped.candidates.mf._compute
    monkeypatch.setattr(stepped.candidates.mf, "_compute", lambda users: steps.append(len(users)) or compute(users))
    assert stepped.warm() == len(r.state.states) and max(steps) == 3
    assert np.array_equal(stepped.candidates.mf._top, warmed.candidates.mf._top)
    monkeypatch.setattr(ann, "MF_CACHE_MAX_ENTRIES", 0)
    fresh = Ranker(r.model, r.state, r.rows, r.settings)
    assert not fresh.candidates.mf.cached
    users = [int(u) for u in r.state.states.users()[:8]]
    at = [recommender.default_at + i * 3 * 86400 for i in range(len(users))]
    kept, recomputed = warmed.rank(users, at, k=10), fresh.rank(users, at, k=10)
    assert len(kept) == len(recomputed) == len(users)
    for a, b in zip(kept, recomputed):
        assert a.products.tolist() == b.products.tolist()


def test_the_warm_up_is_bounded_and_takes_the_most_recent_shoppers_first(recommender, monkeypatch):
    """Old code warmed every kept list at a replica's start: at 333k households of a 1M-product
    catalog (still kept lists) about 15 minutes of dot products before the first request. Now
    at most WARM_MAX_SCORES, the most recent shoppers first; the others compute their own list
    at their first ranking, the same list."""
    from ncf.rank import ranker as ranker_module

    r = recommender.ranker
    states = r.state.states
    users = states.users()
    last = states.timestamps[states.offsets[users + 1] - 1]
    monkeypatch.setattr(ranker_module, "WARM_MAX_SCORES", 5 * r.candidates.mf.products)
    bounded = Ranker(r.model, r.state, r.rows, r.settings)
    assert bounded.warm() == 5
    warmed = users[bounded.candidates.mf._known[users]]
    assert len(warmed) == 5 and last[np.isin(users, warmed)].min() >= np.sort(last)[-5]
    monkeypatch.setattr(ranker_module, "WARM_MAX_SCORES", 1 << 34)
    everyone = Ranker(r.model, r.state, r.rows, r.settings)
    assert everyone.warm() == len(users)
    later = [int(u) for u in users[~np.isin(users, warmed)][:6]]
    for a, b in zip(
        bounded.rank(later, [recommender.default_at] * 6), everyone.rank(later, [recommender.default_at] * 6)
    ):
        assert a.products.tolist() == b.products.tolist()
    assert bounded.candidates.mf._known[later].all()  # computed at their first ranking, and kept


def test_derived_recommenders_share_the_mf_first_stage_and_rank_the_same(recommender):
    """Old code: with_settings (Serve's --candidates, each reconfigure) built a new MF first stage
    and warmed every household's identical list again (1.13 s against 0.64 s on Complete
    Journey) beside the old copy; each past day's ranker held its own copy of the product vectors.
    Now the stage is reused whole where only other settings change, its vectors shared otherwise,
    and every ranking equals that of a ranker built on its own."""
    base = Recommender(recommender.ranker, recommender.version)  # past days kept apart from the fixture's
    r, mf = base.ranker, base.ranker.candidates.mf
    users = [int(u) for u in r.state.states.users()[:12]] + [0]

    def same_rankings(derived: Recommender, at: int) -> None:
        built = Ranker(r.model, derived.state, r.rows, derived.settings, r.mf_index)  # no stage shared
        assert built.candidates.mf is not mf
        moments = [at] * len(users)
        for a, b in zip(derived.ranker.rank(users, moments, k=10), built.rank(users, moments, k=10)):
            assert a.products.tolist() == b.products.tolist() and np.array_equal(a.scores, b.scores)

    fewer = base.with_settings(candidates=base.settings.candidates - 100)
    assert fewer.ranker.candidates.mf is mf and fewer.settings.candidates == base.settings.candidates - 100
    assert fewer.ranker.warm() == len(r.state.states)  # Serve warms the derived ranker: the base's lists
    assert mf._known[r.state.states.users()].all()
    same_rankings(fewer, base.default_at)
    narrower = base.with_settings(mf_candidates=base.settings.mf_candidates // 2)
    assert narrower.ranker.candidates.mf is not mf and narrower.ranker.candidates.mf._items is mf._items
    same_rankings(narrower, base.default_at)
    # A past day knowing fewer products: its own lists and penalty, the same product vectors.
    states = r.state.states
    first_bought = np.full(r.state.num_products, np.iinfo(np.int64).max)
    np.minimum.at(first_bought, states.products, states.timestamps)
    at = day_of(int(np.quantile(first_bought[first_bought < np.iinfo(np.int64).max], 0.5))) + 3600
    past = base.as_of(at)
    assert (past.ranker.candidates.known != r.candidates.known).any()
    assert past.ranker.candidates.mf is not mf and past.ranker.candidates.mf._items is mf._items
    same_rankings(past, at)
    # A past day after the last product's first purchase knows the same products: the same stage.
    at = day_of(int(first_bought[first_bought < np.iinfo(np.int64).max].max())) + 86_400 + 3600
    assert at <= base.state.end and base.as_of(at).ranker.candidates.mf is mf
    same_rankings(base.as_of(at), at)


def test_own_candidates_are_the_most_bought_recently(recommender):
    ranker = recommender.ranker
    user = int(ranker.state.states.users()[2])
    timeline = ranker.state.states.timeline(user)
    at = recommender.default_at
    candidates = ranker.candidates.for_household(user, timeline, at, False, None)
    own = timeline.aggregates(at, HALF_LIVES).most_bought(ranker.settings.own_candidates)
    assert candidates[: len(own)].tolist() == own[ranker.candidates.known[own]].tolist()


def test_category_candidates_are_the_best_sellers_of_the_households_categories(recommender):
    """The category source: the most bought products of the household's most bought categories
    (by the 365-day decayed count), best sellers first within each; with ``exclude_purchased``
    none the household bought."""
    ranker, at = recommender.ranker, recommender.default_at
    generator, catalog = ranker.candidates, ranker.state.catalog
    user = int(ranker.state.states.users()[1])
    timeline = ranker.state.states.timeline(user)
    mine = timeline.aggregates(at, CATEGORY_HALF_LIVES, categories=catalog.category)
    top = mine.keys[np.argsort(-mine.decayed[:, -1], kind="stable")[:CATEGORY_SPREAD]]
    bought = timeline.products_before(at)
    for skip in (None, bought):
        picked = generator._from_categories(timeline, at, skip)
        assert 0 < len(picked) <= ranker.settings.category_candidates
        assert set(catalog.category[picked].tolist()) <= set(top.tolist())
        assert generator.known[picked].all()
        for category in set(catalog.category[picked].tolist()):
            ours = picked[catalog.category[picked] == category]
            assert (np.diff(ranker.state.stats.recent_lines[ours]) <= 0).all()  # popularity_order's first key
    assert not np.isin(generator._from_categories(timeline, at, bought), bought).any()
    assert not np.isin(generator.for_household(user, timeline, at, True, None), bought).any()
    # Only each block's head is searched for what to skip (old code: every block whole), the same picks.
    products, starts = generator.by_category
    each = -(-ranker.settings.category_candidates // len(top))
    whole = [products[starts[c] : starts[c + 1]] for c in top.tolist()]
    expected = np.concatenate([b[~np.isin(b, bought)][:each] for b in whole])[: ranker.settings.category_candidates]
    assert generator._from_categories(timeline, at, bought).tolist() == expected.tolist()


def test_the_category_and_popular_sources_are_computed_only_for_lists_the_others_leave_short(recommender, monkeypatch):
    """A heavy buyer's own products, neighbours and MF list fill the candidates: its category and
    popular sources were computed, then cut. Now they are computed only for the households left
    short, and every list is still every source merged, then cut, in both modes."""
    at, users, skipped = recommender.default_at, recommender.ranker.state.states.users(), 0
    for candidates in (300, 120):  # 120: the small data's own products and neighbours fill it
        settings = dataclasses.replace(recommender.ranker.settings, candidates=candidates)
        ranker = recommender.ranker.derived(settings=settings)
        generator, s = ranker.candidates, ranker.settings
        from_categories, asked = generator._from_categories, []
        counted = lambda *args, f=from_categories, asked=asked: asked.append(1) or f(*args)  # noqa: E731
        monkeypatch.setattr(generator, "_from_categories", counted)
        for exclude in (False, True):
            for user, mf_top in zip(users.tolist(), generator.mf_top(users)):
                timeline = ranker.state.states.timeline(user)
                own = timeline.aggregates(at, HALF_LIVES)
                skip = own.keys if exclude else None
                first = [] if exclude else [own.most_bought(s.own_candidates)]
                first += [ranker.state.stats.neighbours.best(own, s.neighbour_candidates), mf_top[mf_top >= 0]]
                later = [from_categories(timeline, at, skip), generator.popular[: s.popular_candidates]]
                bought = own.keys if exclude else own.keys[:0]
                asked.clear()
                listed = generator.for_household(user, timeline, at, exclude, mf_top)
                every = _every_source_merged(generator, first + later, bought)
                assert listed[: len(every)].tolist() == every[: s.candidates].tolist(), (user, exclude)
                full = len(_every_source_merged(generator, first, bought)) >= s.candidates
                assert len(asked) == (0 if full else 1), (user, exclude)
                skipped += full
    assert skipped > 0  # some households' later sources were not computed


def _every_source_merged(generator, sources, bought):
    """The known products of ``sources`` not in ``bought``, once each, in order (as merged before
    the sources were computed lazily)."""
    products = pd.unique(np.concatenate(sources).astype(np.int64))
    products = products[generator.known[products]]
    return products[~np.isin(products, bought)]


def test_the_exclude_purchased_fill_up_takes_only_products_known_at_the_cutoff(recommender):
    """Old code: completed a short list from the whole popularity order, whose tail holds the
    products nobody bought before the cutoff."""
    _, _, timestamps = recommender.state.states.all_purchases()
    cutoff = int(np.quantile(timestamps, 0.2))
    state = recommender.state.as_of(cutoff)
    generator = CandidateGenerator(
        recommender.ranker.model, state, recommender.ranker.rows, RankingSettings(candidates=state.num_products)
    )
    assert (~generator.known[1:]).any()  # the drill: products unknown at the cutoff
    user = next(int(u) for u in state.states.users() if state.states.timeline(int(u)).count_before([cutoff])[0])
    timeline = state.states.timeline(user)
    candidates = generator.for_household(user, timeline, cutoff, True, None)
    assert generator.known[candidates].all()
    never_bought = generator.known & ~np.isin(np.arange(state.num_products), timeline.products_before(cutoff))
    assert sorted(candidates.tolist()) == np.flatnonzero(never_bought).tolist()


def test_evaluate_all_reports_model_and_baselines(small_model_dir, small_data):
    data, stats = small_data
    rows = evaluate_all(small_model_dir, data, TEST, max_users=40)
    names = ["advanced_ncf", "boosted_ranker", "tifu_knn", "decayed_frequency", "own_frequency", "als", "popularity"]
    assert [r["model"] for r in rows] == names
    for row in rows:
        assert row["users"] == 40
        for key in ("recall@10", "ndcg@10", "hr@10", "mrr@10", "mrr", "recall_lit@10"):
            assert 0.0 <= row[key] <= 1.0
        assert row["mrr@10"] <= row["mrr"] and row["mrr@10"] <= row["hr@10"]
        if row["model"] != "boosted_ranker":  # it scores its candidates only: no sampled protocol
            assert 0.0 <= row["sampled_hr@10"] <= 1.0 and 0.0 <= row["sampled_ndcg@10"] <= 1.0
        for key in ("repeat_recall@10", "explore_recall@10", "repeat_share@10"):
            assert 0.0 <= row[key] <= 1.0
        assert row["repeat_hits@10"] + row["explore_hits@10"] <= 10
        assert row["recall_lit@10"] <= row["recall@10"]
    by_name = {r["model"]: r for r in rows}
    # Tuned on the validation weeks: the chosen parameters and their validation figures.
    tuned = json.loads(open(f"{data}/baselines/tuned.json").read())
    for name in ("decayed_frequency", "tifu_knn", "boosted_ranker"):
        assert by_name[name]["params"] == tuned[name]["params"] and 0 <= by_name[name]["val_ndcg@10"] <= 1
        assert tuned[name]["val_start"] == stats["boundaries"]["val_start"]
    assert by_name["own_frequency"]["repeat_share@10"] > 0.9  # its top 10 is the household's own products
    baselines_only = evaluate_all(None, data, "test", max_users=40, baselines=BASELINES_WITHOUT_ALS)
    assert [r["model"] for r in baselines_only] == [n for n in names[1:] if n != "als"]
    alone = next(r for r in baselines_only if r["model"] == "own_frequency")
    assert {k: v for k, v in alone.items() if "seconds" not in k} == {
        k: v for k, v in by_name["own_frequency"].items() if "seconds" not in k and "minus_model" not in k
    }
    # Beside a model, each baseline's difference to it over the same households, with its paired
    # standard error; without one, none.
    assert not any("minus_model" in k for r in [rows[0], *baselines_only] for k in r)
    for row in rows[1:]:
        for metric in ("recall@10", "ndcg@10"):
            assert row[f"{metric}_minus_model"] == pytest.approx(row[metric] - rows[0][metric], abs=2e-4)
            assert row[f"{metric}_minus_model_se"] >= 0
    popularity = by_name["popularity"]
    assert popularity["recall@10_minus_model_se"] > 0  # rankings that differ, differ per household


def test_excluding_purchased_leaves_them_out_of_what_counts_as_relevant(small_model_dir, small_data):
    data, stats = small_data
    bounds = stats["boundaries"]
    state = Recommender.load(small_model_dir, data=data).state.as_of(bounds["test_start"])
    _, everything = point_in_time_period(state, TEST, bounds)
    _, period = point_in_time_period(state, TEST, bounds, exclude_purchased=True)
    for u in period.users:
        bought = state.states.timeline(int(u)).products_before(period.first_visit[int(u)])
        assert not np.isin(period.truth[int(u)], bought).any()
    assert period.only_rebought > 0  # the synthetic households rebuy: some bought nothing new
    assert len(period.users) + period.only_rebought == len(everything.users)
    rows = evaluate_all(small_model_dir, data, TEST, baselines=("popularity",), exclude_purchased=True)
    assert [r["users"] for r in rows] == [len(period.users)] * 2
    assert [r["period_users_only_rebought"] for r in rows] == [period.only_rebought] * 2
    assert [r["period_users"] for r in rows] == [len(period.users)] * 2
    assert all(r["repeat_share@10"] == 0.0 for r in rows)


def test_periods_hold_only_what_was_known_at_their_start(recommender, small_data):
    _, stats = small_data
    bounds = stats["boundaries"]
    state = recommender.state.as_of(bounds["test_start"])
    context, period = point_in_time_period(state, TEST, bounds)
    first_seen = state.vocabs.products.column("first_ts")
    assert all(period.first_visit[u] >= bounds["test_start"] for u in period.users)
    assert all((first_seen[period.truth[u]] < bounds["test_start"]).all() for u in period.users)
    assert all(state.states.timeline(u).count_before(np.array([bounds["test_start"]]))[0] > 0 for u in period.users)
    # The model ranks the catalog as known at the start only (its candidates come from there).
    ranker = Ranker(recommender.ranker.model, state, recommender.ranker.rows)
    users = period.users[:10]
    for ranking in ranker.rank(users, [period.first_visit[int(u)] for u in users], k=50):
        assert context.catalog[ranking.products].all()


@pytest.mark.faults
def test_the_boosted_ranker_trains_on_own_products_kept_at_a_sampled_rate(ray_session, tmp_path):
    """Old code: the booster's rows were those of log_q 0, but own products kept at
    --own-negative-rate r < 1 carry log r: it trained on neighbours and popular products alone,
    yet ranks mostly the household's own products."""
    import dataclasses

    from ncf.data import datasets, schema
    from ncf.data.preprocess import preprocess, small_config

    logs, catalog = datasets.write_synthetic(str(tmp_path / "raw"), datasets.SMALL)
    config = small_config()
    config = dataclasses.replace(config, examples=dataclasses.replace(config.examples, own_negative_rate=0.5))
    data = str(tmp_path / "data")
    preprocess(schema.resolve_files(logs), schema.resolve_files(catalog), data, config)
    cutoffs = layout.DataStats(data).cutoffs(VALIDATED)
    _, labels, log_q = training_rows(data, cutoffs)
    by_list = pa.concat_tables(
        pads.dataset(layout.examples_dir(data, c), format="parquet").to_table(columns=["label", "log_q"])
        for c in cutoffs
    ).to_pylist()
    own = np.float32(np.log(0.5))
    kinds = [np.float32(q) for row in by_list for q in row["log_q"]]
    assert kinds.count(own) > 1000 and kinds.count(np.float32(0.0)) > 0
    expected = [y for row in by_list for y, q in zip(row["label"], row["log_q"]) if np.float32(q) in (0.0, own)]
    assert labels.tolist() == expected
    # Each row's log_q comes with it: the booster's offset takes the own negatives' rate back out.
    assert sorted(set(log_q.tolist())) == [float(own), 0.0] and (log_q == own).sum() == kinds.count(own)
    from ncf.evaluate.baselines import BoostedRanker

    start = period_start(TEST, layout.DataStats(data).boundaries)
    state = RankingState.load(data).as_of(start)
    context = PointInTime.build(state.states, state.vocabs, start, data)
    booster = BoostedRanker(context, num_leaves=7, rounds=20)  # trained with the offset
    household = int(context.households()[0])
    assert len(set(booster.rank(household, start, 10).tolist())) == 10


def test_the_feature_mlp_bench_trains_on_the_boosted_rankers_rows_and_ranks_its_candidates(small_data):
    data, stats = small_data
    cutoffs = layout.DataStats(data).cutoffs(VALIDATED)
    lists = training_lists(data, cutoffs)
    features, labels, log_q = training_rows(data, cutoffs)
    assert not log_q.any()  # every own product kept (the default): no offset
    # The unsampled rows, read list by list on their own: the same labels, in the same order.
    by_list = pa.concat_tables(
        pads.dataset(layout.examples_dir(data, c), format="parquet").to_table(columns=["label", "log_q"])
        for c in cutoffs
    ).to_pylist()
    expected = [y for row in by_list for y, q in zip(row["label"], row["log_q"]) if q == 0.0]
    assert 0 < len(expected) < len(lists["label"]) and labels.tolist() == expected
    assert features.shape == (len(expected), lists["features"].shape[1])
    # Each row carries its own list's household: the first list, read on its own, comes first.
    first = pads.dataset(layout.examples_dir(data, cutoffs[0]), format="parquet").head(1).to_pylist()[0]
    n = len(first["product"])
    assert lists["product"][:n].tolist() == first["product"] and set(lists["user"][:n]) == {first["user"]}
    # ... and its list's number: a ranking objective's query groups, one per list, in order.
    sizes = [len(row["label"]) for row in by_list]
    assert np.bincount(lists["list"]).tolist() == sizes and (np.diff(lists["list"]) >= 0).all()

    rows = feature_mlp.main(
        ["--data", data, "--seeds", "1", "--epochs", "2", "--ids", "both", "--min-product-rows", "3"]
    )
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["min_product_rows"] == 3 for r in rows)
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["val_ndcg@10"] == max(r["val_ndcg@10"] for r in rows)
    for key in ("val_recall@10", "val_ndcg@10", "test_recall@10", "test_ndcg@10"):
        assert all(0.0 < r[key] <= 1.0 for r in rows)

    # It ranks the boosted ranker's candidates only: the household's own products, their
    # co-purchase neighbours and the popular ones.
    state = RankingState.load(data)
    context, period = point_in_time_period(
        state.as_of(period_start(TEST, stats["boundaries"])), TEST, stats["boundaries"], data
    )
    net = feature_mlp.FeatureMLP(
        len(features[0]),
        [8],
        "both",
        layout.DataStats(data).raw["vocab_sizes"]["num_users"],
        np.arange(state.num_products),
    )
    ranker = feature_mlp.FeatureMLPRanker(context, net.eval(), np.zeros(len(features[0])), np.ones(len(features[0])))
    popular = set(ranker.state.stats.popularity_order[: RankingSettings().popular_candidates].tolist())
    for user in period.users[:5].tolist():
        at = period.first_visit[user]
        bought = state.states.timeline(user).products_before(at)
        near = ranker.state.stats.neighbours.best(bought, RankingSettings().neighbour_candidates)
        ranked = ranker.rank(user, at, 10)
        assert 0 < len(ranked) <= 10 and set(ranked.tolist()) <= set(bought.tolist()) | set(near.tolist()) | popular

    # Products in fewer than 3 training rows share the unknown row 0.
    products = np.array([0, 0, 0, 0, 0, 2, 2, 3, 3, 3])
    assert feature_mlp.product_rows(products, 5, 3).tolist() == [0, 0, 0, 3, 0]
    assert feature_mlp.product_rows(products, 5, 0).tolist() == [0, 1, 2, 3, 4]


def test_the_boosted_rankers_rows_past_their_cap_are_whole_households_of_a_seeded_sample(small_data, capfd):
    data, _ = small_data
    cutoffs = layout.DataStats(data).cutoffs(VALIDATED)
    lists = training_lists(data, cutoffs)
    unsampled = lists["log_q"] == 0.0
    cap = int(unsampled.sum()) // 3
    features, labels, _ = training_rows(data, cutoffs, max_rows=cap, seed=1)
    assert 0 < len(labels) <= cap and "boosted ranker: training on" in capfd.readouterr().err
    # Every row is one of the chosen households' unsampled rows, each of their lists whole, in order.
    rows = {tuple(f) for f in features}
    users = np.unique(lists["user"][unsampled][[tuple(f) in rows for f in lists["features"][unsampled]]])
    chosen = unsampled & np.isin(lists["user"], users)
    assert np.array_equal(features, lists["features"][chosen]) and np.array_equal(labels, lists["label"][chosen])
    assert len(users) < len(np.unique(lists["user"]))
    # The same seed draws the same households; another seed others.
    assert np.array_equal(training_rows(data, cutoffs, max_rows=cap, seed=1)[1], labels)
    assert not np.array_equal(training_rows(data, cutoffs, max_rows=cap, seed=2)[0], features)


def test_rows_no_training_list_holds_rank_with_the_unknown_row(small_data):
    data, stats = small_data
    cutoffs = stats["cutoffs"]["validated"]
    vocabs = Vocabularies.load(layout.vocab_dir(data))
    sizes = vocabs.sizes()
    users, products = listed_rows(data, cutoffs, sizes["num_users"], sizes["num_products"])
    lists = pa.concat_tables(
        pads.dataset(layout.examples_dir(data, c), format="parquet").to_table(columns=["user", "product", "history"])
        for c in cutoffs
    ).to_pylist()
    assert set(np.flatnonzero(users).tolist()) == {0} | {row["user"] for row in lists}
    held = {0} | {p for row in lists for p in row["product"] + row["history"]}
    assert set(np.flatnonzero(products).tolist()) == held

    listed = users.copy()
    someone = int(np.flatnonzero(users[1:])[0]) + 1
    listed[someone] = False  # as if no list held this household
    rows = EmbeddingRows.between(vocabs, vocabs, max(cutoffs), (listed, products))
    assert rows.user[someone] == 0 and (rows.user[~users] == 0).all()
    assert (rows.product[~products] == 0).all()
    first_seen = vocabs.users.column("first_ts")
    kept = listed & (first_seen < max(cutoffs))
    assert (rows.user[kept] == np.flatnonzero(kept)).all()


def test_a_models_tables_are_not_loaded_again_when_the_state_holds_the_same_vocabularies(
    small_model_dir, small_data, tmp_path, monkeypatch
):
    data, _ = small_data
    handle = ModelDir(small_model_dir)
    tables = handle.table_vocabularies()
    calls = []

    def table_vocabularies(self):
        calls.append(self.path)
        return Vocabularies.load(layout.vocab_dir(self.state_dir))

    monkeypatch.setattr(ModelDir, "table_vocabularies", table_vocabularies)
    # Another numbering of the same households (as another preprocess may give) goes through the tables.
    vocabs = Vocabularies.load(layout.vocab_dir(data))
    reordered = Vocabulary.from_ids(vocabs.users.ids.to_pylist()[::-1], kind="int")
    Vocabularies(reordered, vocabs.products, vocabs.departments, vocabs.categories).save(str(tmp_path))
    for directory, loads in ((layout.vocab_dir(data), 0), (layout.vocab_dir(handle.state_dir), 0), (str(tmp_path), 1)):
        state = Vocabularies.load(directory)
        rows = EmbeddingRows.of_model(handle, state)
        expected = EmbeddingRows.between(tables, state, handle.rows_trained_before, handle.trained_rows)
        for name in ("user", "product", "department", "category"):
            assert np.array_equal(getattr(rows, name), getattr(expected, name)), (directory, name)
        assert len(calls) == loads, directory
        calls.clear()
    assert not np.array_equal(rows.user, EmbeddingRows.of_model(handle, vocabs).user)  # the reordering mattered


def test_the_ranker_objectives_bench_groups_the_rows_by_list_and_ranks_each_objective(small_data):
    data, _ = small_data
    # Lists whose rows were all left out are no query; the others keep their order and sizes.
    assert ranker_objectives.query_sizes(np.array([0, 0, 2, 3, 3, 3])).tolist() == [2, 1, 3]
    rows = ranker_objectives.main(["--data", data, "--seeds", "0", "--objectives", "binary,lambdarank"])
    assert [r["objective"] for r in rows] == ["binary", "lambdarank"]
    for key in ranker_objectives.METRICS:
        assert all(0.0 < r[key] <= 1.0 for r in rows)
    with pytest.raises(SystemExit):
        ranker_objectives.main(["--data", data, "--objectives", "binary,listnet"])


def test_the_feature_mlp_bench_encodes_features_piecewise_linearly_over_quantile_bins(small_data):
    encode = feature_mlp.PiecewiseLinear([np.array([0.0, 1.0, 3.0]), np.array([0.0, 10.0])])
    x = torch.tensor([[2.0, 5.0], [-1.0, 20.0], [5.0, 0.0]])
    # Per bin, how far through it the value is; the first bin extrapolates below, the last above;
    # the second feature's spare column stays 0.
    expected = [[1.0, 0.5, 0.5, 0.0], [-1.0, 0.0, 2.0, 0.0], [1.0, 2.0, 0.0, 0.0]]
    assert encode(x).tolist() == expected and encode.out_dim == 4
    # A constant feature still gets one bin; edges are distinct quantiles.
    edges = feature_mlp.quantile_edges(np.array([[0.0, 7.0], [1.0, 7.0], [2.0, 7.0], [3.0, 7.0]]), 2)
    assert edges[0].tolist() == [0.0, 1.5, 3.0] and edges[1].tolist() == [7.0, 8.0]

    data, _ = small_data
    rows = feature_mlp.main(["--data", data, "--seeds", "1", "--epochs", "1", "--encoding", "ple:4"])
    assert len(rows) == 1 and rows[0]["encoding"] == "ple:4" and 0.0 < rows[0]["test_ndcg@10"] <= 1.0


def test_a_past_moment_ranks_from_the_products_known_at_its_day_in_every_path(recommender):
    """Old code: Serve ranked a past `at` with the products' stats of the data's end (popularity and
    the catalog included purchases after the moment) while the nightly job recomputed them: the
    two answered differently, and the online one saw the future."""
    states = recommender.state.states
    first_bought = np.full(states.products.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(first_bought, states.products, states.timestamps)
    day = int(np.quantile(first_bought[first_bought < np.iinfo(np.int64).max], 0.5)) // 86_400 * 86_400
    at = day + 13 * 3600
    assert (first_bought >= day).sum() > 0 and at < recommender.state.end
    users = [int(u) for u in recommender.vocabs.users.ids.to_pylist()[:20]] + ["never-seen"]
    ranked = recommender.rank(users, k=10, at=at)
    replay = recommender.as_of(at)
    assert replay is recommender.as_of(day) and replay.state.end == day - 1  # one state per day, kept
    assert [r.product_ids for r in ranked] == replay.recommend(users, k=10, at=at)
    index = recommender.vocabs.products.index_of
    for r in ranked:  # nothing first bought on that day or later (cold-start lists included)
        assert (first_bought[index(r.product_ids)] < day).all(), r.user_id
    scores, _ = recommender.score_items(users[0], ranked[0].product_ids, at)
    np.testing.assert_allclose(scores, ranked[0].scores, rtol=1e-5)
    # The nightly job's driver computes a past day's stats once for all its actors: the same answers.
    given = Recommender(recommender.ranker, recommender.version).as_of(at, replay.state.stats)
    assert given.state.stats is replay.state.stats
    assert given.recommend(users, k=10, at=at) == replay.recommend(users, k=10, at=at)
    with pytest.raises(ValueError, match="product stats at"):
        Recommender(recommender.ranker, recommender.version).as_of(at - 86_400, replay.state.stats)


def _slow_pass_of(slow_day: int, monkeypatch):
    """Past days' passes, recorded; ``slow_day``'s sets ``entered`` and then waits for ``release``
    (30 s at most): a pass that is still running when the test asks for other days."""
    entered, release, passes = threading.Event(), threading.Event(), []
    original = RankingState.as_of

    def slow_as_of(state, cutoff, stats=None):
        passes.append(cutoff)
        if cutoff == slow_day:
            entered.set()
            release.wait(30)
        return original(state, cutoff, stats)

    monkeypatch.setattr(RankingState, "as_of", slow_as_of)
    return entered, release, passes


class _CountedLock:
    """A lock that counts the acquires asked of it (waiting ones included): a test waits for a
    caller to block on it, not a guessed while."""

    def __init__(self):
        self.inner, self.asked = threading.Lock(), 0

    def acquire(self, blocking=True):
        self.asked += 1
        return self.inner.acquire(blocking)

    def release(self):
        self.inner.release()

    def locked(self):
        return self.inner.locked()


def _until(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.mark.faults
def test_a_retried_pass_serves_the_caller_that_asked_for_its_day_after_the_failed_try(recommender, monkeypatch):
    """A's pass of a day fails and drops it; B, waiting on A's lock, retries; C comes between,
    finds no day, makes a new entry and waits for the pass lock. B's pass was kept for nobody, and
    C ran a second full pass (minutes at a billion purchases; a review of ncf/rank, 2026-12-08).
    Each step waits for the callers' locks, not for a guessed while."""
    monkeypatch.setattr(recommender_module._PastDay, "__init__", lambda day: _past_day(day, _CountedLock()))
    rec = Recommender(recommender.ranker, recommender.version)  # the Python API's: passes queue
    rec._passes.lock = _CountedLock()
    day = day_of(rec.state.end) - 86_400
    original, passes, gates = RankingState.as_of, [], [threading.Event() for _ in range(3)]

    def gated(state, cutoff, stats=None):
        turn = len(passes)
        passes.append(cutoff)
        gates[turn].wait(30)
        if turn == 0:
            raise RuntimeError("the first pass fails")
        return original(state, cutoff, stats)

    monkeypatch.setattr(RankingState, "as_of", gated)
    settle, settled_under_the_pass_lock = rec._settle, []

    def watched_settle(past, day, used_last=False):
        if past.recommender is not None:  # a computed pass: handed over before the lock is free
            settled_under_the_pass_lock.append(rec._passes.lock.locked())
            time.sleep(0.2)  # a caller waiting for the pass lock would take it meanwhile
        settle(past, day, used_last)

    monkeypatch.setattr(rec, "_settle", watched_settle)
    answers = {}

    def ask(name):
        try:
            answers[name] = rec.as_of(day + 60)
        except RuntimeError as e:
            answers[name] = e

    callers = {name: threading.Thread(target=ask, args=(name,)) for name in "ABC"}
    try:
        callers["A"].start()
        assert _until(lambda: len(passes) == 1)
        first = rec._days[day]
        callers["B"].start()
        assert _until(lambda: first.lock.asked == 2)  # B waits on A's lock of the day
        gates[0].set()
        assert _until(lambda: len(passes) == 2)  # A failed and dropped the day; B's retry runs
        callers["C"].start()
        assert _until(lambda: rec._passes.lock.asked == 3)  # C: a new entry, waiting for the pass lock
        newer = rec._days[day]
    finally:
        for gate in gates:
            gate.set()  # a third pass, were there one, would not wait
        for caller in callers.values():
            if caller.ident is not None:
                caller.join(30)
    assert isinstance(answers["A"], RuntimeError) and len(passes) == 2, passes
    assert settled_under_the_pass_lock == [True]
    assert answers["B"] is answers["C"] is newer.recommender and answers["C"].state.end == day - 1
    assert newer is not first and rec._days[day] is newer


def _past_day(day, lock) -> None:
    day.lock, day.recommender, day.running = lock, None, None


@pytest.mark.faults
def test_a_past_day_being_computed_does_not_hold_up_a_day_already_kept(recommender, monkeypatch):
    """Old code computed a past day's products' stats (a pass over every purchase: minutes at a
    billion) under the one lock that every past `at` takes, so a request for a day already kept
    waited behind another day's pass (and Serve's timeout answered it)."""
    rec = Recommender(recommender.ranker, recommender.version)
    kept_day = day_of(rec.state.end) - 86_400
    slow_day = kept_day - 86_400
    kept = rec.as_of(kept_day + 3600)
    entered, release, passes = _slow_pass_of(slow_day, monkeypatch)
    answers = {}

    def ask(name, at):
        answers[name] = rec.as_of(at)

    waiting = threading.Event()  # the second request of the slow day asks for its lock

    class Watched:  # the day's lock, telling when a second caller asks for it
        def __init__(self):
            self.inner, self.asked = threading.Lock(), 0

        def acquire(self, blocking=True):
            self.asked += 1
            if self.asked > 1:
                waiting.set()
            return self.inner.acquire(blocking)

        def release(self):
            self.inner.release()

    monkeypatch.setattr(recommender_module._PastDay, "__init__", lambda day: _past_day(day, Watched()))
    slow = threading.Thread(target=ask, args=("slow", slow_day + 3600))
    again = threading.Thread(target=ask, args=("slow again", slow_day + 60))
    meanwhile = threading.Thread(target=ask, args=("kept", kept_day + 7200))
    slow.start()
    try:
        assert entered.wait(30)
        again.start()
        # Waiting for the pass already running, not yet answered (a check made before it asked
        # would pass whether or not requests share the pass).
        assert waiting.wait(30)
        meanwhile.start()
        meanwhile.join(10)
        assert answers.get("kept") is kept  # answered while the other day's pass runs
        assert "slow again" not in answers  # waits for the pass already running
    finally:
        release.set()
        for thread in (slow, again, meanwhile):
            if thread.ident is not None:  # started
                thread.join(30)
    assert answers["slow"] is answers["slow again"] and answers["slow"].state.end == slow_day - 1
    assert passes.count(slow_day) == 1  # one pass for the day, not one per request


@pytest.mark.faults
def test_a_recommender_of_other_first_stage_sizes_shares_the_pass_limits(recommender):
    """Serve's rollout of another --candidates gives the replica a recommender of other settings
    (with_settings): it started with fresh pass limits, so a pass of the old one, still running
    for requests in flight, and one of the new ran at once, and the share of time began again (a
    review of the API, 2026-12-07). Its past days stay its own."""
    import time

    rec = Recommender(recommender.ranker, recommender.version, queue_passes=False, pass_share=0.25)
    wider = rec.with_settings(candidates=rec.settings.candidates + 10)
    day = day_of(rec.state.end) - 3 * 86_400
    with rec._passes.lock:  # the old recommender's pass, running
        with pytest.raises(PassBusy, match="another past day's products' stats are being computed"):
            wider.as_of(day + 60)
    rec._passes.next_at = time.monotonic() + 60  # the old one's last pass: its share not waited out
    with pytest.raises(PassBusy, match="at most 25% of its time"):
        wider.as_of(day + 60)
    rec._passes.next_at = 0.0
    assert wider.as_of(day + 60).settings == wider.settings and not rec._days  # its own day, its settings


@pytest.mark.faults
def test_a_recommender_that_does_not_queue_passes_refuses_another_new_day_meanwhile(recommender, monkeypatch):
    """Serve's replica queued every new past day behind the pass running, each request holding a
    worker thread for the pass's length (minutes at a billion purchases; the replica has 5). With
    ``queue_passes=False`` a request that would wait for a pass, for another day or for the day
    being computed, is refused at once (Serve: 503, Retry-After); a kept day is answered."""
    rec = Recommender(recommender.ranker, recommender.version, queue_passes=False)
    kept_day = day_of(rec.state.end) - 86_400
    slow_day, other_day = kept_day - 86_400, kept_day - 2 * 86_400
    kept = rec.as_of(kept_day + 3600)
    entered, release, _ = _slow_pass_of(slow_day, monkeypatch)
    answers = {}
    slow = threading.Thread(target=lambda: answers.setdefault("slow", rec.as_of(slow_day + 3600)))
    slow.start()
    try:
        assert entered.wait(30)
        assert rec.needs_pass(other_day + 60) and not rec.needs_pass(kept_day + 60)
        with pytest.raises(PassBusy, match="another past day's products' stats are being computed"):
            rec.as_of(other_day + 60)
        with pytest.raises(PassBusy, match="that day's products' stats are being computed"):
            rec.as_of(slow_day + 7200)
        assert rec.as_of(kept_day + 7200) is kept
        assert rec.needs_pass(other_day + 60)  # the refused day left nothing behind
        # Serve's batch (start_pass False): a kept day taken, a day not kept or being computed
        # refused for the route to rank, neither started nor dropped.
        assert rec.as_of(kept_day + 60, start_pass=False) is kept
        for not_kept in (other_day + 60, slow_day + 60):
            with pytest.raises(PassNeeded):
                rec.as_of(not_kept, start_pass=False)
        assert rec.needs_pass(other_day + 60) and day_of(slow_day) in rec._days
    finally:
        release.set()
        slow.join(30)
    assert answers["slow"].state.end == slow_day - 1
    assert rec.as_of(other_day + 60).state.end == other_day - 1  # the pass over, it is computed
    assert not rec.needs_pass(other_day + 60) and not rec.needs_pass(rec.default_at)


@pytest.mark.faults
def test_a_pass_longer_than_the_wait_goes_on_in_the_background_and_its_day_is_kept(recommender, monkeypatch):
    """Serve's first request for a new past day computed the day in its own worker thread: at a
    billion purchases (minutes) the proxy answered 504 after 30 s and the thread stayed held (a
    review, 2026-12-07). With ``pass_wait_s`` the pass runs in a thread of its own: the request
    that starts it waits that long, then gets PassBusy (503, Retry-After) while the pass goes on,
    as requests for that day meanwhile do at once; the day is kept for the next request, even
    where the kept days were all asked for meanwhile (a second read: it was the oldest, forgotten
    as it was computed); a pass that fails is the waiting request's error, and the next request
    tries again."""
    rec = Recommender(recommender.ranker, recommender.version, queue_passes=False, pass_wait_s=0.2)
    slow_day = day_of(rec.state.end) - 86_400
    kept_days = [slow_day - (i + 1) * 86_400 for i in range(AS_OF_DAYS)]
    kept = [rec.as_of(day + 60) for day in kept_days]  # short passes: answered within the wait
    entered, release, passes = _slow_pass_of(slow_day, monkeypatch)
    try:
        with pytest.raises(PassBusy, match="that day's products' stats are being computed") as busy:
            rec.as_of(slow_day + 3600)
        assert entered.is_set() and busy.value.retry_after_s >= 0.2
        with pytest.raises(PassBusy, match="that day's"):  # the same day meanwhile: no second pass
            rec.as_of(slow_day + 7200)
        with pytest.raises(PassBusy, match="another past day's") as other:
            rec.as_of(kept_days[-1] - 86_400 + 60)
        # When to ask again, from the passes before (short here: the floor of 1 s), not a flat 10 s.
        assert other.value.retry_after_s is not None and other.value.retry_after_s >= 1.0
        assert f"ask again in {math.ceil(other.value.retry_after_s)} s" in str(other.value)
        assert [rec.as_of(day + 120) for day in kept_days] == kept  # each used after the slow day's start
    finally:
        release.set()
    day = rec._days[slow_day]
    assert day.running.done.wait(30) and day.running.error is None
    assert not day.lock.locked() and not rec._passes.lock.locked()
    assert rec.as_of(slow_day + 60).state.end == slow_day - 1 and passes.count(slow_day) == 1
    assert rec.needs_pass(kept_days[0] + 60) and not rec.needs_pass(kept_days[-1] + 60)  # the oldest went

    def failing(state, cutoff, stats=None):
        raise MemoryError("the pass ran out of memory")

    monkeypatch.setattr(RankingState, "as_of", failing)
    failed_day = kept_days[-1] - 86_400
    with pytest.raises(MemoryError, match="ran out of memory"):
        rec.as_of(failed_day + 60)
    assert rec.needs_pass(failed_day + 60) and not rec._passes.lock.locked()
    with pytest.raises(ValueError, match="pass_wait_s"):
        Recommender(recommender.ranker, pass_wait_s=1.0)  # queued passes wait for themselves


@pytest.mark.faults
def test_a_replicas_passes_keep_to_their_share_of_its_time(recommender, monkeypatch):
    """A client cycling through past days made every request a new pass over every purchase, one
    after another (a helper's review): with ``pass_share`` 0.25, a pass of 2 s is followed by 6 s
    in which a new day is refused (Retry-After: the seconds left); kept days are answered."""
    from ncf.rank import recommender as recommender_module

    clock = [1000.0]
    monkeypatch.setattr(recommender_module.time, "monotonic", lambda: clock[0])
    original = RankingState.as_of

    def two_seconds(state, cutoff, stats=None):
        clock[0] += 2.0
        return original(state, cutoff, stats)

    monkeypatch.setattr(RankingState, "as_of", two_seconds)
    rec = Recommender(recommender.ranker, recommender.version, queue_passes=False, pass_share=0.25)
    days = [day_of(rec.state.end) - i * 86_400 for i in range(1, 4)]
    first = rec.as_of(days[0] + 60)
    clock[0] += 5.0
    with pytest.raises(PassBusy, match="at most 25% of its time") as busy:
        rec.as_of(days[1] + 60)
    assert busy.value.retry_after_s == pytest.approx(1.0)
    assert rec.as_of(days[0] + 7200) is first and rec.needs_pass(days[1] + 60)
    clock[0] += 1.0
    assert rec.as_of(days[1] + 60).state.end == days[1] - 1
    with pytest.raises(PassBusy):
        rec.as_of(days[2] + 60)
    with pytest.raises(ValueError, match="a share of time"):
        Recommender(recommender.ranker, pass_share=0)


@pytest.mark.faults
def test_a_past_day_that_fails_leaves_the_kept_days_kept(recommender):
    """The first change of the per-day locks made room for a day before computing it, so a day
    whose computation failed (here: stats of another day handed in) pushed a kept day out."""
    rec = Recommender(recommender.ranker, recommender.version)
    days = [day_of(rec.state.end) - i * 86_400 for i in range(1, AS_OF_DAYS + 1)]
    kept = [rec.as_of(day + 3600) for day in days]
    with pytest.raises(ValueError, match="product stats at"):
        rec.as_of(days[-1] - 86_400 + 3600, kept[0].state.stats)
    assert all(rec.as_of(day + 60) is known for day, known in zip(days, kept))  # none computed again
    assert rec.as_of(days[-1] - 86_400 + 3600).state.end == days[-1] - 86_400 - 1  # tried again, computed


@pytest.mark.faults
def test_households_at_moments_of_more_days_than_are_kept_compute_each_day_once(recommender, monkeypatch):
    """Old code took every household's day first, then ranked: moments on AS_OF_DAYS + 1 past days
    and then the first again forgot that first day before its second household and computed it
    twice, every day's state held at once (a review of ncf/rank, 2026-12-06)."""
    rec = Recommender(recommender.ranker, recommender.version)
    days = [day_of(rec.state.end) - i * 86_400 for i in range(1, AS_OF_DAYS + 2)]
    moments = [day + 3600 for day in days] + [days[0] + 7200]
    users = list(recommender.vocabs.users.raw_of(recommender.state.states.users()[: len(moments)]))
    computed = []
    as_of_day = RankingState.as_of
    monkeypatch.setattr(
        RankingState, "as_of", lambda state, day, *rest: computed.append(day) or as_of_day(state, day, *rest)
    )
    ranked = rec.rank(users, k=3, at=moments)
    assert sorted(computed) == sorted(days)  # once each
    for user, moment, ranking in zip(users, moments, ranked):
        assert ranking.product_ids == recommender.rank([user], k=3, at=moment)[0].product_ids
    # What no day can answer is refused before any day is computed (a pass over every purchase).
    fresh, computed[:] = Recommender(recommender.ranker, recommender.version), []
    with pytest.raises(ValueError, match="at most 100 products"):
        fresh.rank(users[:2], k=101, at=moments[:2])
    with pytest.raises(BeforeTheData):
        fresh.rank(users[:2], k=3, at=[moments[0], recommender.state.first_purchase])
    assert computed == []


@pytest.mark.faults
def test_a_moment_before_the_first_day_ended_is_refused_not_ranked_empty(recommender):
    """Old code answered an empty ranking for every household at a moment before the end of the
    data's first UTC day (no product known at that day's start), where the nightly job refuses
    the same --at: the two paths now share the rule (ncf.moments.first_rankable)."""
    first = recommender.state.first_purchase
    assert first == int(recommender.state.states.timestamps.min())
    user = recommender.vocabs.users.raw_of(recommender.state.states.users()[:1])[0]
    opens = first_rankable(first)
    ranked = recommender.rank([user, "never-seen"], k=5, at=opens)  # the first day's purchases are known
    assert all(len(r.product_ids) == 5 for r in ranked)
    for at in (first - 86_400, first, opens - 1):
        with pytest.raises(BeforeTheData, match=f"first purchase is on {run_date_of(first)}"):
            recommender.rank([user], k=5, at=at)
        with pytest.raises(BeforeTheData):
            recommender.score_items(user, ranked[0].product_ids, at)


@pytest.mark.faults
def test_moments_are_one_per_household_or_one_for_all(recommender):
    """Two moments for three households ranked two of them, without a word (zip)."""
    indices = recommender.state.states.users()[:3]
    users = recommender.vocabs.users.raw_of(indices)
    at = recommender.default_at
    with pytest.raises(ValueError, match="2 moments for 3 households"):
        recommender.rank(users, k=3, at=[at, at])
    with pytest.raises(ValueError, match="2 moments for 3 households"):
        recommender.ranker.rank(indices, [at, at], k=3)
    for k in (0, -1):  # old code: no products, or every candidate but the last
        with pytest.raises(ValueError, match="at least 1 product"):
            recommender.rank(users, k=k, at=at)
    # Old code: a list that could come back short without a word (the first stage guarantees 100).
    with pytest.raises(ValueError, match="at most 100 products"):
        recommender.rank(users, k=101, at=at)
    assert all(len(r.product_ids) == 100 for r in recommender.rank(users, k=100, at=at))
    each = recommender.rank(users, k=3, at=[at] * 3)
    assert [r.product_ids for r in each] == [r.product_ids for r in recommender.rank(users, k=3, at=at)]
    # A review of ncf/rank (session 67): one id where a list is asked was read character by
    # character ("12": households "1" and "2") or failed deep inside; k=2.5 failed in a slice and
    # k=True ranked one; a first stage of fewer candidates than k answered short lists.
    one = str(users[0])
    for wrong in (one, users[0], np.asarray(users[0])):
        with pytest.raises(TypeError, match="user_ids: a list of ids is asked, not one id"):
            recommender.rank(wrong, k=3, at=at)
    for column in (np.asarray(users).reshape(-1, 1), [[u] for u in users], pa.array([[u] for u in users])):
        with pytest.raises(TypeError, match="user_ids: a flat list of ids is asked, not a column"):
            recommender.rank(column, k=3, at=at)
    assert [r.user_id for r in recommender.rank(pa.array(list(users)), k=3, at=at)] == list(users)
    with pytest.raises(TypeError, match="product_ids: a list of ids is asked, not one id"):
        recommender.score_items(users[0], "12", at)
    for k in (2.5, True, "3", 3.0):
        with pytest.raises(ValueError, match="an integer number of products, not"):
            recommender.rank(users, k=k, at=at)
    assert all(len(r.product_ids) == 3 for r in recommender.rank(np.asarray(users), k=np.int64(3), at=at))
    narrow = recommender.with_settings(candidates=5)
    with pytest.raises(ValueError, match="the first stage keeps 5 candidates a household"):
        narrow.rank(users, k=6, at=at)
    assert all(len(r.product_ids) == 5 for r in narrow.rank(users, k=5, at=at))


def test_the_baselines_are_tuned_on_a_bounded_sample_of_validation_households(small_data, tmp_path, monkeypatch):
    """Every grid point ranked every validation household: at 10M households (4M of them in the
    validation weeks) weeks of tuning (the scale review of 2026-12-05). A seeded sample of
    TUNE_MAX_USERS is tuned on, the same each time, and tuned.json says how many."""
    import shutil

    from ncf.evaluate import evaluation, tuning
    from ncf.rank.state import RankingState

    data = str(tmp_path / "data")
    shutil.copytree(small_data[0], data)
    monkeypatch.setattr(evaluation, "log", lambda message: None)
    monkeypatch.setattr(evaluation, "TUNE_MAX_USERS", 7)
    state = RankingState.load(data)
    ((baseline, params, tuned),) = evaluation.tuned_baselines(data, state, names=["decayed_frequency"], retune=True)
    assert baseline.name == "decayed_frequency" and tuned.val_users == 7 and params == tuned.params
    kept = json.loads((tmp_path / "data" / "baselines" / "tuned.json").read_text())
    assert kept["decayed_frequency"]["val_users"] == 7
    monkeypatch.setattr(tuning, "tune", lambda *a, **k: pytest.fail("searched again"))
    ((_, again, _),) = evaluation.tuned_baselines(data, state, names=["decayed_frequency"])
    assert again == params  # the same sample: read back, not searched again
