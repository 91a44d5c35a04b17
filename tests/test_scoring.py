"""Metrics, baselines, the scoring core and the evaluation on a small preprocessed dataset."""

import json

import numpy as np
import pytest
import torch

from ncf.data import layout
from ncf.data.vocab import Vocabularies
from ncf.evaluate.baselines import OwnFrequencyRanker, PointInTime, PopularityRanker, top_k
from ncf.evaluate.evaluation import evaluate_all, load_period
from ncf.evaluate.metrics import ranking_metrics
from ncf.model.advanced_ncf import AdvancedNCF, ModelConfig
from ncf.model.directory import save_model_dir
from ncf.rank.recommender import Recommender

SMALL_MODEL = {
    "mf_embedding_dim": 16,
    "mlp_embedding_dim": 16,
    "temporal_dim": 8,
    "mlp_hidden_dims": [32, 16],
    "history_length": 8,
}


def test_ranking_metrics_by_hand():
    m = ranking_metrics(np.array([3, 1, 2, 9]), np.array([1, 2]), k=2)
    assert m["recall"] == 0.5 and m["hr"] == 1.0 and m["mrr"] == 0.5
    assert m["ndcg"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert ranking_metrics(np.array([5, 6]), np.array([1]), k=2) == {
        "recall": 0.0,
        "recall_lit": 0.0,
        "ndcg": 0.0,
        "hr": 0.0,
        "mrr": 0.0,
    }
    # Recall divides by min(k, |relevant|): a perfect top-2 is 1 even with 3 relevant items.
    assert ranking_metrics(np.array([1, 2]), np.array([1, 2, 3]), k=2)["recall"] == 1.0


def test_top_k_never_returns_the_unknown_product():
    assert top_k(np.array([100.0, 1.0, 3.0, 2.0]), 2).tolist() == [2, 3]


@pytest.fixture(scope="module")
def recommender(small_data, tmp_path_factory):
    data, _ = small_data
    vocabs = Vocabularies.load(layout.vocab_dir(data))
    torch.manual_seed(0)
    config = ModelConfig(**vocabs.sizes(), **SMALL_MODEL)
    model_dir = save_model_dir(
        str(tmp_path_factory.mktemp("m") / "model"), AdvancedNCF(config).state_dict(), config, data
    )
    return Recommender.load(model_dir)


def test_own_frequency_ranks_the_users_staples_first(recommender):
    user = int(recommender.states.users()[0])
    timeline = recommender.states.timeline(user)
    context = PointInTime.build(recommender.states, recommender.vocabs, recommender.data_end)
    top = OwnFrequencyRanker(context).rank(user, recommender.data_end, 3)
    counts = np.bincount(timeline.products, minlength=recommender.num_products)
    assert counts[top[0]] == counts.max()
    assert np.all(np.diff(counts[top]) <= 0)
    assert PopularityRanker(context).rank(user, recommender.data_end, 1)[0] == int(np.argmax(recommender.popularity))


def test_recommend_returns_raw_ids_and_cold_start_for_unknown_users(recommender):
    raw_user = recommender.vocabs.users.raw_of([1])[0]
    lists = recommender.recommend([raw_user, "no-such-user"], k=5)
    assert [len(x) for x in lists] == [5, 5]
    assert all(isinstance(p, int) for p in lists[0])  # synthetic ids are integers
    known = set(recommender.vocabs.products.raw_of(np.arange(1, recommender.num_products)))
    assert set(lists[0]) <= known and set(lists[1]) <= known
    cold = recommender.rank_indices(0, k=5)
    assert cold.cold_start and recommender.rank_indices(1, k=5).cold_start is False


def test_score_names_unknown_products(recommender):
    raw_user = recommender.vocabs.users.raw_of([1])[0]
    products = recommender.vocabs.products.raw_of([1, 2])
    scores = recommender.score(raw_user, products)
    assert len(scores) == 2 and all(0 < s < 1 for s in scores)
    with pytest.raises(KeyError, match="no-such-product"):
        recommender.score(raw_user, [products[0], "no-such-product"])


def test_two_stage_ranking_agrees_with_brute_force_on_its_candidates(recommender):
    user = int(recommender.states.users()[3])
    two_stage = recommender.rank_indices(user, k=10)
    brute = recommender.rank_indices(user, k=recommender.num_products, brute_force=True)
    scores = dict(zip(brute.products.tolist(), brute.scores.tolist()))
    # The re-ranked candidates carry exactly the full model's scores, in its order.
    assert np.allclose([scores[p] for p in two_stage.products.tolist()], two_stage.scores, atol=1e-6)
    assert np.all(np.diff(two_stage.scores) <= 0)


def test_exclude_purchased_and_explanations(recommender):
    user = int(recommender.states.users()[5])
    at = recommender.data_end
    timeline = recommender.states.timeline(user)
    bought = set(timeline.products[timeline.timestamps < at].tolist())
    ranking = recommender.rank_indices(user, k=10, exclude_purchased=True, explain=True)
    assert not set(ranking.products.tolist()) & bought
    history, _ = timeline.history(np.array([at]), recommender.model.config.history_length)
    for items in ranking.explanations:
        assert items and all(product in set(history[0].tolist()) for product, _ in items)
        weights = [w for _, w in items]
        assert weights == sorted(weights, reverse=True) and all(0 < w <= 1 for w in weights)


def test_evaluate_all_reports_model_and_baselines(recommender, small_data):
    data, stats = small_data
    rows = evaluate_all(recommender, data, "test", max_users=40)
    names = ["advanced_ncf", "popularity", "own_frequency", "decayed_frequency", "tifu_knn", "als"]
    assert [r["model"] for r in rows] == names
    for row in rows:
        assert row["users"] == 40
        for key in ("recall@10", "ndcg@10", "hr@10", "mrr", "sampled_hr@10", "sampled_ndcg@10", "recall_lit@10"):
            assert 0.0 <= row[key] <= 1.0
        for key in ("repeat_recall@10", "explore_recall@10", "repeat_share@10"):
            assert 0.0 <= row[key] <= 1.0
        assert row["repeat_hits@10"] + row["explore_hits@10"] <= 10
        assert row["recall_lit@10"] <= row["recall@10"]
    by_name = {r["model"]: r for r in rows}
    # Tuned on the validation weeks: the chosen parameters and their validation figures.
    tuned = json.loads(open(f"{data}/baselines/tuned.json").read())
    for name in ("decayed_frequency", "tifu_knn"):
        assert by_name[name]["params"] == tuned[name]["params"] and 0 <= by_name[name]["val_ndcg@10"] <= 1
        assert tuned[name]["val_start"] == stats["boundaries"]["val_start"]
    assert by_name["own_frequency"]["repeat_share@10"] > 0.9  # its top 10 is the household's own products
    period = load_period(data, "test", stats["boundaries"])
    assert all(period.first_visit[u] >= stats["boundaries"]["test_start"] for u in period.users)
    with open(layout.stats_path(data)) as f:
        assert json.load(f)["boundaries"] == stats["boundaries"]
    baselines_only = evaluate_all(None, data, "test", max_users=40, with_als=False)
    assert [r["model"] for r in baselines_only] == names[1:-1]
    alone = baselines_only[1]
    assert {k: v for k, v in alone.items() if "seconds" not in k} == {
        k: v for k, v in by_name["own_frequency"].items() if "seconds" not in k
    }


def test_rank_many_equals_ranking_each_user_alone(recommender):
    users = [int(u) for u in recommender.states.users()[:6]] + [0]  # the last: cold start
    at = [recommender.data_end - i * 86400 for i in range(len(users))]
    for exclude in (False, True):
        together = recommender.rank_many(users, at, k=5, exclude_purchased=exclude)
        for user, moment, ranking in zip(users, at, together):
            alone = recommender.rank_indices(user, moment, k=5, exclude_purchased=exclude)
            assert ranking.products.tolist() == alone.products.tolist()
            assert ranking.cold_start == alone.cold_start
            np.testing.assert_allclose(ranking.scores, alone.scores, atol=1e-6)
    raw = recommender.vocabs.users.raw_of(users[:3])
    many = recommender.recommend_items_many(raw, k=4, at=at[:3])
    alone = [recommender.recommend_items(u, 4, a) for u, a in zip(raw, at[:3])]
    assert [[i["product_id"] for i in m["items"]] for m in many] == [
        [i["product_id"] for i in a["items"]] for a in alone
    ]


def test_kept_first_stage_lists_equal_fresh_ones(recommender, monkeypatch):
    """Each user's MF top list is computed once (it does not depend on the moment) and kept;
    rankings from kept lists must equal those of a recommender that keeps none."""
    parts = (recommender.model, recommender.vocabs, recommender.states, recommender.data_end)
    warmed = Recommender(*parts, settings=recommender.settings)
    assert warmed.warm_first_stage(chunk=7) == len(recommender.states)
    assert warmed.warm_first_stage() == 0  # all kept already
    monkeypatch.setattr("ncf.rank.recommender.FIRST_STAGE_CACHE_MAX_ENTRIES", 0)
    fresh = Recommender(*parts, settings=recommender.settings)
    users = [int(u) for u in recommender.states.users()[:8]]
    at = [recommender.data_end - i * 3 * 86400 for i in range(len(users))]
    for a, b in zip(warmed.rank_many(users, at, k=10), fresh.rank_many(users, at, k=10)):
        assert a.products.tolist() == b.products.tolist()
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
