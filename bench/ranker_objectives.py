"""Does a ranking objective lift the boosted ranker? LightGBM's binary loss against LambdaRank
and XE-NDCG on the same rows.

python -m bench.ranker_objectives --data DATA [--seeds 0,1,2] [--objectives binary,rank_xendcg,lambdarank]

The boosted ranker classifies each (household, candidate) row on its own ("bought within the next
H days"), yet it is judged on each household's top 10. A learning-to-rank objective optimises the
order inside a query instead: here a query is one training list (a household at one cutoff), so
LambdaRank (NDCG@20-truncated lambdas) and XE-NDCG (Bruch, 2021) see exactly the candidates a
household's ranking compares. Each objective trains LightGBM as the boosted ranker does (31
leaves, 300 rounds, :data:`ncf.evaluate.baselines.boosted.LIGHTGBM`) on the unsampled rows of
DATA's validated lists, once per seed of LightGBM's bagging, then ranks the validation and the test
weeks through the evaluation's own code, as :class:`ncf.evaluate.baselines.boosted.BoostedRanker`
does. Test is read, never used to choose. One JSON line per (seed, objective), then a summary
line per objective (mean and sd over the seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Dict, List

import numpy as np

from ncf.data import layout
from ncf.data.features import FEATURES
from ncf.evaluate.baselines.boosted import (
    LIGHTGBM,
    OwnNeighboursAndPopular,
    first_stage,
    log_q_offset,
    own_log_q,
    training_lists,
)
from ncf.evaluate.evaluation import point_in_time_period
from ncf.evaluate.protocol import full_ranking, period_start
from ncf.rank.state import RankingState
from ncf.splits import TEST, VAL, VALIDATED

LEAVES, ROUNDS = 31, 300
OBJECTIVES = {
    "binary": {},
    "rank_xendcg": {"objective": "rank_xendcg"},
    "lambdarank": {"objective": "lambdarank", "lambdarank_truncation_level": 20},
}
METRICS = ("val_recall@10", "val_ndcg@10", "test_recall@10", "test_ndcg@10")


class ScoredBy(OwnNeighboursAndPopular):
    """The boosted ranker's candidates and features, scored by ``booster``."""

    def __init__(self, context, booster) -> None:
        self.booster = booster
        super().__init__(context)

    def score(self, user: int, candidates: np.ndarray, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(features)


def query_sizes(list_of_row: np.ndarray) -> np.ndarray:
    """Rows per list, in order, for lists numbered 0.. whose rows are contiguous (lists with no
    row left out)."""
    sizes = np.bincount(list_of_row)
    return sizes[sizes > 0]


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="output of jobs.preprocess")
    parser.add_argument("--seeds", default="0,1,2", help="LightGBM seeds, comma-separated")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES), help=f"of {', '.join(OBJECTIVES)}")
    args = parser.parse_args(argv)
    objectives = args.objectives.split(",")
    unknown = sorted(set(objectives) - set(OBJECTIVES))
    if unknown:
        parser.error(f"--objectives: unknown {unknown}; known: {', '.join(OBJECTIVES)}")
    import lightgbm as lgb

    stats = layout.DataStats(args.data)
    lists = training_lists(args.data, stats.cutoffs(VALIDATED))
    unsampled = first_stage(lists["log_q"], own_log_q(args.data))  # the boosted ranker's rows
    features, labels, log_q = lists["features"][unsampled], lists["label"][unsampled], lists["log_q"][unsampled]
    offset = log_q_offset(log_q)
    groups = query_sizes(lists["list"][unsampled])
    print(f"[ranker_objectives] {len(labels):,} rows in {len(groups):,} lists", flush=True)
    state = RankingState.load(args.data)
    periods = {}
    for split in (VAL, TEST):
        period_state = state.as_of(period_start(split, stats.boundaries))
        periods[split] = point_in_time_period(period_state, split, stats.boundaries, args.data)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for objective in objectives:
            started = time.time()
            ranking = "objective" in OBJECTIVES[objective]
            train = lgb.Dataset(
                features, labels, init_score=offset, group=groups if ranking else None, feature_name=list(FEATURES)
            )
            params = {**LIGHTGBM, "num_leaves": LEAVES, "seed": seed, **OBJECTIVES[objective]}
            booster = lgb.train(params, train, num_boost_round=ROUNDS)
            row = {"objective": objective, "seed": seed, "train_seconds": round(time.time() - started, 1)}
            for split, (context, period) in periods.items():
                metrics = full_ranking(ScoredBy(context, booster).rank, period, period.users)
                row.update({f"{split}_{k}": round(metrics[k], 4) for k in ("recall@10", "ndcg@10")})
            rows.append(row)
            print(json.dumps(row), flush=True)
    for objective in objectives:
        mine = [r for r in rows if r["objective"] == objective]
        summary = {"summary": True, "objective": objective, "seeds": len(mine)}
        for key in METRICS:
            values = [r[key] for r in mine]
            summary[key] = round(statistics.mean(values), 4)
            summary[key + "_sd"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
        print(json.dumps(summary), flush=True)
    return rows


if __name__ == "__main__":
    main()
