"""CLIs that explain themselves (issue 22): every option of every job has help text and shows its
default; a path that is not what a job expects is one line on stderr naming it and what to run
first, exit status 2, before Ray starts; ``--version`` prints the package and model format versions."""

import argparse
import errno
import importlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from helpers import REPO, readline_within

import ncf
from jobs import cli
from ncf.data.features import FEATURES_VERSION
from ncf.data.neighbours import FILE as NEIGHBOURS_FILE
from ncf.jsonio import write_json
from ncf.model.directory import FORMAT_VERSION

JOBS = ["preprocess", "train", "evaluate", "tune_sweep", "batch_score", "deploy", "demo", "models", "verify"]


def _parser(job: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``jobs.<job>`` builds (caught as it is made), after ``--help`` ran on it."""
    module = importlib.import_module(f"jobs.{job}")
    made = []

    def recording(*args, **kwargs):
        made.append(cli.job_parser(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(module, "job_parser", recording)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--help"])
    assert exit_info.value.code == 0
    return made[0]


def _actions(parser: argparse.ArgumentParser):
    """Every option and argument, those of subcommands too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield parser, action


@pytest.mark.parametrize("job", JOBS)
def test_every_option_has_help_and_shows_its_default(job, monkeypatch, capsys):
    parser = _parser(job, monkeypatch)
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: python -m jobs.{job}")
    for owner, action in _actions(parser):
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and len(action.help) > 8, f"{job} {name}: no help text"
        text = owner.formatter_class(owner.prog)._get_help_string(action) % {**vars(action), "prog": owner.prog}
        if action.nargs == 0:  # a flag: its default is the setting behind it (--no-resume's True), not the flag's
            assert "(default:" not in text, f"{job} {name}: a flag's default shown"
        elif not action.required and not cli._no_default(action.default):
            assert f"(default: {action.default})" in text, f"{job} {name}: default not shown"
        if owner is parser:
            assert name in shown and action.help.split()[0] in shown
    # Jobs that start Ray say how they find the cluster (RAY_ADDRESS): no option does.
    starts_ray = "init_ray()" in inspect.getsource(importlib.import_module(f"jobs.{job}"))
    assert (cli.RAY_CLUSTER_EPILOG in shown) == starts_ray, f"{job}: starts Ray {starts_ray}"


def test_version_is_pyprojects_and_names_the_model_format(capsys):
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        project = f.read().split("[project]", 1)[1]
    assert ncf.__version__ == re.search(r'^version = "([^"]+)"', project, re.M).group(1)
    train = importlib.import_module("jobs.train")
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"advanced-ncf-platform {ncf.__version__} (model directory format {FORMAT_VERSION})"
    )


# -- paths that are not what a job expects ---------------------------------------------------------------


@pytest.fixture
def paths(tmp_path):
    """A missing, an empty, an unrelated, a state-only DATA and a non-model directory."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not DATA")
    (tmp_path / "state").mkdir()
    write_json(str(tmp_path / "state" / "stats.json"), {"state_only": True, "cutoffs": {}, "boundaries": {}})
    (tmp_path / "state" / "vocab").mkdir()
    # DATA with (empty) training lists, a model directory as far as the checks before Ray read it,
    # and a purchase log.
    (tmp_path / "lists" / "examples" / "cutoff=1").mkdir(parents=True)
    write_json(
        str(tmp_path / "lists" / "stats.json"),
        {"cutoffs": {"validated": [1]}, "boundaries": {}, "features_version": FEATURES_VERSION},
    )
    # The same lists computed by code of an older feature definition (before the version was kept).
    (tmp_path / "old-lists" / "examples" / "cutoff=1").mkdir(parents=True)
    write_json(str(tmp_path / "old-lists" / "stats.json"), {"cutoffs": {"validated": [1]}, "boundaries": {}})
    # A DATA with the neighbours file but of another features version: its product stats are other numbers.
    (tmp_path / "other-version" / "product_stats").mkdir(parents=True)
    (tmp_path / "other-version" / "product_stats" / NEIGHBOURS_FILE).write_bytes(b"")
    write_json(
        str(tmp_path / "other-version" / "stats.json"),
        {"state_only": True, "cutoffs": {}, "boundaries": {}, "features_version": FEATURES_VERSION + 1},
    )
    (tmp_path / "model").mkdir()
    sizes = {"num_users": 10, "num_products": 1000, "num_departments": 2, "num_categories": 2}
    config = {"format_version": FORMAT_VERSION, "features_version": FEATURES_VERSION, "version": "v1"}
    config.update(model=sizes, ranking={})
    write_json(str(tmp_path / "model" / "config.json"), config)
    (tmp_path / "model" / "model.pt").write_bytes(b"")
    (tmp_path / "logs.csv").write_text("user_id,product_id,timestamp\nu1,p1,2024-01-01\n")
    (tmp_path / "list.jsonl").write_text('{"model": "advanced_ncf", "seeds": 3}\n[1, 2]\n')
    (tmp_path / "binary.jsonl").write_bytes(b"\x9c\x00\xff")
    (tmp_path / "null-seeds.jsonl").write_text('{"model": "advanced_ncf", "seeds": null, "recall@10_sd": 0.01}\n')
    (tmp_path / "text-seeds.jsonl").write_text('{"model": "advanced_ncf", "seeds": "3", "recall@10_sd": 0.01}\n')
    (tmp_path / "no-rows.jsonl").write_text("\n")
    (tmp_path / "float-seeds.jsonl").write_text('{"model": "advanced_ncf", "seeds": 3.0}\n')
    (tmp_path / "no-model.jsonl").write_text('{"model": "advanced_ncf"}\n{"recall@10": 0.4}\n')
    (tmp_path / "text-version.jsonl").write_text('{"model": "advanced_ncf", "features_version": "<img src=x>"}\n')
    (tmp_path / "empty.db").write_bytes(b"")
    names = ("missing", "empty", "other", "state", "lists", "old-lists", "other-version", "model", "logs.csv")
    names += ("list.jsonl", "binary.jsonl", "empty.db", "null-seeds.jsonl", "text-seeds.jsonl", "no-rows.jsonl")
    names += ("float-seeds.jsonl", "no-model.jsonl", "text-version.jsonl")
    return {name: str(tmp_path / name) for name in names}


def _cases(p: dict, out: str) -> list:
    """(job, argv, what the one line must say)."""
    return [
        ("train", ["--data", p["missing"], "--output", out], [p["missing"], "no such directory", "jobs.preprocess"]),
        ("train", ["--data", p["empty"], "--output", out], [p["empty"], "empty", "jobs.preprocess first"]),
        ("train", ["--data", p["other"], "--output", out], [p["other"], "no stats.json", "jobs.preprocess"]),
        ("train", ["--data", p["state"], "--output", out], [p["state"], "no training lists", "--state-only"]),
        ("train", ["--data", p["other"], "--output", out, "--model", "{oops"], ["--model", "not JSON"]),
        (
            "train",
            ["--data", p["old-lists"], "--output", out],
            [p["old-lists"], f"features version 1, this code computes version {FEATURES_VERSION}", "preprocess again"],
        ),
        ("tune_sweep", ["--data", p["empty"], "--output", out], [p["empty"], "jobs.preprocess first"]),
        ("evaluate", ["--model", p["other"], "--data", p["other"]], [p["other"], "no stats.json"]),
        ("evaluate", ["--baselines-only", "--data", p["missing"]], [p["missing"], "jobs.preprocess first"]),
        # A DATA of features version 2 or older: its state lacks the neighbours every ranking reads.
        ("evaluate", ["--baselines-only", "--data", p["old-lists"]], [p["old-lists"], "co-purchase neighbours"]),
        (
            "evaluate",
            ["--baselines-only", "--data", p["other-version"]],
            [p["other-version"], f"features version {FEATURES_VERSION + 1}, this code computes"],
        ),
        ("batch_score", ["--model", p["empty"], "--data", p["other"], "--output", out], [p["empty"], "jobs.train"]),
        ("batch_score", ["--model", p["other"], "--data", p["other"], "--output", out], ["no config.json"]),
        ("deploy", ["--model", p["missing"]], [p["missing"], "not a model directory", "jobs.train first"]),
        ("deploy", ["--model", "current"], ["no version of advanced-ncf is current", "jobs.train", "promote"]),
        ("deploy", ["--model", p["missing"], "--detach"], ["--detach", "RAY_ADDRESS", "HOST:6379"]),
        ("models", ["register", p["empty"]], [p["empty"], "jobs.train first"]),
        ("verify", [p["missing"]], [p["missing"], "not a model directory", "jobs.train first"]),
        ("verify", [p["model"]], [p["model"], "manifest"]),
        ("verify", [p["other"], "--seal"], [p["other"], "no config.json"]),
        ("preprocess", ["--input", p["missing"], "--output", out], [p["missing"], "no such file"]),
        # Found by the CLI review of 2026-11-30: each used to reach Ray (some a traceback, exit 1).
        ("preprocess", ["--input", p["state"], "--output", out], [p["state"], "jobs.preprocess output (DATA)"]),
        ("preprocess", ["--input", p["model"], "--output", out], [p["model"], "a model directory, not purchase logs"]),
        (
            "preprocess",
            ["--input", p["logs.csv"], "--output", out, "--own-negative-rate", "2"],
            ["training-list settings", "own_negative_rate"],
        ),
        # Found by the docs audit of 2026-12-03: the catalog was dropped without a word.
        (
            "preprocess",
            ["--dataset", "synthetic", "--products", p["logs.csv"], "--output", out],
            ["--products goes with --input"],
        ),
        ("train", ["--data", p["other"], "--output", out, "--model", p["model"]], ["a model directory is --model of"]),
        # Found by probing the commands with odd input (2026-12-03): each ended in a traceback,
        # was accepted silently, or failed only after the work.
        ("models", ["promote", "\u00b2"], ["a version is a number"]),
        ("models", ["--name", "o'brien", "list"], ["--name", "no quotes"]),
        ("models", ["--tracking-uri", f"sqlite:///{p['logs.csv']}", "list"], ["tracking store", "does not open"]),
        ("train", ["--data", p["other"], "--output", out, "--model", '{"num_heads": 0}'], ["num_heads must be"]),
        (
            "train",
            ["--data", p["other"], "--output", out, "--model-config", '{"num_heads": 0}'],
            ["--model-config", "num_heads must be"],
        ),
        ("train", ["--data", p["other"], "--output", out, "--model", '{"use_attention": "false"}'], ["true or false"]),
        ("train", ["--data", p["other"], "--output", out, "--validated-output", out + "-v"], ["goes with --refit"]),
        (
            "train",
            ["--data", p["other"], "--output", out, "--refit", "--validated-output", out + "/"],
            ["the same directory as --output"],
        ),
        ("train", ["--data", p["lists"], "--output", p["lists"] + "/model"], ["inside the input"]),
        # Found by the jobs review of 2026-12-06: an unset variable (--output "$MODEL") was the
        # working directory, which --overwrite swapped out and deleted after the training; a refit
        # whose two outputs nest wrote into the registered validated model, or replaced it.
        ("train", ["--data", p["other"], "--output", "", "--overwrite"], ["--output is empty"]),
        (
            "train",
            ["--data", p["other"], "--output", out, "--refit", "--validated-output", " "],
            ["--validated-output is empty"],
        ),
        ("tune_sweep", ["--data", p["lists"], "--output", ""], ["--output is empty"]),
        ("batch_score", ["--model", p["model"], "--data", p["other"], "--output", ""], ["--output is empty"]),
        ("evaluate", ["--model", p["other"], "--data", p["other"], "--report", ""], ["--report is empty"]),
        ("demo", ["--workdir", ""], ["--workdir is empty"]),
        ("demo", ["--name", ""], ["--name is empty"]),
        ("train", ["--data", p["other"], "--output", out, "--name", " "], ["--name is empty"]),
        (
            "train",
            ["--data", p["other"], "--output", out + "/refit", "--refit", "--validated-output", out],
            ["one inside the other"],
        ),
        ("train", ["--data", p["other"], "--output", out, "--storage", out + "/checkpoints"], ["--storage"]),
        (
            "train",
            ["--data", p["other"], "--output", out + "/r1/model", "--storage", out, "--name", "r1"],
            ["inside the run r1 there"],
        ),
        (
            "preprocess",
            ["--input", p["logs.csv"], "--output", os.path.join(p["model"], "config.json", "data")],
            ["config.json is a file, not a directory"],
        ),
        (
            "evaluate",
            ["--model", p["other"], "--data", p["other"], "--ablations", p["logs.csv"]],
            ["goes with --report"],
        ),
        # Found by the evaluation review of 2026-12-04: accepted, and did nothing.
        ("evaluate", ["--model", p["other"], "--data", p["other"], "--no-baselines", "--retune"], ["not with"]),
        (
            "evaluate",
            ["--model", p["other"], "--data", p["other"], "--report", out, "--ablations", p["logs.csv"]],
            ["line 1 is not JSON"],
        ),
        ("evaluate", ["--model", p["other"], "--data", p["other"], "--report", p["logs.csv"]], ["is not a directory"]),
        ("tune_sweep", ["--data", p["lists"], "--output", p["lists"]], ["contains the input"]),
        ("tune_sweep", ["--data", p["lists"], "--output", out, "--resume"], ["--resume: no sweep to resume"]),
        (
            "batch_score",
            ["--model", p["model"], "--data", p["other"], "--output", p["other"] + "/scores", "--k", "5"],
            ["overlaps --data"],
        ),
        # Found by the CLI review of 2026-12-05: a report inside MODEL failed every later rollout
        # (a file its manifest lacks); an empty --data was verified as the working directory; a bad
        # ablations file failed after the evaluation; a --cache file, and lists without negatives.
        (
            "evaluate",
            ["--model", p["other"], "--data", p["other"], "--report", p["other"] + "/r"],
            ["overlaps --model"],
        ),
        # Found by the CLI review of 2026-12-08: a report inside another model than the one
        # evaluated (the deployment model beside the validated one) broke that model's rollouts.
        ("evaluate", ["--model", p["other"], "--data", p["other"], "--report", p["model"] + "/r"], ["inside the mod"]),
        ("evaluate", ["--model", p["other"], "--data", p["other"], "--report", p["state"]], ["inside the DATA"]),
        (
            "evaluate",
            ["--model", p["other"], "--data", p["other"], "--report", out, "--ablations", p["list.jsonl"]],
            ["line 2 is a JSON list, not an object"],
        ),
        (
            "evaluate",
            ["--model", p["other"], "--data", p["other"], "--report", out, "--ablations", p["binary.jsonl"]],
            ["not UTF-8 text"],
        ),
        # Found by the report review of 2026-12-06: seeds the report's table compares with 1 raised a
        # TypeError after the whole evaluation; a file of no rows gave "No ablation results given".
        *(
            (
                "evaluate",
                ["--model", p["other"], "--data", p["other"], "--report", out, "--ablations", p[name]],
                expected,
            )
            for name, expected in (
                ("null-seeds.jsonl", ["line 1: seeds is null, not an integer of at least 1"]),
                ("text-seeds.jsonl", ['line 1: seeds is "3", not an integer']),
                ("float-seeds.jsonl", ["line 1: seeds is 3.0, not an integer of at least 1"]),
                ("no-model.jsonl", ['line 2 has no model name ("model": null)']),
                # Its warning joined it into the page unescaped (and "4" against 4 gave a nonsense one).
                ("text-version.jsonl", ['line 1: features_version is "<img src=x>", not an integer']),
                ("no-rows.jsonl", ["holds no rows", "bench.ablations"]),
            )
        ),
        ("verify", [p["model"], "--data", ""], ["--data is empty"]),
        ("deploy", ["--model", p["model"], "--data", ""], ["--data is empty"]),
        ("preprocess", ["--dataset", "synthetic", "--output", out, "--cache", p["logs.csv"]], ["--cache", "not a dir"]),
        (
            "preprocess",
            ["--input", p["logs.csv"], "--output", out]
            + [arg for n in ("own", "neighbour", "popular") for arg in (f"--{n}-candidates", "0")]
            + ["--sampled-negatives", "0", "--uniform-negatives", "0"],
            ["training-list settings", "all 0"],
        ),
        (  # one cutoff's lists of a file past Arrow's 2^31 list values: an ArrowInvalid in a task, hours in
            "preprocess",
            ["--input", p["logs.csv"], "--output", out, "--uniform-negatives", "40000"],
            ["training-list settings", "is 40,420, above 32,825", "2^31 list values"],
        ),
        ("models", ["--tracking-uri", f"sqlite:///{p['empty.db']}", "list"], ["empty.db is empty"]),
        ("models", ["--name", "shop-2", "resolve", "current"], ["no version of shop-2 is current"]),
    ]


@pytest.mark.faults
def test_a_refused_register_creates_no_store(paths, tmp_path, capsys):
    """``register`` opened (so created) the store before it looked at the directory: a refused
    folder left a new empty registry behind (the CLI review of 2026-12-05)."""
    from jobs import models

    store = tmp_path / "new" / "mlflow.db"
    with pytest.raises(SystemExit) as exit_info:
        models.main(["--tracking-uri", f"sqlite:///{store}", "register", paths["empty"]])
    assert exit_info.value.code == 2 and not store.exists() and not store.parent.exists()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert paths["empty"] in line and "MODEL" in line and "--model" not in line


@pytest.mark.faults
def test_bad_paths_are_one_line_errors_before_ray_starts(paths, tmp_path, monkeypatch, capsys):
    from ncf import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    registry.Registry()  # nothing registered: "no version of advanced-ncf is current" (no store is its own error)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for job, argv, expected in _cases(paths, str(tmp_path / "out")):
        module = importlib.import_module(f"jobs.{job}")
        if hasattr(module, "init_ray"):
            monkeypatch.setattr(module, "init_ray", lambda *a, _job=job, **k: pytest.fail(f"{_job} started Ray"))
        if hasattr(module, "_ray_started_here"):  # a fresh process, as a user's, not this session's
            monkeypatch.setattr(module, "_ray_started_here", lambda: False)
        with pytest.raises(SystemExit) as exit_info:
            module.main(argv)
        assert exit_info.value.code == 2, (job, argv)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (job, argv, captured.err)
        for part in expected:
            assert part in lines[0], (job, argv, lines[0])
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.faults
def test_preprocess_numbers_that_mean_nothing_are_refused_by_the_parser(capsys):
    """A nan gap quarantined about 1% of the rows as future_timestamp, without an error."""
    from jobs import preprocess

    for option, value, says in (
        ("--future-gap-days", "nan", "must be 0 or more, not nan"),
        ("--synthetic-users", "0", "must be 1 or more, not 0"),
        ("--synthetic-products", "-5", "must be 1 or more, not -5"),
        ("--synthetic-tastes", "-1", "must be 0 or more, not -1"),
        ("--seed", "-1", "must be 0 or more, not -1"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            preprocess.parse_args(["--dataset", "synthetic", "--output", "o", option, value])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"argument {option}: {says}")


@pytest.mark.faults
def test_a_label_window_of_no_days_is_refused_by_the_parser(capsys):
    from jobs import preprocess

    with pytest.raises(SystemExit) as exit_info:
        preprocess.parse_args(["--dataset", "completejourney", "--output", "o", "--horizon-days", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m jobs.preprocess: error: argument --horizon-days: must be 1 or more, not 0"
    )


@pytest.mark.faults
def test_a_ray_address_where_nothing_answers_is_one_line(monkeypatch):
    """RAY_ADDRESS=127.0.0.1:1 left a job retrying the connection for minutes."""
    import socket

    started = time.monotonic()
    with pytest.raises(cli.InputError, match="RAY_ADDRESS=127.0.0.1:1: no Ray head answers there after 1 s"):
        cli.check_head_answers("127.0.0.1:1", wait_s=1)
    assert 1 <= time.monotonic() - started < 10  # waited, within its bound
    with socket.socket() as listening:  # something answering: passed on to Ray
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        cli.check_head_answers(f"127.0.0.1:{listening.getsockname()[1]}")
    cli.check_head_answers("auto")
    cli.check_head_answers("ray://127.0.0.1:1")  # Ray Client's form: Ray's to judge


def _preprocess_joining(tmp_path, ray_address: str) -> subprocess.CompletedProcess:
    """`python -m jobs.preprocess` of a one-line log into ``tmp_path/out``, with RAY_ADDRESS set
    to ``ray_address``: a fresh process, as a user's."""
    logs = tmp_path / "logs.csv"
    logs.write_text("user_id,product_id,timestamp,quantity\nu1,p1,2024-01-01T10:00:00,1\n")
    return subprocess.run(
        [sys.executable, "-m", "jobs.preprocess", "--input", str(logs), "--output", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": ray_address},
    )


@pytest.mark.faults
def test_a_ray_address_ray_cannot_read_is_one_line_before_ray_starts(tmp_path):
    """A RAY_ADDRESS without its port, or with a script's trailing blank, ended in Ray's
    ValueError or ConnectionError traceback, exit 1 (a review of jobs/, 2026-12-06)."""
    for bad in (
        "127.0.0.1",
        "127.0.0.1:6379 ",
        " 127.0.0.1:6379",
        "head:port",
        "head:0",
        "head:65536",
        " ",
        "ray:// x",
    ):
        with pytest.raises(cli.InputError, match="is not an address Ray reads: give the head's HOST:PORT"):
            cli.check_ray_address(bad)
    for good in (
        "127.0.0.1:6379",
        "[::1]:6379",
        "head-0.cluster.local:6379",
        "auto",
        "local",
        "ray://head:10001",
        "anyscale://x",
    ):
        cli.check_ray_address(good)
    done = _preprocess_joining(tmp_path, "127.0.0.1")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: RAY_ADDRESS='127.0.0.1' is not an address Ray reads: give the head's HOST:PORT (6379 unless "
        "`ray start --head --port` said otherwise), auto, or ray://HOST:PORT; unset it to run on a local cluster"
    ], done.stderr[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.faults
def test_ray_address_auto_with_no_cluster_up_is_one_line(monkeypatch):
    """RAY_ADDRESS=auto (which the address check accepts and advises) with no cluster running ended
    in Ray's ConnectionError traceback, exit 1 (a review of the jobs, 2026-12-07). In-process, Ray's
    own refusal raised by hand: "auto" finds any raylet on the machine, the session's cluster too."""
    import ray

    def no_cluster(address=None, **options):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to")

    monkeypatch.setenv("RAY_ADDRESS", "auto")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    monkeypatch.setattr(cli.logs, "configure", lambda **options: None)  # the job's logging, not the test process's
    monkeypatch.setattr(cli, "exit_on_sigterm", lambda: None)
    with pytest.raises(cli.InputError) as refused:
        cli.init_ray()
    message = str(refused.value)
    assert "\n" not in message and message.startswith("RAY_ADDRESS=auto: no Ray cluster answers (Could not find any")
    assert message.endswith("start one (ray start --head) or unset RAY_ADDRESS to run on a local one")


@pytest.mark.faults
def test_ray_address_local_is_no_cluster_and_a_version_mismatch_is_one_line(monkeypatch):
    """RAY_ADDRESS=local (Ray's word for a new local cluster, stopped with the job) passed the
    --detach check: the deploy exited 0 and nothing served once its cluster stopped. A driver whose
    Ray or Python differs from the cluster's (3.11.9 against 3.11.10) ended in Ray's RuntimeError
    traceback (a review of jobs.deploy, 2026-12-07)."""
    import argparse

    import ray

    from jobs import deploy

    for address, joins in (("", False), ("local", False), ("auto", True), ("10.0.0.5:6379", True)):
        monkeypatch.setenv("RAY_ADDRESS", address)
        assert cli.joins_a_cluster() is joins, address
    monkeypatch.setenv("RAY_ADDRESS", "local")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(cli.InputError, match="with RAY_ADDRESS=local. the job's own cluster stops when it exits"):
        deploy._checked(argparse.Namespace(detach=True), {})

    def other_versions(address=None, **options):
        raise RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.60.0\n    Python: 3.11.10\n")

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.setattr(cli, "check_head_answers", lambda address: None)
    monkeypatch.setattr(ray, "init", other_versions)
    monkeypatch.setattr(cli.logs, "configure", lambda **options: None)
    monkeypatch.setattr(cli, "exit_on_sigterm", lambda: None)
    with pytest.raises(cli.InputError) as refused:
        cli.init_ray()
    message = str(refused.value)
    assert "\n" not in message and message.startswith("RAY_ADDRESS=10.0.0.5:6379: the cluster runs another Ray or")
    assert "Python: 3.11.10" in message and message.endswith("or submit it with ray job submit")


# What each job's Ctrl-C line says it left, where the job has no words of its own for the moment.
INTERRUPTED_LEAVES = {
    "preprocess": (["--input", "logs.csv", "--output", "o"], "the output is as it was"),
    "evaluate": (
        ["--model", "m", "--data", "d", "--report", "r"],
        "the rows printed stand (a --report keeps the previous report or a page",
    ),
    "batch_score": (
        ["--model", "m", "--data", "d", "--output", "o"],
        "rerun the same command",
    ),
    "train": (["--data", "d", "--output", "o"], "nothing was trained or written: run the same command again"),
    "tune_sweep": (
        ["--data", "d", "--output", "o", "--trials", "2"],
        "no trial of this run had started: run the same command again",
    ),
}


@pytest.mark.faults
@pytest.mark.parametrize("job", sorted(INTERRUPTED_LEAVES))
def test_ctrl_c_a_job_does_not_answer_itself_is_one_line_and_exit_130(job, monkeypatch, capsys):
    """`python -m jobs.preprocess`, `evaluate` and `batch_score`, and `train` and `tune_sweep`
    before their training, ended a Ctrl-C in a KeyboardInterrupt traceback (a review of jobs/,
    2026-12-06). Run as `python -m` runs them: the module's code as __main__, here with the
    first step of each main (refusing empty paths) interrupted."""
    import runpy
    import warnings

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "refuse_empty_paths", interrupted)  # imported from jobs.cli as __main__ runs
    argv, leaves = INTERRUPTED_LEAVES[job]
    monkeypatch.setattr(sys, "argv", [f"jobs.{job}", *argv])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_info:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: jobs.JOB is imported already (by the other tests)
        try:
            runpy.run_module(f"jobs.{job}", run_name="__main__")
        except KeyboardInterrupt:  # raised out of the test, it would stop pytest
            pytest.fail("Ctrl-C ended in a KeyboardInterrupt traceback")
    assert exit_info.value.code == cli.EXIT_INTERRUPTED
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: interrupted (Ctrl-C); {leaves}"), line


@pytest.mark.faults
def test_a_full_disk_or_a_closed_file_is_one_line_in_every_job_and_a_bugs_oserror_its_traceback(capsys):
    """A disk full while a job wrote its results (a sweep's table, a report) was an OSError
    traceback (a review of tune/, 2026-12-07): jobs.cli.run_main says it in one line, exit 1."""

    def writing(error):
        def main():
            raise error

        return main

    for error, words in (
        (OSError(errno.ENOSPC, "No space left on device", "/out/results.parquet"), "ENOSPC: No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied", "/out/report.html"), "EACCES: Permission denied"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.run_main(writing(error), "the output is as it was", where=lambda: " during the export")
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 1 and line == (
            f"error: {error.filename}: {words} during the export; free space or fix access, then run the same "
            "command again"
        )
    with pytest.raises(FileNotFoundError):  # not the machine's state: a bug's, traceback kept
        cli.run_main(writing(FileNotFoundError(errno.ENOENT, "No such file", "/x")), "advice")


@pytest.mark.faults
def test_verify_seal_refuses_a_registered_version(capsys):
    """`jobs.verify current --seal` sealed the registered version's changed files in place and
    said "verified": true, while every --model current job then refused its changed bytes (the
    registry records them as registered; a review, 2026-12-07)."""
    from jobs import verify

    for ref in ("current", "models:/advanced-ncf/3"):
        with pytest.raises(SystemExit) as exited:
            verify.main([ref, "--seal"])
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and error.startswith(f"error: --seal {ref}: a registered version"), error
        assert "seal a directory by its path, then register it" in error


@pytest.mark.faults
def test_ctrl_c_while_a_job_imports_its_stack_is_one_line_and_exit_130():
    """`python -m jobs.verify` spends seconds importing torch, Ray and MLflow before its main: a
    Ctrl-C there was a 38-line KeyboardInterrupt traceback of an import (a review, 2026-12-07).
    The package's handler answers it until the job's main begins, then KeyboardInterrupt is the
    job's again; imported otherwise (here, pytest) the package changes nothing."""
    import jobs

    assert signal.getsignal(signal.SIGINT) is not jobs._interrupted_while_starting
    # What `python -m jobs.NAME` is while the package imports (sys.argv[0] "-m"), a Ctrl-C mid-import.
    during_imports = (
        "import os, signal, sys, time; sys.argv = ['-m']; import jobs; "
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(30); print('not stopped')"
    )
    after_start = (
        "import os, signal, sys; sys.argv = ['-m']; import jobs; jobs.started()\n"
        "try:\n    os.kill(os.getpid(), signal.SIGINT); import time; time.sleep(30)\n"
        "except KeyboardInterrupt:\n    print('the job answers it')"
    )
    for code, rc, out, err in (
        (during_imports, 130, "", ["error: interrupted (Ctrl-C) while the job started; nothing was done"]),
        (after_start, 0, "the job answers it", []),
    ):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert (done.returncode, done.stdout.strip(), done.stderr.strip().splitlines()) == (rc, out, err), done


@pytest.mark.faults
def test_ctrl_c_while_a_job_waits_for_its_ray_head_is_one_line_and_exit_130(tmp_path):
    """A real SIGINT to `python -m jobs.preprocess` (what a terminal's Ctrl-C sends) while it
    waits for the head RAY_ADDRESS names: one line, exit 130, nothing written."""
    import socket

    logs = tmp_path / "logs.csv"
    logs.write_text("user_id,product_id,timestamp,quantity\nu1,p1,2024-01-01T10:00:00,1\n")
    with socket.socket() as silent:  # bound, not listening: every connection is refused
        silent.bind(("127.0.0.1", 0))
        job = subprocess.Popen(
            [sys.executable, "-m", "jobs.preprocess", "--input", str(logs), "--output", str(tmp_path / "out")],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{silent.getsockname()[1]}"},
            # Python raises KeyboardInterrupt only where SIGINT was not ignored at its start, as
            # it is for a job of a non-interactive shell (`make test &`).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            lines = []
            while not lines or (lines[-1] and "waiting up to" not in lines[-1]):
                assert len(lines) < 100, lines
                lines.append(readline_within(job.stderr, 120))
            assert "waiting up to" in lines[-1], lines
            job.send_signal(signal.SIGINT)
            _, err = job.communicate(timeout=60)
        finally:
            job.kill()
    assert job.returncode == cli.EXIT_INTERRUPTED, err[-2000:]
    assert err.strip().splitlines() == [
        "error: interrupted (Ctrl-C); the output is as it was (a run writes a staging directory beside it and swaps "
        "it in at its end): run the same command again"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.faults
def test_a_cluster_that_wants_a_token_is_one_line_naming_ray_auth_mode(monkeypatch):
    """`ray start --head` of Ray 2.60 turns token authentication on: a job run on it without
    RAY_AUTH_MODE=token ended, after 15 s of Ray's retries, in a traceback and exit 1 (found by
    running README's commands, 2026-12-05); README's examples now set the mode."""
    import socket

    import ray

    def refused(*args, **kwargs):
        raise ray.exceptions.AuthenticationError("RPC error: InvalidAuthToken")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.setattr(cli, "exit_on_sigterm", lambda: None)  # the test process keeps its own handler
    monkeypatch.setattr(cli.logs, "configure", lambda **kwargs: {})
    with socket.socket() as head:  # a head that answers on its port
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        monkeypatch.setenv("RAY_ADDRESS", address)
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        wanted = f"RAY_ADDRESS={address}: .*token authentication; set RAY_AUTH_MODE=token"
        with pytest.raises(cli.InputError, match=wanted):
            cli.init_ray()
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        with pytest.raises(cli.InputError, match="token authentication failed .*InvalidAuthToken.*unset RAY_AUTH_MODE"):
            cli.init_ray()


@pytest.mark.faults
def test_a_head_that_starts_listening_while_the_job_waits_is_joined(capsys):
    """A head started beside the job (`ray start --head &`) was refused while still starting."""
    import socket
    import threading

    head = socket.socket()  # bound now (refusing connections: nothing listens), listening 1.5 s later
    head.bind(("127.0.0.1", 0))
    port = head.getsockname()[1]
    listen_later = threading.Timer(1.5, head.listen)
    listen_later.start()
    try:
        cli.check_head_answers(f"127.0.0.1:{port}", wait_s=20)
    finally:
        listen_later.join()
        head.close()
    assert f"waiting up to 20 s for the Ray head at 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.faults
def test_numbers_that_mean_nothing_are_refused_by_the_parsers():
    for parse, bad in ((cli.positive_float, ("0", "-1", "nan", "inf", "x")), (cli.tcp_port, ("0", "65536", "x"))):
        for text in bad:
            with pytest.raises(argparse.ArgumentTypeError):
                parse(text)
    assert cli.positive_float("1e-3") == 0.001 and cli.tcp_port("8000") == 8000
    from jobs import deploy

    # Serve took them; inf is no limit. At or below the 10 s a request waits for a past day's
    # pass, its 503 with Retry-After came as a 504 without one (a review of serve/, session 68).
    for bad in ("nan", "0", "-1", "5", "14"):
        with pytest.raises(SystemExit):
            deploy.parse_args(["--model", "m", "--request-timeout-s", bad])
    assert deploy.parse_args(["--model", "m", "--request-timeout-s", "15"]).request_timeout_s == 15
    assert deploy.parse_args(["--model", "m", "--request-timeout-s", "inf"]).request_timeout_s == float("inf")
    for option, bad in (("--min-replicas", "-1"), ("--max-replicas", "0")):  # pydantic's words, not the option's
        with pytest.raises(SystemExit):
            deploy.parse_args(["--model", "m", option, bad])
    assert deploy.parse_args(["--model", "m", "--min-replicas", "0"]).min_replicas == 0


def test_the_issues_example_is_one_line_and_exit_2():
    """`jobs.train --data /nonexistent` ended in a FileNotFoundError traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--data", "/nonexistent", "--output", "/tmp/never-written"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: /nonexistent: not a preprocessed DATA directory (no such directory, --data); "
        "run python -m jobs.preprocess first"
    ]


@pytest.mark.faults
def test_a_dashboard_address_in_ray_address_is_a_one_line_error_before_ray_starts(tmp_path):
    """The README's `export RAY_ADDRESS=http://127.0.0.1:8265` is for `ray job submit`; a job run
    directly with it ended in Ray's ValueError traceback."""
    done = _preprocess_joining(tmp_path, "http://127.0.0.1:8265")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert (
        lines[0].startswith("error: RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard address")
        and "HOST:6379" in lines[0]
    )
    assert not (tmp_path / "out").exists()


def test_a_sweep_directory_is_recognised_before_tune_started_in_it(tmp_path):
    """A sweep stopped between writing its settings and Tune's first file left a directory that
    every later run refused (as not a sweep's, without an --overwrite to pass)."""
    from tune.sweep import check_sweep_directory

    data, sweep = tmp_path / "data", tmp_path / "sweep"
    data.mkdir()
    sweep.mkdir()
    write_json(str(sweep / "settings.json"), {"trials": 2})
    check_sweep_directory(str(sweep), str(data), resume=False)
    with pytest.raises(cli.InputError, match="no sweep to resume"):
        check_sweep_directory(str(sweep), str(data), resume=True)
    (sweep / "notes.txt").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(cli.InputError, match="is not a sweep directory"):
        check_sweep_directory(str(tmp_path / "other"), str(data), resume=False)


def test_a_served_url_puts_an_ipv6_host_in_brackets():
    """`jobs.deploy --host ::1` polled http://::1:8000, which no client parses."""
    from serve.launch import base_url

    assert base_url("::1", 8000) == "http://[::1]:8000"
    assert base_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"


@pytest.mark.faults
def test_the_demo_refuses_a_taken_port_before_any_work(tmp_path, capsys):
    """A Serve left running by jobs.deploy on the demo's port: the demo found out at its fifth
    stage, about ten minutes in, or its queries were answered by the other server."""
    import socket

    from jobs import demo

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            demo.main(["--port", str(port), "--workdir", str(tmp_path / "demo")])
    assert exit_info.value.code == 2
    assert f"something already listens on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "demo")
    demo.check_port_free("127.0.0.1", port, "")  # free again once the listener closed


@pytest.mark.faults
def test_a_deploy_refuses_a_port_another_server_holds():
    """A foreground deploy of another cluster still on the port: the new job's health check got
    the old server's answer and printed success with the old model's version."""
    import socket

    from serve.rollout import check_can_deploy

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for host in ("127.0.0.1", "0.0.0.0"):
            with pytest.raises(cli.InputError, match=f"something already listens on 127.0.0.1:{port}"):
                check_can_deploy(None, host, port, detach=False)
    check_can_deploy(None, "127.0.0.1", port, detach=False)


@pytest.mark.faults
def test_a_rollouts_application_leaves_initial_replicas_to_serve(monkeypatch):
    """Every rollout changes the deployment's config (its user_config), and Ray 2.60 then sets the
    replicas to a set initial_replicas, which was always max(min_replicas, 1): an app scaled to N
    under load dropped to one at each model or DATA rollout (the Serve review, 2026-12-06). Set
    only where asked (jobs.deploy's first deploy); unset, Serve keeps its target (the running
    count: test_serve_rollout.py::test_a_rollout_keeps_the_replicas_the_app_runs)."""
    from serve import app as serve_app

    args = {"model": "m", "min_replicas": 1, "max_replicas": 4}
    assert serve_app._validated({**args, "initial_replicas": 3}).initial_replicas == 3
    for outside in (5, 0):
        with pytest.raises((ValueError, cli.InputError)):
            serve_app._validated({**args, "initial_replicas": outside})
    captured = {}
    monkeypatch.setattr(serve_app.RecommenderDeployment, "options", lambda **o: captured.update(o) or _Bindable())
    serve_app._application(serve_app._validated({**args, "initial_replicas": 3}), _Settings())
    assert captured["autoscaling_config"]["initial_replicas"] == 3
    serve_app._application(serve_app._validated(args), _Settings())
    assert captured["autoscaling_config"]["initial_replicas"] is None


@pytest.mark.faults
def test_a_refused_rollouts_restore_says_a_gone_previous_model_in_its_line(monkeypatch, tmp_path):
    """After restoring the settings served before, the check of their paths read a model directory
    pruned since (an old blue/green target): an InputError traceback, exit 1, instead of the
    deploy's one line (the Serve review, 2026-12-06)."""
    from serve import rollout
    from serve.launch import Heard as launch_heard

    monkeypatch.setattr(rollout, "start", lambda *args, **kwargs: None)
    monkeypatch.setattr(rollout, "running_replicas", lambda: 1)
    heard = launch_heard({"r1": {"model_version": "v1"}}, 0)
    monkeypatch.setattr(rollout, "every_replica_health", lambda replicas: heard)
    monkeypatch.setattr("serve.app.restore_app", lambda args, previous, runtime_env=None: None)
    previous = {"model_dir": str(tmp_path / "pruned"), "model_fingerprint": "abc"}
    restored = rollout.restore_previous({"model": "m"}, "127.0.0.1", 8000, 30, previous)
    # Not agreed (exit 1): a replica started later has nothing to load (a second reading).
    assert not restored.agreed and "its files cannot be read now (" in restored.words
    assert "not a model directory" in restored.words and "\n" not in restored.words


@pytest.mark.faults
def test_an_app_whose_replicas_fail_to_start_serves_nothing_but_one_replacing_a_replica_settles():
    """An app UNHEALTHY because its replicas fail to start (files replaced under the served
    paths) was refused as unsettled for good; one whose replica died and is being replaced
    (a failed health check, a lost node) is only settling: its restore must not be lost."""
    from ray.serve._private.common import DeploymentStatusTrigger
    from ray.serve.schema import ApplicationStatus

    from serve.app import DEPLOYMENT_NAME
    from serve.launch import _startups_fail

    def app(status, trigger):
        deployment = SimpleNamespace(status_trigger=trigger, replica_states={})  # none running
        return SimpleNamespace(status=status, deployments={DEPLOYMENT_NAME: deployment})

    assert _startups_fail(app(ApplicationStatus.UNHEALTHY, DeploymentStatusTrigger.REPLICA_STARTUP_FAILED))
    assert not _startups_fail(app(ApplicationStatus.UNHEALTHY, DeploymentStatusTrigger.HEALTH_CHECK_FAILED))
    assert not _startups_fail(app(ApplicationStatus.RUNNING, DeploymentStatusTrigger.REPLICA_STARTUP_FAILED))

    # Wired into the question a deploy asks first: no replica asked where none can start.
    from ray import serve

    from serve import launch

    asked = SimpleNamespace(result=lambda timeout_s: {"model_dir": "m"})
    handle = SimpleNamespace(serving_user_config=SimpleNamespace(remote=lambda: asked))
    for trigger, serving in [
        (DeploymentStatusTrigger.REPLICA_STARTUP_FAILED, None),
        (DeploymentStatusTrigger.HEALTH_CHECK_FAILED, {"model_dir": "m"}),
    ]:
        status = SimpleNamespace(applications={launch.APP_NAME: app(ApplicationStatus.UNHEALTHY, trigger)})
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(serve, "status", lambda status=status: status)
            patch.setattr(serve, "get_deployment_handle", lambda *args: handle)
            assert launch.serving_user_config() == serving


class _Bindable:
    def options(self, **kwargs):
        return self

    def bind(self):
        return self


class _Settings:
    def user_config(self):
        return {}


def test_a_redeploy_names_the_running_serves_port_and_any_host_it_listens_on():
    """Serve started with --host 0.0.0.0 (a cluster's) answers on 127.0.0.1 too: README's redeploys
    without --host were refused by a literal comparison of the addresses."""
    from serve.rollout import serves_address

    assert serves_address(("0.0.0.0", 8000), "127.0.0.1", 8000) and serves_address(("::", 8000), "::1", 8000)
    assert serves_address(("127.0.0.1", 8000), "127.0.0.1", 8000)
    assert not serves_address(("127.0.0.1", 8000), "0.0.0.0", 8000)  # a Serve on loopback is not reachable elsewhere
    assert not serves_address(("0.0.0.0", 8000), "127.0.0.1", 9000)
    assert not serves_address(("0.0.0.0", 8000), "::1", 8000)  # IPv4's every address refuses an IPv6 client


@pytest.mark.faults
def test_a_foreground_deploy_that_fails_to_start_stops_the_serve_it_started(ray_session, small_model_dir, capsys):
    """A foreground deploy whose proxy could not bind (or whose replicas failed, or was
    interrupted while the model loaded) left the Serve it started on the cluster, holding the
    port, which the next foreground deploy was refused for; its line gave Ray's coloured actor
    name as the reason. (Here, not in test_serve.py, whose module keeps a Serve running.)"""
    import socket

    from jobs import deploy
    from serve.launch import running_address

    with socket.socket() as held:  # bound, not listening: the port probe passes, the proxy's bind fails
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            deploy.main(["--model", small_model_dir, "--port", str(port)])
    assert exit_info.value.code == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert "Failed to bind to address" in line and "\x1b" not in line and "ProxyActor" not in line
    assert running_address() is None


@pytest.mark.faults
def test_a_deploy_refuses_an_empty_or_bracketed_host():
    """`--host "$SERVE_HOST"` with the variable unset bound Serve on every address (Serve reads ""
    as INADDR_ANY) and the job then failed polling http://:8000, leaving it up; `--host [::1]`
    failed in the proxy's bind with Ray's coloured actor name as the reason."""
    from jobs import deploy

    for bad in ("", "  ", "[::1]", "a b"):
        with pytest.raises(SystemExit) as exit_info:
            deploy.parse_args(["--model", "m", "--host", bad])
        assert exit_info.value.code == 2
    assert deploy.parse_args(["--model", "m", "--host", " ::1 "]).host == "::1"


def test_a_serve_failure_is_told_by_the_error_inside_rays_wrapping():
    """A proxy that could not bind reached jobs.deploy as RayTaskError, whose first line is the
    actor's name in terminal colours: the job's line said only that."""
    import ray.exceptions

    from serve.launch import failure_line

    reason = "Failed to bind to address '10.9.9.9:8000': [Errno 99] Cannot assign requested address"
    try:
        raise RuntimeError(reason)
    except RuntimeError as cause:
        wrapped = ray.exceptions.RayTaskError("ProxyActor.ready", "\x1b[36mray::ProxyActor.ready()\x1b[39m", cause)
        wrapped = wrapped.as_instanceof_cause()
    assert str(wrapped).startswith("\x1b[36mray::") and failure_line(wrapped) == reason
    assert failure_line(RuntimeError("Deploying application ncf failed: x\ntraceback")) == (
        "Deploying application ncf failed: x"
    )


@pytest.mark.faults
def test_the_registry_jobs_store_options_go_before_or_after_the_command():
    """`jobs.models list --tracking-uri URI` was refused: subcommands did not know the options."""
    from jobs.models import MODEL_NAME, parse_args

    after = parse_args(["promote", "3", "--tracking-uri", "sqlite:///x.db", "--name", "n"])
    assert (after.command, after.version, after.tracking_uri, after.name) == ("promote", "3", "sqlite:///x.db", "n")
    before = parse_args(["--tracking-uri", "sqlite:///y.db", "list"])
    assert (before.tracking_uri, before.name) == ("sqlite:///y.db", MODEL_NAME)
    assert parse_args(["list"]).tracking_uri is None
    assert parse_args(["--name", "n", "list"]).name == "n"  # not overridden by the command's own default


def test_a_busy_target_exits_75_and_bad_input_2(capsys):
    """A scheduler retries what another run held (EX_TEMPFAIL), not a command that cannot work."""
    from ncf.errors import EXIT_TRY_LATER
    from ncf.staging import Busy

    for error, code in ((Busy("OUT/run_date=2017-11-27: another run is writing it"), 75), (cli.InputError("x"), 2)):
        with pytest.raises(SystemExit) as exit_info:
            with cli.one_line_errors():
                raise error
        assert exit_info.value.code == code
        assert capsys.readouterr().err == f"error: {error}\n"
    assert EXIT_TRY_LATER == 75


STOPPED_AFTER_RAY_STARTS = """
import time
from jobs.cli import init_ray
init_ray(num_cpus=1)
print("up", flush=True)
time.sleep(120)
"""


@pytest.mark.faults
def test_a_job_stopped_by_sigterm_after_ray_starts_exits_143():
    """`ray job stop` and schedulers send SIGTERM; ray.init's own handler made every job that had
    started Ray exit 15, where README's table (and a shell, for any other process) says 143."""
    job = subprocess.Popen(
        [sys.executable, "-c", STOPPED_AFTER_RAY_STARTS],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    try:
        assert readline_within(job.stdout).strip() == "up"
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 128 + signal.SIGTERM, err[-2000:]


@pytest.mark.faults
def test_the_demo_hands_each_job_arguments_its_parser_accepts_and_its_dataset_is_bundled(tmp_path, monkeypatch):
    """CI runs `make test`, never `make demo` (13 minutes): a renamed option in any job, or the
    Complete Journey package's data moving, would break the demo unseen. Each stage's job gets
    the demo's arguments through its own parser; the dataset is written from the package."""
    import pyarrow.parquet as pq
    from helpers import free_ports

    from jobs import demo, evaluate
    from ncf.data import schema
    from ncf.data.datasets import write_completejourney
    from ncf.data.preprocess import check_inputs

    logs, catalog = write_completejourney(str(tmp_path / "cj"))  # the package's bundled data: offline, 1 s
    assert pq.read_metadata(logs).num_rows == 1_469_307 and pq.read_metadata(catalog).num_rows == 92_331
    check_inputs(schema.resolve_files(logs), schema.resolve_files(catalog))
    asked = {}
    row = {"model": "advanced_ncf", "recall@10": 0.4, "ndcg@10": 0.4}
    _demo_stages(monkeypatch, asked, _parsed(asked, evaluate, [row]))
    monkeypatch.setattr(demo, "online_queries", lambda model, data, port: asked.setdefault("serve", (model, port)))
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (port,) = free_ports(1)
    assert demo.main(["--workdir", str(workdir), "--port", str(port)]) == [row]
    assert set(asked) == {"jobs.preprocess", "jobs.train", "jobs.evaluate", "jobs.batch_score", "serve"}
    assert [json.loads(line) for line in (workdir / "evaluation.jsonl").read_text().splitlines()] == [row]
    assert os.path.islink(workdir / "model") and os.path.islink(workdir / "model-validated")  # blue/green
    assert re.fullmatch(r"train-\d{8}-\d{6}", asked["jobs.train"].name)  # chosen by the demo: its advice names it
    assert asked["jobs.train"].refit and asked["jobs.evaluate"].model.endswith("model-validated")
    assert asked["jobs.batch_score"].model == asked["serve"][0] == str(workdir / "model")
    assert asked["jobs.train"].storage == "artifacts/ray_results"  # locally: the jobs' own defaults

    # Submitted to a cluster: the dataset's cache, the checkpoints and the MLflow store under
    # --workdir, storage every node mounts (old code: the head's unpacked working directory).
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # recorded, so that the demo's value is undone after
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setattr(demo, "check_no_serve_running", lambda: None)  # its own test: test_serve.py
    assert demo.main(["--workdir", str(workdir), "--port", str(port), "--name", "train-x"]) == [row]
    assert asked["jobs.train"].name == "train-x"  # what an interrupted training's message asks for
    assert asked["jobs.preprocess"].cache == str(workdir / "datasets")
    assert asked["jobs.train"].storage == str(workdir / "ray_results")
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{workdir}/mlflow.db"


@pytest.mark.faults
def test_the_demo_submitted_with_its_default_workdir_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """`ray job submit --working-dir . -- python -m jobs.demo`: its default --workdir,
    artifacts/demo, is in Ray's unpacked copy of the working directory (deleted after the job,
    the data, models, report and MLflow store with it); the demo only warned, and pointed
    MLFLOW_TRACKING_URI there. A relative store named in the copy is refused as early."""
    from jobs import demo

    asked = {}
    _demo_stages(monkeypatch, asked, _parsed(asked, demo.evaluate, []))
    package = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")  # what Ray sets in a job's driver
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # recorded, so that any value set is undone after
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    cases = [
        ([], None, "--workdir artifacts/demo is in the job's unpacked working directory"),
        (["--workdir", str(tmp_path / "shared")], "sqlite:///artifacts/mlflow.db", "in a Ray job: its file /"),
    ]
    for argv, uri, expected in cases:
        if uri:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(SystemExit) as exit_info:
            demo.main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and expected in error[0], error
    assert "/runtime_resources/working_dir_files/_ray_pkg_0123abcd" in error[0] and "--runtime-env-json" in error[0]
    assert asked == {} and os.listdir(package) == []  # nothing preprocessed, nothing written there


@pytest.mark.faults
def test_an_output_in_a_ray_jobs_unpacked_working_directory_is_refused_before_any_work(
    paths, tmp_path, monkeypatch, capsys
):
    """`ray job submit --working-dir . -- python -m jobs.train --output artifacts/model/cj`: the
    model went into Ray's unpacked copy, deleted after the job, and the registry named it
    current (a registry review, 2026-12-06); the nightly partitions, DATA, a sweep and a report
    went the same way, and jobs.models register recorded such a copy. Refused in one line."""
    package = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (package / "model").mkdir()
    for name in os.listdir(paths["model"]):
        os.symlink(os.path.join(paths["model"], name), package / "model" / name)
    shared = str(tmp_path / "shared")
    cases = [
        ("preprocess", ["--input", paths["logs.csv"], "--output", "data"], "--output data"),
        ("train", ["--data", paths["lists"], "--output", "model/cj"], "--output model/cj"),
        ("train", ["--data", paths["lists"], "--output", shared], "--storage artifacts/ray_results"),
        ("tune_sweep", ["--data", paths["lists"], "--output", "sweep"], "--output sweep"),
        ("batch_score", ["--model", paths["model"], "--data", paths["lists"], "--output", "out"], "--output out"),
        ("evaluate", ["--model", paths["model"], "--data", paths["lists"], "--report", "report"], "--report report"),
        ("models", ["register", "model"], "MODEL model"),
    ]
    for job, argv, says in cases:
        module = importlib.import_module(f"jobs.{job}")
        if hasattr(module, "init_ray"):
            monkeypatch.setattr(module, "init_ray", lambda *a, _job=job, **k: pytest.fail(f"{_job} started Ray"))
        with pytest.raises(SystemExit) as exit_info:
            module.main(argv)
        error = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(error) == 1, (job, error)
        assert error[0].startswith(f"error: {says} is in the job's unpacked working directory ({package}/"), error
    assert sorted(os.listdir(package)) == ["model"]  # nothing written there


def _parsed(asked: dict, job, result):
    """A stand-in for ``job.main`` that records the arguments its parser reads (in ``asked``)."""

    def run(argv, **callbacks):
        asked[job.__name__] = job.parse_args(argv)
        return result

    return run


def _demo_stages(monkeypatch, asked: dict, evaluate_main) -> None:
    """The demo's jobs replaced: each records its parsed arguments (in ``asked``), ``evaluate_main``
    stands for jobs.evaluate; no Ray, no Serve. Ray's shutdown and the environment the demo sets
    (recorded here, so that later tests' children and a restarted session cluster do not inherit
    it) are undone after the test."""
    import ray

    from jobs import batch_score, demo, evaluate, preprocess, train

    monkeypatch.setattr(preprocess, "main", _parsed(asked, preprocess, {}))
    monkeypatch.setattr(train, "main", _parsed(asked, train, "MODEL"))
    monkeypatch.setattr(evaluate, "main", evaluate_main)
    monkeypatch.setattr(batch_score, "main", _parsed(asked, batch_score, {"run_date": "2024-01-01"}))
    monkeypatch.setattr(demo, "online_queries", lambda model, data, port: [])
    monkeypatch.setattr(demo, "init_ray", lambda: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setenv("RAY_SERVE_LOG_TO_STDERR", os.environ.get("RAY_SERVE_LOG_TO_STDERR", ""))
    if not os.environ["RAY_SERVE_LOG_TO_STDERR"]:
        monkeypatch.delenv("RAY_SERVE_LOG_TO_STDERR")


@pytest.mark.faults
def test_a_demo_whose_evaluation_fails_a_row_still_replaces_the_previous_runs_rows(tmp_path, monkeypatch, capsys):
    """jobs.evaluate writes the report and then exits 1 when a baseline's row failed: the demo
    wrote evaluation.jsonl only from evaluate's return, so the new report stood beside the
    previous run's rows, about another model (a review)."""
    from helpers import free_port

    from jobs import cli as job_cli
    from jobs import demo

    rows = [
        {"model": "advanced_ncf", "recall@10": 0.25, "model_version": "v2"},
        {"model": "als", "failed": "fit", "compared_with_version": "v2"},
    ]

    def evaluate_failing_a_row(argv, on_row=None):
        for row in rows:  # as jobs.evaluate gives each as it is computed
            on_row(row)
        job_cli.fail("1 of 2 rows failed")

    asked = {}
    _demo_stages(monkeypatch, asked, evaluate_failing_a_row)
    monkeypatch.setattr(demo, "online_queries", lambda model, data, port: asked.setdefault("serve", model))
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "evaluation.jsonl").write_text(json.dumps({"model": "advanced_ncf", "model_version": "v1"}) + "\n")
    with pytest.raises(SystemExit) as exited:
        demo.main(["--workdir", str(workdir), "--port", str(free_port())])
    assert exited.value.code == 1
    assert [json.loads(line) for line in (workdir / "evaluation.jsonl").read_text().splitlines()] == rows
    # The deployment model was scored and served all the same (a review of the demo, 2026-12-07:
    # one baseline's failure stopped the demo before stages 4-6), and the end says why it failed.
    assert "jobs.batch_score" in asked and "serve" in asked
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: stage 3/6: 1 of 2 evaluation rows failed (als in its fit); every other"), error
    assert not [line for line in error if line.startswith("[demo] stopped at stage")], error


@pytest.mark.faults
def test_a_demo_whose_evaluation_computes_no_row_leaves_none_of_the_previous_runs_rows(tmp_path, monkeypatch):
    """An evaluation that stopped before its first row (Ctrl-C, a refused model) left the previous
    run's evaluation.jsonl, about another model, as this run's (the report review of 2026-12-06):
    it is emptied, replaced whole."""
    from helpers import free_port

    from jobs import demo

    def evaluate_interrupted(argv, on_row=None):
        raise KeyboardInterrupt

    _demo_stages(monkeypatch, {}, evaluate_interrupted)
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "evaluation.jsonl").write_text(json.dumps({"model": "advanced_ncf", "model_version": "v1"}) + "\n")
    with pytest.raises(KeyboardInterrupt):
        demo.main(["--workdir", str(workdir), "--port", str(free_port())])
    assert (workdir / "evaluation.jsonl").read_text() == ""
    assert sorted(os.listdir(workdir)) == ["evaluation.jsonl", "model", "model-validated"]  # no temporary left


@pytest.mark.faults
def test_a_ctrl_c_in_a_demo_stage_other_than_training_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Training ends a Ctrl-C in one line itself; in the other stages it was a traceback."""
    from helpers import free_port

    from jobs import demo

    def evaluate_interrupted(argv, on_row=None):
        raise KeyboardInterrupt

    _demo_stages(monkeypatch, {}, evaluate_interrupted)
    with pytest.raises(SystemExit) as exited:
        demo.run(["--workdir", str(tmp_path / "demo"), "--port", str(free_port())])
    assert exited.value.code == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "error: interrupted (Ctrl-C) during stage 3/" in err and "Traceback" not in err


@pytest.mark.faults
def test_a_demo_stage_whose_job_ends_it_says_the_demos_own_way_on(tmp_path, monkeypatch, capsys):
    """Training and batch scoring end a stop or failure in their own line, whose "run the same
    command (with --name N)" is the job's command, not `make demo` (a review of the demo,
    2026-12-07): the demo adds its own, naming the run it chose and repeating the options it was
    given (without them, another --workdir or --epochs went on in the default's: the checkpoints
    of a local run are found from any, a second review of the demo, session 68)."""
    from helpers import free_port

    from jobs import demo, train

    _demo_stages(monkeypatch, {}, _parsed({}, demo.evaluate, []))

    def training_interrupted(argv):
        cli.fail("interrupted (Ctrl-C): run the same command with --name N to resume", cli.EXIT_INTERRUPTED)

    monkeypatch.setattr(train, "main", training_interrupted)
    workdir, port = tmp_path / "my demo", free_port()
    with pytest.raises(SystemExit) as exited:
        demo.main(["--workdir", str(workdir), "--port", str(port), "--epochs", "1", "--name", "train-n"])
    assert exited.value.code == cli.EXIT_INTERRUPTED
    error = capsys.readouterr().err.strip().splitlines()
    options = f"--workdir '{workdir}' --epochs 1 --port {port}"
    assert error[-1] == (
        "[demo] stopped at stage 2/6 (exit 130); the line above is that stage's job's: "
        f'make demo DEMO_ARGS="{options} --reuse-data --name train-n" resumes the training from its checkpoints'
    )
    assert demo.how_to_go_on(2, "train-n") == (
        'make demo DEMO_ARGS="--reuse-data --name train-n" resumes the training from its checkpoints'
    )
    assert demo.how_to_go_on(1, "train-n") == "make demo preprocesses again"

    # SIGTERM says nothing of its own (the job's SystemExit(143)): no "line above" to point at.
    from jobs import batch_score

    monkeypatch.setattr(train, "main", _parsed({}, train, "MODEL"))
    monkeypatch.setattr(batch_score, "main", lambda argv: sys.exit(cli.EXIT_STOPPED))
    workdir = tmp_path / "demo"
    with pytest.raises(SystemExit) as exited:
        demo.main(["--workdir", str(workdir), "--port", str(port)])
    assert exited.value.code == cli.EXIT_STOPPED
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f'[demo] stopped (SIGTERM) at stage 4/6; make demo DEMO_ARGS="--workdir {workdir} --port {port} '
        '--reuse-data" goes on from the preprocessed data (it trains again)'
    )


def test_the_demos_recorded_ablations_are_found_from_any_directory(tmp_path, monkeypatch):
    """The default --ablations was relative to the repository: `python -m jobs.demo` run from
    elsewhere was refused before any work, "no such file" (a review of the demo, session 68)."""
    from jobs import demo
    from ncf.evaluate.report_inputs import read_ablation_rows

    monkeypatch.chdir(tmp_path)
    default = demo.parse_args([]).ablations
    assert os.path.samefile(default, os.path.join(REPO, "bench", "results", "ablations_cj.jsonl"))
    assert read_ablation_rows(default)


@pytest.mark.faults
def test_a_refit_that_fails_after_the_validated_export_leaves_no_earlier_report_beside_the_new_model(
    tmp_path, monkeypatch, capsys
):
    """jobs.train --refit exports the validated model, repointing its link, before it fits the
    refit: a refit that failed or was stopped then left the previous run's report and rows beside
    a model they are not about (a review of the demo, session 68). They are replaced by a page
    saying the new model is not evaluated, and no rows; a training that fails before the export
    leaves them, still about the model there."""
    from helpers import free_port

    from jobs import demo, train
    from ncf.data.features import FEATURES_VERSION
    from ncf.model.files import FORMAT_VERSION, SIZE_FIELDS

    _demo_stages(monkeypatch, {}, _parsed({}, demo.evaluate, []))
    workdir = tmp_path / "demo"
    report, rows = workdir / "report" / "report.html", workdir / "evaluation.jsonl"
    report.parent.mkdir(parents=True)

    def previous_run():
        report.write_text("<p>the report of model v1</p>")
        rows.write_text('{"model": "advanced_ncf", "model_version": "v1"}\n')

    def refit_failing(exported: bool):
        def main(argv):
            if exported:  # what staging's swap leaves: a directory of its own, the link repointed
                validated = argv[argv.index("--validated-output") + 1]
                target = os.path.join(os.path.dirname(validated), ".model-validated-v2")
                os.makedirs(target)
                config = {"format_version": FORMAT_VERSION, "features_version": FEATURES_VERSION, "version": "v2"}
                config["model"] = {field: 8 for field in SIZE_FIELDS}
                with open(os.path.join(target, "config.json"), "w") as f:
                    json.dump(config, f)
                os.unlink(validated)
                os.symlink(os.path.basename(target), validated)
            cli.fail("the refit failed")

        return main

    for exported in (False, True):
        previous_run()
        monkeypatch.setattr(train, "main", refit_failing(exported))
        with pytest.raises(SystemExit) as exited:
            demo.main(["--workdir", str(workdir), "--port", str(free_port())])
        assert exited.value.code == 1, capsys.readouterr().err
        if not exported:
            assert "model v1" in report.read_text() and rows.read_text()
    page = report.read_text()
    assert "Model version <b>v2</b> has not been evaluated" in page and "model v1" not in page, page
    assert rows.read_text() == ""


@pytest.mark.faults
def test_the_demo_refuses_a_workdir_holding_what_no_demo_wrote_and_says_a_full_disk_in_one_line(
    tmp_path, monkeypatch, capsys
):
    """A WORKDIR/data or model that no demo wrote was refused by its job minutes in, advising an
    --overwrite the demo does not take; a full disk was a traceback (a review, 2026-12-07)."""
    from helpers import free_port

    from jobs import demo

    asked = {}
    _demo_stages(monkeypatch, asked, _parsed(asked, demo.evaluate, []))
    workdir = tmp_path / "demo"
    (workdir / "data").mkdir(parents=True)
    (workdir / "data" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exited:
        demo.main(["--workdir", str(workdir), "--port", str(free_port())])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and asked == {}, error
    assert error == (
        f"error: {workdir}/data: is not preprocessed data a demo wrote (no stats.json); move it aside or give the "
        "demo another --workdir"
    )
    (workdir / "data" / "notes.txt").unlink()  # empty: the demo's to fill
    # WORKDIR/recommendations holding another tool's files was refused at stage 4, after the
    # preprocessing, training and evaluation (a review, 2026-12-07); a report that is a file too.
    (workdir / "recommendations").mkdir()
    (workdir / "recommendations" / "notes.txt").write_text("mine")
    (workdir / "report").write_text("not a folder")
    for refused, words in (
        ("recommendations", "is not empty and holds no batch scoring"),
        ("report", "exists and is not a directory"),
    ):
        with pytest.raises(SystemExit) as exited:
            demo.main(["--workdir", str(workdir), "--port", str(free_port())])
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and asked == {}, error
        assert error.startswith(f"error: {workdir}/{refused}: {words}") and "another --workdir" in error, error
        (workdir / "recommendations" / "notes.txt").unlink(missing_ok=True)
    (workdir / "report").unlink()
    # WORKDIR/evaluation.jsonl that is no file: its write failed after the evaluation, said on
    # stderr, and the demo went on to exit 0 listing the previous run's rows (a review, 2026-12-07).
    (workdir / "evaluation.jsonl").mkdir()
    with pytest.raises(SystemExit) as exited:
        demo.main(["--workdir", str(workdir), "--port", str(free_port())])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and error.startswith(f"error: {workdir}/evaluation.jsonl: exists and is not a file")
    monkeypatch.setattr(demo.evaluate, "main", lambda argv, on_row=None: [{"model": "advanced_ncf"}])
    with pytest.raises(OSError):  # the run's result unwritten: its one line, exit 1 (run_main), not a note
        demo.evaluated([], str(workdir / "evaluation.jsonl"))
    (workdir / "evaluation.jsonl").rmdir()

    def evaluate_on_a_full_disk(argv, on_row=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(workdir / "report" / "report.html"))

    monkeypatch.setattr(demo.evaluate, "main", evaluate_on_a_full_disk)
    with pytest.raises(SystemExit) as exited:
        demo.run(["--workdir", str(workdir), "--port", str(free_port())])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 1 and "Traceback" not in error, error
    assert error.startswith(f"error: {workdir}/report/report.html: ENOSPC: No space left on device during stage 3/")


@pytest.mark.faults
def test_a_failed_serve_query_of_the_demo_names_the_servers_answer():
    """A replica's 500 in stage 5 was a traceback and lost the server's words (a review, 2026-12-07)."""
    import io
    import urllib.error

    from jobs import demo

    answer = io.BytesIO(b'{"detail": "ranking failed:\n RuntimeError"}')
    error = urllib.error.HTTPError("http://127.0.0.1:1/score", 500, "Internal Server Error", {}, answer)
    line = demo.query_failed("/score", error)
    assert line.startswith('/score failed (HTTP 500: {"detail": "ranking failed: RuntimeError"}); Serve\'s logs: ')
    line = demo.query_failed("/recommend", urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")))
    assert line.startswith("/recommend failed (URLError: <urlopen error [Errno 111] Connection refused>)")
    assert demo.printable({"a": "x" * 700}).endswith("... (109 more characters)")
    assert demo.printable({"a": 1}) == '{"a": 1}'


@pytest.mark.faults
def test_the_demo_reuses_data_only_as_it_would_preprocess_it_and_says_why_not(tmp_path, monkeypatch, capsys):
    """--reuse-data kept any DATA of this code's feature definitions, whatever settings or dataset
    it was preprocessed with, silently; and read its stats.json without --reuse-data too."""
    from dataclasses import asdict

    from helpers import free_port

    from jobs import demo, preprocess

    workdir = tmp_path / "demo"
    data = str(workdir / "data")
    argv = ["--dataset", "completejourney", "--output", data]
    dataset = os.path.join("artifacts", "datasets", "completejourney")
    settings = json.loads(json.dumps(asdict(preprocess.preprocess_config(preprocess.parse_args(argv)))))
    as_the_demo = {
        "features_version": FEATURES_VERSION,
        "state_only": False,
        "config": settings,
        "inputs": {"logs": [os.path.join(dataset, "transactions.parquet")], "num_log_files": 1},
    }
    os.makedirs(data)
    write_json(os.path.join(data, "stats.json"), as_the_demo)
    assert demo.why_not_reusable(data, argv) is None
    other_horizon = {**settings, "examples": {**settings["examples"], "horizon_days": 21}}
    for stats, reason in [
        ({**as_the_demo, "config": other_horizon}, "preprocessed with other settings (examples.horizon_days: 21 -> "),
        ({**as_the_demo, "features_version": FEATURES_VERSION - 1}, "preprocessed with feature definitions v"),
        ({**as_the_demo, "inputs": {"logs": ["synthetic/transactions.parquet"]}}, "preprocessed from synthetic/"),
        ({**as_the_demo, "state_only": True}, "preprocessed with --state-only"),
    ]:
        write_json(os.path.join(data, "stats.json"), stats)
        assert (demo.why_not_reusable(data, argv) or "").startswith(reason), (stats, reason)

    asked = {}
    _demo_stages(monkeypatch, asked, lambda argv, on_row=None: [])
    port = str(free_port())
    write_json(os.path.join(data, "stats.json"), {**as_the_demo, "config": other_horizon})
    demo.main(["--workdir", str(workdir), "--port", port, "--reuse-data"])
    out = capsys.readouterr().out
    assert "[demo] not reusing DATA: preprocessed with other settings (examples.horizon_days: 21 -> " in out
    assert "jobs.preprocess" in asked

    asked.clear()
    write_json(os.path.join(data, "stats.json"), as_the_demo)
    demo.main(["--workdir", str(workdir), "--port", port, "--reuse-data"])
    assert f"reusing {data}" in capsys.readouterr().out and "jobs.preprocess" not in asked

    with open(os.path.join(data, "stats.json"), "w") as f:
        f.write("{cut short")  # not read without --reuse-data: preprocessing replaces it
    demo.main(["--workdir", str(workdir), "--port", port])
    assert "not reusing" not in capsys.readouterr().out and "jobs.preprocess" in asked


def test_the_demo_table_shows_each_figure_to_four_decimals_in_its_column(capsys):
    """Full-precision floats (0.123456789...) overflowed their 15 characters and shifted every
    column after them."""
    from jobs import demo

    demo.print_table(
        [
            {"model": "advanced_ncf", "recall@10": 0.123456789012, "ndcg@10": 1 / 3, "users": 2500},
            {"model": "als", "recall@10": 0.1, "recall@10_minus_model": -0.0234567, "recall@10_minus_model_se": 0.001},
            {"model": "boosted_ranker", "ndcg@10_minus_model": 0.0031, "ndcg@10_minus_model_se": 0.0011},
            {"model": "decayed_frequency", "recall@10": 0.408},  # a name longer than 15 characters
            {"model": "tifu_knn", "failed": "fit: MemoryError"},
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert len({len(line) for line in lines}) == 1, lines
    assert [cell.strip() for cell in lines[1].split("|")][:4] == ["advanced_ncf", "0.1235", "0.3333", ""]
    assert "0.1000" in lines[2] and "-0.0235 \u00b1 0.0010" in lines[2]
    assert "+0.0031 \u00b1 0.0011" in lines[3]  # a difference is signed either way
    assert lines[4].split("|")[0].strip() == "decayed_frequency"
    assert [cell.strip() for cell in lines[5].split("|")][:3] == ["tifu_knn", "failed in its fit: MemoryError", ""]
    assert lines[1].split("|")[-1].strip() == "2500"  # last, as in the report
    # The report's columns (one list), in its order: a column renamed there is renamed here.
    from ncf.evaluate.report import CONSOLE_COLUMNS, METRIC_COLUMNS

    assert [cell.strip() for cell in lines[0].split("|")] == CONSOLE_COLUMNS
    assert set(CONSOLE_COLUMNS) <= set(METRIC_COLUMNS)


@pytest.mark.faults
def test_the_deploy_health_check_stops_at_an_answer_waiting_will_not_change():
    """A 421 (a --host name the proxy refuses as not its own) was asked again for 60 s and then
    blamed on the replicas; a 404 or 503 (an app still coming up) is still waited out."""
    from helpers import answering_server

    from serve.launch import wait_until_healthy

    answers = [(404, b"not routed yet"), (503, b'{"error": "loading"}'), (421, b'{"error": "Host is not ours"}')]
    with answering_server(lambda path: answers.pop(0) if len(answers) > 1 else answers[0]) as url:
        with pytest.raises(cli.InputError, match="healthz answered 421: Host is not ours"):
            wait_until_healthy(url, timeout_s=20)
        assert answers == [(421, b'{"error": "Host is not ours"}')]  # the 404 and the 503 were asked past
        answers[:] = [(503, b"busy")]
        with pytest.raises(TimeoutError, match="HTTP 503"):
            wait_until_healthy(url, timeout_s=1)


@pytest.mark.faults
def test_the_deploy_health_check_does_not_go_through_an_http_proxy(monkeypatch):
    """urlopen sends 127.0.0.1 through the environment's http_proxy: behind a corporate proxy,
    jobs.deploy waited 60 s for a healthy Serve, then failed (a review, 2026-12-05)."""
    from helpers import answering_server

    from serve.launch import wait_until_healthy

    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # the discard port: nothing answers there
    with answering_server(lambda path: (200, b'{"ok": true}')) as url:
        assert wait_until_healthy(url, timeout_s=5) == {"ok": True}


@pytest.mark.faults
def test_a_directory_that_cannot_be_listed_is_one_line_naming_it(paths, monkeypatch, capsys):
    """``require_dir`` listed the directory unguarded: one the OS would not list (a share's
    permissions; chmod does not stop root, so the refusal is planted) was a traceback, exit 1."""
    from jobs import verify

    listdir, other = os.listdir, paths["other"]

    def refused(path="."):
        if os.fspath(path) == other:
            raise PermissionError(13, "Permission denied", path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refused)
    with pytest.raises(SystemExit) as exit_info:
        verify.main([other])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {other}: not readable (Permission denied, MODEL)"]


@pytest.mark.faults
def test_a_ctrl_c_in_the_registry_and_verify_commands_is_one_line_and_exit_130(paths, tmp_path, monkeypatch, capsys):
    """jobs.models and jobs.verify ended a Ctrl-C with a traceback (exit 1)."""
    from jobs import models, verify
    from ncf import registry

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    registry.Registry()
    monkeypatch.setattr(models, "_run", interrupted)
    monkeypatch.setattr(verify, "check_model_and_data", interrupted)
    monkeypatch.setattr(verify, "check_model", lambda ref, **kwargs: ref)
    monkeypatch.setattr(verify, "write_manifest", lambda *args, **kwargs: None)
    for main, argv, expected in (
        (models.main, ["promote", "2"], "error: promote interrupted (Ctrl-C): python -m jobs.models list shows"),
        (verify.main, [paths["other"]], "error: interrupted (Ctrl-C)"),
        (verify.main, [paths["other"], "--seal"], "error: interrupted (Ctrl-C); --seal's manifest is replaced whole"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == cli.EXIT_INTERRUPTED
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith(expected), error


@pytest.mark.faults
def test_a_storage_root_holding_the_models_elsewhere_is_accepted():
    """Ray Train writes only this job's runs under --storage: a model beside them on the same mount
    is fine (the first form of the check refused every output under the storage folder)."""
    from jobs.train import check_runs_apart
    from ncf.errors import InputError

    check_runs_apart("/mnt/shared", ["train-1", "train-1-refit"], {"/mnt/shared/models/cj"})
    check_runs_apart("s3://bucket/runs", ["train-1"], {"/mnt/shared/models/cj"})
    with pytest.raises(InputError, match="inside the run train-1-refit there"):
        check_runs_apart("/mnt/shared", ["train-1", "train-1-refit"], {"/mnt/shared/train-1-refit/m"})
    with pytest.raises(InputError, match="/x/m/ckpt is inside /x/m"):
        check_runs_apart("file:///x/m/ckpt", ["train-1"], {"/x/m"})


def test_a_long_verification_says_so_before_the_wait(small_model_dir, small_data, monkeypatch, capsys):
    """jobs.verify, and the jobs that verify MODEL (evaluate, models) or DATA's state (evaluate),
    read every byte without a word: minutes at 10M x 1M (a review of jobs/, 2026-12-06). Here the
    bar is lowered to this small model's size; below it, nothing is said."""
    from jobs import verify
    from ncf.model import integrity

    small_data, _ = small_data
    data_state = cli.data_state_paths(small_data)
    sizes = [
        sum(os.lstat(os.path.join(folder, f)).st_size for folder, _, files in os.walk(path) for f in files)
        for path in [small_model_dir, *data_state]
    ]
    monkeypatch.setattr(integrity, "VERIFY_NOTE_BYTES", sizes[0])  # the model alone reaches it
    assert cli.check_model(small_model_dir) == os.path.realpath(small_model_dir)
    assert capsys.readouterr().err == (
        f"[verify] --model {small_model_dir}: reading its {sizes[0] / 2**30:.1f} GiB to verify it\n"
    )
    verify.main([small_model_dir, "--data", small_data])
    err = capsys.readouterr().err
    assert err == (
        f"[verify] MODEL {small_model_dir} and --data {small_data}'s state: reading its {sum(sizes) / 2**30:.1f} "
        "GiB to verify it\n"
    )
    monkeypatch.setattr(integrity, "VERIFY_NOTE_BYTES", sum(sizes) + 1)
    verify.main([small_model_dir, "--data", small_data])
    assert capsys.readouterr().err == ""
