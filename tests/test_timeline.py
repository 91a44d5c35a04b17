"""Point-in-time features and training lists: nothing from the moment's own basket or later leaks in."""

from dataclasses import replace

import numpy as np
import pytest

from ncf.data.examples import Cutoff, ExampleConfig, household_lists
from ncf.data.features import FEATURES, NEVER_DAYS, Catalog, candidate_features
from ncf.data.product_stats import ProductStats
from ncf.data.timeline import UserTimeline, stable_order
from ncf.data.user_state import UserStates

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


def test_aggregates_count_only_earlier_purchases_by_hand():
    agg = timeline().aggregates(4 * DAY, half_lives=(1.0,))
    assert agg.keys.tolist() == [5, 7]  # 9 is bought at day 4 itself: not before the moment
    assert agg.lines.tolist() == [2, 1] and agg.days.tolist() == [2, 1]
    assert agg.last_age.tolist() == [2.0, 3.0] and agg.span_days.tolist() == [1.0, 0.0]
    assert agg.decayed[:, 0].tolist() == pytest.approx([0.5**2 + 0.5**3, 0.5**3])
    assert agg.typical_gap[0] == 1.0 and np.isnan(agg.typical_gap[1])  # 7: one day only
    assert agg.lookup(np.array([7, 9, 5])).tolist() == [1, -1, 0]
    assert agg.most_bought(1, half_life_column=0).tolist() == [5]


def _aggregates_by_key(products, times, at, half_lives, categories=None):
    """Each key's summaries one key at a time, as the docstrings define them."""
    before = times < at
    keys, times = products[before], times[before]
    if categories is not None:
        keys = categories[keys]
        keys, times = keys[keys > 0], times[keys > 0]
    rows = []
    for key in sorted(set(keys.tolist())):
        when = times[keys == key]  # time order
        days = when // DAY
        first_of_day = np.r_[True, days[1:] != days[:-1]]
        ages = (at - when) / DAY
        decayed = [sum(0.5 ** (age / h) for age in ages[first_of_day]) for h in half_lives]
        rows.append((key, len(when), first_of_day.sum(), ages.min(), days[-1] - days[0], decayed))
    return rows


def test_aggregates_equal_a_count_one_key_at_a_time_on_random_timelines():
    """Products and categories, lines on the same day and second, empty and one-line timelines."""
    rng = np.random.default_rng(7)
    categories = rng.integers(0, 6, 40)
    half_lives = (7.0, 30.0)
    for n in [0, 1, 2, 5, 50, 400] * 3:
        products = rng.integers(0, 40, n)
        times = rng.integers(0, 30, n) * DAY // 3 + rng.integers(0, 2, n)
        at = int(rng.integers(0, 11 * DAY))
        for cats in (None, categories):
            got = UserTimeline(products, times).aggregates(at, half_lives, cats)
            want = _aggregates_by_key(*_time_ordered(products, times), at, half_lives, cats)
            assert got.keys.tolist() == [row[0] for row in want]
            assert got.lines.tolist() == [row[1] for row in want]
            assert got.days.tolist() == [row[2] for row in want]
            assert got.last_age.tolist() == pytest.approx([row[3] for row in want])
            assert got.span_days.tolist() == [row[4] for row in want]
            assert got.decayed.reshape(-1).tolist() == pytest.approx([v for row in want for v in row[5]])


def _time_ordered(products, times):
    order = np.lexsort((products, times))
    return products[order], times[order]


def test_stable_order_is_numpys_stable_argsort():
    rng = np.random.default_rng(3)
    cases = [np.zeros(0, np.int64), np.array([5]), rng.integers(0, 4, 1000), rng.integers(0, 10**6, 20_000)]
    cases += [np.array([2**61, 3, 2**61, 0]), np.array([3, -1, 3, -1])]  # no room for positions; negative
    for keys in cases:
        assert stable_order(keys).tolist() == np.argsort(keys, kind="stable").tolist()


def test_most_bought_orders_by_the_chosen_decay_then_lines_then_id():
    # 3: three days about 300 days ago; 8: once yesterday; 4 and 2: one day 200 days ago, 4 on two
    # lines of it. Each ordering below puts a different product first.
    products = np.array([3, 3, 3, 4, 4, 2, 8])
    days = np.array([0, 1, 2, 100, 100, 100, 299])
    agg = UserTimeline(products, days * DAY).aggregates(300 * DAY, half_lives=(7.0, 365.0))
    assert agg.most_bought(4, half_life_column=0).tolist() == [8, 4, 2, 3]  # recent first
    assert agg.most_bought(4, half_life_column=1).tolist() == [3, 8, 4, 2]  # habits first
    assert agg.most_bought(2, half_life_column=1).tolist() == [3, 8]


def test_typical_gaps_count_utc_days_as_the_products_cycle_does():
    """Old code divided exact seconds: 23:00 then 01:00 the next day was a 0.08-day gap, while
    ProductStats counts the same purchases as one day apart (and the feature ``gap`` falls back
    from one to the other)."""
    hour = DAY // 24
    tl = UserTimeline(np.array([5, 5, 5, 6, 6]), np.array([23 * hour, DAY + hour, 3 * DAY + 12 * hour, 0, hour]))
    agg = tl.aggregates(10 * DAY, half_lives=(7.0,))
    assert agg.span_days.tolist() == [3.0, 0.0]
    assert agg.typical_gap[0] == 1.5 and np.isnan(agg.typical_gap[1])  # 6: twice on one day
    states = UserStates.from_purchases(np.ones(5, np.int64), tl.products, tl.timestamps, 2)
    assert ProductStats.compute(states, np.zeros(7, np.int64), 10 * DAY).cycle_days[5] == agg.typical_gap[0]


def test_the_unknown_category_is_no_category():
    """Old code pooled every product a partial catalog lacks (category 0) into one category:
    its cadence, due-ness and the category candidates mixed unrelated products."""
    category = np.array([0, 0, 0, 2, 2, 0])  # products 1, 2 and 5 unknown
    tl = UserTimeline(np.array([1, 2, 3, 5, 4]), np.array([0, 1, 2, 3, 4]) * DAY)
    agg = tl.aggregates(5 * DAY, half_lives=(7.0,), categories=category)
    assert agg.keys.tolist() == [2] and agg.days.tolist() == [2] and agg.typical_gap.tolist() == [2.0]
    assert agg.lookup(np.array([0, 2])).tolist() == [-1, 0]
    assert tl.aggregates(5 * DAY, half_lives=(7.0,)).keys.tolist() == [1, 2, 3, 4, 5]  # products: all
    stats = ProductStats.compute(UserStates.from_purchases(np.ones(5), tl.products, tl.timestamps, 2), category, 0)
    x = candidate_features(tl, np.array([1, 3]), 5 * DAY, Catalog(np.zeros(6, np.int64), category), stats)
    assert x[:, FEATURES.index("category_own")].tolist() == [0.0, 1.0]
    assert x[:, FEATURES.index("category_since")].tolist() == [NEVER_DAYS, 1.0]  # 3's category: 4 on day 4
    with pytest.raises(IndexError, match=r"in \[0, 6\)"):
        candidate_features(tl, np.array([-1]), 5 * DAY, Catalog(np.zeros(6, np.int64), category), stats)


def test_arrays_of_two_data_directories_are_refused_by_name():
    """Stats of another catalog raised a bare IndexError deep in the features (or, larger, were
    read silently), and a household past the vocabulary 'offsets, products and timestamps do
    not agree' (a review of ncf/data, 2026-12-06)."""
    tl = UserTimeline(np.array([1, 2]), np.array([0, 1]) * DAY)
    stats = _stats(num_products=12)
    for size in (6, 20):
        catalog = Catalog(np.zeros(size, np.int64), np.arange(size) % 3)
        with pytest.raises(ValueError, match="statistics hold 12 products and the catalog .*different DATA"):
            candidate_features(tl, np.array([1]), 5 * DAY, catalog, stats)
    with pytest.raises(ValueError, match=r"household indices must be in \[0, 3\)"):
        UserStates.from_purchases(np.array([1, 3]), np.array([5, 5]), np.array([0, 2]) * DAY, 3)


def _stats(num_products=12, cutoff=4 * DAY):
    states = UserStates.from_purchases(np.array([1, 1, 2]), np.array([5, 5, 3]), np.array([0, 2, 1]) * DAY, 3)
    return ProductStats.compute(states, np.arange(num_products) % 3, cutoff)


def test_features_are_rounded_to_float16_as_the_training_lists_were_written():
    """Through float32, as the lists' writer did: straight from float64 this value rounds up."""
    from ncf.data.features import on_lists_grid

    tie_in_float32 = 1 + 2**-11 + 2**-30
    assert float(np.float16(tie_in_float32)) > 1.0  # the rounding the lists never had
    assert on_lists_grid(np.array([[tie_in_float32]])).tolist() == [[1.0]]
    assert on_lists_grid(np.array([[np.log1p(12345)]])).tolist() == [[float(np.float16(np.float32(np.log1p(12345))))]]


def _float16(x):
    """``x`` on float16's grid, where the features are (the training lists store float16)."""
    return np.float32(x).astype(np.float16).astype(np.float32).tolist()


def test_candidate_features_by_hand():
    stats = _stats()
    catalog = Catalog(np.zeros(12, np.int64), np.arange(12) % 3)
    x = candidate_features(timeline(), np.array([5, 7, 11]), 4 * DAY, catalog, stats)
    col = {name: x[:, i] for i, name in enumerate(FEATURES)}
    assert col["own"].tolist() == [1.0, 1.0, 0.0]
    assert col["since"].tolist() == [2.0, 3.0, NEVER_DAYS]
    assert col["days_bought"].tolist() == _float16(np.log1p([2.0, 1.0, 0.0]))
    assert col["gap"][0] == 1.0  # the household's own cycle for 5
    assert col["gap"][1] == NEVER_DAYS  # bought on one day, and nobody's cycle for 7 is known
    assert col["due"][0] == _float16(np.log1p(2.0)) and col["due_known"].tolist() == [1.0, 0.0, 0.0]
    assert col["household_since"].tolist() == [2.0, 2.0, 2.0]  # last basket at day 2
    assert col["household_baskets"].tolist() == _float16([np.log1p(2)] * 3)
    assert col["product_lines"][0] == _float16(np.log1p(2))  # two lines of 5 before the cutoff


def test_features_refuse_product_stats_of_a_cutoff_after_the_moment():
    """Old code: candidate_features took stats of any cutoff: read at day 2, stats at day 4
    gave product 5 two purchase lines where those before the moment hold one (the other is of
    day 2 itself). Refused now; stats at the moment itself are fine."""
    stats, catalog = _stats(cutoff=4 * DAY), Catalog(np.zeros(12, np.int64), np.arange(12) % 3)
    with pytest.raises(ValueError, match=f"moment {2 * DAY} is before the product statistics' cutoff {4 * DAY}"):
        candidate_features(timeline(), np.array([5, 3]), 2 * DAY, catalog, stats)
    with pytest.raises(ValueError, match="before the product statistics' cutoff"):  # moments as an array
        candidate_features(timeline(), np.array([5]), np.array([5 * DAY, 3 * DAY]), catalog, stats)
    assert candidate_features(timeline(), np.array([5, 3]), 4 * DAY, catalog, stats).shape == (2, len(FEATURES))


def test_training_lists_label_the_window_and_correct_for_sampling():
    # Household 3: days 1, 2, 4 (before the cutoff at day 10), then 12 and 20 (in the window).
    group = {
        "user": np.full(7, 3),
        "product": np.array([7, 5, 5, 9, 5, 8, 5]),
        "ts": np.array([1, 1, 2, 4, 4, 12, 20]) * DAY,
    }
    products = np.arange(40)
    everyone = UserStates.from_purchases(np.repeat([1, 2], 20), np.tile(products[1:21], 2), np.repeat(DAY, 40), 4)
    stats = ProductStats.compute(everyone, products % 4, cutoff=10 * DAY)
    config = ExampleConfig(
        history_length=3, horizon_days=14, popular_candidates=2, sampled_negatives=5, uniform_negatives=0
    )
    cutoffs = [Cutoff.build(10 * DAY, stats, config.popular_candidates), Cutoff.build(DAY, stats, 2)]
    table = household_lists(group, config, Catalog(products % 2, products % 4), cutoffs)
    assert table.num_rows == 1  # the day-1 cutoff has no purchase before it: no list
    row = table.to_pylist()[0]
    assert row["moment"] == 12 * DAY and row["cutoff"] == 10 * DAY
    assert row["history"] == [5, 9, 5] or row["history"] == [9, 5, 5]  # the day-4 basket, then day 2
    product, label, log_q = np.array(row["product"]), np.array(row["label"]), np.array(row["log_q"])
    assert set(product[label == 1]) == {5, 8}  # bought in [day 10, day 24); 8 is known at the cutoff
    assert {5, 7, 9} <= set(product)  # every own product is a candidate
    near = stats.neighbours.best(np.array([5, 7, 9]), config.neighbour_candidates)
    assert len(near) and set(near) <= set(product)  # the products nearest to its own by co-purchase
    listed = np.isin(product, [5, 7, 9]) | np.isin(product, cutoffs[0].popular) | np.isin(product, near)
    assert (log_q[listed] == 0).all() and (log_q[~listed] < 0).all()
    assert len(row["features"]) == len(product) * len(FEATURES)


def test_own_products_left_out_stay_out_and_the_kept_ones_carry_their_rate():
    """--own-negative-rate below 1 keeps each own product at rate r: one left out came back as a
    popular candidate (log_q 0) or a sampled one. Every kept own product, a positive too, carries
    log(r): log_q may not depend on the label. Nor may cutoffs closer than the horizon overlap
    their labels."""
    own = np.arange(1, 31)  # products 1-30 bought before the cutoff; 5 bought again in the window
    group = {
        "user": np.full(31, 3),
        "product": np.append(own, 5),
        "ts": np.append(np.arange(1, 31) * DAY // 4 + DAY, 12 * DAY),
    }
    products = np.arange(60)
    everyone = UserStates.from_purchases(np.repeat([1, 2], 59), np.tile(products[1:], 2), np.repeat(DAY, 118), 4)
    stats = ProductStats.compute(everyone, products % 4, cutoff=10 * DAY)
    cutoff = Cutoff.build(10 * DAY, stats, 40)  # 40 popular: most of the household's own among them
    config = ExampleConfig(history_length=3, horizon_days=14, own_negative_rate=0.5, neighbour_candidates=0)
    for seed in range(20):
        row = household_lists(
            group, replace(config, seed=seed), Catalog(products % 2, products % 4), [cutoff]
        ).to_pylist()[0]
        log_q = dict(zip(row["product"], row["log_q"]))
        assert log_q[5] == pytest.approx(np.log(0.5))  # the positive: its kind's rate, not its label's
        kept = [p for p in own if p in log_q and p != 5]
        assert 0 < len(kept) < 29 and all(log_q[p] == pytest.approx(np.log(0.5)) for p in kept), log_q
    with pytest.raises(ValueError, match="cutoff_step_days 14 is below horizon_days 21"):
        ExampleConfig(horizon_days=21, cutoff_step_days=14)
    assert ExampleConfig(horizon_days=42).cutoff_step_days == 42  # was 35 whatever the horizon: refused


def test_uniform_negatives_reach_the_tail_and_are_corrected_for():
    # 40 products known at the cutoff; popularity sampling never draws the 20 bought only once.
    group = {"user": np.full(3, 3), "product": np.array([5, 5, 8]), "ts": np.array([1, 4, 12]) * DAY}
    products = np.arange(41)
    lines = np.concatenate([np.repeat(products[1:21], 500), products[21:41]])
    everyone = UserStates.from_purchases(np.ones(len(lines), np.int64), lines, np.full(len(lines), DAY), 2)
    stats = ProductStats.compute(everyone, products % 4, cutoff=10 * DAY)
    cutoff = Cutoff.build(10 * DAY, stats, 2)
    catalog = Catalog(products % 2, products % 4)

    def lists(uniform: int) -> dict:
        config = ExampleConfig(
            history_length=3,
            horizon_days=14,
            neighbour_candidates=0,  # one household bought everything: every product is a neighbour
            popular_candidates=2,
            sampled_negatives=5,
            uniform_negatives=uniform,
        )
        return household_lists(group, config, catalog, [cutoff]).to_pylist()[0]

    plain, uniform = lists(0), lists(30)
    assert plain["product"] == [p for p in uniform["product"] if p in plain["product"]]  # the default's draws kept
    tail = [p for p in uniform["product"] if p > 20]
    assert tail and not [p for p in plain["product"] if p > 20]
    log_q = dict(zip(uniform["product"], uniform["log_q"]))
    expected = np.log(5 * np.diff(cutoff.sampling_cdf, prepend=0.0)[tail] / cutoff.sampling_cdf[-1] + 30 / 40)
    assert [log_q[p] for p in tail] == pytest.approx(expected.tolist(), rel=1e-5)


def test_a_product_nobody_bought_before_the_cutoff_is_never_a_popular_candidate():
    # Three products known; product 3 is first bought in the window. With 50 popular candidates
    # asked for, it used to join the list as "popular" with log_q 0, labelled 0 though bought.
    everyone = UserStates.from_purchases(
        np.array([1, 1, 2, 2, 1]), np.array([1, 2, 1, 2, 3]), np.array([1, 2, 3, 4, 20]) * DAY, 3
    )
    catalog = Catalog(np.zeros(4, np.int64), np.zeros(4, np.int64))
    cutoff = Cutoff.build(10 * DAY, ProductStats.compute(everyone, catalog.category, 10 * DAY), 50)
    assert sorted(cutoff.popular) == [1, 2]
    group = {"user": np.ones(3, np.int64), "product": np.array([1, 2, 3]), "ts": np.array([1, 2, 20]) * DAY}
    row = household_lists(group, ExampleConfig(horizon_days=35), catalog, [cutoff]).to_pylist()[0]
    assert 3 not in row["product"]  # unknown at the cutoff: neither candidate nor label,
    assert row["bought_unknown"] == 1  # but counted


def test_inclusion_log_q_reads_each_products_own_weight():
    stats = ProductStats.compute(
        UserStates.from_purchases(np.ones(6, np.int64), np.array([1, 1, 1, 3, 4, 4]), np.full(6, DAY), 5),
        np.zeros(6, np.int64),
        cutoff=10 * DAY,
    )
    cutoff = Cutoff.build(10 * DAY, stats, 1)
    weights = np.where(stats.lines > 0, stats.lines, 0.0) ** 0.75
    weights[0] = 0.0
    products = np.array([0, 1, 2, 3, 4, 5, 1])
    expected = np.log(np.clip(4 * weights[products] / weights.sum() + 2 / 3, 1e-12, 1.0))
    assert cutoff.inclusion_log_q(products, 4, uniform_draws=2) == pytest.approx(expected)
