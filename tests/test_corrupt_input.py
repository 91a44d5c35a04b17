"""Corrupted purchase logs: a one-line error naming the file, or rows quarantined with a reason;
never an unexplained traceback, never a row lost (property-based, hypothesis)."""

import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncf.data import schema

pytestmark = pytest.mark.faults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_parquet_bytes() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"user_id": [1, 2], "product_id": [3, 4], "timestamp": ["2024-01-01", "2024-01-02"]}), sink)
    return sink.getvalue().to_pybytes()


def check_or_input_error(path: str, must_fail: bool = False) -> None:
    """Either the file passes the column check, or InputError names it; nothing else escapes.
    ``must_fail``: a file that cannot hold the columns (no header in it, no Parquet footer)."""
    try:
        schema.check_columns(schema.resolve_files(path), schema.LOG_REQUIRED, "purchase log")
    except schema.InputError as e:
        message = str(e)
        assert path in message and "\n" not in message
    else:
        assert not must_fail, f"{path} passed the column check"


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(["csv", "parquet"]))
def test_random_bytes_give_an_input_error_naming_the_file(tmp_path, content, fmt):
    path = str(tmp_path / f"logs.{fmt}")
    with open(path, "wb") as f:
        f.write(content)
    check_or_input_error(path, must_fail=b"user_id" not in content)


@FUZZ
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255))
def test_truncated_or_flipped_parquet_gives_an_input_error(tmp_path, cut, flip):
    data = bytearray(valid_parquet_bytes())
    cut = cut % len(data)
    data[cut] ^= flip  # one corrupted byte...
    path = str(tmp_path / "logs.parquet")
    with open(path, "wb") as f:
        f.write(bytes(data[: max(cut, 1)] if flip == 0 else data))  # ...or a file cut short
    check_or_input_error(path, must_fail=flip == 0)


cell = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.integers(min_value=-(2**62), max_value=2**62).map(str),
    st.floats(allow_nan=True).map(str),
)


@FUZZ
@given(st.lists(st.tuples(cell, cell, cell, cell), min_size=1, max_size=30))
def test_hostile_rows_are_kept_or_quarantined_never_lost(rows):
    users, products, stamps, quantities = (list(c) for c in zip(*rows))
    batch = pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "product_id": pa.array(products, pa.string()),
            "timestamp": pa.array(stamps, pa.string()),
            "quantity": pa.array(quantities, pa.string()),
        }
    )
    out = schema.validate_log_batch(batch)
    assert out.num_rows == batch.num_rows  # every row comes out once: kept or with a reason
    reasons = out.column("reason").to_pylist()
    kept = [i for i, r in enumerate(reasons) if r is None]
    assert set(r for r in reasons if r) <= {
        schema.NULL_USER_ID,
        schema.BAD_USER_ID,
        schema.NULL_PRODUCT_ID,
        schema.BAD_PRODUCT_ID,
        schema.BAD_TIMESTAMP,
        schema.TIMESTAMP_OUT_OF_RANGE,
        schema.BAD_QUANTITY,
        schema.NON_POSITIVE_QUANTITY,
    }
    # Text ids are bad only when they are numbers in scientific notation (digits maybe lost),
    # whole numbers written through a float from 2**53 on (9007199254740992.0 held other ids too:
    # the fuzzing found this rule missing here, session 68) or hold a line break (an unclosed CSV
    # quote joined lines into them).
    for ids, bad in ((users, schema.BAD_USER_ID), (products, schema.BAD_PRODUCT_ID)):
        for i in (i for i, r in enumerate(reasons) if r == bad):
            trimmed = pc.utf8_trim_whitespace(pa.array([ids[i]])).to_pylist()[0]  # as validation trims
            through_float = re.fullmatch(r"-?([1-9][0-9]*)\.0+", trimmed)
            beyond = through_float is not None and int(through_float.group(1)) >= 2**53
            assert re.fullmatch(schema.SCIENTIFIC_NUMBER, trimmed) or re.search(schema.LINE_BREAK, trimmed) or beyond, (
                ids[i]
            )
    for i in kept:
        # Fractions are kept (goods sold by weight); only non-positive quantities are refused.
        assert users[i] and products[i] and out.column("quantity")[i].as_py() > 0


def test_the_job_fails_with_one_line_on_a_corrupted_csv(tmp_path):
    path = tmp_path / "logs.csv"
    path.write_bytes(b'user_id,product_id,timestamp\n1,2\x00\xff\xfe,"unterminated\n' + bytes(range(256)))
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.preprocess", "--input", str(path), "--output", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(path) in last, proc.stderr[-3000:]


def test_a_file_named_with_brackets_is_a_file_not_a_glob(tmp_path):
    """`logs [2017].csv` was read as a glob, which matched nothing: "no input files found"."""
    named = tmp_path / "logs [2017].csv"
    named.write_text("user_id,product_id,timestamp\nu1,p1,2024-01-01\n")
    assert schema.resolve_files(str(named)).paths == [str(named)]
    (tmp_path / "logs 2.csv").write_text("user_id,product_id,timestamp\nu1,p1,2024-01-01\n")
    assert schema.resolve_files(str(tmp_path / "logs [0-9].csv")).paths == [str(tmp_path / "logs 2.csv")]


def test_input_files_given_relative_are_handed_on_absolute(tmp_path, monkeypatch):
    """Ray's read tasks open the files in their worker's folder (where `ray start` ran, without a
    job's working directory), not the driver's: `--input logs/*.csv` passed every check, then the
    tasks found no such file (a review of the jobs' CLI, 2026-12-08)."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.csv").write_text("user_id,product_id,timestamp\nu1,p1,2024-01-01\n")
    monkeypatch.chdir(tmp_path)
    for spec in ("logs/a.csv", "logs", "logs/*.csv"):
        assert schema.resolve_files(spec).paths == [str(tmp_path / "logs" / "a.csv")], spec
