"""Ray Data preprocessing: purchase logs -> validated state, vocabularies and training lists.

Steps (each a Ray Data stage, so the pipeline runs unchanged on a multi-node cluster):

1. read the logs (Parquet or CSV) and validate every row; bad rows go to the quarantine
   with a ``reason`` (rows in = kept + quarantined);
2. split by time: the last ``test_weeks`` weeks are the test period, the ``val_weeks``
   before them validation, everything earlier training;
3. vocabularies of every household and product in the data (index 0 = unknown), each with the
   moment it was first seen, so that evaluation can hold back what was unknown at a cutoff;
4. the state: every household's purchases through the data's end (``user_state/``, compact
   arrays) and the products' popularity and cadence at the end (``product_stats/``): what
   serving and the nightly job rank from;
5. training lists (``groupby(user).map_groups()``, :mod:`ncf.data.examples`): "bought within H
   days" at several cutoffs, for the validated run (labels end where validation starts) and
   for the deployment refit (labels end with the data).

``state_only=True`` stops after step 4: refreshing the histories a deployed model ranks from
takes no example building.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
from ray.data.aggregate import Count, Min

from ncf.data import layout, schema
from ncf.data.examples import CUTOFF, LABEL, PRODUCT, USER, Cutoff, ExampleConfig, household_lists
from ncf.data.features import Catalog
from ncf.data.product_stats import ProductStats
from ncf.data.schema import TS
from ncf.data.user_state import UserStates
from ncf.data.vocab import FIRST_TS, Vocabularies, Vocabulary
from ncf.jsonio import write_json
from ncf.splits import REFIT, VALIDATED

WEEK = 7 * 86_400
COUNT = "count()"
FIRST_SEEN = f"min({TS})"


@dataclass
class PreprocessConfig:
    """Settings of a preprocessing run (recorded in ``stats.json``)."""

    examples: ExampleConfig = field(default_factory=ExampleConfig)
    val_weeks: int = 4
    test_weeks: int = 5
    min_timestamp: int = schema.DEFAULT_MIN_TS
    max_timestamp: int = schema.DEFAULT_MAX_TS


def _log(message: str) -> None:
    print(f"[preprocess] {message}", flush=True)


def read_files(files: schema.InputFiles, columns) -> ray.data.Dataset:
    if files.format == "parquet":
        return ray.data.read_parquet(files.paths)
    return ray.data.read_csv(files.paths, **schema.csv_read_options(columns))


def _reason_counts(batch: pa.Table) -> pa.Table:
    reasons = pc.fill_null(batch.column(schema.REASON), "ok").to_numpy(zero_copy_only=False)
    values, counts = np.unique(reasons.astype(str), return_counts=True)
    return pa.table({schema.REASON: values, "n": counts})


def _quarantined(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch.column(schema.REASON)))


def _kept(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch.column(schema.REASON))).drop_columns([schema.REASON])


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


def _distinct_counts(ds: ray.data.Dataset, column: str) -> pd.DataFrame:
    """Distinct values of a column with their counts and first moment, most frequent first (ties
    by id)."""
    frame = ds.groupby(column).aggregate(Count(), Min(TS)).to_pandas()
    return frame.sort_values([COUNT, column], ascending=[False, True], kind="stable").reset_index(drop=True)


def build_vocabularies(
    known: ray.data.Dataset, catalog: Optional[pd.DataFrame], id_kinds: Dict[str, str]
) -> tuple[Vocabularies, Dict]:
    """Vocabularies of every household and product of ``known``; products get their hierarchy,
    both the moment they were first seen (``first_ts``)."""
    users = _distinct_counts(known.select_columns([schema.USER_ID, TS]), schema.USER_ID)
    products = _distinct_counts(known.select_columns([schema.PRODUCT_ID, TS]), schema.PRODUCT_ID)
    if catalog is None:
        catalog = pd.DataFrame({c: pd.Series([], dtype=object) for c in schema.CATALOG_REQUIRED})
    joined = products.merge(catalog, on=schema.PRODUCT_ID, how="left")
    missing = int(joined[schema.DEPARTMENT].isna().sum())
    joined = joined.fillna({schema.DEPARTMENT: schema.UNKNOWN, schema.CATEGORY: schema.UNKNOWN})

    def level(column: str) -> Vocabulary:
        values = sorted(set(joined[column]) - {schema.UNKNOWN})
        return Vocabulary.from_ids(values, kind="str")

    departments, categories = level(schema.DEPARTMENT), level(schema.CATEGORY)
    product_vocab = Vocabulary.from_ids(
        products[schema.PRODUCT_ID].tolist(),
        kind=id_kinds[schema.PRODUCT_ID],
        extra={
            "department": joined[schema.DEPARTMENT].tolist(),
            "category": joined[schema.CATEGORY].tolist(),
            "department_index": departments.index_of(joined[schema.DEPARTMENT].tolist()),
            "category_index": categories.index_of(joined[schema.CATEGORY].tolist()),
            FIRST_TS: products[FIRST_SEEN].to_numpy(dtype=np.int64),
        },
    )
    user_vocab = Vocabulary.from_ids(
        users[schema.USER_ID].tolist(),
        kind=id_kinds[schema.USER_ID],
        extra={FIRST_TS: users[FIRST_SEEN].to_numpy(dtype=np.int64)},
    )
    vocabs = Vocabularies(user_vocab, product_vocab, departments, categories)
    return vocabs, {"products_missing_from_catalog": missing}


def _index_rows(batch: pa.Table, users: Vocabulary, products: Vocabulary) -> pa.Table:
    return pa.table(
        {
            USER: users.index_of(batch.column(schema.USER_ID)),
            PRODUCT: products.index_of(batch.column(schema.PRODUCT_ID)),
            TS: batch.column(TS),
        }
    )


def _read_catalog(files: Optional[schema.InputFiles]) -> tuple[Optional[pd.DataFrame], Dict]:
    if files is None:
        return None, {"catalog_rows": 0}
    schema.check_columns(files, schema.CATALOG_REQUIRED, "product catalog")
    raw = read_files(files, schema.CATALOG_REQUIRED)
    rows = raw.count()
    catalog = raw.map_batches(schema.normalize_catalog_batch, batch_format="pyarrow").to_pandas()
    deduped = catalog.drop_duplicates(schema.PRODUCT_ID, keep="first")
    return deduped, {
        "catalog_rows": rows,
        "catalog_rows_without_product_id": rows - len(catalog),
        "catalog_duplicate_products": len(catalog) - len(deduped),
    }


def _count_lists(directory: str) -> Dict[str, int]:
    """Lists and candidates of the written examples, from Parquet metadata and one column."""
    if not os.path.isdir(directory):
        return {"lists": 0, "candidates": 0, "positives": 0}
    table = pads.dataset(directory, format="parquet", partitioning="hive").to_table(columns=[LABEL])
    labels = pc.list_flatten(table.column(LABEL))
    return {"lists": table.num_rows, "candidates": len(labels), "positives": int(pc.sum(labels).as_py() or 0)}


def write_state(indexed: ray.data.Dataset, vocabs: Vocabularies, output: str, end: int) -> UserStates:
    """Every household's purchases (compact arrays) and the products' stats at the data's end."""
    frame = indexed.to_pandas()
    states = UserStates.from_purchases(
        frame[USER].to_numpy(), frame[PRODUCT].to_numpy(), frame[TS].to_numpy(), len(vocabs.users)
    )
    states.save(layout.user_state_dir(output))
    ProductStats.compute(states, vocabs.products.column("category_index"), end + 1).save(
        layout.product_stats_dir(output)
    )
    return states


def write_examples(
    indexed: ray.data.Dataset,
    states: UserStates,
    vocabs: Vocabularies,
    cutoffs: Dict[str, list],
    config: ExampleConfig,
    output: str,
) -> Dict[str, Dict[str, int]]:
    """The training lists of every cutoff, partitioned by cutoff (``examples/cutoff=C/``)."""
    catalog = Catalog(vocabs.products.column("department_index"), vocabs.products.column("category_index"))
    every = sorted({c for run in cutoffs.values() for c in run})
    contexts = [
        Cutoff.build(c, ProductStats.compute(states, catalog.category, c), config.popular_candidates) for c in every
    ]
    (
        indexed.groupby(USER)
        .map_groups(
            household_lists, batch_format="numpy", fn_kwargs={"config": config, "catalog": catalog, "cutoffs": contexts}
        )
        .write_parquet(layout.examples_root(output), partition_cols=[CUTOFF])
    )
    return {run: _count_lists_of(output, run_cutoffs) for run, run_cutoffs in cutoffs.items()}


def _count_lists_of(output: str, run_cutoffs: list) -> Dict[str, int]:
    counts = [_count_lists(layout.examples_dir(output, c)) for c in run_cutoffs]
    return {key: sum(c[key] for c in counts) for key in ("lists", "candidates", "positives")}


def preprocess(
    logs: schema.InputFiles,
    catalog: Optional[schema.InputFiles],
    output: str,
    config: Optional[PreprocessConfig] = None,
    state_only: bool = False,
) -> Dict:
    """Runs the whole pipeline; writes under ``output`` (see :mod:`ncf.data.layout`); returns the stats."""
    config = config or PreprocessConfig()
    started = time.time()
    schema.check_columns(logs, schema.LOG_REQUIRED, "purchase log")
    if os.path.exists(output):
        shutil.rmtree(output)
    os.makedirs(output)

    _log(f"reading {len(logs.paths)} {logs.format} file(s)")
    raw = read_files(logs, schema.LOG_REQUIRED + schema.LOG_OPTIONAL)
    validated = raw.map_batches(
        schema.validate_log_batch,
        batch_format="pyarrow",
        fn_kwargs={"min_ts": config.min_timestamp, "max_ts": config.max_timestamp},
    ).materialize()

    reasons = validated.select_columns([schema.REASON]).map_batches(_reason_counts, batch_format="pyarrow").to_pandas()
    by_reason = {r: int(n) for r, n in reasons.groupby(schema.REASON)["n"].sum().items()}
    rows_kept = by_reason.pop("ok", 0)
    rows_quarantined = sum(by_reason.values())
    rows_in = validated.count()
    assert rows_in == rows_kept + rows_quarantined, "every row is either kept or quarantined"
    _log(f"rows in {rows_in:,}: kept {rows_kept:,}, quarantined {rows_quarantined:,} {by_reason or ''}")
    if rows_quarantined:
        validated.map_batches(_quarantined, batch_format="pyarrow").write_parquet(layout.quarantine_dir(output))
    if rows_kept == 0:
        raise schema.InputError(f"{logs.paths[0]}: no valid purchase rows (all {rows_in:,} quarantined)")

    kept = validated.map_batches(_kept, batch_format="pyarrow").materialize()
    bounds = split_boundaries(int(kept.min(TS)), int(kept.max(TS)), config.val_weeks, config.test_weeks)
    _log("split: " + ", ".join(f"{k} {pd.Timestamp(v, unit='s')}" for k, v in bounds.items()))

    catalog_frame, catalog_stats = _read_catalog(catalog)
    id_kinds = {c: schema.id_kind(logs, c) for c in (schema.USER_ID, schema.PRODUCT_ID)}
    vocabs, vocab_stats = build_vocabularies(kept, catalog_frame, id_kinds)
    vocabs.save(layout.vocab_dir(output))
    _log(f"vocabularies: {vocabs.sizes()}")

    indexed = kept.map_batches(
        _index_rows, batch_format="pyarrow", fn_kwargs={"users": vocabs.users, "products": vocabs.products}
    ).materialize()
    _log("writing the state: every household's purchases, the products' stats at the end")
    states = write_state(indexed, vocabs, output, bounds["end"])

    cutoffs = {
        VALIDATED: config.examples.schedule(bounds["val_start"]),
        REFIT: config.examples.schedule(bounds["end"] + 1),
    }
    examples = {}
    if not state_only:
        _log(f"building training lists at {sum(len(c) for c in cutoffs.values())} cutoffs")
        examples = write_examples(indexed, states, vocabs, cutoffs, config.examples, output)
        for run, counts in examples.items():
            if counts["lists"] == 0:
                raise schema.InputError(
                    f"{logs.paths[0]}: no training lists for the {run} run (cutoffs {cutoffs[run]})"
                )

    stats = {
        "rows_in": rows_in,
        "rows_kept": rows_kept,
        "rows_quarantined": rows_quarantined,
        "quarantine_by_reason": by_reason,
        "state_only": state_only,
        "examples": examples,
        "cutoffs": cutoffs,
        "boundaries": bounds,
        "boundaries_utc": {k: str(pd.Timestamp(v, unit="s")) for k, v in bounds.items()},
        "vocab_sizes": vocabs.sizes(),
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
    _log(f"done in {stats['seconds']} s: {examples or 'state only'}; stats in {layout.stats_path(output)}")
    return stats
