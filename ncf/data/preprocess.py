"""Ray Data preprocessing: purchase logs -> validated state, vocabularies and training lists.

Steps (Ray Data stages, so reading, validation, the sort of the purchases and list building
spread over a multi-node cluster; the driver appends the sorted purchases to the state's
memory-mapped files, about 6 bytes of its memory a purchase, and the products' statistics of
each cutoff are Ray tasks reading that state a chunk of households at a time, so DATA must be on
storage every node reads, as for the nightly job):

1. read the logs (Parquet or CSV) and validate every row (:mod:`ncf.data.ingest`); bad rows,
   and rows far after the bulk of the data, go to the quarantine with a ``reason`` and their
   raw values (rows in, counted from the source, = kept + quarantined);
2. split by time: the last ``test_weeks`` weeks are the test period, the ``val_weeks``
   before them validation, everything earlier training;
3. vocabularies of every household and product in the data (index 0 = unknown), each with the
   moment it was first seen, so that evaluation can hold back what was unknown at a cutoff;
4. the state: every household's purchases through the data's end (``user_state/``, compact
   arrays) and the products' popularity and cadence at the end (``product_stats/``): what
   serving and the nightly job rank from; the same statistics at every training cutoff, one
   Ray task each (:func:`stats_at`);
5. training lists (the purchases grouped by lists file, each file's lists built and written by
   one task, :mod:`ncf.data.examples`): "bought within H days" at several cutoffs, for the
   validated run (labels end where validation starts) and for the deployment refit (labels end
   with the data).

``state_only=True`` stops after step 4: refreshing the histories a deployed model ranks from
takes no example building.

Everything is written to a staging directory beside the output and swapped in at the end
(:func:`ncf.staging.replacing`): a run that fails leaves the previous output as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
from ray.data.aggregate import Count, Max, Min, Sum

from ncf.data import ingest, layout, schema
from ncf.data.examples import (
    BOUGHT_UNKNOWN,
    CUTOFF,
    LABEL,
    LISTS_PER_FILE,
    PRODUCT,
    USER,
    Cutoff,
    ExampleConfig,
    households_lists,
)
from ncf.data.features import FEATURES_VERSION, Catalog
from ncf.data.product_stats import ProductStats
from ncf.data.schema import TS
from ncf.data.user_state import CHUNK_ROWS, UserStates, scrambled
from ncf.data.vocab import FIRST_TS, Vocabularies, Vocabulary
from ncf.errors import raised_within
from ncf.jsonio import write_json
from ncf.moments import SECONDS_PER_DAY, run_date_of
from ncf.splits import REFIT, TEST, TRAIN, VAL, VALIDATED
from ncf.staging import replacing

WEEK = 7 * 86_400
LIST_COUNTS = ("lists", "candidates", "positives", "bought_unknown_at_cutoff")
COUNT = "count()"
FIRST_SEEN = f"min({TS})"
EARLY = "early"  # 1 for a row before the moment product indices are counted to
EARLY_COUNT = f"sum({EARLY})"


@dataclass
class PreprocessConfig:
    """Settings of a preprocessing run (recorded in ``stats.json``)."""

    examples: ExampleConfig = field(default_factory=ExampleConfig)
    val_weeks: int = 4
    test_weeks: int = 5
    min_timestamp: int = schema.DEFAULT_MIN_TS
    max_timestamp: int = schema.DEFAULT_MAX_TS
    # Rows after a gap of more than this many days past the bulk of the data are quarantined
    # as future_timestamp (ncf.data.ingest.future_bound).
    future_gap_days: float = 14.0


def small_config() -> PreprocessConfig:
    """The settings for :data:`ncf.data.datasets.SMALL` (the tests' log and the quick benches'):
    3-week label windows at 2 cutoffs, short histories and few negatives, so that its 150
    households give training lists beside 3 validation and 4 test weeks in seconds."""
    examples = ExampleConfig(history_length=8, horizon_days=21, cutoffs=2, sampled_negatives=5, uniform_negatives=20)
    return PreprocessConfig(examples=examples, val_weeks=3, test_weeks=4)


def _log(message: str) -> None:
    print(f"[preprocess] {message}", flush=True)


def read_files(files: schema.InputFiles, columns) -> ray.data.Dataset:
    """``columns`` of ``files`` (a catalog's), and those only: a catalog's images or embeddings
    beside them would be read, and held, for nothing (Ray 2.60 reads a Parquet file's selected
    columns only; its ``columns=`` is deprecated for this)."""
    if files.format == "parquet":  # Ray's default suffixes would drop a catalog named *.pq, even named alone
        read = ray.data.read_parquet(files.paths, file_extensions=list(schema.PARQUET_SUFFIXES))
        return read.select_columns(list(columns))
    return ray.data.read_csv(files.paths, **schema.csv_read_options(columns))


def split_boundaries(min_ts: int, max_ts: int, val_weeks: int, test_weeks: int) -> Dict[str, int]:
    """Split points counted back in whole weeks from the last purchase.

    The test period is the last ``test_weeks`` x 7 days, validation the ``val_weeks`` before
    it, training everything earlier. On Complete Journey with 5 test weeks the test period
    starts 2017-11-27 04:01, with its week 49.
    """
    test_start = max_ts + 1 - test_weeks * WEEK
    val_start = test_start - val_weeks * WEEK
    if val_start <= min_ts:
        weeks = (max_ts - min_ts) / WEEK
        raise schema.InputError(
            f"the logs span {weeks:.1f} weeks: too short for {val_weeks} "
            f"validation + {test_weeks} test weeks plus training"
        )
    return {"start": int(min_ts), "val_start": int(val_start), "test_start": int(test_start), "end": int(max_ts)}


def training_cutoffs(bounds: Dict[str, int], config: PreprocessConfig, state_only: bool = False) -> Dict[str, list]:
    """The cutoffs of each training run; refuses, before any work, logs too short for the
    validated run's latest cutoff (the validation start less the label window) to have any
    purchase before it, in words a user can act on."""
    cutoffs = {
        VALIDATED: config.examples.schedule(bounds["val_start"]),
        REFIT: config.examples.schedule(bounds["end"] + 1),
    }
    latest = cutoffs[VALIDATED][0]
    history_days = (latest - bounds["start"]) / 86_400
    if not state_only and history_days <= 0:
        horizon = config.examples.horizon_days
        needed = config.val_weeks + config.test_weeks + int(np.ceil(horizon / 7)) + 1
        first, last = run_date_of(bounds["start"]), run_date_of(bounds["end"])
        raise schema.InputError(
            f"the logs span {(bounds['end'] - bounds['start']) / WEEK:.1f} weeks ({first} to {last}): the "
            f"validated run's latest training moment, {run_date_of(latest)} (the validation start less the "
            f"{horizon}-day label window), comes before the first purchase; with --val-weeks "
            f"{config.val_weeks} --test-weeks {config.test_weeks} --horizon-days {horizon} the logs need "
            f"{needed} weeks at least: lower those, or give more logs"
        )
    if not state_only and history_days < 28:
        _log(
            f"warning: only {history_days:.0f} days of purchases before the validated run's latest training "
            f"moment ({run_date_of(latest)}): its lists will know little of each household"
        )
    return cutoffs


# Ray Data's hash shuffles default to 200 partitions, a task and a block each whatever the size:
# on 2 CPUs a 33k-line log spent about 30 of its 50 s preprocessing in them. A partition per this many
# rows (at least one per CPU, at most Ray's default) keeps a large log's partitions as they were.
ROWS_PER_SHUFFLE_PARTITION = 500_000


# Ray Data 2.60's default shuffle (SHUFFLE_V2) starts aggregator actors for each groupby, sort
# and aggregate: seconds apiece whatever the log's size (an 84-line log took 46 s to preprocess
# on 2 CPUs). Logs up to this many lines shuffle with tasks; larger ones keep the default. Nothing
# written depends on the order Ray hands blocks over in (:func:`_in_key_order`, the lists'
# files), so either gives the same DATA.
TASK_SHUFFLE_ROWS = 5_000_000


def use_task_shuffles(ds: ray.data.Dataset, rows: int) -> None:
    """Task-based shuffles for ``ds`` and every Dataset derived from it (they share its
    settings) when its log has at most :data:`TASK_SHUFFLE_ROWS` lines."""
    if rows <= TASK_SHUFFLE_ROWS:
        ds.context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


def shuffle_partitions(rows: int) -> int:
    """Partitions of the groupbys' shuffles of a ``rows``-line log (hash or task-based)."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    most = ray.data.DataContext.get_current().default_hash_shuffle_parallelism
    return int(min(most, max(cpus, -(-rows // ROWS_PER_SHUFFLE_PARTITION))))


def _distinct_counts(
    ds: ray.data.Dataset, column: str, counted_before: Optional[int] = None, partitions: Optional[int] = None
) -> pd.DataFrame:
    """Distinct values of a column with their counts and first moment, most frequent first (ties
    by id); with ``counted_before``, most frequent before that moment first."""
    if counted_before is None:
        frame = ds.groupby(column, num_partitions=partitions).aggregate(Count(), Min(TS)).to_pandas()
        return frame.sort_values([COUNT, column], ascending=[False, True], kind="stable").reset_index(drop=True)
    flagged = ds.map_batches(_flag_early, batch_format="pyarrow", fn_kwargs={"before": counted_before})
    frame = flagged.groupby(column, num_partitions=partitions).aggregate(Sum(EARLY), Min(TS)).to_pandas()
    return frame.sort_values([EARLY_COUNT, column], ascending=[False, True], kind="stable").reset_index(drop=True)


def _flag_early(batch: pa.Table, before: int) -> pa.Table:
    return batch.append_column(EARLY, pc.cast(pc.less(batch.column(TS), before), pa.int64()))


def build_vocabularies(
    known: ray.data.Dataset,
    catalog: Optional[pd.DataFrame],
    id_kinds: Dict[str, Optional[str]],
    val_start: Optional[int] = None,
    partitions: Optional[int] = None,
    replaced: Optional[Dict[str, str]] = None,
) -> tuple[Vocabularies, Dict]:
    """Vocabularies of every household and product of ``known``; products get their hierarchy,
    both the moment they were first seen (``first_ts``), and each the kind of its ids
    (``id_kinds``; None: decided by the ids, :func:`ncf.data.schema.kind_of_ids`, and by
    ``replaced``, the kinds of the DATA a refresh replaces: see :func:`_kinds_of_ids`). Product
    indices follow the purchase counts before ``val_start`` (when given), since evaluation breaks
    ties between equally popular products by index: counts from the held-out weeks would let
    their purchases decide."""
    users = _distinct_counts(known.select_columns([schema.USER_ID, TS]), schema.USER_ID, partitions=partitions)
    products = _distinct_counts(
        known.select_columns([schema.PRODUCT_ID, TS]), schema.PRODUCT_ID, val_start, partitions=partitions
    )
    if catalog is None:
        catalog = pd.DataFrame({c: pd.Series([], dtype=object) for c in schema.CATALOG_REQUIRED})
    joined = products.merge(catalog, on=schema.PRODUCT_ID, how="left")
    unmatched = joined[schema.DEPARTMENT].isna()
    missing, examples = int(unmatched.sum()), joined.loc[unmatched, schema.PRODUCT_ID].head(3).tolist()
    twins, twin_example = (
        (0, None)
        if catalog.empty or not missing  # no catalog: every product is missing, none written otherwise
        else _catalog_format_twins(
            pa.array(joined.loc[unmatched, schema.PRODUCT_ID].tolist(), pa.string()),
            pa.array(catalog[schema.PRODUCT_ID].tolist(), pa.string()),
        )
    )
    joined = joined.fillna({schema.DEPARTMENT: schema.UNKNOWN, schema.CATEGORY: schema.UNKNOWN})

    def level(column: str) -> Vocabulary:
        values = sorted(set(joined[column]) - {schema.UNKNOWN})
        return Vocabulary.from_ids(values, kind="str")

    departments, categories = level(schema.DEPARTMENT), level(schema.CATEGORY)
    product_ids = pa.array(products[schema.PRODUCT_ID].tolist(), pa.string())
    user_ids = pa.array(users[schema.USER_ID].tolist(), pa.string())
    kinds, notes = _kinds_of_ids({schema.PRODUCT_ID: product_ids, schema.USER_ID: user_ids}, id_kinds, replaced or {})
    notes.update(_format_twins({schema.USER_ID: user_ids, schema.PRODUCT_ID: product_ids}, kinds))
    product_vocab = Vocabulary.from_ids(
        product_ids,
        kind=kinds[schema.PRODUCT_ID],
        extra={
            "department": joined[schema.DEPARTMENT].tolist(),
            "category": joined[schema.CATEGORY].tolist(),
            # Arrays: labels are keyed as ingest kept them (a list would be read as asked ids).
            "department_index": departments.index_of(pa.array(joined[schema.DEPARTMENT].tolist(), pa.string())),
            "category_index": categories.index_of(pa.array(joined[schema.CATEGORY].tolist(), pa.string())),
            FIRST_TS: products[FIRST_SEEN].to_numpy(dtype=np.int64),
        },
    )
    user_vocab = Vocabulary.from_ids(
        user_ids,
        kind=kinds[schema.USER_ID],
        extra={FIRST_TS: users[FIRST_SEEN].to_numpy(dtype=np.int64)},
    )
    vocabs = Vocabularies(user_vocab, product_vocab, departments, categories)
    stats = {
        "products_missing_from_catalog": missing,
        "products_missing_examples": examples,
        "products_missing_differing_only_in_format": twins,
        "products_missing_differing_only_in_format_example": twin_example,
    }
    return vocabs, {**stats, **notes}


def _catalog_format_twins(missing: pa.Array, catalog_ids: pa.Array) -> tuple[int, Optional[List[str]]]:
    """Of the log's products the catalog does not name (``missing``, most bought first), how
    many it names written otherwise (``007`` in the log, ``7`` in the catalog: equal once
    :func:`ncf.data.schema.canonical_ids` takes their formatting away), and the first such pair
    (the log's id, the catalog's). Counted, not matched: which spelling is right is the user's
    to say, as for the log's own ids (:func:`_format_twins`)."""
    at = pc.index_in(schema.canonical_ids(missing), value_set=schema.canonical_ids(catalog_ids), skip_nulls=True)
    found = pc.is_valid(at)
    twins = int(pc.sum(found).as_py() or 0)
    if not twins:
        return 0, None
    first = int(pc.index(found, True).as_py())
    return twins, [missing[first].as_py(), catalog_ids[at[first].as_py()].as_py()]


def _kinds_of_ids(
    ids: Dict[str, pa.Array], declared: Dict[str, Optional[str]], replaced: Dict[str, str]
) -> tuple[Dict[str, str], Dict]:
    """Each id column's kind: text where the DATA a refresh replaces has text ids (``replaced``),
    whatever the files declare, so that its answers do not change type between two nights (an
    int64 Parquet export of a log preprocessed from CSV text ids); else as its files declare it,
    else (CSV, uint64, wide decimals) decided by its ids. A text column refreshing a DATA of
    integers is decided by its ids too (a string export of the same integer ids stays integers).
    The second value holds the notes: ``ids_kept_as_text``, the ids of a column kept as text
    although some are integers, with a few examples of the others (``"12a"`` among integers), and
    ``id_kinds_changed``, a column of integers in the DATA replaced that is text now."""
    kinds: Dict[str, str] = {}
    as_text: Dict[str, Dict] = {}
    changed: Dict[str, Dict] = {}
    for column, values in ids.items():
        kept_text = replaced.get(column) == "str"
        # A declared text column over a DATA of integers: its type alone would turn Serve's answers
        # and the nightly partitions to text without a word, where its ids may all be integers.
        text_over_integers = declared[column] == "str" and replaced.get(column) == "int"
        if declared[column] is not None and not text_over_integers:
            kinds[column] = "str" if kept_text else declared[column]
            continue
        kinds[column] = "str" if kept_text else schema.kind_of_ids(values)
        integer = schema.integer_text(values) if kinds[column] == "str" else None
        if integer is not None and integer.any() and not integer.all():
            others = values.filter(pa.array(~integer))
            as_text[column] = {"not_integers": len(others), "ids": len(values), "examples": others[:3].to_pylist()}
        if replaced.get(column) == "int" and kinds[column] == "str":
            changed[column] = {"was": "int", "now": "str"}
    return kinds, {
        **({"ids_kept_as_text": as_text} if as_text else {}),
        **({"id_kinds_changed": changed} if changed else {}),
    }


# How an id may be written otherwise and mean the same (schema.canonical_ids), in the warnings' words.
ID_FORMATTING = "leading zeros, a leading ' or +, Excel's =\"...\""


def _format_twins(ids: Dict[str, pa.Array], kinds: Dict[str, str]) -> Dict:
    """Per id column, the ids that equal another but for their formatting (``00123`` beside
    ``123``, Excel's ``="00123"``): kept apart (which spelling is right is the user's to say),
    counted for ``stats.json`` with a few examples for the console. Integer ids have one
    spelling, so only text vocabularies are looked at."""
    counts: Dict[str, int] = {}
    examples: Dict[str, list] = {}
    for column, values in ids.items():
        found = schema.ids_differing_only_in_format(values) if kinds[column] == "str" else (0, [])
        counts[column], examples[column] = found
    return {"ids_differing_only_in_format": counts, "ids_differing_only_in_format_examples": examples}


def _report_format_twins(vocab_stats: Dict) -> None:
    """A WARNING per id column with ids that differ from another only in formatting."""
    for column, twins in vocab_stats["ids_differing_only_in_format"].items():
        if twins:
            what = "household" if column == schema.USER_ID else "product"
            examples = vocab_stats["ids_differing_only_in_format_examples"][column]
            _log(
                f"WARNING: {twins:,} {column} values equal another but for their formatting ({ID_FORMATTING}), "
                f"e.g. {examples}: each is a {what} of its own; if they are "
                "one, write its id one way in every file"
            )


def _refuse_unmatched_catalog(
    catalog: schema.InputFiles, frame: pd.DataFrame, catalog_rows: int, vocab_stats: Dict, products: int
) -> None:
    """InputError (one line) when the catalog names products but none of the log's: keyed by
    other ids (``0012`` against ``12``, SKUs against EANs), it would leave every product's
    department and category unknown, a model trained on nothing of the hierarchy. A catalog
    without rows is the user's way to give none (said on the console); partial coverage is said
    by :func:`_report_catalog_coverage`."""
    if not catalog_rows or vocab_stats["products_missing_from_catalog"] < products:
        return
    log_example = vocab_stats["products_missing_examples"][0]
    if len(frame):
        has = f"the catalog {frame[schema.PRODUCT_ID].iloc[0]!r}"
    else:  # every row's product id was bad: Excel's 4.00638E+12 for an EAN, say
        has = f"none of the catalog's {catalog_rows:,} rows has a usable product id"
    twins = vocab_stats["products_missing_differing_only_in_format"]
    written_otherwise = ""
    if twins:
        in_log, in_catalog = vocab_stats["products_missing_differing_only_in_format_example"]
        written_otherwise = (
            f"; {twins:,} of them are in it written otherwise ({ID_FORMATTING}), e.g. {in_log!r} as {in_catalog!r}"
        )
    raise schema.InputError(
        f"{catalog.paths[0]}: none of the log's {products:,} products is in the product catalog (the log has "
        f"e.g. {log_example!r}, {has}): give a catalog keyed by the log's product ids{written_otherwise}"
    )


def _report_catalog_coverage(vocab_stats: Dict, products: int) -> None:
    """The products the catalog does not name rank with an unknown department and category: say
    how many on the console (a catalog keyed by other ids, "0012" against 12, matches none)."""
    missing = vocab_stats["products_missing_from_catalog"]
    if not missing:
        return
    share = missing / max(products, 1)
    _log(
        f"{'WARNING: ' if share > 0.5 else ''}{missing:,} of {products:,} products ({share:.0%}) are not in the "
        f"catalog (department and category unknown), e.g. {vocab_stats['products_missing_examples']}"
        + ("; do the catalog's product_id values match the logs'?" if share > 0.5 else "")
    )


def _report_catalog_format_twins(vocab_stats: Dict) -> None:
    """A WARNING when products the catalog does not name are in it written otherwise (``007``
    against ``7``): the coverage line alone read as products the catalog lacks."""
    twins = vocab_stats["products_missing_differing_only_in_format"]
    if not twins:
        return
    in_log, in_catalog = vocab_stats["products_missing_differing_only_in_format_example"]
    missing = vocab_stats["products_missing_from_catalog"]
    _log(
        f"WARNING: {twins:,} of the {missing:,} products not in the catalog {'is' if twins == 1 else 'are'} in it "
        f"written otherwise ({ID_FORMATTING}), e.g. {in_log!r} in the logs, "
        f"{in_catalog!r} in the catalog: kept apart, with an unknown department and category; write each id one "
        "way in both"
    )


# A share of repeated lines beyond which the console line is a WARNING: a log read twice shows 50%.
REPEATED_WARNING_SHARE = 0.2


def _report_repeated_lines(repeated: int, rows_kept: int, dates_only: bool) -> None:
    """Says how many kept lines repeat another line's household, product and second (kept, each a
    purchase); a WARNING beyond :data:`REPEATED_WARNING_SHARE` of them (an export read twice)."""
    if not repeated:
        return
    share = repeated / max(rows_kept, 1)
    _log(
        f"{'WARNING: ' if share > REPEATED_WARNING_SHARE else ''}{repeated:,} of {rows_kept:,} lines "
        f"({100 * share:.3g}%) {'repeats' if repeated == 1 else 'repeat'} another line's household, "
        "product and second: kept, each a purchase (a doubled export would show here"
        + (", and a product bought on two trips of one day in a log of dates)" if dates_only else ")")
    )


def _index_rows(batch: pa.Table, users: Vocabulary, products: Vocabulary) -> pa.Table:
    return pa.table(
        {
            USER: users.index_of(batch.column(schema.USER_ID)),
            PRODUCT: products.index_of(batch.column(schema.PRODUCT_ID)),
            TS: batch.column(TS),
        }
    )


@contextlib.contextmanager
def _blocks_in_order():
    """Ray Data keeps its blocks' order for what is created inside this block (by default it hands
    blocks over as their tasks finish): the files' row order in what it reads. A Dataset plans
    with the settings current when its source was created."""
    context = ray.data.DataContext.get_current()
    previous = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        yield
    finally:
        context.execution_options.preserve_order = previous


def _unreadable_catalog(files: schema.InputFiles) -> Optional[schema.InputError]:
    """Which catalog file the reader refused, and why, when a file is to blame. Ray Data's error
    names a file but drops pyarrow's reason ("invalid UTF8 data", "Expected 3 columns, got 4"):
    CSV files are read through here, one by one and streamed, with the same options, and so are
    Parquet files' contract columns (:func:`_unreadable_parquet_catalog`). None when every file
    reads (the failure was not the input's: a worker lost, memory)."""
    if files.format == "parquet":
        return _unreadable_parquet_catalog(files.paths)
    for path in files.paths:
        try:
            # Streamed: a block in memory at a time, whatever the catalog's size.
            for _ in pacsv.open_csv(path, **schema.csv_read_options(schema.CATALOG_REQUIRED)):
                pass
        except pa.ArrowException as e:
            reason = str(e).strip().splitlines()[0][:300]
            hint = schema.unclosed_quote_hint(reason)
            return schema.InputError(f"{path}{hint}: unreadable product catalog: {reason}")
    return None


def _unreadable_parquet_catalog(paths: List[str]) -> Optional[schema.InputError]:
    """The first Parquet catalog file whose contract columns do not read, as the one line a
    log's would be (:func:`ncf.data.schema._unreadable`). Its footer alone may read while a
    data page does not (a few bytes damaged: "Corrupt snappy compressed data"), which Ray
    found only after the whole log. Streamed, a batch at a time and the three columns only:
    catalogs are small, and their other columns (images, embeddings) are not read."""
    for path in paths:
        try:
            with pq.ParquetFile(path) as file:
                for _ in file.iter_batches(columns=list(schema.CATALOG_REQUIRED), use_threads=False):
                    pass
        except (pa.ArrowException, OSError, ValueError, EOFError) as e:
            return schema._unreadable(path, "parquet", e)
    return None


def check_inputs(logs: schema.InputFiles, catalog: Optional[schema.InputFiles] = None) -> None:
    """The checks that need no Ray, so that bad input fails in a second, not after start-up (or,
    for a catalog, after the whole log has been read): the files' columns, logs of one content
    given twice and that every catalog file reads (:func:`_unreadable_catalog`, streamed: a CSV
    through, a Parquet file's contract columns)."""
    schema.check_columns(logs, schema.LOG_REQUIRED, "purchase log", schema.LOG_OPTIONAL)
    schema.refuse_repeated_content(logs)
    if catalog is not None:
        schema.check_columns(catalog, schema.CATALOG_REQUIRED, "product catalog")
        unreadable = _unreadable_catalog(catalog)
        if unreadable is not None:
            raise unreadable


def _report_hidden(files: schema.InputFiles, what: str) -> None:
    """One console line for the files named like data (``_sales.csv``) that were skipped for a
    name starting with '.' or '_' (:func:`ncf.data.schema.resolve_files`): silently, an export
    someone named so would be left out of every count."""
    if files.hidden:
        _log(
            f"{what}: skipped {len(files.hidden):,} file(s) named like data whose names start with '.' or '_' "
            f"(hidden, as Spark's _temporary and editors' files are), e.g. {files.hidden[:3]}; rename them to read them"
        )


def _read_catalog(files: Optional[schema.InputFiles]) -> tuple[Optional[pd.DataFrame], Dict]:
    if files is None:
        return None, {"catalog_rows": 0}
    _report_hidden(files, "catalog")
    # In file order, so that of two rows of one product the first in the files wins every run.
    with _blocks_in_order():
        try:
            raw = read_files(files, schema.CATALOG_REQUIRED)
            rows = raw.count()
            catalog = raw.map_batches(schema.normalize_catalog_batch, batch_format="pyarrow").to_pandas()
        except Exception as e:  # Ray wraps the reader's error in its task's traceback
            unreadable = _unreadable_catalog(files)
            if unreadable is None:
                raise
            raise unreadable from e
    if catalog.empty:  # headers alone, or no row with a product id: a frame without columns
        catalog = pd.DataFrame({c: pd.Series(dtype=object) for c in schema.CATALOG_REQUIRED})
    deduped = catalog.drop_duplicates(schema.PRODUCT_ID, keep="first")
    _report_catalog_rows(catalog, rows, len(deduped))
    return deduped, {
        "catalog_rows": rows,
        "catalog_rows_without_product_id": rows - len(catalog),
        "catalog_duplicate_products": len(catalog) - len(deduped),
    }


def _report_catalog_rows(catalog: pd.DataFrame, rows: int, products: int) -> None:
    """Says what the catalog's reading left out: rows without a product id, and products named
    twice (the first row in the files wins), with examples of those whose rows disagree."""
    if rows == 0:
        _log("catalog: no rows: every product's department and category are unknown")
    if rows > len(catalog):
        _log(f"catalog: {rows - len(catalog):,} of {rows:,} rows have no usable product id (left out)")
    if len(catalog) > products:
        labels = catalog.groupby(schema.PRODUCT_ID)[[schema.DEPARTMENT, schema.CATEGORY]].nunique()
        disagree = labels[(labels > 1).any(axis=1)].index[:3].tolist()
        _log(
            f"catalog: {len(catalog) - products:,} rows name a product already named (the first row in the "
            "files wins)" + (f"; some disagree on department or category, e.g. products {disagree}" if disagree else "")
        )


def _count_lists(directory: str) -> Dict[str, int]:
    """Lists, candidates and positives of the written examples (and the purchases in their windows
    of products unknown at the cutoff, which no list labels), from two columns, a file's batch at
    a time: at 10M households the labels alone are billions of values."""
    counts = dict.fromkeys(LIST_COUNTS, 0)
    if not os.path.isdir(directory) or not os.listdir(directory):  # an empty one: a scan finds no columns
        return counts
    dataset = pads.dataset(directory, format="parquet", partitioning="hive")
    for batch in dataset.to_batches(columns=[LABEL, BOUGHT_UNKNOWN]):
        labels = pc.list_flatten(batch.column(LABEL))
        counts["lists"] += batch.num_rows
        counts["candidates"] += len(labels)
        counts["positives"] += int(pc.sum(labels).as_py() or 0)
        counts["bought_unknown_at_cutoff"] += int(pc.sum(batch.column(BOUGHT_UNKNOWN)).as_py() or 0)
    return counts


def write_state(indexed: ray.data.Dataset, vocabs: Vocabularies, output: str) -> tuple[UserStates, "_LineCounts"]:
    """Every household's purchases (compact arrays), and the lines' :class:`_LineCounts`: how
    many repeat another line's household, product and second (kept, each a purchase: counted
    because a doubled export shows there, and sorted rows make them neighbours), and how many
    are at midnight UTC (all of them: a log of dates, whose days' order is unknown).

    Ray Data sorts the purchases by household, time and product across the cluster; the driver
    then appends them to memory-mapped files a block at a time, the blocks taken in the order of
    their first rows (:func:`_in_key_order`). It never holds the log (tens of GB at 10M
    households) and writes each page of the state once."""
    key = [USER, TS, PRODUCT]
    batches = _LineCounts(
        (block.column(USER).to_numpy(), block.column(PRODUCT).to_numpy(), block.column(TS).to_numpy())
        for block in _in_key_order(indexed.sort(key), key)
    )
    states = UserStates.write(layout.user_state_dir(output), batches, len(vocabs.users), indexed.count())
    return states, batches


class _LineCounts:
    """Passes sorted (households, products, timestamps) batches on, counting the rows equal to
    the row before them (across batches too) and the rows at midnight UTC."""

    def __init__(self, batches: Iterable[tuple]) -> None:
        self.batches, self.repeated, self.at_midnight, self._last = batches, 0, 0, None

    def __iter__(self) -> Iterator[tuple]:
        for users, products, timestamps in self.batches:
            if len(users):
                rows = (users, products, timestamps)
                self.repeated += int(np.logical_and.reduce([a[1:] == a[:-1] for a in rows]).sum())
                self.repeated += int(self._last == tuple(a[0] for a in rows))
                self.at_midnight += int((timestamps % SECONDS_PER_DAY == 0).sum())
                self._last = tuple(a[-1] for a in rows)
            yield users, products, timestamps


def _in_key_order(ordered: ray.data.Dataset, key: List[str]) -> Iterator[pa.Table]:
    """The blocks of a Dataset sorted on ``key``, one at a time, in the order of their first rows.

    Not the order Ray hands them over in: with the task-based shuffle and ``preserve_order`` set
    on the Dataset, Ray 2.60 once handed a sort's output blocks over out of order (a lists file
    of two sorted runs, one Complete Journey preprocessing in two). ``UserStates.write`` refuses
    rows out of order, should two blocks ever overlap."""
    blocks = ordered.to_arrow_refs()
    del ordered  # it holds every block; without it, the object store frees each one once read
    firsts = ray.get([_first_row.remote(block, key) for block in blocks])
    for _, i in sorted((first, i) for i, first in enumerate(firsts) if first is not None):
        block, blocks[i] = blocks[i], None
        yield ray.get(block)


@ray.remote(num_cpus=0.25)
def _first_row(block: pa.Table, key: List[str]) -> Optional[tuple]:
    return tuple(block.column(c)[0].as_py() for c in key) if block.num_rows else None


# Where a task and the driver see different files under --output (the stats tasks' state, the
# lists tasks' files): the end of the job's one line.
_SHARED_STORAGE_QUESTION = "is --output on storage every node of the Ray cluster mounts at the same path?"


def stats_at(output: str, category: np.ndarray, cutoffs: List[int]) -> Dict[int, ProductStats]:
    """The products' stats at each cutoff, one Ray task per cutoff, each reading the memory-mapped
    state of ``output`` a chunk of households at a time: a pass takes minutes at a billion
    purchases, and a driver would make them one after another (:func:`stats_in_tasks`)."""
    state_dir = layout.user_state_dir(output)
    purchases = len(UserStates.load(state_dir).products)  # the driver's read: its own errors, as they are
    try:
        return stats_in_tasks(state_dir, purchases, category, cutoffs)
    except Exception as e:  # noqa: BLE001  (Ray wraps what its tasks raise)
        _refuse_unshared_state(e, output)
        raise


def stats_in_tasks(
    state_dir: str,
    purchases: int,
    category: np.ndarray,
    cutoffs: List[int],
    log: Callable[[str], None] = _log,
    **options,
) -> Dict[int, ProductStats]:
    """:func:`stats_task` at each cutoff, a Ray task each (``options``: Ray's, beside the CPU and
    the memory): each asks Ray for the memory its pass over ``purchases`` may hold
    (:func:`stats_memory`), so a node runs only as many as it can hold, and what it waits for is
    said (a cluster short of CPUs or memory shows here). Preprocessing's cutoffs, and a nightly
    replay's day."""
    memory = stats_memory(purchases, len(category), largest_cpu_node_memory())
    task = ray.remote(stats_task).options(num_cpus=1, **options, **({"memory": memory} if memory else {}))
    category_ref = ray.put(category)
    pending = {task.remote(state_dir, category_ref, c): c for c in cutoffs}
    done: Dict[int, ProductStats] = {}
    started = time.time()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=STATS_WAIT_LOG_S)
        if not ready:
            asked = f"1 CPU and {memory / 2**30:.1f} GiB" if memory else "1 CPU"
            log(
                f"products' stats: {len(done)}/{len(cutoffs)} cutoffs after {time.time() - started:.0f} s; "
                f"each task asks for {asked}"
            )
            continue
        # The other tasks are not cancelled where one fails: a cancel loop over ``pending`` also
        # cancelled the failed task (still there: ray.get runs before the pop), and Ray 2.60's
        # driver died on a check ("Tried to complete task that was not pending"); they end on their own.
        done[pending.pop(ready[0])] = ray.get(ready[0])
        log(f"products' stats: {len(done)}/{len(cutoffs)} cutoffs, {time.time() - started:.1f} s")
    return done


def stats_task(state_dir: str, category: np.ndarray, cutoff: int) -> ProductStats:
    """The products' stats at ``cutoff`` from the state in ``state_dir`` (a Ray task's body:
    :func:`stats_at`'s, and a nightly replay's)."""
    return ProductStats.compute(UserStates.load(state_dir), category, cutoff)


def _refuse_unshared_state(error: BaseException, output: str) -> None:
    """InputError (one line) when a stats task found no state under ``output``, which the driver
    has just written: the task ran on a node that does not mount ``output`` (the job's one line,
    and its quarantine kept, where Ray's traceback came after the long phases)."""
    missing = raised_within(error, FileNotFoundError)
    state_dir = os.path.abspath(layout.user_state_dir(output))
    if missing is None or not os.path.abspath(str(missing.filename or "")).startswith(state_dir + os.sep):
        return
    raise schema.InputError(
        f"{output}: a products' stats task found no state at {missing.filename}, which this run wrote; "
        f"{_SHARED_STORAGE_QUESTION}"
    ) from None


STATS_WAIT_LOG_S = 60.0
# What one pass of ProductStats.compute holds besides its chunk: per product, its sums and the
# 24 hourly counts (float64), and each chunk's 24 hourly counts again (the int64 bincount added
# into them: 192 MB at 1M products); per household-product pair bought on two days or more, its product
# and gap (16 bytes); per household-product pair the neighbours' fit reads (all of them up to
# NEIGHBOURS_MAX_WORK), its product (4 bytes) and about 50 bytes while the fit runs (measured at
# 68.7M pairs); all bounded by the purchases.
# A chunk's arrays with their temporaries: about 140 bytes a purchase (1.4 GB at 10M purchases,
# measured; ncf.data.user_state.CHUNK_ROWS says the same).
STATS_CHUNK_BYTES_PER_PURCHASE = 140
STATS_FIXED_BYTES = STATS_CHUNK_BYTES_PER_PURCHASE * CHUNK_ROWS + 64 * 2**20


def stats_memory(num_purchases: int, num_products: int, largest_node: int) -> int:
    """Bytes a stats task asks Ray for: the most :meth:`ProductStats.compute` may hold, capped
    at most of the largest node with a CPU (a pass that needs more would need it in a driver as
    well); 0, no request, when no such node reports its memory (a request could fit nowhere)."""
    need = STATS_FIXED_BYTES + (24 + 24 + 8) * 8 * num_products + 56 * num_purchases
    return int(min(need, 0.8 * largest_node))


def largest_cpu_node_memory() -> int:
    """The memory of the largest live node that can run a task (a head started with
    ``--num-cpus 0`` cannot, however large)."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
    return int(max((resources.get("memory", 0) for resources in nodes), default=0))


def every_cutoff(cutoffs: Dict[str, list], first_purchase: int) -> List[int]:
    """The training cutoffs of every run that come after the log's first purchase, each once, in
    time order. A list needs a purchase strictly before its cutoff (:func:`households_lists`), so
    an earlier one (a short log's) has none, and its products' stats, a Ray task reading the
    whole state (minutes and GBs at scale), would be computed for nothing."""
    return sorted({c for run in cutoffs.values() for c in run if c > first_purchase})


def write_examples(
    indexed: ray.data.Dataset,
    vocabs: Vocabularies,
    cutoffs: Dict[str, list],
    stats: Dict[int, ProductStats],
    config: ExampleConfig,
    output: str,
    first_purchase: int,
    partitions: Optional[int] = None,
) -> Dict[str, Dict[str, int]]:
    """The training lists of every cutoff, partitioned by cutoff (``examples/cutoff=C/``);
    ``stats``: the products' stats at each cutoff after ``first_purchase`` (:func:`stats_at`,
    :func:`every_cutoff`: none has lists before it); ``partitions``: the households' shuffle's
    (:func:`shuffle_partitions`)."""
    catalog = Catalog.of(vocabs.products)
    every = every_cutoff(cutoffs, first_purchase)
    key_limit = list_key_limit(len(vocabs.users), config.list_households)
    if key_limit is not None:
        households = len(vocabs.users) - 1  # index 0 is the unknown household
        _log(f"training lists for {config.list_households:,} of {households:,} households (--list-households)")
        indexed = indexed.map_batches(_of_listed_households, batch_format="pyarrow", fn_kwargs={"key_limit": key_limit})
    contexts = [Cutoff.build(c, stats[c], config.popular_candidates) for c in every]
    # Each file holds the lists of up to LISTS_PER_FILE households, by ranges of a scrambled
    # household key, sorted on it, and is named after its range: a fresh preprocessing writes
    # the same files whatever order Ray's tasks finish in (the groupby hands its lists over in
    # the order its tasks finish: 136-170 of 2,070 households moved between two runs), and the
    # households of a file come in no meaningful order, which training relies on instead of a
    # shuffle buffer. The purchases are grouped by file and each file's task builds and writes
    # its lists, so no list passes through Ray's object store: grouped by household and then
    # by file, the lists of 100k households of the 10M-household log spilled 30 GB and filled
    # this machine's disk.
    written = (
        indexed.map_batches(
            _with_list_file, batch_format="pyarrow", fn_kwargs={"starts": list_file_starts(len(vocabs.users))}
        )
        .groupby(LIST_FILE, num_partitions=partitions)
        .map_groups(
            _build_list_file,
            batch_format="pyarrow",
            fn_kwargs={"root": layout.examples_root(output), "config": config, "catalog": catalog, "cutoffs": contexts},
        )
        .to_pandas()
    )
    # One call per file: a file's households split over two calls would overwrite its lists.
    twice = written[LIST_FILE][written[LIST_FILE].duplicated()] if len(written) else []
    if len(twice):
        raise RuntimeError(f"lists files written by two tasks, their lists lost: {sorted(set(twice))}")
    # Each cutoff's labels read once (billions of values at 10M households): the check and every
    # run's counts share them, where the runs' cutoffs overlap too.
    counted = {c: _count_lists(layout.examples_dir(output, c)) for c in every}
    check_lists_found(output, every, int(written[LISTS].sum()) if len(written) else 0, counted)
    return {run: _count_lists_of(output, run_cutoffs, counted) for run, run_cutoffs in cutoffs.items()}


LIST_FILE = "list_file"
LISTS = "lists"


def list_key_limit(num_users: int, list_households: int) -> Optional[int]:
    """The largest scrambled key of a household with training lists: the ``list_households``
    lowest keys of the vocabulary's households (indices 1 and up: 0 is the unknown household);
    None when every household has its lists."""
    if list_households >= num_users - 1:
        return None
    return int(np.partition(scrambled(np.arange(1, num_users)), list_households - 1)[list_households - 1])


def _of_listed_households(batch: pa.Table, key_limit: int) -> pa.Table:
    return batch.filter(pa.array(scrambled(batch.column(USER).to_numpy()) <= key_limit))


def list_file_starts(num_users: int) -> np.ndarray:
    """The scrambled key each lists file after the first starts at: the households' keys, sorted,
    cut into files of at most :data:`LISTS_PER_FILE` households."""
    files = max(1, -(-num_users // LISTS_PER_FILE))
    per_file = -(-num_users // files)
    return np.sort(scrambled(np.arange(num_users)))[per_file::per_file]


def list_file_of(users: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The lists file of each household, given :func:`list_file_starts`."""
    return np.searchsorted(starts, scrambled(users), side="right").astype(np.int64)


def _with_list_file(lists: pa.Table, starts: np.ndarray) -> pa.Table:
    return lists.append_column(LIST_FILE, pa.array(list_file_of(lists.column(USER).to_numpy(), starts)))


def _build_list_file(
    purchases: pa.Table, root: str, config: ExampleConfig, catalog: Catalog, cutoffs: List[Cutoff]
) -> pa.Table:
    """One lists file from the purchases of its households (one group of :data:`LIST_FILE`)."""
    file = purchases.column(LIST_FILE)[0].as_py()
    lists = households_lists(*(purchases.column(c).to_numpy() for c in (USER, PRODUCT, TS)), config, catalog, cutoffs)
    if lists.num_rows:
        _write_list_file(lists.append_column(LIST_FILE, pa.array(np.full(lists.num_rows, file))), root)
    return pa.table({LIST_FILE: [file], LISTS: [lists.num_rows]})


def _write_list_file(lists: pa.Table, root: str) -> None:
    """One file's lists (one group of :data:`LIST_FILE`), in the scrambled key's order, to
    ``root/cutoff=C/lists-F.parquet`` for each of its cutoffs C."""
    file = lists.column(LIST_FILE)[0].as_py()
    lists = lists.drop_columns([LIST_FILE])
    cutoff = lists.column(CUTOFF).to_numpy()
    for c in np.unique(cutoff):
        # One cutoff's lists at a time: a take of the whole table joins its chunks into one array,
        # whose int32 list offsets overflow past 2^31 values (the chunks to_arrow made to keep each
        # under it); a filter keeps the chunks, and one cutoff's lists fit (ExampleConfig refuses
        # list sizes where they would not: MAX_LIST_CANDIDATES).
        part = lists.filter(pa.array(cutoff == c))
        part = part.take(np.argsort(scrambled(part.column(USER).to_numpy()), kind="stable"))
        directory = os.path.join(root, f"{CUTOFF}={int(c)}")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"lists-{file:06d}.parquet")
        pq.write_table(part.drop_columns([CUTOFF]), path)


def check_lists_found(
    output: str, cutoffs: List[int], built: int, counted: Optional[Dict[int, Dict[str, int]]] = None
) -> None:
    """Refuses (InputError) a DATA in which the ``built`` lists the tasks wrote at ``cutoffs``
    are not all found: a task on another node writes to that node's disk where ``output`` is not
    on storage every node mounts, and the driver would count fewer lists than were built.
    ``counted``: each cutoff's :func:`_count_lists`, where the caller has read them."""
    found = _count_lists_of(output, cutoffs, counted)["lists"]
    if found != built:
        raise schema.InputError(
            f"{output}: the tasks wrote {built:,} training lists and {found:,} are there; {_SHARED_STORAGE_QUESTION}"
        )


def cutoffs_with_lists(output: str, cutoffs: Dict[str, list]) -> Dict[str, list]:
    """Each run's cutoffs that hold lists, as ``stats.json`` records them for training: an early
    cutoff of a short log comes before the first purchase (or a cutoff falls in a gap of the log),
    so no household has a list there and no directory is written. Said on the console."""
    kept = {run: list(layout.existing_examples_dirs(output, run_cutoffs)) for run, run_cutoffs in cutoffs.items()}
    for run, run_cutoffs in cutoffs.items():
        empty = [c for c in run_cutoffs if c not in kept[run]]
        if empty:
            _log(
                f"note: no household has a training list at {len(empty)} of the {run} run's {len(run_cutoffs)} "
                f"cutoffs ({', '.join(run_date_of(c) for c in empty)}: nothing bought both before and within the "
                f"label window after them); it trains on the other {len(kept[run])}"
            )
    return kept


def _count_lists_of(
    output: str, run_cutoffs: list, counted: Optional[Dict[int, Dict[str, int]]] = None
) -> Dict[str, int]:
    counted = counted or {}
    counts = [counted[c] if c in counted else _count_lists(layout.examples_dir(output, c)) for c in run_cutoffs]
    return {key: sum(c[key] for c in counts) for key in LIST_COUNTS}


def preprocess(
    logs: schema.InputFiles,
    catalog: Optional[schema.InputFiles],
    output: str,
    config: Optional[PreprocessConfig] = None,
    state_only: bool = False,
    overwrite: bool = False,
    inputs_checked: bool = False,
) -> Dict:
    """Runs the whole pipeline; writes under ``output`` (see :mod:`ncf.data.layout`); returns the stats.
    ``inputs_checked``: the caller ran :func:`check_inputs` already (``jobs.preprocess``, before
    Ray starts), so the catalog is not read through twice.

    The output is built beside ``output`` and swapped in at the end (a failed run leaves the old
    one). Refuses (InputError) an ``output`` that contains an input, or an existing non-empty one
    that is not a preprocessing output (no ``stats.json``) unless ``overwrite``; another run
    writing the same output is refused too (:class:`ncf.staging.Busy`).
    """
    config = config or PreprocessConfig()
    if not inputs_checked:
        check_inputs(logs, catalog)
    inputs = logs.paths + (catalog.paths if catalog else [])
    with replacing(output, layout.STATS, "preprocessing output", inputs, overwrite, log=_log) as stage:
        # Read here, not before: entering takes the lock and finishes a swap a dead run left half
        # done, where ``output`` is absent and the DATA this run replaces is under its staging name.
        replaced = replaced_id_kinds(output)
        try:
            stats = _preprocess_into(logs, catalog, stage, config, state_only, replaced)
        except schema.InputError as e:
            # Said of --output: the stage a check names is removed by the time the line is read.
            said = str(e).replace(os.path.abspath(stage), output).replace(stage, output)
            try:
                kept = keep_failed_quarantine(stage, output)
            except OSError as not_kept:  # the input's one line matters more than the copy
                raise schema.InputError(f"{said} (quarantine not kept: {not_kept})") from e
            if kept is None:
                if said == str(e) or type(e) is not schema.InputError:  # a TryLater keeps its exit 75
                    raise
                raise schema.InputError(said) from e
            raise schema.InputError(f"{said}; the quarantined rows are in {kept}") from e
    _log(f"stats in {layout.stats_path(output)}")
    return stats


def replaced_id_kinds(output: str) -> Dict[str, str]:
    """The id kinds of the DATA at ``output`` that a run replaces (a refresh), from its
    vocabularies' footers; empty where there is none (a first run)."""
    kinds = Vocabularies.kinds_in(layout.vocab_dir(output))
    columns = {"users": schema.USER_ID, "products": schema.PRODUCT_ID}
    return {columns[name]: kind for name, kind in kinds.items()}


def failed_quarantine_dir(output: str) -> str:
    """Where a run that stopped on bad input leaves its quarantine: beside ``output``."""
    return os.path.abspath(output).rstrip(os.sep) + ".quarantine"


def keep_failed_quarantine(stage: str, output: str) -> Optional[str]:
    """Moves the quarantine out of a failed run's staging directory (which is then removed), so
    that "all N quarantined" or an empty period can be looked into; replaces the last failed
    run's, and returns where it is kept (beside ``output``, or under its ``.incoming`` name where
    the last run's could not be replaced). None when the run quarantined nothing. Raises OSError
    when it cannot be moved (a full disk, a folder this user may not write), leaving no
    part-copied quarantine behind."""
    quarantine = layout.quarantine_dir(stage)
    if not os.path.isdir(quarantine):
        return None
    kept = failed_quarantine_dir(output)
    incoming = kept + ".incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    try:
        # Copied where a rename cannot go: the stage is built beside a blue/green link's target,
        # which may be on another filesystem than the link, and so than ``kept``.
        shutil.move(quarantine, incoming)
    except OSError:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    shutil.rmtree(kept, ignore_errors=True)
    try:
        os.rename(incoming, kept)
    except OSError:  # the last run's not all removed: this one stays whole under its incoming name
        return incoming
    return kept


def _read_and_validate(logs: schema.InputFiles, config: PreprocessConfig, output: str) -> tuple[ingest.Ingested, Dict]:
    """Step 1: every row read, validated and accounted for; the quarantine written."""
    _log(f"reading {len(logs.paths)} {logs.format} file(s)")
    _report_hidden(logs, "logs")
    if logs.empty:
        _log(f"{len(logs.empty)} file(s) without content read as no rows, e.g. {logs.empty[0]}")
    read = ingest.ingest_logs(logs, config.min_timestamp, config.max_timestamp, config.future_gap_days, log=_log)
    by_reason = read.by_reason
    _log(f"rows in {read.rows_in:,}: kept {read.rows_kept:,}, quarantined {read.rows_quarantined:,} {by_reason or ''}")
    if read.rows_quarantined:
        read.rows.map_batches(
            ingest.quarantine_rows, batch_format="pyarrow", fn_kwargs={"paths": logs.paths}
        ).write_parquet(layout.quarantine_dir(output))
    for line in files_mostly_quarantined(read.rows_by_file, read.quarantined_by_file):
        _log(line)
    if read.rows_kept == 0:
        quarantine = layout.quarantine_dir(output)
        hint = (
            _out_of_range_hint(quarantine)
            if _mostly(by_reason, schema.TIMESTAMP_OUT_OF_RANGE)
            else _bad_timestamp_hint(quarantine)
            if _mostly(by_reason, schema.BAD_TIMESTAMP)
            else ""
        )
        raise schema.InputError(f"{logs.paths[0]}: no valid purchase rows (all {read.rows_in:,} quarantined){hint}")
    if read.zoneless:
        _log(
            f"{read.zoneless:,} of {read.rows_kept:,} kept timestamps name no time zone and were read as UTC "
            "(a log written in local time: give its offset, e.g. 2017-11-27T10:00:00+01:00)"
        )
    for path, lines in read.lines_in_quoted_values.items():
        _log(
            f"{path}: {lines:,} line(s) inside quoted values, not rows of their own (a line break inside quotes, "
            "or a quote never closed, which joins the lines after it into one value: their purchases are not "
            "read; check the file)"
        )
    stats = {
        "rows_in": read.rows_in,
        "rows_kept": read.rows_kept,
        "rows_quarantined": read.rows_quarantined,
        "quarantine_by_reason": by_reason,
        "future_bound": read.future_bound,
        "future_bound_utc": str(pd.Timestamp(read.future_bound, unit="s")) if read.future_bound else None,
        "rows_by_file": {**read.rows_by_file, **dict.fromkeys(logs.empty, 0)},  # every file: they add up to rows_in
        "quarantined_by_file": most_quarantined(read.rows_by_file, read.quarantined_by_file),
        "timestamps_read_as_utc": read.zoneless,
        "lines_in_quoted_values": read.lines_in_quoted_values,
    }
    return read, stats


FILES_WARNED = 5  # files named one by one in files_mostly_quarantined's lines; the rest counted
FILES_ACCOUNTED = 1_000  # files whose quarantined rows stats.json counts by reason


def most_quarantined(rows_by_file: Dict[str, int], quarantined_by_file: Dict[str, Dict[str, int]]) -> Dict:
    """At most :data:`FILES_ACCOUNTED` files of ``quarantined_by_file``, the largest shares of
    their rows first (so that stats.json stays small: the quarantine's own source_file and reason
    columns hold every row's)."""
    if len(quarantined_by_file) <= FILES_ACCOUNTED:
        return quarantined_by_file

    def share(item) -> float:
        return -sum(item[1].values()) / max(rows_by_file.get(item[0], 0), 1)

    return dict(sorted(quarantined_by_file.items(), key=share)[:FILES_ACCOUNTED])


def files_mostly_quarantined(rows_by_file: Dict[str, int], quarantined_by_file: Dict[str, Dict[str, int]]) -> List[str]:
    """A warning for each file of which most rows were quarantined, naming its main reason, the
    first :data:`FILES_WARNED` of them, then how many more: a month of the log exported otherwise
    (Excel's 12/27/2017 4:01 beside ISO text) went to the quarantine whole, with counts only by
    reason for the whole log, and the run went on."""
    lines, others = [], "otherwise than the other files, " if len(rows_by_file) > 1 else ""
    mostly = [
        (path, rows_by_file[path], reasons)
        for path, reasons in quarantined_by_file.items()
        if rows_by_file.get(path, 0) and sum(reasons.values()) * 2 > rows_by_file[path]
    ]
    for path, rows, reasons in mostly[:FILES_WARNED]:
        quarantined = sum(reasons.values())
        reason, most = max(reasons.items(), key=lambda item: item[1])
        share = "all" if quarantined == rows else f"{quarantined:,}"
        lines.append(
            f"WARNING: {path}: {share} of its {rows:,} rows quarantined, {most:,} as {reason} (is it written "
            f"{others}e.g. in another date format? its rows are in the quarantine)"
        )
    if len(mostly) > FILES_WARNED:
        lines.append(f"WARNING: and {len(mostly) - FILES_WARNED:,} more files mostly quarantined (stats.json)")
    return lines


# Numbers of these many digits, read as epoch seconds and out of range, are most likely these.
_NUMBERS_OUT_OF_RANGE = {
    8: "dates written YYYYMMDD (8 digits, e.g. 20171127): write them as 2017-11-27",
    12: "times written YYYYMMDDHHMM (12 digits, e.g. 201711270401): write them as 2017-11-27T04:01",
    13: "epoch milliseconds (13 digits, e.g. 1511755260000): give epoch seconds or ISO-8601 text",
    14: "times written YYYYMMDDHHMMSS (14 digits, e.g. 20171127040100, SAP's): write them as 2017-11-27T04:01:00",
    16: "epoch microseconds (16 digits): give epoch seconds or ISO-8601 text",
    19: "epoch nanoseconds (19 digits): give epoch seconds or ISO-8601 text",
}
_EPOCH_MS_BEFORE_2001 = "epoch milliseconds (12 digits, before 2001): give epoch seconds or ISO-8601 text"
_OUT_OF_RANGE_SAMPLE = 1_000


def _mostly(by_reason: Dict[str, int], reason: str) -> bool:
    """Whether most quarantined rows are of ``reason`` (timestamp_out_of_range: every row, in a
    log of epoch milliseconds, a few malformed lines aside)."""
    return by_reason.get(reason, 0) * 2 > sum(by_reason.values())


def _quarantined_timestamps(quarantine: str, reason: str) -> Optional[List]:
    """The raw timestamp text of a sample of the quarantine's ``reason`` rows (None where the
    quarantine does not read: no hint then)."""
    try:
        sample = pads.dataset(quarantine, format="parquet").head(
            _OUT_OF_RANGE_SAMPLE, columns=[schema.TIMESTAMP], filter=pc.field(schema.REASON) == reason
        )
    except (pa.ArrowException, OSError):
        return None
    return sample.column(schema.TIMESTAMP).to_pylist()


# A spreadsheet's dates in a locale's order (11/27/2017 4:01, 27.11.2017): day and month cannot
# be told apart from the text, so they are bad timestamps, and the error says what they look like.
_LOCALE_DATE = re.compile(r"^\s*[0-9]{1,2}[/.-][0-9]{1,2}[/.-][0-9]{2,4}(\s|$)")


def _bad_timestamp_hint(quarantine: str) -> str:
    """What bad timestamps most likely are, from a sample of their raw text in the quarantine:
    a spreadsheet's locale dates (``11/27/2017 4:01``); "" otherwise."""
    texts = [t for t in _quarantined_timestamps(quarantine, schema.BAD_TIMESTAMP) or [] if t]
    dates = [t for t in texts if _LOCALE_DATE.match(t)]
    if not texts or len(dates) < 0.9 * len(texts):
        return ""
    example = dates[0] if len(dates[0]) <= 40 else dates[0][:37] + "..."
    return (
        f"; the timestamps look like a spreadsheet's locale dates (e.g. {example!r}), whose day and month "
        "cannot be told apart: write them as ISO-8601 (2017-11-27T04:01:00)"
    )


def _out_of_range_hint(quarantine: str) -> str:
    """What out-of-range timestamps most likely are, from a sample of their raw text in the
    quarantine: numbers of 13 digits (epoch milliseconds read as seconds), 8 (YYYYMMDD)...; ""
    when they are no such numbers."""
    sample = _quarantined_timestamps(quarantine, schema.TIMESTAMP_OUT_OF_RANGE)
    if sample is None:
        return ""
    numbers = pd.to_numeric(pd.Series(sample, dtype=object), errors="coerce")
    numbers = numbers[numbers.notna() & (numbers.abs() >= 1)].abs()
    if numbers.empty:
        return ""
    digits = np.floor(np.log10(numbers.to_numpy(dtype=np.float64))).astype(np.int64) + 1
    common, count = np.unique(digits, return_counts=True)
    most = int(common[np.argmax(count)])
    if most not in _NUMBERS_OUT_OF_RANGE or count.max() < 0.9 * len(sample):
        return ""
    if most == 12 and _compact_times(numbers) < 0.9 * len(numbers):
        # Epoch milliseconds before 2001-09-09 have 12 digits too.
        return "; the timestamps look like " + _EPOCH_MS_BEFORE_2001
    return f"; the timestamps look like {_NUMBERS_OUT_OF_RANGE[most]}"


def _compact_times(numbers: pd.Series) -> int:
    """How many of ``numbers`` read as YYYYMMDDHHMM times."""
    text = numbers.astype(np.int64).astype(str)
    return int(pd.to_datetime(text, format="%Y%m%d%H%M", errors="coerce").notna().sum())


def _window_rows(batch: pa.Table, bounds: Dict[str, int]) -> pa.Table:
    ts = batch.column(TS).to_numpy()
    edges = [bounds["start"], bounds["val_start"], bounds["test_start"], bounds["end"] + 1]
    counts = [int(((ts >= lo) & (ts < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
    return pa.table({"split": [TRAIN, VAL, TEST], "n": counts})


def check_windows(kept: ray.data.Dataset, bounds: Dict[str, int]) -> Dict[str, int]:
    """Purchases per split period; InputError (one line) when one is empty: a gap in the logs, or
    an end moved by rows the future bound let through. Checked before any state or list is built."""
    frame = kept.map_batches(_window_rows, batch_format="pyarrow", fn_kwargs={"bounds": bounds}).to_pandas()
    counts = {split: int(n) for split, n in frame.groupby("split")["n"].sum().items()}
    counts = {split: counts.get(split, 0) for split in (TRAIN, VAL, TEST)}
    periods = {
        TRAIN: (bounds["start"], bounds["val_start"]),
        VAL: (bounds["val_start"], bounds["test_start"]),
        TEST: (bounds["test_start"], bounds["end"] + 1),
    }
    for split, (start, end) in periods.items():
        if counts[split] == 0:
            period = f"{pd.Timestamp(start, unit='s'):%Y-%m-%d %H:%M} to {pd.Timestamp(end, unit='s'):%Y-%m-%d %H:%M}"
            raise schema.InputError(
                f"the {split} period ({period} UTC) has no purchases; the kept purchases end "
                f"{pd.Timestamp(bounds['end'], unit='s'):%Y-%m-%d %H:%M} UTC: look for gaps or far-future "
                "timestamps in the logs (--future-gap-days; --max-timestamp for a placeholder date on many rows, "
                "e.g. 2099-12-31, which the bulk of the data takes in), or change --val-weeks/--test-weeks"
            )
    return counts


def _preprocess_into(
    logs: schema.InputFiles,
    catalog: Optional[schema.InputFiles],
    output: str,
    config: PreprocessConfig,
    state_only: bool,
    replaced: Optional[Dict[str, str]] = None,
) -> Dict:
    """Steps 1-5 into ``output`` (the staging directory); ``replaced``: the id kinds of the DATA
    it replaces (:func:`replaced_id_kinds`)."""
    started = time.time()
    read, read_stats = _read_and_validate(logs, config, output)
    rows_kept = read.rows_kept
    kept = read.rows.map_batches(ingest.kept_rows, batch_format="pyarrow").materialize()
    # Each materialized dataset holds its blocks in Ray's object store for as long as it is
    # referenced: the validated rows, once kept, are not read again (at 10M households the three
    # datasets held to the end spilled 17 GiB to disk).
    del read
    use_task_shuffles(kept, rows_kept)
    extent = kept.aggregate(Min(TS), Max(TS))  # one pass, where .min() and .max() make two
    try:
        bounds = split_boundaries(
            int(extent[f"min({TS})"]), int(extent[f"max({TS})"]), config.val_weeks, config.test_weeks
        )
    except schema.InputError as e:
        if not state_only:
            raise
        raise schema.InputError(
            f"{e}: a --state-only refresh reads every purchase of the households' histories, so give it the "
            "whole log, not only its new part"
        ) from None
    partitions = shuffle_partitions(rows_kept)
    _log("split: " + ", ".join(f"{k} {pd.Timestamp(v, unit='s')}" for k, v in bounds.items()))
    purchases_per_split = check_windows(kept, bounds)

    catalog_frame, catalog_stats = _read_catalog(catalog)
    cutoffs = training_cutoffs(bounds, config, state_only)
    id_kinds = {c: schema.id_kind(logs, c) for c in (schema.USER_ID, schema.PRODUCT_ID)}
    vocabs, vocab_stats = build_vocabularies(
        kept, catalog_frame, id_kinds, bounds["val_start"], partitions, replaced=replaced
    )
    if catalog is not None:
        _refuse_unmatched_catalog(
            catalog, catalog_frame, catalog_stats["catalog_rows"], vocab_stats, vocabs.sizes()["num_products"] - 1
        )
    vocabs.save(layout.vocab_dir(output))
    _log(f"vocabularies: {vocabs.sizes()}")
    if catalog is not None:
        _report_catalog_coverage(vocab_stats, vocabs.sizes()["num_products"] - 1)
        _report_catalog_format_twins(vocab_stats)
    _report_format_twins(vocab_stats)
    for column, text in vocab_stats.get("ids_kept_as_text", {}).items():
        _log(
            f"note: every {column} is answered as text (a JSON string): {text['not_integers']:,} of "
            f"{text['ids']:,} are not integers as int64 writes them, e.g. {text['examples']}"
        )
    for column in vocab_stats.get("id_kinds_changed", {}):
        _log(
            f"WARNING: {column} is text now where the DATA this run replaces had integers: Serve's answers and "
            "the nightly partitions change type with it (the note above names ids that are no integers)"
        )

    indexed = kept.map_batches(
        _index_rows,
        batch_format="pyarrow",
        fn_kwargs={"users": vocabs.users.prepare_lookup(), "products": vocabs.products.prepare_lookup()},
    ).materialize()
    del kept  # the indexed rows are all that is read from here on
    _log("writing the state: every household's purchases")
    _, lines = write_state(indexed, vocabs, output)
    dates_only = lines.at_midnight == rows_kept
    if dates_only:
        _log(
            "every timestamp is midnight UTC, a log of dates: a household's purchases of one day are one "
            "basket, in no known order (the history orders them by product)"
        )
    _report_repeated_lines(lines.repeated, rows_kept, dates_only)
    every = [] if state_only else every_cutoff(cutoffs, bounds["start"])
    before_start = 0 if state_only else len({c for run in cutoffs.values() for c in run}) - len(every)
    _log(
        f"the products' stats at the data's end and at {len(every)} training cutoffs"
        + (f" ({before_start} more come before the first purchase: no list there)" if before_start else "")
    )
    stats_by_cutoff = stats_at(output, vocabs.products.column("category_index"), [bounds["end"] + 1, *every])
    stats_by_cutoff[bounds["end"] + 1].save(layout.product_stats_dir(output))

    examples = {}
    if not state_only:
        _log(f"building training lists at {sum(len(c) for c in cutoffs.values())} cutoffs")
        examples = write_examples(
            indexed, vocabs, cutoffs, stats_by_cutoff, config.examples, output, bounds["start"], partitions
        )
        for run, counts in examples.items():
            if counts["lists"] == 0:
                raise schema.InputError(
                    f"no training lists for the {run} run: no household bought anything both before and "
                    f"within {config.examples.horizon_days} days after its cutoffs "
                    f"({', '.join(run_date_of(c) for c in cutoffs[run])}); lower --horizon-days or give more logs"
                )
        cutoffs = cutoffs_with_lists(output, cutoffs)

    stats = {
        **read_stats,
        "repeated_lines": lines.repeated,
        "lines_at_midnight_utc": lines.at_midnight,
        "purchases_per_split": purchases_per_split,
        "state_only": state_only,
        "examples": examples,
        "cutoffs": cutoffs,
        "boundaries": bounds,
        "boundaries_utc": {k: str(pd.Timestamp(v, unit="s")) for k, v in bounds.items()},
        "vocab_sizes": vocabs.sizes(),
        "features_version": FEATURES_VERSION,
        **vocab_stats,
        **catalog_stats,
        "config": asdict(config),
        "inputs": {
            "logs": logs.paths[:20],
            "num_log_files": len(logs.paths),
            "catalog": catalog.paths[:20] if catalog else None,
        },
        "seconds": round(time.time() - started, 1),
    }
    write_json(layout.stats_path(output), stats)
    _log(f"done in {stats['seconds']} s: {examples or 'state only'}")
    return stats
