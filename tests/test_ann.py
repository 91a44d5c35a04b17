"""The MF first stage's HNSW index (``ncf.model.ann``): written with the model directory when the
households' exact lists would not fit the cache, loaded (not rebuilt) by ranking, checked before
a rollout; on a tiny hand-made DATA (no Ray)."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch
from test_integrity import SMALL, tiny_data

from ncf.model import ann
from ncf.model.directory import save_untrained_model_dir
from ncf.model.integrity import ModelIntegrityError, verify_model_dir, write_manifest
from ncf.rank.recommender import Recommender


@pytest.fixture
def data(tmp_path):
    return tiny_data(str(tmp_path / "a"), users=30, products=60)


@pytest.fixture
def indexed_model(data, tmp_path, monkeypatch):
    """A model directory saved as if its households' lists did not fit the cache."""
    monkeypatch.setattr(ann, "MF_CACHE_MAX_ENTRIES", 0)
    return save_untrained_model_dir(str(tmp_path / "indexed"), data, version="v1", **SMALL)


def test_an_index_is_saved_for_a_model_within_headroom_of_needing_one(monkeypatch):
    """A model saved for 300k households (45M list entries, under the 50M cache) saved no index,
    and a DATA of 340k households then needed one: every replica and nightly actor built it
    (a review, 2026-12-05). Saved now once the households are within INDEX_HEADROOM of needing it."""
    from ncf.model import directory
    from ncf.model.config import ModelConfig

    weights = {ann._PRODUCT_TABLE: None, ann._MF_OUTPUT: None}
    width = ann.MF_CANDIDATES
    sizes = dict(num_products=1_000, num_departments=2, num_categories=3)
    near = ModelConfig(num_users=ann.MF_CACHE_MAX_ENTRIES // width * 3 // 4, **sizes)
    products = sizes["num_products"]
    assert not ann.needed(near.num_users, width, products)
    assert ann.needed(directory.INDEX_HEADROOM * near.num_users, width, products)
    assert directory.saves_index(weights, near)
    far = ModelConfig(num_users=ann.MF_CACHE_MAX_ENTRIES // width // (directory.INDEX_HEADROOM + 1), **sizes)
    assert not directory.saves_index(weights, far)
    assert not directory.saves_index({}, near)  # no MF path: no index


def test_a_large_catalog_searches_the_index_where_exact_lists_would_scan_it_too_long(data, tmp_path, monkeypatch):
    """Kept exact lists were chosen by households x width alone: 333k households of a 1M-product
    catalog each scanned the catalog once (about 3 ms; a quarter hour per replica). The catalog
    now counts: the index is saved and searched where households x products exceed the budget."""
    width = ann.MF_CANDIDATES
    assert not ann.needed(20_000, width, 68_000) and ann.needed(20_000, width, 1_000_000)
    assert ann.needed(333_000, width, 1_000_000) and not ann.needed(333_000, width, 1_000)
    # The tiny DATA's 30 households x 60 products, over a budget lowered below them: the save and
    # the load decide alike, the cache's entries left as they are.
    monkeypatch.setattr(ann, "MF_EXACT_MAX_SCORES", 30 * 60 - 1)
    model = save_untrained_model_dir(str(tmp_path / "wide"), data, version="v1", **SMALL)
    assert os.path.exists(ann.index_path(model))
    loaded = Recommender.load(model)
    assert loaded.ranker.mf_index is not None and not loaded.ranker.candidates.mf.cached


def test_a_model_saved_without_an_index_before_the_catalog_counted_keeps_exact_lists(
    data, tmp_path, monkeypatch, capsys
):
    """A model saved under the entries-only rule has no index where the catalog now asks for one:
    every replica and actor would build it at load (minutes at 1M products). Its exact lists are
    kept, as before, and a line says so."""
    model = save_untrained_model_dir(str(tmp_path / "older"), data, version="v1", **SMALL)
    assert not os.path.exists(ann.index_path(model))
    monkeypatch.setattr(ann, "MF_EXACT_MAX_SCORES", 30 * 60 - 1)  # the catalog now counts
    loaded = Recommender.load(model)
    assert loaded.ranker.mf_index is None and loaded.ranker.candidates.mf.cached
    err = capsys.readouterr().err
    assert "has no MF index for" in err and "building it now" not in err


def test_a_model_whose_lists_fit_the_cache_has_no_index(data, tmp_path):
    model = save_untrained_model_dir(str(tmp_path / "plain"), data, version="v1", **SMALL)
    assert not os.path.exists(ann.index_path(model))
    assert Recommender.load(model).ranker.candidates.mf.cached


def test_ranking_loads_the_saved_index_and_agrees_with_exact_lists(indexed_model, capsys):
    assert os.path.exists(ann.index_path(indexed_model))
    verify_model_dir(indexed_model)
    searched = Recommender.load(indexed_model)  # MF_CACHE_MAX_ENTRIES is still 0 here
    assert searched.ranker.mf_index is not None and not searched.ranker.candidates.mf.cached
    users = searched.state.states.users()
    mf_lists = searched.ranker.candidates.mf_top(users)
    assert "building it now" not in capsys.readouterr().err
    ann.MF_CACHE_MAX_ENTRIES = 50_000_000  # monkeypatch restores the default after the test
    exact = Recommender.load(indexed_model)
    assert exact.ranker.candidates.mf.cached
    # 60 products: the graph search visits all of them, so the lists are the exact ones.
    np.testing.assert_array_equal(mf_lists, exact.ranker.candidates.mf_top(users))
    at = [searched.default_at] * len(users)
    from_index, from_cache = searched.ranker.rank(users, at, k=5), exact.ranker.rank(users, at, k=5)
    assert len(from_index) == len(from_cache) == len(users)
    for a, b in zip(from_index, from_cache):
        assert a.products.tolist() == b.products.tolist()


def test_the_evaluation_ranks_with_the_saved_index(indexed_model, data, capsys):
    """jobs.train's test figure and jobs.evaluate rank the period with the index saved in the
    directory, as Serve does: at 10M households x 1M products building it again took minutes."""
    from ncf.evaluate.evaluation import model_on_period
    from ncf.splits import TEST

    ranker, period = model_on_period(indexed_model, data, TEST)
    assert ranker.mf_index is not None and not ranker.candidates.mf.cached and len(period.users)
    assert "building it now" not in capsys.readouterr().err


def test_exact_lists_on_request_build_no_index_and_keep_nothing(indexed_model, capsys, monkeypatch):
    """Training's validation ranks a few households of a model with no index yet: it asks for
    exact lists (an index built every epoch would take minutes at 1M products)."""
    from ncf.rank.ranker import Ranker

    os.remove(ann.index_path(indexed_model))
    loaded = Recommender.load(indexed_model, data=None)  # builds one: MF_CACHE_MAX_ENTRIES is 0
    capsys.readouterr()
    r = loaded.ranker
    exact = Ranker(r.model, r.state, r.rows, r.settings, exact_mf=True)
    assert "building it now" not in capsys.readouterr().err
    assert exact.candidates.mf.index is None and not exact.candidates.mf.cached
    # Derived with other settings, it stays exact: not an index built on the spot.
    wider = exact.derived(settings=dataclasses.replace(r.settings, candidates=r.settings.candidates + 1))
    assert wider.exact_mf and wider.candidates.mf.index is None
    assert "building it now" not in capsys.readouterr().err
    users = r.state.states.users()
    monkeypatch.setattr(ann, "MF_CACHE_MAX_ENTRIES", 50_000_000)
    kept = Ranker(r.model, r.state, r.rows, r.settings)
    assert kept.candidates.mf.cached
    np.testing.assert_array_equal(exact.candidates.mf_top(users), kept.candidates.mf_top(users))


@pytest.mark.faults
def test_a_directory_without_its_index_builds_one_and_says_so(indexed_model, capsys):
    os.remove(ann.index_path(indexed_model))
    recommender = Recommender.load(indexed_model)
    assert recommender.ranker.mf_index is not None and not recommender.ranker.candidates.mf.cached
    assert "building it now" in capsys.readouterr().err
    assert recommender.recommend([recommender.vocabs.users.raw_of([1])[0]], k=3)[0]
    # A recommender derived with other settings (Serve's --candidates) keeps the built index.
    derived = recommender.with_settings(candidates=recommender.ranker.settings.candidates + 1)
    assert derived.ranker.mf_index is recommender.ranker.mf_index
    assert "building it now" not in capsys.readouterr().err


def test_searches_keep_to_the_products_the_state_knows(indexed_model):
    index = ann.load_if_present(indexed_model)
    allowed = np.zeros(index.rows, bool)
    allowed[[3, 7, 11]] = True
    found = index.search(np.random.default_rng(0).normal(size=(4, index.dim)), 5, allowed)
    assert set(found[:, :3].ravel().tolist()) <= {3, 7, 11} and (found[:, 3:] == -1).all()


@pytest.mark.faults
def test_a_first_stage_of_no_mf_candidates_searches_nothing(indexed_model, monkeypatch):
    """``ranking.mf_candidates: 0`` passed the directory's check, and at scale (where the index is
    searched) every ranking failed on FAISS's bare ``assert k > 0``; an index was even built for
    it (a review of ncf/model, session 68). A width of 0 needs no index and finds nothing."""
    assert not ann.needed(10**9, 0, 10**6) and ann.needed(10**9, 1, 10**6)
    monkeypatch.setattr(ann, "EXACT_SEARCH_ROWS", 0)  # the graph search, as at scale
    monkeypatch.setattr(ann, "EXACT_COST_RATIO", 0)
    index = ann.load_if_present(indexed_model)
    found = index.search(np.zeros((4, index.dim)), 0, np.ones(index.rows, bool))
    assert found.shape == (4, 0)
    recommender = Recommender.load(indexed_model).with_settings(mf_candidates=0)
    # No MF stage at all, not one of empty lists (its product table, its warm-up of 2^34 dot
    # products at a replica's load, a scan of the catalog per household, for nothing).
    assert recommender.ranker.candidates.mf is None and recommender.ranker.warm() == 0
    users = recommender.state.states.users()[:3]
    assert all(len(products) == 3 for products in recommender.recommend(users.tolist(), k=3))


def test_the_first_stage_prepares_its_allowed_rows_once(indexed_model, monkeypatch):
    """Old code: every chunk's search got the same boolean mask and redid flatnonzero, astype and
    packbits over the whole of it (0.6 ms a chunk at 1M products). The stage prepares it once;
    a search given the prepared rows or the plain mask answers the same."""
    searched = Recommender.load(indexed_model)  # MF_CACHE_MAX_ENTRIES is 0 here: the index path
    mf = searched.ranker.candidates.mf
    monkeypatch.setattr(ann, "EXACT_SEARCH_ROWS", 0)  # 60 rows: the graph search, not the exact one
    monkeypatch.setattr(ann, "EXACT_COST_RATIO", 0)
    users = searched.state.states.users()
    packed, packbits = [], np.packbits
    monkeypatch.setattr(np, "packbits", lambda *a, **k: packed.append(1) or packbits(*a, **k))
    lists = np.concatenate([mf.top(users[i : i + 7]) for i in range(0, len(users), 7)])
    assert packed == [] and len(users) > 7
    queries = np.random.default_rng(0).normal(size=(4, mf.index.dim)).astype(np.float32)
    mask = np.zeros(mf.index.rows, bool)
    mask[1::2] = True
    for exact_below in (0, mf.index.rows):  # the graph search and the exact one
        monkeypatch.setattr(ann, "EXACT_SEARCH_ROWS", exact_below)
        np.testing.assert_array_equal(
            mf.index.search(queries, 10, ann.AllowedRows(mask)), mf.index.search(queries, 10, mask)
        )
    monkeypatch.setattr(ann, "MF_CACHE_MAX_ENTRIES", 50_000_000)
    exact = Recommender.load(indexed_model).ranker.candidates.mf
    assert exact.cached
    np.testing.assert_array_equal(lists, exact.top(users))  # 60 products: the graph visits them all


@pytest.mark.faults
def test_an_index_of_another_model_is_refused(indexed_model, data, tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "MF_CACHE_MAX_ENTRIES", 0)
    wide = save_untrained_model_dir(str(tmp_path / "wide"), data, version="w", **{**SMALL, "mf_embedding_dim": 16})
    shutil.copy(ann.index_path(wide), ann.index_path(indexed_model))
    write_manifest(indexed_model, unsealed=["metrics.json"])  # sealed again: the manifest cannot tell
    with pytest.raises(ModelIntegrityError, match="mf_index.faiss holds 61 vectors of 16"):
        verify_model_dir(indexed_model)
    # Another model of the same shape: its vectors, not its shape, give it away.
    twin = save_untrained_model_dir(str(tmp_path / "twin"), data, version="t", seed=1, **SMALL)
    shutil.copy(ann.index_path(twin), ann.index_path(indexed_model))
    write_manifest(indexed_model, unsealed=["metrics.json"])
    with pytest.raises(ModelIntegrityError, match="mf_index.faiss does not hold this model's MF vectors"):
        verify_model_dir(indexed_model)
    verify_model_dir(twin)  # its own index


@pytest.mark.faults
def test_an_index_of_another_kind_is_refused_before_faiss_reads_it(indexed_model, tmp_path):
    """FAISS reads any index kind, an IVF whose lists it maps from a file the index names, outside
    the directory and its seal (a review of model loading, 2026-12-07). Only what build() writes
    loads: an HNSW index of L2 distance over flat vectors."""
    import faiss

    vectors = ann.ProductIndex.load(ann.index_path(indexed_model)).vectors(np.arange(61))
    rows = np.hstack([vectors, np.zeros((61, 1), np.float32)])
    inner = faiss.IndexHNSWFlat(rows.shape[1], 8, faiss.METRIC_INNER_PRODUCT)
    flat = faiss.IndexFlatL2(rows.shape[1])
    # An inner-product HNSW's storage is FAISS's IndexFlatIP: its header says so first.
    for other, words in ((flat, "not an HNSW index of flat vectors"), (inner, "over storage b'IxFI', not flat")):
        other.add(rows)
        with open(ann.index_path(indexed_model), "wb") as f:
            f.write(faiss.serialize_index(other).tobytes())
        write_manifest(indexed_model, unsealed=["metrics.json"])  # sealed again: the manifest cannot tell
        with pytest.raises(ModelIntegrityError, match=f"mf_index.faiss does not load \\(.*{words}"):
            verify_model_dir(indexed_model)
    # An HNSW header over an IVF whose lists are a file outside: FAISS opened that file (read-write)
    # before the storage's kind was checked (a review of ncf/model, session 68). The storage's
    # header is read first now; the outside file is never opened.
    quantizer = faiss.IndexFlatL2(rows.shape[1])
    ivf = faiss.IndexIVFFlat(quantizer, rows.shape[1], 2)
    ivf.train(rows)
    outside = tmp_path / "outside.ivfdata"
    lists = faiss.OnDiskInvertedLists(2, ivf.code_size, str(outside))  # kept: owned by neither index
    ivf.replace_invlists(lists, False)
    ivf.add(rows)
    crafted = faiss.IndexHNSWFlat(rows.shape[1], 8)
    crafted.add(rows)
    crafted.storage, crafted.own_fields = ivf, False
    data = faiss.serialize_index(crafted).tobytes()
    assert data[:4] == ann.HNSW_FLAT  # what the first check read
    outside.unlink()  # FAISS's reader would create it again, opening the path read-write
    with open(ann.index_path(indexed_model), "wb") as f:
        f.write(data)
    write_manifest(indexed_model, unsealed=["metrics.json"])
    with pytest.raises(ModelIntegrityError, match="an HNSW index over storage b'IwFl', not flat vectors"):
        verify_model_dir(indexed_model)
    assert not outside.exists()
    with open(ann.index_path(indexed_model), "wb") as f:  # cut short in the graph's arrays
        f.write(data[:60])
    write_manifest(indexed_model, unsealed=["metrics.json"])
    with pytest.raises(ModelIntegrityError, match="cut short"):
        verify_model_dir(indexed_model)


@pytest.mark.faults
def test_an_index_saved_before_the_sign_of_final_counted_is_refused_as_such(indexed_model):
    """An index built before 2026-12-06 for a model whose final layer weighs the MF logit
    negatively holds its vectors negated: said as such, not as another model's. Flipping that
    weight's sign (sealed again) makes the saved index exactly that."""
    path = os.path.join(indexed_model, "model.pt")
    weights = torch.load(path, weights_only=True)
    weights[ann._FINAL][0, 0] = -weights[ann._FINAL][0, 0]
    torch.save(weights, path)
    write_manifest(indexed_model, unsealed=["metrics.json"])
    with pytest.raises(ModelIntegrityError, match="holds this model's MF vectors negated"):
        verify_model_dir(indexed_model)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_the_mf_first_stage_works_on_the_models_device(indexed_model, device):
    """Validation and batch_score --gpu rank with the model on a GPU: the first stage's table is
    there too, so its lookups and the lists it hands back must cross to and from it."""
    searched = Recommender.load(indexed_model, device=torch.device(device))
    users = searched.state.states.users()
    ann.MF_CACHE_MAX_ENTRIES = 50_000_000  # monkeypatch restores the default after the test
    exact = Recommender.load(indexed_model, device=torch.device(device))
    on_cpu = Recommender.load(indexed_model)
    assert not searched.ranker.candidates.mf.cached and exact.ranker.candidates.mf.cached
    expected = on_cpu.ranker.candidates.mf_top(users)
    np.testing.assert_array_equal(searched.ranker.candidates.mf_top(users), expected)
    np.testing.assert_array_equal(exact.ranker.candidates.mf_top(users), expected)


def test_a_households_exact_mf_scores_do_not_depend_on_how_many_are_computed_with_it():
    """BLAS sums a few rows with other kernels than a block of many: a household's exact MF list
    depended on whether it was computed alone (a request), with a few (a batch of cold starts)
    or in the warm-up (a review of ncf/rank, 2026-12-08: 9 of the first 64 block sizes differed
    here in their last bits)."""
    from ncf.rank.candidates import exact_mf_scores

    generator = torch.Generator().manual_seed(0)
    vectors, items = torch.randn(1024, 64, generator=generator), torch.randn(64, 5000, generator=generator)
    together = exact_mf_scores(vectors, items)
    for start, rows in [(0, n) for n in range(1, 65)] + [(100, 1), (100, 7), (500, 33)]:
        alone = exact_mf_scores(vectors[start : start + rows], items)
        assert torch.equal(alone, together[start : start + rows]), (start, rows)


@pytest.mark.faults
def test_a_search_among_few_allowed_rows_returns_them_all_in_exact_order(monkeypatch):
    """The filtered graph search visits about efSearch nodes and keeps the allowed ones: with 200
    of 20,000 rows allowed it came back 81% -1. A small allowed share is now ranked exactly; a
    larger one is searched deeper."""
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20_000, 8)).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    lift = np.sqrt(norms.max() ** 2 - norms**2)[:, None]
    graph = faiss.IndexHNSWFlat(9, ann.NEIGHBOURS, faiss.METRIC_L2)
    graph.add(np.hstack([vectors, lift]).astype(np.float32))
    index = ann.ProductIndex(graph)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    for allowed_rows, width, exact_below in (
        (200, 150, ann.EXACT_SEARCH_ROWS),
        (100, 150, 20_000),
        (2_000, 150, 1_000),
    ):
        monkeypatch.setattr(ann, "EXACT_SEARCH_ROWS", exact_below)
        monkeypatch.setattr(ann, "EXACT_COST_RATIO", 0 if exact_below < allowed_rows else ann.EXACT_COST_RATIO)
        allowed = np.zeros(20_000, bool)
        allowed[rng.choice(20_000, allowed_rows, replace=False)] = True
        found = index.search(queries, width, allowed)
        permitted = np.flatnonzero(allowed)
        exact = permitted[np.argsort(-(queries @ vectors[permitted].T), axis=1, kind="stable")[:, :width]]
        padded = np.full((5, width), -1)
        padded[:, : exact.shape[1]] = exact
        if allowed_rows <= exact_below:
            np.testing.assert_array_equal(found, padded)
        else:  # the deeper graph search: nothing missing, nearly the exact lists
            assert (found >= 0).all() and allowed[found].all()
            assert np.mean([len(set(f) & set(e)) / width for f, e in zip(found, exact)]) > 0.9


@pytest.mark.faults
def test_a_mask_of_another_length_is_refused_not_read_past(indexed_model, monkeypatch):
    """FAISS's bitmap selector reads as many bytes as it is told: a mask shorter than the index
    let it read past the bitmap (rows beyond the mask came back)."""
    index = ann.load_if_present(indexed_model)
    monkeypatch.setattr(ann, "EXACT_SEARCH_ROWS", 0)
    monkeypatch.setattr(ann, "EXACT_COST_RATIO", 0)  # the graph search, where the bitmap is read
    queries = np.random.default_rng(0).normal(size=(4, index.dim))
    with pytest.raises(ValueError, match="covers"):
        index.search(queries, 5, np.ones(index.rows - 9, bool))
    allowed = np.zeros(index.rows, bool)
    allowed[: index.rows // 2] = True
    found = index.search(queries, 5, allowed)
    assert (found >= 0).all() and allowed[found].all()


@pytest.mark.faults
def test_the_mf_lists_are_the_products_the_mf_path_scores_highest_whatever_finals_sign(indexed_model):
    """``final`` weighs the MF logit; where that weight is negative, the largest MF logits are the
    lowest final scores, and the first stage must list the other end."""
    weights = {k: v.clone() for k, v in torch.load(os.path.join(indexed_model, "model.pt"), weights_only=True).items()}
    users = weights["mf_embedding_collection.embedding_bags.user_mf_embeddings.weight"][1:6].float()
    products = weights[ann._PRODUCT_TABLE].float()
    for sign in (1.0, -1.0):
        weights[ann._FINAL][0, 0] = sign * 0.7
        # What the MF path adds to the final logit, household x product.
        added = 0.7 * sign * ((users[:, None, :] * products[None]) @ weights[ann._MF_OUTPUT][0].float())
        by_vectors = users.numpy() @ ann.product_vectors(weights).T
        listed = np.take_along_axis(added.numpy(), np.argsort(-by_vectors, axis=1)[:, :10], axis=1)
        np.testing.assert_allclose(listed, -np.sort(-added.numpy(), axis=1)[:, :10], rtol=1e-5, atol=1e-7)
