"""The quality benchmarks' --reuse: a reused run's model is evaluated with today's code, beside
baselines computed with today's code, and nothing is computed to be thrown away."""

from __future__ import annotations

import shutil

from bench import quality
from bench.runs import validated_run
from ncf.evaluate.evaluation import evaluate_all
from ncf.model.directory import update_metrics
from ncf.splits import TEST


def test_a_reused_run_is_evaluated_again(small_model_dir, small_data, tmp_path):
    data, _ = small_data
    run = str(tmp_path / "seed0")
    shutil.copytree(small_model_dir, run)
    # What an older evaluation code wrote at training time.
    update_metrics(run, {"test": {"model": "advanced_ncf", "recall@10": -1.0}, "best_epoch": 2})
    row = validated_run(data, run, seed=0, epochs=1, model={}, reuse=True)
    fresh = evaluate_all(run, data, TEST, baselines=())[0]
    assert row["recall@10"] == fresh["recall@10"] != -1.0
    assert row["users"] == fresh["users"] and row["best_epoch"] == 2 and row["seed"] == 0


def test_quality_computes_the_baselines_without_a_model_row(monkeypatch, tmp_path):
    calls = []

    def evaluate_all(model_dir, data, split):
        calls.append(model_dir)
        return [{"model": "popularity", "recall@10": 0.1}]

    monkeypatch.setattr(quality, "evaluate_all", evaluate_all)
    monkeypatch.setattr(quality, "validated_run", lambda *a: {"recall@10": 0.3, "users": 5, "seed": a[2]})
    rows = quality.main(["--data", "DATA", "--workdir", str(tmp_path), "--seeds", "2", "--reuse"])
    assert calls == [None]
    assert [r["model"] for r in rows] == ["advanced_ncf", "popularity"]
