"""Reading purchase logs with Ray Data: every source row comes out once, validated, with the
file and row it came from; rows far after the bulk of the data are quarantined.

Why not ``ray.data.read_csv`` / ``read_parquet``: Ray 2.60's ``read_csv`` does carry
``parse_options`` to its read tasks (pickled with the datasource, which even sets
``invalid_row_handler`` again after unpickling, ARROW-17641), so a handler travels. But a
handler can only answer "skip" or "error": the rows it sees stay in the read task's process and
never join the blocks the task yields, so they could be counted or quarantined only through a
side channel (files written from inside the parser's callback, duplicated when a task is
retried). Neither reader numbers rows, and ``read_csv`` decodes text as strict UTF-8. So the read
tasks here are ours: one Ray Data task per piece (a CSV file, or a run of a Parquet file's row
groups), reading with pyarrow's streaming readers and yielding validated batches in which a
CSV row with the wrong number of fields is a ``malformed_row`` row with its number and text.

Besides :data:`ncf.data.schema.VALIDATED`, rows carry

* ``source_file``: index into the input file list (a path per row would cost more than the row);
* ``source_row``: Parquet, the 0-based row index in the file; CSV, the row number pyarrow's
  parser gives (header = 1, so the line number an editor shows unless blank lines, which are
  skipped, or quoted values spanning lines come before);
* ``raw_row``: the text of a malformed CSV row (null otherwise).

``rows_in`` is counted from the source apart from the read: Parquet footers, and for CSV a
second parse that only counts rows (:func:`csv_rows`); each file's count is checked against the
rows that came out, so a row lost anywhere (a file's last rows, a whole file) stops the run. A
file is looked at (size, modification time) when the job plans its files and again later: a CSV
when it is counted, a Parquet file when each of its pieces is read, before and after. One written
to in between (an export still being appended to, a nightly export rewritten after its footer
was read) is an InputError, not a count that disagrees with the read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ncf.data import schema
from ncf.errors import InputError, raised_within

SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"
RAW_ROW = "raw_row"
OK = "ok"  # the reason column's value for kept rows in counts
DAY = 86_400

PIECE_ROWS = 1_000_000  # a Parquet file's row groups are read in pieces of about this many rows
BATCH_ROWS = 65_536
CSV_BLOCK_BYTES = 4 << 20

# Where the bulk of the data ends (see future_bound).
BULK_QUANTILE = 0.99
EARLY_QUANTILE = 0.05  # rows before a gap ahead of this share of the log are warned of
GAP_MEDIANS = 3


# -- planning (driver) ----------------------------------------------------------------------------------


def file_state(path: str) -> Tuple[int, int]:
    """A file's size and modification time (ns): what writing to it changes."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def changed_while_read(path: str) -> InputError:
    """The one line for a file that is no longer as the job planned it."""
    return InputError(f"{path}: changed while the job read it; run again once it is complete")


def _changed_since_planned(piece: Dict) -> bool:
    """Whether ``piece``'s file is no longer as :func:`plan` saw it; False for a piece that
    records no state (one made by hand), and for a file this node cannot look at (gone, or not
    on storage it mounts): the read's own error says that, "changed" would not."""
    if piece.get("size") is None:
        return False
    try:
        return file_state(piece["path"]) != (piece["size"], piece["mtime_ns"])
    except OSError:
        return False


def _refuse_if_changed(piece: Dict) -> None:
    """:func:`changed_while_read` for a piece whose file is no longer as :func:`plan` saw it."""
    if _changed_since_planned(piece):
        raise changed_while_read(piece["path"])


def plan(files: schema.InputFiles) -> Tuple[List[Dict], Dict[int, int]]:
    """Pieces of work (one read task each) and, for Parquet, every file's row count from its
    footer. Each piece keeps its file's :func:`file_state` as it was before the read (``size``,
    ``mtime_ns``; for Parquet taken before its footer is read), which :func:`count_csv_file`
    compares for a CSV, and the read of each Parquet piece (:func:`_parquet_piece`), before and
    after: a nightly export rewritten after its footer was read would otherwise be read against
    the old file's row groups and row count."""
    if files.format == "csv":
        pieces = []
        for i, path in enumerate(files.paths):
            try:
                size, mtime_ns = file_state(path)
            except OSError as e:
                raise schema._unreadable(path, "csv", e) from None
            pieces.append(
                {"file": i, "path": path, "row_groups": [], "first_row": 0, "size": size, "mtime_ns": mtime_ns}
            )
        return pieces, {}
    pieces, rows = [], {}
    for i, path in enumerate(files.paths):
        try:
            size, mtime_ns = file_state(path)
            meta = pq.read_metadata(path)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise schema._unreadable(path, "parquet", e) from None
        rows[i] = meta.num_rows
        first, group, group_rows = 0, [], 0
        for g in range(meta.num_row_groups):
            group.append(g)
            group_rows += meta.row_group(g).num_rows
            if group_rows >= PIECE_ROWS or g == meta.num_row_groups - 1:
                pieces.append(
                    {
                        "file": i,
                        "path": path,
                        "row_groups": group,
                        "first_row": first,
                        "size": size,
                        "mtime_ns": mtime_ns,
                    }
                )
                first, group, group_rows = first + group_rows, [], 0
    return pieces, rows


# -- reading (Ray Data tasks) ---------------------------------------------------------------------------


def _with_source(table: pa.Table, file: int, rows: np.ndarray, raw_row: Optional[pa.Array] = None) -> pa.Table:
    n = table.num_rows
    return (
        table.append_column(SOURCE_FILE, pa.array(np.full(n, file, np.int32)))
        .append_column(SOURCE_ROW, pa.array(rows.astype(np.int64)))
        .append_column(RAW_ROW, raw_row if raw_row is not None else pa.nulls(n, pa.string()))
    )


# Legacy Spark and Hive timestamps (INT96) are read in this unit: pyarrow's default, nanoseconds,
# wraps a year past 2262 (a 9999-12-31 placeholder was quarantined as out of range with 1816-03-29
# as its raw text); microseconds hold every year up to 9999.
INT96_UNIT = "us"


def _parquet_piece(piece: Dict, min_ts: int, max_ts: int) -> Iterator[pa.Table]:
    """Validated rows of a piece's row groups. Its file is looked at before and after: one
    rewritten since :func:`plan` read its footer is :func:`changed_while_read`, not rows of
    another file counted against the old footer."""
    _refuse_if_changed(piece)
    file = pq.ParquetFile(piece["path"], coerce_int96_timestamp_unit=INT96_UNIT)
    names = file.schema_arrow.names
    columns = [c for c in schema.LOG_REQUIRED + schema.LOG_OPTIONAL if c in names]
    row = piece["first_row"]
    for batch in file.iter_batches(
        batch_size=BATCH_ROWS, row_groups=piece["row_groups"], columns=columns, use_threads=False
    ):
        table = schema.validate_log_batch(batch, min_ts, max_ts)
        yield _with_source(table, piece["file"], np.arange(row, row + batch.num_rows))
        row += batch.num_rows
    _refuse_if_changed(piece)


def _free_numbers(start: int, count: int, taken: np.ndarray) -> np.ndarray:
    """The first ``count`` integers from ``start`` that are not in ``taken`` (all >= start): the
    j-th is start + j + the taken numbers before it, found by a search rather than a range as
    long as ``taken`` (a malformed run of 100M rows before the next good ones)."""
    taken = np.asarray(taken, dtype=np.int64)
    if len(taken) > 1 and bool((np.diff(taken) <= 0).any()):  # reported in order, as a rule
        taken = np.unique(taken)
    taken = taken - start
    free_before = taken - np.arange(len(taken))  # free numbers below each taken one
    j = np.arange(count, dtype=np.int64)
    return start + j + np.searchsorted(free_before, j, side="right")


def _malformed(rows: List[Tuple[int, str]], file: int) -> pa.Table:
    """Malformed CSV rows as quarantined rows: their number and text, every value null."""
    n = len(rows)
    table = pa.table(
        {
            **{f.name: pa.nulls(n, f.type) for f in schema.VALIDATED},
            schema.TS: pa.array(np.zeros(n, np.int64)),
            schema.QUANTITY: pa.array(np.zeros(n, np.float64)),
            schema.REASON: pa.array([schema.MALFORMED_ROW] * n, pa.string()),
        },
        schema=schema.VALIDATED,
    )
    numbers = np.array([number if number is not None else -1 for number, _ in rows], dtype=np.int64)
    text = pa.array([schema._escaped(t) for _, t in rows], pa.string())
    return _with_source(table, file, numbers, text)


def _csv_file(piece: Dict, min_ts: int, max_ts: int) -> Iterator[pa.Table]:
    """Streams one CSV: good rows validated, malformed ones quarantined, all with their number.

    pyarrow numbers rows (header = 1) and calls the handler while it parses a block, before that
    block's batch is returned (sometimes a block ahead), so the good rows of a batch get the
    free numbers from where the last batch stopped, skipping those the handler reported. The
    malformed rows go out as the batch they came with does; only their numbers are kept while
    good rows may still come before them (held whole, a file's malformed tail, 285 bytes a row,
    came out at its end as one table: 28 GB for 100M rows). Those before the first good row,
    which pyarrow reports while it opens the file, come out as one table: at most
    :data:`ncf.data.schema.MALFORMED_HEAD_MAX` rows (a file with more is refused before) and the
    rest of the block holding that good row.
    """
    malformed: List[Tuple[int, str]] = []
    skipped: List[np.ndarray] = []  # numbers of malformed rows at or after next_number, by batch

    def handler(row) -> str:
        malformed.append((row.number, row.text))
        return "skip"

    present = set(schema.file_columns(piece["path"], "csv"))  # once: a file of malformed rows reads it whole
    columns = [c for c in schema.LOG_REQUIRED + schema.LOG_OPTIONAL if c in present]
    reader = pacsv.open_csv(
        piece["path"],
        read_options=schema.csv_reader_options(block_size=CSV_BLOCK_BYTES),
        parse_options=schema.csv_parse_options(handler),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=columns),
    )
    next_number = 2
    with reader:
        for batch in reader:
            if malformed:
                reported = np.array([n for n, _ in malformed if n is not None], dtype=np.int64)
                skipped.append(reported[reported >= next_number])
                yield _malformed(malformed, piece["file"])
                malformed = []
            if batch.num_rows:  # joined here only: a malformed run's batches copied it whole each time
                taken = np.concatenate(skipped) if skipped else np.zeros(0, np.int64)
                numbers = _free_numbers(next_number, batch.num_rows, taken)
                yield _with_source(schema.validate_log_batch(batch, min_ts, max_ts), piece["file"], numbers)
                next_number = int(numbers[-1]) + 1
                skipped = [taken[taken >= next_number]]
    if malformed:
        yield _malformed(malformed, piece["file"])


def csv_lines(path: str) -> int:
    """The non-empty lines of a CSV file (header included), quotes ignored: what its rows number
    when no quoted value holds a line break (the parser skips empty lines, as this does)."""
    return _rows_parsed(
        path,
        # Through the read's codec: pyarrow decodes the text it hands the handler as UTF-8, and
        # a line holding the delimiter and bytes that are not UTF-8 failed the count without it.
        schema.csv_reader_options(column_names=["line"], block_size=CSV_BLOCK_BYTES),
        # A line holding the delimiter is handed to the handler: a line all the same.
        lambda skip: pacsv.ParseOptions(
            delimiter="\x1f", quote_char=False, newlines_in_values=False, invalid_row_handler=skip
        ),
        pacsv.ConvertOptions(column_types={"line": pa.binary()}),  # no UTF-8 check
    )


def csv_rows(path: str) -> int:
    """The rows of a CSV file below its header, counted by a parse of their own as the read
    parses them (quoted line breaks, malformed rows and skipped empty lines alike): what
    :func:`_csv_file` must yield, counted apart from it, so that rows it lost (a file's last
    batch, a whole file) show. One column, as bytes: a few percent of the read's time."""
    rows = _rows_parsed(
        path,
        # As the read's: its codec (a malformed row's text reaches the handler as UTF-8) and blocks.
        schema.csv_reader_options(autogenerate_column_names=True, block_size=CSV_BLOCK_BYTES),
        schema.csv_parse_options,  # a malformed row: a row all the same, as the read quarantines it
        pacsv.ConvertOptions(include_columns=["f0"], column_types={"f0": pa.binary()}),
    )
    return max(rows - 1, 0)  # the header, read as a row here


def _rows_parsed(path: str, read_options, parse_options: Callable, convert_options) -> int:
    """The rows a CSV reader of ``path`` yields, those its invalid-row handler skips included;
    ``parse_options(handler)``: the parse options with that handler."""
    count = 0

    def skip(row) -> str:
        nonlocal count
        count += 1
        return "skip"

    reader = pacsv.open_csv(
        path, read_options=read_options, parse_options=parse_options(skip), convert_options=convert_options
    )
    with reader:
        for batch in reader:
            count += batch.num_rows
    return count


def count_csv_file(path: str, seen: Tuple[int, int]) -> Tuple[int, int]:
    """A CSV's non-empty lines and rows (:func:`csv_lines`, :func:`csv_rows`), counted after the
    read. InputError when the file is not as ``seen`` (its :func:`file_state` when the job planned
    its files), before counting or after: an export still being appended to gives this count
    more rows than the read saw, which is no fault of the pipeline's."""
    changed = changed_while_read(path)
    if file_state(path) != tuple(seen):
        raise changed
    counted = csv_lines(path), csv_rows(path)
    if file_state(path) != tuple(seen):
        raise changed
    return counted


def _source_counts(batch: pa.Table) -> pa.Table:
    """Ray Data task: each CSV piece's :func:`count_csv_file` (-1 and the one-line error for the
    driver to raise where the file changed or could not be read again)."""
    files = batch.to_pylist()
    lines, rows, errors = [], [], []
    for f in files:
        counted, error = (-1, -1), None
        try:
            counted = count_csv_file(f["path"], (f["size"], f["mtime_ns"]))
        except InputError as e:
            error = str(e)
        except (pa.ArrowException, OSError, ValueError, EOFError) as e:
            why = (str(e).splitlines() or [type(e).__name__])[0]
            error = f"{f['path']}: could not be read again to count its rows ({why}); changed while the job ran?"
        lines.append(counted[0])
        rows.append(counted[1])
        errors.append(error)
    return pa.table(
        {
            "file": [f["file"] for f in files],
            "lines": pa.array(lines, pa.int64()),
            "rows": pa.array(rows, pa.int64()),
            "error": pa.array(errors, pa.string()),
        }
    )


def count_csv_files(pieces: List[Dict]) -> Tuple[Dict[int, int], Dict[int, int]]:
    """Each CSV's non-empty lines and rows by file index (:func:`count_csv_file`; ``pieces``:
    :func:`plan`'s), one Ray Data task per file. InputError naming a file that changed since the
    job planned its files or could not be read again (read once already: removed?)."""
    import ray

    items = [{k: p[k] for k in ("file", "path", "size", "mtime_ns")} for p in pieces]
    counted = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _source_counts, batch_size=1, batch_format="pyarrow", num_cpus=0.25
    )
    frame = counted.to_pandas().set_index("file")
    for p in pieces:
        i = p["file"]
        if i not in frame.index:
            raise InputError(f"{p['path']}: could not be read again to count its rows (no count came back)")
        if frame.at[i, "rows"] < 0:
            raise InputError(frame.at[i, "error"])
    return frame["lines"].astype(int).to_dict(), frame["rows"].astype(int).to_dict()


def lines_in_quoted_values(paths: List[str], lines: Dict[int, int], rows: Dict[int, int]) -> Dict[str, int]:
    """Lines of each CSV that were no row of their own (its non-empty lines less the header and
    its rows): line breaks inside quoted values (an order note), or a quote never closed, which
    joins the lines after it into one value until the next quote (the rows on them are then not
    read). Only files with such lines."""
    inside = {}
    for i, path in enumerate(paths):
        extra = lines[i] - 1 - rows[i]  # the header is a line
        if extra > 0:
            inside[path] = extra
    return inside


def read_and_validate(batch: pa.Table, fmt: str, min_ts: int, max_ts: int) -> Iterator[pa.Table]:
    """Ray Data task: the pieces in ``batch`` (one, normally) -> validated rows
    (:data:`ncf.data.schema.VALIDATED` and the source columns of this module's docstring).

    A file that cannot be read at all (cut short, an unterminated quote...) raises InputError
    naming it, which :func:`ingest_logs` passes on as the job's one-line error; one that no
    longer is as :func:`plan` saw it is said so (rewritten, its old footer's row groups may be
    missing: not the file's fault).
    """
    for piece in batch.to_pylist():
        try:
            if fmt == "parquet":
                yield from _parquet_piece(piece, min_ts, max_ts)
            else:
                yield from _csv_file(piece, min_ts, max_ts)
        except (pa.ArrowException, OSError, ValueError, EOFError) as e:
            if _changed_since_planned(piece):
                raise changed_while_read(piece["path"]) from None
            raise schema._unreadable(piece["path"], fmt, e) from None


def _input_error_in(error: Optional[BaseException]) -> Optional[str]:
    """The message of the InputError a read task raised, from whatever Ray wrapped it in (Ray
    Data appends its retry advice to the original's message: the first line is ours)."""
    found = raised_within(error, InputError)
    if found is None:
        return None
    return str(found).splitlines()[0] if str(found) else type(found).__name__


# -- where the bulk of the data ends ---------------------------------------------------------------------


def _day_counts(batch: pa.Table) -> pa.Table:
    good = pc.is_null(batch.column(schema.REASON))
    ts = batch.column(schema.TS).filter(good).to_numpy()
    values, counts = np.unique(np.floor_divide(ts, DAY), return_counts=True)
    return pa.table({"day": values, "n": counts.astype(np.int64)})


def _date(day: int) -> str:
    """An epoch day as its ISO date."""
    return time.strftime("%Y-%m-%d", time.gmtime(int(day) * DAY))


def _days_in_order(days: np.ndarray, counts: np.ndarray, gap_days: float) -> Tuple[np.ndarray, np.ndarray, float]:
    """(the days sorted, the rows up to each, the gap in days that still joins two of them:
    ``max(gap_days, 3 x the median gap)``): :func:`future_bound`'s and
    :func:`rows_before_the_bulk`'s reading of the rows per day."""
    order = np.argsort(days)
    days, counts = np.asarray(days, np.int64)[order], np.asarray(counts, np.int64)[order]
    gaps = np.diff(days)
    allowed = max(gap_days, GAP_MEDIANS * float(np.median(gaps))) if gaps.size else gap_days
    return days, np.cumsum(counts), allowed


def future_bound(days: np.ndarray, counts: np.ndarray, gap_days: float) -> Optional[int]:
    """The first epoch second that counts as far in the future, from the good rows per day.

    The bulk of the data ends at the first gap of more than ``max(gap_days, 3 x the median gap
    between days with purchases)`` after the 99th percentile of the rows (never the last row
    itself, so one far-future row in a small log is still found); what comes after that gap
    is quarantined. A log that simply thins out towards its end keeps every row, a store
    closed for a while keeps its reopening once it holds 1% of the rows, and a row in 2099 or
    at the wall-clock time of a historical log is cut off. None when there are no rows.

    Example: purchases every day of 2024-01..03 and one row on 2099-01-01 -> the bound is
    2024-04-01T00:00:00Z (the end of the last day of March), and the 2099 row is beyond it.
    """
    days, cumulative, allowed = _days_in_order(days, counts, gap_days)
    if days.size == 0:
        return None
    rank = min(np.ceil(BULK_QUANTILE * cumulative[-1]), cumulative[-1] - 1) if cumulative[-1] > 1 else 1
    start = int(np.searchsorted(cumulative, rank, side="left"))
    end = start
    while end + 1 < days.size and days[end + 1] - days[end] <= allowed:
        end += 1
    return int(days[end] + 1) * DAY


def rows_before_the_bulk(days: np.ndarray, counts: np.ndarray, gap_days: float) -> Optional[Tuple[int, int, int]]:
    """(rows, their first day, the bulk's first day), days as epoch days, for the good rows that
    lie before the data's bulk, :func:`future_bound`'s mirror: the bulk begins at the first gap of
    more than ``max(gap_days, 3 x the median gap)`` before the 5th percentile of the rows (never
    the first row itself; a wider share than the future's, since this only warns). None when no
    row does. A till's default date (2000-01-01 in a 2017 log) is kept, as history can be, but
    moves the data's start: a warning says so.

    Example: purchases every day of 2017 and 50 rows on 2000-01-01 -> (50, 2000-01-01, 2017-01-01).
    """
    days, cumulative, allowed = _days_in_order(days, counts, gap_days)
    if days.size < 2 or cumulative[-1] < 2:
        return None
    rank = min(max(np.floor(EARLY_QUANTILE * cumulative[-1]) + 1, 2), cumulative[-1])
    begin = int(np.searchsorted(cumulative, rank, side="left"))
    while begin > 0 and days[begin] - days[begin - 1] <= allowed:
        begin -= 1
    return None if begin == 0 else (int(cumulative[begin - 1]), int(days[0]), int(days[begin]))


def _mark_future(batch: pa.Table, bound: int) -> pa.Table:
    future = pc.and_(pc.is_null(batch.column(schema.REASON)), pc.greater_equal(batch.column(schema.TS), bound))
    raw_ts, raw_qty = quarantined_later(batch, future)
    reasons = pc.if_else(future, pa.scalar(schema.FUTURE_TIMESTAMP), batch.column(schema.REASON))
    ts = pc.if_else(future, pa.scalar(0, pa.int64()), batch.column(schema.TS))
    qty = pc.if_else(future, pa.scalar(0.0, pa.float64()), batch.column(schema.QUANTITY))
    index = batch.schema.get_field_index
    for name, column in (
        (schema.REASON, reasons),
        (schema.TS, ts),
        (schema.QUANTITY, qty),
        (schema.RAW_TIMESTAMP, raw_ts),
        (schema.RAW_QUANTITY, raw_qty),
    ):
        batch = batch.set_column(index(name), name, column)
    return batch


def quarantined_later(batch: pa.Table, rows) -> tuple:
    """(raw_timestamp, raw_quantity) of ``batch`` with those of ``rows`` (a mask of good rows
    quarantined after validation, which keeps no text of a good row) written from the values
    read: the moment in ISO 8601, UTC, and the quantity (1 where the row gave none)."""
    raw_ts, raw_qty = (batch.column(name).combine_chunks() for name in (schema.RAW_TIMESTAMP, schema.RAW_QUANTITY))
    mask = pc.fill_null(rows, False)
    if not pc.any(mask).as_py():  # the common case: each pass marks every block again
        return raw_ts, raw_qty
    mask = mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask
    # Without a time zone: strftime looks even UTC up in the system's zone database, which an
    # image may lack.
    seconds = pc.cast(pc.filter(batch.column(schema.TS).combine_chunks(), mask), pa.timestamp("s"))
    moments = pc.binary_join_element_wise(pc.replace_substring(pc.cast(seconds, pa.string()), " ", "T"), "Z", "")
    quantities = pc.cast(pc.filter(batch.column(schema.QUANTITY).combine_chunks(), mask), pa.string())
    return pc.replace_with_mask(raw_ts, mask, moments), pc.replace_with_mask(raw_qty, mask, quantities)


# -- accounting -------------------------------------------------------------------------------------------


def _counts(batch: pa.Table) -> pa.Table:
    """Per (file, reason): rows, the highest source row and the timestamps read as UTC for want
    of a zone."""
    table = pa.table(
        {
            SOURCE_FILE: batch.column(SOURCE_FILE),
            schema.REASON: pc.fill_null(batch.column(schema.REASON), OK),
            SOURCE_ROW: batch.column(SOURCE_ROW),
            schema.ZONELESS: pc.cast(pc.fill_null(batch.column(schema.ZONELESS), False), pa.int64()),
        }
    )
    # One thread: Acero's threaded group-by failed once in a Ray task, "thread index 10 is out of
    # range [0, 10)" (pyarrow 26, the million-line test); a block's counts need no pool.
    grouped = table.group_by([SOURCE_FILE, schema.REASON], use_threads=False)
    return grouped.aggregate([(SOURCE_ROW, "count"), (SOURCE_ROW, "max"), (schema.ZONELESS, "sum")])


@dataclass
class Ingested:
    """The validated rows (materialized, the far-future marking applied on each pass over them;
    reasons final) and their accounting."""

    rows: object  # ray.data.Dataset of validated rows with their source columns (read_and_validate)
    rows_in: int
    rows_kept: int
    rows_quarantined: int
    by_reason: Dict[str, int]
    future_bound: Optional[int]
    rows_by_file: Dict[str, int]
    quarantined_by_file: Dict[str, Dict[str, int]]  # {file: {reason: rows}}, files with any
    zoneless: int  # kept rows whose timestamp named no time zone (read as UTC)
    lines_in_quoted_values: Dict[str, int]  # CSV lines that were no row of their own, by file


# The number of a file's first row in ``source_row`` (see the module's docstring).
FIRST_ROW = {"csv": 2, "parquet": 0}


def source_rows(counts, source: Dict[int, int], paths: List[str], first: int) -> Dict[str, int]:
    """Rows each file holds according to the source, counted apart from the read (Parquet: its
    footer; CSV: :func:`csv_rows`), checked against the rows that came out of validation
    (``counts``, :func:`_counts`' frame): raises RuntimeError when a row was lost or doubled on
    the way, its file's last rows or the whole file included, or when a row came out numbered
    past the file's last row (``first``: the first row's number, :data:`FIRST_ROW`), as a gap
    and a row doubled by a numbering gone astray would, their count right.

    Not caught: a row lost and another doubled below the file's last row (the count and the
    highest number both right), nor rows whose values changed on the way."""
    if len(counts):
        per_file = counts.groupby(SOURCE_FILE).agg(
            out=(f"{SOURCE_ROW}_count", "sum"), last=(f"{SOURCE_ROW}_max", "max")
        )
        out, last = per_file["out"], per_file["last"]
    else:
        out = last = pd.Series(dtype=np.int64)
    result = {}
    for i, path in enumerate(paths):
        came_out, held = int(out.get(i, 0)), int(source.get(i, 0))
        if came_out != held:
            raise RuntimeError(f"{path}: {held:,} rows in the file but {came_out:,} came out of validation")
        if held and int(last.get(i)) > first + held - 1:
            raise RuntimeError(
                f"{path}: row {int(last.get(i)):,} came out of validation but the file's rows are "
                f"{first:,} to {first + held - 1:,}"
            )
        result[path] = held
    return result


def _no_rows(files: schema.InputFiles) -> InputError:
    return InputError(f"{files.paths[0]}: no purchase rows in the {len(files.paths)} input file(s)")


def account(
    counts: pd.DataFrame,
    files: schema.InputFiles,
    footer_rows: Dict[int, int],
    csv_counted: Optional[Tuple[Dict[int, int], Dict[int, int]]],
) -> Dict[str, object]:
    """:class:`Ingested`'s accounting from the rows that came out of validation (``counts``,
    :func:`_counts`' frame) and the source's own counts, taken apart from the read: Parquet's
    ``footer_rows`` (:func:`plan`), a CSV's ``csv_counted`` (:func:`count_csv_files`: lines,
    rows). RuntimeError where they disagree (:func:`source_rows`), InputError when no file
    holds a row."""
    source = footer_rows if files.format == "parquet" else csv_counted[1]
    by_file = source_rows(counts, source, files.paths, FIRST_ROW[files.format])
    if counts.empty:  # every file a header alone
        raise _no_rows(files)
    by_reason = {str(r): int(n) for r, n in counts.groupby(schema.REASON)[f"{SOURCE_ROW}_count"].sum().items()}
    rows_kept = by_reason.pop(OK, 0)
    rows_quarantined = sum(by_reason.values())
    rows_in = sum(by_file.values())
    if rows_in != rows_kept + rows_quarantined:
        raise RuntimeError(f"{rows_in:,} rows in but {rows_kept:,} kept + {rows_quarantined:,} quarantined")
    bad = counts[counts[schema.REASON] != OK].groupby([SOURCE_FILE, schema.REASON])[f"{SOURCE_ROW}_count"].sum()
    quarantined_by_file: Dict[str, Dict[str, int]] = {}
    for (file, reason), rows in bad.items():
        quarantined_by_file.setdefault(files.paths[int(file)], {})[str(reason)] = int(rows)
    return {
        "rows_in": rows_in,
        "rows_kept": rows_kept,
        "rows_quarantined": rows_quarantined,
        "by_reason": by_reason,
        "rows_by_file": by_file,
        "quarantined_by_file": quarantined_by_file,
        # Not the far future: its rows' reason is no longer OK.
        "zoneless": int(counts.loc[counts[schema.REASON] == OK, f"{schema.ZONELESS}_sum"].sum()),
        "lines_in_quoted_values": lines_in_quoted_values(files.paths, *csv_counted) if csv_counted else {},
    }


def ingest_logs(
    files: schema.InputFiles,
    min_ts: int = schema.DEFAULT_MIN_TS,
    max_ts: int = schema.DEFAULT_MAX_TS,
    future_gap_days: float = 14.0,
    log: Callable[[str], None] = lambda m: None,
) -> Ingested:
    """Reads and validates every row with Ray Data, quarantines the far future, and accounts for
    every source row (:func:`account`: each file's rows, counted apart from the read, came out
    of it, and rows in = kept + quarantined, or RuntimeError; a file written to while the job
    read it is an InputError, :func:`count_csv_file`, :func:`_parquet_piece`). ``log``: a
    line per phase, as it ends."""
    import ray

    pieces, footer_rows = plan(files)
    if not pieces:
        raise _no_rows(files)
    started = time.time()
    rows = ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
        read_and_validate,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"fmt": files.format, "min_ts": min_ts, "max_ts": max_ts},
    )
    try:
        rows = rows.materialize()
    except Exception as e:  # noqa: BLE001  (Ray wraps what its tasks raise)
        message = _input_error_in(e)
        if message is None:
            raise
        raise InputError(message) from None
    log(f"read and validated {rows.count():,} rows in {time.time() - started:.1f} s; counting them by day and reason")

    started = time.time()
    frame = rows.map_batches(_day_counts, batch_format="pyarrow").to_pandas()
    days = frame.groupby("day")["n"].sum() if len(frame) else pd.Series([], dtype=np.int64)
    bound = future_bound(days.index.to_numpy(), days.to_numpy(), future_gap_days)
    early = rows_before_the_bulk(days.index.to_numpy(), days.to_numpy(), future_gap_days)
    if early is not None:
        early_rows, first, bulk = early
        log(
            f"WARNING: {early_rows:,} kept row(s) from {_date(first)} lie before a gap ahead of the rest of the log, "
            f"which starts {_date(bulk)}: a placeholder date (a till's default)? They are kept, and the data starts "
            f"with them; --min-timestamp {_date(bulk)} quarantines them as timestamp_out_of_range"
        )
    if bound is not None and (int(days.index.max()) + 1) * DAY > bound:
        # Lazily: each pass below marks the materialized rows again (a compare per block); a
        # materialized marked copy beside them held the whole validated log twice (about 130 GB at 1B lines).
        rows = rows.map_batches(_mark_future, batch_format="pyarrow", fn_kwargs={"bound": bound})
    counts = rows.map_batches(_counts, batch_format="pyarrow").to_pandas()
    again = "; counting each CSV file's lines and rows again, apart from the read" if files.format == "csv" else ""
    log(f"counted in {time.time() - started:.1f} s{again}")
    csv_counted = None
    if files.format == "csv":
        started = time.time()
        csv_counted = count_csv_files(pieces)
        lines, source = csv_counted
        rows_and_lines = f"{sum(source.values()):,} rows and {sum(lines.values()):,} non-empty lines"
        log(f"counted {rows_and_lines} in {time.time() - started:.1f} s")
    return Ingested(rows=rows, future_bound=bound, **account(counts, files, footer_rows, csv_counted))


# -- what leaves this stage ---------------------------------------------------------------------------


def kept_rows(batch: pa.Table) -> pa.Table:
    """The good rows, as later stages read them: user_id, product_id, ts, quantity."""
    good = batch.filter(pc.is_null(batch.column(schema.REASON)))
    return good.select([schema.USER_ID, schema.PRODUCT_ID, schema.TS, schema.QUANTITY])


def quarantine_rows(batch: pa.Table, paths: List[str]) -> pa.Table:
    """The bad rows as the quarantine keeps them: the input contract's columns with their raw
    values (text), the reason, the source file and row, and a malformed row's text, so a row
    can be repaired and fed to preprocessing again."""
    bad = batch.filter(pc.is_valid(batch.column(schema.REASON)))
    files = pa.DictionaryArray.from_arrays(bad.column(SOURCE_FILE).combine_chunks(), pa.array(paths, pa.string()))
    return pa.table(
        {
            schema.USER_ID: bad.column(schema.USER_ID),
            schema.PRODUCT_ID: bad.column(schema.PRODUCT_ID),
            schema.TIMESTAMP: bad.column(schema.RAW_TIMESTAMP),
            schema.QUANTITY: bad.column(schema.RAW_QUANTITY),
            schema.REASON: bad.column(schema.REASON),
            SOURCE_FILE: files.cast(pa.string()),
            SOURCE_ROW: bad.column(SOURCE_ROW),
            RAW_ROW: bad.column(RAW_ROW),
        }
    )
