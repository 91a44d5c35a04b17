"""``ncf.jsonio``: JSON files that any parser reads, written whole and durably."""

import errno
import json
import os
import pathlib
import stat

import numpy as np
import pytest

from ncf import jsonio
from ncf.jsonio import write_atomically, write_json


def _strict(text: str):
    """json.loads as JavaScript's JSON.parse reads: bare NaN and Infinity are errors."""

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.faults
def test_non_finite_floats_are_written_as_null(tmp_path):
    """Old code wrote Python's bare NaN and Infinity (a diverged epoch's loss in metrics.json),
    which JSON.parse, jq and Go refuse: a review, 2026-12-07."""
    path = str(tmp_path / "metrics.json")
    write_json(
        path,
        {
            "loss": float("nan"),
            "history": [{"epoch": 1, "train_loss": float("inf")}, {"epoch": 2, "train_loss": 0.25}],
            "pair": (float("-inf"), 1.5),
            "np64": np.float64("nan"),  # a float subclass: never seen by json's default
            "np64_finite": np.float64(0.125),
            "np32": np.float32("inf"),  # not one: seen only there
        },
    )
    assert _strict(open(path).read()) == {
        "loss": None,
        "history": [{"epoch": 1, "train_loss": None}, {"epoch": 2, "train_loss": 0.25}],
        "pair": [None, 1.5],
        "np64": None,
        "np64_finite": 0.125,
        "np32": None,
    }


@pytest.mark.faults
def test_numpy_scalars_are_written_as_the_numbers_and_booleans_they_hold(tmp_path):
    """Old code's ``default=str`` wrote np.int64(5) as "5" and np.bool_(True) as "True"."""
    path = str(tmp_path / "stats.json")
    write_json(path, {"rows": np.int64(5), "small": np.uint8(7), "kept": np.bool_(True), "share": np.float32(0.5)})
    read = _strict(open(path).read())
    assert read == {"rows": 5, "small": 7, "kept": True, "share": 0.5}
    assert type(read["rows"]) is int and type(read["kept"]) is bool


def test_a_value_json_cannot_hold_raises_and_leaves_the_old_file(tmp_path):
    path = str(tmp_path / "config.json")
    write_json(path, {"version": "v1"})
    for value in (object(), np.arange(3)):
        with pytest.raises(TypeError, match="is not JSON"):
            write_json(path, {"version": "v2", "odd": value})
    assert _strict(open(path).read()) == {"version": "v1"}
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary left


def _record_fsyncs(monkeypatch, path, fail_folders=None):
    """os.fsync wrapped: each call's (folder or not, whether ``path`` exists then)."""
    calls, fsync = [], os.fsync

    def recording(fd):
        folder = stat.S_ISDIR(os.fstat(fd).st_mode)
        calls.append((folder, os.path.exists(path)))
        if folder and fail_folders is not None:
            raise OSError(fail_folders, os.strerror(fail_folders))
        return fsync(fd)

    monkeypatch.setattr(jsonio.os, "fsync", recording)
    return calls


@pytest.mark.faults
def test_the_rename_is_flushed_by_an_fsync_of_the_folder(tmp_path, monkeypatch):
    """Old code fsynced the file, not the folder whose entry the rename changed: a power cut after
    the write returned could bring the old file back."""
    path = str(tmp_path / "plan.json")
    calls = _record_fsyncs(monkeypatch, path)
    write_atomically(path, lambda tmp: pathlib.Path(tmp).write_text("{}"))
    # The file before its rename, then its folder once the rename is done.
    assert calls == [(False, False), (True, True)]


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP])
def test_a_file_system_that_cannot_fsync_a_folder_still_gets_the_file(tmp_path, monkeypatch, code):
    path = str(tmp_path / "plan.json")
    calls = _record_fsyncs(monkeypatch, path, fail_folders=code)
    write_json(path, {"a": 1})
    assert calls[-1] == (True, True) and _strict(open(path).read()) == {"a": 1}


def test_a_history_with_a_diverged_epoch_is_still_drawn_from_what_write_json_wrote(tmp_path, capsys):
    """A NaN loss was read back as NaN and drawn as a gap; written as null now, the report must
    still take the history (ncf.evaluate.report_inputs.drawable_history) and draw it."""
    from jobs import evaluate
    from ncf.evaluate.report import training_chart

    path = str(tmp_path / "metrics.json")
    write_json(path, {"history": [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": float("nan")}]})
    history = evaluate.drawable_history(jsonio.read_json(path))
    assert history == [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": None}]
    assert training_chart(history, 1) and capsys.readouterr().err == ""


@pytest.mark.faults
def test_a_folder_this_account_may_write_but_not_read_still_gets_the_file(tmp_path, monkeypatch):
    """Opening a folder of mode 0333 to flush it is refused: the file is in place all the same, and
    the write said it failed."""
    path = tmp_path / "stats.json"
    real_open = os.open

    def no_read_of_the_folder(name, flags, *args):
        if os.path.abspath(name) == str(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", name)
        return real_open(name, flags, *args)

    monkeypatch.setattr(jsonio.os, "open", no_read_of_the_folder)
    write_json(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}


@pytest.mark.faults
def test_a_full_disk_in_a_writer_that_names_no_file_or_swallows_the_oserror_is_said_naming_the_output(tmp_path):
    """pyarrow's full-disk OSError names no file, and torch.save and faiss.write_index turn it
    into a RuntimeError: a job's one line said "a file", or the job ended in a traceback (a
    review, 2026-12-07). The output is named, and the RuntimeError said as the OSError it was
    where the disk has less room than the write needed."""
    from ncf.errors import full_disk_said, said_as

    def full(tmp):
        raise OSError(errno.ENOSPC, "Error writing bytes to file")  # as pyarrow raises it

    target = str(tmp_path / "results.parquet")
    with pytest.raises(OSError) as raised:
        write_atomically(target, full)
    assert raised.value.filename == target and raised.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []  # nothing left behind
    swallowed = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    with pytest.raises(OSError) as raised:
        with full_disk_said(str(tmp_path / "model.pt"), needed_bytes=2**62):  # more than any disk has
            raise swallowed
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "model.pt")
    assert raised.value.__cause__ is swallowed
    with pytest.raises(RuntimeError):  # room enough: not the disk, torch's own error stays
        with full_disk_said(str(tmp_path / "model.pt"), needed_bytes=1):
            raise swallowed
    # A file of the stage (removed before the line is read) named at its place in the output.
    stage, output = str(tmp_path / ".model.staging-1"), str(tmp_path / "model")
    with pytest.raises(OSError) as raised:
        with said_as(stage, output):
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(stage, "state", "x.npy"))
    assert raised.value.filename == os.path.join(output, "state", "x.npy") and raised.value.errno == errno.ENOSPC
    with pytest.raises(FileNotFoundError) as raised:  # elsewhere: as it was
        with said_as(stage, output):
            raise FileNotFoundError(errno.ENOENT, "No such file", "/elsewhere")
    assert raised.value.filename == "/elsewhere"
