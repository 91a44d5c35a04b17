"""The nightly commit (ncf.batch.commit) and its readers (ncf.batch.partitions) on a temporary
OUT, without Ray: opening a run where OUT cannot be written, another date's commit that cannot
be finished, a reader finding a commit a dead run left between its two renames, and a caller's
transient files (scoring's ``_plan.json``) in the committed partition. Found by the
nightly-scoring review of 2026-12-06."""

import errno
import os
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ncf import staging
from ncf.batch import commit, partitions
from ncf.errors import InputError
from ncf.jsonio import read_json, write_json

pytestmark = pytest.mark.faults  # the drills of RELIABILITY.md

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATE = "2024-01-02"
PARTITION = partitions.partition_name(DATE)
PLAN = "_plan.json"


def _commit_rows(output, run_id, rows, partition=PARTITION, **kwargs):
    with commit.PartitionRun(output, partition, run_id, **kwargs) as run:
        pq.write_table(
            pa.table({"run": [run_id] * len(rows), "value": rows}), os.path.join(run.stage, "part-0.parquet")
        )
        write_json(os.path.join(run.stage, PLAN), {"run": run_id})
        run.commit({"run_id": run_id, "rows": len(rows)})
        return run


_DEAD = textwrap.dedent(
    """
    import sys
    import pyarrow as pa, pyarrow.parquet as pq
    from ncf.batch.commit import PartitionRun
    from ncf.jsonio import write_json
    output, partition, run_id, transient = sys.argv[1:]
    kwargs = {"transient": ["_plan.json"]} if transient == "yes" else {}
    with PartitionRun(output, partition, run_id, **kwargs) as run:
        pq.write_table(pa.table({"run": [run_id] * 3, "value": [7, 8, 9]}), run.stage + "/part-0.parquet")
        write_json(run.stage + "/_plan.json", {"run": run_id})
        run.commit({"run_id": run_id, "rows": 3})
    """
)


def _killed_between_renames(output, run_id="dead", partition=PARTITION, transient=True):
    """A run of ``partition`` killed between its swap's two renames (NCF_FAULT): no partition in
    place, its journal in ``_commit/``. ``transient``: its ``_plan.json`` is one."""
    env = dict(os.environ, **{staging.FAULT_ENV: staging.BETWEEN_RENAMES})
    argv = [sys.executable, "-c", _DEAD, output, partition, run_id, "yes" if transient else "no"]
    done = subprocess.run(argv, cwd=REPO, env=env, timeout=120)
    assert done.returncode == staging.FAULT_EXIT
    assert not os.path.exists(commit.partition_path(output, partition))
    assert os.path.exists(commit.journal_path(output, partition))


# -- finding 1: an OUT a run cannot write is one line -------------------------------------------------


def test_an_output_a_run_cannot_write_is_one_line_naming_the_path_and_the_reason(tmp_path, monkeypatch):
    """Old code: a traceback (FileExistsError, PermissionError, OSError ENOSPC) from opening the
    run, after the job's inputs were verified and Ray started; only InputError is one line."""
    output = str(tmp_path / "out")
    _commit_rows(output, "first", [1, 2])
    # _commit a plain file: refused by the check every job makes before Ray starts.
    other = str(tmp_path / "other")
    os.makedirs(other)
    open(os.path.join(other, commit.COMMIT), "w").close()
    with pytest.raises(InputError, match=f"{other}/_commit is not a directory"):
        commit.check_output(other, PARTITION)

    # Not writable by this account (the mode bits; this test may run as root, so os.access says so).
    real_access = os.access
    denied = {os.path.join(output, commit.COMMIT), str(tmp_path)}

    def access(path, mode, **kwargs):
        return os.path.abspath(path) not in denied and real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(InputError, match=f"--output {output}: cannot write {output}/_commit \\(owned by uid"):
        with commit.PartitionRun(output, PARTITION, "refused"):
            pass
    # A new OUT: its nearest existing parent is where it would be made.
    with pytest.raises(InputError, match=f"cannot write {tmp_path} \\("):
        commit.check_output(str(tmp_path / "new" / "out"), PARTITION)
    denied = {commit.lock_path(output, PARTITION)}  # the lock file of another account
    with pytest.raises(InputError, match=f"cannot write {commit.lock_path(output, PARTITION)}, the lock of"):
        commit.check_output(output, PARTITION)
    monkeypatch.setattr(os, "access", real_access)

    # What the mode bits do not show (ACLs, root squash): the lock's open refused, the disk full.
    real_open, real_makedirs = os.open, os.makedirs

    def open_refused(path, flags, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_refused)
    lock = commit.lock_path(output, PARTITION)
    for opening in (
        lambda: commit.PartitionRun(output, PARTITION, "refused").__enter__(),
        lambda: commit.refuse_if_running(output, PARTITION),
    ):
        with pytest.raises(InputError) as refused:
            opening()
        assert str(refused.value) == (
            f"--output {output}: cannot take the lock of {PARTITION}: {lock}: EACCES: Permission denied"
        )
    monkeypatch.setattr(os, "open", real_open)

    def disk_full(path, *args, **kwargs):
        if f"{os.sep}{commit.TMP}{os.sep}" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", disk_full)
    stage = os.path.join(output, commit.TMP, PARTITION, "full")
    # Not bad input: a rerun may pass once space is freed (exit 1, README's table; a second reading).
    with pytest.raises(commit.OutputFailed) as failed:
        with commit.PartitionRun(output, PARTITION, "full"):
            pass
    assert (
        str(failed.value)
        == f"--output {output}: cannot create the run's stage: {stage}: ENOSPC: No space left on device"
    )
    monkeypatch.setattr(os, "makedirs", real_makedirs)
    # Nothing held, nothing lost: the next run opens and the partition is the first run's.
    assert partitions.read_partition(output, DATE).column("run").to_pylist() == ["first", "first"]
    _commit_rows(output, "next", [3])


# -- finding 2: another date's stuck commit stops no other date ------------------------------------------


@pytest.mark.parametrize("stuck", ["all-there", "unreadable", "another-shape"])
def test_another_dates_commit_that_cannot_be_finished_stops_no_other_date(tmp_path, stuck, monkeypatch, capsys):
    """Old code: recover_others caught only Busy, so one date's journal whose swap cannot be
    finished (its final, staged and parked entries all there; a journal that cannot be read) made
    every run of every date end in a traceback. Now the run says it in a line and goes on; the
    stuck date's journal and entries stay, its own run ends in one line."""
    output = str(tmp_path / "out")
    stuck_partition = partitions.partition_name("2023-12-01")
    _commit_rows(output, "old", [1], partition=stuck_partition)
    staged = os.path.join(output, commit.TMP, stuck_partition, "dead")
    parked = commit.parked_path(output, stuck_partition, "dead")
    for path in (staged, parked):
        os.makedirs(path)
        write_json(os.path.join(path, commit.SUCCESS), {"run_id": "dead"})
    journal = commit.journal_path(output, stuck_partition)
    final = commit.partition_path(output, stuck_partition)
    if stuck == "all-there":
        write_json(journal, {"final": final, "staged": staged, "parked": parked})
    elif stuck == "another-shape":  # JSON, not an object: its own date's run raised AttributeError
        write_json(journal, [])
    else:
        with open(journal, "w") as f:
            f.write('{"final": ')  # cut short
    old = time.time() - commit.STALE_SECONDS - 60  # old enough for the cleaning to consider
    for path in (os.path.dirname(staged), parked):
        os.utime(path, (old, old))

    messages = []
    run = _commit_rows(output, "today", [5, 6], log=messages.append)
    assert run.committed and partitions.read_manifest(output, DATE)["run_id"] == "today"
    (said,) = [m for m in messages if stuck_partition in m]
    assert said.startswith(f"the commit a dead run of {stuck_partition} left could not be finished (")
    assert said.endswith(f"left, with its journal {journal}, to the next run of {stuck_partition}")
    # Left as they were: the cleaning never removes what a journal still names.
    assert os.path.exists(journal) and os.path.isdir(staged) and os.path.isdir(parked)
    assert read_json(os.path.join(final, commit.SUCCESS))["run_id"] == "old"
    # The stuck date's own run: one line (a traceback before), naming the journal.
    with pytest.raises(InputError, match=f"{final}: the commit a dead run left cannot be finished .*{journal}"):
        with commit.PartitionRun(output, stuck_partition, "again"):
            pass
    # Its readers, among them every date's run listing the committed dates before its lock, read
    # it as it is and say the rest on stderr (they raised: a second reading).
    assert partitions.read_manifest(output, "2023-12-01")["run_id"] == "old"
    absent = partitions.partition_name("2023-11-01")  # a date absent, its journal cut short
    with open(commit.journal_path(output, absent), "w") as f:
        f.write('{"final": ')
    capsys.readouterr()
    assert partitions.read_manifest(output, "2023-11-01") is None
    err = capsys.readouterr().err
    assert f"{commit.partition_path(output, absent)}: the commit a dead run left could not be finished" in err
    os.remove(commit.journal_path(output, absent))
    # A failing disk (EIO) is no other date's matter: this run stops before hours of scoring.
    recover = commit.recover

    def failing_disk(output, partition):
        if partition == stuck_partition:
            raise OSError(errno.EIO, "Input/output error")
        return recover(output, partition)

    with monkeypatch.context() as patch:
        patch.setattr(commit, "recover", failing_disk)
        with pytest.raises(commit.OutputFailed, match="cannot finish other dates' commits .*EIO"):
            _commit_rows(output, "eio", [7])


# -- finding 3: a reader finishes a commit a dead run left between its renames ---------------------------


def test_a_reader_finishes_the_commit_a_dead_run_left_between_its_renames(tmp_path, monkeypatch, capsys):
    """Old code: read_partition and read_manifest (and verify) found the date absent (None, "not
    committed") until the next scoring run, though its journal named the complete partition. A
    reader now rolls it forward as that run would: not while a live run holds the date's lock,
    nor when it may not write OUT (a read-only mount)."""
    output = str(tmp_path / "out")
    _commit_rows(output, "first", [1, 2])
    _killed_between_renames(output, transient=False)
    journal = commit.journal_path(output, PARTITION)
    with staging.exclusive(commit.lock_path(output, PARTITION), "a live run"):
        assert partitions.read_manifest(output, DATE) is None  # its swap is under way: absent for now
    assert os.path.exists(journal)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", commit.lock_path(output, PARTITION))

    with monkeypatch.context() as patch:
        patch.setattr(commit, "exclusive", read_only)
        assert partitions.read_partition(output, DATE) is None
    assert os.path.exists(journal) and capsys.readouterr().err == ""

    table = partitions.read_partition(output, DATE)
    assert table is not None and table.column("run").to_pylist() == ["dead"] * 3
    out, err = capsys.readouterr()
    final = commit.partition_path(output, PARTITION)
    assert out == "" and f"[batch] finished the commit of {final} that a dead run left half done" in err
    assert not os.path.exists(journal) and read_json(os.path.join(final, commit.SUCCESS))["run_id"] == "dead"
    assert [n for n in os.listdir(os.path.join(output, commit.TMP)) if n.startswith(commit.REPLACED)] == []
    # Finished by a reader, the dead run's plan stays for the date's next run to find.
    assert read_json(os.path.join(final, PLAN)) == {"run": "dead"}


# -- finding 4: a caller's transient files go with its own commit, under the lock -------------------------


def test_a_runs_plan_leaves_its_partition_under_the_lock_and_stays_where_a_roll_forward_committed(
    tmp_path, monkeypatch
):
    """Old code: scoring removed ``_plan.json`` from the committed partition after its run had
    released the date's lock (a kill or a rerun of the date in between found it there), and a
    later run took any plan in a committed partition for a commit another date's run had
    finished: it returned the old result without scoring and said so. The plan now goes as the
    run's own commit completes, under its lock, and only a roll-forward leaves it."""
    output = str(tmp_path / "out")
    final = commit.partition_path(output, PARTITION)
    with commit.PartitionRun(output, PARTITION, "first", transient=[PLAN]) as run:
        write_json(os.path.join(run.stage, PLAN), {"run": "first"})
        run.commit({"run_id": "first"})
        assert os.listdir(final) == [commit.SUCCESS]  # gone before the lock is released
    # A commit that raised after its journal and was rolled forward on the run's way out.
    finish, calls = staging._finish, []

    def fails_once(record, journal):
        calls.append(journal)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        finish(record, journal)

    monkeypatch.setattr(staging, "_finish", fails_once)
    with pytest.raises(OSError, match="Input/output error"):
        with commit.PartitionRun(output, PARTITION, "second", transient=[PLAN]) as run:
            write_json(os.path.join(run.stage, PLAN), {"run": "second"})
            run.commit({"run_id": "second"})
    monkeypatch.setattr(staging, "_finish", finish)
    assert read_json(os.path.join(final, commit.SUCCESS))["run_id"] == "second" and PLAN not in os.listdir(final)

    # A dead run's commit, finished by another date's run: the plan stays (the date's next run
    # returns that commit when the plan is its own); finished by the date's next run: there too.
    _killed_between_renames(output, "dead")
    messages = []
    _commit_rows(output, "other", [1], partition=partitions.partition_name("2024-01-03"), log=messages.append)
    assert f"finished the commit a dead run left: {final}" in messages
    assert read_json(os.path.join(final, PLAN)) == {"run": "dead"}
    _killed_between_renames(output, "dead-again")
    with commit.PartitionRun(output, PARTITION, "next", transient=[PLAN]) as run:
        assert run.recovered == final and read_json(os.path.join(final, PLAN)) == {"run": "dead-again"}
