"""How far apart are the model and each baseline, household by household?

python -m bench.paired_differences --data DATA --model M [--model M2 ...] [--split test]
    [--baselines popularity,own_frequency,...] [--resamples 2000] [--average-logits] [--baseline-seeds N]

The seeds' spread says how much a figure moves with training; it says nothing of how much it
would move on other households. Every scorer here ranks the same households of the same held-out
period, so their difference can be paired: for each household, the baseline's Recall@10 (NDCG@10)
less the model's, averaged. Its standard error (the differences' sd / sqrt(households)) and a
bootstrap interval over households (percentiles of ``--resamples`` resamples, seed 0) say
whether a lead is measurable on this many households. With several ``--model`` directories
(seeds of one configuration) the model's figure for a household is the mean of theirs; with
``--average-logits`` it is instead the figure of one ranking by their averaged logits (an
ensemble of the seeds, on the first model's candidates: their embedding rows must be the same). The
baselines are built with the parameters tuned on the validation weeks (``DATA/baselines/tuned.json``,
tuned when missing), as ``jobs.evaluate`` builds them; everything is ranked through
:func:`ncf.evaluate.protocol.per_user_ranking`, the code :func:`full_ranking` averages.

The paired standard error holds both scorers fixed. Where they vary with a seed (the model's
training; a baseline built with a ``seed``, the boosted ranker's bagging, ``--baseline-seeds N``
builds it with seeds 0..N-1 and averages its figures per household as the model's are), each row
also carries the seeds' figures, their sd, and ``_minus_model_se_with_seeds``: the paired standard
error widened by both means' seed variance (sd^2 / seeds each, taken as independent of the
households' sampling). A side with one seed adds none: with one ``--model`` (or
``--average-logits``) the model's seed variance is unknown and left out, so each baseline row says
how many seeds widened it (``seeds``, ``model_seeds``).

One JSON line per scorer (its mean and standard error per metric, and its paired difference to
the model with the standard error and the interval), then one line for issue 18's target (what
the model would have to gain, in paired standard errors of the closest baseline's difference).
"""

from __future__ import annotations

import argparse
import inspect
import json
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from ncf.data import layout
from ncf.evaluate.baselines import PointInTime
from ncf.evaluate.evaluation import BASELINE_ORDER, MODEL, model_on_period, tuned_baselines
from ncf.evaluate.metrics import paired_difference
from ncf.evaluate.protocol import PAIRED, Period, model_fns, per_user_ranking, period_start, ranker_fns
from ncf.model.advanced_ncf import AdvancedNCF, model_from_weights
from ncf.model.directory import ModelDir
from ncf.rank.ranker import Ranker
from ncf.rank.state import RankingState
from ncf.splits import TEST

METRICS = PAIRED
TARGET = {"recall@10": 0.43, "ndcg@10": 0.47}  # issue 18's, on Complete Journey's test weeks


def paired(difference: np.ndarray, resamples: int, seed: int = 0) -> Dict[str, float]:
    """Mean of per-household differences, its standard error and a 95% bootstrap interval."""
    n = len(difference)
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    low, high = np.percentile(difference[picks].mean(axis=1), [2.5, 97.5])
    mean, se = paired_difference(difference, np.zeros(n))  # the evaluation rows' figures
    return {"mean": mean, "se": se, "ci95": [float(low), float(high)]}


class LogitsAveraged(AdvancedNCF):
    """Several models of one shape as one: their logits averaged. The first stage, ``final`` and
    the attention weights are the first model's (its own tensors; ``others`` the rest)."""

    def __init__(self, config, device=None) -> None:
        super().__init__(config, device)
        self.others = nn.ModuleList()

    @staticmethod
    def of(models: Sequence[AdvancedNCF]) -> "LogitsAveraged":
        first = models[0]
        averaged = model_from_weights(first.config, first.state_dict(), next(first.parameters()).device, LogitsAveraged)
        averaged.others.extend(models[1:])
        return averaged.eval()

    def logits(self, batch, need_weights: bool = False):
        first, weights = super().logits(batch, need_weights)
        return torch.stack([first] + [m.logits(batch)[0] for m in self.others]).mean(0), weights


def same_rows(a: ModelDir, b: ModelDir) -> bool:
    """Whether two model directories' embedding rows stand for the same households and products."""
    if a.rows_trained_before != b.rows_trained_before:
        return False
    rows_a, rows_b = a.trained_rows, b.trained_rows
    if rows_a is None or rows_b is None:
        return rows_a is rows_b
    return all(np.array_equal(x, y) for x, y in zip(rows_a, rows_b))


def averaged_ranker(models: Sequence[str], data: str, split: str) -> Tuple[Ranker, Period]:
    """One ranker whose model averages ``models``' logits, on the first one's rows and index."""
    first, *others = [ModelDir(m) for m in models]
    for handle in others:
        if not same_rows(first, handle):
            raise SystemExit(f"{handle.path}: its embedding rows are not {first.path}'s: no logits to average")
    ranker, period = model_on_period(models[0], data, split)
    averaged = LogitsAveraged.of([ranker.model] + [h.load_model() for h in others])
    return Ranker.of_model_dir(first, ranker.state, model=averaged), period


def model_frames(
    models: Sequence[str], data: str, split: str, average_logits: bool = False
) -> Tuple[List[pd.DataFrame], RankingState, Period]:
    """Per-household metrics of each of ``models`` (the same households), or with
    ``average_logits`` the one frame of their averaged logits; with the state as known at the
    period's start and the period."""
    if average_logits:
        ranker, period = averaged_ranker(models, data, split)
        rank_many, _ = model_fns(ranker)
        frame = per_user_ranking(None, period, period.users, ranker.state.states, rank_many)[list(METRICS)]
        return [frame], ranker.state, period
    frames = []
    for model in models:
        ranker, period = model_on_period(model, data, split)
        rank_many, _ = model_fns(ranker)
        frames.append(per_user_ranking(None, period, period.users, ranker.state.states, rank_many)[list(METRICS)])
    return frames, ranker.state, period


def seeded(builder) -> bool:
    """Whether a baseline's builder takes a ``seed`` (its figures vary with it)."""
    return "seed" in inspect.signature(builder).parameters


def seed_figures(frames: Sequence[pd.DataFrame]) -> Dict[str, Tuple[List[float], float]]:
    """Each metric's mean per seed and their sd (0 for one seed)."""
    out = {}
    for m in METRICS:
        means = [float(f[m].mean()) for f in frames]
        out[m] = (means, float(np.std(means, ddof=1)) if len(means) > 1 else 0.0)
    return out


def run(
    data: str,
    models: Sequence[str],
    split: str = TEST,
    names: Sequence[str] = BASELINE_ORDER,
    resamples: int = 2000,
    average_logits: bool = False,
    baseline_seeds: int = 1,
) -> List[Dict]:
    model_seeds, state, period = model_frames(models, data, split, average_logits)
    model = sum(model_seeds) / len(model_seeds)
    if len(period.users) < 2:
        raise SystemExit(f"{data}: {len(period.users)} household(s) in the {split} period: nothing to pair")
    # The models' state at the period's start, kept as the context's: the boosted ranker reads it
    # rather than load DATA's again.
    context = PointInTime.of_state(state, period_start(split, layout.DataStats(data).boundaries), data)
    seeds = {MODEL: model_seeds}
    for baseline, params, _ in tuned_baselines(data, state, names):
        each = [params]
        if seeded(baseline.build) and baseline_seeds > 1:
            each = [{**params, "seed": s} for s in range(baseline_seeds)]
        seeds[baseline.name] = [
            per_user_ranking(ranker_fns(baseline.build(context, **p))[0], period, period.users)[list(METRICS)]
            for p in each
        ]
    n = len(period.users)
    model_spread = seed_figures(model_seeds)
    rows = []
    for name, frames in seeds.items():
        frame = sum(frames) / len(frames)
        row = {"benchmark": "paired_differences", "split": split, "scorer": name, "households": n}
        if name == MODEL:
            row["models"] = len(models)
            row["combined"] = "logits averaged" if average_logits else "metrics averaged"
        row["seeds"] = len(frames)
        if name != MODEL:
            row["model_seeds"] = len(model_seeds)
        spread = seed_figures(frames)
        for m in METRICS:
            values = frame[m].to_numpy()
            row[m] = round(float(values.mean()), 4)
            row[f"{m}_se"] = round(float(values.std(ddof=1) / np.sqrt(n)), 4)
            if len(frames) > 1:
                row[f"{m}_per_seed"] = [round(x, 4) for x in spread[m][0]]
                row[f"{m}_seed_sd"] = round(spread[m][1], 4)
            if name != MODEL:
                diff = paired(values - model[m].to_numpy(), resamples)
                row[f"{m}_minus_model"] = round(diff["mean"], 4)
                row[f"{m}_minus_model_se"] = round(diff["se"], 4)
                row[f"{m}_minus_model_ci95"] = [round(x, 4) for x in diff["ci95"]]
                seed_variance = spread[m][1] ** 2 / len(frames) + model_spread[m][1] ** 2 / len(model_seeds)
                row[f"{m}_minus_model_se_with_seeds"] = round(float(np.sqrt(diff["se"] ** 2 + seed_variance)), 4)
        rows.append(row)
    best = {m: max((r for r in rows if r["scorer"] != MODEL), key=lambda r: r[m]) for m in METRICS}
    model_row = rows[0]
    target = {"benchmark": "paired_differences", "split": split, "scorer": "target"}
    for m in METRICS:
        target[m] = TARGET[m]
        target[f"{m}_model_short_by"] = round(TARGET[m] - model_row[m], 4)
        target[f"{m}_best_baseline"] = best[m]["scorer"]
        # the lift the target asks of the model, in the closest baseline's paired standard errors
        se = best[m][f"{m}_minus_model_se"]
        target[f"{m}_short_by_in_paired_se"] = round((TARGET[m] - model_row[m]) / se, 1) if se > 0 else None
    rows.append(target)
    return rows


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a preprocessed DATA directory")
    p.add_argument("--model", action="append", required=True, help="a validated model directory (repeat for seeds)")
    p.add_argument("--split", default=TEST, help="the held-out period (default: test)")
    p.add_argument("--baselines", default=",".join(BASELINE_ORDER), help="comma-separated (default: all)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the households")
    p.add_argument("--average-logits", action="store_true", help="rank by the models' averaged logits (an ensemble)")
    p.add_argument(
        "--baseline-seeds",
        type=int,
        default=1,
        help="build each baseline that takes a seed (the boosted ranker) with seeds 0..N-1, averaged per household",
    )
    args = p.parse_args(argv)
    names = args.baselines.split(",")
    unknown = sorted(set(names) - set(BASELINE_ORDER))
    if unknown:
        p.error(f"--baselines: unknown {unknown}; known: {', '.join(BASELINE_ORDER)}")
    rows = run(
        args.data,
        args.model,
        args.split,
        names,
        args.resamples,
        args.average_logits,
        args.baseline_seeds,
    )
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
