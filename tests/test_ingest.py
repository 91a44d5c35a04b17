"""Ingest (issue 19): ordinary logs go through, every source row is kept or quarantined with its
raw values and where it came from, unusable columns and empty splits are one-line errors."""

import decimal
import gzip
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import preprocess as preprocess_job
from ncf.data import ingest, layout, schema
from ncf.data.examples import ExampleConfig
from ncf.data.preprocess import PreprocessConfig, _report_hidden, check_inputs, preprocess
from ncf.data.vocab import Vocabularies
from ncf.jsonio import write_json

pytestmark = pytest.mark.faults  # the drills of RELIABILITY.md, "Ingest and replacing outputs"

DAY = 86_400
START = int(pd.Timestamp("2024-01-01", tz="UTC").timestamp())


def _seconds(text: str) -> int:
    return int(pd.Timestamp(text, tz="UTC").timestamp())


# -- validation of one batch (no Ray) ----------------------------------------------------------------


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Berlin"])
def test_sub_second_timestamps_of_any_unit_and_zone_are_truncated_to_seconds(unit, tz):
    """Exports from Spark, Kafka or pandas: old code raised ArrowInvalid ('would lose data')."""
    moments = [pd.Timestamp("2024-03-05T06:07:08.999", tz="UTC"), pd.Timestamp("1999-12-31T23:59:59.5", tz="UTC")]
    column = pa.array(moments, pa.timestamp(unit, tz="UTC")).cast(pa.timestamp(unit, tz=tz))
    batch = pa.table({"user_id": [1, 2], "product_id": [3, 4], "timestamp": column})
    out = schema.validate_log_batch(batch)
    assert out.column("reason").to_pylist() == [None, None]
    # Rounded down: the moment's whole second, in UTC whatever the column's zone.
    assert out.column("ts").to_pylist() == [_seconds("2024-03-05T06:07:08"), _seconds("1999-12-31T23:59:59")]


def test_invalid_utf8_and_nan_ids_are_quarantined_not_kept():
    """Old code: invalid UTF-8 raised inside the Ray task; a NaN float id became the id "nan"."""
    batch = pa.table(
        {
            "user_id": pa.array([b"u1", b"\xff\xfeu2", b"u3", b"u4"], pa.binary()),
            "product_id": pa.array([10.0, 11.0, float("nan"), 12.5]),
            "timestamp": ["2024-01-02"] * 4,
        }
    )
    out = schema.validate_log_batch(batch)
    assert out.column("reason").to_pylist() == [None, schema.BAD_USER_ID, schema.BAD_PRODUCT_ID, schema.BAD_PRODUCT_ID]
    assert out.column("product_id").to_pylist()[0] == "10"  # a whole-number float id is the integer's id
    assert out.column("user_id").to_pylist()[1] == "\\xff\\xfeu2"  # the raw bytes, visible in the quarantine


def test_whole_number_ids_written_as_float_text_are_the_integer_ids():
    """pandas writes an integer id column with a missing value as floats, and to CSV as "12.0":
    old code kept "12.0", which matched no id of a model trained on the integers (every such
    household ranked cold)."""
    batch = pa.table(
        {
            "user_id": [" 12.0 ", "7", "-3.00", "0012"],
            "product_id": ["12.50", "1e3", "A7.0", "5"],
            "timestamp": ["2024-01-02"] * 4,
        }
    )
    out = schema.validate_log_batch(batch)
    assert out.column("reason").to_pylist() == [None] * 4
    assert out.column("user_id").to_pylist() == ["12", "7", "-3", "0012"]  # text ids otherwise as written
    assert out.column("product_id").to_pylist() == ["12.50", "1e3", "A7.0", "5"]


def _validated(users: list, products: list, quantities: list) -> pa.Table:
    """:func:`schema.validate_log_batch` of text rows on one day."""
    columns = {"user_id": users, "product_id": products, "timestamp": ["2024-01-02"] * len(users)}
    return schema.validate_log_batch(pa.table({**columns, "quantity": quantities}))


def test_the_text_exports_write_for_missing_values_is_missing_not_an_id():
    """SQL Server writes NULL, Hive and MySQL \\N, R NA, spreadsheets #N/A: old code kept each as an
    id, so every card-less till purchase was one household named "NULL", and an R export's
    missing quantities (NA) were quarantined instead of meaning 1."""
    out = _validated(
        users=["NULL", "\\N", " na ", "7", "7", "Nancy", "7"],
        products=["5", "5", "5", "N/A", "#n/a", "5", "5"],
        quantities=["1", "", "1", "1", "1", "NA", "null"],
    )
    null_user, null_product = schema.NULL_USER_ID, schema.NULL_PRODUCT_ID
    assert out.column("reason").to_pylist() == [null_user] * 3 + [null_product] * 2 + [None, None]
    assert out.column("user_id").to_pylist()[5] == "Nancy"  # a name that starts like one is an id
    assert out.column("quantity").to_pylist()[5:] == [1.0, 1.0]


def test_placeholder_ids_dash_undefined_and_null_in_parentheses_are_missing_ids():
    """Reports write `-` in an empty cell, JavaScript `undefined`, C's printf `(null)`: old code
    kept each as an id, every card-less purchase one household named "-" (a review)."""
    out = _validated(
        users=["-", " undefined ", "(NULL)", "u1", "u1", "u1", "-u1"],
        products=["p1", "p1", "p1", "Undefined", " - ", "(null)", "p-1"],
        quantities=["1", "1", "1", "1", "1", "1", "-"],
    )
    null_user, null_product = schema.NULL_USER_ID, schema.NULL_PRODUCT_ID
    assert out.column("reason").to_pylist() == [null_user] * 3 + [null_product] * 3 + [None]
    assert out.column("user_id").to_pylist()[6] == "-u1" and out.column("quantity").to_pylist()[6] == 1.0


def test_integers_beyond_float_precision_are_out_of_range_rows_not_an_unreadable_file():
    """A Parquet int64 timestamp of epoch nanoseconds, or a sentinel quantity: old code's checked
    cast to float raised ArrowInvalid for the batch, reported as an unreadable file."""
    batch = pa.table(
        {
            "user_id": [1, 2, 3],
            "product_id": [4, 5, 6],
            "timestamp": pa.array([1_704_067_200_000_000_000, _seconds("2024-01-02"), _seconds("2024-01-02")]),
            "quantity": pa.array([1, 2**63 - 1, 2], pa.int64()),
        }
    )
    out = schema.validate_log_batch(batch)
    assert out.column("reason").to_pylist() == [schema.TIMESTAMP_OUT_OF_RANGE, schema.BAD_QUANTITY, None]


@pytest.mark.faults
def test_the_range_of_timestamps_runs_from_1990_up_to_but_not_including_2100():
    """README: "moments before 1990 or from 2100 are timestamp_out_of_range"; the first second of
    2100 was kept."""
    stamps = ["1989-12-31T23:59:59Z", "1990-01-01T00:00:00Z", "2099-12-31T23:59:59Z", "2100-01-01T00:00:00Z"]
    batch = pa.table({"user_id": ["u1"] * 4, "product_id": ["p1"] * 4, "timestamp": stamps})
    out = schema.validate_log_batch(batch)
    out_of_range = schema.TIMESTAMP_OUT_OF_RANGE
    assert out.column("reason").to_pylist() == [out_of_range, None, None, out_of_range]


@pytest.mark.faults
def test_a_far_future_placeholder_is_out_of_range_beside_nanosecond_fractions():
    """pandas 3 parsed a batch holding one string of 9 fractional digits (Spark's nanoseconds) in
    nanoseconds, where 9999 does not fit: the placeholder beside it became bad_timestamp, though
    README promises timestamp_out_of_range from 2100 on, as it was in a batch without one (a
    review, 2026-12-06). The digits past the sixth are cut before parsing; seconds are rounded
    down, so no moment changes, and a bad row's raw text keeps them."""
    stamps = ["9999-12-31", "2017-11-27 04:01:00", "2017-11-27 04:01:00.123456789", "2017-11-27T04:01:59.999999999Z"]
    plain = schema.validate_log_batch(
        pa.table({"user_id": ["u"] * 2, "product_id": ["p"] * 2, "timestamp": stamps[:2]})
    )
    assert plain.column("reason").to_pylist() == [schema.TIMESTAMP_OUT_OF_RANGE, None]
    out = schema.validate_log_batch(pa.table({"user_id": ["u"] * 4, "product_id": ["p"] * 4, "timestamp": stamps}))
    assert out.column("reason").to_pylist() == [schema.TIMESTAMP_OUT_OF_RANGE, None, None, None]
    moment = _seconds("2017-11-27 04:01:00")
    assert out.column("ts").to_pylist()[1:] == [moment, moment, moment + 59]  # rounded down, not up
    # A bad row's raw text keeps every digit; a good row keeps none (only the quarantine reads it).
    assert out.column("raw_timestamp").to_pylist() == [stamps[0], None, None, None]
    # ISO 8601's comma (a second read, 2026-12-06: pandas refused it, a bad_timestamp), 3 or 9 digits.
    # And ISO's basic form, whose seconds follow no colon (a third read: its cut was lost).
    other = ["2017-11-27T04:01:00,123+01:00", "2017-11-27 04:01:59,123456789", "20171127T040100.123456789Z"]
    other += ["20171127T040100,123Z", "20171127 040100,123"]
    out = schema.validate_log_batch(
        pa.table({"user_id": ["u"] * 6, "product_id": ["p"] * 6, "timestamp": [stamps[0], *other]})
    )
    assert out.column("reason").to_pylist() == [schema.TIMESTAMP_OUT_OF_RANGE, None, None, None, None, None]
    assert out.column("ts").to_pylist()[1:] == [moment - 3600, moment + 59, moment, moment, moment]


@pytest.mark.faults
def test_an_int96_timestamp_of_year_9999_keeps_its_year(tmp_path):
    """Spark's and Hive's legacy INT96 timestamps were read in nanoseconds, where 9999-12-31
    wraps to 1816-03-29: quarantined as out of range, but with a raw text that was never in the
    file (a review, 2026-12-06). They are read in microseconds."""
    import datetime as dt

    stamps = pa.array([dt.datetime(9999, 12, 31), dt.datetime(2017, 11, 27, 4, 1)], pa.timestamp("us"))
    path = tmp_path / "spark.parquet"
    pq.write_table(
        pa.table({"user_id": ["u1", "u2"], "product_id": ["p1", "p2"], "timestamp": stamps}),
        path,
        use_deprecated_int96_timestamps=True,
    )
    assert "int96" in str(pq.read_metadata(path).schema)  # what the drill is about
    assert pq.read_table(path).column("timestamp")[0].as_py().year == 1816  # pyarrow's default wraps it
    pieces, _ = ingest.plan(schema.InputFiles([str(path)], "parquet"))
    out = pa.concat_tables(
        ingest.read_and_validate(pa.Table.from_pylist(pieces), "parquet", schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS)
    )
    assert out.column("reason").to_pylist() == [schema.TIMESTAMP_OUT_OF_RANGE, None]
    assert out.column("raw_timestamp")[0].as_py().startswith("9999-12-31")
    assert out.column("ts")[1].as_py() == _seconds("2017-11-27 04:01:00")


def test_a_catalog_column_nobody_reads_does_not_refuse_the_catalog(tmp_path):
    """pyarrow infers an extra CSV column's type from its first block: old code refused a
    catalog whose pack_size read as integers for a megabyte and then held 0.5."""
    log = tmp_path / "logs.csv"
    log.write_text("user_id,product_id,timestamp\n1,1,2024-01-01\n")
    catalog = tmp_path / "products.csv"
    rows = "".join(f"{i},DAIRY,MILK,{1 + i % 6}\n" for i in range(1, 120_000))
    catalog.write_text("product_id,department,category,pack_size\n" + rows + "120000,DAIRY,MILK,0.5\n")
    check_inputs(schema.resolve_files(str(log)), schema.resolve_files(str(catalog)))


def test_decimal_ids_are_exact_beyond_float_precision():
    """Warehouses export NUMBER(38,0) ids as Parquet decimals: old code went through float64 and
    quarantined every id above 2**53 (16-19 digit loyalty-card numbers) as bad_user_id."""
    big = [decimal.Decimal(v) for v in ("9007199254740993", "1234567890123456789", "42")]
    batch = pa.table(
        {
            "user_id": pa.array(big, pa.decimal128(38, 0)),
            "product_id": pa.array([decimal.Decimal(v) for v in ("12.00", "12.50", "7")], pa.decimal128(10, 2)),
            "timestamp": ["2024-01-02"] * 3,
        }
    )
    out = schema.validate_log_batch(batch)
    assert out.column("user_id").to_pylist() == ["9007199254740993", "1234567890123456789", "42"]
    assert out.column("reason").to_pylist() == [None, schema.BAD_PRODUCT_ID, None]  # 12.50: not a whole id
    assert out.column("product_id").to_pylist()[::2] == ["12", "7"]


@pytest.mark.faults
def test_ids_a_float_could_not_hold_exactly_are_quarantined_as_text_and_in_float32(tmp_path):
    """pandas writes an id column with a missing value as floats: 9826123412341235 and ...236 both
    became 9826123412341236.0 in its CSV, kept as one household, while the same floats in Parquet
    were quarantined; a float32 column's 16777217 was kept as 16777216 (a review of ingest,
    2026-12-07). Beyond the type's exact integers such ids are bad ids, in text as in columns."""
    batch = pa.table(
        {
            "user_id": ["9007199254740991.0", "9826123412341236.0", "9826123412341236", "12.0"],
            "product_id": pa.array(np.array([16777217, 16777215, 3, 4], np.float32)),
            "timestamp": ["2024-01-02"] * 4,
        }
    )
    out = schema.validate_log_batch(batch)
    assert out.column("reason").to_pylist() == [schema.BAD_PRODUCT_ID, schema.BAD_USER_ID, None, None]
    assert out.column("user_id").to_pylist()[2:] == ["9826123412341236", "12"]  # written out whole: exact


@pytest.mark.faults
def test_a_column_of_another_files_contract_is_not_type_checked(tmp_path):
    """A log's list-typed `category` (an e-commerce export's tags) stopped the job, though a log
    never reads it: "other columns are ignored, whatever their names" (a review, 2026-12-07)."""
    path = str(tmp_path / "logs.parquet")
    table = {"user_id": [1], "product_id": [2], "timestamp": ["2024-01-02"], "category": [["toys", "gifts"]]}
    pq.write_table(pa.table(table), path)
    check_inputs(schema.resolve_files(path))
    catalog = str(tmp_path / "products.parquet")
    pq.write_table(pa.table({"product_id": [2], "department": ["TOYS"], "category": [["toys"]]}), catalog)
    with pytest.raises(schema.InputError, match="catalog column 'category' has type list"):
        check_inputs(schema.resolve_files(path), schema.resolve_files(catalog))


@pytest.mark.faults
def test_epoch_seconds_in_32_bit_floats_are_refused_not_rounded(tmp_path):
    """A float32 column holds 2017's epoch seconds to the nearest 128: purchases 21 s apart were
    kept as the same second, without a word (a review of preprocessing at scale, session 68)."""
    path = str(tmp_path / "logs.parquet")
    seconds = pa.array([1511755260.0, 1511755281.0], pa.float32())
    pq.write_table(pa.table({"user_id": [1, 1], "product_id": [2, 3], "timestamp": seconds}), path)
    with pytest.raises(schema.InputError, match="column 'timestamp' has type float; .* 64-bit floats"):
        check_inputs(schema.resolve_files(path))
    pq.write_table(pa.table({"user_id": [1, 1], "product_id": [2, 3], "timestamp": seconds.cast(pa.float64())}), path)
    check_inputs(schema.resolve_files(path))


def test_ids_int64_may_not_hold_are_integers_only_where_every_one_fits(tmp_path):
    """A vocabulary of kind "int" casts the ids back to int64 for the nightly output: 19-digit
    decimals above 2**63 broke that cast after Ray had started, and so did uint64 ids (a
    ClickHouse UInt64, hashed ids) until 2026-12-04. Where the type may not fit, the ids decide,
    as a CSV's do: a NUMBER(38,0) of small ids answers integers, as its CSV export does."""
    columns = {
        "decimal18": pa.array([decimal.Decimal("12"), decimal.Decimal("99999999999999999")], pa.decimal128(18, 0)),
        "decimal38": pa.array([decimal.Decimal("12"), decimal.Decimal("99999999999999999")], pa.decimal128(38, 0)),
        "uint64": pa.array([12, 2**64 - 5], pa.uint64()),
        "uint32": pa.array([12, 2**32 - 1], pa.uint32()),
    }
    kinds = {}
    for name, ids in columns.items():
        path = str(tmp_path / f"{name}.parquet")
        pq.write_table(pa.table({"user_id": ids, "product_id": [1, 2], "timestamp": ["2024-01-02"] * 2}), path)
        declared = schema.id_kind(schema.resolve_files(path), "user_id")
        validated = schema.validate_log_batch(pq.read_table(path))
        assert validated.column("reason").null_count == 2, name  # every id is good
        kinds[name] = declared or schema.kind_of_ids(validated.column("user_id"))
        assert (declared is None) == (name in ("decimal38", "uint64")), name
    assert kinds == {"decimal18": "int", "decimal38": "int", "uint64": "str", "uint32": "int"}


def test_ids_in_scientific_notation_are_bad_ids_not_guesses():
    """Excel writes a 13-digit EAN as 4.00638E+12 (six digits kept) and Spark a large double id as
    1.2345678E7: kept as text they merged every EAN sharing six digits into one product, and
    made 12345678 two households. A product code such as 3E10 is no such number."""
    ids = ["4.00638E+12", "1.2345678E7", "4E+12", "-1.5e-3", "3E10", "12.0", "4006381333931"]
    batch = pa.table({"user_id": ["u"] * len(ids), "product_id": ids, "timestamp": ["2024-01-02"] * len(ids)})
    out = schema.validate_log_batch(batch)
    assert out.column("reason").to_pylist() == [schema.BAD_PRODUCT_ID] * 4 + [None] * 3
    assert out.column("product_id").to_pylist() == [*ids[:5], "12", "4006381333931"]


@pytest.mark.faults
def test_ids_longer_than_the_api_takes_are_bad_ids_not_answers_that_cannot_be_asked_back():
    """A 150-character SKU or household id was kept, ranked and answered by /recommend, then refused
    (422) by /score, /products and /recommend when asked back (a review of the API, 2026-12-07).
    Quarantined at ingest now, counted as any bad id; 128 characters (code points) pass."""
    from serve.api import MAX_ID_CHARS

    ids = ["p" * MAX_ID_CHARS, "p" * (MAX_ID_CHARS + 1), "\u00e9" * MAX_ID_CHARS, f" {'q' * MAX_ID_CHARS} "]
    users = ["u" * (MAX_ID_CHARS + 1)] + ["u"] * 3
    batch = pa.table({"user_id": users, "product_id": ids, "timestamp": ["2024-01-02"] * len(ids)})
    out = schema.validate_log_batch(batch)
    assert out.column("reason").to_pylist() == [schema.BAD_USER_ID, schema.BAD_PRODUCT_ID, None, None]


def test_csv_ids_are_integers_only_where_every_id_is_one_as_int64_writes_it(tmp_path):
    """A CSV carries no types: its ids are answered as integers when each is one (the same log as
    Parquet with integer ids answers the same), and as text when any is written otherwise."""
    assert schema.id_kind(schema.resolve_files(str(_csv(tmp_path))), "user_id") is None  # the ids decide
    for ids, kind in (
        (["12", "7", "0", "-5", "9223372036854775807"], "int"),
        (["12", "007"], "str"),  # 7 would answer for "007"
        (["12", "+5"], "str"),
        (["12", "-0"], "str"),
        (["12", "9223372036854775808"], "str"),  # beyond int64
        (["12", "u1"], "str"),
        (["-9223372036854775808", "-9223372036854775809"], "str"),  # the second beyond int64
        ([], "str"),
    ):
        assert schema.kind_of_ids(pa.array(ids, pa.string())) == kind, ids
    mixed = pa.array(["12", "007", "-9223372036854775808", "9223372036854775808", "x"])
    assert schema.integer_text(mixed).tolist() == [True, False, True, False, False]


def _csv(tmp_path) -> str:
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,timestamp\n1,1,2024-01-01\n")
    return str(path)


def test_a_float_quantity_of_nan_is_a_missing_one_as_the_text_nan_is():
    """Spark writes NaN where pandas writes null: the purchase was quarantined as bad_quantity,
    where the text "NaN" and a null meant 1 (a helper's review). Infinity stays bad."""
    quantities = pa.array([float("nan"), float("inf"), 2.5, None], pa.float64())
    batch = pa.table(
        {"user_id": ["u"] * 4, "product_id": ["p"] * 4, "timestamp": ["2024-01-02"] * 4, "quantity": quantities}
    )
    out = schema.validate_log_batch(batch)
    assert out.column("reason").to_pylist() == [None, schema.BAD_QUANTITY, None, None]
    assert [out.column("quantity")[i].as_py() for i in (0, 2, 3)] == [1.0, 2.5, 1.0]


def test_now_and_other_words_are_not_timestamps():
    """Old code read "now" as the wall-clock time: a historical log got a row at today's date."""
    batch = pa.table(
        {"user_id": ["u"] * 3, "product_id": ["p"] * 3, "timestamp": ["now", " today ", "2024-01-02T00:00:00"]}
    )
    assert schema.validate_log_batch(batch).column("reason").to_pylist() == [
        schema.BAD_TIMESTAMP,
        schema.BAD_TIMESTAMP,
        None,
    ]


def test_timestamps_named_utc_are_read_and_scientific_epoch_seconds_are_not():
    """BigQuery writes `2017-11-27 04:01:00 UTC` (old code: every row a bad timestamp); Excel
    writes epoch seconds as 1.51176E+09 (old code: kept, 79 minutes off)."""
    texts = ["2017-11-27 04:01:00 UTC", "2017-11-27 04:01:00.5 gmt", "2017-11-27 UTC", "1.51176E+09", "1511755260"]
    texts.append("now UTC")  # a word with a zone is still no moment (pandas reads "now" as the clock's)
    out = schema.validate_log_batch(pa.table({"user_id": ["u"] * 6, "product_id": ["p"] * 6, "timestamp": texts}))
    assert out.column("reason").to_pylist() == [None, None, None, schema.BAD_TIMESTAMP, None, schema.BAD_TIMESTAMP]
    four = _seconds("2017-11-27 04:01:00")
    assert out.column("ts").to_pylist() == [four, four, _seconds("2017-11-27"), 0, four, 0]


def test_a_month_without_its_day_is_a_bad_timestamp_not_the_first_of_the_month():
    """pandas reads "2017-11" as 2017-11-01: old code kept a month's purchases on its first day
    (a review). Dates with their day, in every form read before, still pass."""
    months = ["2017-11", "2017/11", "2017 11", " 2017-11 UTC", "2017-1"]
    days = ["2017-11-27", "2017-11-27T04:00:00Z", "2017-11-27 04:00:00+01:00", "20171127T040100Z", "2017-1-2"]
    days += ["2017/11/27", "2017-11-27T04", "2017-11-27 04:01:00 UTC", "1511755260"]
    texts = months + days
    out = schema.validate_log_batch(
        pa.table({"user_id": ["u"] * len(texts), "product_id": ["p"] * len(texts), "timestamp": texts})
    )
    assert out.column("reason").to_pylist() == [schema.BAD_TIMESTAMP] * len(months) + [None] * len(days)
    assert out.column("ts").to_pylist()[len(months) : len(months) + 3] == [
        _seconds("2017-11-27"),
        _seconds("2017-11-27T04:00:00"),
        _seconds("2017-11-27T03:00:00"),
    ]


@pytest.mark.parametrize("separator, said", [(";", "';'"), ("\t", "a tab")], ids=["semicolon", "tab"])
def test_a_header_read_as_one_column_names_its_separator(tmp_path, separator, said):
    """A European Excel export separates with ';', a database's export with tabs: the error said
    only that 'user_id' was missing, beside a header that plainly held it (a review)."""
    path = tmp_path / "logs.csv"
    path.write_text(separator.join(["user_id", "product_id", "timestamp"]) + "\nu1" + separator + "p1\n")
    with pytest.raises(schema.InputError) as refused:
        check_inputs(schema.resolve_files(str(path)))
    message = str(refused.value)
    assert "missing required column 'user_id'" in message and "\n" not in message, message
    assert f"the header holds {said}: only ',' separates columns" in message, message
    path.write_text("user_id,product_id,when\nu1,p1,2024-01-01\n")  # commas: no word of separators
    with pytest.raises(schema.InputError) as refused:
        check_inputs(schema.resolve_files(str(path)))
    assert "separates" not in str(refused.value)


def test_a_quote_never_closed_past_a_block_is_named_as_the_likely_cause(tmp_path, monkeypatch):
    """pyarrow says "straddling object straddles two block boundaries (try to increase block
    size?)", which pointed at a setting nobody can give; the cause is a quote never closed."""
    monkeypatch.setattr(ingest, "CSV_BLOCK_BYTES", 4096)
    rows = ["u1,p1,2024-01-01", 'u2,"p2,2024-01-02'] + [f"u{i},p{i},2024-01-03" for i in range(1_000)]
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,timestamp\n" + "\n".join(rows) + "\n")
    piece = pa.table({"file": [0], "path": [str(path)], "first_row": [0]})
    with pytest.raises(schema.InputError) as refused:
        list(ingest.read_and_validate(piece, "csv", schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS))
    assert str(refused.value).startswith(f"{path} (a quote never closed?): unreadable csv file (")
    # The catalog, read through before Ray starts in blocks of 1 MiB: a quote opened early in 2.5 MB.
    lines = [f"{i},DAIRY,MILK" for i in range(150_000)]
    lines[30_000] = '30000,"DAIRY,MILK'
    catalog = tmp_path / "products.csv"
    catalog.write_text("product_id,department,category\n" + "\n".join(lines) + "\n")
    with pytest.raises(schema.InputError) as refused:
        check_inputs(schema.resolve_files(str(path)), schema.resolve_files(str(catalog)))
    assert str(refused.value).startswith(f"{catalog} (a quote never closed?): unreadable"), refused.value


@pytest.mark.faults
def test_a_files_malformed_tail_goes_out_batch_by_batch_with_its_numbers(tmp_path, monkeypatch):
    """Malformed rows were held until good rows came after them: a file whose tail was all
    malformed (another export appended, a trailing comma on every row) kept them in memory, 285
    bytes a row, and sent them out at the end as one table: 28 GB for 100M rows in one read task
    (a review of preprocessing at scale, session 68). They go out as they are read; the good rows
    between and after them keep their line numbers."""
    monkeypatch.setattr(ingest, "CSV_BLOCK_BYTES", 1 << 16)
    lines = [f"u{i},p{i % 7},2024-01-{1 + i % 28:02d},1" for i in range(3_000)]
    lines += [f"u{i},p1,2024-01-02,1,extra" for i in range(3_000, 40_000)]  # a field too many
    lines += ["u40000,p2,2024-01-03,1"]
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(lines) + "\n")
    tables = list(ingest._csv_file({"file": 0, "path": str(path)}, schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS))
    malformed = [t.num_rows for t in tables if set(t.column("reason").to_pylist()) == {schema.MALFORMED_ROW}]
    assert sum(malformed) == 37_000 and max(malformed) < 10_000, malformed  # in pieces, not one table
    out = pa.concat_tables(tables)
    rows = dict(zip(out.column("source_row").to_pylist(), out.column("reason").to_pylist()))
    assert sorted(rows) == list(range(2, 40_003))  # every line once, header = 1
    assert rows[3_001] is None and rows[3_002] == schema.MALFORMED_ROW and rows[40_002] is None
    assert out.filter(pc.equal(out.column("source_row"), 40_002)).column("user_id").to_pylist() == ["u40000"]


def test_a_csv_whose_first_rows_are_all_malformed_is_refused_before_ray(tmp_path, monkeypatch):
    """Malformed rows before a file's first good one are reported while pyarrow opens it, and the
    read held them as one table: a trailing comma on every row made every row malformed, 285
    bytes a row in one read task (a third read of session 68's fixes). Past MALFORMED_HEAD_MAX
    such rows the file is refused in one line when its header is read, before Ray starts; fewer
    are quarantined as before."""
    monkeypatch.setattr(schema, "MALFORMED_HEAD_MAX", 50)
    path = tmp_path / "logs.csv"
    rows = [f"u{i},p1,2024-01-02,1," for i in range(51)] + ["u9,p2,2024-01-03,1"]
    path.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(rows) + "\n")
    with pytest.raises(schema.InputError) as refused:
        check_inputs(schema.resolve_files(str(path)))
    assert str(refused.value) == (
        f"{path}: its first 50 rows are all malformed (row 2 has 5 fields where the header has 4: "
        "'u0,p1,2024-01-02,1,'); a separator at the end of every row, or another file's header? Mend the file"
    )
    path.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(rows[1:]) + "\n")  # 50 of them
    check_inputs(schema.resolve_files(str(path)))
    # Malformed rows after a good one, in the block pyarrow parses to find it, are no head's (the
    # first version counted them: a final read).
    broken = rows[1:] + rows[:40]
    path.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(broken) + "\n")
    check_inputs(schema.resolve_files(str(path)))
    path.write_text("user_id,product_id,timestamp,quantity\n" + "\n\n".join(rows) + "\n")  # blank lines between
    with pytest.raises(schema.InputError, match="its first 50 rows are all malformed"):
        check_inputs(schema.resolve_files(str(path)))
    path.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(rows[1:]) + "\n")
    piece = {"file": 0, "path": str(path)}
    out = pa.concat_tables(ingest._csv_file(piece, schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS))
    assert out.column("reason").to_pylist() == [schema.MALFORMED_ROW] * 50 + [None]


def test_a_quote_never_closed_inside_an_id_quarantines_the_row_it_made_up(tmp_path):
    """The rows after an id's unclosed quote joined into that id up to the next quote: old code
    kept one purchase of a product named "a,2020-01-01,1\\n2,b,...", the real purchases gone,
    and the job went on (a review, 2026-12-06). A line break inside an id or a timestamp is no
    value's: the row is quarantined with its raw text, which holds the joined lines."""
    path = tmp_path / "logs.csv"
    path.write_text('user_id,product_id,timestamp,quantity\n1,"a,2020-01-01,1\n2,b,2020-01-02,1\n3,c",2020-01-03,1\n')
    piece = {"file": 0, "path": str(path)}
    out = pa.concat_tables(ingest._csv_file(piece, schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS))
    assert out.column("reason").to_pylist() == [schema.BAD_PRODUCT_ID]
    assert out.column("product_id").to_pylist() == ["a,2020-01-01,1\n2,b,2020-01-02,1\n3,c"]
    assert out.column("source_row").to_pylist() == [2]
    # The two lines it swallowed are said (lines_in_quoted_values): 4 non-empty lines, a header, 1 row.
    assert (ingest.csv_lines(str(path)), ingest.csv_rows(str(path))) == (4, 1)

    # Any id column, and a timestamp that parsed whole ("...T10:00\nZ" was 10:00 UTC); a line
    # break around a value is whitespace, trimmed as before (a CRLF file's last column).
    batch = pa.table(
        {
            "user_id": ["u1\r2", "u1", "u1", " u1\r\n"],
            "product_id": ["p1", "p1", "p1", "p1\r"],
            "timestamp": ["2024-01-02", "2024-01-02T10:00\nZ", "2024-01-02T10:00Z", "2024-01-02T10:00Z\r"],
        }
    )
    checked = schema.validate_log_batch(batch)
    assert checked.column("reason").to_pylist() == [schema.BAD_USER_ID, schema.BAD_TIMESTAMP, None, None]
    assert checked.column("user_id").to_pylist() == ["u1\r2", "u1", "u1", "u1"]
    assert checked.column("raw_timestamp").to_pylist()[1] == "2024-01-02T10:00\nZ"


def _counted(rows_by_file: dict) -> pd.DataFrame:
    """:func:`ingest._counts` of rows that came out of validation: {file: [source rows]}."""
    files = [f for f, numbers in rows_by_file.items() for _ in numbers]
    numbers = [n for numbers in rows_by_file.values() for n in numbers]
    table = pa.table(
        {
            ingest.SOURCE_FILE: pa.array(files, pa.int32()),
            schema.REASON: pa.nulls(len(files), pa.string()),
            ingest.SOURCE_ROW: pa.array(numbers, pa.int64()),
            schema.ZONELESS: pa.array([False] * len(files)),
        }
    )
    return ingest._counts(table).to_pandas()


@pytest.mark.parametrize(
    "came_out, says",
    [
        ({0: [2, 3, 5], 1: [2, 3]}, "a.csv: 4 rows in the file but 3 came out"),  # a gap
        ({0: [2, 3], 1: [2, 3]}, "a.csv: 4 rows in the file but 2 came out"),  # the last rows
        ({0: [2, 3, 4, 5]}, "b.csv: 2 rows in the file but 0 came out"),  # a whole file
        ({0: [2, 3, 4, 5], 1: [2, 3, 3]}, "b.csv: 2 rows in the file but 3 came out"),  # a row doubled
        ({}, "a.csv: 4 rows in the file but 0 came out"),  # every row
        # A gap and a row numbered past the end: the count is right, the last number is not.
        ({0: [2, 3, 4, 6], 1: [2, 3]}, "a.csv: row 6 came out of validation but the file's rows are 2 to 5"),
    ],
    ids=["gap", "tail", "file", "doubled", "all", "past-the-end"],
)
def test_rows_lost_between_the_source_and_validation_stop_the_run_wherever_they_were(came_out, says):
    """Old code counted a CSV's rows from the last row number that came out of validation: a
    file's lost last rows, or a whole lost file, left nothing to compare against (a review,
    2026-12-06). Each file's rows are now counted by a parse of their own (csv_rows)."""
    paths, source = ["a.csv", "b.csv", "header-only.csv"], {0: 4, 1: 2, 2: 0}
    whole = ingest.source_rows(_counted({0: [2, 3, 4, 5], 1: [2, 3]}), source, paths, first=2)
    assert whole == {"a.csv": 4, "b.csv": 2, "header-only.csv": 0}
    with pytest.raises(RuntimeError, match=says):
        ingest.source_rows(_counted(came_out) if came_out else pd.DataFrame(), source, paths, first=2)
    # What its docstring says it does not catch: a gap and a doubled row below the last one.
    assert ingest.source_rows(_counted({0: [2, 3, 3, 5], 1: [2, 3]}), source, paths, first=2) == whole


@pytest.mark.faults
def test_a_file_mostly_quarantined_is_named_with_its_main_reason():
    """A folder of monthly exports, one re-saved by Excel (12/27/2017 4:01): that month went to
    the quarantine whole, and the run said only the whole log's counts by reason, exit 0 (a
    review of ingest, 2026-12-07). The file is named, with its main reason; stats.json keeps each
    file's reasons."""
    from ncf.data.preprocess import FILES_ACCOUNTED, FILES_WARNED, files_mostly_quarantined, most_quarantined

    csv = schema.InputFiles(["nov.csv", "dec.csv", "jan.csv"], "csv")
    bad_ts, no_user = schema.BAD_TIMESTAMP, schema.NULL_USER_ID
    table = pa.table(
        {
            ingest.SOURCE_FILE: pa.array([0, 0, 0, 1, 1, 1, 2, 2, 2], pa.int32()),
            schema.REASON: pa.array([None, None, no_user, bad_ts, bad_ts, no_user, bad_ts, bad_ts, None]),
            ingest.SOURCE_ROW: pa.array([2, 3, 4, 2, 3, 4, 2, 3, 4], pa.int64()),
            schema.ZONELESS: pa.array([False] * 9),
        }
    )
    done = ingest.account(ingest._counts(table).to_pandas(), csv, {}, ({0: 4, 1: 4, 2: 4}, {0: 3, 1: 3, 2: 3}))
    assert done["quarantined_by_file"] == {
        "nov.csv": {no_user: 1},
        "dec.csv": {bad_ts: 2, no_user: 1},
        "jan.csv": {bad_ts: 2},
    }
    lines = files_mostly_quarantined(done["rows_by_file"], done["quarantined_by_file"])
    assert [line.split(" (")[0] for line in lines] == [
        f"WARNING: dec.csv: all of its 3 rows quarantined, 2 as {bad_ts}",
        f"WARNING: jan.csv: 2 of its 3 rows quarantined, 2 as {bad_ts}",
    ]  # nov.csv: one row of three, an ordinary bad row
    # Thousands of files mostly quarantined: five named, the rest counted.
    many = {f"f{i}.csv": {bad_ts: 2} for i in range(FILES_WARNED + 3)}
    lines = files_mostly_quarantined(dict.fromkeys(many, 3), many)
    assert len(lines) == FILES_WARNED + 1 and lines[-1] == "WARNING: and 3 more files mostly quarantined (stats.json)"
    # stats.json keeps the files with the largest shares quarantined: an Excel month of 100 rows
    # beside 1,200 files of 10,000 rows with 200 bad each (by counts alone it was dropped).
    rows = {f"f{i}.parquet": 10_000 for i in range(1_200)} | {"excel.parquet": 100}
    bad = {f"f{i}.parquet": {no_user: 200} for i in range(1_200)} | {"excel.parquet": {bad_ts: 100}}
    kept = most_quarantined(rows, bad)
    assert len(kept) == FILES_ACCOUNTED and next(iter(kept)) == "excel.parquet"


def test_the_accounting_checks_the_read_against_the_sources_own_counts():
    """ingest_logs' accounting (account) compares the rows that came out of the read with the
    counts taken apart from it, a CSV's (count_csv_files: lines, rows) or Parquet footers, and
    never with the read's own numbers (a review, 2026-12-06: only source_rows was tested, fed a
    hand-made dict)."""
    csv = schema.InputFiles(["a.csv", "b.csv"], "csv")
    read = _counted({0: [2, 3, 4, 5], 1: [2]})
    done = ingest.account(read, csv, {}, ({0: 6, 1: 2}, {0: 4, 1: 1}))
    assert (done["rows_in"], done["rows_kept"], done["rows_quarantined"]) == (5, 5, 0)
    assert done["rows_by_file"] == {"a.csv": 4, "b.csv": 1}
    assert done["lines_in_quoted_values"] == {"a.csv": 1}  # 6 lines: a header, 4 rows and 1 inside a value
    # The CSV count decides, whatever else is at hand (a file's last row lost on the way).
    with pytest.raises(RuntimeError, match="a.csv: 5 rows in the file but 4 came out"):
        ingest.account(read, csv, {0: 4, 1: 1}, ({0: 6, 1: 2}, {0: 5, 1: 1}))
    with pytest.raises(RuntimeError, match="a.csv: row 6 came out of validation but the file's rows are 2 to 5"):
        ingest.account(_counted({0: [2, 3, 4, 6], 1: [2]}), csv, {}, ({0: 5, 1: 2}, {0: 4, 1: 1}))
    with pytest.raises(schema.InputError, match="a.csv: no purchase rows in the 2 input file"):
        ingest.account(pd.DataFrame(), csv, {}, ({0: 1, 1: 1}, {0: 0, 1: 0}))  # headers alone

    parquet = schema.InputFiles(["a.parquet"], "parquet")  # rows numbered from 0
    assert ingest.account(_counted({0: [0, 1, 2]}), parquet, {0: 3}, None)["rows_by_file"] == {"a.parquet": 3}
    with pytest.raises(RuntimeError, match="a.parquet: 4 rows in the file but 3 came out"):
        ingest.account(_counted({0: [0, 1, 2]}), parquet, {0: 4}, None)
    with pytest.raises(RuntimeError, match="a.parquet: row 3 came out of validation but the file's rows are 0 to 2"):
        ingest.account(_counted({0: [0, 1, 3]}), parquet, {0: 3}, None)


def _csv_pieces(paths) -> pa.Table:
    """plan's pieces of CSV files, as count_csv_files hands them to _source_counts."""
    pieces, _ = ingest.plan(schema.InputFiles([str(p) for p in paths], "csv"))
    return pa.Table.from_pylist([{k: p[k] for k in ("file", "path", "size", "mtime_ns")} for p in pieces])


def test_a_csv_written_to_while_the_job_reads_it_is_an_input_error_not_a_lost_row(tmp_path):
    """An export still being appended to gave the count taken after the read more rows than the
    read saw: a RuntimeError's traceback blamed the pipeline (a review, 2026-12-06). Each file's
    size and modification time are taken when the job plans its files and compared when it is
    counted, before any rows are compared."""
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,timestamp\nu1,p1,2024-01-01\n")
    pieces = _csv_pieces([path])
    seen = (pieces.column("size")[0].as_py(), pieces.column("mtime_ns")[0].as_py())
    assert seen == (os.path.getsize(path), os.stat(path).st_mtime_ns)
    assert ingest.count_csv_file(str(path), seen) == (2, 1)  # unchanged: its lines and rows

    changed = f"{path}: changed while the job read it; run again once it is complete"
    with open(path, "a") as f:
        f.write("u2,p2,2024-01-02\n")
    with pytest.raises(schema.InputError) as refused:
        ingest.count_csv_file(str(path), seen)
    assert str(refused.value) == changed
    # The Ray task hands the driver that one line (count_csv_files raises it).
    assert ingest._source_counts(pieces).to_pylist() == [{"file": 0, "lines": -1, "rows": -1, "error": changed}]
    # Written again at the same size: its modification time says so.
    path.write_text("user_id,product_id,timestamp\nu1,p1,2024-01-01\n")
    os.utime(path, ns=(seen[1] + 2_000_000_000, seen[1] + 2_000_000_000))
    with pytest.raises(schema.InputError, match="changed while the job read it"):
        ingest.count_csv_file(str(path), seen)


def _write_parquet_log(path, rows: int, row_group_size: int) -> None:
    users = [f"u{i % 7}" for i in range(rows)]
    stamps = [f"2024-01-{i % 28 + 1:02d}" for i in range(rows)]
    table = pa.table({"user_id": users, "product_id": [f"p{i % 5}" for i in range(rows)], "timestamp": stamps})
    pq.write_table(table, path, row_group_size=row_group_size)


def _rewrite_parquet_log(path, rows: int, row_group_size: int, seen_ns: int) -> None:
    """The nightly export written again over ``path``, its modification time past ``seen_ns``
    (a file system's coarse clock could leave it as it was)."""
    _write_parquet_log(path, rows, row_group_size)
    os.utime(path, ns=(seen_ns + 2_000_000_000, seen_ns + 2_000_000_000))


def _read_pieces(pieces) -> pa.Table:
    """read_and_validate of plan's pieces, as the Ray Data task runs them."""
    table = pa.Table.from_pylist(pieces)
    return pa.concat_tables(ingest.read_and_validate(table, "parquet", schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS))


@pytest.mark.faults
def test_a_parquet_log_rewritten_after_its_footer_was_read_is_an_input_error_not_lost_rows(tmp_path):
    """A nightly export overwrote sales.parquet after plan read its footer and before its read
    task opened it: "N rows in the file but M came out of validation" (a RuntimeError, read as
    lost rows), or "unreadable parquet file" where the old footer's row groups were gone (a
    review, 2026-12-06). plan records each file's size and modification time, as for a CSV, and
    the read compares them before and after each piece. A file this node cannot look at is the
    read's own error, not "changed" (a second read)."""
    path = tmp_path / "sales.parquet"
    changed = f"{path}: changed while the job read it; run again once it is complete"
    _write_parquet_log(path, 40, row_group_size=10)
    seen = ingest.file_state(str(path))
    pieces, footer = ingest.plan(schema.InputFiles([str(path)], "parquet"))
    assert [(p.get("size"), p.get("mtime_ns")) for p in pieces] == [seen] and footer == {0: 40}
    assert _read_pieces(pieces).num_rows == 40  # unchanged: read as planned

    # Rewritten before the read: more rows, or fewer and without the footer's last row groups.
    for rows in (60, 15):
        _rewrite_parquet_log(path, rows, 10, seen[1])
        with pytest.raises(schema.InputError) as refused:
            _read_pieces(pieces)
        assert str(refused.value) == changed

    # A file this node cannot look at (removed, or not on storage it mounts) is the read's own error.
    _write_parquet_log(path, 40, row_group_size=10)
    pieces, _ = ingest.plan(schema.InputFiles([str(path)], "parquet"))
    os.remove(path)
    with pytest.raises(schema.InputError, match=f"^{re.escape(str(path))}: unreadable parquet file"):
        _read_pieces(pieces)

    # Rewritten while the piece is read: its one batch is out, the check after it refuses it.
    _write_parquet_log(path, 40, row_group_size=40)
    pieces, _ = ingest.plan(schema.InputFiles([str(path)], "parquet"))
    batches = ingest.read_and_validate(
        pa.Table.from_pylist(pieces), "parquet", schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS
    )
    assert next(batches).num_rows == 40
    _rewrite_parquet_log(path, 40, 40, os.stat(path).st_mtime_ns)
    with pytest.raises(schema.InputError, match="^" + re.escape(changed) + "$"):
        list(batches)


@pytest.mark.faults
def test_a_parquet_log_rewritten_while_the_job_runs_ends_it_in_one_line(ray_session, tmp_path, monkeypatch):
    """The job's end of the drill above: Ray's read tasks hand the driver the one line, where the
    accounting's RuntimeError (a traceback) came out (a review, 2026-12-06)."""
    path = tmp_path / "sales.parquet"
    _write_parquet_log(path, 40, row_group_size=40)
    planned = ingest.plan

    def plan_then_rewrite(files):
        pieces, footer = planned(files)
        _rewrite_parquet_log(path, 30, 40, os.stat(path).st_mtime_ns)  # the nightly export lands now
        return pieces, footer

    monkeypatch.setattr(ingest, "plan", plan_then_rewrite)
    with pytest.raises(schema.InputError) as refused:
        ingest.ingest_logs(schema.resolve_files(str(path)))
    assert str(refused.value) == f"{path}: changed while the job read it; run again once it is complete"


def test_the_source_counts_of_a_file_and_of_a_file_removed_since_the_job_planned_it(tmp_path):
    """_source_counts (a Ray Data task, run here without Ray) counts a file's lines and rows, and
    says why a file could not be counted; count_csv_files raises that as the job's one line."""
    kept, removed = tmp_path / "kept.csv", tmp_path / "removed.csv"
    kept.write_text('user_id,product_id,timestamp\nu1,"p1\nnote",2024-01-01\n\nu2,p2,2024-01-02\n')
    removed.write_text("user_id,product_id,timestamp\nu1,p1,2024-01-01\n")
    pieces = _csv_pieces([kept, removed])
    removed.unlink()
    counted = ingest._source_counts(pieces).to_pylist()
    assert counted[0] == {"file": 0, "lines": 4, "rows": 2, "error": None}
    assert (counted[1]["lines"], counted[1]["rows"]) == (-1, -1)
    assert counted[1]["error"].startswith(f"{removed}: could not be read again to count its rows (")
    assert counted[1]["error"].endswith("); changed while the job ran?")


def test_count_csv_files_raises_a_file_it_could_not_count_as_one_line(ray_session, tmp_path):
    """count_csv_files (Ray Data) -> each file's lines and rows, or the InputError naming the file."""
    kept, removed = tmp_path / "kept.csv", tmp_path / "removed.csv"
    for path in (kept, removed):
        path.write_text("user_id,product_id,timestamp\nu1,p1,2024-01-01\nu2,p2,2024-01-02\n")
    pieces, _ = ingest.plan(schema.InputFiles([str(kept), str(removed)], "csv"))
    assert ingest.count_csv_files(pieces) == ({0: 3, 1: 3}, {0: 2, 1: 2})
    removed.unlink()
    with pytest.raises(
        schema.InputError, match="^" + re.escape(f"{removed}: could not be read again to count its rows")
    ):
        ingest.count_csv_files(pieces)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_rows_are_the_rows_the_read_yields_counted_apart_from_it(tmp_path, suffix):
    """The count source_rows checks the read against: it must agree with the read on what a row
    is (a quoted line break, a blank line, a malformed row, bytes that are not UTF-8, a BOM, CRLF
    and no final line break), or every such file would stop the run."""
    body = (
        b"\xef\xbb\xbfuser_id,product_id,timestamp\r\n"
        b'u1,"p1 with\r\na note",2024-01-01\r\n\r\n'
        b"u2,p\xff2,2024-01-02,extra\r\n"  # malformed and not UTF-8: pyarrow decodes it for the handler
        b"u\xff3,p3,2024-01-03\r\n"
        b"u4,p4,2024-01-04"
    )
    path = str(tmp_path / f"logs{suffix}")
    with (gzip.open if suffix.endswith(".gz") else open)(path, "wb") as f:
        f.write(body)
    read = pa.concat_tables(ingest._csv_file({"file": 0, "path": path}, schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS))
    assert ingest.csv_rows(path) == read.num_rows == 4
    assert ingest.csv_lines(path) == 6  # the blank line none: 1 line inside the note
    assert ingest.lines_in_quoted_values([path], {0: 6}, {0: 4}) == {path: 1}


@pytest.mark.faults
def test_rfc_3339_lower_case_separators_are_read_as_their_upper_case():
    """RFC 3339 allows 2017-11-27t04:01:00z, which pandas' ISO-8601 parser refused: such a log was
    all bad_timestamp (a review of ingest, 2026-12-07); with BigQuery's " UTC" after it too."""
    texts = ["2017-11-27t04:01:00z", "2017-11-27T04:01:00z", "2017-11-27t04:01:00+01:00", "2017-11-27T04:01:00Z"]
    texts += ["2017-11-27 04:01:00z UTC", "2017-11-27 04:01:00 z", "20171127t040100z", "2017-11-27 04:01:00z\xa0UTC"]
    n = len(texts)
    out = schema.validate_log_batch(pa.table({"user_id": ["u"] * n, "product_id": ["p"] * n, "timestamp": texts}))
    assert out.column("reason").to_pylist() == [None] * n and not any(out.column("zoneless").to_pylist())
    at_four, at_three = _seconds("2017-11-27 04:01:00"), _seconds("2017-11-27 03:01:00")
    assert out.column("ts").to_pylist() == [at_four, at_four, at_three] + [at_four] * 5


def test_timestamps_naming_no_time_zone_are_flagged_as_read_as_utc():
    """A log written in local time, without offsets, is read hours off: preprocessing counts
    the rows it read so (old code: silently)."""
    texts = ["2017-11-27 04:01:00", "2017-11-27", "2017-11-27T04:01:00Z", "2017-11-27T04:01:00.5+01:00"]
    texts += ["2017-11-27 04:01 -0500", "2017-11-27 04:01:00 UTC", "1511755260", "now", "2017-11-27T04:01:00+01"]
    texts += ["20171127T040100+0100", "20171127T040100Z", "2017-11-27T0401+01:00", "2017-11-27T04+01:00"]  # basic form
    n = len(texts)
    out = schema.validate_log_batch(pa.table({"user_id": ["u"] * n, "product_id": ["p"] * n, "timestamp": texts}))
    assert out.column("zoneless").to_pylist() == [True, True] + [False] * (n - 2)
    assert out.column("ts").to_pylist()[4] == _seconds("2017-11-27 09:01:00")
    moment = pd.Timestamp("2017-11-27T04:01:00")
    for column, zoneless in [
        (pa.array([moment], pa.timestamp("us")), True),
        (pa.array([moment], pa.timestamp("us", tz="Europe/Berlin")), False),
        (pa.array([moment.date()], pa.date32()), True),
        (pa.array([None], pa.timestamp("s")), False),  # a bad timestamp, quarantined: not counted
    ]:
        batch = pa.table({"user_id": ["u"], "product_id": ["p"], "timestamp": column})
        assert schema.validate_log_batch(batch).column("zoneless").to_pylist() == [zoneless], column.type


def test_a_line_break_inside_a_quoted_value_is_part_of_the_value_past_the_first_block(tmp_path, monkeypatch):
    """Old code parsed without ``newlines_in_values``: past the first block, a note's second line
    became a purchase of its own (or the parser fell out of step and refused the file)."""
    monkeypatch.setattr(ingest, "CSV_BLOCK_BYTES", 4096)  # the rows cross many blocks
    rows = [f"u{i % 7},p{i % 11},2024-01-0{1 + i % 9},1,plain" for i in range(2_000)]
    for i in range(0, 2_000, 3):  # many, so that some cross the end of a block
        rows[i] = f'u1,p1,2024-01-02,1,"deliver to the\nside gate,2024-01-0{1 + i % 9}"'
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,timestamp,quantity,note\n" + "\n".join(rows) + "\n")
    out = pa.concat_tables(
        ingest._csv_file({"path": str(path), "file": 0}, schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS)
    )
    assert out.num_rows == 2_000 and sorted(out.column(ingest.SOURCE_ROW).to_pylist()) == list(range(2, 2_002))
    assert "side gate" not in out.column("user_id").to_pylist()
    catalog = tmp_path / "products.csv"
    lines = "".join(f'{i},DAIRY,MILK,"line one\nline two"\n' for i in range(1, 40_000))  # past the 1 MiB block
    catalog.write_text("product_id,department,category,description\n" + lines)
    import pyarrow.csv as pacsv

    assert pacsv.read_csv(str(catalog), **schema.csv_read_options(schema.CATALOG_REQUIRED)).num_rows == 39_999


@pytest.mark.faults
@pytest.mark.parametrize(
    "header, refused",
    [
        ("user_id,product_id,timestamp,quantity,,", None),  # Excel's trailing empty columns
        ("user_id,product_id,timestamp,quantity,quantity", "2 columns named 'quantity'"),
        ("user_id,product_id,timestamp,Qty", "'Qty' looks like the quantity"),
        ("user_id,product_id,timestamp,units_sold", "'units_sold' looks like the quantity"),
        # SQL Server's CamelCase and a hyphen were let through (a review of ingest, 2026-12-07).
        ("user_id,product_id,timestamp,OrderQty", "'OrderQty' looks like the quantity"),
        ("user_id,product_id,timestamp,QuantitySold", "'QuantitySold' looks like the quantity"),
        ("user_id,product_id,timestamp,order-qty", "'order-qty' looks like the quantity"),
        ("user_id,product_id,timestamp,QtyOnHand", None),
        ("user_id,product_id,timestamp,ReturnQty", None),
        ("user_id,product_id,timestamp,unit_price", None),
    ],
)
def test_repeated_and_quantity_like_column_names(tmp_path, header, refused):
    """Old code: a traceback (KeyError) for two columns of one name, and a `Qty` column ignored,
    so a return of -2 counted as a purchase of one unit."""
    path = tmp_path / "logs.csv"
    path.write_text(header + "\n1,2,2024-01-01" + "," * (header.count(",") - 2) + "\n")
    if refused is None:
        check_inputs(schema.resolve_files(str(path)))
    else:
        with pytest.raises(schema.InputError, match=refused):
            check_inputs(schema.resolve_files(str(path)))


@pytest.mark.faults
def test_folders_a_glob_names_and_linked_folders_are_read_and_table_formats_refused(tmp_path):
    """Spark's df.write.csv("sales-02.csv") is a folder, which a glob's match dropped; a folder
    linked into the logs was not followed; a Delta Lake table's folder was read with the files
    its later commits replaced, every row of those twice (a review, 2026-12-05)."""
    written = iter(range(100))

    def one_purchase() -> str:  # each file its own purchase: files of the same content are refused
        return f"user_id,product_id,timestamp\n1,{next(written)},2024-01-01\n"

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "sales-01.csv").write_text(one_purchase())
    spark = logs / "sales-02.csv"
    spark.mkdir()
    (spark / "part-0000.csv").write_text(one_purchase())
    (spark / "_SUCCESS").write_text("")
    assert schema.resolve_files(str(logs / "sales-*.csv")).paths == [
        str(logs / "sales-01.csv"),
        str(spark / "part-0000.csv"),
    ]
    archive = tmp_path / "archive" / "2023"
    archive.mkdir(parents=True)
    (archive / "sales-2023.csv").write_text(one_purchase())
    (logs / "2023").symlink_to(archive)
    (archive / "loop").symlink_to(logs)  # a link back up: each real folder read once
    (logs / "up").symlink_to(tmp_path)  # a link to a folder holding the logs: not followed
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "other.csv").write_text(one_purchase())
    found = schema.resolve_files(str(logs)).paths
    assert str(logs / "2023" / "sales-2023.csv") in found and len(found) == 3, found
    # `exports/**` matches the folders and the files in them: each file read once.
    (tmp_path / "exports" / "2024").mkdir(parents=True)
    (tmp_path / "exports" / "a.csv").write_text(one_purchase())
    (tmp_path / "exports" / "2024" / "b.csv").write_text(one_purchase())
    assert schema.resolve_files(str(tmp_path / "exports" / "**")).paths == [
        str(tmp_path / "exports" / "2024" / "b.csv"),
        str(tmp_path / "exports" / "a.csv"),
    ]
    # Two links back up the tree: Python's glob doubled its paths at each of 40 levels (2^40).
    for name in ("up1", "up2"):
        (tmp_path / "exports" / "2024" / name).symlink_to(tmp_path / "exports")
    assert schema.resolve_files(str(tmp_path / "exports" / "**" / "*.csv")).paths == [
        str(tmp_path / "exports" / "2024" / "b.csv"),
        str(tmp_path / "exports" / "a.csv"),
    ]
    assert schema._glob(str(tmp_path / "exports" / "2*" / "*.csv")) == [str(tmp_path / "exports" / "2024" / "b.csv")]
    table = tmp_path / "table"
    (table / "_delta_log").mkdir(parents=True)
    (table / "date=2024-01-01").mkdir()
    (table / "date=2024-01-01" / "part-0.parquet").write_bytes(b"PAR1")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "jan").symlink_to(table / "date=2024-01-01")  # the table's files by a link
    for spec in (table, table / "*" / "*.parquet", tmp_path / "linked"):
        with pytest.raises(schema.InputError, match="a Delta Lake table, .*export a snapshot"):
            schema.resolve_files(str(spec))


def test_files_of_the_same_content_are_refused_naming_both(tmp_path):
    """`sales.csv` downloaded again as `sales (1).csv`, or beside its `.gz`: every row was read
    twice, each a purchase, and only the repeated lines' count said so, after the state was
    written (a review). Files of one size but other rows, and headers alone, are read."""
    import gzip

    content = b"user_id,product_id,timestamp\nu1,p1,2024-01-01\nu2,p2,2024-01-02\n"
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "sales.csv").write_bytes(content)
    (logs / "other.csv").write_bytes(content.replace(b"u2", b"u3"))  # the same size, other rows
    for day in ("empty-1.csv", "empty-2.csv"):  # days without sales: the same header alone
        (logs / day).write_bytes(b"user_id,product_id,timestamp\n")
    assert len(schema.resolve_files(str(logs)).paths) == 4
    mac = content.replace(b"\n", b"\r")  # Excel for Mac's "CSV (Macintosh)": a bare CR ends each line
    for copy, data in (("sales (1).csv", content), ("sales.csv.gz", gzip.compress(content)), ("sales.csv", mac)):
        if copy == "sales.csv":  # both copies CR-only (read as rows by pyarrow, once taken for a header alone)
            (logs / "sales.csv").write_bytes(mac)
            copy = "sales (1).csv"
        (logs / copy).write_bytes(data)
        first, second = sorted([str(logs / "sales.csv"), str(logs / copy)])
        with pytest.raises(schema.InputError) as refused:
            check_inputs(schema.resolve_files(str(logs)))
        message = str(refused.value)
        assert message.startswith(f"{first} and {second} hold the same content: ") and "\n" not in message
        assert message.endswith("give one of them"), message
        (logs / copy).unlink()
    (logs / "sales.csv").write_bytes(content)
    table = pa.table({"user_id": ["u1"], "product_id": ["p1"], "timestamp": ["2024-01-01"]})
    for name in ("part-0.parquet", "part-1.parquet"):
        pq.write_table(table, tmp_path / name)
    with pytest.raises(schema.InputError, match=r"part-0\.parquet and .*part-1\.parquet hold the same content"):
        check_inputs(schema.resolve_files(str(tmp_path / "*.parquet")))
    # A catalog's copy is harmless (its first row of a product wins): read.
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for name in ("products.csv", "products (1).csv"):
        (catalog / name).write_text("product_id,department,category\np1,Dairy,Milk\n")
    check_inputs(schema.resolve_files(str(logs)), schema.resolve_files(str(catalog)))


def test_hidden_files_named_like_data_are_skipped_with_a_word(tmp_path, capsys):
    """`_sales.csv` or `.sales.parquet` were left out without a word (a review); Spark's markers
    and the files inside hidden folders (a notebook's checkpoints) stay silent."""
    logs = tmp_path / "logs"
    (logs / ".ipynb_checkpoints").mkdir(parents=True)
    (logs / ".ipynb_checkpoints" / "sales-checkpoint.csv").write_text("user_id,product_id,timestamp\n")
    (logs / "sales.csv").write_text("user_id,product_id,timestamp\nu1,p1,2024-01-01\n")
    markers = ("_SUCCESS", "_committed_123", ".DS_Store", "._sales.csv")  # ._: macOS's metadata of a copy
    for name in ("_sales-2023.csv", ".sales.csv.gz", "_old.parquet", *markers):
        (logs / name).write_bytes(b"")
    files = schema.resolve_files(str(logs))
    assert files.paths == [str(logs / "sales.csv")]
    assert files.hidden == [str(logs / n) for n in (".sales.csv.gz", "_old.parquet", "_sales-2023.csv")]
    for spec in (logs / "*.csv", logs / "**" / "*.csv"):  # what the pattern matches only
        assert schema.resolve_files(str(spec)).hidden == [str(logs / "_sales-2023.csv")], spec
    _report_hidden(files, "logs")
    assert capsys.readouterr().out.splitlines() == [
        "[preprocess] logs: skipped 3 file(s) named like data whose names start with '.' or '_' (hidden, as "
        f"Spark's _temporary and editors' files are), e.g. {files.hidden}; rename them to read them"
    ]
    _report_hidden(schema.resolve_files(str(logs / "sales.csv")), "logs")
    assert capsys.readouterr().out == ""


@pytest.mark.faults
def test_a_link_to_a_missing_export_and_an_unlistable_folder_are_refused_naming_them(tmp_path, monkeypatch):
    """`sales-02.csv -> /mnt/unmounted/...` was left out without a word, and so was a folder
    os.walk could not list: rows_in still balanced, so a month of purchases vanished unnoticed."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "sales-01.csv").write_text("user_id,product_id,timestamp\nu1,p1,2024-01-01\n")
    missing = tmp_path / "unmounted" / "sales-02.csv"
    (logs / "sales-02.csv").symlink_to(missing)
    (logs / "sales-03.csv").symlink_to(tmp_path / "unmounted" / "sales-03.csv")
    (logs / "_sales-old.csv").symlink_to(missing)  # hidden: skipped with a word, as any hidden file
    for spec in (logs, logs / "*.csv", logs / "**" / "*.csv"):
        with pytest.raises(schema.InputError) as refused:
            schema.resolve_files(str(spec))
        message = str(refused.value)
        assert (
            message.startswith(f"{spec}: 2 input entries are not a file that can be read, e.g. ")
            and "\n" not in message
        )
        assert f"{logs / 'sales-02.csv'} (a link to {missing}, which does not exist)" in message, message
    with pytest.raises(schema.InputError, match=r"sales-02.csv: 1 input entry is not a file .* which does not exist"):
        schema.resolve_files(str(logs / "sales-02.csv"))  # named alone: its target named, not "no such file"
    os.unlink(logs / "sales-02.csv")
    os.unlink(logs / "sales-03.csv")
    assert schema.resolve_files(str(logs)).paths == [str(logs / "sales-01.csv")]

    # A folder that cannot be listed (a permission; as root, simulated where os.walk lists it).
    (logs / "2023").mkdir()
    (logs / "2023" / "sales-2023.csv").write_text("user_id,product_id,timestamp\nu2,p2,2023-01-01\n")
    listable = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("2023"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listable(path)

    monkeypatch.setattr(os, "scandir", scandir)
    # A wildcard folder too: Python's glob skipped it silently, and a month of logs/*/*.csv with it.
    for spec in (logs, logs / "**" / "*.csv", logs / "*" / "*.csv", logs / "20[0-9][0-9]" / "*.csv"):
        with pytest.raises(schema.InputError) as refused:
            schema.resolve_files(str(spec))
        assert str(refused.value) == f"{logs / '2023'}: an input folder that cannot be listed (Permission denied)"
    # A pattern that cannot reach the folder does not list it, nor a hidden one (Spark's _temporary,
    # its files never read) that the wildcard would match.
    assert schema.resolve_files(str(logs / "*.csv")).paths == [str(logs / "sales-01.csv")]
    os.rename(logs / "2023", logs / "_2023")
    with pytest.raises(schema.InputError, match="no input files found"):  # not "cannot be listed"
        schema.resolve_files(str(logs / "*" / "*.csv"))
    os.rename(logs / "_2023", logs / "2023")
    with pytest.raises(schema.InputError, match="no input files found"):
        schema.resolve_files(str(logs / "19*" / "*.csv"))
    monkeypatch.setattr(os, "scandir", listable)
    assert schema.resolve_files(str(logs / "*" / "*.csv")).paths == [str(logs / "2023" / "sales-2023.csv")]
    # As Python's glob: a link to a folder at another depth is a path of its own, a trailing / names folders.
    (logs / "2024" / "06" / "01").mkdir(parents=True)
    for name in ("06/a.csv", "06/01/b.csv"):
        (logs / "2024" / name).write_text(f"user_id,product_id,timestamp\n{name},p2,2024-06-01\n")
    (logs / "current").symlink_to(logs / "2024" / "06")
    deep = [str(logs / "2024" / "06" / "a.csv"), str(logs / "current" / "01" / "b.csv")]
    assert schema.resolve_files(str(logs / "*" / "*" / "*.csv")).paths == deep
    assert schema.resolve_files(str(logs / "2*" / "")).paths == [
        str(logs / "2023" / "sales-2023.csv"),
        *(str(logs / "2024" / "06" / name) for name in ("01/b.csv", "a.csv")),
    ]


def test_empty_csv_files_are_no_rows_and_an_upper_case_gz_is_refused(tmp_path):
    import gzip

    (tmp_path / "a.csv").write_text("user_id,product_id,timestamp\n1,2,2024-01-01\n")
    (tmp_path / "b.csv").write_bytes(b"")
    (tmp_path / "c.csv").write_bytes(b"\xef\xbb\xbf\r\n\n")  # Excel's empty sheet
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(b""))
    files = schema.resolve_files(str(tmp_path))
    empty = [str(tmp_path / name) for name in ("b.csv", "c.csv", "d.csv.gz")]
    assert (files.paths, files.empty) == ([str(tmp_path / "a.csv")], empty)
    check_inputs(files)
    (tmp_path / "e.csv.gz").write_bytes(b"not gzip")  # a broken gzip is no empty file: the reader refuses it
    assert str(tmp_path / "e.csv.gz") in schema.resolve_files(str(tmp_path)).paths
    (tmp_path / "e.csv.gz").unlink()
    (tmp_path / "a.csv").write_bytes(b"\n")
    with pytest.raises(schema.InputError, match="every input file is empty"):
        schema.resolve_files(str(tmp_path))
    (tmp_path / "LOGS.CSV.GZ").write_bytes(b"")
    with pytest.raises(schema.InputError, match="rename it to"):
        schema.resolve_files(str(tmp_path / "LOGS.CSV.GZ"))


@pytest.mark.parametrize(
    "column",
    [pa.array([[1, 2], [3]], pa.list_(pa.int64())), pa.array([{"a": 1}, {"a": 2}], pa.struct([("a", pa.int64())]))],
    ids=["list", "struct"],
)
def test_list_and_struct_id_columns_are_refused_with_one_line(tmp_path, capsys, column):
    path = str(tmp_path / "logs.parquet")
    pq.write_table(pa.table({"user_id": column, "product_id": [1, 2], "timestamp": [START, START]}), path)
    with pytest.raises(SystemExit) as exit_info:
        preprocess_job.main(["--input", path, "--output", str(tmp_path / "out")])  # before Ray starts
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and "'user_id'" in lines[0] and "ids must be" in lines[0]
    assert not os.path.exists(tmp_path / "out")


def test_the_future_bound_cuts_after_the_bulk_of_the_data():
    days = np.arange(START // DAY, START // DAY + 90)
    counts = np.full(days.size, 50)
    far = _seconds("2099-01-01") // DAY
    bound = ingest.future_bound(np.append(days, far), np.append(counts, 1), gap_days=14)
    assert bound == (days[-1] + 1) * DAY  # the end of the last day of the bulk
    # A closure of 10 days is no gap at this bound; one of 30 days is.
    reopened = np.append(days, days[-1] + 10)
    assert ingest.future_bound(reopened, np.append(counts, 1), gap_days=14) == (days[-1] + 11) * DAY
    assert ingest.future_bound(np.append(days, days[-1] + 30), np.append(counts, 1), gap_days=14) == bound
    assert ingest.future_bound(np.array([], np.int64), np.array([], np.int64), gap_days=14) is None


@pytest.mark.faults
def test_rows_before_a_gap_ahead_of_the_data_are_found_for_a_warning():
    """A till's default date (2000-01-01 in a 2017 log) passed every check and moved the data's
    start 17 years back, without a word (a review of preprocessing at scale, session 68): the
    rows before a gap ahead of the bulk are found, as future_bound finds those after it, for a
    warning; a closure of 10 days, a log's thin start and a single day are not."""
    days = np.arange(START // DAY, START // DAY + 90)
    counts = np.full(days.size, 50)
    placeholder = _seconds("2000-01-01") // DAY
    assert ingest.rows_before_the_bulk(np.append(days, placeholder), np.append(counts, 50), 14) == (
        50,
        placeholder,
        days[0],
    )
    assert ingest.rows_before_the_bulk(np.append(days, days[0] - 10), np.append(counts, 1), 14) is None
    assert ingest.rows_before_the_bulk(np.append(days, days[0] - 30), np.append(counts, 1), 14) == (
        1,
        days[0] - 30,
        days[0],
    )
    thin = np.where(np.arange(days.size) < 30, 1, 50)  # a start with few purchases a day
    assert ingest.rows_before_the_bulk(days, thin, 14) is None
    assert ingest.rows_before_the_bulk(days[:1], counts[:1], 14) is None
    # Two days, one gap: its own median, no outlier (future_bound keeps such a row too).
    assert ingest.rows_before_the_bulk(np.array([placeholder, days[0]]), np.array([1, 1]), 14) is None


# -- the pipeline (Ray) ----------------------------------------------------------------------------------


def _log_rows(n_days: int = 120, per_day: int = 400, start: int = START) -> list:
    """n_days of purchases with sub-second ISO timestamps (about 30 bytes a line)."""
    rows = []
    for i in range(n_days * per_day):
        moment = pd.Timestamp(start + (i // per_day) * DAY + (i % per_day) * 60, unit="s")
        rows.append(f"u{i % 200},p{i % 97},{moment.isoformat()}.25,1")
    return rows


def test_one_household_id_that_is_no_integer_keeps_the_csvs_household_ids_text_and_says_so(
    ray_session, tmp_path, capsys
):
    """Integer ids with one ``12a`` among them: every household id is answered as text (one
    vocabulary, one type), and the console and stats.json name the id that made it so."""
    rows = [line.replace(",p", ",").lstrip("u") for line in _log_rows(n_days=70, per_day=40)]
    rows[100] = "12a," + rows[100].split(",", 1)[1]
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(rows) + "\n")
    out = str(tmp_path / "out")
    stats = preprocess(
        schema.resolve_files(str(path)), None, out, PreprocessConfig(val_weeks=2, test_weeks=2), state_only=True
    )
    vocabs = Vocabularies.load(layout.vocab_dir(out))
    assert (vocabs.users.kind, vocabs.products.kind) == ("str", "int")
    assert stats["ids_kept_as_text"] == {"user_id": {"not_integers": 1, "ids": 201, "examples": ["12a"]}}
    assert (
        "note: every user_id is answered as text (a JSON string): 1 of 201 are not integers" in capsys.readouterr().out
    )


def test_a_csv_refresh_keeps_the_id_types_of_the_data_it_replaces_where_it_can(ray_session, tmp_path, capsys):
    """Integer household ids: a CSV refresh into a new DATA answers integers; one into a DATA of
    text ids keeps them text (a night's refresh does not change the answers' type); one with a
    12a into a DATA of integers must turn them to text, and says so in a WARNING."""
    integers = [line.replace(",p", ",").lstrip("u") for line in _log_rows(n_days=70, per_day=40)]
    odd = list(integers)
    odd[100] = "12a," + odd[100].split(",", 1)[1]
    words = [line.replace(",p", ",") for line in _log_rows(n_days=70, per_day=40)]  # u0, u1...
    files = {}
    for name, rows in (("integers", integers), ("odd", odd), ("words", words)):
        files[name] = tmp_path / f"{name}.csv"
        files[name].write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(rows) + "\n")
    config = PreprocessConfig(val_weeks=2, test_weeks=2)

    def refresh(name: str, out: str) -> tuple:
        stats = preprocess(schema.resolve_files(str(files[name])), None, str(tmp_path / out), config, state_only=True)
        return Vocabularies.load(layout.vocab_dir(str(tmp_path / out))).users.kind, stats

    assert refresh("words", "text")[0] == "str"
    kind, stats = refresh("integers", "text")  # the same DATA, refreshed from integer ids
    assert kind == "str" and "id_kinds_changed" not in stats and "ids_kept_as_text" not in stats
    assert refresh("integers", "numbers")[0] == "int"  # a new DATA: the ids decide
    capsys.readouterr()
    kind, stats = refresh("odd", "numbers")
    assert kind == "str" and stats["id_kinds_changed"] == {"user_id": {"was": "int", "now": "str"}}
    out = capsys.readouterr().out
    assert "WARNING: user_id is text now where the DATA this run replaces had integers" in out
    assert "e.g. ['12a']" in out


def test_a_refresh_from_int64_parquet_ids_keeps_the_text_ids_of_the_data_it_replaces(ray_session, tmp_path):
    """The DATA was preprocessed from CSV (text household ids u0, u1... or 007); the next night's
    export is Parquet with int64 ids: the declared type won and Serve's answers turned from text
    to integers between two nights, where README says a refresh keeps text ids text."""
    from ncf.data.preprocess import _kinds_of_ids

    ids = pa.array(["1", "2", "12"], pa.string())
    kinds, notes = _kinds_of_ids({"user_id": ids}, {"user_id": "int"}, {"user_id": "str"})
    assert kinds == {"user_id": "str"} and notes == {}
    assert _kinds_of_ids({"user_id": ids}, {"user_id": "int"}, {})[0] == {"user_id": "int"}  # a first run

    config = PreprocessConfig(val_weeks=2, test_weeks=2)
    words = tmp_path / "words.csv"
    words.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(_log_rows(n_days=70, per_day=40)) + "\n")
    rows = [line.split(",") for line in _log_rows(n_days=70, per_day=40)]
    integers = tmp_path / "integers.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([int(r[0].lstrip("u")) for r in rows], pa.int64()),
                "product_id": [r[1] for r in rows],
                "timestamp": [r[2] for r in rows],
            }
        ),
        integers,
    )
    out = str(tmp_path / "data")
    for logs in (words, integers):
        preprocess(schema.resolve_files(str(logs)), None, out, config, state_only=True)
        assert Vocabularies.load(layout.vocab_dir(out)).users.kind == "str", logs


def test_a_refresh_from_a_text_parquet_column_keeps_the_integer_ids_of_the_data_it_replaces(
    ray_session, tmp_path, capsys
):
    """The DATA was preprocessed from int64 household ids; the next night's export types the same
    ids as text ("12"): old code took the declared type, and Serve's answers turned from integers
    to text without a word (no WARNING, nothing in stats.json). Integer text stays integers; a 12a
    among them makes them text, said as a CSV refresh says it."""
    from ncf.data.preprocess import _kinds_of_ids

    assert _kinds_of_ids({"user_id": pa.array(["1", "12"])}, {"user_id": "str"}, {})[0] == {
        "user_id": "str"
    }  # first run
    rows = [line.split(",") for line in _log_rows(n_days=70, per_day=40)]
    households = [r[0].lstrip("u") for r in rows]
    odd = list(households)
    odd[100] = "12a"

    def parquet(name: str, user_ids: pa.Array) -> schema.InputFiles:
        path = tmp_path / f"{name}.parquet"
        columns = {"user_id": user_ids, "product_id": [r[1] for r in rows], "timestamp": [r[2] for r in rows]}
        pq.write_table(pa.table(columns), path)
        return schema.resolve_files(str(path))

    config = PreprocessConfig(val_weeks=2, test_weeks=2)
    out = str(tmp_path / "data")
    preprocess(
        parquet("integers", pa.array([int(h) for h in households], pa.int64())), None, out, config, state_only=True
    )
    stats = preprocess(parquet("text", pa.array(households, pa.string())), None, out, config, state_only=True)
    assert Vocabularies.load(layout.vocab_dir(out)).users.kind == "int" and "id_kinds_changed" not in stats
    capsys.readouterr()
    stats = preprocess(parquet("odd", pa.array(odd, pa.string())), None, out, config, state_only=True)
    assert Vocabularies.load(layout.vocab_dir(out)).users.kind == "str"
    assert stats["id_kinds_changed"] == {"user_id": {"was": "int", "now": "str"}}
    assert stats["ids_kept_as_text"]["user_id"]["examples"] == ["12a"]
    assert "WARNING: user_id is text now where the DATA this run replaces had integers" in capsys.readouterr().out


def test_a_refresh_reads_the_id_kinds_of_the_data_a_dead_swap_left_half_done(ray_session, tmp_path):
    """A run died between its swap's two renames: the DATA of text ids waits under its staging
    name and the output is absent until the next run rolls the swap forward. Old code read the
    id kinds before that, found no DATA, and the refresh from integer ids turned the answers to
    integers."""
    config = PreprocessConfig(val_weeks=2, test_weeks=2)
    words = tmp_path / "words.csv"
    words.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(_log_rows(n_days=70, per_day=40)) + "\n")
    integers = tmp_path / "integers.csv"
    rows = [line.lstrip("u") for line in _log_rows(n_days=70, per_day=40)]
    integers.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(rows) + "\n")
    out = str(tmp_path / "data")
    preprocess(schema.resolve_files(str(words)), None, out, config, state_only=True)
    staged = str(tmp_path / ".data.staging-dead")
    os.rename(out, staged)  # the old DATA parked and removed, the new one not yet renamed in
    journal = {"final": out, "staged": staged, "parked": str(tmp_path / ".data.old-dead"), "started": 0}
    write_json(str(tmp_path / ".data.swap.json"), journal)
    preprocess(schema.resolve_files(str(integers)), None, out, config, state_only=True)
    assert Vocabularies.load(layout.vocab_dir(out)).users.kind == "str"


def test_a_placeholder_date_on_many_rows_is_cut_by_max_timestamp(ray_session, tmp_path, capsys):
    """2% of the rows on 2099-12-31 ("date unknown"): the far-future bound starts from the 99th
    percentile, so they end the bulk of the data and the validation weeks fall in empty time.
    Old code's error advised --future-gap-days, which cannot cut them, and the job had no option
    that could (PreprocessConfig.max_timestamp had no flag)."""
    rows = _log_rows(n_days=70, per_day=40) + [f"u{i},p{i % 97},2099-12-31,1" for i in range(60)]
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(rows) + "\n")
    argv = ["--input", str(path), "--output", str(tmp_path / "out"), "--val-weeks", "2", "--test-weeks", "2"]
    argv += ["--state-only"]
    with pytest.raises(SystemExit) as stopped:
        preprocess_job.main(argv)
    error = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(error) == 1 and "has no purchases" in error[0]
    assert "--max-timestamp" in error[0]
    stats = preprocess_job.main(argv + ["--max-timestamp", "2099-12-31"])
    assert stats["rows_kept"] == 2800 and stats["quarantine_by_reason"] == {schema.TIMESTAMP_OUT_OF_RANGE: 60}
    assert stats["quarantined_by_file"] == {str(path): {schema.TIMESTAMP_OUT_OF_RANGE: 60}}  # each file's reasons
    assert stats["config"]["max_timestamp"] == _seconds("2099-12-31")
    assert pq.read_table(layout.quarantine_dir(str(tmp_path / "out"))).num_rows == 60

    def config(*flags: str) -> PreprocessConfig:
        return preprocess_job.preprocess_config(preprocess_job.parse_args(["--input", "x", "--output", "y", *flags]))

    assert (config().min_timestamp, config().max_timestamp) == (schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS)
    assert config("--min-timestamp", "2017-11-27T05:01:21+01:00").min_timestamp == 1511755281
    assert config("--max-timestamp", "1511755281").max_timestamp == 1511755281
    with pytest.raises(schema.InputError, match="--min-timestamp 2024-02-01T00:00:00.* is not before --max-timestamp"):
        config("--min-timestamp", "2024-02-01", "--max-timestamp", "2024-01-01")
    with pytest.raises(SystemExit):
        preprocess_job.parse_args(["--input", "x", "--output", "y", "--max-timestamp", "now"])
    assert "'now' is not a moment" in capsys.readouterr().err


def test_a_csv_with_bad_rows_everywhere_is_quarantined_row_by_row(ray_session, tmp_path):
    """Malformed rows after the first MiB, bad UTF-8, "now" and a row in 2099: old code died with
    a traceback on the first and kept the others (the 2099 row moving every split into empty time)."""
    rows = _log_rows()
    bad = {
        35_000: "u1,p1,2024-02-01T00:00:00",  # a field short
        35_001: "u1,p1,2024-02-01T00:00:00,1,extra",  # a field too many
        40_000: "u1,p1,now,3",
        41_000: "u1,p1,2099-01-01T00:00:00.5,7",
    }
    for index, text in bad.items():
        rows[index] = text
    path = tmp_path / "logs.csv"
    body = ("user_id,product_id,timestamp,quantity\n" + "\n".join(rows) + "\n").encode()
    body = body.replace(b"u5,p5,", b"u\xff5,p5,", 1)  # not UTF-8
    path.write_bytes(body)
    assert body.index(b"2024-02-01T00:00:00,1,extra") > 1 << 20  # after the first MiB
    config = PreprocessConfig(val_weeks=2, test_weeks=2)
    out = str(tmp_path / "out")
    stats = preprocess(schema.resolve_files(str(path)), None, out, config, state_only=True)

    assert stats["rows_in"] == len(rows) == stats["rows_kept"] + stats["rows_quarantined"]
    assert stats["rows_by_file"] == {str(path): len(rows)}
    assert stats["timestamps_read_as_utc"] == stats["rows_kept"]  # dates, every one read as UTC midnight
    assert stats["lines_in_quoted_values"] == {}  # every line a row of its own
    assert stats["quarantine_by_reason"] == {
        schema.MALFORMED_ROW: 2,
        schema.BAD_TIMESTAMP: 1,
        schema.FUTURE_TIMESTAMP: 1,
        schema.BAD_USER_ID: 1,
    }
    assert stats["future_bound"] == START + 120 * DAY
    assert stats["boundaries"]["end"] < START + 120 * DAY  # the 2099 row did not move the end

    quarantine = pq.read_table(layout.quarantine_dir(out)).to_pandas().set_index("source_row")
    # Line numbers as an editor shows them (header = line 1) and the raw values, as text.
    line = {index: index + 2 for index in bad}
    assert quarantine.loc[line[35_000], "reason"] == schema.MALFORMED_ROW
    assert quarantine.loc[line[35_001], "raw_row"] == bad[35_001]
    assert quarantine.loc[line[40_000], ["timestamp", "quantity"]].tolist() == ["now", "3"]
    future = quarantine.loc[line[41_000]]
    assert future["reason"] == schema.FUTURE_TIMESTAMP
    # A row quarantined after validation, which keeps no text of a good row: its values as read.
    assert (future["timestamp"], future["quantity"]) == ("2099-01-01T00:00:00Z", "7")
    assert set(quarantine["source_file"]) == {str(path)}
    assert quarantine.loc[quarantine["reason"] == schema.BAD_USER_ID, "user_id"].tolist() == ["u\\xff5"]


@pytest.mark.faults
def test_a_quote_never_closed_is_counted_not_lost_silently(ray_session, tmp_path):
    """A description cut short (`"Pizza, 12 in`) joins the lines after it into one value until
    the next quote: their purchases were not read, and rows_in = kept + quarantined still held,
    so nothing said so (a review, 2026-12-05). Now the lines that were no row of their own are
    counted per file; a blank line is none of them."""
    lines = [f"u{i},p{i % 7},2024-01-{1 + i % 28:02d},1,plain" for i in range(40)]
    lines[10] = 'u10,p3,2024-01-11,1,"Pizza, 12 in'  # never closed here...
    lines[14] = 'u14,p0,2024-01-15,1,closed by this one"'  # ...until this line's quote: 4 lines joined
    lines[20] = 'u20,p6,2024-01-21,1,"an order note\nover two lines"'  # a line break inside quotes
    lines[30] = ""  # a blank line: skipped by the parser, no row, no count
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,timestamp,quantity,description\n" + "\n".join(lines) + "\n")
    read = ingest.ingest_logs(schema.resolve_files(str(path)))
    assert read.rows_in == read.rows_kept + read.rows_quarantined == 40 - 4 - 1
    assert read.lines_in_quoted_values == {str(path): 5}  # 4 joined to line 11, 1 inside the note


def test_a_placeholder_date_before_the_log_is_warned_of_and_kept(ray_session, tmp_path):
    """The read's rows beside the warning of rows before a gap ahead of the log (its first
    version named both with one variable, and every such log failed its count)."""
    lines = [f"u{i % 40},p{i % 9},2024-01-{1 + i % 28:02d},1" for i in range(2_000)]
    lines += [f"u{i},p1,2000-01-01,1" for i in range(3)]  # a till's default date
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(lines) + "\n")
    said = []
    read = ingest.ingest_logs(schema.resolve_files(str(path)), log=said.append)
    assert read.rows_in == read.rows_kept == 2_003 and read.rows_quarantined == 0
    (warning,) = [line for line in said if line.startswith("WARNING")]
    assert "3 kept row(s) from 2000-01-01" in warning and "--min-timestamp 2024-01-01" in warning, warning


def test_parquet_rows_in_come_from_the_footer_and_the_quarantine_keeps_raw_values(ray_session, tmp_path):
    n = 2_000
    ts = pa.array([pd.Timestamp(START + i * 3_600, unit="s", tz="UTC") for i in range(n)], pa.timestamp("ns", "UTC"))
    products = np.arange(n, dtype=np.float64) % 50
    products[7] = np.nan
    table = pa.table({"user_id": np.arange(n) % 30, "product_id": products, "timestamp": ts, "quantity": [2] * n})
    path = str(tmp_path / "logs.parquet")
    pq.write_table(table, path, row_group_size=500)
    read = ingest.ingest_logs(schema.resolve_files(path))
    assert (read.rows_in, read.rows_kept, read.rows_quarantined) == (n, n - 1, 1)
    assert read.by_reason == {schema.BAD_PRODUCT_ID: 1}
    bad = read.rows.map_batches(ingest.quarantine_rows, batch_format="pyarrow", fn_kwargs={"paths": [path]})
    row = bad.to_pandas().iloc[0]
    assert (row["source_file"], row["source_row"], row["product_id"], row["quantity"]) == (path, 7, "nan", "2")
    assert row["timestamp"].startswith("2024-01-01 07:00:00")


def test_a_run_stopped_by_bad_rows_keeps_its_quarantine_beside_the_output(ray_session, tmp_path):
    """Old code removed the quarantine with the failed run's staging directory: the error said
    "all N quarantined" and there was nothing to look at."""
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,product_id,timestamp\n" + "".join(f"u{i},p{i},yesterday\n" for i in range(5)))
    out = str(tmp_path / "out")
    config = PreprocessConfig(examples=ExampleConfig(history_length=2), val_weeks=4, test_weeks=4)
    with pytest.raises(schema.InputError) as refused:
        preprocess(schema.resolve_files(str(bad)), None, out, config, state_only=True)
    kept = out + ".quarantine"
    assert "all 5 quarantined" in str(refused.value) and kept in str(refused.value), refused.value
    assert not os.path.exists(out)
    rows = pq.read_table(kept).to_pandas()
    assert len(rows) == 5 and set(rows["reason"]) == {schema.BAD_TIMESTAMP}


@pytest.mark.faults
def test_a_failed_runs_quarantine_is_kept_beside_a_link_whose_target_is_elsewhere(ray_session, tmp_path, monkeypatch):
    """A blue/green --output's stage is built beside the link's target: kept beside the link,
    the quarantine was renamed across filesystems (EXDEV), a traceback and exit 1 instead of the
    run's one line, and the quarantine went with the stage."""
    import pathlib
    import shutil
    import tempfile

    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,product_id,timestamp\n" + "".join(f"u{i},p{i},yesterday\n" for i in range(5)))
    config = PreprocessConfig(examples=ExampleConfig(history_length=2), val_weeks=4, test_weeks=4)
    stores = [tmp_path / "store"]
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        stores.append(pathlib.Path(tempfile.mkdtemp(dir=shm)))  # another filesystem
    try:
        for number, store in enumerate(stores):
            (store / "data-v1").mkdir(parents=True)
            out = tmp_path / f"out-{number}"
            out.symlink_to(store / "data-v1")
            with pytest.raises(schema.InputError) as refused:
                preprocess(schema.resolve_files(str(bad)), None, str(out), config, state_only=True)
            kept = str(out) + ".quarantine"
            assert "all 5 quarantined" in str(refused.value) and kept in str(refused.value), refused.value
            assert len(pq.read_table(kept)) == 5, store
            # The stage gone (the lock file stays, as beside every output), the target untouched.
            assert sorted(os.listdir(store)) == [f".{out.name}.lock", "data-v1"], store
            assert os.listdir(store / "data-v1") == []
    finally:
        for store in stores[1:]:
            shutil.rmtree(store, ignore_errors=True)
    if len(stores) == 1:
        print("no /dev/shm on another filesystem: the move across filesystems was not tried")

    def cannot_move(source, destination):  # a full disk part-way: a part-copied folder left behind
        os.makedirs(destination)
        pathlib.Path(destination, "part-0.parquet").write_bytes(b"PAR1")
        raise OSError(28, "No space left on device", destination)

    monkeypatch.setattr(shutil, "move", cannot_move)
    out = tmp_path / "plain"
    with pytest.raises(schema.InputError) as refused:
        preprocess(schema.resolve_files(str(bad)), None, str(out), config, state_only=True)
    message = str(refused.value)
    assert "all 5 quarantined" in message and "\n" not in message, message
    assert message.endswith(f"(quarantine not kept: [Errno 28] No space left on device: '{out}.quarantine.incoming')")
    assert not os.path.exists(str(out) + ".quarantine.incoming") and not os.path.exists(out)


@pytest.mark.parametrize(
    "stamps, hint",
    [
        ([str(START * 1000 + i * DAY * 1000) for i in range(40)], "epoch milliseconds (13 digits"),
        ([f"202401{1 + i % 28:02d}" for i in range(40)], "dates written YYYYMMDD (8 digits"),
    ],
    ids=["epoch-ms", "yyyymmdd"],
)
def test_every_timestamp_out_of_range_says_what_the_numbers_look_like(ray_session, tmp_path, stamps, hint, capsys):
    """Epoch milliseconds, or dates as YYYYMMDD, read as epoch seconds land in year 49,000 or in
    1970: every row was quarantined as timestamp_out_of_range, and the error said no more."""
    path = tmp_path / "logs.csv"
    rows = "".join(f"u{i % 3},p{i % 5},{stamp}\n" for i, stamp in enumerate(stamps))
    path.write_text("user_id,product_id,timestamp\n" + rows)
    with pytest.raises(schema.InputError) as refused:
        preprocess(schema.resolve_files(str(path)), None, str(tmp_path / "out"), PreprocessConfig(), state_only=True)
    message = str(refused.value)
    assert f"all 40 quarantined); the timestamps look like {hint}" in message and "\n" not in message, message
    # The file is named before the run stops (one file: no "otherwise than the other files").
    reason = schema.TIMESTAMP_OUT_OF_RANGE
    warned = f"WARNING: {path}: all of its 40 rows quarantined, 40 as {reason} (is it written e.g."
    assert warned in capsys.readouterr().out


@pytest.mark.parametrize(
    "stamp, hint",
    [
        ("201711270401", "times written YYYYMMDDHHMM (12 digits"),
        ("20171127040100", "times written YYYYMMDDHHMMSS (14 digits, e.g. 20171127040100, SAP's"),
        ("946684800000", "epoch milliseconds (12 digits, before 2001)"),  # 2000-01-01: 12 digits too
    ],
)
def test_compact_date_times_out_of_range_are_named_too(tmp_path, stamp, hint):
    """12 and 14 digits (201711270401, SAP's 20171127040100) are out of range as epoch seconds as
    8 and 13 are, and got no hint (a review of ingest, 2026-12-07). The quarantine's sample, read
    as the job reads it."""
    from ncf.data.preprocess import _out_of_range_hint

    quarantine = tmp_path / "quarantine"
    quarantine.mkdir()
    rows = {schema.TIMESTAMP: [stamp] * 10, schema.REASON: [schema.TIMESTAMP_OUT_OF_RANGE] * 10}
    pq.write_table(pa.table(rows), quarantine / "part-0.parquet")
    assert _out_of_range_hint(str(quarantine)).startswith(f"; the timestamps look like {hint}")


def test_a_log_of_spreadsheet_locale_dates_is_told_what_they_look_like(tmp_path):
    """A log re-saved by a spreadsheet (11/27/2017 4:01, or 27.11.2017) is all bad_timestamp: the
    error said only "all N quarantined" (a review of ingest, 2026-12-07). Other bad text: no hint."""
    from ncf.data.preprocess import _bad_timestamp_hint

    def hint(texts) -> str:
        quarantine = tmp_path / f"q{len(list(tmp_path.iterdir()))}"
        quarantine.mkdir()
        rows = {schema.TIMESTAMP: texts, schema.REASON: [schema.BAD_TIMESTAMP] * len(texts)}
        pq.write_table(pa.table(rows), quarantine / "part-0.parquet")
        return _bad_timestamp_hint(str(quarantine))

    for dates in (["11/27/2017 4:01"] * 10, ["27.11.2017 04:01:00"] * 10, ["1/2/17"] * 10):
        said = hint(dates)
        assert said.startswith(f"; the timestamps look like a spreadsheet's locale dates (e.g. {dates[0]!r}"), said
        assert "write them as ISO-8601" in said
    assert hint(["2017-11"] * 10) == hint(["garbage"] * 10) == ""
    # The example is one of the dates, cut inside its quotes.
    long = "11/27/2017 4:01:00 PM Pacific Standard Time"
    assert f"(e.g. {long[:37] + '...'!r})" in hint(["n/a"] + [long] * 20)


@pytest.mark.faults
def test_a_state_only_refresh_of_recent_logs_alone_is_told_to_read_the_whole_log(ray_session, tmp_path):
    """The refresh rebuilds the state from the logs it is given: handed only the last weeks, its
    refusal spoke of validation and test weeks, which a refresh has none of."""
    config = PreprocessConfig(examples=ExampleConfig(history_length=2), val_weeks=4, test_weeks=4)
    recent = tmp_path / "recent.csv"
    recent.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(_log_rows(20, 5)) + "\n")
    with pytest.raises(schema.InputError, match=r"too short for 4 validation .*--state-only refresh .*whole log"):
        preprocess(schema.resolve_files(str(recent)), None, str(tmp_path / "out"), config, state_only=True)
    with pytest.raises(schema.InputError, match=r"too short for 4 validation") as trained:
        preprocess(schema.resolve_files(str(recent)), None, str(tmp_path / "out"), config)
    assert "--state-only" not in str(trained.value)


def test_an_empty_split_is_a_clear_error_and_the_last_good_output_survives(ray_session, tmp_path):
    """Purchases in January and a busy December (too many rows to be "the future"): the
    validation weeks fall in empty time. Old code wrote the output anyway (and had deleted the
    previous one first)."""
    config = PreprocessConfig(examples=ExampleConfig(history_length=2), val_weeks=4, test_weeks=4)
    good = tmp_path / "good.csv"
    good.write_text("user_id,product_id,timestamp\n" + "\n".join(r.rsplit(",", 1)[0] for r in _log_rows(90, 5)) + "\n")
    out = str(tmp_path / "out")
    first = preprocess(schema.resolve_files(str(good)), None, out, config, state_only=True)

    rows = _log_rows(20, 20) + _log_rows(20, 20, start=_seconds("2024-12-01"))
    gap = tmp_path / "gap.csv"
    gap.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(rows) + "\n")
    with pytest.raises(schema.InputError, match=r"the val period \(2024-1.*has no purchases"):
        preprocess(schema.resolve_files(str(gap)), None, out, config, state_only=True)
    assert layout.DataStats(out).raw["rows_in"] == first["rows_in"]  # the previous output, untouched
    assert sorted(os.listdir(tmp_path)) == sorted([".out.lock", "gap.csv", "good.csv", "out"])


def test_an_empty_log_file_a_pq_catalog_and_a_catalog_of_headers_alone(ray_session, tmp_path, capsys):
    """Old code: one empty daily export refused the job; a catalog named *.pq was read as no
    files by Ray (a traceback after the whole log); a catalog of headers alone was a KeyError."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "day1.csv").write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(_log_rows(70, 40)) + "\n")
    (logs / "day2.csv").write_bytes(b"")
    catalog = tmp_path / "products.pq"
    pq.write_table(
        pa.table({"product_id": [f"p{i}" for i in range(97)], "department": ["D"] * 97, "category": ["C"] * 97}),
        catalog,
    )
    config = PreprocessConfig(val_weeks=2, test_weeks=2)
    out = str(tmp_path / "out")
    stats = preprocess(
        schema.resolve_files(str(logs)), schema.resolve_files(str(catalog)), out, config, state_only=True
    )
    assert stats["rows_by_file"] == {str(logs / "day1.csv"): 70 * 40, str(logs / "day2.csv"): 0}
    assert "1 file(s) without content read as no rows" in capsys.readouterr().out
    products = Vocabularies.load(layout.vocab_dir(out)).products
    assert (products.column("category_index")[1:] > 0).all()  # every product has the .pq catalog's category

    headers = tmp_path / "products.csv"
    headers.write_text("product_id,department,category\n")
    stats = preprocess(
        schema.resolve_files(str(logs)),
        schema.resolve_files(str(headers)),
        out,
        config,
        state_only=True,
        overwrite=True,
    )
    assert stats["catalog_rows"] == 0
    assert "catalog: no rows" in capsys.readouterr().out
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("user_id,product_id,timestamp\n")
    with pytest.raises(schema.InputError, match="no purchase rows"):
        ingest.ingest_logs(schema.resolve_files(str(header_only)))


def test_lost_and_found_at_a_mounts_root_is_not_read_through_a_link_either(tmp_path, monkeypatch):
    """fsck's lost+found at the root of a filesystem mounted for the logs holds no export, and only
    root may list it (every other user's run would be refused as an unlistable folder). A link to
    that root is no mount point itself: it was walked there. (A mount cannot be made here:
    ``os.path.ismount`` says which folder is one.)"""
    import os.path

    logs = tmp_path / "logs"
    (logs / "lost+found").mkdir(parents=True)
    (logs / "lost+found" / "#1234.csv").write_text("user_id,product_id,timestamp\nu,p,2024-01-01\n")
    (logs / "sales.csv").write_text("user_id,product_id,timestamp\nu,p,2024-01-01\n")
    (tmp_path / "linked").symlink_to(logs)
    mount = os.path.realpath(logs)
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.path.realpath(p) == mount if not os.path.islink(p) else False)
    for spec in (logs, tmp_path / "linked"):
        assert [os.path.basename(p) for p in schema.resolve_files(str(spec)).paths] == ["sales.csv"], spec
    monkeypatch.setattr(os.path, "ismount", real_ismount)
    assert len(schema.resolve_files(str(logs)).paths) == 2  # not at a mount's root: an ordinary folder
