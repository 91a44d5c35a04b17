"""AdvancedNCF: shapes, gradients, ablation switches, determinism, save/load, devices."""

import dataclasses
import io

import pytest
import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from ncf.device import default_device, use_gpu
from ncf.model.advanced_ncf import (
    AdvancedNCF,
    CategoryHierarchy,
    ModelConfig,
    MultiHeadAttention,
    TemporalEncoding,
    example_batch,
)

SWITCHES = ["use_temporal", "use_attention", "use_hierarchy", "use_mf", "use_mlp", "use_repeat"]


def small_config(**overrides) -> ModelConfig:
    base = dict(num_users=50, num_products=200, num_departments=6, num_categories=30, history_length=8)
    return ModelConfig(**{**base, **overrides})


def test_output_is_b_probabilities():
    config = small_config()
    model = AdvancedNCF(config).eval()
    probs = model(example_batch(config, batch_size=16))
    assert probs.shape == (16,)
    assert torch.all((probs > 0) & (probs < 1))
    logits = model(example_batch(config, batch_size=16), return_logits=True)
    torch.testing.assert_close(torch.sigmoid(logits), probs)


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
    assert combination[0].in_features == c.mf_embedding_dim + 2 * c.mlp_embedding_dim + c.temporal_dim
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
    batch = example_batch(config, batch_size=64)
    loss = nn.functional.binary_cross_entropy_with_logits(model(batch, return_logits=True), batch.label)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


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
    # The fused kernel and the explicit softmax agree.
    fused, _ = attn(query, keys, keys, mask)
    torch.testing.assert_close(out, fused, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_removes_its_part(switch):
    full = AdvancedNCF(small_config())
    ablated = AdvancedNCF(small_config(**{switch: False}))
    n_full = sum(p.numel() for p in full.parameters())
    n_ablated = sum(p.numel() for p in ablated.parameters())
    assert n_ablated < n_full
    removed = {
        "use_temporal": ["temporal_encoding", "history_age_projection"],
        "use_attention": ["history_attention"],
        "use_hierarchy": ["category_hierarchy"],
        "use_mf": ["mf_embedding_collection", "mf_output"],
        "use_mlp": ["mlp_embedding_collection", "feature_combination", "mlp_output"],
        "use_repeat": ["repeat_projection"],
    }[switch]
    for name in removed:
        assert not hasattr(ablated, name), name
    assert ablated(example_batch(ablated.config, 8)).shape == (8,)


def _output_changes(config: ModelConfig, edit) -> bool:
    torch.manual_seed(0)
    model = AdvancedNCF(config).eval()
    batch = example_batch(config, batch_size=16)
    before = model(batch)
    edit(batch)
    return not torch.allclose(before, model(batch))


@pytest.mark.parametrize(
    "switch, edit",
    [
        ("use_temporal", lambda b: b.time_parts.__setitem__((slice(None), 0), (b.time_parts[:, 0] + 7) % 24)),
        ("use_attention", lambda b: b.history.copy_(torch.roll(b.history, 1, dims=0))),
        ("use_hierarchy", lambda b: b.category.copy_((b.category + 1) % 30)),
        ("use_repeat", lambda b: b.repeat.add_(1.0)),
    ],
)
def test_switched_off_input_is_ignored(switch, edit):
    assert _output_changes(small_config(), edit)
    assert not _output_changes(small_config(**{switch: False}), edit)


def test_eval_mode_is_deterministic():
    config = small_config()
    model = AdvancedNCF(config).eval()
    batch = example_batch(config, batch_size=32)
    torch.testing.assert_close(model(batch), model(batch), rtol=0, atol=0)


def test_score_candidates_matches_forward():
    config = small_config()
    model = AdvancedNCF(config).eval()
    batch = example_batch(config, batch_size=12)
    n = batch.batch_size
    for field in ("user", "time_parts", "history", "history_age_days"):
        value = getattr(batch, field)
        setattr(batch, field, value[:1].expand(n, *value.shape[1:]).clone())
    expected = model(batch)
    user = model.encode_user(batch.user[:1], batch.time_parts[:1], batch.history[:1], batch.history_age_days[:1])
    products = model.encode_products(batch.product, batch.department, batch.category)
    count = torch.expm1(batch.repeat[:, 0])
    days = (1 - batch.repeat[:, 1]) * 366.0
    got, weights = model.score_candidates(user, products, count, days, need_weights=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert weights.shape == (n, config.history_length)


def test_candidates_of_several_users_in_one_call_match_forward():
    """U users x C candidates in one call: each user's history is projected once, yet every
    (user, candidate) row gets the same probability and attention weights as in forward."""
    config = small_config()
    model = AdvancedNCF(config).eval()
    users, per_user = 3, 4
    batch = example_batch(config, batch_size=users * per_user, seed=3)
    contexts = torch.arange(users).repeat_interleave(per_user) * per_user  # row of each user's context
    for field in ("user", "time_parts", "history", "history_age_days"):
        setattr(batch, field, getattr(batch, field)[contexts].clone())
    hook_weights = []
    handle = model.history_attention.register_forward_hook(lambda module, args, out: hook_weights.append(out[1]))
    with torch.no_grad():
        expected = model(batch)
        first = contexts[::per_user]
        user = model.encode_user(
            batch.user[first], batch.time_parts[first], batch.history[first], batch.history_age_days[first]
        )
        products = model.encode_products(batch.product, batch.department, batch.category)
        got, weights = model.score_candidates(
            user, products, torch.expm1(batch.repeat[:, 0]), (1 - batch.repeat[:, 1]) * 366.0, need_weights=True
        )
        _, expected_weights = model.combine(
            model.encode_user(batch.user, batch.time_parts, batch.history, batch.history_age_days),
            products,
            batch.repeat,
            need_weights=True,
        )
    handle.remove()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)
    assert hook_weights[-2].shape == (users, per_user, config.history_length)  # grouped: U x C x L inside
    with pytest.raises(ValueError, match="split evenly"):
        model.score_candidates(user, products.select(torch.arange(5)), torch.zeros(5), torch.zeros(5))


@pytest.mark.parametrize("switch", [None, "use_mf", "use_attention", "use_temporal"])
def test_table_lookup_equals_the_collections(switch):
    """Serving reads one-id bags straight from the tables' rows; every tensor of the user side
    must equal what the EmbeddingBagCollections pool, padding slots (empty bags) included."""
    config = small_config(**({switch: False} if switch else {}))
    model = AdvancedNCF(config).eval()
    batch = example_batch(config, batch_size=9, seed=5)
    assert (batch.history == 0).any() and (batch.history > 0).any()
    args = (batch.user, batch.time_parts, batch.history, batch.history_age_days)
    with torch.no_grad():
        pooled, rows = model.encode_user(*args), model.encode_user(*args, table_lookup=True)
    for field in dataclasses.fields(pooled):
        expected, got = getattr(pooled, field.name), getattr(rows, field.name)
        assert (expected is None) == (got is None), field.name
        if expected is not None:
            torch.testing.assert_close(got, expected, atol=0, rtol=0, msg=field.name)


def test_save_load_round_trip_weights_only():
    config = small_config()
    model = AdvancedNCF(config).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = AdvancedNCF(ModelConfig.from_dict(dataclasses.asdict(config))).eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    batch = example_batch(config, batch_size=8)
    torch.testing.assert_close(model(batch), restored(batch), rtol=0, atol=0)


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_heads"):
        small_config(mlp_embedding_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="use_mf and use_mlp"):
        small_config(use_mf=False, use_mlp=False)
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**dataclasses.asdict(small_config()), "bogus": 1})


def test_runs_on_the_default_device():
    device = default_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert use_gpu("auto") == torch.cuda.is_available()
    config = small_config()
    model = AdvancedNCF(config, device=device).to(device).eval()
    assert model(example_batch(config, 4).to(device)).device.type == device.type
