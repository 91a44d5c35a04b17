"""The state written from a stream, and product stats read a chunk of households at a time,
equal what the in-memory builds give: preprocessing at 10M households cannot hold the log."""

import numpy as np
import pytest

from ncf.data import catalog
from ncf.data.product_stats import ProductStats
from ncf.data.user_state import UserStates

DAY = 86_400


def purchases(seed: int = 0, users: int = 60, lines: int = 3_000):
    """A log with households of very different sizes (one holding a third of the lines), repeat
    days, same-basket lines and households without purchases."""
    rng = np.random.default_rng(seed)
    household = np.where(rng.random(lines) < 0.3, 7, rng.integers(1, users - 5, lines))
    product = rng.integers(1, 40, lines)
    ts = rng.integers(0, 60, lines) * DAY + rng.choice([0, 3_600, 50_000], lines)
    return household, product, ts, users


def sorted_batches(arrays, size: int):
    """The purchases sorted by household, time and product (as Ray Data's sort hands them to the
    driver), in batches of ``size``."""
    household, product, ts = (np.asarray(a) for a in arrays)
    order = np.lexsort((product, ts, household))
    ordered = [household[order], product[order], ts[order]]
    return [tuple(a[start : start + size] for a in ordered) for start in range(0, len(order), size)]


@pytest.mark.parametrize("batch_rows", [97, 10_000, 1])
def test_a_state_written_from_sorted_batches_equals_the_in_memory_build(tmp_path, batch_rows):
    household, product, ts, users = purchases()
    expected = UserStates.from_purchases(household, product, ts, users)
    written = UserStates.write(str(tmp_path), sorted_batches((household, product, ts), batch_rows), users, len(ts))
    for name in ("offsets", "products", "timestamps"):
        assert np.array_equal(getattr(written, name), getattr(expected, name))
        assert getattr(written, name).dtype == getattr(expected, name).dtype
    assert isinstance(written.products, np.memmap)  # a file, not the driver's memory
    assert np.array_equal(UserStates.load(str(tmp_path)).timestamps, expected.timestamps)


def test_a_stream_out_of_order_or_of_another_length_is_refused(tmp_path):
    household, product, ts, users = purchases()
    batches = sorted_batches((household, product, ts), 100)
    with pytest.raises(ValueError, match="not sorted"):  # two batches swapped
        UserStates.write(str(tmp_path / "a"), [batches[1], batches[0], *batches[2:]], users, len(ts))
    with pytest.raises(ValueError, match="not sorted"):  # within a batch: a basket's products
        u, p, t = batches[0]
        UserStates.write(str(tmp_path / "b"), [(u, p[::-1], t), *batches[1:]], users, len(ts))
    with pytest.raises(ValueError, match="written, "):
        UserStates.write(str(tmp_path / "c"), batches[:-1], users, len(ts))
    with pytest.raises(ValueError, match="more than"):
        UserStates.write(str(tmp_path / "d"), batches, users, len(ts) - 1)
    with pytest.raises(ValueError, match="outside"):
        UserStates.write(str(tmp_path / "e"), [(np.array([users]), np.array([1]), np.array([0]))], users, 1)


def test_chunks_cover_every_purchase_once_in_whole_households():
    household, product, ts, users = purchases()
    states = UserStates.from_purchases(household, product, ts, users)
    chunks = list(states.chunks(chunk_rows=100))
    assert len(chunks) > 5
    # Household 7 holds about a third of the lines, more than a chunk: it is one chunk alone.
    assert any(set(u.tolist()) == {7} for u, _, _ in chunks)
    seen = [set(u.tolist()) for u, _, _ in chunks]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1 :])
    joined = [np.concatenate(parts) for parts in zip(*chunks)]
    for got, want in zip(joined, states.all_purchases(), strict=True):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("cutoff_day", [0, 17, 40, 61])
def test_product_stats_do_not_depend_on_the_chunks_they_are_read_in(cutoff_day):
    household, product, ts, users = purchases(seed=3)
    states = UserStates.from_purchases(household, product, ts, users)
    category = np.arange(45) % 4
    whole = ProductStats.compute(states, category, cutoff_day * DAY)
    for chunk_rows in (1, 64, 500):
        chunked = ProductStats.compute(states, category, cutoff_day * DAY, chunk_rows=chunk_rows)
        for name in ("lines", "recent_lines", "buyers", "rebuy_rate", "cycle_days", "by_hour"):
            assert np.array_equal(getattr(chunked, name), getattr(whole, name), equal_nan=True), name
        for name in ("indptr", "indices", "weights"):
            assert np.array_equal(getattr(chunked.neighbours, name), getattr(whole.neighbours, name)), name
    if cutoff_day >= 40:
        assert np.isfinite(whole.cycle_days).sum() > 10  # the medians were computed, not all NaN


def test_product_stats_by_hand():
    # Household 1 buys product 5 on days 0, 2 and 6 (gaps 3 days on average), household 2 on
    # days 1 and 2 (gap 1), household 3 once: median cycle (3 + 1) / 2 = 2, rebuy rate 2 / 3.
    states = UserStates.from_purchases(
        np.array([1, 1, 1, 2, 2, 3, 3]),
        np.array([5, 5, 5, 5, 5, 5, 6]),
        np.array([0, 2, 6, 1, 2, 3, 3]) * DAY + 3_600 * np.array([0, 0, 0, 0, 0, 0, 5]),
        4,
    )
    for chunk_rows in (1, 100):
        stats = ProductStats.compute(states, np.zeros(8, np.int64), 10 * DAY, chunk_rows=chunk_rows)
        assert stats.lines[5] == 6 and stats.buyers[5] == 3
        assert stats.rebuy_rate[5] == pytest.approx(2 / 3) and stats.cycle_days[5] == 2.0
        assert np.isnan(stats.cycle_days[6]) and stats.rebuy_rate[6] == 0.0
        assert stats.by_hour[5][0] == 6  # product 6's only line is at 05:00
        assert stats.by_hour[0][0] == 5


def test_households_and_popularity_before_a_moment():
    household, product, ts, users = purchases(seed=5)
    states = UserStates.from_purchases(household, product, ts, users)
    for start in (0, 1, 20 * DAY, 100 * DAY):
        before = ts < start
        assert catalog.households_before(states, start).tolist() == sorted(set(household[before].tolist()))
        counts = np.bincount(product[before], minlength=50)[:50].astype(float)
        counts[0] = 0.0
        assert np.array_equal(catalog.popularity_before(states, start, 50), counts)


@pytest.mark.faults
def test_a_malformed_state_and_the_unknown_rows_are_refused_or_zero(tmp_path):
    """Offsets that went back gave a household an empty history yet counted it; a product index
    past the catalog vanished from the popularity; the unknown product's row held counts its
    docstring says it has not; a float id found a household in an Arrow array and not in a list;
    index -1 (the MF stage's "none found") came back as the first product's id (a review,
    2026-12-05)."""
    import pyarrow as pa

    from ncf.data.vocab import Vocabulary

    with pytest.raises(ValueError, match="never decrease"):
        UserStates(np.array([0, 5, 3, 6]), np.zeros(6, np.int32), np.zeros(6, np.int64))
    states = UserStates.from_purchases(np.array([1, 1, 2]), np.array([0, 2, 7]), np.array([0, DAY, DAY]), 3)
    with pytest.raises(ValueError, match="product index 7 past the 3 products"):
        catalog.popularity_before(states, 2 * DAY, 3)
    stats = ProductStats.compute(states, np.zeros(8, np.int64), 2 * DAY)
    assert stats.lines[0] == stats.buyers[0] == stats.recent_lines[0] == 0 and np.isnan(stats.cycle_days[0])
    assert stats.lines[2] == 1
    ids = Vocabulary.from_ids(["5", "12"], "int")
    for raw in ([12.0], np.array([12.0]), pa.array([12.0]), [12.0] * 1_001, [12]):
        assert ids.index_of(raw)[0] == 2, raw
    assert ids.index_of([12.5])[0] == 0
    # Text ids too are kept as ingest keeps them (12.0 is 12): an asked 12.0 or "12.0" is "12".
    assert Vocabulary.from_ids(["12", "a"]).index_of([12.0, "12.0", " a"]).tolist() == [1, 1, 2]
    assert ids.raw_of([0, 2]) == [None, 12]
    for outside in ([-1], [3]):
        with pytest.raises(IndexError):
            ids.raw_of(outside)


@pytest.mark.parametrize("user_spread", [1, 2**45])
def test_distinct_entries_are_the_same_with_one_key_or_three(user_spread):
    # 2**45 apart, (household, product, day) no longer fits one int64 key: the lexsort path.
    from ncf.data.product_stats import _distinct_sorted

    rng = np.random.default_rng(7)
    users = rng.integers(0, 50, 5_000) * user_spread
    products, days = rng.integers(0, 2**20, 5_000), rng.integers(17_000, 17_400, 5_000)
    users, products, days = np.r_[users, users[:100]], np.r_[products, products[:100]], np.r_[days, days[:100]]
    expected = np.unique(np.stack([users, products, days], axis=1), axis=0)
    got = np.stack(_distinct_sorted(users, products, days), axis=1)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("exclude_purchased", [False, True])
def test_a_held_out_period_read_a_few_households_at_a_time_is_the_same(monkeypatch, exclude_purchased):
    from ncf.evaluate.protocol import load_period

    household, product, ts, users = purchases(seed=11)
    states = UserStates.from_purchases(household, product, ts, users)
    boundaries = {"val_start": 40 * DAY, "test_start": 50 * DAY, "end": 60 * DAY}
    households = np.arange(0, users, 2)
    catalog = np.arange(45) % 5 != 0

    def period():
        return load_period(states, "test", boundaries, catalog, households, exclude_purchased)

    whole = period()
    whole_chunks = UserStates.chunks
    monkeypatch.setattr(UserStates, "chunks", lambda self, chunk_rows=0, **kw: whole_chunks(self, 7, **kw))
    assert len(list(states.chunks())) > 10
    chunked = period()
    assert whole.truth.keys() == chunked.truth.keys() and len(whole.truth) > 10
    assert all(np.array_equal(whole.truth[u], chunked.truth[u]) for u in whole.truth)
    assert (whole.first_visit, whole.only_rebought) == (chunked.first_visit, chunked.only_rebought)
    assert {u: b.tolist() for u, b in whole.first_basket.items()} == {
        u: b.tolist() for u, b in chunked.first_basket.items()
    }
    assert set(whole.truth) <= set(households.tolist())
    if exclude_purchased:
        assert whole.only_rebought > 0
        for u, relevant in whole.truth.items():  # nothing bought before the first visit is relevant
            before = product[(household == u) & (ts < whole.first_visit[u])]
            assert not np.isin(relevant, before).any()


def test_households_whose_period_purchases_are_all_outside_the_catalog_are_counted():
    """They were left out of the period without a count, against the README's "every household
    with purchases in the period and before it is ranked"."""
    from ncf.evaluate.protocol import load_period

    # Households 1 and 2 buy in the period; household 2 only product 3, outside the catalog.
    household = np.array([1, 1, 2, 2, 1, 2])
    product = np.array([1, 2, 1, 2, 2, 3])
    ts = np.array([1, 2, 1, 2, 55, 55]) * DAY
    states = UserStates.from_purchases(household, product, ts, 3)
    boundaries = {"val_start": 40 * DAY, "test_start": 50 * DAY, "end": 60 * DAY}
    catalog = np.array([False, True, True, False])
    period = load_period(states, "test", boundaries, catalog)
    assert list(period.truth) == [1] and period.only_new_products == 1
    assert load_period(states, "test", boundaries).only_new_products == 0
    # Household 3 buys in the period only, never before it: not ranked (the protocol's households
    # have purchases before it), and now counted (a review of ncf/evaluate, 2026-12-08: 7 such
    # households of Complete Journey's test weeks were in no count).
    household, product, ts = np.append(household, 3), np.append(product, 1), np.append(ts, 52 * DAY)
    states = UserStates.from_purchases(household, product, ts, 4)
    known = np.array([1, 2])  # ncf.data.catalog.households_before the period's start
    period = load_period(states, "test", boundaries, catalog, known)
    assert list(period.truth) == [1] and (period.only_new_products, period.without_history) == (1, 1)
