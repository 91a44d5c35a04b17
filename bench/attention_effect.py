"""Does the ranking depend on what the attention reads, and do its weights say anything?

python -m bench.attention_effect --data DATA --model M [--model M2 ...] [--split test]
    [--explained 500]

The ablations retrain without the attention, so they say whether a model can do as well without
it, not whether this model uses it. Here each trained model ranks the same households twice
through the one ranking path: as it is, and with the attention shown no history (every place of
every household's history masked, so that each candidate attends to the null slot alone, as for
a household without purchases). If the ranking barely moves, the "because you bought" weights
explain an input the scores do not depend on. Beside it, the report's statistics of the weights
(:func:`ncf.evaluate.report.explanation_stats`) over a seeded sample of ``--explained`` households, and of
the explanations the ranking does use (:mod:`ncf.rank.reasons`): the top 10's own products scored
again without the household's purchases of them, then of their category.

One JSON line per model: the two rankings' Recall@10 / NDCG@10, the paired difference (hidden
minus as trained) with its standard error, the share of top-10 products that change, and the
weights' statistics; then one line with the means over the models.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Dict, List, Sequence

import numpy as np
import torch

from ncf.evaluate.evaluation import model_on_period
from ncf.evaluate.metrics import paired_difference
from ncf.evaluate.protocol import PAIRED, K, model_fns, per_user_ranking, sample_users
from ncf.evaluate.report import explanation_stats
from ncf.model.advanced_ncf import AdvancedNCF, model_from_weights
from ncf.model.batch import Batch
from ncf.model.directory import ModelDir
from ncf.rank.ranker import Ranker
from ncf.splits import TEST


class HistoryHidden(AdvancedNCF):
    """The model with every history place masked: the attention reads its null slot only."""

    def logits(self, batch: Batch, need_weights: bool = False):
        return super().logits(replace(batch, history=torch.zeros_like(batch.history)), need_weights)


def history_hidden(model: AdvancedNCF) -> HistoryHidden:
    """The same weights (shared, not copied: at catalog scale the tables are gigabytes)."""
    return model_from_weights(model.config, model.state_dict(), next(model.parameters()).device, HistoryHidden)


def ranked(ranker: Ranker, period, users: np.ndarray):
    """Per-household metrics, and each household's top K."""
    rank_many, _ = model_fns(ranker)
    tops: Dict[int, np.ndarray] = {}

    def recording(us, at, depth):
        rankings = rank_many(us, at, depth)
        tops.update({int(u): np.asarray(r[:K]) for u, r in zip(us, rankings)})
        return rankings

    return per_user_ranking(None, period, users, ranker.state.states, recording), tops


def measure(model_dir: str, data: str, split: str, explained: int) -> Dict:
    ranker, period = model_on_period(model_dir, data, split)
    config = ranker.model.config
    if not (config.use_attention and config.use_mlp):
        raise SystemExit(f"{model_dir}: trained without the attention (use_attention or use_mlp off)")
    users = period.users
    as_trained, tops = ranked(ranker, period, users)
    hidden = Ranker.of_model_dir(ModelDir(model_dir), ranker.state, model=history_hidden(ranker.model))
    without, hidden_tops = ranked(hidden, period, users)
    changed = [len(np.setdiff1d(tops[int(u)], hidden_tops[int(u)])) / max(len(tops[int(u)]), 1) for u in users]
    row = {"benchmark": "attention_effect", "model_dir": model_dir, "split": split, "households": len(users)}
    for m in PAIRED:
        difference, se = paired_difference(without[m].to_numpy(), as_trained[m].to_numpy())
        row[m] = round(float(as_trained[m].mean()), 4)
        row[f"{m}_history_hidden"] = round(float(without[m].mean()), 4)
        row[f"{m}_hidden_minus_trained"] = round(difference, 4)
        row[f"{m}_hidden_minus_trained_se"] = round(se, 4)
    row["top10_changed_share"] = round(float(np.mean(changed)), 4)
    # A seeded sample: households are indexed by their purchases, so the first ones are the most active.
    stats = explanation_stats(ranker, period, sample_users(users, explained, seed=0))
    stats["explained_households"] = stats.pop("households")
    row.update({k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()})
    return row


def run(data: str, models: Sequence[str], split: str = TEST, explained: int = 500) -> List[Dict]:
    rows = []
    for model in models:
        rows.append(measure(model, data, split, explained))
        print(json.dumps(rows[-1]), flush=True)
    numeric = [k for k, v in rows[0].items() if isinstance(v, float)]
    summary = {"benchmark": "attention_effect", "split": split, "models": len(rows), "summary": "mean over models"}
    for key in numeric:
        values = np.array([r[key] for r in rows], float)
        summary[key] = round(float(values.mean()), 4)
        if len(rows) > 1 and not key.endswith("_se"):  # a standard error's spread says nothing
            summary[f"{key}_sd"] = round(float(values.std(ddof=1)), 4)
    print(json.dumps(summary), flush=True)
    return rows + [summary]


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a preprocessed DATA directory")
    p.add_argument("--model", action="append", required=True, help="a validated model directory (repeat for seeds)")
    p.add_argument("--split", default=TEST, help="the held-out period (default: test)")
    p.add_argument(
        "--explained", type=int, default=500, help="households (a seeded sample) whose explanations are summarised"
    )
    args = p.parse_args(argv)
    return run(args.data, args.model, args.split, args.explained)


if __name__ == "__main__":
    main()
