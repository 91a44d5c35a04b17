"""Ray Data preprocessing: validation and quarantine, vocabularies, leakage, temporal split."""

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs import preprocess as preprocess_job
from ncf.data import datasets, layout, schema
from ncf.data.examples import CUTOFF, ExampleConfig
from ncf.data.preprocess import (
    LIST_FILE,
    LISTS_PER_FILE,
    STATS_FIXED_BYTES,
    TASK_SHUFFLE_ROWS,
    PreprocessConfig,
    _LineCounts,
    _report_catalog_rows,
    _write_list_file,
    build_vocabularies,
    check_inputs,
    check_lists_found,
    list_file_of,
    list_file_starts,
    list_key_limit,
    preprocess,
    scrambled,
    shuffle_partitions,
    stats_at,
    stats_memory,
    use_task_shuffles,
)
from ncf.data.product_stats import ProductStats
from ncf.data.user_state import CHUNK_ROWS, UserStates
from ncf.data.vocab import FEW_IDS, Vocabularies, Vocabulary
from ncf.splits import REFIT, VALIDATED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- validation of raw rows ----------------------------------------------------------------


def test_each_bad_row_kind_gets_its_reason():
    batch = pa.table(
        {
            "user_id": ["u1", None, "u3", "u4", "u5", "u6", "u7", "", "u9"],
            "product_id": ["p1", "p2", None, "p4", "p5", "p6", "p7", "p8", "p9"],
            "timestamp": [
                "2024-01-02T10:00:00",
                "2024-01-02",
                "2024-01-02",
                "not a date",
                "1970-01-01T00:00:01",
                "2024-01-02",
                "2024-01-02",
                "2024-01-02",
                "1704189600",
            ],
            "quantity": ["2", "1", "1", "1", "1", "0", "-3", "1", "abc"],
        }
    )
    table = schema.validate_log_batch(batch)
    out = table.to_pandas()
    assert len(out) == batch.num_rows
    assert table.column("reason").to_pylist() == [
        None,
        schema.NULL_USER_ID,
        schema.NULL_PRODUCT_ID,
        schema.BAD_TIMESTAMP,
        schema.TIMESTAMP_OUT_OF_RANGE,
        schema.NON_POSITIVE_QUANTITY,
        schema.NON_POSITIVE_QUANTITY,
        schema.NULL_USER_ID,
        schema.BAD_QUANTITY,
    ]
    assert out.loc[0, "ts"] == int(pd.Timestamp("2024-01-02T10:00:00", tz="UTC").timestamp())
    assert out.loc[0, "quantity"] == 2


def test_quantities_int64_cannot_hold_are_quarantined_not_wrapped():
    """Found by test_corrupt_input's fuzzing: 9.223372036854776e+18 passed as a whole number and
    the int64 cast turned it into -2**63, kept as a good row."""
    batch = pa.table(
        {
            "user_id": ["u"] * 3,
            "product_id": ["p"] * 3,
            "timestamp": ["2024-01-02"] * 3,
            "quantity": ["9.223372036854776e+18", "1e30", "4096"],
        }
    )
    table = schema.validate_log_batch(batch)
    assert table.column("reason").to_pylist() == [schema.BAD_QUANTITY, schema.BAD_QUANTITY, None]
    assert table.column("quantity").to_pylist()[2] == 4096


@pytest.mark.faults
def test_weighed_goods_with_fractional_quantities_are_kept():
    """Old code quarantined every fractional quantity (bad_quantity): produce, deli and meat sold by
    weight left training, state and evaluation, though the quantity is never used."""
    text = pa.table({"user_id": ["u"] * 3, "product_id": ["p"] * 3, "timestamp": ["2024-01-02"] * 3})
    for quantity, kept in (
        (pa.array(["0.5", " 1.25", "-0.2"]), [0.5, 1.25]),
        (pa.array([0.37, 2.5, -0.2]), [0.37, 2.5]),
    ):
        table = schema.validate_log_batch(text.append_column("quantity", quantity))
        assert table.column("reason").to_pylist() == [None, None, schema.NON_POSITIVE_QUANTITY]
        assert table.column("quantity").to_pylist()[:2] == kept


def test_timestamps_in_every_accepted_form_agree():
    expected = int(pd.Timestamp("2024-03-05T06:07:08", tz="UTC").timestamp())
    forms = [
        pa.array([pd.Timestamp("2024-03-05T06:07:08")], pa.timestamp("us")),
        pa.array(["2024-03-05T06:07:08Z"]),
        pa.array([expected], pa.int64()),
        pa.array([float(expected)], pa.float64()),
    ]
    for column in forms:
        batch = pa.table({"user_id": [1], "product_id": [2], "timestamp": column})
        out = schema.validate_log_batch(batch).to_pandas()
        assert out["reason"].isna().all() and out["ts"].tolist() == [expected], column.type
        assert out["quantity"].tolist() == [1]  # default when the column is absent


def test_missing_column_fails_with_its_name(tmp_path):
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,when\n1,2,2024-01-01\n")
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.preprocess", "--input", str(path), "--output", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0] and "'timestamp'" in lines[0]


def test_unreadable_file_fails_with_its_name(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(schema.InputError, match="broken.parquet: unreadable parquet"):
        schema.check_columns(schema.resolve_files(str(path)), schema.LOG_REQUIRED, "purchase log")


def _files_under(root) -> dict:
    """Every file under ``root`` with its bytes: what a refused run must leave as it was."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                found[os.path.join(folder, name)] = f.read()
    return found


# 28 days of three households buying two products: enough for a split of one validation and one
# test week, small enough to preprocess in seconds.
FOUR_WEEK_LOG = "user_id,product_id,timestamp\n" + "".join(
    f"u{d % 3},{d % 2 + 1},2024-01-{d:02d}\n" for d in range(1, 29)
)


def _refused(argv: list, monkeypatch, capsys) -> str:
    """The one line jobs.preprocess ``argv`` is refused with (exit 2), before Ray starts."""

    def no_ray():
        raise AssertionError("jobs.preprocess started Ray before refusing its options")

    monkeypatch.setattr(preprocess_job, "init_ray", no_ray)
    with pytest.raises(SystemExit) as exit_info:
        preprocess_job.main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.faults
@pytest.mark.parametrize("option", ["--input", "--products", "--output", "--cache"])
def test_an_empty_path_is_refused_naming_its_option_and_nothing_is_touched(tmp_path, monkeypatch, capsys, option):
    """An unset variable in a script (--input "$LOGS"): old code read "" as not given, so an empty
    --input built the synthetic dataset and replaced DATA with it, an empty --products meant no
    catalog, and an empty --output was the working directory (replaced, with --overwrite)."""
    logs = tmp_path / "logs.csv"
    logs.write_text("user_id,product_id,timestamp\n1,2,2024-01-01\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / layout.STATS).write_text("{}")  # a previous run's DATA
    monkeypatch.chdir(tmp_path)  # what an empty --output would name
    argv = {
        "--input": ["--input", ""],
        "--products": ["--input", str(logs), "--products", ""],
        "--output": ["--input", str(logs)],
        "--cache": ["--dataset", "synthetic", "--cache", ""],
    }[option]
    argv += ["--output", "" if option == "--output" else str(data), "--overwrite"]
    before = _files_under(tmp_path)
    says = f"error: {option} is empty: give a path (an unset variable in a script?)"
    assert _refused(argv, monkeypatch, capsys) == says
    assert _files_under(tmp_path) == before


@pytest.mark.faults
@pytest.mark.parametrize(
    "argv, says",
    [
        (["--input", "LOGS", "--cache", "datasets"], "--cache goes with --dataset: --input is read where it is"),
        (
            ["--input", "LOGS", "--synthetic-users", "500"],
            "--synthetic-users goes with --dataset synthetic, not --input: it shapes the generated log",
        ),
        (
            ["--dataset", "completejourney", "--synthetic-no-rebuys"],
            "--synthetic-no-rebuys goes with --dataset synthetic, not --dataset completejourney: it shapes the "
            "generated log",
        ),
        (["--dataset", "completejourney", "--products", "LOGS"], "--products goes with --input: a built-in dataset"),
    ],
    ids=["cache-with-input", "synthetic-with-input", "synthetic-with-completejourney", "products-with-dataset"],
)
def test_an_option_the_source_does_not_use_is_refused_naming_both(tmp_path, monkeypatch, capsys, argv, says):
    """Old code accepted --cache and --synthetic-* where they shape nothing and ignored them: a
    run asked for 500 households read the whole log without a word (--products alone was refused)."""
    logs = tmp_path / "logs.csv"
    logs.write_text("user_id,product_id,timestamp\n1,2,2024-01-01\n")
    argv = [str(logs) if a == "LOGS" else a for a in argv] + ["--output", str(tmp_path / "out")]
    assert _refused(argv, monkeypatch, capsys).startswith(f"error: {says}")
    assert not os.path.exists(tmp_path / "out")


def test_the_documented_built_in_commands_still_name_the_same_cached_datasets():
    """The synthetic options and --cache default to None now (so that they can be refused where
    unused): the demo's and the README's commands must still find the datasets they cached."""

    def dataset_dir(*argv) -> str:
        args = preprocess_job.parse_args([*argv, "--output", "DATA"])
        preprocess_job.check_options(args)
        return preprocess_job.built_in(args)[0]

    cache = os.path.abspath("artifacts/datasets")  # absolute: Ray's tasks read it (a review, 2026-12-08)
    assert dataset_dir("--dataset", "completejourney") == os.path.join(cache, "completejourney")
    assert dataset_dir("--dataset", "completejourney", "--cache", "/shared") == "/shared/completejourney"
    assert dataset_dir("--dataset", "synthetic") == os.path.join(cache, datasets.SyntheticSpec().cache_name)
    spec = datasets.SyntheticSpec(num_users=100_000, taste_categories=3, taste_share=0.8, rebuys=False, staple_share=0)
    assert dataset_dir(
        "--dataset", "synthetic", "--synthetic-users", "100000", "--synthetic-tastes", "3", "--synthetic-no-rebuys"
    ) == os.path.join(cache, spec.cache_name)


@pytest.mark.faults
@pytest.mark.parametrize(
    "header",
    ["user_id,product_id,timestamp,Quantity", "USER_ID,product_id,timestamp", "user_id, product_id, timestamp"],
)
def test_a_contract_column_spelled_otherwise_is_refused_naming_it(tmp_path, header):
    """Old code ignored ``Quantity`` (returns then counted as purchases, nothing said) and called
    `` product_id`` missing while listing it among the columns it found."""
    path = tmp_path / "logs.csv"
    row = "u1,p1,2024-01-01" + (",-1" if "Quantity" in header else "")
    path.write_text(f"{header}\n{row}\n")
    spelled = next(n for n in header.split(",") if n != n.strip().lower())
    with pytest.raises(schema.InputError) as refused:
        check_inputs(schema.resolve_files(str(path)))
    assert f"column {spelled!r} is spelled otherwise than {spelled.strip().lower()!r}" in str(refused.value)
    path.write_text(f"{header.lower().replace(' ', '')}\n{row}\n")
    check_inputs(schema.resolve_files(str(path)))  # the contract's spelling passes
    # Both spellings in one Parquet file: which one holds the data cannot be told.
    both = tmp_path / "logs.parquet"
    pq.write_table(
        pa.table(
            {"user_id": ["u1"], "product_id": ["p1"], "timestamp": ["2024-01-01"], "quantity": [1], "Quantity": [-1]}
        ),
        both,
    )
    with pytest.raises(
        schema.InputError, match=r"column 'Quantity' .* drop one of the two \('quantity' is there too\)"
    ):
        check_inputs(schema.resolve_files(str(both)))


def test_resolve_files_accepts_file_directory_and_glob(tmp_path):
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("user_id,product_id,timestamp\n")
    (tmp_path / "_SUCCESS").write_text("")
    assert len(schema.resolve_files(str(tmp_path)).paths) == 2
    assert len(schema.resolve_files(str(tmp_path / "*.csv")).paths) == 2
    assert schema.resolve_files(str(tmp_path / "a.csv")).format == "csv"
    with pytest.raises(schema.InputError, match="no such file"):
        schema.resolve_files(str(tmp_path / "missing.parquet"))


@pytest.mark.faults
def test_a_directory_input_skips_hidden_and_underscore_folders(tmp_path):
    # A notebook's checkpoint copy would count every row twice; a Spark job's _temporary parts
    # are half written.
    (tmp_path / "logs.csv").write_text("user_id,product_id,timestamp\n")
    for folder, name in ((".ipynb_checkpoints", "logs-checkpoint.csv"), ("_temporary/0", "part-0.csv")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / name).write_text("user_id,product_id,timestamp\n")
    (tmp_path / "2024").mkdir()
    (tmp_path / "2024" / "more.csv").write_text("user_id,product_id,timestamp\n")
    paths = schema.resolve_files(str(tmp_path)).paths
    assert [os.path.relpath(p, tmp_path) for p in paths] == ["2024/more.csv", "logs.csv"]
    # A glob skips them the same way (it took them before), below its fixed part only.
    globbed = schema.resolve_files(str(tmp_path / "**" / "*.csv")).paths
    assert [os.path.relpath(p, tmp_path) for p in globbed] == ["2024/more.csv", "logs.csv"]
    chosen = schema.resolve_files(str(tmp_path / "_temporary" / "*" / "*.csv")).paths  # named: the user's choice
    assert [os.path.relpath(p, tmp_path) for p in chosen] == ["_temporary/0/part-0.csv"]


@pytest.mark.faults
def test_catalog_rows_left_out_or_named_twice_are_said(capsys):
    """A catalog with every past version of a product (a history table): the first row won and
    only stats.json counted the rest; the console now says so, with products whose rows disagree."""
    catalog = pd.DataFrame(
        {
            "product_id": ["1", "1", "2", "2", "3"],
            "department": ["DAIRY", "FROZEN", "D", "D", "X"],
            "category": ["MILK", "ICE", "C", "C", "Y"],
        }
    )
    _report_catalog_rows(catalog, rows=6, products=3)
    said = capsys.readouterr().out.splitlines()
    assert said == [
        "[preprocess] catalog: 1 of 6 rows have no usable product id (left out)",
        "[preprocess] catalog: 2 rows name a product already named (the first row in the files wins); some "
        "disagree on department or category, e.g. products ['1']",
    ]


# -- vocabularies --------------------------------------------------------------------------


@pytest.mark.parametrize("kind, ids", [("int", [30, 10, 20]), ("str", ["b", "a", "c"])])
def test_vocab_round_trips(tmp_path, kind, ids):
    vocab = Vocabulary.from_ids([str(i) for i in ids], kind=kind, extra={"count": [5, 3, 1]})
    indices = vocab.index_of(ids)
    assert indices.tolist() == [1, 2, 3]
    assert vocab.raw_of(indices) == ids
    assert vocab.index_of([ids[0], "never-seen", None]).tolist() == [1, 0, 0]
    vocab.save(str(tmp_path / "v.parquet"))
    loaded = Vocabulary.load(str(tmp_path / "v.parquet"))
    assert loaded.raw_of([3, 2, 1]) == ids[::-1]
    assert loaded.column("count").tolist() == [0, 5, 3, 1]
    assert len(loaded) == 4


def test_vocab_lookups_agree_for_few_and_many_ids():
    """A request's few ids go through Python dicts, a job's many through Arrow: same answers."""
    vocab = Vocabulary.from_ids([str(i) for i in range(100, 1600)], kind="int")
    raw = [150, "999", 5, None, 1599] * 250  # 1,250 ids: over FEW_IDS
    assert len(raw) > FEW_IDS
    many = vocab.index_of(raw)
    assert many[:5].tolist() == [51, 900, 0, 0, 1500]
    assert vocab.index_of(raw[:5]).tolist() == many[:5].tolist()
    assert vocab.index_of(pa.array([str(r) if r is not None else None for r in raw[:5]])).tolist() == many[:5].tolist()
    assert vocab.raw_of(many)[:5] == vocab.raw_of(many[:5]) == [150, 999, None, None, 1599]


def test_integer_ids_found_by_binary_search_as_by_the_hash():
    """Preprocessing indexes every purchase with vocabularies prepared for integer ids (a sorted
    int64 copy, binary-searched): the same indices as Arrow's hash lookup, absent ids and
    negative ones included; other arrays (strings, nulls) keep the hash."""
    rng = np.random.default_rng(0)
    ids = rng.choice(np.arange(-500, 2**31 - 1, 7919), 3_000, replace=False)
    hashed = Vocabulary.from_ids([str(i) for i in ids], kind="int")
    searched = Vocabulary.from_ids([str(i) for i in ids], kind="int").prepare_lookup()
    assert searched._int_sorted is not None and hashed._int_sorted is None
    asked = np.concatenate([rng.choice(ids, 5_000), rng.integers(-(10**6), 2**31 - 1, 5_000), [ids.min(), ids.max()]])
    big = np.concatenate([asked, [10**15, -(10**15)]])
    for array in (pa.array(big), pa.chunked_array([big[:100], big[100:]]), pa.array(asked.astype(np.int32))):
        expected = hashed.index_of(array)
        assert (expected > 0).sum() > 5_000 and (expected == 0).sum() > 1_000
        assert searched.index_of(array).tolist() == expected.tolist()
    as_text = pa.array([str(i) for i in big] + ["0" + str(ids[0]), "+" + str(ids[1]), " " + str(ids[2]), "-0"])
    expected = hashed.index_of(as_text)
    assert (expected > 0).sum() > 5_000 and expected[-4:].tolist() == [0, 0, 0, 0]
    assert searched.index_of(as_text).tolist() == expected.tolist()
    assert searched.index_of(pa.chunked_array([as_text[:7], as_text[7:]])).tolist() == expected.tolist()
    positive = ids[ids > 0][:50]
    zero_led = pa.array(["0" + str(i) for i in positive] + [str(i) for i in positive])  # every text an integer
    assert hashed.index_of(zero_led).tolist()[:50] == [0] * 50
    assert searched.index_of(zero_led).tolist() == hashed.index_of(zero_led).tolist()
    not_numbers = pa.array([str(ids[0]), "abc"])
    assert searched.index_of(not_numbers).tolist() == hashed.index_of(not_numbers).tolist()
    with_null = pa.array([int(ids[0]), None, 3])
    assert (
        searched.index_of(with_null).tolist()
        == hashed.index_of(with_null).tolist()
        == [hashed.index_of([int(ids[0])])[0], 0, 0]
    )
    words = Vocabulary.from_ids(["b", "a"], kind="str").prepare_lookup()
    assert words._int_sorted is None and words.index_of(pa.array(["a", "z"])).tolist() == [2, 0]
    assert Vocabulary.from_ids([], kind="int").prepare_lookup().index_of(pa.array([1, 2])).tolist() == [0, 0]


def test_text_ids_found_by_binary_search_as_by_the_hash():
    """Text ids (loyalty codes, UUIDs) were hashed whole on every block: 0.47 s a block at 2M ids
    against 0.10 s searched. The same indices as the hash for ids of any length and script; text
    longer than every id, cut short, or holding a NUL (which the fixed width pads with) is no id;
    a vocabulary with a NUL in an id keeps the hash."""
    rng = np.random.default_rng(1)
    ids = list(dict.fromkeys("".join(rng.choice(list("abcé日0"), rng.integers(1, 12))) for _ in range(3_000)))
    hashed = Vocabulary.from_ids(ids, kind="str")
    searched = Vocabulary.from_ids(ids, kind="str").prepare_lookup()
    assert searched._text_sorted is not None and hashed._text_sorted is None
    longest = max(ids, key=lambda i: len(i.encode()))
    asked = [ids[i] for i in rng.integers(0, len(ids), 2_000)]
    asked += ["", "zz", longest + "a", longest[:-1] + "", ids[0] + "\x00", "\x00", " " + ids[1]]
    for array in (pa.array(asked), pa.chunked_array([asked[:10], asked[10:]]), pa.array(asked, pa.large_string())):
        expected = hashed.index_of(array)
        assert (expected > 0).sum() >= 2_000 and searched.index_of(array).tolist() == expected.tolist()
    assert searched.index_of(pa.array([ids[0] + "\x00"])).tolist() == [0]
    assert searched.index_of(pa.chunked_array([], pa.string())).tolist() == []
    with_nul = Vocabulary.from_ids(["a", "a\x00"], kind="str").prepare_lookup()
    assert with_nul._text_sorted is None and with_nul.index_of(pa.array(["a\x00", "a"])).tolist() == [2, 1]


# -- the pipeline on a small synthetic dataset ----------------------------------------------


@pytest.mark.faults
def test_product_indices_do_not_follow_purchases_after_validation_starts(ray_session):
    """Evaluation breaks ties between equally popular products by index: products bought equally
    often before the validation weeks must not be ordered by what sold after. Departments and
    categories are labels, kept as written ("12.0" is not the id 12): looked up as asked ids
    (trimmed, 12.0 read as 12; a review, 2026-12-07) they would have been unknown."""
    import ray

    labels = {schema.DEPARTMENT: ["12.0", "DAIRY", "DAIRY"], schema.CATEGORY: ["7.0", "MILK", "MILK"]}
    catalog = pd.DataFrame({schema.PRODUCT_ID: ["a", "b", "c"], **labels})

    def order(later: str, catalog=None) -> list:
        # a and b once each before validation starts (at 1000), c twice; then 5 more of ``later``.
        rows = [("u1", "a", 100), ("u2", "b", 200), ("u1", "c", 300), ("u2", "c", 400)]
        rows += [(f"u{i}", later, 1000 + i) for i in range(5)]
        known = ray.data.from_pandas(pd.DataFrame(rows, columns=[schema.USER_ID, schema.PRODUCT_ID, schema.TS]))
        kinds = {schema.USER_ID: "str", schema.PRODUCT_ID: "str"}
        vocabs = build_vocabularies(known, catalog, kinds, val_start=1000)[0]
        if catalog is not None:
            products = vocabs.products.index_of(["a", "b"])
            departments = vocabs.departments.raw_of(vocabs.products.column("department_index")[products])
            categories = vocabs.categories.raw_of(vocabs.products.column("category_index")[products])
            assert departments == ["12.0", "DAIRY"] and categories == ["7.0", "MILK"]
        return vocabs.products.ids.to_pylist()

    assert order("a", catalog) == order("b") == ["c", "a", "b"]


def test_stats_account_for_every_row(small_data):
    data, stats = small_data
    assert stats["rows_in"] == stats["rows_kept"] + stats["rows_quarantined"]
    with open(layout.stats_path(data)) as f:
        assert json.load(f)["rows_in"] == stats["rows_in"]
    vocabs = Vocabularies.load(layout.vocab_dir(data))
    assert vocabs.sizes() == stats["vocab_sizes"]
    for run in (VALIDATED, REFIT):
        counts = stats["examples"][run]
        assert counts["candidates"] > counts["positives"] > 0 and counts["lists"] > 0
        # Each list counts its window's products unknown at the cutoff; the stats add them up.
        per_list = [
            pads.dataset(layout.examples_dir(data, c), format="parquet", partitioning="hive")
            .to_table(columns=["bought_unknown"])
            .column(0)
            .to_pylist()
            for c in stats["cutoffs"][run]
        ]
        assert counts["bought_unknown_at_cutoff"] == sum(map(sum, per_list))


def test_the_state_holds_every_household_and_purchase_through_the_end(small_data):
    """Vocabularies and histories cover the whole data (not only what came before the test
    weeks): ranking from the state sees every household and its latest purchases."""
    data, stats = small_data
    states = UserStates.load(layout.user_state_dir(data))
    vocabs = Vocabularies.load(layout.vocab_dir(data))
    assert len(states.products) == stats["rows_kept"]
    assert int(states.timestamps.max()) == stats["boundaries"]["end"]
    assert len(states) == len(vocabs.users) - 1  # every household has its purchases
    first_seen = vocabs.products.column("first_ts")[1:]
    assert first_seen.max() >= stats["boundaries"]["test_start"] or first_seen.min() > 0


def test_stats_computed_by_ray_tasks_are_the_drivers(small_data):
    """Preprocessing computes the products' stats at every cutoff in Ray tasks, in parallel:
    each is what ProductStats.compute gives in this process, and the saved ones are the end's."""
    data, stats = small_data
    states = UserStates.load(layout.user_state_dir(data))
    category = Vocabularies.load(layout.vocab_dir(data)).products.column("category_index")
    cutoffs = [stats["boundaries"]["end"] + 1, *stats["cutoffs"][VALIDATED]]
    by_tasks = stats_at(data, category, cutoffs)
    assert sorted(by_tasks) == sorted(cutoffs)
    for cutoff in cutoffs:
        here = ProductStats.compute(states, category, cutoff)
        for name in ("lines", "recent_lines", "buyers", "rebuy_rate", "cycle_days", "by_hour"):
            np.testing.assert_array_equal(getattr(by_tasks[cutoff], name), getattr(here, name), err_msg=name)
        for name in ("indptr", "indices", "weights"):
            np.testing.assert_array_equal(getattr(by_tasks[cutoff].neighbours, name), getattr(here.neighbours, name))
    saved = ProductStats.load(layout.product_stats_dir(data))
    assert saved.cutoff == cutoffs[0]
    np.testing.assert_array_equal(saved.cycle_days, by_tasks[cutoffs[0]].cycle_days)


def test_a_stats_task_asks_for_its_pass_and_at_most_most_of_a_node():
    small, large = stats_memory(10**6, 10**4, 16 * 2**30), stats_memory(10**9, 10**6, 16 * 2**30)
    assert STATS_FIXED_BYTES < small < 2**30 and large == int(0.8 * 16 * 2**30)  # over 16 GB: capped
    assert stats_memory(10**9, 10**6, 0) == 0  # no node with a CPU reports its memory: no request
    # A chunk measured about 140 bytes a purchase (ncf.data.user_state): the ask assumed 100.
    assert stats_memory(0, 0, 2**40) >= 140 * CHUNK_ROWS


@pytest.mark.faults
def test_a_stats_task_that_finds_no_state_asks_whether_output_is_shared(ray_session, tmp_path, monkeypatch):
    """On a cluster whose nodes do not all mount --output, a stats task finds no state where the
    driver wrote it: old code ended the job with Ray's traceback of a FileNotFoundError after the
    long phases (exit 1), where the lists' check asks the question in one line (exit 2, the
    quarantine kept). The driver here reads a state the tasks' processes cannot find."""
    written = UserStates.from_purchases(np.array([1]), np.array([1]), np.array([100]), num_users=2)
    monkeypatch.setattr(UserStates, "load", staticmethod(lambda directory, mmap=True: written))
    stage = str(tmp_path / "stage")
    with pytest.raises(schema.InputError, match=r"stats task found no state at .*is --output on storage every node"):
        stats_at(stage, np.array([0, 1], np.int32), [200])


def test_a_check_that_names_the_stage_is_said_of_the_output(tmp_path, monkeypatch):
    """The stats and lists checks name the directory they read, the run's stage: the job's line
    named a staging folder removed by the time it was read, and never --output."""
    from ncf.data import preprocess as pipeline

    logs = tmp_path / "logs.csv"
    logs.write_text("household_key,PRODUCT_ID,day\n1,2,3\n")
    output = str(tmp_path / "data")

    def unshared(logs, catalog, stage, *args):
        raise schema.InputError(f"{stage}: the tasks wrote 5 training lists and 0 are there; is --output shared?")

    monkeypatch.setattr(pipeline, "_preprocess_into", unshared)
    with pytest.raises(schema.InputError) as refused:
        pipeline.preprocess(schema.resolve_files(str(logs)), None, output, inputs_checked=True)
    assert str(refused.value) == f"{output}: the tasks wrote 5 training lists and 0 are there; is --output shared?"


def test_shuffles_get_a_partition_per_cpu_for_a_small_log_and_ray_s_default_for_a_huge_one(ray_session):
    cpus = int(ray_session.cluster_resources()["CPU"])
    assert shuffle_partitions(33_000) == cpus  # not 200 tasks and blocks for 33k lines
    assert shuffle_partitions(1_500_000) == max(cpus, 3)
    assert shuffle_partitions(10**9) == ray_session.data.DataContext.get_current().default_hash_shuffle_parallelism


def test_logs_up_to_a_few_million_lines_shuffle_with_tasks(ray_session):
    """Ray's default shuffle starts aggregator actors for each groupby: an 84-line log took 46 s."""
    from ray.data.context import ShuffleStrategy

    default = ray_session.data.DataContext.get_current().shuffle_strategy
    small, large = ray_session.data.range(3), ray_session.data.range(3)
    use_task_shuffles(small, TASK_SHUFFLE_ROWS)
    use_task_shuffles(large, TASK_SHUFFLE_ROWS + 1)
    derived = small.map_batches(lambda batch: batch)
    assert small.context.shuffle_strategy == derived.context.shuffle_strategy == ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    assert large.context.shuffle_strategy == default == ray_session.data.DataContext.get_current().shuffle_strategy


def test_training_lists_come_in_no_household_order(small_data):
    """Training reads each file's lists in order, without a shuffle buffer, and household indices
    follow purchase counts: lists sorted by household (the fourteenth session's) gave batches of
    one activity level and cost the demo's model 0.014 of test NDCG@10."""
    data, stats = small_data
    for cutoff in stats["cutoffs"][VALIDATED]:
        users = pads.dataset(layout.examples_dir(data, cutoff), format="parquet").to_table(columns=["user"])
        users = users.column("user").to_numpy()
        assert len(users) > 50 and len(np.unique(users)) == len(users)
        rank_correlation = np.corrcoef(np.argsort(np.argsort(users)), np.arange(len(users)))[0, 1]
        assert abs(rank_correlation) < 0.3, rank_correlation
        # In the scrambled key's order, file after file: the order is the training order.
        keys = scrambled(users)
        assert (np.diff(keys) > 0).all()


def test_list_households_keeps_the_lists_of_the_lowest_keys_unchanged(small_data, tmp_path, monkeypatch):
    """With more households than --list-households, the lists are those of the households with the
    lowest scrambled keys, the same at every cutoff and list for list what the full run wrote
    for them (their draws are seeded per household); the state and the stats read everyone."""
    data, stats = small_data
    num_users = stats["vocab_sizes"]["num_users"]
    recorded = stats["config"]
    config = PreprocessConfig(
        **{**recorded, "examples": ExampleConfig(**{**recorded["examples"], "list_households": 50})}
    )
    inputs = stats["inputs"]
    sampled = str(tmp_path / "sampled")
    from ncf.data import preprocess as pipeline

    real_count, counted = pipeline._count_lists, []

    def count_lists(directory):
        counted.append(os.path.basename(directory))
        return real_count(directory)

    monkeypatch.setattr(pipeline, "_count_lists", count_lists)
    sampled_stats = preprocess(
        schema.resolve_files(os.path.dirname(inputs["logs"][0])),
        schema.resolve_files(inputs["catalog"][0]),
        sampled,
        config,
    )
    # Each cutoff's labels read once, by the found-lists check and every run's counts together (each
    # read them again: billions of values at 10M households; a review, 2026-12-07).
    assert sorted(counted) == sorted(set(counted)) and len(counted) >= 2, counted
    for run, run_cutoffs in sampled_stats["cutoffs"].items():
        by_reading = [real_count(layout.examples_dir(sampled, c)) for c in run_cutoffs]
        assert sampled_stats["examples"][run]["lists"] == sum(c["lists"] for c in by_reading), run
    chosen = 1 + np.sort(np.argsort(scrambled(np.arange(1, num_users)))[:50])  # 0: the unknown household
    assert list_key_limit(num_users, 50) == scrambled(chosen).max() and list_key_limit(51, 50) is None
    for run, cutoffs in stats["cutoffs"].items():
        for cutoff in cutoffs:
            full = pads.dataset(layout.examples_dir(data, cutoff), format="parquet").to_table()
            kept = pads.dataset(layout.examples_dir(sampled, cutoff), format="parquet").to_table()
            expected = full.filter(pa.array(np.isin(full.column("user").to_numpy(), chosen)))
            assert 0 < kept.num_rows < full.num_rows
            assert kept.equals(expected), (run, cutoff)
    assert sampled_stats["vocab_sizes"] == stats["vocab_sizes"]
    for name in ("offsets", "products", "timestamps"):
        np.testing.assert_array_equal(
            np.load(os.path.join(layout.user_state_dir(sampled), f"{name}.npy")),
            np.load(os.path.join(layout.user_state_dir(data), f"{name}.npy")),
        )


@pytest.mark.faults
def test_lists_a_task_wrote_where_the_driver_cannot_see_them_are_refused(small_data, tmp_path):
    """A lists task on another node writes to that node's disk when DATA is not on shared
    storage: old code counted the lists it could see and went on without the others."""
    data, stats = small_data
    every = sorted({c for run in stats["cutoffs"].values() for c in run})
    copy = str(tmp_path / "data")
    shutil.copytree(layout.examples_root(data), layout.examples_root(copy))
    built = sum(pq.read_metadata(f).num_rows for f in glob.glob(os.path.join(layout.examples_root(copy), "*", "*")))
    check_lists_found(copy, every, built)
    os.remove(sorted(glob.glob(os.path.join(layout.examples_dir(copy, every[-1]), "*.parquet")))[0])
    with pytest.raises(schema.InputError, match="training lists and .* are there; is --output on storage every node"):
        check_lists_found(copy, every, built)


def test_lists_files_are_the_same_whatever_order_their_lists_arrive_in(small_data, tmp_path):
    """Each lists file's task sorts its lists and names the file after its households' key range,
    so a preprocessing writes the same files whatever order Ray's tasks finish and hand their
    blocks over in (Ray 2.60's task-based sort once handed a sort's blocks over out of order)."""
    data, stats = small_data
    cutoffs = stats["cutoffs"][VALIDATED][:2]
    written = {c: glob.glob(os.path.join(layout.examples_dir(data, c), "*.parquet")) for c in cutoffs}
    assert all(len(files) == 1 for files in written.values())  # fewer households than a file holds
    tables = {c: pq.read_table(files[0], partitioning=None) for c, files in written.items()}
    lists = pa.concat_tables(
        [
            table.append_column(CUTOFF, pa.array(np.full(table.num_rows, c))).append_column(
                LIST_FILE, pa.array(np.zeros(table.num_rows, np.int64))
            )
            for c, table in tables.items()
        ]
    )
    shuffled = lists.take(np.random.default_rng(0).permutation(lists.num_rows))
    _write_list_file(shuffled, str(tmp_path))
    for c, files in written.items():
        rewritten = os.path.join(tmp_path, f"{CUTOFF}={c}", os.path.basename(files[0]))
        assert pq.read_table(rewritten, partitioning=None).equals(tables[c], check_metadata=True)

    households = np.bincount(list_file_of(np.arange(5000), list_file_starts(5000)))
    assert len(households) == 3 and households.max() <= LISTS_PER_FILE and households.min() >= 5000 // 3
    assert len(list_file_starts(LISTS_PER_FILE)) == 0  # one file


def test_training_lists_end_where_their_run_must(small_data):
    """The validated run's labels end where validation starts; the refit's run to the data's end."""
    data, stats = small_data
    b, horizon = stats["boundaries"], stats["config"]["examples"]["horizon_days"] * 86_400
    assert max(stats["cutoffs"][VALIDATED]) + horizon == b["val_start"]
    assert max(stats["cutoffs"][REFIT]) + horizon == b["end"] + 1
    states = UserStates.load(layout.user_state_dir(data))
    for cutoff in stats["cutoffs"][VALIDATED][:1]:
        lists = pads.dataset(layout.examples_dir(data, cutoff), format="parquet").to_table().to_pylist()[:40]
        for row in lists:
            timeline = states.timeline(row["user"])
            window = (timeline.timestamps >= cutoff) & (timeline.timestamps < cutoff + horizon)
            assert row["moment"] == timeline.timestamps[window].min()  # the first visit in the window
            bought = set(timeline.products[window].tolist())
            labels = dict(zip(row["product"], row["label"]))
            assert {p for p, y in labels.items() if y} <= bought
            assert all(labels[p] == 1 for p in bought if p in labels)


def test_state_only_refreshes_the_state_without_lists(ray_session, small_data, tmp_path):
    from ncf.data import datasets

    logs, catalog = datasets.write_synthetic(
        str(tmp_path / "raw"), datasets.SyntheticSpec(num_users=40, num_products=60)
    )
    out = str(tmp_path / "state")
    stats = preprocess(
        schema.resolve_files(logs), schema.resolve_files(catalog), out, PreprocessConfig(), state_only=True
    )
    assert stats["state_only"] and stats["examples"] == {}
    assert not os.path.exists(os.path.join(out, "examples"))
    assert len(UserStates.load(layout.user_state_dir(out)).products) == stats["rows_kept"]
    # stats.json records both runs' cutoffs, where none has lists: has_lists said True, so a model
    # saved with a run's name on this DATA recorded only the unknown rows as trained.
    assert all(stats["cutoffs"][run] for run in (VALIDATED, REFIT))
    assert not layout.DataStats(out).has_lists(VALIDATED) and not layout.DataStats(out).has_lists(REFIT)


def test_bad_rows_land_in_quarantine_with_reasons(ray_session, tmp_path, capsys):
    rows = [
        ("u1", "p1", "2024-01-01T10:00:00", "1"),
        ("u1", "p2", "2024-02-01T10:00:00", "2"),
        ("u2", "p1", "2024-03-01T10:00:00", "1"),
        ("u2", "p2", "2024-04-01T10:00:00", "1"),
        ("u1", "p1", "2024-05-01T10:00:00", "1"),
        ("", "p1", "2024-01-01T10:00:00", "1"),
        ("u1", "", "2024-01-01T10:00:00", "1"),
        ("u1", "p1", "yesterday", "1"),
        ("u1", "p1", "1850-01-01T00:00:00", "1"),
        ("u1", "p1", "2024-01-01T10:00:00", "0"),
        ("u2", "p1", "2024-01-01T10:00:00", "many"),
        # Kept: a line repeated exactly, one repeated with another quantity (both counted as repeats,
        # in logs of any order), and another product in the same second (no repeat).
        ("u1", "p1", "2024-01-01T10:00:00", "1"),
        ("u2", "p2", "2024-04-01T10:00:00", "3"),
        ("u2", "p1", "2024-04-01T10:00:00", "1"),
    ]
    path = tmp_path / "logs.csv"
    path.write_text("user_id,product_id,timestamp,quantity\n" + "\n".join(",".join(r) for r in rows) + "\n")
    config = PreprocessConfig(examples=ExampleConfig(history_length=2), val_weeks=4, test_weeks=4)
    out = str(tmp_path / "out")
    stats = preprocess(schema.resolve_files(str(path)), None, out, config, state_only=True)
    assert stats["rows_in"] == 14 and stats["rows_kept"] == 8 and stats["rows_quarantined"] == 6
    assert stats["repeated_lines"] == 2 and stats["lines_at_midnight_utc"] == 0
    # A quarter of the lines repeat another: a WARNING (an export read twice shows half of them).
    assert "[preprocess] WARNING: 2 of 8 lines (25%) repeat another line's household" in capsys.readouterr().out
    quarantine = pq.read_table(layout.quarantine_dir(out)).to_pandas()
    assert sorted(quarantine["reason"]) == sorted(
        [
            schema.NULL_USER_ID,
            schema.NULL_PRODUCT_ID,
            schema.BAD_TIMESTAMP,
            schema.TIMESTAMP_OUT_OF_RANGE,
            schema.NON_POSITIVE_QUANTITY,
            schema.BAD_QUANTITY,
        ]
    )
    assert stats["quarantine_by_reason"] == {r: 1 for r in quarantine["reason"]}
    assert stats["products_missing_from_catalog"] == 2  # no catalog: every product is unknown


def test_repeated_and_midnight_lines_are_counted_across_the_sorted_batches():
    a = np.array
    batches = [
        (a([1, 1]), a([2, 2]), a([5, 5])),
        (a([], int),) * 3,
        (a([1, 2]), a([2, 2]), a([5, 5])),
        (a([2]), a([3]), a([5])),
    ]
    counted = _LineCounts(iter(batches))
    assert [len(b[0]) for b in counted] == [2, 0, 2, 1] and counted.repeated == 2  # one in a batch, one across two
    assert counted.at_midnight == 0
    day = 86_400
    dates = _LineCounts(iter([(a([1, 1, 2]), a([2, 3, 2]), a([day, 3 * day, 5])), (a([3]), a([2]), a([0]))]))
    assert [len(b[0]) for b in dates] == [3, 1] and dates.at_midnight == 3 and dates.repeated == 0


@pytest.mark.faults
@pytest.mark.parametrize(
    "row, complaint",
    [("2,\xc9picerie,Bread\n".encode("latin-1"), "UTF8"), (b"2,Grocery,Bread,Rolls\n", "columns")],
    ids=["latin-1", "unquoted-comma"],
)
def test_an_unreadable_catalog_is_one_line_naming_it(ray_session, tmp_path, row, complaint, monkeypatch, capsys):
    # Both are common in real catalog exports; they escaped as Ray task tracebacks.
    logs = tmp_path / "logs.csv"
    logs.write_text(FOUR_WEEK_LOG)
    catalog = tmp_path / "catalog.csv"
    catalog.write_bytes(b"product_id,department,category\n1,Grocery,Milk\n" + row)
    config = PreprocessConfig(examples=ExampleConfig(history_length=2), val_weeks=1, test_weeks=1)
    # Ray's reader of a catalog nobody checked first (the fallback behind check_inputs) ...
    with pytest.raises(schema.InputError) as refused:
        files = (schema.resolve_files(str(logs)), schema.resolve_files(str(catalog)))
        preprocess(*files, str(tmp_path / "out"), config, inputs_checked=True)
    message = str(refused.value)
    assert "\n" not in message and str(catalog) in message and "unreadable product catalog" in message, message
    assert complaint in message, message
    assert not os.path.exists(tmp_path / "out")

    # ... and the job, before Ray starts (it used to fail after the whole log had been read and split).
    capsys.readouterr()
    argv = ["--input", str(logs), "--products", str(catalog), "--output", str(tmp_path / "out")]
    assert _refused(argv, monkeypatch, capsys) == f"error: {message}"


@pytest.mark.faults
def test_logs_too_short_for_the_label_window_are_refused_before_the_work_in_dates(ray_session, tmp_path):
    """Old code built the vocabularies, the state and every cutoff's lists, then failed with the log
    file's name and raw epoch seconds ("no training lists for the validated run (cutoffs [1703...])")."""
    logs = tmp_path / "logs.csv"
    logs.write_text(FOUR_WEEK_LOG)
    config = PreprocessConfig(examples=ExampleConfig(history_length=2), val_weeks=1, test_weeks=1)
    with pytest.raises(schema.InputError) as refused:
        preprocess(schema.resolve_files(str(logs)), None, str(tmp_path / "out"), config)
    message = str(refused.value)
    assert "2024-01-01 to 2024-01-28" in message and "need 8 weeks at least" in message, message
    assert "--horizon-days 35" in message and "\n" not in message
    assert not os.path.exists(tmp_path / "out")
    # The same logs with a label window that fits them go through, with lists for both runs.
    fits = PreprocessConfig(
        examples=ExampleConfig(history_length=2, horizon_days=7, cutoffs=1), val_weeks=1, test_weeks=1
    )
    stats = preprocess(schema.resolve_files(str(logs)), None, str(tmp_path / "out"), fits)
    assert all(counts["lists"] > 0 for counts in stats["examples"].values())


@pytest.mark.faults
def test_cutoffs_where_no_household_has_a_list_are_left_out_and_said(ray_session, tmp_path, capsys):
    """An early cutoff of a short log comes before its first purchase: no list, no directory, yet
    stats.json recorded it, and the training job refused the DATA ("preprocessed with
    --state-only?") while the model save and the boosted ranker failed on the missing folder."""
    from jobs.cli import check_data
    from ncf.data.examples import listed_rows

    logs = tmp_path / "logs.csv"
    logs.write_text(FOUR_WEEK_LOG)
    config = PreprocessConfig(
        examples=ExampleConfig(history_length=2, horizon_days=7, cutoffs=3), val_weeks=1, test_weeks=1
    )
    data = str(tmp_path / "out")
    stats = preprocess(schema.resolve_files(str(logs)), None, data, config)
    assert "note: no household has a training list at" in capsys.readouterr().out
    recorded = stats["cutoffs"]["validated"]
    assert 0 < len(recorded) < 3 and all(os.path.isdir(layout.examples_dir(data, c)) for c in recorded)
    assert check_data(data, ("validated", "refit")) == data
    sizes = layout.DataStats(data).vocab_sizes
    users, _ = listed_rows(data, recorded, sizes["num_users"], sizes["num_products"])
    assert users[1:].any()


def test_no_products_stats_are_computed_at_cutoffs_before_the_first_purchase(
    ray_session, tmp_path, monkeypatch, capsys
):
    """Each cutoff's products' stats are a Ray task reading the whole state (minutes and GBs at
    scale); a short log's earliest cutoffs, at or before its first purchase, have no list (a list
    needs a purchase before its cutoff), yet their stats were computed."""
    from ncf.data import preprocess as preprocessing

    logs = tmp_path / "logs.csv"
    logs.write_text(FOUR_WEEK_LOG)
    config = PreprocessConfig(
        examples=ExampleConfig(history_length=2, horizon_days=7, cutoffs=3), val_weeks=1, test_weeks=1
    )
    asked = []

    def recorded_stats_at(output, category, cutoffs):
        asked.extend(cutoffs)
        return stats_at(output, category, cutoffs)

    monkeypatch.setattr(preprocessing, "stats_at", recorded_stats_at)
    stats = preprocess(schema.resolve_files(str(logs)), None, str(tmp_path / "out"), config)
    start, end = stats["boundaries"]["start"], stats["boundaries"]["end"]
    scheduled = {
        REFIT: config.examples.schedule(end + 1),
        VALIDATED: config.examples.schedule(stats["boundaries"]["val_start"]),
    }
    early = sorted({c for run in scheduled.values() for c in run if c <= start})
    assert early, scheduled  # the log is short enough for the test to mean something
    assert asked[0] == end + 1 and all(c > start for c in asked[1:]), (asked, start)
    assert sorted(asked[1:]) == sorted({c for run in scheduled.values() for c in run} - set(early))
    assert f"({len(early)} more come before the first purchase: no list there)" in capsys.readouterr().out
    assert all(counts["lists"] > 0 for counts in stats["examples"].values())
    assert not set(early) & {c for run in stats["cutoffs"].values() for c in run}


@pytest.mark.faults
def test_a_catalog_keyed_by_other_ids_is_reported_on_the_console(ray_session, tmp_path, capsys):
    """Zero-padded codes in the catalog, integers in the logs: every product's department and
    category became unknown, and only stats.json said so."""
    logs = tmp_path / "logs.csv"
    logs.write_text(
        "user_id,product_id,timestamp\n"
        + "".join(f"u{d % 3},{d % 4 + 1},2024-{m:02d}-{d:02d}\n" for m in range(1, 4) for d in range(1, 29))
    )
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(
        "product_id,department,category\n0001,Dairy,Milk\n0002,Bakery,Bread\n0003,Dairy,Cheese\n4,Deli,Ham\n"
    )
    config = PreprocessConfig(
        examples=ExampleConfig(history_length=2, horizon_days=7, cutoffs=1), val_weeks=1, test_weeks=1
    )
    stats = preprocess(
        schema.resolve_files(str(logs)), schema.resolve_files(str(catalog)), str(tmp_path / "out"), config
    )
    assert stats["products_missing_from_catalog"] == 3
    out = capsys.readouterr().out
    assert "WARNING: 3 of 4 products (75%) are not in the catalog" in out
    assert "match the logs'?" in out


@pytest.mark.faults
def test_a_catalog_that_names_none_of_the_logs_products_is_refused(ray_session, tmp_path):
    """Every product zero-padded in the catalog, integers in the logs: every department and
    category became unknown, with a console warning only (a review). Refused, naming one id of
    each side, before the state is built."""
    logs = tmp_path / "logs.csv"
    logs.write_text(
        "user_id,product_id,timestamp\n"
        + "".join(f"u{d % 3},{d % 4 + 1},2024-{m:02d}-{d:02d}\n" for m in range(1, 4) for d in range(1, 29))
    )
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("product_id,department,category\n0001,Dairy,Milk\n0002,Bakery,Bread\n0004,Deli,Ham\n")
    config = PreprocessConfig(
        examples=ExampleConfig(history_length=2, horizon_days=7, cutoffs=1), val_weeks=1, test_weeks=1
    )
    out = str(tmp_path / "out")
    with pytest.raises(schema.InputError) as refused:
        preprocess(schema.resolve_files(str(logs)), schema.resolve_files(str(catalog)), out, config, state_only=True)
    message = str(refused.value)
    assert message.startswith(f"{catalog}: none of the log's 4 products is in the product catalog (the log has e.g. ")
    assert "the catalog '0001')" in message and "\n" not in message, message
    assert not os.path.exists(out)
    # Every product id unusable (Excel's 4.00638E+12 for an EAN): no row left, yet not "no catalog".
    catalog.write_text("product_id,department,category\n4.00638E+12,Dairy,Milk\n4.00639E+12,Deli,Ham\n")
    with pytest.raises(schema.InputError, match="none of the catalog's 2 rows has a usable product id"):
        preprocess(schema.resolve_files(str(logs)), schema.resolve_files(str(catalog)), out, config, state_only=True)


def _damage_column(path, column: str) -> None:
    """Eight bytes flipped in the middle of ``column``'s data in the first row group: the footer
    (names, types, row counts) still reads, that column's pages do not."""
    meta = pq.read_metadata(path)
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    middle = start + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _wide_catalog(path, damaged: str) -> None:
    """A Parquet catalog of 300 products with an image column beside the contract's, ``damaged``."""
    n = 300
    table = pa.table(
        {
            "product_id": pa.array(range(1, n + 1), pa.int64()),
            "department": [f"Dept {i % 7}" for i in range(n)],
            "category": [f"Category number {i}" for i in range(n)],
            "image": [bytes([i % 251]) * 8 + bytes(range(256)) * 4 for i in range(n)],
        }
    )
    pq.write_table(table, path)
    _damage_column(path, damaged)
    assert pq.read_schema(path).names == table.column_names  # the footer reads: check_columns passes it
    with pytest.raises(OSError):
        pq.read_table(path)


@pytest.mark.faults
def test_a_parquet_catalog_whose_data_is_damaged_is_one_line_before_ray_starts(
    ray_session, tmp_path, monkeypatch, capsys
):
    """A few bytes damaged in a Parquet catalog's data ("Corrupt snappy compressed data"): its
    footer passed the checks before Ray, the whole log was read and split, and the job ended in
    Ray's traceback, exit 1, where the same fault in a log is one line (a review, 2026-12-06).
    check_inputs reads each Parquet catalog's three columns through, streamed, and refuses the
    file as a log's would be refused; Ray's reader keeps the same line as its fallback."""
    logs = tmp_path / "logs.csv"
    logs.write_text(FOUR_WEEK_LOG)
    catalog = tmp_path / "catalog.parquet"
    _wide_catalog(catalog, damaged="category")
    files = (schema.resolve_files(str(logs)), schema.resolve_files(str(catalog)))
    with pytest.raises(schema.InputError) as refused:
        check_inputs(*files)
    message = str(refused.value)
    assert message.startswith(f"{catalog}: unreadable parquet file (") and "\n" not in message, message
    # Ray's reader of a catalog nobody checked first (the fallback behind check_inputs) says the same.
    config = PreprocessConfig(examples=ExampleConfig(history_length=2), val_weeks=1, test_weeks=1)
    with pytest.raises(schema.InputError) as fallback:
        preprocess(*files, str(tmp_path / "out"), config, inputs_checked=True)
    assert str(fallback.value) == message
    assert not os.path.exists(tmp_path / "out")

    capsys.readouterr()
    argv = ["--input", str(logs), "--products", str(catalog), "--output", str(tmp_path / "out")]
    assert _refused(argv, monkeypatch, capsys) == f"error: {message}"


@pytest.mark.faults
def test_a_parquet_catalog_is_read_for_its_three_columns_only(ray_session, tmp_path):
    """Ray read a Parquet catalog whole: its images or embeddings too, for nothing, and a damaged
    page among them failed the job after the whole log (a review, 2026-12-06). The contract's
    three columns are read, before Ray starts and by Ray."""
    from ncf.data import preprocess as preprocessing

    catalog = tmp_path / "catalog.parquet"
    _wide_catalog(catalog, damaged="image")
    logs = tmp_path / "logs.csv"
    logs.write_text("user_id,product_id,timestamp\nu1,1,2024-01-01\n")
    check_inputs(schema.resolve_files(str(logs)), schema.resolve_files(str(catalog)))
    frame, stats = preprocessing._read_catalog(schema.resolve_files(str(catalog)))
    assert list(frame.columns) == ["product_id", "department", "category"]
    assert (len(frame), stats["catalog_rows"]) == (300, 300)
    assert frame.iloc[0].tolist() == ["1", "Dept 0", "Category number 0"]


@pytest.mark.faults
def test_products_missing_from_the_catalog_but_for_their_formatting_are_counted(capsys):
    """Log ids ``007`` against a catalog's 7 were "1 of 2 products are not in the catalog", with
    no word of the leading zeros: the log-only check compares the log's ids among themselves (a
    review, 2026-12-06). The products the catalog lacks are compared with its ids once their
    formatting is taken away, both ways, counted with the first pair; nothing is matched."""
    from ncf.data import preprocess as preprocessing

    twins = preprocessing._catalog_format_twins
    catalog_ids = pa.array(["7", "123", "0042", "x9"])
    assert twins(pa.array(["007", "42", '="123"', "8", "x09"]), catalog_ids) == (3, ["007", "7"])
    assert twins(pa.array(["8", "x09"]), catalog_ids) == (0, None)
    assert twins(pa.array([], pa.string()), catalog_ids) == (0, None)
    assert twins(pa.array(["007"]), pa.array([], pa.string())) == (0, None)

    stats = {
        "products_missing_from_catalog": 4,
        "products_missing_examples": ["1", "2", "3"],
        "products_missing_differing_only_in_format": 3,
        "products_missing_differing_only_in_format_example": ["1", "0001"],
    }
    preprocessing._report_catalog_format_twins(stats)
    assert capsys.readouterr().out.startswith(
        "[preprocess] WARNING: 3 of the 4 products not in the catalog are in it written otherwise"
    )
    files = schema.InputFiles(["catalog.csv"], "csv")
    frame = pd.DataFrame({"product_id": ["0001"], "department": ["Dairy"], "category": ["Milk"]})
    with pytest.raises(schema.InputError) as refused:
        preprocessing._refuse_unmatched_catalog(files, frame, 1, stats, products=4)
    assert str(refused.value).endswith(
        "give a catalog keyed by the log's product ids; 3 of them are in it written otherwise (leading zeros, a "
        "leading ' or +, Excel's =\"...\"), e.g. '1' as '0001'"
    )


@pytest.mark.faults
def test_products_the_catalog_names_written_otherwise_are_warned_of(ray_session, tmp_path, capsys):
    """The job's end of the drill above: a CSV log's 007 and 123 against a Parquet catalog's
    int64 7 and 123. A WARNING names the count and a pair, stats.json records the count beside
    the catalog's coverage, and 007 still ranks with an unknown department (nothing matched)."""
    logs = tmp_path / "logs.csv"
    logs.write_text(
        "user_id,product_id,timestamp\n"
        + "".join(f"u{d % 3},{('007', '123')[d % 2]},2024-{m:02d}-{d:02d}\n" for m in range(1, 4) for d in range(1, 29))
    )
    catalog = tmp_path / "catalog.parquet"
    pq.write_table(
        pa.table({"product_id": pa.array([7, 123], pa.int64()), "department": ["Deli"] * 2, "category": ["Ham"] * 2}),
        catalog,
    )
    config = PreprocessConfig(
        examples=ExampleConfig(history_length=2, horizon_days=7, cutoffs=1), val_weeks=1, test_weeks=1
    )
    out = str(tmp_path / "out")
    stats = preprocess(schema.resolve_files(str(logs)), schema.resolve_files(str(catalog)), out, config, True)
    assert stats["products_missing_from_catalog"] == 1 and stats["products_missing_examples"] == ["007"]
    assert stats["products_missing_differing_only_in_format"] == 1
    assert stats["products_missing_differing_only_in_format_example"] == ["007", "7"]
    assert layout.DataStats(out).raw["products_missing_differing_only_in_format"] == 1
    console = capsys.readouterr().out
    assert "1 of 2 products (50%) are not in the catalog" in console
    assert (
        "WARNING: 1 of the 1 products not in the catalog is in it written otherwise (leading zeros, a leading ' "
        "or +, Excel's =\"...\"), e.g. '007' in the logs, '7' in the catalog: kept apart, with an unknown "
        "department and category"
    ) in console
    products = Vocabularies.load(layout.vocab_dir(out)).products
    departments = dict(zip(products.ids.to_pylist(), products.column("department")[1:]))
    assert departments == {"007": schema.UNKNOWN, "123": "Deli"}


def test_ids_differing_only_in_formatting_are_counted_not_merged():
    """00123 beside 123, Excel's ="00123", '123, +7 beside 7: each its own household or product.
    Counted with examples (only the ids formatting may change are rewritten); ids such as 0abc
    are no numbers and keep their zero."""
    ids = pa.array(["00123", "123", "'123", '="00123"', "+7", "7", "0", "00", "abc", "0abc", "8", '="x"'])
    assert schema.ids_differing_only_in_format(ids) == (
        8,
        [["0", "00"], ["'123", "00123", "123", '="00123"'], ["+7", "7"]],
    )
    assert schema.ids_differing_only_in_format(pa.array(["12", "7", "007x", "+", "'", '=""'])) == (0, [])


@pytest.mark.faults
def test_ids_differing_only_in_formatting_are_warned_of_for_csv_and_parquet(ray_session, tmp_path, capsys):
    """A CSV of household 0012 beside 12 and product +3 beside 3: two households, two products,
    silently (a review). Now a WARNING per column and their counts in stats.json; a Parquet text
    column the same (its vocabulary is text), an integer one has one spelling per id."""
    import ray

    rows = [f"{d % 3 + 11},{d % 4 + 1},2024-{m:02d}-{d:02d}" for m in range(1, 4) for d in range(1, 29)]
    rows[0] = "0012," + rows[0].split(",", 1)[1]
    rows[1] = rows[1].split(",")[0] + ",+3," + rows[1].split(",")[2]
    logs = tmp_path / "logs.csv"
    logs.write_text("user_id,product_id,timestamp\n" + "\n".join(rows) + "\n")
    config = PreprocessConfig(
        examples=ExampleConfig(history_length=2, horizon_days=7, cutoffs=1), val_weeks=1, test_weeks=1
    )
    stats = preprocess(schema.resolve_files(str(logs)), None, str(tmp_path / "out"), config, state_only=True)
    assert stats["ids_differing_only_in_format"] == {"user_id": 2, "product_id": 2}
    assert stats["ids_differing_only_in_format_examples"] == {"user_id": [["0012", "12"]], "product_id": [["+3", "3"]]}
    out = capsys.readouterr().out
    assert "WARNING: 2 user_id values equal another but for their formatting" in out
    assert "e.g. [['+3', '3']]: each is a product of its own" in out
    # Parquet: a text column's ids are looked at as a CSV's are; an integer column's are not.
    frame = pd.DataFrame({"user_id": ["0012", "12", "u1"], "product_id": ["1", "2", "3"], "ts": [1, 2, 3]})
    known = ray.data.from_pandas(frame)
    _, notes = build_vocabularies(known, None, {"user_id": "str", "product_id": "int"})
    assert notes["ids_differing_only_in_format"] == {"user_id": 2, "product_id": 0}


@pytest.mark.slow
def test_a_million_synthetic_purchase_lines_go_through(ray_session, tmp_path):
    from ncf.data import datasets

    spec = datasets.SyntheticSpec(num_users=4_400, num_products=20_000, baskets_per_user=30.0, basket_size=8.0, seed=1)
    logs, catalog = datasets.write_synthetic(str(tmp_path / "raw"), spec)
    config = PreprocessConfig(examples=ExampleConfig(history_length=5, cutoffs=2))
    stats = preprocess(schema.resolve_files(logs), schema.resolve_files(catalog), str(tmp_path / "data"), config)
    assert stats["rows_in"] >= 1_000_000
    assert stats["rows_in"] == stats["rows_kept"] + stats["rows_quarantined"]
    assert all(0 < run["positives"] < run["candidates"] for run in stats["examples"].values())
    assert stats["vocab_sizes"]["num_users"] == spec.num_users + 1


def test_synthetic_tastes_over_latent_groups_cut_across_the_categories():
    """``taste_groups``: the favoured sets are latent product groups, not categories, so the
    categories no longer say what a household likes (a harder log for collaborative filtering)."""
    by_category = datasets.SyntheticSpec(
        num_users=60,
        num_products=2_000,
        num_departments=4,
        categories_per_department=5,
        staple_share=0.0,
        taste_categories=2,
        taste_share=0.8,
        seed=5,
    )
    by_group = dataclasses.replace(by_category, taste_groups=20)
    category, group = datasets.synthetic_category(by_category), datasets.synthetic_taste_sets(by_group)
    assert (datasets.synthetic_taste_sets(by_category) == category).all()

    def top_two_share(spec, sets) -> float:
        lines = pd.DataFrame(datasets.synthetic_users(np.arange(60), spec))
        counts = lines.assign(s=sets[lines[schema.PRODUCT_ID]]).groupby([schema.USER_ID, "s"]).size()
        per_user = counts.groupby(level=0).apply(lambda c: c.nlargest(2).sum() / c.sum())
        return float(per_user.mean())

    assert top_two_share(by_category, category) > 0.6 and top_two_share(by_group, group) > 0.6
    assert top_two_share(by_group, category) < 0.6  # the groups' tastes spread over the categories


@pytest.mark.faults
def test_list_rows_past_arrows_int32_offsets_become_chunks_of_one_table(monkeypatch, small_data, tmp_path):
    """One list file holds up to 2,048 households at every cutoff: with ~26 cutoffs of defaults,
    or thousands of negatives a list, its features' offsets wrapped past 2^31 and pyarrow refused
    the file late in preprocessing (a review, 2026-12-05). Such rows are built in chunks now."""
    from ncf.data import examples as E

    data, _ = small_data
    cutoff = layout.DataStats(data).cutoffs("validated")[0]
    table = pads.dataset(layout.examples_dir(data, cutoff), format="parquet").to_table()
    rows = table.slice(0, 7).to_pylist()
    history_length = len(rows[0][E.HISTORY])
    for row in rows:
        row.setdefault(E.CUTOFF, cutoff)  # the folder's name holds it
        row[E.FEATURES] = np.asarray(row[E.FEATURES], np.float32).reshape(len(row[E.PRODUCT]), -1)
        for name in (E.HISTORY, E.HISTORY_AGE_DAYS, E.TIME_PARTS, E.PRODUCT, E.LABEL, E.LOG_Q):
            row[name] = np.asarray(row[name])
    whole = E.to_arrow(rows, history_length)
    assert whole.column(E.FEATURES).num_chunks == 1
    monkeypatch.setattr(E, "MAX_LIST_VALUES", 2 * len(rows[0][E.PRODUCT]) * rows[0][E.FEATURES].shape[1])
    chunked = E.to_arrow(rows, history_length)
    assert chunked.column(E.FEATURES).num_chunks >= 3
    assert chunked.combine_chunks().equals(whole.combine_chunks())
    assert whole.select(E.TRAINING_COLUMNS).equals(table.slice(0, 7).select(E.TRAINING_COLUMNS))
    # And written as such: the file's writer took the whole table in its order, which joined the
    # chunks into one array and overflowed there (pyarrow: "offset overflow while concatenating
    # arrays", at 2 x 1.2e9 values; a review, 2026-12-07). It sorts each cutoff's lists alone now:
    # the same files as from one chunk, each cutoff's households in the scrambled order.
    from ncf.data.preprocess import LIST_FILE, _write_list_file
    from ncf.data.user_state import scrambled

    both = [{**row, E.CUTOFF: c} for c in (cutoff, cutoff + 86_400) for row in rows]
    written = {}
    from ncf.data import preprocess as pipeline

    chunks = E.to_arrow(both, history_length)
    assert chunks.column(E.FEATURES).num_chunks >= 3
    sorted_at_once = []  # how many lists each sort of the writer took (the take that follows joins them)

    def scrambled_counted(users):
        sorted_at_once.append(len(users))
        return scrambled(users)

    monkeypatch.setattr(pipeline, "scrambled", scrambled_counted)
    for name, lists in (("whole", chunks.combine_chunks()), ("chunked", chunks)):
        root = tmp_path / name
        _write_list_file(lists.append_column(LIST_FILE, pa.array(np.full(lists.num_rows, 3))), str(root))
        written[name] = {p.relative_to(root): pq.read_table(p) for p in sorted(root.rglob("*.parquet"))}
    assert sorted_at_once and max(sorted_at_once) == len(rows), sorted_at_once  # one cutoff's lists, not both
    assert list(written["whole"]) == [Path(f"{E.CUTOFF}={c}/lists-000003.parquet") for c in (cutoff, cutoff + 86_400)]
    for path, part in written["chunked"].items():
        assert part.equals(written["whole"][path]), path
        users = part.column(E.USER).to_numpy()
        assert len(users) == len(rows) and (np.diff(scrambled(users)) >= 0).all(), path
