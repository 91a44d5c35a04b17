"""The deployment model and fresh histories (issue 17): what is served ranks from everything known.

* ``jobs.preprocess`` -> ``jobs.train --refit`` through the CLI on logs cut at a date D: the
  deployment model's histories reach D, and a household first seen in the last week before D
  gets a personal (not cold-start) ranking from Serve and from the nightly job;
* a model trained on older DATA ranks from a newer DATA's histories: newer purchases change the
  rankings and households new in the newer DATA are scored.
"""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import requests
from helpers import REPO, free_port

from ncf.batch import scoring as batch_scoring
from ncf.batch.partitions import read_partition
from ncf.data import datasets, layout, schema
from ncf.data.preprocess import PreprocessConfig, preprocess
from ncf.data.user_state import UserStates
from ncf.jsonio import read_json
from ncf.model.directory import ModelDir
from ncf.rank.recommender import Recommender
from ncf.rank.state import histories_against_model

DAY = 86_400
NEW_HOUSEHOLD = 990_001


def _logs_with_a_new_household(root, cut: pd.Timestamp) -> tuple[str, str]:
    """The small synthetic logs cut at ``cut``, plus a household whose first purchases fall in the
    last week before it (a copy of household 3's recent baskets)."""
    logs, catalog = datasets.write_synthetic(str(root / "raw"), datasets.SMALL)
    frame = pd.read_parquet(logs)
    frame = frame[frame["timestamp"] < cut]
    donor = frame[frame["user_id"] == 3].tail(12).copy()
    donor["user_id"] = NEW_HOUSEHOLD
    donor["timestamp"] = cut - pd.Timedelta(days=3) + pd.to_timedelta(np.arange(len(donor)) % 2, unit="h")
    path = str(root / "logs.parquet")
    pd.concat([frame, donor]).to_parquet(path, index=False)
    return path, catalog


def _run(ray_session, *args: str) -> str:
    # Submitted to the session's cluster (RAY_ADDRESS): a job's own local cluster would start
    # beside it, which costs tens of seconds on 2 cores (test_faults' sweep drill runs a job that way).
    address = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_ADDRESS": address}
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_refit_through_the_cli_serves_every_household_from_histories_to_the_cut(ray_session, tmp_path):
    cut = pd.Timestamp("2024-12-01", tz="UTC")
    logs, catalog = _logs_with_a_new_household(tmp_path, cut)
    data, model = str(tmp_path / "data"), str(tmp_path / "model")
    _run(
        ray_session,
        "jobs.preprocess",
        "--input",
        logs,
        "--products",
        catalog,
        "--output",
        data,
        "--cutoffs",
        "2",
        "--horizon-days",
        "21",
        "--val-weeks",
        "3",
        "--test-weeks",
        "4",
    )
    out = _run(
        ray_session,
        "jobs.train",
        "--data",
        data,
        "--output",
        model,
        "--refit",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-steps-per-epoch",
        "3",
        "--val-users",
        "20",
        "--model",
        '{"mf_embedding_dim": 16, "mlp_embedding_dim": 16, "temporal_dim": 8, "mlp_hidden_dims": [32, 16]}',
        "--storage",
        str(tmp_path / "runs"),
    )
    assert "deployment model" in out
    deployed, validated = ModelDir(model), ModelDir(model + "-validated")
    assert deployed.config["run"] == "refit" and validated.config["run"] == "validated"
    # The deployment model reports the figures of the validated model it was refit after.
    assert deployed.metrics()["validated"]["test"] == validated.metrics()["test"]
    # The deployment model's labels and histories reach the cut; the validated one's labels do not.
    bounds = read_json(layout.stats_path(data))["boundaries"]
    assert deployed.trained_through == bounds["end"] + 1 > validated.trained_through == bounds["val_start"]
    states = UserStates.load(layout.user_state_dir(deployed.state_dir))
    assert int(states.timestamps.max()) == bounds["end"] >= int(cut.timestamp()) - DAY

    recommender = Recommender.load(model)
    ranked = recommender.rank([NEW_HOUSEHOLD], k=5)[0]
    assert not ranked.cold_start and len(ranked.product_ids) == 5

    # Serve: a personal answer for the new household, ranked at the first moment after the data.
    from ray import serve

    from serve.app import build_app
    from serve.launch import start, wait_until_healthy

    try:
        url = start(
            build_app({"model": model, "default_at": "data-end", "max_replicas": 1, "num_cpus": 0.25}),
            port=free_port(),
            app_name="deployment",
        )
        wait_until_healthy(url, timeout_s=120)
        body = requests.post(f"{url}/recommend", json={"user_id": NEW_HOUSEHOLD, "k": 5}, timeout=60).json()
        assert body["cold_start"] is False and [i["product_id"] for i in body["items"]] == ranked.product_ids
    finally:
        serve.shutdown()

    # The nightly job scores every household of DATA, the new one too, and says how many were new.
    config = batch_scoring.BatchScoreConfig(model=model, data=data, output=str(tmp_path / "out"), k=5, at="data-end")
    logged = []
    summary = batch_scoring.run_batch_scoring(config, log=logged.append)
    assert summary["users"] == read_json(layout.stats_path(data))["vocab_sizes"]["num_users"] - 1
    table = read_partition(config.output, summary["run_date"]).to_pandas()
    assert table[table["user_id"] == NEW_HOUSEHOLD]["product_id"].tolist() == ranked.product_ids


@pytest.mark.faults
def test_a_csv_refresh_of_a_parquet_trained_model_answers_the_same_ids(ray_session, small_model_dir, tmp_path):
    """The same log exported as CSV and as Parquet with integer ids: their refreshes rank alike, and
    both answer integer ids. A CSV's ids used to be kept as text, so Serve answered ``"12"`` where it
    had answered ``12`` and the nightly partitions' id columns changed type between dates."""
    logs, catalog = datasets.write_synthetic(str(tmp_path / "raw"), datasets.SMALL)
    frame = pd.read_parquet(logs)
    as_csv = str(tmp_path / "logs.csv")
    frame.to_csv(as_csv, index=False)
    refreshes = {}
    for name, path in (("parquet", logs), ("csv", as_csv)):
        refreshes[name] = str(tmp_path / name)
        preprocess(
            schema.resolve_files(path),
            schema.resolve_files(catalog),
            refreshes[name],
            PreprocessConfig(),
            state_only=True,
        )
    households = frame["user_id"].drop_duplicates().head(3).tolist()
    models = {name: Recommender.load(small_model_dir, data=data) for name, data in refreshes.items()}
    assert {(m.vocabs.users.kind, m.vocabs.products.kind) for m in models.values()} == {("int", "int")}
    ranked = {name: model.rank(households, k=5) for name, model in models.items()}
    for parquet, csv in zip(ranked["parquet"], ranked["csv"]):
        assert csv.product_ids == parquet.product_ids and all(type(p) is int for p in csv.product_ids)
    assert np.allclose([r.scores for r in ranked["csv"]], [r.scores for r in ranked["parquet"]])


@pytest.mark.faults
def test_a_model_ranks_from_a_newer_datas_histories(ray_session, small_model_dir, small_data, tmp_path):
    data, stats = small_data
    logs, catalog = datasets.write_synthetic(str(tmp_path / "raw"), datasets.SMALL)
    frame = pd.read_parquet(logs)
    end = pd.Timestamp(stats["boundaries"]["end"], unit="s", tz="UTC")
    household = int(frame["user_id"].iloc[0])
    newer_purchases = pd.DataFrame(
        {
            "user_id": [household] * 3 + [NEW_HOUSEHOLD] * 3,
            "product_id": frame["product_id"].iloc[[5, 6, 7, 5, 8, 9]].to_numpy(),
            "timestamp": [end + pd.Timedelta(days=2)] * 3 + [end + pd.Timedelta(days=3)] * 3,
            "quantity": 1,
        }
    )
    newer_logs = str(tmp_path / "newer.parquet")
    pd.concat([frame, newer_purchases]).to_parquet(newer_logs, index=False)
    newer = str(tmp_path / "newer")
    preprocess(
        schema.resolve_files(newer_logs), schema.resolve_files(catalog), newer, PreprocessConfig(), state_only=True
    )

    older_model, newer_model = Recommender.load(small_model_dir), Recommender.load(small_model_dir, data=newer)
    at = newer_model.default_at
    before = older_model.rank([household], k=10, at=at)[0]
    after = newer_model.rank([household], k=10, at=at)[0]
    assert (before.product_ids, before.scores) != (after.product_ids, after.scores)  # the newer purchases count
    new = newer_model.rank([NEW_HOUSEHOLD], k=10)[0]
    assert not new.cold_start and older_model.rank([NEW_HOUSEHOLD], k=10)[0].cold_start
    # Its embedding row is the model's unknown row; its own purchases drive features and candidates
    # (its own products and their co-purchase neighbours: the candidates, whether or not this
    # barely trained model ranks them above the MF path's).
    own = frame["product_id"].iloc[[5, 8, 9]].tolist()
    products = newer_model.vocabs.products
    near = newer_model.state.stats.neighbours.best(products.index_of(own), 100)
    user = int(newer_model.vocabs.users.index_of([NEW_HOUSEHOLD])[0])
    timeline = newer_model.state.states.timeline(user)
    candidates = newer_model.ranker.candidates.for_household(user, timeline, new.at, False, None)
    assert set(products.index_of(own)) <= set(candidates.tolist()) and set(near.tolist()) & set(candidates.tolist())
    assert new.product_ids != older_model.rank([NEW_HOUSEHOLD], k=10, at=at)[0].product_ids  # not cold start's

    config = batch_scoring.BatchScoreConfig(
        model=small_model_dir, data=newer, output=str(tmp_path / "out"), k=5, at="data-end"
    )
    logged = []
    summary = batch_scoring.run_batch_scoring(config, log=logged.append)
    assert any("1 households with purchases are new to the model" in line for line in logged), logged
    table = read_partition(config.output, summary["run_date"]).to_pandas()
    assert set(table["user_id"]) >= {household, NEW_HOUSEHOLD} and summary["users"] == stats["vocab_sizes"]["num_users"]
    newer_end = read_json(layout.stats_path(newer))["boundaries"]["end"]
    assert summary["data_end"] == pd.Timestamp(newer_end, unit="s", tz="UTC").isoformat()
    assert not any("days before the moment scored" in line or "DATA's purchases" in line for line in logged), logged
    # A night whose refresh stopped: the run goes ahead and says how old the histories are.
    later = dataclasses.replace(config, at=str(newer_end + 10 * DAY), output=str(tmp_path / "out-later"))
    logged = []
    batch_scoring.run_batch_scoring(later, log=logged.append)
    assert any("last purchase is 10 days before the moment scored" in line for line in logged), logged


@pytest.mark.faults
def test_a_data_older_than_the_models_or_cut_short_is_said():
    """A DATA that ends before the one the model was trained on, or starts after it (a refresh
    given only the recent logs): the ranking goes ahead, and the jobs and replicas say why its
    histories are older or shorter than the model's own."""
    config = {"data": {"boundaries": {"start": 100 * DAY, "end": 200 * DAY}}}
    assert histories_against_model(config, {"start": 100 * DAY, "end": 210 * DAY}) == []
    (older,) = histories_against_model(config, {"start": 100 * DAY, "end": 150 * DAY})
    assert "older than the model's own state" in older
    (cut_short,) = histories_against_model(config, {"start": 130 * DAY, "end": 230 * DAY})
    assert "earlier purchases are not in their histories" in cut_short and "rolling window" in cut_short
    assert histories_against_model({"data": {}}, {"start": 130 * DAY, "end": 150 * DAY}) == []  # nothing recorded
