"""Tuning the baselines on the validation weeks, never on test.

For a tunable baseline (:data:`ncf.evaluate.baselines.BASELINES`), every setting of its grid is
built for the validation period (:class:`PointInTime` at its start: catalog, households,
popularity and fitted state from purchases before it) and scored on that period by the same
full ranking as the model; the best by validation NDCG@10 is then built for the test period
with those parameters. Nothing at or after the validation start except the validation
period's own purchases (the labels) is read, so test purchases cannot steer the choice.

Tuned parameters are kept in ``DATA/baselines/tuned.json`` (keyed by baseline, with the grid
and the validation period they were found on), so ``jobs.evaluate`` tunes once per dataset;
``--retune`` searches again. A changed grid, validation period or baseline code (a digest of
its code, :func:`ncf.evaluate.baselines.code_digest`) also searches again.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from ncf.data import layout
from ncf.errors import os_error_words
from ncf.evaluate.baselines import Baseline, PointInTime
from ncf.evaluate.protocol import K, Period, excluding_purchased, full_ranking
from ncf.jsonio import read_json, write_json

TUNED = "tuned.json"
OBJECTIVE = f"ndcg@{K}"


@dataclass
class Tuned:
    """The chosen parameters of one baseline and what they scored on the validation period."""

    params: Dict
    val: Dict[str, float]  # full-ranking metrics of ``params`` on the validation period
    trials: List[Dict] = field(default_factory=list)  # every setting tried: params and val metrics
    grid: Dict = field(default_factory=dict)
    val_start: int = 0
    val_users: int = 0
    seconds: float = 0.0


def _log(message: str) -> None:
    # stderr: jobs.evaluate's stdout is one JSON line per model.
    print(f"[tune] {message}", file=sys.stderr, flush=True)


def tune(
    baseline: Baseline,
    context: PointInTime,
    period: Period,
    users: np.ndarray,
    log: Callable[[str], None] = _log,
    exclude_purchased: bool = False,
) -> Tuned:
    """Searches ``baseline``'s grid on ``period`` (the validation one: ``context`` must be built
    at its start) and returns the best parameters by NDCG@10."""
    if context.start != period.start:
        raise ValueError(f"tuning context at {context.start} but the period starts at {period.start}")
    context = context.in_mode(exclude_purchased)  # what the boosted ranker draws its candidates for
    started = time.time()
    params = dict(baseline.defaults)
    trials: List[Dict] = []
    best: Optional[Dict] = None
    for stage in baseline.stages_for(exclude_purchased):
        names = list(stage)
        for values in itertools.product(*(stage[n] for n in names)):
            candidate = {**params, **dict(zip(names, values))}
            if best is not None and candidate == best["params"]:
                continue  # the incumbent, already scored
            ranker = baseline.build(context, **candidate)
            metrics = full_ranking(_ranking(ranker, context, exclude_purchased), period, users)
            trials.append({"params": candidate, "val": _rounded(metrics)})
            log(f"{baseline.name} {candidate}: val {OBJECTIVE} {metrics[OBJECTIVE]:.4f}")
            if best is None or metrics[OBJECTIVE] > best["val"][OBJECTIVE]:
                best = {"params": candidate, "val": metrics}
        params = dict(best["params"])
    if best is None:  # nothing to tune: the defaults
        ranking = _ranking(baseline.build(context, **params), context, exclude_purchased)
        best = {"params": params, "val": full_ranking(ranking, period, users)}
    return Tuned(
        params=best["params"],
        val=_rounded(best["val"]),
        trials=trials,
        grid=_grid(baseline, exclude_purchased),
        val_start=int(period.start),
        val_users=int(len(users)),
        seconds=round(time.time() - started, 1),
    )


# What chooses the parameters (tune: its objective and tie rule), digested into the cache's key;
# taken once, so that a stand-in for tune (a test's) does not change the key it reads.
RULES = (tune,)


def _ranking(ranker, context: PointInTime, exclude_purchased: bool):
    return excluding_purchased(ranker.rank, context.states) if exclude_purchased else ranker.rank


def _grid(baseline: Baseline, exclude_purchased: bool) -> Dict:
    """The search as recorded with its result: a cache is valid for the same grid and protocol."""
    # The relevant sets changed (products bought before left out): results tuned on the old
    # ones, recorded as "exclude_purchased": True, are searched again.
    protocol = {"exclude_purchased": "relevant: never bought before"}
    return {**baseline.grid(True, RULES), **protocol} if exclude_purchased else baseline.grid(rules=RULES)


def _changed(hit: Tuned, grid: Dict, period: Period, users: np.ndarray) -> str:
    """What differs between a kept search and this one, in words."""
    if hit.grid.get("code") != grid.get("code"):
        return "another version of its code"
    if hit.grid != grid:
        return "another grid"
    if hit.val_start != period.start:
        return "another validation period"
    return f"{hit.val_users} validation households, not {len(users)}"


def _rounded(metrics: Dict[str, float]) -> Dict[str, float]:
    return {k: round(float(v), 4) for k, v in metrics.items()}


def tuned_path(data: str) -> str:
    return os.path.join(layout.baselines_dir(data), TUNED)


def read_tuned(data: str, say: Callable[[str], None] = _log, strict: bool = False) -> Dict[str, Tuned]:
    """The tuned parameters kept in DATA (by baseline); an entry this code cannot read (another
    version's fields, a damaged file) is a miss: its baseline is searched again, not an error
    after the whole search. ``say``: where the misses are said (the keeping of a search's
    parameters reads the file again, and says nothing twice). ``strict``: a file the OS will not
    read raises its OSError (what keeps a search's parameters must not write over entries it
    could not read)."""
    path = tuned_path(data)
    if not os.path.exists(path):
        return {}
    try:
        entries = read_json(path)
    except ValueError as e:
        say(f"{path} does not read as JSON ({e}): searching again")
        return {}
    except OSError as e:  # another account's file, a folder: the evaluation only reads DATA
        if strict:
            raise
        say(f"{path} cannot be read ({e.strerror or e}): searching again")
        return {}
    if not isinstance(entries, dict):
        say(f"{path} holds no entries by baseline: searching again")
        return {}
    found = {}
    for name, entry in entries.items():
        try:
            tuned = Tuned(**entry)
        except TypeError:
            tuned = None
        if tuned is None or not all(isinstance(v, dict) for v in (tuned.params, tuned.val, tuned.grid)):
            say(f"{path}: {name}'s entry is not one this code reads: searching again")
            continue
        found[name] = tuned
    return found


def tuned_params(
    baselines: List[Baseline],
    data: Optional[str],
    context: PointInTime,
    period: Period,
    users: np.ndarray,
    retune: bool = False,
    log: Callable[[str], None] = _log,
    exclude_purchased: bool = False,
    on_error: Optional[Callable[[Baseline, Exception], None]] = None,
) -> Dict[str, Tuned]:
    """Tuned parameters of every tunable baseline: from ``DATA/baselines/tuned.json`` when it
    holds them for the same grid, protocol and validation period (and ``retune`` is off), else
    searched and written there as each search ends. ``data=None`` keeps nothing. ``on_error``:
    a search that raises is handed to it and left out, and the others go on (without it, the
    error ends the tuning; the searches done before it are kept either way)."""
    # Read with --retune too: what it cannot read, and then writes over, is said.
    kept = read_tuned(data, say=log) if data else {}
    cached = {} if retune else kept
    out: Dict[str, Tuned] = {}
    for baseline in baselines:
        if not baseline.tunable:
            continue
        key = f"{baseline.name}@exclude_purchased" if exclude_purchased else baseline.name
        hit = cached.get(key)
        grid = _grid(baseline, exclude_purchased)
        if hit and hit.grid == grid and hit.val_start == period.start and hit.val_users == len(users):
            log(f"{baseline.name}: tuned parameters from {tuned_path(data)}: {hit.params}")
            out[baseline.name] = hit
            continue
        if hit:
            why = _changed(hit, grid, period, users)
            log(f"{baseline.name}: {tuned_path(data)} was tuned for {why}: searching again")
        try:
            with context.one_baseline():  # its rankers' memo (the boosted ranker's rows) not kept for the next
                found = tune(baseline, context, period, users, log, exclude_purchased)
        except Exception as e:
            if on_error is None:
                raise
            on_error(baseline, e)
            continue
        out[baseline.name] = found
        log(f"{baseline.name}: best {found.params} in {found.seconds} s")
        if data:
            # Kept at once: a later search that fails, or a job killed during it, loses only its own.
            _keep(data, key, found, log)
    return out


def _keep(data: str, key: str, tuned: Tuned, log: Callable[[str], None]) -> None:
    """Keeps ``tuned`` beside DATA for the next run. An evaluation only reads DATA: one it cannot
    write (another account's, a read-only mount) searches again next time, its figures whole."""
    try:
        before = read_tuned(data, say=lambda message: None, strict=True)
        kept = {name: asdict(t) for name, t in {**before, key: tuned}.items()}
        os.makedirs(layout.baselines_dir(data), exist_ok=True)
        write_json(tuned_path(data), kept)
    except OSError as e:
        where = f"{tuned_path(data)} ({os_error_words(e)})"
        log(f"{key}: the tuned parameters are not kept in {where}: searched again next run")
