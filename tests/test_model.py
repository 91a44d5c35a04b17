"""AdvancedNCF: shapes, gradients, ablation switches, determinism, save/load, devices."""

import dataclasses
import io

import pytest
import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ncf.data.features import CATEGORY_COLUMNS, DURATION_COLUMNS, NEIGHBOUR_COLUMNS, TIMING_COLUMNS
from ncf.device import default_device
from ncf.model import AdvancedNCF, ModelConfig, example_batch
from ncf.model.advanced_ncf import PRODUCT_KEY, USER_KEY, lookup, lookup_distinct
from ncf.model.config import SWITCHES
from ncf.model.modules import CategoryHierarchy, MultiHeadAttention, TemporalEncoding


def small_config(**overrides) -> ModelConfig:
    base = dict(num_users=50, num_products=200, num_departments=6, num_categories=30, history_length=8)
    return ModelConfig(**{**base, **overrides})


def test_output_is_n_probabilities_through_final():
    config = small_config()
    model = AdvancedNCF(config).eval()
    batch = example_batch(config, contexts=4, candidates_per_context=5)
    probs = model(batch)
    assert probs.shape == (20,) and torch.all((probs > 0) & (probs < 1))
    logits = model(batch, return_logits=True)
    torch.testing.assert_close(torch.sigmoid(logits), probs)
    # forward is final (Linear(2, 1) + Sigmoid) over the two paths: changing final's weights changes it.
    with torch.no_grad():
        model.final[0].bias.add_(1.0)
    assert torch.all(model(batch) > probs)


def test_seed_names_and_types():
    model = AdvancedNCF(small_config())
    assert isinstance(model.mf_embedding_collection, EmbeddingBagCollection)
    assert isinstance(model.mlp_embedding_collection, EmbeddingBagCollection)
    assert set(model.mf_embedding_collection.embedding_bags) == {"user_mf_embeddings", "product_mf_embeddings"}
    assert set(model.mlp_embedding_collection.embedding_bags) == {"user_mlp_embeddings", "product_mlp_embeddings"}
    assert isinstance(model.temporal_encoding, TemporalEncoding)
    assert isinstance(model.history_attention, MultiHeadAttention)
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert isinstance(getattr(model.history_attention, proj), nn.Linear)
    hierarchy = model.category_hierarchy
    assert isinstance(hierarchy, CategoryHierarchy)
    assert isinstance(hierarchy.department_embed, nn.Embedding) and isinstance(hierarchy.category_embed, nn.Embedding)
    assert isinstance(hierarchy.hierarchy_attn, MultiHeadAttention)
    combination = model.feature_combination
    assert [type(m) for m in combination] == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout]
    c = model.config
    timing = TIMING_COLUMNS.stop - TIMING_COLUMNS.start
    neighbours = NEIGHBOUR_COLUMNS.stop - NEIGHBOUR_COLUMNS.start
    assert combination[0].in_features == (
        c.mf_embedding_dim + 2 * c.mlp_embedding_dim + c.temporal_dim + timing + neighbours
    )
    assert model.mf_output.in_features == c.mf_embedding_dim
    assert model.mlp_output.in_features == c.mlp_hidden_dims[-1]
    assert isinstance(model.final[0], nn.Linear) and model.final[0].in_features == 2
    assert isinstance(model.final[1], nn.Sigmoid)


def test_temporal_encoding_is_the_seed_table():
    enc = TemporalEncoding(8, max_period=365)
    assert enc.pe.shape == (365, 8)
    torch.testing.assert_close(enc.pe[0, 0::2], torch.zeros(4))  # sin(0)
    torch.testing.assert_close(enc.pe[0, 1::2], torch.ones(4))  # cos(0)
    torch.testing.assert_close(enc.pe[10, 0], torch.sin(torch.tensor(10.0)))
    assert enc(torch.tensor([[1, 2, 3, 4], [23, 6, 364, 12]])).shape == (2, 8)


def test_gradients_reach_every_table_and_layer():
    config = small_config()
    model = AdvancedNCF(config).train()
    batch = example_batch(config, contexts=8, candidates_per_context=8)
    loss = nn.functional.binary_cross_entropy_with_logits(model(batch, return_logits=True), batch.label)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_a_plain_tables_direct_read_equals_torchrecs_pooled_lookup():
    """An unsharded collection is read directly (no KJT, no pooling); a one-id bag pools to that
    id's row, so the read must equal the collection's own forward over the same ids, repeats and
    the unknown row 0 included."""
    model = AdvancedNCF(small_config())
    collection = model.mlp_embedding_collection
    ids = torch.tensor([3, 0, 7, 3])
    for key in (USER_KEY, PRODUCT_KEY):
        ones, empty = torch.ones(4, dtype=torch.int32), torch.zeros(4, dtype=torch.int32)
        lengths = torch.cat([ones, empty] if key == USER_KEY else [empty, ones])
        pooled = collection(
            KeyedJaggedTensor.from_lengths_sync(keys=[USER_KEY, PRODUCT_KEY], values=ids, lengths=lengths)
        )
        torch.testing.assert_close(lookup(collection, key, ids), pooled[key], rtol=0, atol=0)
        torch.testing.assert_close(lookup_distinct(collection, key, ids), pooled[key], rtol=0, atol=0)


def test_attention_masks_padding_and_never_nans():
    attn = MultiHeadAttention(16, num_heads=4).eval()
    query, keys = torch.randn(3, 16), torch.randn(3, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    out, weights = attn(query, keys, keys, mask, need_weights=True)
    assert not torch.isnan(out).any()
    assert torch.all(weights[1, 2:] == 0) and torch.all(weights[2] == 0)
    # Changing a masked key changes nothing.
    keys2 = keys.clone()
    keys2[1, 3] += 10
    out2, _ = attn(query, keys2, keys2, mask)
    torch.testing.assert_close(out[1], out2[1])
    # The fused path and the explicit softmax agree, also where L + 1 (the null slot) equals the
    # head count, so that a mixed-up layout would broadcast instead of failing.
    fused, _ = attn(query, keys, keys, mask)
    torch.testing.assert_close(out, fused, atol=1e-5, rtol=1e-5)
    explicit, _ = attn(query, keys[:, :3], keys[:, :3], mask[:, :3], need_weights=True)
    torch.testing.assert_close(attn(query, keys[:, :3], keys[:, :3], mask[:, :3])[0], explicit, atol=1e-5, rtol=1e-5)


def test_queries_over_their_owners_keys_equal_one_row_each():
    """N candidates attend over their household's history projected once (``owner``): the same
    numbers as giving each candidate its own copy of the keys."""
    attn = MultiHeadAttention(16, num_heads=4).eval()
    keys, mask = torch.randn(2, 5, 16), torch.tensor([[True] * 5, [True, True, False, False, False]])
    owner, query = torch.tensor([0, 1, 1, 0]), torch.randn(4, 16)
    grouped, weights = attn(query, keys, keys, mask, need_weights=True, owner=owner)
    one_each, expected = attn(query, keys[owner], keys[owner], mask[owner], need_weights=True)
    torch.testing.assert_close(grouped, one_each)
    torch.testing.assert_close(weights, expected)
    fused, _ = attn(query, keys, keys, mask, owner=owner)
    torch.testing.assert_close(fused, one_each, atol=1e-5, rtol=1e-5)


def test_explanations_differ_between_candidates_of_one_household():
    """Each candidate attends over the household's history with its own query: where the
    weights differ, so do the reasons. With the attention's query and key projections made
    sharp identities, a candidate that is one of the past purchases weights that purchase most."""
    torch.manual_seed(0)
    config = small_config(use_temporal=False)
    model = AdvancedNCF(config).eval()
    with torch.no_grad():
        attention = model.history_attention
        for projection in (attention.q_proj, attention.k_proj):
            projection.weight.copy_(torch.eye(config.mlp_embedding_dim) * 50)
            projection.bias.zero_()
        table = model.mlp_embedding_collection.embedding_bags["product_mlp_embeddings"].weight
        table.copy_(torch.nn.functional.normalize(torch.randn_like(table), dim=1))
    batch = example_batch(config, contexts=1, candidates_per_context=4, seed=2)
    batch.history[0] = torch.arange(1, config.history_length + 1)
    batch.product[:] = torch.tensor([2, 5, 7, 3])  # past purchases at history slots 1, 4, 6, 2
    batch.user[:] = 0
    _, weights = model.logits(batch, need_weights=True)
    assert weights.shape == (4, config.history_length)
    assert weights.argmax(dim=1).tolist() == [1, 4, 6, 2]  # each candidate's own past purchase


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_removes_its_part(switch):
    full = AdvancedNCF(small_config())
    ablated = AdvancedNCF(small_config(**{switch: False}))
    assert sum(p.numel() for p in ablated.parameters()) < sum(p.numel() for p in full.parameters())
    removed = {
        "use_temporal": ["temporal_encoding", "history_age_projection", "duration_projection"],
        "use_attention": ["history_attention"],
        "use_hierarchy": ["category_hierarchy", "cadence_norm"],
        "use_mf": ["mf_embedding_collection", "mf_output"],
        "use_mlp": ["mlp_embedding_collection", "feature_combination", "mlp_output"],
        "use_timing": ["timing_norm"],
        "use_neighbours": ["neighbour_norm"],
    }[switch]
    for name in removed:
        assert not hasattr(ablated, name), name
    assert ablated(example_batch(ablated.config, 2, 4)).shape == (8,)


def _output_changes(config: ModelConfig, edit) -> bool:
    torch.manual_seed(0)
    model = AdvancedNCF(config).eval()
    batch = example_batch(config, 4, 4)
    before = model(batch)
    edit(batch)
    return not torch.allclose(before, model(batch))


@pytest.mark.parametrize(
    "switch, edit",
    [
        ("use_temporal", lambda b: b.features[:, DURATION_COLUMNS].add_(30.0)),
        ("use_attention", lambda b: b.history.copy_(torch.roll(b.history, 1, dims=0))),
        ("use_hierarchy", lambda b: b.features[:, CATEGORY_COLUMNS].add_(1.0)),
        ("use_timing", lambda b: b.features[:, TIMING_COLUMNS].mul_(2.0)),
        ("use_neighbours", lambda b: b.features[:, NEIGHBOUR_COLUMNS].mul_(3.0)),
    ],
)
def test_switched_off_input_is_ignored(switch, edit):
    assert _output_changes(small_config(), edit)
    assert not _output_changes(small_config(**{switch: False}), edit)


def test_eval_mode_is_deterministic():
    config = small_config()
    model = AdvancedNCF(config).eval()
    batch = example_batch(config, 4, 8)
    torch.testing.assert_close(model(batch), model(batch), rtol=0, atol=0)


def test_an_explained_ranking_scores_exactly_as_a_plain_one():
    """Asking for the attention's weights leaves every logit to the last bit: an explained
    /recommend must not order near-tied products otherwise than a plain one."""
    torch.manual_seed(3)
    config = small_config(history_length=20)  # the sizes where the explicit product's last bits differed
    model = AdvancedNCF(config).eval()
    batch = example_batch(config, 8, 300, seed=5)
    plain, none = model.logits(batch)
    explained, weights = model.logits(batch, need_weights=True)
    assert none is None and weights.shape == (batch.num_candidates, config.history_length)
    assert torch.equal(plain, explained)


def test_filling_the_context_rows_leaves_every_score():
    """Batch.with_contexts, which keeps a compiled model at one shape, changes no candidate's score."""
    config = small_config()
    model = AdvancedNCF(config).eval()
    batch = example_batch(config, 3, 8)
    filled = batch.with_contexts(32)
    assert filled.num_contexts == 32 and filled.num_candidates == batch.num_candidates
    assert batch.with_contexts(2) is batch
    logits, weights = model.logits(batch, need_weights=True)
    filled_logits, filled_weights = model.logits(filled, need_weights=True)
    torch.testing.assert_close(filled_logits, logits)
    torch.testing.assert_close(filled_weights, weights)


def test_save_load_round_trip_weights_only():
    config = small_config()
    model = AdvancedNCF(config).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = AdvancedNCF(ModelConfig.from_dict(dataclasses.asdict(config))).eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    batch = example_batch(config, 2, 4)
    torch.testing.assert_close(model(batch), restored(batch), rtol=0, atol=0)


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_heads"):
        small_config(mlp_embedding_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="use_mf and use_mlp"):
        small_config(use_mf=False, use_mlp=False)
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**dataclasses.asdict(small_config()), "bogus": 1})


def test_numpy_numbers_in_a_config_are_written_as_json_numbers(tmp_path):
    """A sweep looping over a numpy array passed np.int64 sizes, which config.json held as text
    ("16") that no later load accepted: the saved model could not be verified, served or resumed."""
    import json

    import numpy as np

    config = small_config(
        mf_embedding_dim=np.int64(16), use_mf=np.bool_(True), dropout=np.float32(0.25), mlp_hidden_dims=(np.int64(8),)
    )
    written = json.loads(json.dumps(config.to_dict()))
    assert written["mf_embedding_dim"] == 16 and written["use_mf"] is True and written["mlp_hidden_dims"] == [8]
    assert ModelConfig.from_dict(written) == config and written == config.to_dict()


def test_runs_on_the_default_device():
    device = default_device()
    config = small_config()
    model = AdvancedNCF(config).to(device).eval()
    assert model(example_batch(config, 2, 4).to(device)).shape == (8,)
