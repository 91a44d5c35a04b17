"""One feature path: the inputs ranking builds equal the training lists preprocessing wrote."""

import numpy as np
import pyarrow.dataset as pads
import pytest

from ncf.data import layout
from ncf.data.examples import FEATURES, HISTORY, HISTORY_AGE_DAYS, MOMENT, PRODUCT, TIME_PARTS, USER
from ncf.data.features import CATEGORY_DURATION_COLUMNS, DURATION_COLUMNS, NUM_FEATURES
from ncf.jsonio import read_json
from ncf.model.directory import ModelDir
from ncf.rank.ranker import Ranker
from ncf.rank.state import EmbeddingRows, RankingState
from ncf.splits import VALIDATED


def test_ranking_inputs_equal_the_training_lists(small_data, small_model_dir):
    data, _ = small_data
    cutoff = read_json(layout.stats_path(data))["cutoffs"][VALIDATED][0]
    lists = pads.dataset(layout.examples_dir(data, cutoff), format="parquet").to_table().to_pylist()[:5]
    assert lists, "the small data has training lists at its latest validated cutoff"
    handle = ModelDir(small_model_dir)
    state = RankingState.load(data).as_of(cutoff)  # the products as known at the list's cutoff
    rows = EmbeddingRows.between(handle.table_vocabularies(), state.vocabs, handle.rows_trained_before)
    ranker = Ranker(handle.load_model(), state, rows)
    length = handle.load_model().config.history_length
    for row in lists:
        batch = ranker.inputs(row[USER], row[MOMENT], np.array(row[PRODUCT]))
        stored = np.array(row[FEATURES], np.float16).reshape(-1, NUM_FEATURES)
        # The same numbers, not only once rounded to the lists' float16: ranking's float32 inputs
        # once read log1p(12345) as 9.4211 where training had 9.4219.
        np.testing.assert_array_equal(batch.features.numpy(), stored.astype(np.float32))
        # Durations in whole days: TemporalEncoding reads the same slot in training as when ranking
        # (float16 once rounded 255.97 days up to slot 256).
        for columns in (DURATION_COLUMNS, CATEGORY_DURATION_COLUMNS):
            assert (stored[:, columns] == np.floor(stored[:, columns])).all()
        np.testing.assert_array_equal(batch.history.numpy()[0], np.array(row[HISTORY])[:length])
        np.testing.assert_allclose(batch.history_age_days.numpy()[0], np.array(row[HISTORY_AGE_DAYS])[:length])
        np.testing.assert_array_equal(batch.time_parts.numpy()[0], np.array(row[TIME_PARTS]))


@pytest.mark.faults
def test_a_moment_before_the_rankers_product_statistics_is_refused(small_data, small_model_dir):
    """A library caller ranking an earlier moment from a later state: its popularity, neighbours
    and cycles would hold purchases after the moment (a review, 2026-12-05)."""
    data, _ = small_data
    cutoff = read_json(layout.stats_path(data))["cutoffs"][VALIDATED][0]
    handle = ModelDir(small_model_dir)
    state = RankingState.load(data).as_of(cutoff)
    rows = EmbeddingRows.between(handle.table_vocabularies(), state.vocabs, handle.rows_trained_before)
    ranker = Ranker(handle.load_model(), state, rows)
    user = int(state.states.users()[0])
    assert len(ranker.rank([user], [cutoff], k=3)[0].products) == 3
    with pytest.raises(ValueError, match="before the product statistics' cutoff"):
        ranker.inputs(user, cutoff - 1, np.arange(1, 4))
    with pytest.raises(ValueError, match="before the product statistics' cutoff"):
        ranker.rank([user], [cutoff - 1], k=3)
