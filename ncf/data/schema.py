"""Input contract for purchase logs and product catalogs, and how raw rows are validated.

Purchase log: ``user_id``, ``product_id``, ``timestamp`` and optional ``quantity`` (default 1).
Catalog: ``product_id``, ``department``, ``category``. Files are Parquet or CSV: one file, a
directory or a glob. IDs may be integers or strings; timestamps Arrow timestamps, ISO-8601
strings or epoch seconds.

Every row either passes or gets a ``reason``; preprocessing writes the rows with a reason to
a quarantine, so rows in = rows kept + rows quarantined.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ncf.errors import InputError

USER_ID = "user_id"
PRODUCT_ID = "product_id"
TIMESTAMP = "timestamp"
QUANTITY = "quantity"
DEPARTMENT = "department"
CATEGORY = "category"
REASON = "reason"
TS = "ts"  # normalized timestamp: int64 epoch seconds, UTC

LOG_REQUIRED = (USER_ID, PRODUCT_ID, TIMESTAMP)
LOG_OPTIONAL = (QUANTITY,)
CATALOG_REQUIRED = (PRODUCT_ID, DEPARTMENT, CATEGORY)
UNKNOWN = "unknown"

# Quarantine reasons, in the order they are checked (a row gets the first that applies).
NULL_USER_ID = "null_user_id"
NULL_PRODUCT_ID = "null_product_id"
BAD_TIMESTAMP = "bad_timestamp"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
BAD_QUANTITY = "bad_quantity"
NON_POSITIVE_QUANTITY = "non_positive_quantity"
REASONS = (NULL_USER_ID, NULL_PRODUCT_ID, BAD_TIMESTAMP, TIMESTAMP_OUT_OF_RANGE, BAD_QUANTITY, NON_POSITIVE_QUANTITY)

# Timestamps outside this window are data errors (epoch 0, year 9999, milliseconds read as seconds).
DEFAULT_MIN_TS = int(pd.Timestamp("1990-01-01", tz="UTC").timestamp())
DEFAULT_MAX_TS = int(pd.Timestamp("2100-01-01", tz="UTC").timestamp())


@dataclass(frozen=True)
class InputFiles:
    """Resolved input: the files and their format (``parquet`` or ``csv``)."""

    paths: List[str]
    format: str


def resolve_files(spec: str) -> InputFiles:
    """A file, a directory or a glob -> the data files in it, all of one format."""
    if any(ch in spec for ch in "*?["):
        paths = sorted(glob.glob(spec, recursive=True))
    elif os.path.isdir(spec):
        paths = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(spec)
            for name in names
            if not name.startswith((".", "_"))
        )
    elif os.path.exists(spec):
        paths = [spec]
    else:
        raise InputError(f"{spec}: no such file or directory")
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise InputError(f"{spec}: no input files found")
    formats = {_format_of(p) for p in paths}
    if len(formats) != 1:
        raise InputError(f"{spec}: mixes file formats {sorted(formats)}; use one of parquet or csv")
    return InputFiles(paths, formats.pop())


def _format_of(path: str) -> str:
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    raise InputError(f"{path}: unknown file type (expected .parquet or .csv)")


def file_columns(path: str, fmt: str) -> List[str]:
    """Column names of one file, read from its footer or header only."""
    try:
        if fmt == "parquet":
            return list(pq.read_schema(path).names)
        with pacsv.open_csv(path) as reader:
            return list(reader.schema.names)
    except (pa.ArrowException, OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: unreadable {fmt} file ({first_line})") from None


def check_columns(files: InputFiles, required: Sequence[str], what: str) -> None:
    """Stops with the first file that lacks a required column."""
    for path in files.paths:
        columns = file_columns(path, files.format)
        for column in required:
            if column not in columns:
                raise InputError(f"{path}: {what} is missing required column '{column}' (has: {', '.join(columns)})")


def csv_read_options(columns: Sequence[str]) -> Dict:
    """Reads every contract column of a CSV as text so that bad values reach validation
    (and the quarantine) instead of failing type inference for a whole block."""
    return {"convert_options": pacsv.ConvertOptions(column_types={c: pa.string() for c in columns})}


def _ids_as_strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """IDs as strings; empty strings count as null."""
    strings = pc.cast(column, pa.string()) if not pa.types.is_string(column.type) else column
    strings = pc.utf8_trim_whitespace(strings)
    return pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)


def _timestamps_to_seconds(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow timestamps, ISO-8601 strings or epoch seconds -> float seconds (NaN if unparseable)."""
    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        arr = pc.cast(column, pa.timestamp("s", tz=t.tz if pa.types.is_timestamp(t) else None))
        return pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False).astype("float64")
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    text = pd.Series(pc.cast(column, pa.string()).to_pylist(), dtype="object")
    numeric = pd.to_numeric(text, errors="coerce")
    parsed = pd.to_datetime(text.where(numeric.isna()), errors="coerce", utc=True, format="ISO8601")
    seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return np.where(numeric.notna(), numeric, seconds).astype("float64")


def _quantities(column: Optional[pa.ChunkedArray], n: int) -> np.ndarray:
    """Quantity as float (NaN if not a number); absent column or null -> 1."""
    if column is None:
        return np.ones(n)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        values = pd.to_numeric(pd.Series(column.to_pylist(), dtype="object").replace("", None), errors="coerce")
        nulls = pd.isna(pd.Series(column.to_pylist(), dtype="object").replace("", None)).to_numpy()
        return np.where(nulls, 1.0, values.to_numpy(dtype="float64"))
    values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    return np.where(np.isnan(values), 1.0, values)


def validate_log_batch(batch: pa.Table, min_ts: int = DEFAULT_MIN_TS, max_ts: int = DEFAULT_MAX_TS) -> pa.Table:
    """Raw log rows -> normalized rows with a ``reason`` (null when the row is good).

    Output columns: user_id (string), product_id (string), ts (int64 seconds, 0 if bad),
    quantity (int64), reason (string). Every input row comes out exactly once.
    """
    n = batch.num_rows
    users = _ids_as_strings(batch.column(USER_ID))
    products = _ids_as_strings(batch.column(PRODUCT_ID))
    seconds = _timestamps_to_seconds(batch.column(TIMESTAMP))
    quantity = _quantities(batch.column(QUANTITY) if QUANTITY in batch.column_names else None, n)

    checks = [
        (NULL_USER_ID, pc.is_null(users).to_numpy(zero_copy_only=False)),
        (NULL_PRODUCT_ID, pc.is_null(products).to_numpy(zero_copy_only=False)),
        (BAD_TIMESTAMP, ~np.isfinite(seconds)),
        (TIMESTAMP_OUT_OF_RANGE, np.isfinite(seconds) & ((seconds < min_ts) | (seconds > max_ts))),
        # Not a whole number, or one int64 cannot hold (the cast below would wrap it around).
        (
            BAD_QUANTITY,
            ~np.isfinite(quantity)
            | (np.isfinite(quantity) & ((quantity != np.round(quantity)) | (np.abs(quantity) >= 2.0**63))),
        ),
        (NON_POSITIVE_QUANTITY, np.isfinite(quantity) & (quantity <= 0)),
    ]
    reason = np.full(n, None, dtype=object)
    for name, bad in checks:
        reason[(reason == None) & bad] = name  # noqa: E711  (elementwise on an object array)
    good = reason == None  # noqa: E711
    ts = np.where(good, seconds, 0).astype("int64")
    qty = np.where(good, quantity, 0).astype("int64")
    return pa.table(
        {
            USER_ID: users,
            PRODUCT_ID: products,
            TS: pa.array(ts, pa.int64()),
            QUANTITY: pa.array(qty, pa.int64()),
            REASON: pa.array(reason, pa.string()),
        }
    )


def normalize_catalog_batch(batch: pa.Table) -> pa.Table:
    """Catalog rows -> string ids, department and category; missing values become 'unknown'."""

    def text(name: str) -> pa.Array:
        col = _ids_as_strings(batch.column(name))
        return pc.fill_null(col, UNKNOWN) if name != PRODUCT_ID else col

    table = pa.table({PRODUCT_ID: text(PRODUCT_ID), DEPARTMENT: text(DEPARTMENT), CATEGORY: text(CATEGORY)})
    return table.filter(pc.is_valid(table.column(PRODUCT_ID)))


def id_kind(files: InputFiles, column: str) -> str:
    """'int' when the id column is integer-typed in every file, else 'str' (for returning raw ids)."""
    if files.format == "csv":
        return "str"
    for path in files.paths:
        if not pa.types.is_integer(pq.read_schema(path).field(column).type):
            return "str"
    return "int"
