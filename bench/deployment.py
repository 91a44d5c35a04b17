"""The deployment model as a user deploys it: Complete Journey's logs cut at the end of a week,
``jobs.preprocess`` -> ``jobs.train --refit`` on what came before, every household ranked at
the first moment after the cut from its histories through the cut, scored on the next 5 weeks
(full ranking, the evaluation's metrics), beside the evaluation code's baselines at the same
moment: own frequency, and recency-decayed frequency, TIFU-KNN and the boosted ranker (LightGBM
on the validated run's lists), each tuned on the cut DATA's own validation weeks as
``jobs.evaluate`` tunes them. One JSON line per model and cut.

python -m bench.deployment [--cuts-weeks-before-end 5 9] [--workdir artifacts/deployment] [--reuse]

With the default 5 weeks the cut is the test period's start (the end of week 48): the
validated model and the deployment model are then scored on the same 5 weeks, the former
ranking from the state at its own cut (its ``MODEL-validated``), as jobs.train leaves it.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Sequence

import numpy as np
import pandas as pd

from bench.runs import fresh_run_name
from jobs import preprocess, train
from ncf.data import datasets
from ncf.evaluate.baselines import PointInTime
from ncf.evaluate.evaluation import tuned_baselines
from ncf.evaluate.metrics import ranking_metrics
from ncf.rank.recommender import Recommender
from ncf.rank.state import RankingState

WEEK = pd.Timedelta(days=7)
HORIZON = 5 * WEEK
K = 10
BASELINES_HERE = ("own_frequency", "decayed_frequency", "tifu_knn", "boosted_ranker")


def baseline_rankings(data: str, at: int, users: List, names: Sequence[str]) -> Dict[str, Dict]:
    """Per baseline of ``names``: the top-``K`` raw product ids of each raw household id of
    ``users`` at ``at``, from ``data``'s state (everything through its end), with the baseline's
    parameters (tuned on ``data``'s validation weeks, or its defaults)."""
    state = RankingState.load(data)
    context = PointInTime.of_state(state, at, data)  # the boosted ranker reads this state, not DATA's again
    indices = state.vocabs.users.index_of(users)
    out = {}
    for baseline, params, _ in tuned_baselines(data, state, names):
        ranker = baseline.build(context, **params)
        ranked = {u: state.vocabs.products.raw_of(ranker.rank(int(i), at, K)) for u, i in zip(users, indices)}
        out[baseline.name] = {"params": params, "ranked": ranked}
    return out


def metrics(ranked: Dict[int, list], truth: Dict[int, np.ndarray]) -> Dict[str, float]:
    rows = [ranking_metrics(np.array(ranked.get(u, [])), t, K) for u, t in truth.items()]
    frame = pd.DataFrame(rows).mean()
    return {f"recall@{K}": round(float(frame["recall"]), 4), f"ndcg@{K}": round(float(frame["ndcg"]), 4)}


def one_cut(logs: pd.DataFrame, catalog: str, weeks_before_end: int, workdir: str, reuse: bool) -> List[Dict]:
    end = logs["timestamp"].max()
    cut = end + pd.Timedelta(seconds=1) - weeks_before_end * WEEK
    root = os.path.join(workdir, f"cut-{weeks_before_end}w")
    data, model = os.path.join(root, "data"), os.path.join(root, "model")
    before = logs[logs["timestamp"] < cut]
    if not (reuse and os.path.exists(os.path.join(model, "config.json"))):
        os.makedirs(root, exist_ok=True)
        path = os.path.join(root, "logs.parquet")
        before.to_parquet(path, index=False)
        preprocess.main(["--input", path, "--products", catalog, "--output", data])
        train.main(["--data", data, "--output", model, "--refit", "--name", fresh_run_name(model)])
    window = logs[(logs["timestamp"] >= cut) & (logs["timestamp"] < cut + HORIZON)]
    window = window[
        window["product_id"].isin(set(before["product_id"])) & window["user_id"].isin(set(before["user_id"]))
    ]
    truth = {u: np.unique(g["product_id"].to_numpy()) for u, g in window.groupby("user_id")}
    users = sorted(truth)
    rows = []
    for name, directory in (
        ("advanced_ncf (deployment: refit)", model),
        ("advanced_ncf (validated)", model + "-validated"),
    ):
        recommender = Recommender.load(directory, data=data)
        ranked = recommender.rank(users, k=K, at=int(cut.timestamp()))
        rows.append({"model": name, **metrics({r.user_id: r.product_ids for r in ranked}, truth)})
    for name, baseline in baseline_rankings(data, int(cut.timestamp()), users, BASELINES_HERE).items():
        rows.append({"model": name, "params": baseline["params"], **metrics(baseline["ranked"], truth)})
    common = {"benchmark": "deployment", "cut": str(cut), "households": len(users)}
    return [{**common, **row} for row in rows]


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuts-weeks-before-end", type=int, nargs="+", default=[5, 9], help="weeks before the data's end")
    p.add_argument("--workdir", default="artifacts/deployment", help="where the cut logs, DATA and models go")
    p.add_argument("--reuse", action="store_true", help="read models already trained in WORKDIR")
    args = p.parse_args(argv)
    logs_path, catalog = datasets.write_completejourney(os.path.join("artifacts", "datasets", "completejourney"))
    logs = pd.read_parquet(logs_path)
    logs["timestamp"] = pd.to_datetime(logs["timestamp"])
    rows = []
    for weeks in args.cuts_weeks_before_end:
        for row in one_cut(logs, catalog, weeks, args.workdir, args.reuse):
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
