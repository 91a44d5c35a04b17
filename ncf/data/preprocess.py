"""Ray Data preprocessing: purchase logs -> validated, indexed, featurized examples.

Steps (each a Ray Data stage, so the pipeline runs unchanged on a multi-node cluster):

1. read the logs (Parquet or CSV) and validate every row; bad rows go to the quarantine
   with a ``reason`` (rows in = kept + quarantined);
2. split by time: the last ``test_weeks`` weeks are the test period, the ``val_weeks``
   before them validation, everything earlier training;
3. build vocabularies from the purchases before the test period (index 0 = unknown);
4. per user (``groupby().map_groups()``): point-in-time history and repeat features for
   every purchase, and negatives for training purchases;
5. per user: the purchase sequence before the test period (the state that evaluation and
   scoring rank from).

Only per-group aggregates (distinct ids with counts, reason counts) reach the driver.
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
from ray.data.expressions import col

from ncf.data import features as F
from ncf.data import layout, schema
from ncf.data.examples import Catalog, ExampleConfig, user_examples, user_state
from ncf.data.schema import TS
from ncf.data.vocab import Vocabularies, Vocabulary
from ncf.jsonio import write_json
from ncf.splits import SPLIT, TEST, TRAIN, VAL

WEEK = 7 * 86_400
COUNT = "count()"


@dataclass
class PreprocessConfig:
    """Settings of a preprocessing run (recorded in ``stats.json``)."""

    examples: ExampleConfig = field(default_factory=ExampleConfig)
    val_weeks: int = 4
    test_weeks: int = 5
    train_weeks: int = 16
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


def _before(batch: pa.Table, cutoff: int) -> pa.Table:
    return batch.filter(pc.less(batch.column(TS), cutoff))


def split_boundaries(min_ts: int, max_ts: int, val_weeks: int, test_weeks: int, train_weeks: int = 0) -> Dict[str, int]:
    """Split points counted back in whole weeks from the last purchase.

    The test period is the last ``test_weeks`` x 7 days, validation the ``val_weeks`` before
    it, training everything earlier; with ``train_weeks`` > 0 only the last ``train_weeks``
    of training yield examples (older purchases still feed histories and repeat counts).
    On Complete Journey with 5 test weeks the test period starts 2017-11-27 04:01, with its
    week 49.
    """
    test_start = max_ts + 1 - test_weeks * WEEK
    val_start = test_start - val_weeks * WEEK
    if val_start <= min_ts:
        weeks = (max_ts - min_ts) / WEEK
        raise schema.InputError(
            f"the logs span {weeks:.1f} weeks: too short for {val_weeks} "
            f"validation + {test_weeks} test weeks plus training"
        )
    train_start = max(min_ts, val_start - train_weeks * WEEK) if train_weeks > 0 else min_ts
    return {
        "train_start": int(train_start),
        "val_start": int(val_start),
        "test_start": int(test_start),
        "end": int(max_ts),
    }


def _distinct_counts(ds: ray.data.Dataset, column: str) -> pd.DataFrame:
    """Distinct values of a column with their counts, most frequent first (ties by id)."""
    frame = ds.groupby(column).count().to_pandas()
    return frame.sort_values([COUNT, column], ascending=[False, True], kind="stable").reset_index(drop=True)


def build_vocabularies(
    known: ray.data.Dataset, catalog: Optional[pd.DataFrame], id_kinds: Dict[str, str]
) -> tuple[Vocabularies, Dict]:
    """Vocabularies from the purchases before the test period; products get their hierarchy."""
    users = _distinct_counts(known.select_columns([schema.USER_ID]), schema.USER_ID)
    products = _distinct_counts(known.select_columns([schema.PRODUCT_ID]), schema.PRODUCT_ID)
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
            "train_count": products[COUNT].to_numpy(dtype=np.int64),
        },
    )
    user_vocab = Vocabulary.from_ids(users[schema.USER_ID].tolist(), kind=id_kinds[schema.USER_ID])
    vocabs = Vocabularies(user_vocab, product_vocab, departments, categories)
    return vocabs, {"products_missing_from_catalog": missing}


def _index_rows(batch: pa.Table, users: Vocabulary, products: Vocabulary) -> pa.Table:
    return pa.table(
        {
            F.USER: users.index_of(batch.column(schema.USER_ID)),
            F.PRODUCT: products.index_of(batch.column(schema.PRODUCT_ID)),
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


def _count_examples(directory: str) -> Dict[str, int]:
    """Rows and positives of a written split, from Parquet metadata and the label column only."""
    if not os.path.isdir(directory):
        return {"rows": 0, "positives": 0}
    dataset = pads.dataset(directory, format="parquet")
    return {"rows": dataset.count_rows(), "positives": dataset.count_rows(filter=pads.field(F.LABEL) == 1)}


def preprocess(
    logs: schema.InputFiles,
    catalog: Optional[schema.InputFiles],
    output: str,
    config: Optional[PreprocessConfig] = None,
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
    bounds = split_boundaries(
        int(kept.min(TS)), int(kept.max(TS)), config.val_weeks, config.test_weeks, config.train_weeks
    )
    _log("split: " + ", ".join(f"{k} {pd.Timestamp(v, unit='s')}" for k, v in bounds.items()))

    catalog_frame, catalog_stats = _read_catalog(catalog)
    known = kept.map_batches(_before, batch_format="pyarrow", fn_kwargs={"cutoff": bounds["test_start"]})
    id_kinds = {c: schema.id_kind(logs, c) for c in (schema.USER_ID, schema.PRODUCT_ID)}
    vocabs, vocab_stats = build_vocabularies(known, catalog_frame, id_kinds)
    vocabs.save(layout.vocab_dir(output))
    _log(f"vocabularies: {vocabs.sizes()}")

    indexed = kept.map_batches(
        _index_rows, batch_format="pyarrow", fn_kwargs={"users": vocabs.users, "products": vocabs.products}
    ).materialize()
    unseen_user_rows = indexed.filter(expr=col(F.USER) == 0).count()
    indexed_known_users = indexed.filter(expr=col(F.USER) > 0)
    catalog_arrays = Catalog.build(
        vocabs.products.column("department_index"),
        vocabs.products.column("category_index"),
        vocabs.products.column("train_count"),
        config.examples.negative_sampling,
    )

    _log("building per-user examples (history, repeat features, negatives)")
    examples = indexed_known_users.groupby(F.USER).map_groups(
        user_examples,
        batch_format="numpy",
        fn_kwargs={
            "config": config.examples,
            "catalog": catalog_arrays,
            "train_start": bounds["train_start"],
            "val_start": bounds["val_start"],
            "test_start": bounds["test_start"],
        },
    )
    examples.write_parquet(os.path.join(output, "examples"), partition_cols=[SPLIT])

    _log("writing per-user purchase state")
    (
        indexed_known_users.map_batches(_before, batch_format="pyarrow", fn_kwargs={"cutoff": bounds["test_start"]})
        .groupby(F.USER)
        .map_groups(user_state, batch_format="numpy")
        .write_parquet(layout.user_state_dir(output))
    )

    split_counts = {split: _count_examples(layout.examples_dir(output, split)) for split in (TRAIN, VAL, TEST)}
    stats = {
        "rows_in": rows_in,
        "rows_kept": rows_kept,
        "rows_quarantined": rows_quarantined,
        "quarantine_by_reason": by_reason,
        "rows_of_users_first_seen_in_test": unseen_user_rows,
        "splits": split_counts,
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
    _log(f"done in {stats['seconds']} s: {split_counts}; stats in {layout.stats_path(output)}")
    return stats
