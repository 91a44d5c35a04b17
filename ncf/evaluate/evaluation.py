"""Held-out evaluation of the model and the baselines, by the same code.

The protocol (periods, full ranking, the sampled one) is :mod:`ncf.evaluate.protocol`; the
baselines' tuning on the validation weeks is :mod:`ncf.evaluate.tuning`. Here: one row per
model on the same households of the same period, everything as known at the period's start
(the model ranks from the state as of then; the baselines are built from a
:class:`PointInTime` at the start; catalog and households are those before it).

Example::

    rows = evaluate_all(model_dir, data)  # the model, then the baselines
    rows = evaluate_all(None, data)  # the baselines alone
"""

from __future__ import annotations

import time
import traceback
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from ncf.data import layout
from ncf.errors import InputError
from ncf.evaluate.baselines import BASELINES, Baseline, PointInTime
from ncf.evaluate.baselines.base import log
from ncf.evaluate.protocol import (  # noqa: F401 (re-exported: the names callers know)
    MRR_DEPTH,
    PAIRED,
    SAMPLED_NEGATIVES,
    K,
    Period,
    RankFn,
    RankManyFn,
    ScoreFn,
    evaluate,
    evaluate_households,
    excluding_purchased,
    first_stage_fn,
    full_ranking,
    load_period,
    model_fns,
    model_two_stage,
    period_bounds,
    period_start,
    ranker_fns,
    sample_users,
    sampled_ranking,
)
from ncf.evaluate.tuning import Tuned, tuned_params
from ncf.model.directory import ModelDir
from ncf.rank.ranker import Ranker
from ncf.rank.state import RankingState
from ncf.splits import TEST, VAL

MODEL = "advanced_ncf"
# The order of the rows everywhere (jobs.evaluate, make demo, the report, BENCHMARKS.md's tables):
# the strongest on Complete Journey first, so the model's row is read against it.
BASELINE_ORDER = ("boosted_ranker", "tifu_knn", "decayed_frequency", "own_frequency", "als", "popularity")
# Validation households each grid point of the baselines' tuning ranks, at most (a seeded sample).
TUNE_MAX_USERS = 20_000


def point_in_time_period(
    state: RankingState,
    split: str,
    boundaries: Dict[str, int],
    data: Optional[str] = None,
    exclude_purchased: bool = False,
) -> tuple[PointInTime, Period]:
    """What was known at the start of ``split``'s period, and the period restricted to it
    (catalog products first bought before the start, households with purchases before it;
    ``exclude_purchased``: see :func:`load_period`)."""
    context = PointInTime.of_state(state, period_start(split, boundaries), data, exclude_purchased)
    households = context.households()
    period = load_period(state.states, split, boundaries, context.catalog, households, exclude_purchased)
    if not len(period.users):
        raise InputError(
            f"no household of the {split} period can be evaluated: none bought there a product of the "
            "catalog known at its start, having bought anything before it"
            + (
                f" ({period.only_rebought} only bought again what they had bought before: --exclude-purchased)"
                if period.only_rebought
                else ""
            )
        )
    return context, period


def model_on_period(model_dir: str, data: str, split: str, exclude_purchased: bool = False) -> tuple[Ranker, Period]:
    """A model directory's model ranking ``data``'s ``split`` as known at its start, and the period.

    Refuses (InputError) a model whose training labels reach into the period (a refit, the
    deployment model): its figures there would not be held out."""
    handle = ModelDir(model_dir)
    boundaries = layout.DataStats(data).boundaries
    start = period_start(split, boundaries)
    check_held_out(handle, split, start)
    ranker = Ranker.of_model_dir(handle, RankingState.load(data).as_of(start))
    _, period = point_in_time_period(ranker.state, split, boundaries, exclude_purchased=exclude_purchased)
    return ranker, period


def _check_same_period(period: Period, split: str, exclude_purchased: bool) -> None:
    """A period handed in (``on_period``) is used as it is, so it must be the one asked for."""
    if period.name != split or (period.only_rebought is not None) != exclude_purchased:
        raise ValueError(
            f"on_period holds the {period.name} period (exclude_purchased={period.only_rebought is not None}), "
            f"not the {split} period with exclude_purchased={exclude_purchased}"
        )


def check_held_out(handle: ModelDir, split: str, start: int) -> None:
    """The period must start at or after the end of the model's training labels."""
    # An untrained directory (tests, benchmarks of the mechanics) saw no labels, whatever its
    # trained_through says (the data's end, so that every row counts as trained).
    if handle.config.get("run") == "untrained" or handle.trained_through <= start:
        return
    raise InputError(
        f"{handle.path}: its training labels end at {_utc(handle.trained_through)} (trained_through), "
        f"after the {split} period's start {_utc(start)}, so its {split} figures would not be held out; "
        "evaluate the validated model instead (MODEL-validated of jobs.train --refit)"
    )


def _utc(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def tuned_baselines(
    data: str,
    state: RankingState,
    names: Sequence[str] = BASELINE_ORDER,
    retune: bool = False,
    exclude_purchased: bool = False,
    on_error: Optional[Callable[[Baseline, Exception], None]] = None,
) -> List[tuple[Baseline, Dict, Optional[Tuned]]]:
    """Each baseline of ``names`` that ``data`` can build (the boosted ranker needs its training
    lists) with the parameters to build it with: for a tunable one, those tuned on ``data``'s
    validation period (from ``state``, the state of ``data``, as known at the period's start;
    its households, a seeded sample of :data:`TUNE_MAX_USERS` beyond that, once per DATA:
    ``tuned.json`` keeps the search) and the tuning's
    record; for the others, their defaults and None. ``on_error``: a baseline whose search
    raises is handed to it and left out (see :func:`tuned_params`), as is every tunable one where
    the validation period itself cannot be read (no household bought in it)."""
    stats = layout.DataStats(data)
    if "boosted_ranker" in names and not stats.raw.get("examples"):
        log("boosted_ranker left out: DATA has no training lists (jobs.preprocess --state-only)")
    baselines = [BASELINES[n] for n in names if n != "boosted_ranker" or stats.raw.get("examples")]
    tunable = [b for b in baselines if b.tunable]
    tuned: Dict[str, Tuned] = {}
    if tunable:
        # The period and its point in time come from the purchases alone (no products' stats:
        # as_of's pass over every purchase here was for nothing).
        try:
            val_context, val_period = point_in_time_period(state, VAL, stats.boundaries, data, exclude_purchased)
        except Exception as e:  # a validation period with no household to rank: the untuned still go on
            if on_error is None:
                raise
            for baseline in tunable:
                on_error(baseline, e)
            tunable = []
    if tunable:
        tuned = tuned_params(
            tunable,
            data,
            val_context,
            val_period,
            # Every grid point ranks each of these households: at 10M households (4M in the
            # validation weeks) all of them would take weeks; a seeded sample of this size, days
            # fewer. Complete Journey's 2,000 are all kept.
            sample_users(val_period.users, TUNE_MAX_USERS),
            retune,
            log=log,
            exclude_purchased=exclude_purchased,
            on_error=on_error,
        )
    return [
        (b, tuned[b.name].params if b.name in tuned else dict(b.defaults), tuned.get(b.name))
        for b in baselines
        if b.name in tuned or not b.tunable
    ]


def failed_row(name: str, stage: str, error: Exception) -> Dict:
    """The row of a baseline that raised (its traceback goes to the log): the other rows are
    still computed and printed, and ``jobs.evaluate`` then exits 1 naming it."""
    log(f"{name} failed in its {stage}:\n" + "".join(traceback.format_exception(error)).rstrip())
    # One line: jobs.evaluate's exit line names it, and errors are one line on stderr.
    return {"model": name, "failed": " ".join(f"{stage}: {type(error).__name__}: {error}".split())}


def evaluate_baselines(
    data: str,
    state: RankingState,
    context: PointInTime,
    period: Period,
    users: np.ndarray,
    names: Sequence[str] = BASELINE_ORDER,
    retune: bool = False,
    exclude_purchased: bool = False,
    on_row: Optional[Callable[[Dict], None]] = None,
    against: Optional[pd.DataFrame] = None,
) -> List[Dict]:
    """One row per baseline on ``period``; tunable ones with the parameters tuned on the
    validation period (``params`` and ``val_*`` in the row). ``exclude_purchased``: every
    ranking leaves out what the household bought before (tuning too). ``on_row``: called with
    each row as soon as it is computed (a job prints it then). ``against``: the model's
    per-household metrics on ``users`` (see :func:`ncf.evaluate.protocol.evaluate`). A baseline
    that raises, in its tuning or here, gets a :func:`failed_row` in its place and the others go
    on: one baseline out of memory at scale must not cost the figures of the rest."""
    untuned: Dict[str, Dict] = {}

    def tuning_failed(baseline: Baseline, error: Exception) -> None:
        untuned[baseline.name] = failed_row(baseline.name, "tuning", error)

    rows = []
    ready = {
        b.name: (b, p, t) for b, p, t in tuned_baselines(data, state, names, retune, exclude_purchased, tuning_failed)
    }
    for name in names:
        if name in untuned:
            row = untuned[name]
        elif name not in ready:
            continue  # one DATA cannot build (tuned_baselines says why)
        else:
            baseline, params, tuned = ready[name]
            try:
                row = _baseline_row(baseline, params, tuned, state, context, period, users, exclude_purchased, against)
            except Exception as e:
                row = {**failed_row(name, "evaluation", e), "params": params}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def _baseline_row(
    baseline: Baseline,
    params: Dict,
    tuned: Optional[Tuned],
    state: RankingState,
    context: PointInTime,
    period: Period,
    users: np.ndarray,
    exclude_purchased: bool,
    against: Optional[pd.DataFrame],
) -> Dict:
    started = time.time()
    with context.one_baseline():  # what its ranker keeps in the memo goes with it
        ranker = baseline.build(context.in_mode(exclude_purchased), **params)  # the boosted ranker draws for it
        fit_seconds = round(time.time() - started, 1)
        rank, score = ranker_fns(ranker)
        if exclude_purchased:
            rank = excluding_purchased(rank, state.states)
        row = evaluate(
            baseline.name,
            rank,
            score,
            period,
            users,
            state.states,
            context.num_products,
            context.catalog,
            against=against,
            first_stage=first_stage_fn(ranker),
        )
    row.update(params=params, fit_seconds=fit_seconds)
    if tuned is not None:
        row.update({f"val_{k}": v for k, v in tuned.val.items() if k in (f"recall@{K}", f"ndcg@{K}")})
    return row


def evaluate_all(
    model_dir: Optional[str],
    data: str,
    split: str = TEST,
    max_users: Optional[int] = None,
    baselines: Sequence[str] = BASELINE_ORDER,
    retune: bool = False,
    name: str = MODEL,
    on_period: Optional[tuple[Ranker, Period]] = None,
    exclude_purchased: bool = False,
    on_row: Optional[Callable[[Dict], None]] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> List[Dict]:
    """The model (unless ``model_dir`` is None), then each of ``baselines``, on the same
    households of the same period of ``data`` (``on_period``: :func:`model_on_period`'s result,
    when the caller has it already). ``exclude_purchased``: every ranking leaves out what the
    household bought before, and so do the relevant sets (see :func:`load_period`). ``on_row``:
    called with each row as soon as it is computed. With a model, each baseline's row carries its
    difference to the model, household by household, with the paired standard error
    (``recall@10_minus_model``, ``recall@10_minus_model_se``, the same for NDCG@10). ``progress``:
    told how far the model's ranking is (:func:`ncf.evaluate.protocol.full_ranking`)."""
    boundaries = layout.DataStats(data).boundaries
    rows = []
    if model_dir is None:
        state = RankingState.load(data).as_of(period_start(split, boundaries))
        context, period = point_in_time_period(state, split, boundaries, data, exclude_purchased)
    else:
        ranker, period = on_period or model_on_period(model_dir, data, split, exclude_purchased)
        _check_same_period(period, split, exclude_purchased)
        state = ranker.state
        context = PointInTime.of_state(state, period_start(split, boundaries), data, exclude_purchased)
    users = sample_users(period.users, max_users)
    households = None
    if model_dir is not None:
        _, score = model_fns(ranker, exclude_purchased)
        rank_many = model_two_stage(ranker, exclude_purchased)  # with its candidates: their coverage
        row, households = evaluate_households(
            name,
            None,
            score,
            period,
            users,
            state.states,
            context.num_products,
            context.catalog,
            rank_many,
            progress=progress,
        )
        households = households[[m for m in PAIRED if m in households.columns]]  # all the baselines need of it
        rows.append(row)
        if on_row is not None:
            on_row(rows[-1])
    if baselines:
        rows.extend(
            evaluate_baselines(
                data, state, context, period, users, baselines, retune, exclude_purchased, on_row, households
            )
        )
    return rows
