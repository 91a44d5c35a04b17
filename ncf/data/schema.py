"""Input contract for purchase logs and product catalogs, and how raw rows are validated.

Purchase log: ``user_id``, ``product_id``, ``timestamp`` and optional ``quantity`` (default 1).
Catalog: ``product_id``, ``department``, ``category``. Files are Parquet or CSV: one file, a
directory or a glob.

* IDs: integers, strings (UTF-8, at most 128 characters; surrounding spaces are trimmed), or floats that hold a whole
  number (``12.0`` is the id ``"12"``, as the integer 12 would be, in a float column and as
  text alike; pandas writes integer ids with a missing value as floats). In float columns
  NaN, infinities, fractions and whole numbers beyond the type's exact range (2**53 in float64,
  2**24 in float32) are quarantined (``bad_user_id`` / ``bad_product_id``), and so is such text
  (``9826123412341236.0``: a 16-digit card number through a float, two made one), and strings
  that are not valid UTF-8. Decimal columns are read
  exactly (a warehouse's NUMBER(38,0) ids of any length; fractions quarantined). Other column types (lists,
  structs, booleans...) stop the job with a one-line error naming the file and column, before
  any row is read.
* Timestamps: Arrow timestamps of any unit (s, ms, us, ns) and any time zone, dates, ISO-8601
  strings (with or without an offset; none means UTC, and the rows read so are counted; a date
  without its day, ``2017-11``, is a ``bad_timestamp``) or epoch seconds (numbers or numeric
  strings). Fractions of a second are truncated (rounded
  down) to whole seconds: the pipeline works in epoch seconds. Words such as ``now`` or ``today`` are not timestamps.
* Quantity: a positive number (fractions too: goods sold by weight); null or empty means 1.
  It is kept, not used: each row is one purchase line.

Every row either passes or gets a ``reason``; preprocessing writes the rows with a reason to
a quarantine (with their raw values, source file and row), so rows in = rows kept + rows
quarantined.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

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
# The raw values a quarantined row keeps (as text), so that it can be repaired and replayed (a
# row found bad at validation: the input's text; a future_timestamp row: the values as read).
RAW_TIMESTAMP = "raw_timestamp"
RAW_QUANTITY = "raw_quantity"
# Whether a row's timestamp said nothing of its time zone (text without an offset, an Arrow
# timestamp without a zone, a date), so was read as UTC: counted, since a log written in local
# time then puts every purchase hours off.
ZONELESS = "zoneless"

LOG_REQUIRED = (USER_ID, PRODUCT_ID, TIMESTAMP)
LOG_OPTIONAL = (QUANTITY,)
CATALOG_REQUIRED = (PRODUCT_ID, DEPARTMENT, CATEGORY)
UNKNOWN = "unknown"

# Quarantine reasons, in the order they are checked (a row gets the first that applies).
MALFORMED_ROW = "malformed_row"  # a CSV row with the wrong number of fields (set by the reader)
NULL_USER_ID = "null_user_id"
BAD_USER_ID = "bad_user_id"
NULL_PRODUCT_ID = "null_product_id"
BAD_PRODUCT_ID = "bad_product_id"
BAD_TIMESTAMP = "bad_timestamp"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
BAD_QUANTITY = "bad_quantity"
NON_POSITIVE_QUANTITY = "non_positive_quantity"
# Set by preprocessing once it has seen every row: far after the bulk of the data.
FUTURE_TIMESTAMP = "future_timestamp"
REASONS = (
    MALFORMED_ROW,
    NULL_USER_ID,
    BAD_USER_ID,
    NULL_PRODUCT_ID,
    BAD_PRODUCT_ID,
    BAD_TIMESTAMP,
    TIMESTAMP_OUT_OF_RANGE,
    BAD_QUANTITY,
    NON_POSITIVE_QUANTITY,
    FUTURE_TIMESTAMP,
)

# Timestamps outside this window are data errors (epoch 0, year 9999, milliseconds read as seconds):
# before the first moment, or at the last one or after (README: "before 1990 or from 2100").
DEFAULT_MIN_TS = int(pd.Timestamp("1990-01-01", tz="UTC").timestamp())
DEFAULT_MAX_TS = int(pd.Timestamp("2100-01-01", tz="UTC").timestamp())

# Validated rows: the normalized columns, the reason, and the raw text of the checked values.
VALIDATED = pa.schema(
    [
        (USER_ID, pa.string()),
        (PRODUCT_ID, pa.string()),
        (TS, pa.int64()),
        (QUANTITY, pa.float64()),
        (REASON, pa.string()),
        (RAW_TIMESTAMP, pa.string()),
        (RAW_QUANTITY, pa.string()),
        (ZONELESS, pa.bool_()),
    ]
)


@dataclass(frozen=True)
class InputFiles:
    """Resolved input: the files and their format (``parquet`` or ``csv``), the CSV files
    without content left out of ``paths`` (a day without sales exported as nothing), and the
    entries named like data files that were skipped as hidden (``_sales.csv``, ``.old.parquet``),
    for the console to name."""

    paths: List[str]
    format: str
    empty: List[str] = field(default_factory=list)
    hidden: List[str] = field(default_factory=list)


def _hidden(name: str) -> bool:
    # Jupyter's .ipynb_checkpoints copies, Spark's _temporary and _SUCCESS, editors' dot files.
    return name.startswith((".", "_"))


DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def _named_like_data(name: str) -> bool:
    """Whether a hidden entry's name says it holds data: skipping ``_sales.csv`` is worth a word,
    skipping Spark's ``_SUCCESS`` and ``_committed_123`` markers is not."""
    # macOS's "._name" files (AppleDouble) hold a copy's metadata, not its rows: no word for them.
    return name.lower().endswith(DATA_SUFFIXES) and not name.startswith("._")


def _hidden_below_pattern(spec: str, path: str) -> bool:
    """Whether a file a glob matched lies in, or is, a hidden entry below the pattern's fixed
    part (``logs/**/*.csv`` matches Spark's ``logs/_temporary/0/part.csv``); the fixed part
    itself may be hidden (``/data/_exports/*.csv`` is the user's own choice)."""
    parts = spec.replace(os.sep, "/").split("/")
    fixed = next((i for i, part in enumerate(parts) if any(ch in part for ch in "*?[")), len(parts))
    below = path.replace(os.sep, "/").split("/")[fixed:]
    return any(_hidden(name) for name in below)


def _table_format(directory: str) -> Optional[str]:
    """``Delta Lake`` or ``Iceberg`` when ``directory`` is such a table's folder: it keeps the
    files later commits replaced (until a VACUUM), so reading every file would count their rows
    twice, silently."""
    try:
        if os.path.isdir(os.path.join(directory, "_delta_log")):
            return "Delta Lake"
        metadata = os.path.join(directory, "metadata")
        if os.path.isdir(os.path.join(directory, "data")) and os.path.isdir(metadata):
            if any(n.endswith(".metadata.json") for n in os.listdir(metadata)):
                return "Iceberg"
    except OSError:  # a folder this user may not list: no table of theirs
        return None
    return None


def _refuse_tables(paths: List[str]) -> None:
    """Refuses files inside a Delta Lake or Iceberg table's folder (see :func:`_table_format`),
    by the path given and by the real one (a folder linked into the logs), up to the mount point."""
    checked = set()
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    folders |= {os.path.dirname(os.path.realpath(p)) for p in paths}
    for folder in folders:
        while folder not in checked:
            checked.add(folder)
            table_format = _table_format(folder)
            if table_format:
                raise InputError(
                    f"{folder}: a {table_format} table, whose folder keeps the files later commits replaced; "
                    "export a snapshot of it (Parquet or CSV files) and give that"
                )
            if os.path.ismount(folder):
                break
            folder = os.path.dirname(folder)


def _visible_files(directory: str, hidden: Optional[List[str]] = None) -> List[str]:
    """Every file under ``directory`` whose name and folders are not hidden: a notebook's
    checkpoint copy of a log would count every row twice, a half-written job's parts once.
    Folders linked into it are followed, each real folder once, except a link to a folder that
    holds ``directory`` itself (``up -> ..``, a link to ``/``), which would read all around it.
    The hidden entries named like data files are added to ``hidden`` (not those inside hidden
    folders, which are not walked)."""
    files = []
    for root, _, names, skipped in _walk_visible(directory):
        files += [os.path.join(root, n) for n in names]
        if hidden is not None:
            hidden += [os.path.join(root, n) for n in skipped if _named_like_data(n)]
    return files


def _walk_visible(directory: str):
    """``os.walk`` of ``directory``'s visible entries, linked folders followed as
    :func:`_visible_files` says: (folder, its visible folders, its visible files, the names of
    its hidden entries, folders and files)."""
    top = os.path.realpath(directory)
    seen = set()
    for root, folders, names in os.walk(directory, followlinks=True, onerror=_refuse_unlistable_folder):
        real = os.path.realpath(root)
        above = real != top and (top + os.sep).startswith(real.rstrip(os.sep) + os.sep)
        if real in seen or above:  # a link back up the tree, or a second link to one folder
            folders[:] = []
            continue
        seen.add(real)
        skipped = [n for n in folders + names if _hidden(n)]
        # fsck's lost+found, at the root of a filesystem mounted for the logs: no export, and only
        # root may list it, so every other user's run would be refused (:func:`_refuse_unlistable_folder`).
        at_mount = os.path.ismount(real)  # a link to a mount's root is no mount point itself
        folders[:] = [f for f in folders if not _hidden(f) and not (at_mount and f == "lost+found")]
        yield root, list(folders), [n for n in names if not _hidden(n)], skipped


def _refuse_unlistable_folder(error: OSError) -> None:
    """``os.walk``'s ``onerror``: by default it skips a folder it cannot list, and with it every
    file inside, which no count would then show."""
    raise InputError(f"{error.filename}: an input folder that cannot be listed ({error.strerror or error})")


def _refuse_entries_not_files(spec: str, paths: List[str]) -> None:
    """Refuses input entries that are no regular file: a link whose target is gone (a month's
    export on a share that is not mounted) or a pipe, socket or device. Left out, their purchases
    would be missing from every count, ``rows_in`` included."""
    not_files = [p for p in paths if not os.path.isfile(p)]
    if not_files:
        examples = ", ".join(f"{p} ({_why_not_a_file(p)})" for p in sorted(not_files)[:3])
        raise InputError(
            f"{spec}: {len(not_files):,} input entr{'y is' if len(not_files) == 1 else 'ies are'} not a file "
            f"that can be read, e.g. {examples}; mount or restore what they name, or remove them"
        )


def _why_not_a_file(path: str) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return f"a link to {os.readlink(path)}, which does not exist"
    if not os.path.lexists(path):
        return "gone since the input was listed"
    return "not a regular file: a pipe, socket or device"


def _glob(spec: str, hidden: Optional[List[str]] = None) -> List[str]:
    """``glob.glob(spec, recursive=True)``, but a folder the pattern lists and that cannot be
    listed is refused (Python's glob skips it, and with it a month of ``logs/*/*.csv``, which no
    count would show), and a ``**`` walks linked folders as :func:`_visible_files` does: Python's
    glob follows them with no loop check, and two links back up the tree (``a/up -> ..``,
    ``b/up -> ..``) double its paths at every level, to the system's limit on links in a path
    (40: 2^40 paths). Hidden entries below the pattern's fixed part are left out (as
    :func:`_hidden_below_pattern` would); a ``**`` adds those the pattern matches and that are
    named like data files to ``hidden``."""
    if "**" not in spec:
        return _glob_levels(spec)
    parts = spec.split(os.sep)
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = os.sep.join(parts[:fixed]) or (os.sep if spec.startswith(os.sep) else "")
    pattern = parts[fixed:]
    found = []
    for folder, folders, names, skipped in _walk_visible(root or os.curdir):
        relative = os.path.relpath(folder, root or os.curdir)
        below = [] if relative == os.curdir else relative.split(os.sep)
        if not below and root and _matches(pattern, below):
            found.append(os.path.join(root, ""))  # `logs/**` matches the folder itself, as glob's
        for name in folders + names:
            if _matches(pattern, below + [name]):
                found.append(os.path.join(root, *below, name))
        if hidden is not None:
            hidden += [
                os.path.join(root, *below, n) for n in skipped if _named_like_data(n) and _matches(pattern, below + [n])
            ]
    return found


def _glob_levels(spec: str) -> List[str]:
    """``glob.glob(spec)`` for a pattern without ``**``, one component at a time as Python's glob
    goes (a component without wildcards is looked up, not listed; ``*`` matches no dot file), but
    a folder a wildcard component lists and that cannot be listed is refused. A wildcard matches
    no hidden folder on the way (their files are left out below the fixed part anyway), nor a
    mount's ``lost+found``."""
    absolute = spec.startswith(os.sep)
    paths = [os.sep if absolute else ""]
    parts = spec.split(os.sep)[1:] if absolute else spec.split(os.sep)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        matched = []
        for folder in paths:
            if not glob.has_magic(part):
                path = os.path.join(folder, part)
                if os.path.lexists(path) if last else os.path.isdir(path):
                    matched.append(path)
                continue
            try:
                with os.scandir(folder or os.curdir) as entries:
                    names = sorted(entry.name for entry in entries)
            except NotADirectoryError:
                continue
            except OSError as e:
                raise InputError(
                    f"{folder or os.curdir}: an input folder that cannot be listed ({e.strerror or e})"
                ) from None
            at_mount = os.path.ismount(folder or os.curdir)
            for name in names:
                if name.startswith(".") and not part.startswith("."):
                    continue
                # As a folder's walk (_walk_visible): a hidden folder's files are never read (Spark's
                # _temporary), and a filesystem's lost+found lists for root alone.
                if (not last and _hidden(name)) or (at_mount and name == "lost+found"):
                    continue
                path = os.path.join(folder, name)
                if fnmatch.fnmatchcase(name, part) and (last or os.path.isdir(path)):
                    matched.append(path)
        paths = matched
    return paths


def _matches(pattern: List[str], names: List[str]) -> bool:
    """Whether path components ``names`` match glob components ``pattern`` (``**``: any number
    of components, each other one :func:`fnmatch.fnmatchcase`)."""
    if not pattern:
        return not names
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(rest, names[i:]) for i in range(len(names) + 1))
    return bool(names) and fnmatch.fnmatchcase(names[0], head) and _matches(rest, names[1:])


def _each_file_once(paths: List[str]) -> List[str]:
    """``paths`` sorted, each real file once: ``logs/**`` matches a folder and the files in it,
    and two links may name one file; read twice, its rows would count twice."""
    by_real: Dict[str, str] = {}
    for path in sorted(paths):
        by_real.setdefault(os.path.realpath(path), path)
    return sorted(by_real.values())


def resolve_files(spec: str) -> InputFiles:
    """A file, a directory or a glob -> the data files in it, all of one format."""
    hidden: List[str] = []
    if any(ch in spec for ch in "*?[") and not os.path.exists(spec):  # "logs [2017].csv" is a name
        globbed = _glob(spec, hidden)
        matched = [p for p in globbed if not _hidden_below_pattern(spec, p)]
        hidden += [p for p in globbed if _hidden(os.path.basename(p)) and _named_like_data(p) and p not in matched]
        # A folder the pattern names is read as a folder: Spark's df.write.csv("sales.csv") writes one.
        paths = [f for p in matched for f in (_visible_files(p, hidden) if os.path.isdir(p) else [p])]
    elif os.path.isdir(spec):
        for made_by, markers in (
            ("jobs.preprocess output (DATA)", ("stats.json", "vocab")),
            ("model directory", ("config.json", "model.pt")),
        ):
            if all(os.path.exists(os.path.join(spec, m)) for m in markers):
                raise InputError(f"{spec}: a {made_by}, not purchase logs or a catalog (Parquet or CSV files)")
        paths = _visible_files(spec, hidden)
    elif os.path.lexists(spec):  # a link to nothing is refused below, naming its target
        paths = [spec]
    else:
        raise InputError(f"{spec}: no such file or directory")
    _refuse_entries_not_files(spec, paths)
    # Absolute: Ray's tasks open them, in the folder their worker runs in (where `ray start` ran,
    # where no job's working directory is given), not the driver's.
    paths = [os.path.abspath(p) for p in _each_file_once(paths)]
    if not paths:
        raise InputError(f"{spec}: no input files found")
    _refuse_tables(paths)
    formats = {_format_of(p) for p in paths}
    if len(formats) != 1:
        raise InputError(f"{spec}: mixes file formats {sorted(formats)}; use one of parquet or csv")
    fmt = formats.pop()
    # An empty CSV has no header to read; an empty Parquet file is a broken one, refused as such.
    empty = [p for p in paths if fmt == "csv" and _without_content(p)]
    if empty and len(empty) == len(paths):
        raise InputError(f"{spec}: every input file is empty (no header, no rows)")
    skipped = set(empty)
    paths = [p for p in paths if p not in skipped]
    return InputFiles(paths, fmt, empty, sorted(set(hidden)))


# Files of equal content size are compared by the digest of this many first bytes, and only those
# whose first bytes agree by the digest of all of them: a coincidence of sizes costs a read of 1 MiB.
_DIGEST_PREFIX_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


def _content_size(path: str) -> Optional[int]:
    """A file's size once decompressed, modulo 2**32: a gzip file records it in its last four
    bytes (of its last member only, so a file of several members may go unmatched). None when
    the file cannot be read (the reader refuses it later)."""
    try:
        if not path.endswith(".gz"):
            return os.path.getsize(path) % 2**32
        with open(path, "rb") as f:
            if f.read(2) != _GZIP_MAGIC or os.path.getsize(path) < 18:
                return None
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    except OSError:
        return None


def _digest(path: str, limit: Optional[int] = None) -> Optional[bytes]:
    """The digest of a file's content (decompressed, for a .gz), or of its first ``limit`` bytes;
    None when it cannot be read."""
    digest = hashlib.blake2b(digest_size=20)
    left = limit
    try:
        with pa.input_stream(path, compression="detect") as stream:
            while left is None or left > 0:
                chunk = stream.read(1 << 20 if left is None else min(1 << 20, left))
                if not chunk:
                    break
                digest.update(chunk)
                left = None if left is None else left - len(chunk)
    except (pa.ArrowException, OSError):
        return None
    return digest.digest()


def _holds_rows(path: str, fmt: str) -> bool:
    """Whether a file may hold rows: not a header alone (Spark writes one for each empty
    partition, and days without sales export as one: the same bytes, no row read twice)."""
    try:
        if fmt == "parquet":
            return pq.read_metadata(path).num_rows > 0
        with pa.input_stream(path, compression="detect") as stream:
            head = stream.read(_EMPTY_PROBE_BYTES)
    except (pa.ArrowException, OSError, ValueError):
        return True  # the reader says what is wrong with it
    content = head.strip()  # a bare CR ends a line too (Excel for Mac's "CSV (Macintosh)")
    return len(head) == _EMPTY_PROBE_BYTES or b"\n" in content or b"\r" in content


def refuse_repeated_content(logs: InputFiles) -> None:
    """Refuses purchase logs with the same content (``sales.csv`` beside ``sales (1).csv`` or
    ``sales.csv.gz``, overlapping exports of one period): every row of theirs would be read twice
    and count as two purchases (a catalog's copies are harmless: its first row of a product wins).
    Sizes first; only files whose content size another's equals are read, their first MiB and
    then, where that agrees, the whole (a .gz decompressed)."""
    paths, fmt = logs.paths, logs.format
    by_size: Dict[int, List[str]] = {}
    for path in paths:
        size = _content_size(path)
        if size is not None:
            by_size.setdefault(size, []).append(path)
    repeats: List[Tuple[str, str]] = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_prefix: Dict[bytes, List[str]] = {}
        for path in same_size:
            prefix = _digest(path, _DIGEST_PREFIX_BYTES)
            if prefix is not None:
                by_prefix.setdefault(prefix, []).append(path)
        for same_prefix in by_prefix.values():
            if len(same_prefix) < 2:
                continue
            first_of: Dict[bytes, str] = {}
            for path in same_prefix:
                whole = _digest(path)
                if whole is None:
                    continue
                if whole in first_of:
                    repeats.append((first_of[whole], path))
                else:
                    first_of[whole] = path
    repeats = sorted((a, b) for a, b in repeats if _holds_rows(a, fmt))
    if repeats:
        first, second = repeats[0]
        more = f" ({len(repeats) - 1} more file(s) repeat another)" if len(repeats) > 1 else ""
        raise InputError(
            f"{first} and {second} hold the same content{more}: its rows would be read twice, each a purchase; "
            "give one of them"
        )


PARQUET_SUFFIXES = ("parquet", "pq")
_EMPTY_PROBE_BYTES = 4096


def _without_content(path: str) -> bool:
    """A CSV holding nothing but blank lines (and Excel's byte-order mark), once decompressed: a
    day without sales exported as nothing. One that does not open is the reader's to refuse."""
    try:
        with pa.input_stream(path, compression="detect") as stream:
            head = stream.read(_EMPTY_PROBE_BYTES)
    except (pa.ArrowException, OSError):
        return False
    return len(head) < _EMPTY_PROBE_BYTES and not head.removeprefix(b"\xef\xbb\xbf").strip()


def _format_of(path: str) -> str:
    lower = path.lower()
    if lower.endswith(tuple("." + suffix for suffix in PARQUET_SUFFIXES)):
        return "parquet"
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".csv.gz"):
        if not path.endswith(".gz"):  # pyarrow and Ray decompress by the suffix, written in lower case
            raise InputError(f"{path}: a compressed CSV is recognised by its suffix in lower case: rename it to *.gz")
        return "csv"
    raise InputError(f"{path}: unknown file type (expected .parquet, .csv or .csv.gz)")


# What pyarrow's CSV reader says when a quoted value runs past its block: almost always a quote
# never closed, which turns the rest of the file into one value.
_STRADDLING = "straddling object straddles two block boundaries"


def unclosed_quote_hint(message: str) -> str:
    """`` (a quote never closed?)`` where the reader's ``message`` says a value ran past its block."""
    return " (a quote never closed?)" if _STRADDLING in message else ""


def _unreadable(path: str, fmt: str, e: Exception) -> InputError:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputError(f"{path}{unclosed_quote_hint(first_line)}: unreadable {fmt} file ({first_line})")


# Malformed CSV rows before a file's first good one: pyarrow parses them all while it opens the
# file, and the read holds them as one table (285 bytes a row); past this many the file is
# refused (a trailing separator on every row makes every row malformed).
MALFORMED_HEAD_MAX = 100_000


class _MalformedHead:
    """A CSV's invalid-row handler while its header is read: skips malformed rows, and stops the
    parse past :data:`MALFORMED_HEAD_MAX` of them unbroken from the first row (pyarrow parses the
    whole block holding the first good row, whose malformed rows after it are no head's)."""

    def __init__(self) -> None:
        self.count = 0
        self.first = None
        self.refused = False

    def __call__(self, row) -> str:
        self.count += 1
        self.first = self.first or row
        # Row numbers skip blank lines: every row from the first malformed, so far.
        self.refused = self.count > MALFORMED_HEAD_MAX and row.number == self.count + 1
        return "error" if self.refused else "skip"

    def words(self, path: str) -> str:
        row = self.first
        return (
            f"{path}: its first {MALFORMED_HEAD_MAX:,} rows are all malformed (row {row.number} has "
            f"{row.actual_columns} fields where the header has {row.expected_columns}: {row.text[:80]!r}); "
            "a separator at the end of every row, or another file's header? Mend the file"
        )


def file_schema(path: str, fmt: str) -> pa.Schema:
    """Column names and types of one file, read from its footer or header only (CSV columns are
    read as text, so they are all strings here). A CSV whose first :data:`MALFORMED_HEAD_MAX`
    rows are all malformed is refused (InputError)."""
    head = _MalformedHead()
    try:
        if fmt == "parquet":
            return pq.read_schema(path)
        # Rows with the wrong number of fields are the reader's to quarantine, not a reason to refuse the file.
        with pacsv.open_csv(path, read_options=csv_reader_options(), parse_options=csv_parse_options(head)) as reader:
            return pa.schema([(name, pa.string()) for name in reader.schema.names])
    except (pa.ArrowException, OSError, ValueError) as e:
        if head.refused:
            raise InputError(head.words(path)) from None
        raise _unreadable(path, fmt, e) from None


def file_columns(path: str, fmt: str) -> List[str]:
    """Column names of one file, read from its footer or header only."""
    return list(file_schema(path, fmt).names)


# -- column types -------------------------------------------------------------------------------------

ID, TIME, NUMBER = "id", "time", "number"
COLUMN_KINDS = {USER_ID: ID, PRODUCT_ID: ID, TIMESTAMP: TIME, QUANTITY: NUMBER, DEPARTMENT: ID, CATEGORY: ID}
_KIND_WORDS = {
    ID: "ids must be integers, strings or whole-number floats",
    TIME: "timestamps must be Arrow timestamps or dates, ISO-8601 strings or epoch seconds (integers or 64-bit "
    "floats: a 32-bit float holds this century's seconds to the nearest 64 to 256)",
    NUMBER: "quantities must be numbers or numeric strings",
}


def _is_text(t: pa.DataType) -> bool:
    return any(
        f(t)
        for f in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_string_view,
            pa.types.is_binary,
            pa.types.is_large_binary,
            pa.types.is_binary_view,
            pa.types.is_fixed_size_binary,
        )
    )


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def usable_type(t: pa.DataType, kind: str) -> bool:
    """Whether a column of Arrow type ``t`` can hold values of ``kind`` (id, time or number)."""
    if pa.types.is_dictionary(t):
        return usable_type(t.value_type, kind)
    if kind == TIME and pa.types.is_floating(t) and t.bit_width < 64:  # purchases 21 s apart read as one second
        return False
    if pa.types.is_null(t) or _is_text(t) or _is_number(t):
        return True
    return kind == TIME and (pa.types.is_timestamp(t) or pa.types.is_date(t))


# Column names an export gives the quantity of a purchase line: Qty, QUANTITY_SOLD, item_qty,
# "units sold", OrderQty (SQL Server's CamelCase), order-qty. Whole names only: units_per_case,
# qty_on_hand (QtyOnHand) or return_qty (ReturnQty) say something else.
QUANTITY_LIKE = re.compile(
    r"^((item|order|sales|line)[_ ])?(qty|quantity|quantities|units)([_ ](sold|purchased|ordered|bought))?$",
    re.IGNORECASE,
)


def quantity_like(name: str) -> bool:
    """Whether a column's name says it holds a purchase line's quantity (:data:`QUANTITY_LIKE`),
    its words split where CamelCase or hyphens split them."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip()).replace("-", "_")
    return bool(QUANTITY_LIKE.match(words))


def check_columns(files: InputFiles, required: Sequence[str], what: str, optional: Sequence[str] = ()) -> None:
    """Stops with the first file that lacks a required column, spells a required or optional one
    otherwise (``Quantity``, `` user_id``, even beside ``quantity``: names are matched exactly, and
    a column in another spelling would be ignored, silently), or has a contract column of a type that cannot
    hold it (a list or struct id, say): one line naming the file and the column."""
    for path in files.paths:
        file = file_schema(path, files.format)
        for name in file.names:
            meant = name.strip().lower()
            if name != meant and meant in (*required, *optional):
                # Beside the contract's spelling too: which one holds the data is anyone's guess.
                fix = f"drop one of the two ({meant!r} is there too)" if meant in file.names else "rename it"
                raise InputError(
                    f"{path}: {what} column {name!r} is spelled otherwise than {meant!r}: column names are "
                    f"matched exactly (lower case, no spaces); {fix}"
                )
        quantities = [n for n in file.names if quantity_like(n) and n != QUANTITY]
        if QUANTITY in optional and QUANTITY not in file.names and quantities:
            # Ignored, every row would count as one unit and a return (-2) as a purchase.
            raise InputError(
                f"{path}: {what} column {quantities[0]!r} looks like the quantity, which is read from a column "
                f"named '{QUANTITY}' only (returns, quantities of 0 or less, are quarantined through it): rename it"
                " or drop it"
            )
        for column in required:
            if column not in file.names:
                names = ", ".join(repr(n) for n in file.names)
                raise InputError(
                    f"{path}: {what} is missing required column '{column}' (has: {names}){_separator_hint(file.names)}"
                )
        for column in (*required, *optional):
            if file.names.count(column) > 1:  # a joined export: which one holds the data is anyone's guess
                raise InputError(f"{path}: {what} has {file.names.count(column)} columns named '{column}'; keep one")
        for f in file:  # by position: other columns may share a name (Excel's trailing empty ones)
            # The columns this file is read for: a log's list-typed `category` is never read.
            kind = COLUMN_KINDS.get(f.name) if f.name in (*required, *optional) else None
            if kind and not usable_type(f.type, kind):
                raise InputError(f"{path}: {what} column '{f.name}' has type {f.type}; {_KIND_WORDS[kind]}")


def _separator_hint(names: List[str]) -> str:
    """What a header read as one column says of its separator: a European Excel export writes
    ``user_id;product_id;timestamp``, a database's tab-separated export its names between tabs."""
    if len(names) != 1:
        return ""
    for separator, said in ((";", "';'"), ("\t", "a tab")):
        if separator in names[0]:
            return f"; the header holds {said}: only ',' separates columns, so export the file comma-separated"
    return ""


# -- text: invalid UTF-8 is kept visible, never passed on -------------------------------------------

# CSV bytes that are not UTF-8 are decoded to code points U+F0000 + byte (Supplementary Private
# Use Area-A) by the codec below, so the parser sees valid text (pyarrow aborts the process when
# a row it hands to invalid_row_handler is not UTF-8) and validation can still tell them apart.
MARKED_UTF8 = "ncf_marked_utf8"
_MARK_BASE = 0xF0000
_MARKED = "[\\x{F0000}-\\x{F00FF}]"  # RE2, for pyarrow.compute
_MARKED_PY = re.compile("[\U000f0000-\U000f00ff]")


def _mark_invalid_bytes(error: UnicodeDecodeError) -> Tuple[str, int]:
    return "".join(chr(_MARK_BASE + b) for b in error.object[error.start : error.end]), error.end


class _MarkedDecoder(codecs.BufferedIncrementalDecoder):
    def _buffer_decode(self, data, errors, final):
        return codecs.utf_8_decode(data, MARKED_UTF8, final)


def _marked_codec(name: str) -> Optional[codecs.CodecInfo]:
    if name != MARKED_UTF8:
        return None
    return codecs.CodecInfo(
        name=MARKED_UTF8,
        encode=codecs.utf_8_encode,
        decode=lambda data, errors="strict": codecs.utf_8_decode(data, MARKED_UTF8, True),
        incrementalencoder=codecs.getincrementalencoder("utf-8"),
        incrementaldecoder=_MarkedDecoder,
    )


codecs.register_error(MARKED_UTF8, _mark_invalid_bytes)
codecs.register(_marked_codec)


def csv_reader_options(**options) -> pacsv.ReadOptions:
    """How purchase-log CSVs are read (:mod:`ncf.data.ingest`): single-threaded (so invalid rows
    get their row number) and through the marking codec (so bytes that are not UTF-8 reach
    validation, not the parser). The codec exists in processes that imported this module."""
    return pacsv.ReadOptions(use_threads=False, encoding=MARKED_UTF8, **options)


def csv_parse_options(invalid_row_handler=None) -> pacsv.ParseOptions:
    """How every CSV here is parsed: a quoted value may hold a line break (an order note, a
    product description). pyarrow's default assumes none and, past its first block, cut such a
    row in two: a made-up row was kept as a purchase, or the parser fell out of step."""
    return pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid_row_handler)


def csv_read_options(columns: Sequence[str]) -> Dict:
    """``ray.data.read_csv`` options for the catalog: contract columns as text so that bad
    values reach normalization instead of failing type inference for a whole block, and only
    those (another column's inferred type would refuse a file over a value nobody reads)."""
    return {
        "parse_options": csv_parse_options(),
        "convert_options": pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns}, include_columns=list(columns)
        ),
    }


# What exports write for a missing value in a text column: SQL Server `NULL`, Hive, MySQL and
# Spark `\N`, R `NA`, spreadsheets `#N/A` and `N/A`, pandas `nan` / `None`, JavaScript's
# `undefined`, C's printf of a null string `(null)`, and the `-` reports put in an empty cell.
# Compared trimmed and case-blind: read as ids, every card-less till purchase became one
# household named "NULL" (or "-").
MISSING_TEXT = frozenset({"null", "\\n", "na", "n/a", "#n/a", "nan", "none", "-", "undefined", "(null)"})


def _missing_text(trimmed: pa.Array) -> np.ndarray:
    """Rows whose trimmed text is empty, null or one of :data:`MISSING_TEXT`."""
    lowered = pc.utf8_lower(trimmed)
    marked = pc.is_in(lowered, value_set=pa.array(sorted(MISSING_TEXT), pa.string()))
    return pc.fill_null(pc.or_(pc.equal(trimmed, ""), marked), True).to_numpy(zero_copy_only=False)


def _escaped(text: Optional[str]) -> Optional[str]:
    """Marked bytes as ``\\xNN``: the raw value as it was in the file."""
    if text is None:
        return None
    return _MARKED_PY.sub(lambda m: f"\\x{ord(m.group()) - _MARK_BASE:02x}", text)


def _decoded(column) -> pa.Array:
    """One Array (chunks combined), dictionaries decoded."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def _as_text(array: pa.Array) -> Tuple[pa.Array, np.ndarray, pa.Array]:
    """A text or binary array -> (strings, null where not valid UTF-8; mask of those; raw text
    with the offending bytes as ``\\xNN``)."""
    t = array.type
    binary = array.view(pa.binary()) if pa.types.is_string(t) else pc.cast(array, pa.binary())
    try:
        text = pc.cast(binary, pa.string())  # validates UTF-8
    except pa.ArrowInvalid:
        values = binary.to_pylist()
        invalid = np.zeros(len(values), dtype=bool)
        decoded, raw = [], []
        for i, v in enumerate(values):
            try:
                decoded.append(None if v is None else v.decode("utf-8"))
                raw.append(decoded[-1])
            except UnicodeDecodeError:
                invalid[i] = True
                decoded.append(None)
                raw.append(v.decode("utf-8", "backslashreplace"))
        return pa.array(decoded, pa.string()), invalid, pa.array(raw, pa.string())
    marked = pc.fill_null(pc.match_substring_regex(text, _MARKED), False).to_numpy(zero_copy_only=False)
    if not marked.any():
        return text, marked, text
    raw = pa.array([_escaped(v) for v in text.to_pylist()], pa.string())
    return pc.if_else(pa.array(marked), pa.scalar(None, pa.string()), text), marked, raw


def _null_strings(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


# -- the three checked values -----------------------------------------------------------------------


def id_text(text: pa.Array, whole_number_text: bool = True) -> pa.Array:
    """Ids written as text -> the text every stage keys them by: trimmed, and with
    ``whole_number_text`` ``12.0`` as ``12`` (an integer id through a float column: pandas writes
    one where an id column has a missing value) and ``-0.0`` as ``0``. Ingest's rule, and a
    lookup's of the ids a question names (:meth:`ncf.data.vocab.Vocabulary.index_of`), so that
    ``"1364 "`` asked of Serve is the household ingest kept as ``1364``."""
    trimmed = pc.utf8_trim_whitespace(text)
    if not whole_number_text:
        return trimmed
    trimmed = pc.replace_substring_regex(trimmed, r"^-0+\.0+$", "0")  # a float column's -0.0 is the id 0
    return pc.replace_substring_regex(trimmed, r"^(-?[0-9]+)\.0+$", r"\1")


def _ids(column, whole_number_text: bool = True) -> Tuple[pa.Array, np.ndarray, np.ndarray]:
    """IDs -> (values: the id as a string for good rows, the raw text for bad ones, null for
    missing; missing mask (null or empty); bad mask). ``whole_number_text``: text such as
    ``12.0`` is the id ``12`` (ids; not the catalog's department and category labels)."""
    array = _decoded(column)
    t, n = array.type, len(array)
    if pa.types.is_null(t):
        return _null_strings(n), np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    if pa.types.is_integer(t):
        ids = pc.cast(array, pa.string())
        return ids, pc.is_null(ids).to_numpy(zero_copy_only=False), np.zeros(n, dtype=bool)
    if pa.types.is_decimal(t):
        # Exact: warehouse NUMBER(38,0) ids (loyalty cards, 16-19 digits) are beyond float64's 2**53.
        text = pc.cast(array, pa.string())
        missing = pc.is_null(array).to_numpy(zero_copy_only=False)
        whole = pc.fill_null(pc.match_substring_regex(text, r"^-?[0-9]+(\.0*)?$"), False)
        ids = pc.if_else(whole, pc.replace_substring_regex(text, r"^(-?[0-9]+)(\.0*)?$", r"\1"), text)
        bad = ~missing & ~whole.to_numpy(zero_copy_only=False)
        return pc.if_else(pa.array(missing), _null_strings(n), ids), missing, bad
    if pa.types.is_floating(t):
        values = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)  # nulls -> NaN
        missing = pc.is_null(array).to_numpy(zero_copy_only=False)
        # Beyond the type's exact integers, neighbouring ids have become one (16777217 is 16777216 in float32).
        exact = 2.0 ** (np.finfo(np.dtype(f"float{t.bit_width}")).nmant + 1)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) < exact)
        ints = pa.array(np.where(whole, values, 0).astype(np.int64)).cast(pa.string())
        bad = ~missing & ~whole
        ids = pc.if_else(pa.array(whole), ints, pc.cast(array, pa.string()))
        return pc.if_else(pa.array(missing), _null_strings(n), ids), missing, bad
    if not _is_text(t):
        raise InputError(f"an id column has type {t}; {_KIND_WORDS[ID]}")
    text, invalid, raw = _as_text(array)
    # "12.0" is the integer id 12 written through a float column (pandas does so when an id
    # column has a missing value), in CSV text as in Parquet floats.
    trimmed = id_text(text, whole_number_text)
    if whole_number_text:
        # From 2**53 on such a float held other ids too (9826123412341235 was written ...236.0):
        # quarantined, as the same value in a float column is.
        invalid = invalid | _beyond_float64(pc.utf8_trim_whitespace(text))
        # A number Excel or Spark wrote in scientific notation may have lost digits, and as text
        # it would be an id apart from the same number written out: a bad id, not a guess.
        invalid = invalid | pc.fill_null(pc.match_substring_regex(trimmed, SCIENTIFIC_NUMBER), False).to_numpy(
            zero_copy_only=False
        )
        # A line break inside an id is a quote never closed in a CSV: the rows after it joined
        # into this value (their purchases with them), kept as one made-up id. Text ids only: a
        # catalog's department and category labels may hold one (a product description's).
        invalid = invalid | pc.fill_null(pc.match_substring_regex(trimmed, LINE_BREAK), False).to_numpy(
            zero_copy_only=False
        )
        too_long = pc.greater(pc.utf8_length(trimmed), MAX_ID_CHARS)
        invalid = invalid | pc.fill_null(too_long, False).to_numpy(zero_copy_only=False)
    missing = _missing_text(trimmed) & ~invalid
    ids = pc.if_else(pa.array(invalid), raw, pc.if_else(pa.array(missing), _null_strings(n), trimmed))
    return ids, missing, invalid


def _beyond_float64(text: pa.Array) -> np.ndarray:
    """Whether each text is a whole number written through a float (``X.0``) with ``|X| >= 2**53``."""
    # A float's writer pads no zeros: 0009007199254740993.0 was written as text, and is read as such.
    through_float = pc.fill_null(pc.match_substring_regex(text, r"^-?[1-9][0-9]*\.0+$"), False)
    digits = pc.replace_substring_regex(text, r"^-?([0-9]+)\.0+$", r"\1")
    length = pc.utf8_length(digits)
    limit = str(2**53)
    big = pc.or_(pc.greater(length, len(limit)), pc.and_(pc.equal(length, len(limit)), pc.greater_equal(digits, limit)))
    return (pc.fill_null(pc.and_(through_float, big), False)).to_numpy(zero_copy_only=False)


# The longest id, in characters (code points): the API's bound on an id in a question
# (serve.api). A longer one kept here was ranked and answered, then refused when asked back.
MAX_ID_CHARS = 128

# Inside a value, after trimming: what a quote never closed leaves in the value it opened.
LINE_BREAK = r"[\r\n]"

# How Excel (4.00638E+12, six digits kept) and Java / Spark (1.2345678E7) write large numbers; a
# product code such as 3E10 (no decimal point, no exponent sign) is no such number.
SCIENTIFIC_NUMBER = r"^-?[0-9](\.[0-9]+[eE][+-]?|[eE]\+)[0-9]+$"


_UTC_NAMED = re.compile(r"\s+(?:UTC|GMT)$", re.IGNORECASE)
# A time of day (extended 04:01:00 or basic 040100, to the hour at least) followed by Z or an
# offset (+01, +0100, +01:00): the text says its zone.
_WITH_OFFSET = r"(?:[Tt]|\s)[0-9]{2}(?::?[0-9]{2}){0,2}(?:[.,][0-9]+)?\s*(?:[zZ]|[+-][0-9]{2}(?::?[0-9]{2})?)$"
_NOT_TIMESTAMPS = ("now", "today", "tomorrow", "yesterday")  # pandas reads the first two as wall-clock time
# A date with its day: year, month and day (2017-11-27, 2017/11/27, 2017-1-2) or ISO's basic form
# (20171127T0401Z). pandas reads "2017-11" (or "2017/11", "2017 11") as the first of the month.
_WITH_DAY = r"^[0-9]{4}(?:(?:[-/. ][0-9]{1,2}){2}|[0-9]{4})(?:$|[^0-9])"
_UNIT_SECONDS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# A fraction of a second written with a comma (ISO 8601's other mark, 04:01:00,123), which pandas'
# ISO parser refuses, or of more than 6 digits (Spark's and Java's nanoseconds, 04:01:00.123456789):
# RE2, to find the rows, and Python's, to write the mark as a point and cut the digits past the sixth.
# The comma only after a time's seconds (04:01:00,123, or ISO's basic form: T040100,123); the long
# fraction in the basic form too (20171127T040100.123456789Z).
_FRACTION_TO_MEND = r":[0-9]{2},[0-9]|[T ][0-9]{6},[0-9]|[0-9]{2}[.][0-9]{7}"
_COMMA_FRACTION = re.compile(r"((?::|[T ][0-9]{4})[0-9]{2}),([0-9])")
_MICROSECONDS_AND_MORE = re.compile(r"([0-9]{2}[.][0-9]{6})[0-9]+")


def _timestamps_to_seconds(column) -> Tuple[np.ndarray, pa.Array, np.ndarray]:
    """Timestamps in any accepted form -> (float seconds, rounded down, NaN if unparseable; the
    values whose text is the raw text (:func:`_text_where`); whether each said nothing of its
    time zone and was read as UTC)."""
    array = _decoded(column)
    t, n = array.type, len(array)
    if pa.types.is_null(t):
        return np.full(n, np.nan), _null_strings(n), np.zeros(n, bool)
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        zoneless = np.full(n, pa.types.is_date(t) or t.tz is None)
        if pa.types.is_date32(t):  # days
            ticks = pc.fill_null(pc.cast(array, pa.int32()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            seconds = ticks * 86_400
        else:  # date64: ms; timestamps: ticks of their unit since the epoch in UTC, whatever the time zone
            ticks = pc.fill_null(pc.cast(array, pa.int64()), 0).to_numpy(zero_copy_only=False)
            seconds = np.floor_divide(ticks, 1_000 if pa.types.is_date64(t) else _UNIT_SECONDS[t.unit])
        missing = pc.is_null(array).to_numpy(zero_copy_only=False)
        return np.where(missing, np.nan, seconds.astype("float64")), array, zoneless & ~missing
    if _is_number(t):
        # Unchecked: an integer beyond 2**53 (epoch nanoseconds, a sentinel) is then out of range
        # for its row, where the checked cast refused the whole file.
        values = pc.cast(array, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        return np.floor(values), array, np.zeros(n, bool)  # epoch seconds: UTC
    if not _is_text(t):
        raise InputError(f"the timestamp column has type {t}; {_KIND_WORDS[TIME]}")
    text, _, raw = _as_text(array)  # not UTF-8 -> null -> NaN
    strings = pd.Series(text.to_pylist(), dtype="object").str.strip()
    # BigQuery's and Go's " UTC" says what a time without an offset is read as anyway.
    named_utc = strings.str.contains(_UTC_NAMED, na=False)
    strings = strings.str.replace(_UTC_NAMED, "", regex=True)
    strings = strings.where(~strings.str.lower().isin(_NOT_TIMESTAMPS))
    trimmed = pc.utf8_trim_whitespace(text)
    # A line break inside: a quote never closed in a CSV joined lines into this value, so what
    # it would parse to is no purchase's moment (bad_timestamp, as an id holding one is a bad id).
    # Arrow's regex (a quarter of pandas' time, which was 5% of validation); the rare rows it
    # finds are looked at again as pandas reads them, " UTC" cut off (a break before it is space).
    breaks = pc.fill_null(pc.match_substring_regex(trimmed, LINE_BREAK), False).to_numpy(zero_copy_only=False)
    if breaks.any():
        breaks = breaks.copy()
        breaks[breaks] = strings[breaks].str.contains(LINE_BREAK, regex=True, na=False).to_numpy(dtype=bool)
    strings = strings.where(~breaks)
    numeric = pd.to_numeric(strings, errors="coerce")
    # Epoch seconds in scientific notation (1.51176E+09) lost their last digits: minutes, not a moment.
    numeric = numeric.where(~strings.str.contains("[eE]", regex=True, na=False))
    text_moments = _to_microseconds(_rfc3339_lower_case(strings.where(numeric.isna()), trimmed), trimmed)
    parsed = pd.to_datetime(text_moments, errors="coerce", utc=True, format="ISO8601")
    # A month (or a year) is no moment of purchase: read as its first day, a month's purchases
    # would pile up there and land in the wrong split.
    with_day = pc.match_substring_regex(trimmed, _WITH_DAY)  # Arrow's: 5x pandas'
    parsed = parsed.where(pc.fill_null(with_day, False).to_numpy(zero_copy_only=False))
    # Through numpy, in the unit pandas chose: years like 9999 do not fit in nanoseconds.
    moments = parsed.dt.tz_localize(None).to_numpy()
    with np.errstate(invalid="ignore"):
        seconds = np.where(np.isnat(moments), np.nan, moments.astype("datetime64[s]").astype(np.int64))
    with_zone = named_utc | strings.str.contains(_WITH_OFFSET, regex=True, na=False)
    zoneless = (parsed.notna() & ~with_zone).to_numpy(dtype=bool)
    return np.floor(np.where(numeric.notna(), numeric, seconds).astype("float64")), raw, zoneless


# RFC 3339 lets its separator and zone be lower case (2017-11-27t04:01:00z), which pandas'
# ISO-8601 parser refuses: a log of them was all bad_timestamp.
# On the text " UTC" is still on; RE2's \s is ASCII only, \pZ the Unicode spaces Python's \s strips.
_LOWER_CASE_T_OR_Z = r"[0-9]t[0-9]|[0-9][\s\pZ]*z([\s\pZ]+(?i:utc|gmt))?$"


def _rfc3339_lower_case(strings: pd.Series, trimmed: pa.Array) -> pd.Series:
    """``strings`` with RFC 3339's lower-case ``t`` and ``z`` upper-cased, in the rows Arrow's
    regex finds (``trimmed``: the same text), as :func:`_to_microseconds` mends its rows."""
    found = pc.fill_null(pc.match_substring_regex(trimmed, _LOWER_CASE_T_OR_Z), False).to_numpy(zero_copy_only=False)
    if not found.any():
        return strings
    strings = strings.copy()
    strings[found] = (
        strings[found]
        .str.replace(r"(?<=[0-9])t(?=[0-9])", "T", regex=True)
        .str.replace(r"(?<=[0-9])(\s*)z$", r"\1Z", regex=True)
    )
    return strings


def _to_microseconds(strings: pd.Series, trimmed: pa.Array) -> pd.Series:
    """``strings`` with fractions of a second written with a point and cut after their sixth
    digit. One string of nine (``04:01:00.123456789``) made pandas parse its whole batch in
    nanoseconds, where a year past 2262 does not fit: a ``9999-12-31`` placeholder beside it was a
    ``bad_timestamp`` instead of ``timestamp_out_of_range``, as it is in a batch without one; a
    comma (``04:01:00,123``) was a ``bad_timestamp`` itself. Seconds are rounded down anyway, so
    the digits cut change no moment. Only the rows Arrow's regex finds (``trimmed``: the same text)
    are rewritten in pandas; the match costs about 2% of a batch's parse."""
    mend = pc.fill_null(pc.match_substring_regex(trimmed, _FRACTION_TO_MEND), False).to_numpy(zero_copy_only=False)
    if not mend.any():
        return strings
    strings = strings.copy()
    mended = strings[mend].str.replace(_COMMA_FRACTION, r"\1.\2", regex=True)
    strings[mend] = mended.str.replace(_MICROSECONDS_AND_MORE, r"\1", regex=True)
    return strings


def _quantities(column, n: int) -> Tuple[np.ndarray, pa.Array]:
    """Quantity -> (float, NaN if not a number; absent column, null, NaN or empty -> 1; the
    values whose text is the raw text, :func:`_text_where`)."""
    if column is None:
        return np.ones(n), _null_strings(n)
    array = _decoded(column)
    t = array.type
    if pa.types.is_null(t):
        return np.ones(n), _null_strings(n)
    if _is_number(t):
        values = pc.cast(array, pa.float64(), safe=False).to_numpy(zero_copy_only=False)  # as timestamps'
        # NaN is a float column's missing value (Spark writes it where pandas writes null), as the text
        # "NaN" is: 1, not a bad quantity that lost the purchase.
        missing = pc.is_null(array).to_numpy(zero_copy_only=False) | np.isnan(values)
        return np.where(missing, 1.0, values), array
    if not _is_text(t):
        raise InputError(f"the quantity column has type {t}; {_KIND_WORDS[NUMBER]}")
    text, invalid, raw = _as_text(array)
    strings = pd.Series(text.to_pylist(), dtype="object").str.strip()
    empty = _missing_text(pc.utf8_trim_whitespace(text)) & ~invalid
    values = pd.to_numeric(strings.where(~empty), errors="coerce").to_numpy(dtype="float64")
    return np.where(empty, 1.0, values), raw


def _text_where(values: pa.Array, rows: np.ndarray) -> pa.Array:
    """``values`` as text in ``rows`` (a mask), null elsewhere: a quarantined row's raw text. Cast
    for those rows alone: on every row it was more than half of a zone-aware timestamp column's
    validation time, and, whatever the input, 10-34 of a validated row's 56-80 bytes (10-34 GB at
    a billion rows; ``bench.validation_cost``), read by nothing but the quarantine."""
    if not rows.any():
        return _null_strings(len(values))
    mask = pa.array(rows)
    return pc.replace_with_mask(_null_strings(len(values)), mask, pc.cast(pc.filter(values, mask), pa.string()))


def _column(batch, name: str):
    return batch.column(name) if name in batch.schema.names else None


def validate_log_batch(batch, min_ts: int = DEFAULT_MIN_TS, max_ts: int = DEFAULT_MAX_TS) -> pa.Table:
    """Raw log rows (a Table or RecordBatch) -> normalized rows with a ``reason`` (null when the row is good).

    Output (:data:`VALIDATED`): user_id, product_id (strings; for a bad id its raw text),
    ts (int64 seconds, 0 if bad), quantity (float64, 0 if bad), reason, raw_timestamp /
    raw_quantity (a bad row's values as text, as they were in the input; null in a good row:
    :func:`ncf.data.ingest.quarantined_later` writes a later quarantine's), and zoneless (a kept row
    whose timestamp named no time zone, read as UTC). Every input row comes out
    exactly once, in order.
    """
    n = batch.num_rows
    users, null_users, bad_users = _ids(batch.column(USER_ID))
    products, null_products, bad_products = _ids(batch.column(PRODUCT_ID))
    seconds, raw_ts, zoneless = _timestamps_to_seconds(batch.column(TIMESTAMP))
    quantity, raw_qty = _quantities(_column(batch, QUANTITY), n)

    with np.errstate(invalid="ignore"):
        checks = [
            (NULL_USER_ID, null_users),
            (BAD_USER_ID, bad_users),
            (NULL_PRODUCT_ID, null_products),
            (BAD_PRODUCT_ID, bad_products),
            (BAD_TIMESTAMP, ~np.isfinite(seconds)),
            (TIMESTAMP_OUT_OF_RANGE, np.isfinite(seconds) & ((seconds < min_ts) | (seconds >= max_ts))),
            # Not a number, or beyond any till's count (a corrupt value, not a purchase).
            (BAD_QUANTITY, ~np.isfinite(quantity) | (np.isfinite(quantity) & (np.abs(quantity) >= 2.0**63))),
            (NON_POSITIVE_QUANTITY, np.isfinite(quantity) & (quantity <= 0)),
        ]
    reason = np.full(n, None, dtype=object)
    for name, bad in checks:
        reason[(reason == None) & bad] = name  # noqa: E711  (elementwise on an object array)
    good = reason == None  # noqa: E711
    raw_ts, raw_qty = _text_where(raw_ts, ~good), _text_where(raw_qty, ~good)
    ts = np.where(good, seconds, 0).astype("int64")
    qty = np.where(good, quantity, 0.0).astype("float64")
    return pa.table(
        [
            users,
            products,
            pa.array(ts, pa.int64()),
            pa.array(qty, pa.float64()),
            pa.array(reason, pa.string()),
            raw_ts,
            raw_qty,
            pa.array(zoneless & good, pa.bool_()),
        ],
        schema=VALIDATED,
    )


def normalize_catalog_batch(batch: pa.Table) -> pa.Table:
    """Catalog rows -> string ids, department and category; missing values become 'unknown'
    (rows whose product id is missing or bad are dropped and counted by the caller)."""

    def text(name: str) -> pa.Array:
        values, missing, bad = _ids(batch.column(name), whole_number_text=name == PRODUCT_ID)
        values = pc.if_else(pa.array(missing | bad), _null_strings(len(values)), values)
        return pc.fill_null(values, UNKNOWN) if name != PRODUCT_ID else values

    table = pa.table({PRODUCT_ID: text(PRODUCT_ID), DEPARTMENT: text(DEPARTMENT), CATEGORY: text(CATEGORY)})
    return table.filter(pc.is_valid(table.column(PRODUCT_ID)))


def id_kind(files: InputFiles, column: str) -> Optional[str]:
    """'int' when the id column's type in every file holds only ids int64 holds (integers up to
    int64 or uint32, whole-number floats, decimals of up to 18 digits), 'str' when some file's
    is text (for returning raw ids); None where the ids themselves decide (:func:`kind_of_ids`):
    CSV, whose columns carry no type, and uint64 and wider decimals, whose ids int64 may not hold
    (a ClickHouse UInt64, a warehouse's NUMBER(38,0): answered as integers when every one fits)."""
    if files.format == "csv":
        return None
    decided_by_ids = False
    for path in files.paths:
        t = pq.read_schema(path).field(column).type
        t = t.value_type if pa.types.is_dictionary(t) else t
        if not (_is_number(t) or pa.types.is_null(t)):
            return "str"
        wide = pa.types.is_decimal(t) and t.precision - t.scale > 18
        decided_by_ids = decided_by_ids or wide or pa.types.is_uint64(t)
    return None if decided_by_ids else "int"


# An integer as int64 prints it: no "+", no leading zeros, no "-0" ("007" stays the text id "007").
_INTEGER_TEXT = r"^(0|-?[1-9][0-9]{0,18})$"
_INT64_MAX_TEXT, _INT64_MIN_TEXT = str(2**63 - 1), str(-(2**63))


def integer_text(ids: pa.Array) -> np.ndarray:
    """Which text ids are integers in int64's range written as int64 prints them (a bool mask)."""
    integer = pc.fill_null(pc.match_substring_regex(ids, _INTEGER_TEXT), False)
    # Beyond int64's range: the same number of characters as its limits and larger, as text.
    length = pc.utf8_length(ids)
    beyond = pc.or_(
        pc.and_(pc.equal(length, len(_INT64_MAX_TEXT)), pc.greater(ids, _INT64_MAX_TEXT)),
        pc.and_(pc.equal(length, len(_INT64_MIN_TEXT)), pc.greater(ids, _INT64_MIN_TEXT)),
    )
    return pc.and_(integer, pc.invert(pc.fill_null(beyond, False))).to_numpy(zero_copy_only=False)


def kind_of_ids(ids: pa.Array) -> str:
    """The kind of text ids read from a format without types (CSV): 'int' when every one is an
    integer in int64's range written as int64 prints it (:func:`integer_text`), so that the same
    log exported as CSV or as Parquet with integer ids answers its ids as the same JSON integers;
    else 'str'.

    Example::

        kind_of_ids(pa.array(["12", "7"]))  # 'int'
        kind_of_ids(pa.array(["12", "007"]))  # 'str'
    """
    return "int" if len(ids) and integer_text(ids).all() else "str"


# How one id may be written otherwise: Excel's ="00123" (kept leading zeros), a leading ' (a
# spreadsheet's text marker) or + , and leading zeros of a number (a system that pads its codes).
_FORMATTED = r"^(=\"|['+]|0[0-9])"
_REWRITES = ((r"^=\"(.+)\"$", r"\1"), (r"^['+]+(.+)$", r"\1"), (r"^0+([0-9]+)$", r"\1"))


def canonical_ids(ids: pa.Array) -> pa.Array:
    """Text ids with their formatting taken away (:data:`_REWRITES`): ``="00123"``, ``'00123``,
    ``+123`` and ``00123`` are all ``123``; ``0`` stays ``0``, and ``+`` or ``'`` alone stay
    themselves (no id is empty)."""
    for pattern, replacement in _REWRITES:
        ids = pc.replace_substring_regex(ids, pattern, replacement)
    return ids


def ids_differing_only_in_format(ids: pa.Array, examples: int = 3) -> Tuple[int, List[List[str]]]:
    """Of distinct text ids (a vocabulary's), how many equal another once their formatting is
    taken away (:func:`canonical_ids`), and up to ``examples`` such groups (sorted): ``00123``
    beside ``123`` are two households or products, where they are most likely one. Only the ids
    that formatting may change are rewritten (a regex match over all, then those), and only the
    ids those may equal are looked up: next to nothing for ids without such formatting, about 2 s
    a million zero-padded ids (loyalty cards, EANs) on 2 cores."""
    formatted = pc.fill_null(pc.match_substring_regex(ids, _FORMATTED), False)
    candidates = ids.filter(formatted)
    keys = canonical_ids(candidates)
    changed = pc.not_equal(keys, candidates)
    rewritten, their_keys = candidates.filter(changed), keys.filter(changed)
    if not len(rewritten):
        return 0, []
    # The ids as written that a rewritten one equals ("123" for "00123"), the rewritten ones aside:
    # formatting does not change them, so each is its own key.
    equal = ids.filter(pc.is_in(ids, value_set=pc.unique(their_keys)))
    equal = equal.filter(pc.invert(pc.is_in(equal, value_set=rewritten)))
    table = pa.table({"id": pa.concat_arrays([rewritten, equal]), "key": pa.concat_arrays([their_keys, equal])})
    groups = table.group_by("key", use_threads=False).aggregate([("id", "list")])
    groups = groups.filter(pc.greater(pc.list_value_length(groups.column("id_list")), 1)).sort_by("key")
    twins = int(pc.sum(pc.list_value_length(groups.column("id_list"))).as_py() or 0)
    return twins, [sorted(group) for group in groups.column("id_list")[:examples].to_pylist()]
