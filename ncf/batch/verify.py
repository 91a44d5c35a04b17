"""Checks of a nightly run's output against its inputs: every user K rows, ranks and scores in
order, and sampled users (with their reasons, in an explained run) equal to what
``Recommender.rank`` gives them, the call Serve makes. The job runs them on its staged parts before
the commit (``--verify N``); :func:`verify_partition` runs them on a committed partition.

Example::

    report = verify_partition("artifacts/batch/cj", "2018-01-01", "artifacts/demo/data", sample=20)
    report["ok"], report["sampled_equal_to_recommend"]   # True, 20
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ncf.batch.commit import SUCCESS
from ncf.batch.partitions import PartitionReplaced, partition_dir, read_users, within_one_run
from ncf.batch.scorer import part_position
from ncf.data.catalog import households_before
from ncf.data.product_stats import ProductStats
from ncf.model.integrity import data_fingerprint
from ncf.rank.reasons import Reason
from ncf.rank.recommender import Recommender


class VerificationFailed(RuntimeError):
    """The staged output failed ``--verify``; ``report`` says which checks (nothing committed)."""

    def __init__(self, report: Dict) -> None:
        failed = [key for key, value in report.items() if value is False and key != "ok"]
        sampled = report.get("sampled_users", 0)
        if report.get("sampled_equal_to_recommend", sampled) < sampled:
            failed.append("sampled users")
        if report.get("sampled_reasons_equal_to_rank", sampled) < sampled:
            failed.append("sampled reasons")
        super().__init__("verification failed (" + ", ".join(failed or ["sampled users"]) + "): not committed")
        self.report = report


def verify_partition(output: str, run_date: str, data: str, sample: int = 20, seed: int = 0, attempts: int = 3) -> Dict:
    """Checks a committed partition against its inputs (:func:`verify_parts`); the job itself
    verifies its staged output before the commit (``BatchScoreConfig.verify``). A rerun of the
    date that swaps its partition in meanwhile (its rows checked against the old manifest, or its
    parts gone) is checked again (:func:`ncf.batch.partitions.within_one_run`)."""
    directory = partition_dir(output, run_date)

    def check(manifest: Dict) -> Dict:
        return verify_parts(directory, manifest, data, sample=sample, seed=seed)

    try:
        report = within_one_run(output, run_date, check, attempts)
    except PartitionReplaced as replaced:
        return {"ok": False, "error": f"{replaced}; check again"}
    if report is None:
        return {"ok": False, "error": f"{directory}: not committed (no {SUCCESS})"}
    return report


PROGRESS_EVERY_PARTS = 10  # verify_parts's progress lines: at most one per this many parts


def verify_parts(
    directory: str,
    manifest: Dict,
    data: str,
    sample: int = 20,
    seed: int = 0,
    stats: Optional[ProductStats] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Dict:
    """Checks the parts of ``directory`` (a committed partition or a run's stage) against their
    inputs and ``manifest`` (the ``_SUCCESS`` content); ``ok`` is True when all hold:

    * every user of ``data`` appears exactly K times, with ranks 1..K, no product twice, and
      no other user appears;
    * scores do not increase with rank; every row carries the manifest's model version, and the
      cold-start households number what the manifest says and what DATA says (households with
      no purchase before ``at``, or unknown to its purchases) (``None``, not checked, for parts
      written before the rows carried them);
    * for ``sample`` seeded users, one in each of ``sample`` different parts spread over the
      parts' order where there are that many parts, else every part and the rest spread over the
      users (:func:`spread_sample`; ``sampled_parts`` counts the parts reached), the products,
      their scores (relatively, to 1e-4) and the
      cold-start flag equal ``Recommender.rank`` at the run's ``at`` (the call the Serve
      endpoint makes), and in an explained run (``explain`` in the manifest) so do their
      reasons (``Recommender.rank(..., reasons=True)``). Products may differ where their logits
      tie (:func:`tied_logits`; counted in ``sampled_ties``): a job scored on a GPU or compiled
      moves the last bits, and near-tied products may swap.

    Reads one part at a time (a part holds whole users): the driver never holds the output.
    ``stats``: a replay's product stats, when the caller has them (computed otherwise). ``log``:
    progress lines, one every tenth of the parts (at least every :data:`PROGRESS_EVERY_PARTS`).
    """
    k = manifest["k"]
    users_table = read_users(data)
    expected_users = users_table.column("user_id")
    parts = sorted(n for n in os.listdir(directory) if n.endswith(".parquet") and not n.startswith((".", "_")))
    starts = part_starts(parts, len(expected_users))
    picked = spread_sample(len(expected_users), sample, seed, starts)
    chosen = pc.take(expected_users, pa.array(picked, pa.int64())).to_pylist()
    explained = bool(manifest.get("explain"))
    columns = ["user_id", "rank", "product_id", "score", "cold_start", "model_version"]
    columns += ["reason"] if explained else []
    seen, rows, cold_rows, job, job_reasons = [], 0, 0, {}, {}
    exactly_k = ranks_ok = no_duplicates = non_increasing = one_version = True
    has_flags = has_versions = True
    every = max(PROGRESS_EVERY_PARTS, -(-len(parts) // 10))
    for done, name in enumerate(parts, 1):
        if log is not None and (done % every == 0 or done == len(parts)) and len(parts) > PROGRESS_EVERY_PARTS:
            log(f"verify: reading part {done:,}/{len(parts):,}")
        path = os.path.join(directory, name)
        present = set(pq.read_schema(path).names)
        has_flags &= "cold_start" in present
        has_versions &= "model_version" in present
        table = pq.read_table(path, columns=[c for c in columns if c in present])
        frame = table.sort_by([("user_id", "ascending"), ("rank", "ascending")]).to_pandas()
        counts = frame.groupby("user_id", sort=False).size()
        rows += len(frame)
        cold_rows += int(frame["cold_start"].sum()) if "cold_start" in present else 0
        if "model_version" in present:
            one_version &= bool((frame["model_version"] == manifest["model_version"]).all())
        seen.append(pa.array(counts.index.to_numpy(), type=expected_users.type))
        whole = len(frame) == len(counts) * k and bool((counts == k).all())
        exactly_k &= whole
        ranks_ok &= whole and bool((frame["rank"].to_numpy() == np.tile(np.arange(1, k + 1), len(counts))).all())
        no_duplicates &= not frame.duplicated(["user_id", "product_id"]).any()
        if whole:
            non_increasing &= bool((np.diff(frame["score"].to_numpy().reshape(-1, k), axis=1) <= 1e-6).all())
        mine = frame[frame["user_id"].isin(chosen)]
        job.update({u: _Written.of(g) for u, g in mine.groupby("user_id", sort=False)})
        if explained:
            job_reasons.update({u: g["reason"].tolist() for u, g in mine.groupby("user_id", sort=False)})
    written = pa.chunked_array(seen, type=expected_users.type) if seen else pa.chunked_array([], expected_users.type)
    same_users = (
        len(written) == len(expected_users)
        and len(pc.unique(written)) == len(written)
        and bool(pc.all(pc.is_in(expected_users, value_set=written.combine_chunks())).as_py() or not len(written))
    )
    checks = {
        "users": len(written),
        "rows": rows,
        "every_user_exactly_k": same_users and exactly_k,
        "ranks_1_to_k": ranks_ok,
        "no_duplicate_products": no_duplicates,
        "scores_non_increasing": non_increasing,
        "rows_match_success": rows == manifest["rows"] and len(written) == manifest["users"],
        "model_version_of_success": one_version if has_versions else None,
        "cold_starts_match_success": cold_rows == manifest.get("cold_start_users", 0) * k if has_flags else None,
    }
    # A past at: as of its day, as the job ranked it. The users above are ``data``'s, so its
    # histories rank them too: one DATA for both (said below where it is not the one scored).
    recommender = Recommender.load(manifest["model"], data=data).as_of(manifest["at_epoch_s"], stats)
    at = manifest["at_epoch_s"]
    if has_flags:
        # Cold, as the ranking calls it: no purchase before ``at`` (or none at all).
        warm = np.isin(users_table.column("position").to_numpy(), households_before(recommender.state.states, at))
        checks["cold_starts_match_data"] = cold_rows == int((~warm).sum()) * k
    if log is not None:
        log(f"verify: ranking {len(chosen):,} sampled users again")
    ranked = recommender.rank(chosen, k=k, at=at, reasons=explained)
    matches = ties = 0
    for u, r in zip(chosen, ranked):
        mine = job.get(u)
        if mine is None or not mine.same_scores_as(r):
            continue
        if mine.products != r.product_ids:
            if not tied_logits(recommender, u, at, mine.products, r.product_ids):
                continue
            ties += 1
        matches += 1
    checks.update({"sampled_users": len(chosen), "sampled_equal_to_recommend": matches, "sampled_ties": ties})
    # The parts the sample reached (None: part names of another layout, not known).
    reached = np.unique(np.searchsorted(starts, picked, side="right")) if starts is not None else None
    checks["sampled_parts"] = None if reached is None else len(reached)
    checks["sample_seed"] = seed
    checks["ok"] = all(v for key, v in checks.items() if isinstance(v, bool)) and matches == len(chosen)
    if explained:
        same = sum(
            same_reasons(*_reasons_by_product(job_reasons.get(u), job.get(u), r)) for u, r in zip(chosen, ranked)
        )
        checks["sampled_reasons_equal_to_rank"] = int(same)
        checks["ok"] = checks["ok"] and same == len(chosen)
    checks.update(data_as_scored(manifest, data))
    return {"run_date": manifest["run_date"], "k": k, "model_version": manifest["model_version"], **checks}


def data_as_scored(manifest: Dict, data: str) -> Dict:
    """``data_as_scored``: whether ``data`` is the DATA the run scored (the run's DATA fingerprint,
    ``inputs`` in its manifest, against ``data``'s now: a DATA refreshed in place since, or another
    directory, is not; the checks then read its users and histories); None where it is not known (a
    manifest without ``inputs``, written before they were recorded). With ``data_note`` where not."""
    recorded = manifest.get("inputs")
    if not recorded or len(recorded) != 2:
        return {"data_as_scored": None}
    if data_fingerprint(data) == recorded[1]:
        return {"data_as_scored": True}
    note = (
        f"{data} is not the DATA run {manifest.get('run_id')} scored ({manifest.get('data')}), or it changed since "
        "(another stats.json): its users and histories are checked, so the checks may fail for that alone"
    )
    return {"data_as_scored": False, "data_note": note}


def part_starts(parts: Sequence[str], users: int) -> Optional[np.ndarray]:
    """The first user (0-based, in DATA's users' order) of each of ``parts`` (sorted names), from
    their names: a part is named by its batch's first position (:func:`ncf.batch.scorer.part_name`),
    user ``i`` being at position ``i + 1``. None where the names are not such a layout (another
    writer's files): the sample then spreads over the users' order alone."""
    positions = [part_position(name) for name in parts]
    if not parts or None in positions:
        return None
    starts = np.array(positions, np.int64) - 1
    if starts[0] != 0 or not (np.diff(starts) > 0).all() or starts[-1] >= users:
        return None
    return starts


def spread_sample(users: int, sample: int, seed: int, starts: Optional[np.ndarray] = None) -> np.ndarray:
    """``sample`` distinct positions of ``users`` (at most ``users``), drawn by ``seed``.

    ``starts``: the first position of each part (sorted, the first 0; a part runs to the next
    one's start): with at least ``sample`` parts, ``sample`` different parts, one in each of
    ``sample`` equal stretches of the parts' order, and one user drawn in each; with fewer, every
    part, and the rest shared among the parts by their sizes, spread inside each. Without
    ``starts``: one user in each of ``sample`` equal stretches of the users' order (parts of equal
    size are blocks of it, but a stretch can straddle two parts and two draws fall in one)."""
    sample = min(sample, users)
    if sample <= 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    if starts is None:
        return _one_in_each_stretch(users, sample, rng)
    edges = np.append(np.asarray(starts, np.int64), users)
    sizes = np.diff(edges)
    parts = len(sizes)
    if sample <= parts:
        chosen = _one_in_each_stretch(parts, sample, rng)
        return edges[chosen] + (rng.random(sample) * sizes[chosen]).astype(np.int64)
    counts = 1 + _shares(sample - parts, sizes - 1)
    return np.concatenate([edges[p] + _one_in_each_stretch(int(sizes[p]), int(counts[p]), rng) for p in range(parts)])


def _one_in_each_stretch(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` (at most ``n``) distinct values of ``range(n)``, one drawn in each of ``m`` equal stretches."""
    # Whole-number edges: each stretch at least one wide, so no two draws are one value.
    edges = np.floor(np.linspace(0, n, m + 1)).astype(np.int64)
    return edges[:-1] + (rng.random(m) * np.diff(edges)).astype(np.int64)


def _shares(total: int, room: np.ndarray) -> np.ndarray:
    """``total`` (at most ``room.sum()``) shared in proportion to ``room``, none above its room:
    the largest remainders take what rounding down left."""
    share = total * room / room.sum()
    counts = np.minimum(np.floor(share).astype(np.int64), room)
    left = total - int(counts.sum())
    order = np.argsort(-(share - counts), kind="stable")
    while left > 0:  # one pass but for float rounding: total <= room.sum() ends it
        for p in order:
            if left > 0 and counts[p] < room[p]:
                counts[p] += 1
                left -= 1
    return counts


@dataclass(frozen=True)
class _Written:
    """One sampled user's rows as the job wrote them."""

    products: list
    scores: np.ndarray
    cold_start: Optional[bool]  # None: written before the rows carried it

    @staticmethod
    def of(rows) -> "_Written":
        cold = bool(rows["cold_start"].iloc[0]) if "cold_start" in rows else None
        return _Written(rows["product_id"].tolist(), rows["score"].to_numpy(), cold)

    def same_scores_as(self, ranked) -> bool:
        """The scores rank for rank equal relatively (float32 storage, and model calls batched
        otherwise than the job's, move the last bits), the same flag."""
        return (
            len(self.products) == len(ranked.product_ids)
            and self.cold_start in (None, ranked.cold_start)
            and np.allclose(self.scores, ranked.scores, rtol=1e-4, atol=1e-12)
        )


def tied_logits(recommender: Recommender, user, at: int, written: List, expected: List) -> bool:
    """Whether the job's list differs from ``expected`` only where logits tie: at each rank, the
    logit of the product written equals that of the product expected, relatively, both scored
    now by ``recommender``. A product ranked wrongly has another logit than the one it displaced."""
    try:
        logits, _ = recommender.score_items(user, list(written) + list(expected), at, logits=True)
    except KeyError:  # a product id the vocabulary does not hold
        return False
    return bool(np.allclose(logits[: len(written)], logits[len(written) :], rtol=1e-4, atol=1e-5))


def _reasons_by_product(written_rows: Optional[List], written: Optional[_Written], ranked) -> tuple:
    """The job's reason rows and the expected reasons of the same products (a cold start's: None),
    in the job's order; a product tied at the cut, which the reference does not list, is left out."""
    if written_rows is None or written is None or ranked.reasons is None:
        return written_rows, ranked.reasons
    expected = dict(zip(ranked.product_ids, ranked.reasons))
    kept = [(row, expected[p]) for row, p in zip(written_rows, written.products) if p in expected]
    return [row for row, _ in kept], [reason for _, reason in kept]


def same_reasons(written: Optional[Sequence[Optional[Dict]]], expected: Optional[Sequence[Reason]]) -> bool:
    """Whether one user's ``reason`` rows (:data:`REASON_TYPE`) are ``expected`` (None: a cold
    start, every row null): counts exactly, the rest relatively (float32 storage, and model calls
    batched otherwise than the job's, move the last bits; a tiny probability's too)."""
    if written is None:
        return False
    if expected is None:
        return all(row is None for row in written)
    if len(written) != len(expected) or any(row is None for row in written):
        return False
    for row, reason in zip(written, expected):
        for name, value in reason.as_dict().items():
            if value is None or row[name] is None or isinstance(value, int):
                if row[name] != value:
                    return False
            elif not math.isclose(row[name], value, rel_tol=1e-4, abs_tol=1e-12):
                return False
    return True
