"""The model directory's checksum manifest and the whole-directory check run before a rollout
(``ncf.model.integrity``), on a tiny hand-made DATA (no Ray): every kind of damage a rollout can
meet is named in one line."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO

from ncf.data import layout
from ncf.data.features import FEATURES_VERSION
from ncf.data.product_stats import ProductStats
from ncf.data.user_state import UserStates
from ncf.data.vocab import Vocabularies, Vocabulary
from ncf.errors import InputError
from ncf.jsonio import read_json, temporary_name, write_json
from ncf.model.directory import (
    CONFIG,
    METRICS,
    TRAINED_PRODUCTS,
    TRAINED_USERS,
    WEIGHTS,
    save_untrained_model_dir,
    update_metrics,
)
from ncf.model.integrity import MANIFEST, ModelIntegrityError, verify_model_dir, write_manifest
from ncf.rank.recommender import Recommender
from ncf.rank.state import check_model_and_data

CATALOG_COLUMNS = ("department_index", "category_index")
SMALL = {"mf_embedding_dim": 8, "mlp_embedding_dim": 8, "temporal_dim": 4, "mlp_hidden_dims": [8], "history_length": 4}
DAY = 86_400
END = 1_511_740_800


def tiny_data(root: str, users: int = 6, products: int = 9, seed: int = 0) -> str:
    """A DATA directory with only what a model directory copies: stats.json, the state.
    ``seed``: other purchases (and a stats.json of its own, as another preprocess run writes)."""
    rng = np.random.default_rng(seed)
    vocabs = Vocabularies(
        Vocabulary.from_ids([str(100 + u) for u in range(users)], kind="int"),
        Vocabulary.from_ids(
            [f"p{p}" for p in range(products)],
            extra={
                "department_index": [1 + p % 2 for p in range(products)],
                "category_index": [1 + p % 3 for p in range(products)],
            },
        ),
        Vocabulary.from_ids(["d1", "d2"]),
        Vocabulary.from_ids(["c1", "c2", "c3"]),
    )
    data = os.path.join(root, "data")
    vocabs.save(layout.vocab_dir(data))
    n = 40
    states = UserStates.from_purchases(
        rng.integers(1, users + 1, n), rng.integers(1, products + 1, n), END - rng.integers(1, 60, n) * DAY, users + 1
    )
    states.save(layout.user_state_dir(data))
    category = np.concatenate([[0], vocabs.products.column("category_index")[1:]])
    ProductStats.compute(states, category, END + 1).save(layout.product_stats_dir(data))
    write_json(
        layout.stats_path(data),
        {
            "boundaries": {
                "start": END - 60 * DAY,
                "val_start": END - 14 * DAY,
                "test_start": END - 7 * DAY,
                "end": END,
            },
            "features_version": FEATURES_VERSION,
            **({"seed": seed} if seed else {}),
        },
    )
    return data


@pytest.fixture
def data(tmp_path):
    return tiny_data(str(tmp_path / "a"))


@pytest.fixture
def model(data, tmp_path):
    return save_untrained_model_dir(str(tmp_path / "model"), data, version="v1", **SMALL)


def _config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, CONFIG)) as f:
        return json.load(f)


def test_a_saved_model_directory_is_sealed_and_verifies(model):
    with open(os.path.join(model, MANIFEST)) as f:
        manifest = json.load(f)
    assert {WEIGHTS, CONFIG, "state/vocab/users.parquet", "state/user_state/offsets.npy"} <= set(manifest["files"])
    assert manifest["unsealed"] == [METRICS] and METRICS not in manifest["files"]
    verify_model_dir(model)
    update_metrics(model, {"test_ndcg@10": 0.4})  # metrics are written after saving: still whole
    verify_model_dir(model)


def _truncate(path: str, keep: float = 0.5) -> None:
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: int(len(content) * keep)])


def test_damage_after_saving_is_caught_by_the_manifest(model):
    _truncate(os.path.join(model, WEIGHTS))
    with pytest.raises(ModelIntegrityError, match=r"model.pt has \d+ bytes, the manifest says"):
        verify_model_dir(model)


def test_a_flipped_byte_is_caught_by_the_checksum(model):
    path = os.path.join(model, "state", "user_state", "products.npy")
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(ModelIntegrityError, match="products.npy does not match its sha256"):
        verify_model_dir(model)


def test_missing_added_and_unsealed_files_are_named(model):
    os.remove(os.path.join(model, MANIFEST))
    with pytest.raises(ModelIntegrityError, match="no manifest.json"):
        verify_model_dir(model)
    write_manifest(model, unsealed=[METRICS])
    with open(os.path.join(model, "state", "vocab", "extra.parquet"), "wb") as f:
        f.write(b"x")
    with pytest.raises(ModelIntegrityError, match=r"not in the manifest: \['state/vocab/extra.parquet'\]"):
        verify_model_dir(model)
    os.remove(os.path.join(model, "state", "vocab", "extra.parquet"))
    os.remove(os.path.join(model, "state", "vocab", "products.parquet"))
    with pytest.raises(ModelIntegrityError, match="missing.*products.parquet"):
        verify_model_dir(model)


@pytest.mark.faults
def test_a_hand_edit_sealed_again_is_refused_where_replicas_and_the_registry_would_fail(model, data):
    """`jobs.verify --seal` re-seals a directory edited by hand: a ranking of unknown names or
    sizes that are not counts, a rows_trained_before that is no number, or a config without
    data.path passed verification and promote, then every replica refused the model (or the
    registry's lineage a KeyError, the row masks a ValueError; a review, 2026-12-07)."""
    from ncf.rank.state import check_model_and_data

    original = _config(model)
    for edit, words in (
        ({"ranking": {"candidatez": 200}}, "ranking holds unknown settings"),
        ({"ranking": {"candidates": "lots"}}, "ranking holds sizes that are not counts"),
        ({"ranking": [300]}, "bad config.json"),
        ({"rows_trained_before": "soon"}, "bad config.json"),
        ({"data": {k: v for k, v in original["data"].items() if k != "path"}}, "bad config.json"),
    ):
        write_json(os.path.join(model, CONFIG), {**original, **edit})
        write_manifest(model, unsealed=[METRICS])
        with pytest.raises(InputError, match=words):
            check_model_and_data(model, data)
        with pytest.raises(InputError, match=words):
            verify_model_dir(model)  # what promote and a first registration ask
    write_json(os.path.join(model, CONFIG), {**original, "ranking": {"candidates": 120}})
    write_manifest(model, unsealed=[METRICS])
    assert verify_model_dir(model) == os.path.realpath(model)  # an edit of counts it knows stands


@pytest.mark.faults
def test_a_damaged_stats_json_is_one_line_naming_the_data(data):
    """A truncated, foreign or hand-edited stats.json, or a FIFO in its place, read wherever DATA
    is (jobs.verify --data, jobs.deploy, the registry): a JSONDecodeError, AttributeError,
    ValueError or KeyError traceback, and the FIFO hung (a review, 2026-12-07)."""
    path = layout.stats_path(data)
    good = read_json(path)
    layout.DataStats(data)
    for content, words in (
        (json.dumps(good)[:40], "is damaged"),
        ("[]", "a JSON list, not an object"),
        (json.dumps({**good, "features_version": "x"}), "is damaged"),
        (json.dumps({**good, "vocab_sizes": ["num_users"]}), "its vocab_sizes is a JSON list, not an object"),
        (json.dumps({**good, "vocab_sizes": {"num_users": 7, "num_products": "many"}}), "is damaged"),
        (json.dumps({**good, "boundaries": {**good["boundaries"], "end": "soon"}}), "is damaged"),
    ):
        with open(path, "w") as f:
            f.write(content)
        with pytest.raises(InputError, match=words) as refused:
            layout.DataStats(data)
        assert "\n" not in str(refused.value) and "preprocess it again" in str(refused.value)
    os.remove(path)
    os.mkfifo(path)
    with pytest.raises(InputError, match="not a regular file"):
        layout.DataStats(data)


@pytest.mark.faults
def test_a_damaged_manifest_entry_a_symlink_inside_and_a_killed_metrics_write(model):
    """A manifest entry without its size was a KeyError traceback; a state/ symlinked in was left
    out of the seal (os.walk does not follow it); a metrics.json rewrite killed before its rename
    left a .tmp that made an intact directory fail as damaged."""
    manifest = read_json(os.path.join(model, MANIFEST))
    with open(os.path.join(model, METRICS + ".tmp"), "w") as f:
        f.write("{")
    verify_model_dir(model)  # the leftover of an unsealed file's rewrite is not damage
    os.remove(os.path.join(model, METRICS + ".tmp"))
    leftover = temporary_name(os.path.join(model, METRICS))  # today's name: one of its own per write
    with open(leftover, "w") as f:
        f.write("{")
    verify_model_dir(model)
    os.remove(leftover)
    broken = {**manifest, "files": {**manifest["files"], WEIGHTS: {"sha256": "0" * 64}}}
    write_json(os.path.join(model, MANIFEST), broken)
    with pytest.raises(ModelIntegrityError, match="unreadable manifest.json .*model.pt.* not a size and a sha256"):
        verify_model_dir(model)
    write_json(os.path.join(model, MANIFEST), manifest)
    state = os.path.join(model, "state")
    os.rename(state, state + "-real")
    os.symlink(state + "-real", state)
    with pytest.raises(ModelIntegrityError, match="state is a symbolic link"):
        write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match="state is a symbolic link"):
        verify_model_dir(model)


# A directory that agrees with its (re-written) manifest but is wrong inside: what a buggy
# trainer or a hand-assembled rollout produces. The cross-checks catch each.


def test_truncated_weights_sealed_again_do_not_load(model):
    _truncate(os.path.join(model, WEIGHTS))
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match="model.pt does not load with weights_only=True"):
        verify_model_dir(model)


def test_pickled_objects_in_the_weights_are_refused(model):
    torch.save({"payload": object()}, os.path.join(model, WEIGHTS))
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match="weights_only"):
        verify_model_dir(model)


def test_weights_of_another_shape_are_refused(model, data, tmp_path):
    other = save_untrained_model_dir(str(tmp_path / "wide"), data, version="w", **{**SMALL, "mf_embedding_dim": 16})
    shutil.copy(os.path.join(other, WEIGHTS), os.path.join(model, WEIGHTS))
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match=r"shapes do not fit config.json: .*mf.*\(7, 16\) != \(7, 8\)"):
        verify_model_dir(model)


@pytest.mark.faults
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda w: {**w, "note": "exported by a tool"}, r"entries that are not tensors: \['note'\]"),
        (lambda w: {k: v.half() if v.is_floating_point() else v for k, v in w.items()}, "dtypes do not fit.*float16"),
        (lambda w: {**w, _a_float(w): torch.full_like(w[_a_float(w)], float("nan"))}, "NaN or infinite weights"),
    ],
    ids=["not a tensor", "half precision", "nan"],
)
def test_weights_that_load_but_cannot_score_are_refused(model, damage, message):
    """Found by the model review of 2026-12-05: weights of the right names and shapes but another
    dtype (they fail at the first scoring), an entry that is no tensor (load_state_dict refuses
    it) or NaN (served as NaN scores) passed the directory's check."""
    weights = torch.load(os.path.join(model, WEIGHTS), weights_only=True)
    torch.save(damage(weights), os.path.join(model, WEIGHTS))
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match=message) as error:
        verify_model_dir(model)
    assert "\n" not in str(error.value) and model in str(error.value)
    # Loading checks the names, shapes and dtypes too (the Python API's Recommender.load verifies
    # nothing: a float64 file loaded, then failed at the first scoring; a review of ncf/model,
    # session 68); the values are the directory check's, a read of every weight.
    from ncf.model.directory import load_model

    if "NaN" not in message:
        with pytest.raises(ModelIntegrityError, match=message):
            load_model(model)


def _a_float(weights: dict) -> str:
    return next(name for name, t in sorted(weights.items()) if t.is_floating_point())


@pytest.mark.faults
def test_a_manifest_that_calls_the_weights_unsealed_is_refused(model):
    """Only metrics.json is rewritten after the seal; a manifest that named model.pt unsealed
    (and dropped its entry) left the weights unchecked."""
    manifest = read_json(os.path.join(model, MANIFEST))
    files = {k: v for k, v in manifest["files"].items() if k != WEIGHTS}
    write_json(os.path.join(model, MANIFEST), {**manifest, "unsealed": [METRICS, WEIGHTS], "files": files})
    with pytest.raises(ModelIntegrityError, match=r"not in the manifest: \['model.pt'\]"):
        verify_model_dir(model)


@pytest.mark.faults
def test_masks_of_trained_rows_that_do_not_fit_the_tables_are_refused(model):
    # A trained directory has them; an untrained one does not, which is fine.
    verify_model_dir(model)
    np.save(os.path.join(model, TRAINED_PRODUCTS), np.ones(10, bool))  # the two masks go together
    np.save(os.path.join(model, TRAINED_USERS), np.ones(5, bool))  # the tables have 7 household rows
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match=r"trained_users.npy holds bool \(5,\), the tables have 7 rows"):
        verify_model_dir(model)
    np.save(os.path.join(model, TRAINED_USERS), np.ones(7, np.int64))
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match=r"trained_users.npy holds int64 \(7,\)"):
        verify_model_dir(model)


def test_a_vocabulary_of_another_size_is_refused(model, tmp_path):
    other = tiny_data(str(tmp_path / "b"), users=9)
    shutil.copy(layout.vocab_dir(other) + "/users.parquet", os.path.join(model, "state", "vocab", "users.parquet"))
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match="vocabularies do not fit the embedding tables: num_users 10 != 7"):
        verify_model_dir(model)


@pytest.mark.faults
def test_neighbours_of_another_catalog_or_pickled_are_refused(model):
    """The co-purchase neighbours are read by every ranking request: a file for another catalog
    would name products that do not exist here, and an object array would need unpickling."""
    path = os.path.join(model, "state", "product_stats", "neighbours.npz")
    with np.load(path) as f:
        kept = dict(f)
    np.savez(path, **{**kept, "indptr": np.zeros(4, np.int64)})
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match=r"does not load \(.*neighbours of 3 products, not 10\)"):
        verify_model_dir(model)
    np.savez(path, **{**kept, "weights": np.array([object()] * len(kept["weights"]))})
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match="does not load.*allow_pickle=False"):
        verify_model_dir(model)


def _reordered_vocab_copy(data: str, destination: str) -> None:
    """``data``'s vocabularies with the households in another order, as another preprocess of
    the same logs may number them: the same sizes, other meanings of the rows."""
    vocabs = Vocabularies.load(layout.vocab_dir(data))
    ids = vocabs.users.ids.to_pylist()
    users = Vocabulary.from_ids(ids[::-1], kind="int")
    Vocabularies(users, vocabs.products, vocabs.departments, vocabs.categories).save(layout.vocab_dir(destination))


@pytest.mark.faults
def test_a_vocabulary_of_the_same_size_from_another_run_is_refused(model, tmp_path):
    """Old code compared the sizes only: another preprocess's numbering passed, and the replicas
    scored each household with another one's row."""
    other = str(tmp_path / "reordered")
    _reordered_vocab_copy(os.path.join(model, "state"), other)
    shutil.copy(layout.vocab_dir(other) + "/users.parquet", os.path.join(model, "state", "vocab", "users.parquet"))
    write_manifest(model, unsealed=[METRICS])  # sealed again: the manifest alone cannot tell
    with pytest.raises(ModelIntegrityError, match="state/vocab is not the vocabulary the weights were trained on"):
        verify_model_dir(model)


@pytest.mark.faults
def test_a_save_after_data_was_preprocessed_again_is_refused_and_the_old_model_kept(model, data, tmp_path):
    """jobs.preprocess into the DATA a training reads swaps new vocabularies in: the export would
    have copied them beside weights whose rows index the old ones."""
    from ncf.model.advanced_ncf import AdvancedNCF
    from ncf.model.config import ModelConfig
    from ncf.model.directory import ModelDir, save_model_dir
    from ncf.model.integrity import vocab_digest

    config = ModelConfig.from_dict(_config(model)["model"])
    weights = AdvancedNCF(config).state_dict()
    trained_on = vocab_digest(data)
    assert _config(model)["data"]["vocab_sha256"] == trained_on
    _reordered_vocab_copy(data, data)  # preprocessed again while the model trained
    with pytest.raises(InputError, match="its vocabularies changed while the model trained"):
        save_model_dir(model, weights, config, data, END, "validated", version="v2", vocab_sha256=trained_on)
    assert ModelDir(model).version == "v1"
    verify_model_dir(model)
    save_model_dir(model, weights, config, data, END, "validated", version="v3", vocab_sha256=vocab_digest(data))
    assert ModelDir(model).version == "v3"


@pytest.mark.faults
def test_a_checkpoint_of_other_vocabularies_is_not_resumed():
    from ncf.train.checkpoint import check_same_vocabularies

    check_same_vocabularies("runs/a", None, "abc")  # written before the digest was recorded
    check_same_vocabularies("runs/a", "abc", "abc")
    with pytest.raises(InputError, match="trained on other vocabularies than --data holds now"):
        check_same_vocabularies("runs/a", "abc", "abd")


@pytest.mark.faults
def test_a_checkpoint_of_other_training_lists_is_not_resumed(small_data, tmp_path):
    """DATA preprocessed again with other list settings (a seed, the negatives) keeps its
    vocabularies and cutoffs: a run of the same --name resumed on its new lists (a review, 2026-12-05)."""
    from ncf.data.examples import lists_digest
    from ncf.train.checkpoint import check_same_lists

    data = str(tmp_path / "data")
    shutil.copytree(small_data[0], data)
    cutoffs = layout.DataStats(data).cutoffs("validated")
    before = lists_digest(data, cutoffs)
    assert lists_digest(data, cutoffs) == before and lists_digest(data, cutoffs[:1]) != before
    stats = read_json(layout.stats_path(data))
    stats["config"]["examples"]["seed"] = stats["config"]["examples"].get("seed", 0) + 1
    write_json(layout.stats_path(data), stats)
    after = lists_digest(data, cutoffs)
    assert after != before
    check_same_lists("runs/a", None, after)  # written before the digest was recorded
    check_same_lists("runs/a", after, after)
    with pytest.raises(InputError, match="trained on other training lists than --data holds now"):
        check_same_lists("runs/a", before, after)
    # A finished run exported after DATA changed (a sweep's trial, a resumed sweep's winner):
    # its trained rows would be read from the new lists. Refused before the weights are read.
    from ray.train import Checkpoint

    from ncf.data.features import FEATURES_VERSION
    from ncf.train.checkpoint import TRAIN_STATE, export_model_dir

    trial = tmp_path / "trial" / "checkpoint_000001"
    trial.mkdir(parents=True)
    state = {"features_version": FEATURES_VERSION, "training": {"cutoffs": cutoffs}, "lists_sha256": before}
    write_json(str(trial / TRAIN_STATE), state)
    with pytest.raises(InputError, match="trial.*trained on other training lists.*; train again"):
        export_model_dir(Checkpoint(str(trial)), str(tmp_path / "m"), data, {})
    assert not (tmp_path / "m").exists()

    lists = layout.examples_dir(data, cutoffs[0])
    with open(os.path.join(lists, sorted(os.listdir(lists))[0]), "ab") as f:
        f.write(b"\0")  # a list file of another size
    assert lists_digest(data, cutoffs) != after


def test_user_state_of_another_run_is_refused(model, tmp_path):
    other = tiny_data(str(tmp_path / "b"), users=9)
    for name in ("offsets.npy", "products.npy", "timestamps.npy"):
        shutil.copy(os.path.join(layout.user_state_dir(other), name), os.path.join(model, "state", "user_state", name))
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(ModelIntegrityError, match="user_state has 10 households, the vocabulary 7"):
        verify_model_dir(model)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: "{not json", "unreadable config.json"),
        (lambda c: json.dumps({**c, "model": {**c["model"], "num_heads": 3}}), "bad config.json .*divisible"),
        (
            lambda c: json.dumps({**c, "model": {**c["model"], "colour": 1}}),
            r"bad config.json .*unknown keys \['colour'\]",
        ),
        (lambda c: json.dumps({k: v for k, v in c.items() if k != "version"}), "bad config.json .*version"),
        (lambda c: json.dumps({**c, "format_version": 1}), "model directory format 1"),
        # Format 4 was written on features version 3 before it named it; a newer feature definition
        # must refuse such weights even where nobody moved the format (a helper's review, 2026-12-04).
        (lambda c: json.dumps({**c, "features_version": FEATURES_VERSION - 1}), "trained on features version"),
        # No weight's shape ties it to the files: 2**40 passed every check and asked for 8 TB at load.
        (lambda c: json.dumps({**c, "model": {**c["model"], "max_period": 2**40}}), "max_period must be .* 36,600"),
    ],
    ids=["not json", "impossible model", "unknown key", "no version", "old format", "other features", "huge table"],
)
@pytest.mark.faults
def test_a_bad_config_is_refused_in_one_line(model, damage, message):
    config = _config(model)
    with open(os.path.join(model, CONFIG), "w") as f:
        f.write(damage(config))
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(InputError, match=message) as error:
        verify_model_dir(model)
    assert "\n" not in str(error.value) and model in str(error.value)


def test_the_command_line_verifies_and_seals(model, tmp_path):
    """``python -m jobs.verify``: one JSON object, or exit 2 and one line; --seal trusts the directory."""
    run = [sys.executable, "-m", "jobs.verify"]
    data = tiny_data(str(tmp_path / "data"))
    ok = subprocess.run(run + [model, "--data", data], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    expected = {"model": os.path.abspath(model), "verified_dir": os.path.realpath(model), "verified": True}
    assert json.loads(ok.stdout) == {**expected, "data": data}
    # Through a blue/green link: the path given, and the directory it resolved to and was checked.
    link = str(tmp_path / "model-link")
    os.symlink(model, link)
    linked = subprocess.run(run + [link], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert json.loads(linked.stdout) == {**expected, "model": link}, linked.stderr
    os.remove(os.path.join(model, MANIFEST))
    refused = subprocess.run(run + [model], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (
        refused.returncode == 2
        and refused.stderr.strip().startswith("error: ")
        and "\n" not in refused.stderr.strip()
        and "no manifest.json" in refused.stderr
    )
    sealed = subprocess.run(run + ["--seal", model], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert sealed.returncode == 0 and json.loads(sealed.stdout)["verified"] is True, sealed.stderr
    assert os.path.exists(os.path.join(model, MANIFEST))


@pytest.mark.faults
def test_data_without_a_catalog_is_refused_for_a_model_trained_with_one(model, tmp_path):
    other = tiny_data(str(tmp_path / "nocatalog"))
    vocabs = Vocabularies.load(layout.vocab_dir(other))
    ids = vocabs.products.ids.to_pylist()
    products = Vocabulary.from_ids(ids, extra={"department_index": [0] * len(ids), "category_index": [0] * len(ids)})
    empty = Vocabulary.from_ids([], kind="str")
    Vocabularies(vocabs.users, products, empty, empty).save(layout.vocab_dir(other))
    with pytest.raises(InputError, match="no product has a department or category .* --products CATALOG"):
        Recommender.load(model, data=other)
    stats = read_json(os.path.join(other, "stats.json"))
    write_json(os.path.join(other, "stats.json"), {**stats, "features_version": FEATURES_VERSION - 1})
    with pytest.raises(InputError, match="preprocessed for features version"):  # its stats are other numbers
        Recommender.load(model, data=other)
    assert Recommender.load(model, data=tiny_data(str(tmp_path / "withcatalog"))).recommend(["101"], k=2)


@pytest.mark.faults
def test_data_of_an_older_features_version_is_refused_in_one_line_before_its_state_is_read(model, tmp_path):
    """Old code: Recommender.load read the DATA's state before its version, so a DATA preprocessed
    before version 3 (no product_stats/neighbours.npz) raised FileNotFoundError; and
    check_model_and_data (Serve's build_app, jobs.verify, the nightly job's checks) never read the
    version: a DATA of another one passed. Both say the one line now."""
    from ncf.data.neighbours import FILE as NEIGHBOURS_FILE

    def of_version(name: str, version: int) -> str:
        data = tiny_data(str(tmp_path / name))
        write_json(layout.stats_path(data), {**read_json(layout.stats_path(data)), "features_version": version})
        return data

    older = of_version("v2", 2)
    os.remove(os.path.join(layout.product_stats_dir(older), NEIGHBOURS_FILE))  # as version 2 wrote it
    other = of_version("other", FEATURES_VERSION - 1)  # every file there, other numbers
    for data, version in ((older, 2), (other, FEATURES_VERSION - 1)):
        for load in (lambda d: Recommender.load(model, data=d), lambda d: check_model_and_data(model, d)):
            with pytest.raises(InputError, match=f"for features version {version},") as refused:
                load(data)
            assert str(refused.value).endswith("run python -m jobs.preprocess again") and "\n" not in str(refused.value)
    check_model_and_data(model, tiny_data(str(tmp_path / "current")))


@pytest.mark.faults
def test_data_whose_product_ids_the_model_does_not_know_is_refused(model, tmp_path):
    """A refresh exported with the product ids written otherwise (zero-padded here): matched by
    value, every product fell to the unknown row and the model ranked without its product tables
    (the MF first stage empty), silently. Refused by the jobs before Ray starts and by the load."""
    from ncf.batch.scoring import BatchScoreConfig, check_config
    from serve.app import build_app

    other = tiny_data(str(tmp_path / "padded"))
    vocabs = Vocabularies.load(layout.vocab_dir(other))
    padded = [f"000{i}" for i in vocabs.products.ids.to_pylist()]
    products = Vocabulary.from_ids(padded, extra={k: vocabs.products.column(k)[1:].tolist() for k in CATALOG_COLUMNS})
    Vocabularies(vocabs.users, products, vocabs.departments, vocabs.categories).save(layout.vocab_dir(other))
    scoring = BatchScoreConfig(model=model, data=other, output=str(tmp_path / "out"), k=2, at="data-end")
    loads = (
        lambda: Recommender.load(model, data=other),
        lambda: check_config(scoring),
        lambda: build_app({"model": model, "data": other}),
        lambda: check_model_and_data(model, other),  # jobs.verify --data: the deploy's checks
    )
    for load in loads:
        with pytest.raises(InputError, match="none of its 9 products has a trained row in the model.*000123"):
            load()
    assert Recommender.load(model, data=tiny_data(str(tmp_path / "same"))).recommend(["101"], k=2)


def _flip_last_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))


@pytest.mark.faults
def test_the_jobs_that_load_a_model_without_serve_verify_it_first(model, data, tmp_path):
    """Old code: only Serve checked the manifest; the nightly job, its --verify and jobs.evaluate
    loaded a damaged directory and ranked with it (a changed tensor kept 34% of the top 10)."""
    from jobs.cli import check_model
    from ncf.batch.scoring import BatchScoreConfig, check_config

    scoring = BatchScoreConfig(model=model, data=data, output=str(tmp_path / "out"), k=2, at="data-end")
    check_config(scoring)
    assert check_model(model) == model
    _flip_last_byte(os.path.join(model, WEIGHTS))
    assert Recommender.load(model, data=data)  # loading alone does not notice
    for check in (lambda: check_config(scoring), lambda: check_model(model)):
        with pytest.raises(ModelIntegrityError, match="model.pt does not match its sha256"):
            check()


@pytest.mark.faults
def test_the_nightly_job_verifies_the_data_state_it_ranks_from(model, data, tmp_path):
    from ncf.batch.scoring import BatchScoreConfig, check_config

    _truncate(os.path.join(layout.user_state_dir(data), "offsets.npy"))
    scoring = BatchScoreConfig(model=model, data=data, output=str(tmp_path / "out"), k=2, at="data-end")
    with pytest.raises(InputError, match="the DATA's state does not load"):
        check_config(scoring)


@pytest.mark.faults
@pytest.mark.parametrize(
    "content",
    ["", "{trunc", "[1, 2]", "fields"],
    ids=["empty", "truncated", "not an object", "fields gone"],
)
def test_an_unreadable_config_is_one_line_naming_the_directory(model, content):
    """A config.json that parses but lost its fields (cut or edited without its checksums) was a
    KeyError from the nightly job's first check, before the checksums are read."""
    from ncf.model.directory import read_config

    fields_gone = content == "fields"
    if fields_gone:
        config = json.load(open(os.path.join(model, CONFIG)))
        del config["model"]["num_products"], config["version"]
        content = json.dumps({**config, "ranking": []})
    with open(os.path.join(model, CONFIG), "w") as f:
        f.write(content)
    refused = f"{model}: (unreadable config.json|config.json holds list|bad config.json)"
    with pytest.raises(InputError, match=refused) as error:
        read_config(model)
    assert "\n" not in str(error.value)
    if fields_gone:
        assert "model.num_products is not a count; ranking is not an object; no version" in str(error.value)


def test_a_vocabulary_whose_indices_are_not_1_to_n_is_refused(tmp_path):
    path = str(tmp_path / "users.parquet")
    Vocabulary.from_ids(["11", "12", "13"], kind="int").save(path)
    assert len(Vocabulary.load(path)) == 4  # the unknown id and three
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for index in ([1, 3, 2], [1, 2, None]):
        pq.write_table(table.set_column(0, "index", pa.array(index, pa.int64())), path)
        with pytest.raises(ValueError, match="indices are not 1..N"):
            Vocabulary.load(path)


def _products_out_of_range(data: str, tmp_path) -> None:
    path = os.path.join(layout.user_state_dir(data), "products.npy")
    products = np.load(path)
    products[0] = 10_000
    np.save(path, products)


def _user_state_of_another_run(data: str, tmp_path) -> None:
    other = tiny_data(str(tmp_path / "b"), users=9)
    for name in ("offsets.npy", "products.npy", "timestamps.npy"):
        shutil.copy(os.path.join(layout.user_state_dir(other), name), os.path.join(layout.user_state_dir(data), name))


def _product_stats_of_another_catalog(data: str, tmp_path) -> None:
    other = tiny_data(str(tmp_path / "b"), products=12)
    shutil.rmtree(layout.product_stats_dir(data))
    shutil.copytree(layout.product_stats_dir(other), layout.product_stats_dir(data))


@pytest.mark.faults
@pytest.mark.parametrize(
    "damage, message",
    [
        (_user_state_of_another_run, "user_state has 10 households, the vocabulary 7"),
        (_products_out_of_range, r"user_state holds product indices outside 0\.\.9"),
        (_product_stats_of_another_catalog, "product_stats has 13 products, the vocabulary 10"),
    ],
    ids=["households", "product indices", "product stats"],
)
def test_a_data_state_that_does_not_agree_with_itself_is_refused(data, tmp_path, damage, message):
    """jobs.deploy --data, the nightly job and Serve's replicas rank from a DATA directory's state,
    which has no manifest: its parts are checked against its vocabularies."""
    from ncf.model.integrity import DataIntegrityError, verify_data_state

    verify_data_state(data)
    damage(data, tmp_path)
    with pytest.raises(DataIntegrityError, match=message):
        verify_data_state(data)


@pytest.mark.faults
def test_the_checkpoint_a_run_resumes_from_is_the_one_ray_trains_index_names(tmp_path):
    """A run killed while Ray Train copied a checkpoint in leaves a folder its index never lists,
    and folder names are local times (a clock moved back sorts a newer one first): the driver's
    checks read the alphabetically last folder, not the one Ray resumes from (a review,
    2026-12-05). A damaged index is one line (Ray Train fails on it with a traceback)."""
    from ncf.train.checkpoint import RAY_INDEX, TRAIN_STATE, resumed_checkpoint

    run = tmp_path / "run"
    for name, epoch in (("checkpoint_2026-12-05_10-00-00", 1), ("checkpoint_2026-12-05_09-30-00", 2)):
        (run / name).mkdir(parents=True)
        write_json(str(run / name / TRAIN_STATE), {"epoch": epoch})
    assert resumed_checkpoint(str(run)) is None  # no index yet: Ray Train starts afresh
    results = [{"checkpoint_dir_name": n, "metrics": {}} for n in sorted(os.listdir(run))]
    write_json(str(run / RAY_INDEX), {"checkpoint_results": results, "latest_checkpoint_result": results[0]})
    (run / "checkpoint_2026-12-05_11-00-00").mkdir()
    (run / "checkpoint_2026-12-05_11-00-00" / TRAIN_STATE).write_text('{"epoch": 3, "mod')  # a copy cut short
    assert resumed_checkpoint(str(run))[1] == {"epoch": 2}
    (run / RAY_INDEX).write_text('{"checkpoint_results": [')
    with pytest.raises(InputError, match=f"{RAY_INDEX} is damaged.*cannot resume.*new --name") as refused:
        resumed_checkpoint(str(run))
    assert "\n" not in str(refused.value)


@pytest.mark.faults
def test_a_checkpoint_cut_short_is_refused_in_one_line_before_ray_train_loads_it(tmp_path):
    """Ray Train loaded a damaged checkpoint on every worker, failed each of its three tries,
    then ended in a ``TrainingFailedError`` traceback (a review, 2026-12-05)."""
    import torch

    from ncf.train.checkpoint import OPTIMIZER, check_readable

    directory = tmp_path / "checkpoint_000002"
    directory.mkdir()
    torch.save({"w": torch.zeros(1000)}, directory / WEIGHTS)
    torch.save({"state": {}}, directory / OPTIMIZER)
    check_readable(str(directory))
    whole = (directory / WEIGHTS).read_bytes()
    (directory / WEIGHTS).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        InputError, match=f"checkpoint .*checkpoint_000002 cannot be read \\({WEIGHTS}: .*new --name"
    ) as e:
        check_readable(str(directory))
    assert "\n" not in str(e.value)


@pytest.mark.faults
def test_a_pipe_in_a_model_directory_and_a_checkpoints_outside_name_are_refused_not_read(model, tmp_path):
    """A FIFO listed in the manifest (0 bytes, the sha256 of nothing) hung verification, and any
    FIFO a seal; a checkpoint's train_state.json naming /dev/zero or ../x had it hashed (a review
    of model loading, 2026-12-07). Each is one line now, nothing opened."""
    import threading

    from ncf.train.checkpoint import CHECKSUMS, TRAIN_STATE, check_checksums

    os.mkfifo(os.path.join(model, "pipe"))
    outcomes = []

    def attempt(call):
        try:
            call()
        except ModelIntegrityError as e:
            outcomes.append(str(e))

    for call in (lambda: write_manifest(model, unsealed=[METRICS]), lambda: verify_model_dir(model)):
        worker = threading.Thread(target=attempt, args=(call,), daemon=True)  # a hang fails, not blocks, the test
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "blocked reading the pipe"
    assert outcomes == [f"{model}: pipe is not a regular file (a pipe, socket or device); remove it"] * 2
    for name in ("/dev/zero", "../model.pt"):
        with pytest.raises(InputError, match=f"records a checksum of '{re.escape(name)}', no file of a checkpoint"):
            check_checksums(str(tmp_path), {CHECKSUMS: {name: "0" * 64}})
    assert TRAIN_STATE == "train_state.json"


@pytest.mark.faults
def test_a_checkpoint_page_lost_to_a_crash_is_refused_by_its_checksum(tmp_path):
    """A page of ``model.pt`` zeroed (a crash before writeback) left an archive that still loaded:
    the resumed run trained on, and the export sealed, the damaged weights (a known limit until
    2026-12-06). ``train_state.json`` now records each file's sha256, checked before a load."""
    import torch

    from ncf.train.checkpoint import CHECKSUMS, TRAIN_STATE, check_readable, read_checkpoint, write_checkpoint

    directory = tmp_path / "checkpoint_000003"
    directory.mkdir()
    weights = {"w": torch.arange(20000, dtype=torch.float32)}
    rows = (np.ones(7, bool), np.ones(10, bool))
    write_checkpoint(str(directory), weights, {"state": {}}, {"epoch": 3}, rows)
    recorded = json.loads((directory / TRAIN_STATE).read_text())[CHECKSUMS]
    assert sorted(recorded) == sorted([WEIGHTS, "optimizer.pt", TRAINED_USERS, TRAINED_PRODUCTS])
    check_readable(str(directory))
    assert torch.equal(read_checkpoint(str(directory))[0]["w"], weights["w"])

    whole = bytearray((directory / WEIGHTS).read_bytes())
    whole[len(whole) // 2 : len(whole) // 2 + 4096] = bytes(4096)  # inside the tensor's bytes
    (directory / WEIGHTS).write_bytes(bytes(whole))
    loaded = torch.load(directory / WEIGHTS, weights_only=True)["w"]  # what a resume took before
    assert not torch.equal(loaded, weights["w"])
    for read in (lambda: check_readable(str(directory)), lambda: read_checkpoint(str(directory))):
        damaged = f"checkpoint {directory} is damaged \\({WEIGHTS}'s sha256 .*new --name"
        with pytest.raises(InputError, match=damaged) as e:
            read()
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="damaged .*; train again"):
        read_checkpoint(str(directory), "train again")

    state = json.loads((directory / TRAIN_STATE).read_text())
    del state[CHECKSUMS]  # a checkpoint written before the checksums: read as it was
    (directory / TRAIN_STATE).write_text(json.dumps(state))
    check_readable(str(directory))
    write_checkpoint(str(directory), weights, {"state": {}}, {"epoch": 3}, rows)
    (directory / TRAINED_PRODUCTS).unlink()
    with pytest.raises(InputError, match=f"is damaged \\({TRAINED_PRODUCTS} is gone"):
        check_readable(str(directory))


# -- one directory per read: DATA and model directories replaced (or repointed) mid-read --------


def _swap_after_first_copy(monkeypatch, swap) -> list:
    """Runs ``swap`` once the save has copied the first part of the state (vocab/); returns the
    sources copied."""
    from ncf.model import directory

    copied, copytree = [], shutil.copytree

    def copy_then_swap(source, destination, *args, **kwargs):
        result = copytree(source, destination, *args, **kwargs)
        copied.append(source)
        if len(copied) == 1:
            swap()
        return result

    monkeypatch.setattr(directory.shutil, "copytree", copy_then_swap)
    return copied


@pytest.mark.faults
def test_a_save_copies_the_state_of_the_data_its_link_pointed_at_when_repointed_mid_copy(tmp_path, monkeypatch):
    """Old code: copy_state read vocab/, user_state/ and product_stats/ through the DATA link
    one after the other; a blue/green preprocess repointing it in between gave the model the old
    vocabularies and the new purchases, and verification passed (same sizes)."""
    from ncf.model.integrity import files_digest, sha256_of
    from ncf.staging import repoint

    old, new = tiny_data(str(tmp_path / "old")), tiny_data(str(tmp_path / "new"), seed=1)
    link = str(tmp_path / "DATA")
    os.symlink(old, link)
    copied = _swap_after_first_copy(monkeypatch, lambda: repoint(link, new))
    model = save_untrained_model_dir(str(tmp_path / "model"), link, version="v1", **SMALL)
    assert len(copied) == 3 and os.path.realpath(link) == new  # repointed mid-copy
    state = os.path.join(model, "state")
    assert files_digest(layout.user_state_dir(state)) == files_digest(layout.user_state_dir(old))
    assert files_digest(layout.user_state_dir(old)) != files_digest(layout.user_state_dir(new))
    assert _config(model)["data"]["stats_sha256"] == sha256_of(layout.stats_path(old))
    verify_model_dir(model)


@pytest.mark.faults
def test_a_save_is_refused_when_a_plain_data_directory_is_swapped_mid_copy(tmp_path, monkeypatch):
    """Old code: a plain DATA swapped in place (the old directory renamed away) between two parts
    of the copy left a model of one run's vocabularies and another's purchases. Resolving cannot
    pin a plain directory, so the save is refused (TryLater) and the previous model kept."""
    from ncf.errors import TryLater

    data = tiny_data(str(tmp_path / "a"))
    model = save_untrained_model_dir(str(tmp_path / "model"), data, version="v1", **SMALL)
    new = tiny_data(str(tmp_path / "b"), seed=1)

    def preprocess_swaps_it_in():
        os.rename(data, data + "-parked")
        os.rename(new, data)

    _swap_after_first_copy(monkeypatch, preprocess_swaps_it_in)
    with pytest.raises(TryLater, match=f"^{data}: jobs.preprocess replaced it while") as error:
        save_untrained_model_dir(model, data, version="v2", **SMALL)
    assert "\n" not in str(error.value)
    assert _config(model)["version"] == "v1"
    verify_model_dir(model)


def _nan_weights_copy(model: str, destination: str) -> str:
    """A copy of ``model`` whose weights hold NaN, sealed again: only the weights' check refuses it."""
    shutil.copytree(model, destination)
    weights = torch.load(os.path.join(destination, WEIGHTS), weights_only=True)
    torch.save(
        {**weights, _a_float(weights): torch.full_like(weights[_a_float(weights)], float("nan"))},
        os.path.join(destination, WEIGHTS),
    )
    write_manifest(destination, unsealed=[METRICS])
    return destination


@pytest.mark.faults
def test_verifying_a_link_checks_the_directory_it_pointed_at_when_repointed_mid_check(model, tmp_path, monkeypatch):
    """Old code: verify_model_dir(link) went through the link for each step, so a link repointed
    after the manifest's check had the weights, state and index of another directory checked (or
    none checked at all); check_model then returned the link, for the caller to load whatever it
    pointed at by then."""
    from jobs.cli import check_model
    from ncf.model import integrity
    from ncf.staging import repoint

    damaged = _nan_weights_copy(model, str(tmp_path / "damaged"))
    link = str(tmp_path / "MODEL")
    os.symlink(model, link)
    check_manifest = integrity.check_manifest

    def check_then_repoint(*args, **kwargs):
        manifest = check_manifest(*args, **kwargs)
        repoint(link, damaged if os.path.realpath(link) == model else model)
        return manifest

    monkeypatch.setattr(integrity, "check_manifest", check_then_repoint)
    assert verify_model_dir(link) == os.path.realpath(model)  # all of it from the model it pointed at
    with pytest.raises(ModelIntegrityError, match=f"^{link}: model.pt holds NaN"):
        check_model(link)  # the damaged one, checked whole though the link went back to the model
    assert check_model(link) == os.path.realpath(model)  # what it verified, not the link's target now
    assert os.path.realpath(link) == os.path.realpath(damaged)


@pytest.mark.faults
def test_a_damaged_metrics_file_is_refused_in_one_line_naming_it(model):
    """Old code: metrics.json, outside the checksums, passed verification cut short; then
    read_metrics (the registry's register, update_metrics) raised a bare JSONDecodeError."""
    from ncf.model.directory import read_metrics

    for content, message in (("{", "unreadable metrics.json .JSONDecodeError"), ("[]", "metrics.json holds list")):
        with open(os.path.join(model, METRICS), "w") as f:
            f.write(content)
        for read in (lambda: verify_model_dir(model), lambda: read_metrics(model), lambda: update_metrics(model, {})):
            with pytest.raises(InputError, match=f"^{model}: {message}") as error:
                read()
            assert "\n" not in str(error.value)
    with pytest.raises(ModelIntegrityError):
        verify_model_dir(model)
    os.remove(os.path.join(model, METRICS))  # none at all: an empty record, as before
    assert read_metrics(model) == {}
    verify_model_dir(model)


@pytest.mark.faults
def test_a_folder_added_to_a_model_directory_is_refused_in_one_line(model):
    """Old code: the manifest lists files only, so an empty folder added passed check_manifest;
    one in state/vocab/ then failed the vocabulary's digest with an IsADirectoryError traceback
    (a folder holding a file, sealed again, too)."""
    from ncf.model.integrity import files_digest

    for folder in ("extra", "state/vocab/extra"):
        os.makedirs(os.path.join(model, folder))
        with pytest.raises(ModelIntegrityError, match=rf"folder\(s\) holding no file of the manifest: \['{folder}'\]"):
            verify_model_dir(model)
        os.rmdir(os.path.join(model, folder))
    vocab = os.path.join(model, "state", "vocab")
    os.makedirs(os.path.join(vocab, "extra"))
    with pytest.raises(ModelIntegrityError, match="extra is not a file"):
        files_digest(vocab)
    with open(os.path.join(vocab, "extra", "notes.txt"), "w") as f:
        f.write("x")
    write_manifest(model, unsealed=[METRICS])  # sealed with it: the manifest passes
    with pytest.raises(ModelIntegrityError, match="extra is not a file"):
        verify_model_dir(model)


@pytest.mark.faults
def test_a_killed_reseal_leaves_a_temporary_that_is_neither_damage_nor_sealed(model):
    """Old code: the temporary of a `jobs.verify --seal` killed before its rename made an intact
    directory fail as "file(s) not in the manifest" (read as tampering), and sealing again
    sealed it in."""
    leftover = temporary_name(os.path.join(model, MANIFEST))
    with open(leftover, "w") as f:
        f.write("{")
    verify_model_dir(model)
    manifest = write_manifest(model, unsealed=[METRICS])
    assert os.path.basename(leftover) not in manifest["files"] and WEIGHTS in manifest["files"]
    os.remove(leftover)
    verify_model_dir(model)


@pytest.mark.faults
def test_a_model_dir_handle_never_mixes_two_targets_of_a_link(model, data, tmp_path, monkeypatch):
    """Old code: when reading the link's target failed, ModelDir read config.json again through
    the link and resolved it after: a link repointed in between gave one model's config and
    another's path (weights, vocabularies, index)."""
    from ncf.model import directory
    from ncf.staging import repoint

    other = save_untrained_model_dir(str(tmp_path / "other"), data, version="v2", **SMALL)
    link = str(tmp_path / "MODEL")
    os.symlink(str(tmp_path / ".model-unset"), link)
    targets, read_config = iter([model, other, other]), directory.read_config

    def read_then_repoint(*args, **kwargs):
        try:
            return read_config(*args, **kwargs)
        finally:
            repoint(link, next(targets))  # a training repoints the link after each read

    monkeypatch.setattr(directory, "read_config", read_then_repoint)
    try:
        handle = directory.ModelDir(link)
    except InputError as e:
        assert str(e).startswith(f"{link}: not a model directory")
    else:
        assert handle.version == read_config(handle.path)["version"]


# -- the review of model directories of 2026-12-06 ------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize("damage", ["nan", "shape", "mask"])
def test_a_save_of_what_every_reader_would_refuse_keeps_the_previous_model(model, data, tmp_path, damage):
    """Old code: save_model_dir sealed and swapped in weights that had diverged (NaN), weights of
    other shapes than config.json says, or masks of another table size; the plain --output's
    good model was removed, and every reader refused the new one."""
    import dataclasses

    from ncf.model.advanced_ncf import AdvancedNCF
    from ncf.model.config import ModelConfig
    from ncf.model.directory import ModelDir, save_model_dir

    config = ModelConfig.from_dict(_config(model)["model"])
    weights, rows = AdvancedNCF(config).state_dict(), None
    if damage == "nan":
        weights[_a_float(weights)].fill_(float("nan"))
    elif damage == "shape":
        config = dataclasses.replace(config, mlp_hidden_dims=[16])
    else:
        rows = (np.ones(config.num_users, bool), np.ones(config.num_products + 1, bool))
    message = {"nan": "NaN or infinite", "shape": "shapes do not fit", "mask": "trained_products.npy holds bool"}
    # Named as the model to save, not as the good one in place (the second reading of 2026-12-06).
    given = f"^the model to save at {model}: .*{message[damage]}.*nothing saved"
    with pytest.raises(ModelIntegrityError, match=given) as error:
        save_model_dir(model, weights, config, data, END, "refit", version="v2", trained_rows=rows)
    assert "\n" not in str(error.value)
    assert ModelDir(model).version == "v1" and verify_model_dir(model)
    assert sorted(os.listdir(tmp_path)) == [".model.lock", "a", "model"]  # no stage left


@pytest.mark.faults
def test_one_mask_of_trained_rows_without_the_other_or_cut_short_is_refused(model, tmp_path):
    """Old code: a directory or checkpoint holding one of the two masks read as none (every row
    exported as trained); check_readable skipped the masks, so one cut short failed every
    worker's restore with a raw ValueError."""
    from ncf.model.files import read_trained_rows
    from ncf.train.checkpoint import check_readable

    np.save(os.path.join(model, TRAINED_USERS), np.ones(7, bool))
    write_manifest(model, unsealed=[METRICS])
    for read in (lambda: verify_model_dir(model), lambda: read_trained_rows(model)):
        with pytest.raises(InputError, match=f"^{model}: trained_users.npy without trained_products.npy"):
            read()
    checkpoint = tmp_path / "checkpoint_000001"
    checkpoint.mkdir()
    shutil.copy(os.path.join(model, WEIGHTS), checkpoint / WEIGHTS)
    np.save(checkpoint / TRAINED_USERS, np.ones(7, bool))
    with pytest.raises(InputError, match=f"checkpoint {checkpoint} cannot be read .*without trained_products.npy"):
        check_readable(str(checkpoint))
    np.save(checkpoint / TRAINED_PRODUCTS, np.ones(10, bool))
    check_readable(str(checkpoint))
    _truncate(str(checkpoint / TRAINED_PRODUCTS))
    with pytest.raises(InputError, match="cannot be read .*trained_products.npy does not load.*new --name") as error:
        check_readable(str(checkpoint))
    assert "\n" not in str(error.value)


def _returns_within(call, seconds: float = 20.0):
    """``call()``'s exception (or None), failing the test when it has not returned by then (a
    blocked read of a FIFO): run in a daemon thread, which the test process does not wait for."""
    import threading

    outcome = []

    def run():
        try:
            call()
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 - returned for the test to match
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still reading after {seconds} s"
    return outcome[0]


@pytest.mark.faults
@pytest.mark.parametrize("name", [METRICS, MANIFEST, CONFIG])
def test_a_fifo_or_an_oversized_json_file_is_refused_not_read(model, name):
    """Old code: a FIFO as metrics.json, manifest.json or config.json blocked verify_model_dir,
    and model_fingerprint (every Serve settings parse) on the two it reads, forever; a huge one
    was read whole."""
    from ncf.jsonio import SMALL_JSON_LIMIT
    from ncf.model.integrity import model_fingerprint

    path = os.path.join(model, name)
    os.remove(path)
    os.mkfifo(path)
    calls = [verify_model_dir] + ([model_fingerprint] if name != METRICS else [])
    for call in calls:
        error = _returns_within(functools.partial(call, model))
        assert isinstance(error, InputError) and str(error).startswith(f"{model}: "), error
        assert "\n" not in str(error)
    os.remove(path)
    with open(path, "wb") as f:
        f.truncate(SMALL_JSON_LIMIT + 1)  # sparse: no disk
    for call in calls:
        with pytest.raises(InputError, match=f"{SMALL_JSON_LIMIT + 1} bytes|bytes, the manifest says"):
            call(model)
    if name != CONFIG:  # config.json's size is sealed: the manifest names it first
        with pytest.raises(InputError, match=f"unreadable {name} .*{SMALL_JSON_LIMIT + 1} bytes, more than"):
            calls[-1](model)


@pytest.mark.faults
def test_an_unlistable_folder_and_a_read_error_are_said_in_one_line_not_as_missing_files(model, monkeypatch):
    """Old code: os.walk skipped a folder it could not list, so an unreadable state/vocab was
    "4 file(s) of the manifest missing"; an I/O error while hashing escaped as a traceback."""
    import builtins
    import errno

    from ncf.model import integrity

    scandir = os.scandir

    def unlistable(path="."):
        if str(path).endswith(os.path.join("state", "vocab")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", unlistable)
    with pytest.raises(ModelIntegrityError, match=f"^{model}: cannot list state/vocab .EACCES: Permission denied"):
        verify_model_dir(model)
    monkeypatch.setattr(os, "scandir", scandir)

    def failing_disk(path, *args, **kwargs):
        if str(path).endswith(WEIGHTS):
            raise OSError(errno.EIO, "Input/output error", path)
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(integrity, "open", failing_disk, raising=False)
    with pytest.raises(ModelIntegrityError, match=f"^{model}: cannot read model.pt .EIO: Input/output"):
        verify_model_dir(model)


@pytest.mark.faults
@pytest.mark.parametrize("half_copied", ["missing", "dangling link"])
def test_a_half_copied_directory_is_named_for_the_file_it_lacks(model, half_copied):
    """Old code: a model directory whose config.json was missing (a copy cut short) or a dangling
    link was "not a model directory ... run python -m jobs.train first"."""
    os.remove(os.path.join(model, CONFIG))
    if half_copied == "dangling link":
        os.symlink(os.path.join(model, "gone", CONFIG), os.path.join(model, CONFIG))
    message = {"missing": r"missing: \['config.json'\]", "dangling link": "config.json is a symbolic link"}
    with pytest.raises(ModelIntegrityError, match=f"^{model}: .*{message[half_copied]}"):
        verify_model_dir(model)


@pytest.mark.faults
def test_metrics_of_another_model_are_refused_where_a_model_reads_them(model, data, tmp_path):
    """Old code: metrics.json (unsealed) carried no version, so another model's figures copied in
    passed verification and became the registry's tags for this one."""
    from ncf.model.directory import ModelDir, read_metrics

    update_metrics(model, {"test": {"ndcg@10": 0.2}})
    assert read_metrics(model)["model_version"] == "v1"  # written by the save, kept by updates
    other = save_untrained_model_dir(str(tmp_path / "other"), data, version="v2", **SMALL)
    update_metrics(other, {"test": {"ndcg@10": 0.9}})
    shutil.copy(os.path.join(other, METRICS), os.path.join(model, METRICS))
    for read in (lambda: read_metrics(model), lambda: ModelDir(model).metrics()):  # the figures' readers
        with pytest.raises(InputError, match=f"^{model}: metrics.json holds the figures of model 'v2'.*'v1'.*remove"):
            read()
    # The model serves without its figures: its verification (deploy, Serve, the nightly job) passes.
    verify_model_dir(model)
    write_json(os.path.join(model, METRICS), {"test": {"ndcg@10": 0.2}})  # written before the field
    assert read_metrics(model) == {"test": {"ndcg@10": 0.2}}
    verify_model_dir(model)
    # A handle resolved before its plain directory was saved over (jobs.evaluate reads the figures
    # after): the new model's figures agree with the new config.json, not with the handle's model.
    held = save_untrained_model_dir(str(tmp_path / "held"), data, version="v3", **SMALL)
    handle = ModelDir(held)
    save_untrained_model_dir(held, data, version="v4", **SMALL)
    with pytest.raises(InputError, match="holds model 'v4' now, not the 'v3' read before: .*saved over"):
        handle.metrics()


@pytest.mark.faults
def test_figures_measured_after_saving_are_not_written_into_a_model_saved_over_meanwhile(model, data, tmp_path):
    """jobs.train ranks the test weeks after saving, then adds the figures to metrics.json: a
    training saved into the same --output meanwhile had its metrics.json take this model's test
    figures and best epoch, which then became its registry tags (a review of ncf/model,
    2026-12-07). The figures name their model's version; another model there is refused."""
    import shutil

    from ncf.model.files import read_metrics

    update_metrics(model, {"test": {"ndcg@10": 0.4}}, version="v1")
    assert read_metrics(model)["test"] == {"ndcg@10": 0.4}
    other = save_untrained_model_dir(str(tmp_path / "other"), data, version="v2", **SMALL)
    shutil.rmtree(model)
    shutil.copytree(other, model)  # saved over meanwhile
    with pytest.raises(InputError, match="holds model 'v2' now, not the 'v1' read before"):
        update_metrics(model, {"test": {"ndcg@10": 0.4}, "best_epoch": 3}, version="v1")
    assert "test" not in read_metrics(model) and "best_epoch" not in read_metrics(model)
    os.remove(os.path.join(model, METRICS))  # no figures there yet: compared all the same (a second read)
    with pytest.raises(InputError, match="holds model 'v2' now"):
        update_metrics(model, {"best_epoch": 3}, version="v1")
    assert not os.path.exists(os.path.join(model, METRICS))
