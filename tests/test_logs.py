"""Logs fit for a file: a job whose output goes to a file has no terminal escape codes, plain
progress lines instead of bars, and no WARNING or ERROR lines the project did not choose to print."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import warnings

import pytest
from helpers import REPO

from jobs import logs

# Lines at WARNING or ERROR level, in Ray's formats ("2026-... WARNING x.py:1 -- ...",
# "(raylet) ..." errors of workers, "[2026-... E ...] core_worker.cc") and Python's ("FooWarning:").
LOUD = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|\b\w*(Warning|Error):|^\(raylet\)|^\[[^\]]* [EW] \d+|\bTraceback\b")
# Lines the project prints on purpose at those levels (none for a successful job).
CHOSEN: list = []
# Ray's warnings about the machine's load or memory, not about the job: on a loaded 2-core CI
# machine beside the session's cluster, an actor importing torch may take a minute (Ray Data's
# idle-operator line), and the session's object store may leave /dev/shm short.
MACHINE_STATE = ["is running but has no outputs for", "instead of /dev/shm because /dev/shm has only"]


def _run_job(args: list, log_path) -> str:
    """Runs ``python -m ARGS`` on its own local cluster with stdout and stderr to a file, as
    ``make demo > demo.log`` does; returns the file's text."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHONPATH"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    with open(log_path, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600
        )
    text = open(log_path, errors="replace").read()
    assert done.returncode == 0, text[-3000:]
    if os.environ.get("NCF_KEEP_JOB_LOG"):
        open(os.environ["NCF_KEEP_JOB_LOG"], "w").write(text)
    return text


def test_a_short_job_writes_a_clean_log_file(ray_session, small_model_dir, small_data, tmp_path):
    data, _ = small_data
    args = ["jobs.batch_score", "--model", small_model_dir, "--data", data, "--output", str(tmp_path / "out")]
    text = _run_job([*args, "--k", "5", "--at", "data-end", "--actors", "1", "--progress-every", "1"], tmp_path / "log")
    assert "\x1b" not in text, [line for line in text.splitlines() if "\x1b" in line][:5]
    allowed = CHOSEN + MACHINE_STATE
    loud = [line for line in text.splitlines() if LOUD.search(line) and not any(c in line for c in allowed)]
    assert loud == [], "\n".join(loud[:20])
    assert "progress:" in text  # the job's own plain progress lines, not bars
    assert "Running Dataset" not in text  # nor Ray Data's progress tables (one per dataset)
    assert len(text) < 60_000, f"{len(text)} characters for a tiny job"


# -- the settings, without a cluster ----------------------------------------------------------


@pytest.fixture
def data_context():
    """Ray Data's context with bars on, restored afterwards."""
    from ray.data import DataContext

    context = DataContext.get_current()
    before, context.use_ray_tqdm = context.use_ray_tqdm, True
    try:
        yield context
    finally:
        context.use_ray_tqdm = before


@pytest.mark.faults
def test_off_a_terminal_bars_and_colours_are_off(monkeypatch, data_context, tmp_path):
    monkeypatch.setattr(logs, "interactive", lambda: False)
    # A link planted at the configuration's name (a fixed name in a shared /tmp) must not lead
    # the job to write through it: the link is replaced, what it points at kept.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    victim = tmp_path / "victim"
    victim.write_text("keep")
    written = tmp_path / f"ncf-ray-data-logging-{os.getuid()}.yaml"
    written.symlink_to(victim)
    for name in (
        "RAY_COLOR_PREFIX",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
        "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS",
        "RAY_DATA_LOGGING_CONFIG",
        "PYTHONPATH",
    ):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores each as it was, set or not
        monkeypatch.delenv(name)
    from ray.data._internal.logging import configure_logging

    try:
        runtime_env = logs.configure(local=True, num_cpus=2)
        assert os.environ["RAY_COLOR_PREFIX"] == "0" and data_context.use_ray_tqdm is False
        console = [h for h in logging.getLogger("ray.data").handlers if h.name == "console"]
        assert [h.level for h in console] == [logging.WARNING]  # Ray Data's tables stay in its log file
        files = [h for h in logging.getLogger("ray.data").handlers if h.name == "file"]
        assert [h.level for h in files] == [logging.NOTSET]  # its file log keeps everything
        assert victim.read_text() == "keep"
        assert os.environ["RAY_DATA_LOGGING_CONFIG"] == str(written)
        assert not written.is_symlink() and "handlers" in written.read_text()
    finally:
        monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
        configure_logging()  # Ray Data's own configuration again, for the rest of the session
    assert runtime_env == {"worker_process_setup_hook": logs.WORKER_SETUP_HOOK}
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == REPO  # the hook imports in every worker


def test_on_a_terminal_the_bars_stay(monkeypatch, data_context):
    monkeypatch.setattr(logs, "interactive", lambda: True)
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    assert logs.configure(local=False) == {}
    assert "RAY_COLOR_PREFIX" not in os.environ and data_context.use_ray_tqdm is True


def test_dependency_chatter_is_filtered_and_other_warnings_are_not(caplog):
    logs.quiet_dependencies()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        logs.quiet_dependencies()  # after simplefilter, as in a fresh worker
        warnings.warn("Please use DTensor instead and we are deprecating ShardedTensor.", FutureWarning, stacklevel=1)
        warnings.warn("something the project should hear about", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something the project should hear about"]
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torch.fx._symbolic_trace").warning("is_fx_tracing will return true ... (deprecated)")
        logging.getLogger("torch.fx._symbolic_trace").warning("a different warning")
    assert [r.getMessage() for r in caplog.records] == ["a different warning"]


@pytest.mark.parametrize(
    "line, loud",
    [
        ("2026-01-01 00:00:00,000\tWARNING worker.py:1 -- 12 PYTHON worker processes have been started", True),
        ("(raylet) A worker died or was killed while executing a task", True),
        ("[2026-01-01 00:00:00,000 E 123 456] core_worker.cc:1: constructor arguments in the object store", True),
        ("/x/y.py:3: FutureWarning: deprecated", True),
        ("2026-01-01 00:00:00,000\tINFO logging_progress.py:225 -- Total Progress: 3/7", False),
        ('{"rows": 150, "warnings_seen": 0}', False),
    ],
)
def test_the_loud_pattern_tells_warnings_from_progress(line, loud):
    assert bool(LOUD.search(line)) is loud
