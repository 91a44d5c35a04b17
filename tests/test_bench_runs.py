"""The quality benchmarks' --reuse: a reused run's model is evaluated with today's code, beside
baselines computed with today's code, and nothing is computed to be thrown away."""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pytest
import torch

from bench import ann_build, attention_effect, deployment, first_stage_size, gpu_model, paired_differences, quality
from bench.runs import validated_run
from ncf.data import layout
from ncf.evaluate.evaluation import evaluate_all
from ncf.evaluate.tuning import read_tuned
from ncf.model.directory import ModelDir, update_metrics
from ncf.rank.candidates import RankingSettings
from ncf.rank.state import RankingState
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


def test_the_first_stage_bench_ranks_at_each_size_through_the_evaluation_code(small_model_dir, small_data):
    data, _ = small_data
    default = RankingSettings(**ModelDir(small_model_dir).ranking).candidates
    rows = first_stage_size.main(
        ["--model", small_model_dir, "--data", data, "--sizes", f"{default},10", "--own", "5", "--splits", TEST]
    )
    assert [(r["candidates"], r["own_candidates"]) for r in rows][1:] == [
        (10, rows[0]["own_candidates"]),
        (default, 5),
        (10, 5),
    ]
    fresh = evaluate_all(small_model_dir, data, TEST, baselines=())[0]  # jobs.evaluate's figure at the default size
    assert (rows[0]["recall@10"], rows[0]["ndcg@10"]) == (round(fresh["recall@10"], 4), round(fresh["ndcg@10"], 4))
    assert rows[0]["households"] == fresh["users"]
    # Products new to each household, as a Serve exclude_purchased request ranks them: its default
    # size is judged here on the validation weeks (it had been on test, by a one-off script).
    excluding = first_stage_size.main(
        ["--model", small_model_dir, "--data", data, "--sizes", str(default), "--splits", TEST, "--exclude-purchased"]
    )
    fresh = evaluate_all(small_model_dir, data, TEST, baselines=(), exclude_purchased=True)[0]
    assert excluding[0]["exclude_purchased"] and excluding[0]["ndcg@10"] == round(fresh["ndcg@10"], 4)
    assert excluding[0]["households"] == fresh["users"] and excluding[0]["repeat_share@10"] == 0


def test_the_gpu_bench_scores_and_trains_on_the_cpu_where_there_is_no_cuda(small_model_dir, small_data):
    """bench.gpu_model runs once on a lent GPU machine, with no second try to spare: its CPU half
    runs here on every change (its CUDA half is the same calls on another device)."""
    data, _ = small_data
    lists = sorted(glob.glob(os.path.join(layout.examples_root(data), "cutoff=*", "*.parquet")))[0]
    sizes = ["--users", "40", "--batch", "10", "--single", "5", "--steps", "2", "--profile", "20"]
    summary = gpu_model.main(["--model", small_model_dir, "--lists", lists, *sizes, "--train-lists", "3,100000"])
    cores = os.cpu_count()
    assert summary["households"] == 40 and summary["cpu_1_thread"]["users_per_s"] > 0
    assert summary[f"cpu_{cores}_threads"]["users_per_s"] > 0
    # Every size on the CPU too; a size past the file trains the lists it holds, and says so.
    training = summary[f"train_cpu_{cores}_threads_3_lists"]
    assert training["finite"] and training["candidates_per_s"] > 0 and training["lists_per_step"] == 3
    whole = summary[f"train_cpu_{cores}_threads_100000_lists"]
    assert whole["lists_per_step"] == summary["lists_in_file"] < 100000 and whole["finite"]
    profile = summary["profile_cpu_1_thread"]
    assert 0 < profile["inputs_share"] < 1 and 0 < profile["model_share"] < 1
    if not torch.cuda.is_available():
        assert summary["cuda"] is False and "cuda_eager_1_thread" not in summary


def test_the_gpu_bench_steps_through_its_lists_seeded_and_refuses_a_run_without_a_timed_batch(
    small_model_dir, small_data
):
    """Old code: every step of 256 lists out of 320 took the same slice, the first loss changed
    run to run (dropout unseeded), and --users at most --batch gave a steady rate of 0.0, which
    the GPU ratios then divided by."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"i": list(range(5))})
    windows = [gpu_model.step_rows(table, step, 2)["i"].to_pylist() for step in range(4)]
    assert windows == [[0, 1], [2, 3], [4, 0], [1, 2]]
    assert gpu_model.step_rows(table, 3, 8)["i"].to_pylist() == [0, 1, 2, 3, 4]
    assert gpu_model.ratio(3.0, 2.0) == 1.5 and gpu_model.ratio(0.0, 2.0) == 0.0
    assert (
        gpu_model.ratio(3.0, None) is None and gpu_model.ratio(None, 2.0) is None and gpu_model.ratio(3.0, 0.0) is None
    )
    with pytest.raises(SystemExit):
        gpu_model.main(["--model", small_model_dir, "--users", "10", "--batch", "10"])
    data, _ = small_data
    path = sorted(glob.glob(os.path.join(layout.examples_root(data), "cutoff=*", "*.parquet")))[0]
    lists, catalog = pq.read_table(path), RankingState.load(data).catalog
    first, again = (
        gpu_model.training_steps(small_model_dir, lists, catalog, torch.device("cpu"), 1, 4) for _ in range(2)
    )
    assert first["first_loss"] == again["first_loss"]


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
    # The tables' per-seed column comes from the JSON (it was dug out of each run's metrics.json).
    assert rows[0]["seeds_trained"] == [0, 1] and rows[0]["recall@10_per_seed"] == [0.3, 0.3]


def test_the_deployment_bench_ranks_the_evaluation_codes_baselines_by_raw_ids_at_the_data_end(small_data):
    data, _ = small_data
    state = RankingState.load(data)
    at = layout.DataStats(data).end + 1
    users = state.vocabs.users.raw_of(np.arange(1, 7))
    rankings = deployment.baseline_rankings(data, at, users, ("own_frequency", "decayed_frequency", "boosted_ranker"))
    assert list(rankings) == ["own_frequency", "decayed_frequency", "boosted_ranker"]
    # The tuned ones carry what the validation weeks chose, as jobs.evaluate would use.
    tuned = read_tuned(data)
    for name in ("decayed_frequency", "boosted_ranker"):
        assert rankings[name]["params"] == tuned[name].params
    # Own frequency, counted here from the same state: raw ids, each household's most bought first.
    for index, user in enumerate(users, start=1):
        ranked = rankings["own_frequency"]["ranked"][user]
        counts = np.bincount(state.states.timeline(index).products_before(at))
        assert len(ranked) == deployment.K
        assert counts[state.vocabs.products.index_of([ranked[0]])[0]] == counts.max() > 0


def test_the_train_throughput_bench_runs_its_three_modes_on_synthetic_tables(ray_session):
    """Old code: the bench built its worker and its synthetic lists by position, and broke (a
    TypeError, then a KeyError) when the training loop's Worker and the lists gained fields."""
    from bench import train_throughput

    result = train_throughput.main(["--synthetic-users", "300", "--synthetic-products", "200", "--steps", "4"])
    assert result["tables"] == {"households": 300, "products": 200}
    assert result["steps"] == {"plain_loop": 4, "ray_train": 4}
    rates = ("model_only", "plain_loop", "ray_train_1_worker")
    assert all(result[f"{mode}_candidates_per_s"] > 0 for mode in rates)


def test_the_paired_bench_pairs_each_baseline_with_the_model_household_by_household(small_model_dir, small_data):
    data, _ = small_data
    rows = paired_differences.main(
        ["--data", data, "--model", small_model_dir, "--baselines", "popularity,own_frequency", "--resamples", "200"]
    )
    assert [r["scorer"] for r in rows] == ["advanced_ncf", "popularity", "own_frequency", "target"]
    # The same code and households as jobs.evaluate's rows.
    evaluated = evaluate_all(small_model_dir, data, TEST, baselines=("popularity", "own_frequency"))
    fresh = {r["model"]: r for r in evaluated}
    model = rows[0]
    for row in rows[:3]:
        assert row["households"] == fresh[row["scorer"]]["users"]
        for m in paired_differences.METRICS:
            assert row[m] == round(fresh[row["scorer"]][m], 4) and row[f"{m}_se"] > 0
    for row in rows[1:3]:
        for m in paired_differences.METRICS:
            # The figures evaluate_all's rows carry, computed from the same households.
            for key in (f"{m}_minus_model", f"{m}_minus_model_se"):
                assert row[key] == fresh[row["scorer"]][key]
            low, high = row[f"{m}_minus_model_ci95"]
            assert row[f"{m}_minus_model"] == pytest.approx(row[m] - model[m], abs=2e-4)
            assert low <= row[f"{m}_minus_model"] <= high and row[f"{m}_minus_model_se"] > 0


def test_the_paired_bench_averages_a_seeded_baseline_over_its_seeds(small_model_dir, small_data):
    data, _ = small_data
    argv = ["--data", data, "--model", small_model_dir, "--model", small_model_dir, "--baselines", "popularity,als"]
    model, popularity, als, _ = paired_differences.main([*argv, "--resamples", "50", "--baseline-seeds", "2"])
    assert (model["seeds"], popularity["seeds"], als["seeds"]) == (2, 1, 2)  # ALS takes a seed, popularity none
    assert popularity["model_seeds"] == als["model_seeds"] == 2  # what widened each row's error
    for m in paired_differences.METRICS:
        assert model[f"{m}_seed_sd"] == 0.0 and model[f"{m}_per_seed"] == [model[m]] * 2  # one model twice
        assert len(als[f"{m}_per_seed"]) == 2 and als[m] == pytest.approx(np.mean(als[f"{m}_per_seed"]), abs=1e-4)
        widened = np.sqrt(als[f"{m}_minus_model_se"] ** 2 + als[f"{m}_seed_sd"] ** 2 / 2)
        assert als[f"{m}_minus_model_se_with_seeds"] == pytest.approx(widened, abs=2e-4)
        assert popularity[f"{m}_minus_model_se_with_seeds"] == popularity[f"{m}_minus_model_se"]


def test_a_paired_difference_is_exact_on_constant_differences_and_wider_on_noisy_ones():
    constant = paired_differences.paired(np.full(50, 0.1), 100)
    assert constant["mean"] == pytest.approx(0.1) and constant["se"] == pytest.approx(0.0)
    assert constant["ci95"] == pytest.approx([0.1, 0.1])
    noisy = paired_differences.paired(np.random.default_rng(1).normal(0.1, 1.0, 400), 500)
    assert noisy["se"] == pytest.approx(1.0 / np.sqrt(400), rel=0.2)
    assert noisy["ci95"][0] < noisy["mean"] < noisy["ci95"][1]
    assert noisy["ci95"][1] - noisy["ci95"][0] == pytest.approx(2 * 1.96 * noisy["se"], rel=0.2)


def test_the_index_bench_compares_each_build_depth_with_the_exact_lists(small_model_dir):
    from ncf.model import ann

    products = np.random.default_rng(3).normal(size=(40, 4)).astype(np.float32)
    queries = np.random.default_rng(4).normal(size=(6, 4)).astype(np.float32)
    exact = ann_build.exact_top(queries, products, 5, chunk=4)
    scores = queries @ products.T
    scores[:, 0] = -np.inf
    assert all(set(e) == set(np.argsort(-s)[:5]) for e, s in zip(exact, scores))
    assert ann_build.recall(exact, exact) == 1.0 and ann_build.recall(exact[:, :1], exact) == pytest.approx(0.2)
    defaults = ann.BUILD_DEPTH, ann.SEARCH_DEPTH
    argv = ["--model", small_model_dir, "--build-depths", "16,8", "--search-depths", "4,40", "--width", "10"]
    rows = ann_build.main([*argv, "--queries", "20"])
    assert [(r["efConstruction"], r["efSearch"]) for r in rows] == [(16, 10), (16, 40), (8, 10), (8, 40)]
    assert (ann.BUILD_DEPTH, ann.SEARCH_DEPTH) == defaults
    assert all(0.0 < r["recall@10"] <= 1.0 and r["queries"] == 20 and r["search_ms_per_query"] > 0 for r in rows)
    assert all(r["search"] == "exact" for r in rows)  # a catalog this small: the index's exact fallback


def test_the_attention_bench_ranks_the_same_households_with_the_history_hidden(small_model_dir, small_data):
    import dataclasses

    import torch

    from ncf.model.advanced_ncf import example_batch
    from ncf.model.directory import load_model

    data, _ = small_data
    model = load_model(small_model_dir)
    hidden = attention_effect.history_hidden(model)
    batch = example_batch(model.config, 3, 4)
    assert batch.history.count_nonzero() > 0
    no_history = dataclasses.replace(batch, history=torch.zeros_like(batch.history))
    with torch.no_grad():
        assert torch.allclose(hidden.logits(batch)[0], model.logits(no_history)[0])
        assert not torch.allclose(hidden.logits(batch)[0], model.logits(batch)[0])
    *per_model, summary = attention_effect.main(["--data", data, "--model", small_model_dir, "--explained", "5"])
    (row,) = per_model
    fresh = evaluate_all(small_model_dir, data, TEST, baselines=())[0]
    assert row["households"] == fresh["users"] and row["explained_households"] <= 5
    for m in paired_differences.METRICS:
        assert row[m] == round(fresh[m], 4)
        assert row[f"{m}_hidden_minus_trained"] == pytest.approx(row[f"{m}_history_hidden"] - row[m], abs=2e-4)
    assert 0.0 <= row["top10_changed_share"] <= 1.0
    assert summary["models"] == 1 and summary["recall@10"] == row["recall@10"]


def test_the_scale_bench_measures_a_copy_whose_index_is_built_at_the_depth_asked(
    small_model_dir, small_data, tmp_path, monkeypatch
):
    from bench import scale
    from ncf.model import ann

    data, _ = small_data
    model = str(tmp_path / "model")
    shutil.copytree(small_model_dir, model)
    assert scale.with_index_depth(model, data, ann.BUILD_DEPTH) == model
    # Too small for an index: no copy (one was written, without an index either).
    assert scale.with_index_depth(model, data, 2 * ann.BUILD_DEPTH) == model
    assert not os.path.exists(f"{model}-ef{2 * ann.BUILD_DEPTH}")
    monkeypatch.setattr(ann, "MF_CACHE_MAX_ENTRIES", 0)  # so that the small model's save builds an index
    default = ann.BUILD_DEPTH
    deeper = scale.with_index_depth(model, data, 2 * default)
    assert deeper == f"{model}-ef{2 * default}" and ann.BUILD_DEPTH == default
    index = ann.load_if_present(deeper)
    assert index is not None and index.index.hnsw.efConstruction == 2 * default
    assert ModelDir(deeper).load_model().state_dict().keys() == ModelDir(model).load_model().state_dict().keys()


def test_the_scale_bench_reports_no_steady_rate_without_a_timed_batch(small_model_dir, small_data):
    """Old code: (households - 512) / seconds, a negative rate below 512 households."""
    from bench import scale

    data, _ = small_data
    with pytest.raises(SystemExit):
        scale.main(["--scoring-users", str(scale.SCORING_BATCH)])
    figures = scale.scoring_figures(small_model_dir, data, 5)
    assert figures["nightly_users_per_s_per_core"] is None and figures["nightly_first_batch_s"] >= 0


def test_the_paired_bench_can_rank_by_the_seeds_averaged_logits(small_model_dir, small_data):
    import torch

    from ncf.model.advanced_ncf import AdvancedNCF, example_batch
    from ncf.model.directory import load_model

    config = load_model(small_model_dir).config
    torch.manual_seed(1)
    first, second = AdvancedNCF(config).eval(), AdvancedNCF(config).eval()
    batch = example_batch(config, 3, 4)
    with torch.no_grad():
        one, two = first.logits(batch)[0], second.logits(batch)[0]
        assert not torch.allclose(one, two)
        assert torch.allclose(paired_differences.LogitsAveraged.of([first, second]).logits(batch)[0], (one + two) / 2)
    data, _ = small_data
    argv = ["--data", data, "--baselines", "popularity", "--resamples", "50"]
    alone = paired_differences.main([*argv, "--model", small_model_dir])[0]
    twice = paired_differences.main([*argv, "--average-logits", "--model", small_model_dir, "--model", small_model_dir])
    twice = twice[0]
    assert twice["combined"] == "logits averaged" and alone["combined"] == "metrics averaged"
    assert (twice["recall@10"], twice["ndcg@10"], twice["households"]) == (
        alone["recall@10"],
        alone["ndcg@10"],
        alone["households"],
    )


def test_the_two_stage_bench_compares_plain_and_new_product_rankings(small_model_dir):
    from bench import two_stage_agreement

    for extra in ([], ["--exclude-purchased"]):
        row = two_stage_agreement.main(["--model", small_model_dir, "--users", "5", *extra])
        assert row["exclude_purchased"] is bool(extra) and row["users"] == 5
        assert 0.0 <= row["min_top10_overlap"] <= row["mean_top10_overlap"] <= 1.0
        assert row["first_stage"] == "exact, kept"
    # Through the index, a catalog this small is ranked exactly by its fallback: not labelled HNSW.
    row = two_stage_agreement.main(["--model", small_model_dir, "--users", "5", "--first-stage", "hnsw"])
    assert row["first_stage"] == "exact"


def test_the_two_stage_bench_labels_a_model_without_an_mf_path():
    from types import SimpleNamespace

    from bench import two_stage_agreement

    assert two_stage_agreement.first_stage(SimpleNamespace(candidates=SimpleNamespace(mf=None))) == "none"


def test_the_baseline_scoring_bench_times_each_baseline_at_the_data_and_a_padded_catalog(small_data):
    from bench import baseline_scoring

    data, _ = small_data
    row = baseline_scoring.main(["--data", data, "--households", "4", "--products", "5000"])
    assert row["households"] == 4 and len(row["catalogs"]) == 2 and "5000" in row["catalogs"]
    for figures in row["catalogs"].values():
        assert set(figures) == {"own_frequency", "decayed_frequency", "tifu_knn_alone", "tifu_knn_100_neighbours"}
        assert all(f["rank_ms"] > 0 and f["score_ms"] > 0 for f in figures.values())


def test_the_serve_load_bench_measures_both_endpoints_on_a_small_model(small_model_dir):
    """Old code: the bench started Ray without the dashboard, whose State API its CPU figures read
    (list_actors), and crashed before printing anything. In a process of its own: it starts and
    stops its own Ray cluster."""
    import json
    import subprocess
    import sys

    from helpers import REPO, free_port

    shortest = ["--clients", "1", "--seconds", "2", "--rounds", "1", "--warmup", "1", "--idle-timeout", "5"]
    argv = [sys.executable, "-m", "bench.serve_load", "--model", small_model_dir, "--port", str(free_port())]
    done = subprocess.run([*argv, *shortest], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"benchmark"')))
    for endpoint in ("noop", "recommend"):
        load = result[endpoint]
        assert load["requests"] > 0 and load["errors"] == sum(load["errors_by_status"].values())
    assert result["recommend"]["recommend_replicas_cpu_ms_per_request"] > 0


def test_the_serve_load_window_leaves_out_the_cpu_snapshots(monkeypatch):
    """The opening CPU snapshot (a State API call) ran inside each round's window before
    2e9113e: requests/s divided by its time too."""
    import time

    from helpers import answering_server

    from bench import serve_load

    def slow_snapshot():
        time.sleep(0.6)
        return {}

    monkeypatch.setattr(serve_load, "serve_cpu_seconds", slow_snapshot)
    load = serve_load.Load()
    with answering_server(lambda path: (200, b"{}")) as url:
        serve_load.drive(f"{url}/", lambda n: {"n": n}, 1, 1.0, load)
    assert 1.0 <= load.seconds < 1.5 and load.latencies  # 0.6 s more with the snapshot inside
