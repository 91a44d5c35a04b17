"""What a nightly run writes and how a reader finds it: the partition layout under OUT, the users a
DATA scores (their positions name the parts), the ``reason`` column of an explained run, and the
committed partitions with their ``_SUCCESS`` manifests (:mod:`ncf.batch.scoring` writes them,
:mod:`ncf.batch.commit` swaps them in).

Example::

    manifest = read_manifest("artifacts/batch/cj", "2018-01-01")   # None until committed
    table = read_partition("artifacts/batch/cj", "2018-01-01")     # user_id, rank, product_id, ...
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ncf.batch import commit
from ncf.data import layout
from ncf.data.vocab import Vocabularies, Vocabulary
from ncf.errors import InputError

PARTITION_KEY = "run_date"

# The ``reason`` column of an explained run: ncf.rank.reasons.Reason, field for field.
REASON_TYPE = pa.struct(
    [
        ("days_bought", pa.int32()),
        ("days_since_last", pa.float32()),
        ("typical_gap_days", pa.float32()),
        ("score_if_never_bought", pa.float32()),
        ("score_if_category_never_bought", pa.float32()),
    ]
)


def partition_name(run_date: str) -> str:
    return f"{PARTITION_KEY}={run_date}"


def partition_dir(output: str, run_date: str) -> str:
    return commit.partition_path(output, partition_name(run_date))


def read_users(data: str) -> pa.Table:
    """Every user of the data's vocabulary: ``position`` (vocabulary index, names the parts) and
    ``user_id`` (raw id, typed as in the input logs)."""
    vocab = Vocabulary.load(_users_path(data))
    return pa.table(
        {"position": pa.array(np.arange(1, len(vocab), dtype=np.int64)), "user_id": typed_ids(vocab, vocab.ids)}
    )


def count_users(data: str) -> int:
    """DATA's users without loading their ids: stats.json's count, or (a stats.json written
    before it had one) the user vocabulary's row count from its Parquet footer."""
    sizes = layout.DataStats(data).vocab_sizes
    if sizes and "num_users" in sizes:
        return int(sizes["num_users"]) - 1
    return pq.ParquetFile(_users_path(data)).metadata.num_rows  # rows 1..N: the unknown user is not stored


def _users_path(data: str) -> str:
    return os.path.join(layout.vocab_dir(data), "users.parquet")


def typed_ids(vocab: Vocabulary, ids: pa.Array) -> pa.Array:
    """Vocabulary strings back in the raw ids' type (int64 when the input ids were integers).

    Raises:
        InputError: an "int" vocabulary with ids int64 cannot hold (uint64 ids of a DATA
            preprocessed before 2026-12-04, which typed them by their column).
    """
    if vocab.kind != "int":
        return ids
    try:
        return ids.cast(pa.int64())
    except pa.ArrowInvalid:
        raise InputError(
            "DATA's vocabulary types its ids as integers, but some do not fit int64 (uint64 ids, written by "
            "jobs.preprocess before 2026-12-04): preprocess it again, which types them as text"
        ) from None


def id_type_changes(output: str, run_date: str, data: str) -> Optional[Dict]:
    """How the id columns a run of ``run_date`` writes from ``data`` differ in type from the latest
    partition committed before it (a CSV refresh with one id that is no integer turns a column of
    integers into text): ``{"previous": "run_date=D", "columns": {"user_id": {"was": "int64",
    "now": "string"}}}``. Readers that merge the partitions' schemas (Spark, Hive,
    pyarrow.dataset) refuse such a pair. None when they agree or nothing came before."""
    earlier = _latest_committed_before(output, run_date)
    if earlier is None:
        return None
    try:
        written = pads.dataset(partition_dir(output, earlier), format="parquet").schema
    except (OSError, pa.ArrowInvalid):  # swapped by a rerun of that date, or not only Parquet: no note
        return None
    kinds = Vocabularies.kinds_in(layout.vocab_dir(data))
    now = {"user_id": _written_type(kinds["users"]), "product_id": _written_type(kinds["products"])}
    changed = {
        column: {"was": str(written.field(column).type), "now": str(now[column])}
        for column in now
        if column in written.names and written.field(column).type != now[column]
    }
    return {"previous": partition_name(earlier), "columns": changed} if changed else None


def id_types_note(changes: Optional[Dict]) -> Optional[str]:
    """The console's line for :func:`id_type_changes` (None: nothing to say), with what to do."""
    if not changes:
        return None
    listed = ", ".join(f"{column} {kind['now']} (was {kind['was']})" for column, kind in changes["columns"].items())
    return (
        f"the id columns' types differ from {changes['previous']}'s: {listed}, as DATA's ids are typed now "
        "(string where some id is no integer; jobs.preprocess names them): readers that merge the partitions' "
        "schemas refuse the two (the summary's id_types_changed). If an id that is no integer came in by "
        "mistake, fix the logs and run jobs.preprocess and this date again; otherwise read the dates with one "
        "schema that types the ids as string, or score the earlier dates again from this DATA"
    )


def _written_type(kind: str) -> pa.DataType:
    """The type a run writes the ids of a vocabulary of ``kind`` as (:func:`typed_ids`)."""
    return pa.int64() if kind == "int" else pa.string()


def _latest_committed_before(output: str, run_date: str) -> Optional[str]:
    prefix = f"{PARTITION_KEY}="
    try:
        dates = sorted(n[len(prefix) :] for n in os.listdir(output) if n.startswith(prefix))
    except OSError:  # no OUT yet
        return None
    return next((d for d in reversed(dates) if d < run_date and read_manifest(output, d) is not None), None)


def read_manifest(output: str, run_date: str) -> Optional[Dict]:
    """The partition's ``_SUCCESS`` manifest, or None when the partition is not committed (or is
    another tool's: :func:`ncf.batch.commit.read_committed`). A commit a dead run left between its
    two renames (the date absent, its journal in ``_commit/``) is finished first, as the next
    scoring run would (:func:`ncf.batch.commit.finish_interrupted`: not while a live run holds
    the date, nor by a reader that may not write OUT), so that the date is not hidden until then."""
    path = partition_dir(output, run_date)
    manifest = commit.read_committed(path)
    if manifest is None and commit.finish_interrupted(output, partition_name(run_date)):
        manifest = commit.read_committed(path)
    return manifest


def read_partition(output: str, run_date: str, attempts: int = 3) -> Optional[pa.Table]:
    """A committed partition's rows; None when it is absent or has no ``_SUCCESS`` (a commit a
    dead run left half done is finished first: :func:`read_manifest`). A rerun of the date that
    swaps its partition in meanwhile is read again (:func:`within_one_run`): a reader never gets
    part of a run, or parts of two; parts of the run its manifest names that do not read, or
    hold other than its rows, are damage, raised."""

    def rows_of(manifest: Dict) -> pa.Table:
        table = pads.dataset(partition_dir(output, run_date), format="parquet").to_table()
        if table.num_rows != manifest.get("rows", table.num_rows):
            raise PartitionDamaged(
                f"{partition_dir(output, run_date)}: its parts hold {table.num_rows:,} rows, its {commit.SUCCESS} "
                f"{manifest['rows']:,}: a part lost or added (score the date again)"
            )
        return table

    return within_one_run(output, run_date, rows_of, attempts)


T = TypeVar("T")


class PartitionReplaced(RuntimeError):
    """A rerun of the date swapped its partition in during each of a reader's attempts."""


class PartitionDamaged(ValueError):
    """A committed partition's parts that do not match its manifest."""


def within_one_run(output: str, run_date: str, read: Callable[[Dict], T], attempts: int = 3) -> Optional[T]:
    """``read(manifest)`` of the committed partition, kept only where the manifest read after it
    names the same run as before: a rerun of the date may swap its partition in meanwhile (its
    parts gone, or of another schema: ids read as text after a refresh, ArrowInvalid), and it is
    read again, up to ``attempts`` times (then :class:`PartitionReplaced`). The same run's parts
    failing to read (or ``read``'s :class:`PartitionDamaged`) are damage, raised. None when the
    partition is not committed."""
    for _ in range(attempts):
        manifest = read_manifest(output, run_date)
        if manifest is None:
            return None
        try:
            result = read(manifest)
        except (FileNotFoundError, pa.ArrowException, PartitionDamaged):
            if same_run(manifest, read_manifest(output, run_date)):
                raise
            continue
        if same_run(manifest, read_manifest(output, run_date)):
            return result
    raise PartitionReplaced(f"{partition_dir(output, run_date)}: replaced by reruns {attempts} times while it was read")


def same_run(before: Dict, after: Optional[Dict]) -> bool:
    """Whether the manifest read ``after`` is the same run's as ``before`` (a rerun's swap not between)."""
    return after is not None and after["run_id"] == before["run_id"]
