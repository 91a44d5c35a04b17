"""Held-out evaluation of the model and the baselines, by the same code.

The protocol (periods, full ranking, the sampled one) is :mod:`ncf.evaluate.protocol`; the
baselines' tuning on the validation weeks is :mod:`ncf.evaluate.tuning`. Here: one row per
model on the same households of the same period, the point-in-time catalog applied to all.

Example::

    rows = evaluate_all(Recommender.load(model_dir), data)  # the model, then the baselines
    rows = evaluate_all(None, data)  # the baselines alone (states and vocabularies of DATA)
"""

from __future__ import annotations

import json
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ncf.data import layout
from ncf.data.user_state import UserStates
from ncf.data.vocab import Vocabularies
from ncf.evaluate.baselines import BASELINES, PointInTime
from ncf.evaluate.protocol import (  # noqa: F401 (re-exported: the names callers know)
    MRR_DEPTH,
    SAMPLED_NEGATIVES,
    K,
    Period,
    RankFn,
    ScoreFn,
    evaluate,
    full_ranking,
    load_period,
    period_start,
    ranker_fns,
    recommender_fns,
    sample_users,
    sampled_ranking,
    within_catalog,
)
from ncf.evaluate.tuning import tuned_params
from ncf.splits import TEST, VAL

MODEL = "advanced_ncf"
BASELINE_ORDER = ("popularity", "own_frequency", "decayed_frequency", "tifu_knn", "als")


def read_boundaries(data: str) -> Dict[str, int]:
    with open(layout.stats_path(data)) as f:
        return json.load(f)["boundaries"]


def point_in_time_period(
    data: str, split: str, states: UserStates, vocabs: Vocabularies, boundaries: Dict[str, int]
) -> tuple[PointInTime, Period]:
    """What was known at the start of ``split``'s period, and the period restricted to it
    (catalog products first bought before the start, households with purchases before it)."""
    context = PointInTime.build(states, vocabs, period_start(split, boundaries))
    return context, load_period(data, split, boundaries, context.catalog, context.households())


def evaluate_baselines(
    data: str,
    states: UserStates,
    vocabs: Vocabularies,
    context: PointInTime,
    period: Period,
    users: np.ndarray,
    names: Sequence[str] = BASELINE_ORDER,
    retune: bool = False,
) -> List[Dict]:
    """One row per baseline on ``period``; tunable ones with the parameters tuned on the
    validation period (``params`` and ``val_*`` in the row)."""
    boundaries = read_boundaries(data)
    baselines = [BASELINES[n] for n in names]
    tuned = {}
    if any(b.tunable for b in baselines):
        val_context, val_period = point_in_time_period(data, VAL, states, vocabs, boundaries)
        tunable = [b for b in baselines if b.tunable]
        tuned = tuned_params(tunable, data, val_context, val_period, val_period.users, retune)
    rows = []
    for baseline in baselines:
        params = tuned[baseline.name].params if baseline.name in tuned else dict(baseline.defaults)
        started = time.time()
        ranker = baseline.build(context, **params)
        fit_seconds = round(time.time() - started, 1)
        rank, score = ranker_fns(ranker)
        row = evaluate(baseline.name, rank, score, period, users, states, context.num_products, context.catalog)
        row.update(params=params, fit_seconds=fit_seconds)
        if baseline.name in tuned:
            row.update(
                {f"val_{k}": v for k, v in tuned[baseline.name].val.items() if k in (f"recall@{K}", f"ndcg@{K}")}
            )
        rows.append(row)
    return rows


def evaluate_all(
    recommender,
    data: str,
    split: str = TEST,
    max_users: Optional[int] = None,
    with_baselines: bool = True,
    with_als: bool = True,
    retune: bool = False,
) -> List[Dict]:
    """The model (unless ``recommender`` is None), then each baseline, on the same users of
    the same period."""
    boundaries = read_boundaries(data)
    if recommender is not None:
        states, vocabs = recommender.states, recommender.vocabs
    else:
        states = UserStates.load(layout.user_state_dir(data))
        vocabs = Vocabularies.load(layout.vocab_dir(data))
    context, period = point_in_time_period(data, split, states, vocabs, boundaries)
    users = sample_users(period.users, max_users)
    rows = []
    if recommender is not None:
        rank, score = recommender_fns(recommender)
        rank = within_catalog(rank, context.catalog)
        rows.append(evaluate(MODEL, rank, score, period, users, states, context.num_products, context.catalog))
    if with_baselines:
        names = [n for n in BASELINE_ORDER if with_als or n != "als"]
        rows.extend(evaluate_baselines(data, states, vocabs, context, period, users, names, retune))
    return rows
