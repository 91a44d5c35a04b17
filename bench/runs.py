"""Training runs for the quality benchmarks: the production path (``jobs.train``: Ray Train,
early stopping on the validation weeks, test figures in ``metrics.json``; a reused run's model
is evaluated again), and mean +- sd over seeds."""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Sequence

import numpy as np

from jobs import train
from ncf.evaluate.evaluation import evaluate_all
from ncf.jsonio import write_text
from ncf.model.directory import read_metrics
from ncf.splits import TEST

METRICS = ("recall@10", "ndcg@10", "hr@10", "mrr@10", "mrr", "recall_lit@10", "repeat_recall@10", "explore_recall@10")


def fresh_run_name(output: str) -> str:
    """A Ray Train run name no earlier run has: its output path and the time. Ray Train resumes
    a run of the same name from its checkpoint (under the same --storage), so a benchmark run
    again would export the earlier run's model, trained on nothing new, as a fresh result."""
    path = os.path.normpath(os.path.abspath(output)).strip(os.sep).replace(os.sep, "-")
    return f"bench-{path}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"


def validated_run(data: str, output: str, seed: int, epochs: int, model: Dict, reuse: bool = False) -> Dict:
    """Trains (or, with ``reuse``, reads) one validated model; returns its held-out test row."""
    started = time.time()
    reused = reuse and os.path.exists(os.path.join(output, "metrics.json"))
    if not reused:
        args = ["--data", data, "--output", output, "--epochs", str(epochs), "--seed", str(seed)]
        train.main(args + ["--model", json.dumps(model), "--name", fresh_run_name(output)])
    metrics = read_metrics(output)
    # metrics.json holds the figures of the evaluation code the run was trained with; the
    # baselines beside them are computed with today's, so a reused model is evaluated again
    # (with its own directory's settings: one written before rows_trained_before existed keeps
    # ranking ids first seen in its last label window with their own rows).
    test = evaluate_all(output, data, TEST, baselines=())[0] if reused else metrics["test"]
    return {
        **test,
        "seed": seed,
        "best_epoch": metrics.get("best_epoch"),
        "wall_seconds": round(time.time() - started),
    }


def summarize(name: str, rows: Sequence[Dict], keys: Sequence[str] = METRICS) -> Dict:
    """``name`` with each metric's mean and sample sd over the rows (seeds)."""
    out: Dict = {"model": name, "seeds": len(rows), "users": rows[0].get("users")}
    for key in keys:
        values = np.array([r[key] for r in rows if key in r], dtype=float)
        if len(values):
            out[key] = round(float(values.mean()), 4)
            out[f"{key}_sd"] = round(float(values.std(ddof=1)), 4) if len(values) > 1 else 0.0
    # The tables' "per seed (best epoch)" column, from the rows themselves (as bench.feature_mlp names them).
    out["seeds_trained"] = [r.get("seed") for r in rows]
    for key in ("recall@10", "ndcg@10", "best_epoch"):
        out[f"{key}_per_seed"] = [r.get(key) for r in rows]
    return out


def write_jsonl(path: str, rows: List[Dict]) -> str:
    """Writes the rows whole or not at all (:func:`ncf.jsonio.write_text`), so that a run killed
    while writing leaves the earlier rows (which ablations merges with its own) in place."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path
