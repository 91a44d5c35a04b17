"""Vocabulary lookups: ids a caller names are keyed as ingest keyed the log's."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ncf.data.vocab import FEW_IDS, UNKNOWN_INDEX, Vocabulary


@pytest.mark.faults
@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("prepared", [False, True])
def test_asked_ids_are_trimmed_and_whole_floats_read_as_integers_however_many(kind, prepared):
    """A household asked as "1364 " or "1364.0" (ingest keeps 1364) was unknown: the popular
    products instead of its own (a review of Serve, 2026-12-07). The same on both sides of
    FEW_IDS (a binary search below it, a vectorised lookup above), prepared or not; a lone
    surrogate (no UTF-8 text) is unknown, not an error."""
    vocab = Vocabulary.from_ids(pa.array(["1364", "7", "0"]), kind=kind)
    if prepared:
        vocab = vocab.prepare_lookup()
    asked = [" 1364 ", "1364.0", 1364, "-0.0", " 7", 7.0, None, "x", "12.5", "a\ud800"]
    expected = [1, 1, 1, 3, 2, 2, UNKNOWN_INDEX, UNKNOWN_INDEX, UNKNOWN_INDEX, UNKNOWN_INDEX]
    assert vocab.index_of(asked).tolist() == expected
    many = asked * (FEW_IDS // len(asked) + 1)
    assert len(many) > FEW_IDS
    assert vocab.index_of(many).tolist() == expected * (len(many) // len(asked))
    # A validated log's arrays are its own ids: looked up as they are.
    assert vocab.index_of(pa.array(["1364", " 1364"])).tolist() == [1, UNKNOWN_INDEX]
    assert np.asarray(vocab.index_of([])).size == 0
