"""Nothing deleted before its replacement exists (issue 19): DATA and MODEL are built beside the
target and swapped in; outputs that are not this tool's are refused; the nightly commit survives a
death between its two renames and refuses a second run of the same date. No Ray."""

import errno
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import readline_within

from jobs import preprocess as preprocess_job
from ncf import staging
from ncf.batch import commit, partitions
from ncf.data import layout
from ncf.errors import InputError
from ncf.jsonio import read_json, write_json
from ncf.model import directory
from ncf.model.advanced_ncf import AdvancedNCF
from ncf.model.config import ModelConfig

pytestmark = pytest.mark.faults  # the drills of RELIABILITY.md, "Ingest and replacing outputs"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTITION = "run_date=2024-01-02"


def _write(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# -- what may be replaced ----------------------------------------------------------------------------


def test_preprocess_refuses_an_output_that_contains_its_input(tmp_path, capsys):
    """Old code: --output at the input's parent deleted the input (rmtree before any work)."""
    logs = tmp_path / "raw" / "logs.csv"
    _write(str(logs), "user_id,product_id,timestamp\n1,2,2024-01-01\n")
    with pytest.raises(SystemExit) as exit_info:
        preprocess_job.main(["--input", str(logs), "--output", str(tmp_path / "raw")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "contains the input" in error[0]
    assert logs.exists()
    # --overwrite does not change that.
    with pytest.raises(SystemExit):
        preprocess_job.main(["--input", str(logs), "--output", str(tmp_path), "--overwrite"])
    assert logs.exists()


def test_preprocess_refuses_a_directory_it_did_not_write_unless_overwrite(tmp_path, capsys):
    logs = tmp_path / "logs.csv"
    _write(str(logs), "user_id,product_id,timestamp\n1,2,2024-01-01\n")
    home = tmp_path / "home"
    _write(str(home / "thesis.tex"))
    with pytest.raises(SystemExit) as exit_info:
        preprocess_job.main(["--input", str(logs), "--output", str(home)])
    assert exit_info.value.code == 2 and "no stats.json" in capsys.readouterr().err
    assert (home / "thesis.tex").exists()
    staging.check_target(str(home), layout.STATS, "preprocessing output", [str(logs)], overwrite=True)  # allowed
    _write(str(home / layout.STATS), "{}")
    staging.check_target(str(home), layout.STATS, "preprocessing output", [str(logs)])  # an output of this tool


def test_an_output_that_is_a_mount_point_is_refused_before_the_work(tmp_path):
    """A volume mounted at exactly --output: the swap's first rename failed with EBUSY after the
    work, its journal left for every later run (a review, 2026-12-06). /proc stands for one."""
    assert os.path.ismount("/proc")
    with pytest.raises(InputError, match="is a mount point, which the swap cannot replace"):
        staging.check_target("/proc", "stats.json", "DATA directory", overwrite=True)
    link = tmp_path / "current"
    link.symlink_to("/proc")  # replaced blue/green, beside its target: never refused as a mount point
    for given in (str(link), str(link) + "/"):
        try:
            staging.check_target(given, "stats.json", "DATA directory", overwrite=True)
        except InputError as e:  # a non-root account may not write beside /proc: that refusal is fine
            assert "mount point" not in str(e), given


def test_a_failed_replacement_leaves_the_old_directory_and_no_leftovers(tmp_path):
    final = str(tmp_path / "data")
    _write(os.path.join(final, layout.STATS), "old")
    with pytest.raises(RuntimeError, match="boom"):
        with staging.replacing(final, layout.STATS, "preprocessing output") as stage:
            _write(os.path.join(stage, layout.STATS), "new")
            raise RuntimeError("boom")
    assert open(os.path.join(final, layout.STATS)).read() == "old"
    with staging.replacing(final, layout.STATS, "preprocessing output") as stage:
        _write(os.path.join(stage, layout.STATS), "new")
    assert open(os.path.join(final, layout.STATS)).read() == "new"
    assert sorted(os.listdir(tmp_path)) == [".data.lock", "data"]


@pytest.mark.faults
def test_an_empty_output_path_is_refused_not_read_as_the_working_directory(tmp_path, monkeypatch):
    """A library caller's unset variable: "" was the working directory to abspath, and a
    replacement with overwrite swapped it out and deleted it (the jobs review of 2026-12-06)."""
    from ncf.batch.commit import PartitionRun

    monkeypatch.chdir(tmp_path)
    _write(str(tmp_path / "precious.txt"), "keep")
    for empty in ("", "  "):
        with pytest.raises(staging.InputError, match="is empty: give the directory to write"):
            with staging.replacing(empty, layout.STATS, "preprocessing output", overwrite=True):
                pass
        with pytest.raises(staging.InputError, match="is empty"):
            staging.check_target(empty, layout.STATS, "preprocessing output", overwrite=True)
        with pytest.raises(staging.InputError, match="is empty"):
            PartitionRun(empty, "run_date=2024-01-02", "run")
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]
    staging.check_named(tmp_path / "model")  # a pathlib.Path, as abspath took it before


# -- model directories --------------------------------------------------------------------------------


def _fake_data(root) -> str:
    """A DATA directory as save_model_dir reads it: stats.json and the state's folders."""
    data = str(root / "data")
    os.makedirs(data)
    write_json(layout.stats_path(data), {"boundaries": {"start": 0, "val_start": 1, "test_start": 2, "end": 3}})
    for part in directory.STATE_PARTS:
        _write(os.path.join(part(data), "part"))
    return data


def _save(output: str, data: str, version: str, **options) -> str:
    config = ModelConfig(num_users=3, num_products=3, num_departments=2, num_categories=2)
    weights = AdvancedNCF(config).state_dict()  # a save refuses weights that do not fit the config
    return directory.save_model_dir(output, weights, config, data, 0, "validated", version=version, **options)


def test_a_model_save_refuses_a_directory_that_is_not_a_model(tmp_path):
    """Old code: shutil.rmtree(output) whatever it was."""
    data = _fake_data(tmp_path)
    foreign = tmp_path / "projects"
    _write(str(foreign / "notes.txt"))
    with pytest.raises(InputError, match="not a model directory"):
        _save(str(foreign), data, "v1")
    assert (foreign / "notes.txt").exists()
    with pytest.raises(InputError, match="contains the input"):
        _save(str(tmp_path), data, "v1", overwrite=True)
    _save(str(foreign), data, "v1", overwrite=True)
    assert directory.read_config(str(foreign))["version"] == "v1"


def test_a_model_symlink_is_repointed_and_its_old_target_kept(tmp_path):
    """Blue/green: MODEL -> models/blue. Old code deleted the link and left a plain directory,
    so there was no old model to roll back to."""
    data = _fake_data(tmp_path)
    models = tmp_path / "models"
    _save(str(models / "blue"), data, "v1")
    link = tmp_path / "MODEL"
    os.symlink("models/blue", link)
    _save(str(link), data, "v2")
    assert os.path.islink(link) and not os.path.isabs(os.readlink(link))
    assert directory.read_config(str(link))["version"] == "v2"
    assert os.path.realpath(link) == str(models / "MODEL-v2")
    assert directory.read_config(str(models / "blue"))["version"] == "v1"  # the rollback target
    _save(str(link), data, "v2")  # the same version again gets a fresh name
    assert os.path.realpath(link) == str(models / "MODEL-v2-2")
    assert sorted(n for n in os.listdir(models) if not n.startswith(".")) == ["MODEL-v2", "MODEL-v2-2", "blue"]
    assert not [n for n in os.listdir(models) if ".staging-" in n or ".old-" in n]  # no leftovers


def _raising(monkeypatch, name: str, error, when=lambda *args: True) -> None:
    """``staging.<name>`` raises ``error(its first argument)`` where ``when`` holds for its arguments."""
    real = getattr(staging, name)

    def patched(*args, **kwargs):
        if when(*args):
            raise error(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(staging, name, patched)


def _stubborn(monkeypatch, marker: str) -> None:
    """Entries whose name holds ``marker`` cannot be removed, as a read-only folder copied into a
    model or an NFS file still open make them (root's tests cannot make one by chmod)."""
    refused = lambda path: PermissionError(errno.EACCES, "Permission denied", path)  # noqa: E731
    _raising(monkeypatch, "remove", refused, lambda path: marker in os.path.basename(path))


def test_an_old_model_that_cannot_be_removed_after_the_swap_is_left_and_the_new_one_kept(tmp_path, monkeypatch, capsys):
    """The old tree was removed before the journal: one that could not be deleted failed the save
    after the new model was in place, journal kept, and every later save failed on the same step
    of its roll-forward (a review, 2026-12-06). Now the swap ends with the journal; the old tree
    is said, left and removed by a later run that can."""
    data, model = _fake_data(tmp_path), str(tmp_path / "model")
    _save(model, data, "v1")
    _stubborn(monkeypatch, ".old-")
    for version in ("v2", "v3"):
        _save(model, data, version)
        assert directory.read_config(model)["version"] == version
        assert not os.path.exists(tmp_path / ".model.swap.json")
        assert "[staging] left " in capsys.readouterr().err
    assert len([n for n in os.listdir(tmp_path) if n.startswith(".model.old-")]) == 2
    monkeypatch.undo()
    _save(model, data, "v4")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".model.old-")]


def test_a_replaced_partition_that_cannot_be_removed_never_stops_the_next_nights(tmp_path, monkeypatch, capsys):
    """The batch job's commit and its cleaning at the start of the next run, as above."""
    output = str(tmp_path / "out")
    with commit.PartitionRun(output, PARTITION, "first") as run:
        run.commit({"run_id": "first"})
    _stubborn(monkeypatch, commit.REPLACED)
    for run_id in ("second", "third"):
        with commit.PartitionRun(output, PARTITION, run_id) as run:
            _write(os.path.join(run.stage, "part-0.parquet"), run_id)
            run.commit({"run_id": run_id})
        assert read_json(os.path.join(commit.partition_path(output, PARTITION), commit.SUCCESS)) == {"run_id": run_id}
        assert not os.path.exists(commit.journal_path(output, PARTITION))
    assert "[batch] left " in capsys.readouterr().err  # the second's old partition, at the third's start
    monkeypatch.undo()
    with commit.PartitionRun(output, PARTITION, "fourth"):
        pass
    assert not [n for n in os.listdir(os.path.join(output, commit.TMP)) if n.startswith(commit.REPLACED)]


@pytest.mark.faults
def test_a_failing_fsync_after_the_swap_ends_the_commit_as_done(tmp_path, monkeypatch, capsys):
    """EIO from the fsync of the journal's removal, the swap done: the commit raised, so the run
    skipped its transient files' and the old partition's removal and reported a commit "finished
    from its journal" that had none (a review, 2026-12-07). Now said, and the commit completes."""
    output = str(tmp_path / "out")
    with commit.PartitionRun(output, PARTITION, "first") as run:
        run.commit({"run_id": "first"})
    journal = commit.journal_path(output, PARTITION)
    failing = lambda path: OSError(errno.EIO, "Input/output error", path)  # noqa: E731
    _raising(monkeypatch, "fsync_parent", failing, lambda path: path == journal and not os.path.exists(journal))
    with commit.PartitionRun(output, PARTITION, "second", transient=["_plan.json"]) as run:
        _write(os.path.join(run.stage, "_plan.json"), "plan")
        assert run.commit({"run_id": "second"}) == commit.partition_path(output, PARTITION) and run.committed
    final = commit.partition_path(output, PARTITION)
    assert read_json(os.path.join(final, commit.SUCCESS)) == {"run_id": "second"}
    assert not os.path.exists(os.path.join(final, "_plan.json")) and not os.path.exists(journal)
    assert not [n for n in os.listdir(os.path.join(output, commit.TMP)) if n.startswith(commit.REPLACED)]
    assert "its journal's removal may not be on disk (EIO: Input/output error)" in capsys.readouterr().err


def _interrupt(monkeypatch, name: str, when=lambda *args: True) -> None:
    """Ctrl-C in ``staging.<name>`` (where ``when`` holds for its arguments)."""
    _raising(monkeypatch, name, lambda _: KeyboardInterrupt(), when)


def test_ctrl_c_during_the_swap_at_a_runs_end_says_what_it_left(tmp_path, monkeypatch, capsys):
    """The jobs said "the output is as it was" of any Ctrl-C: after the swap had begun, the output
    was, or was about to be, the new one (a review, 2026-12-06). A plain KeyboardInterrupt before
    it (the jobs' own words then hold); an Interrupted saying what is there from its start on."""
    from jobs.cli import run_main

    data, model = _fake_data(tmp_path), str(tmp_path / "model")
    _save(model, data, "v1")
    with monkeypatch.context() as patched:  # before the journal: as it was
        _interrupt(patched, "fsync_tree")
        with pytest.raises(KeyboardInterrupt) as stopped:
            _save(model, data, "v2")
    assert type(stopped.value) is KeyboardInterrupt and directory.read_config(model)["version"] == "v1"
    with monkeypatch.context() as patched:  # between the journal and the renames
        _interrupt(patched, "_finish")
        with pytest.raises(staging.Interrupted, match="is as it was for now: the new directory is complete"):
            _save(model, data, "v3")
    staging.roll_forward(str(tmp_path / ".model.swap.json"))  # as the next run does first
    assert directory.read_config(model)["version"] == "v3"
    swapped = lambda path: not [n for n in os.listdir(tmp_path) if n.startswith(".model.staging-")]  # noqa: E731
    with monkeypatch.context() as patched:  # the second rename done, its journal not yet removed
        _interrupt(patched, "fsync_parent", swapped)
        with pytest.raises(staging.Interrupted, match="is the new directory"):
            _save(model, data, "v3b")
    assert directory.read_config(model)["version"] == "v3b"
    staging.roll_forward(str(tmp_path / ".model.swap.json"))
    with monkeypatch.context() as patched:  # removing the old tree, the new one in place
        _interrupt(patched, "remove", lambda path: ".old-" in path)
        with pytest.raises(staging.Interrupted, match="is the new directory") as stopped:
            _save(model, data, "v4")
    assert directory.read_config(model)["version"] == "v4"
    with pytest.raises(SystemExit) as exited:  # a job's one line says it, not its own advice
        run_main(lambda: (_ for _ in ()).throw(stopped.value), "the output is as it was")
    error = capsys.readouterr().err
    assert exited.value.code == 130 and "is the new directory" in error and "as it was" not in error, error

    link = tmp_path / "MODEL"
    os.symlink("model", link)
    with monkeypatch.context() as patched:  # blue/green: the new target complete, the link not repointed
        _interrupt(patched, "repoint")
        with pytest.raises(staging.Interrupted, match="is as it was; the new directory is complete at .*point the"):
            _save(str(link), data, "v5")
    assert directory.read_config(str(link))["version"] == "v4"
    os.symlink("model", tmp_path / ".MODEL.link-dead0000")  # a repoint killed before its rename
    (tmp_path / "..model.swap.json.0123abcd.tmp").write_text("{")  # a journal's write killed midway
    _save(str(link), data, "v6")
    assert directory.read_config(str(link))["version"] == "v6" and not list(tmp_path.glob(".MODEL.link-*"))
    _save(model, data, "v7")
    assert not list(tmp_path.glob("..model.swap.json.*"))


def test_sigterm_during_the_swap_keeps_its_exit_status_and_says_what_it_left(tmp_path, monkeypatch, capsys):
    """SIGTERM (the jobs' handler raises SystemExit(143)) during the swap exited 143 without the
    words a Ctrl-C gets (a review, 2026-12-06): a scheduler's log read as if nothing had changed."""
    from ncf.errors import EXIT_STOPPED

    data, model = _fake_data(tmp_path), str(tmp_path / "model")
    _save(model, data, "v1")
    stopped = lambda _: SystemExit(EXIT_STOPPED)  # noqa: E731
    with monkeypatch.context() as patched:  # before the journal: as it was, nothing to say
        _raising(patched, "fsync_tree", stopped)
        with pytest.raises(SystemExit) as exited:
            _save(model, data, "v2")
    assert exited.value.code == EXIT_STOPPED and capsys.readouterr().err == ""
    with monkeypatch.context() as patched:  # removing the old tree, the new one in place
        _raising(patched, "remove", stopped, lambda path: ".old-" in path)
        with pytest.raises(SystemExit) as exited:
            _save(model, data, "v3")
    assert exited.value.code == EXIT_STOPPED and directory.read_config(model)["version"] == "v3"
    assert capsys.readouterr().err == f"[staging] stopped during the swap: {model} is the new directory " + (
        "(the old one, being removed, is removed by the next run)\n"
    )
    # The nightly commit's own swap finishes from its journal on the way out, and says a stop as one.
    output, messages = str(tmp_path / "out"), []
    finish = staging._finish
    stops = []

    def stopped_once(record, journal):
        if not stops:
            stops.append(journal)
            raise SystemExit(EXIT_STOPPED)
        finish(record, journal)

    monkeypatch.setattr(staging, "_finish", stopped_once)
    with pytest.raises(SystemExit):
        with commit.PartitionRun(output, PARTITION, "stopped", log=messages.append) as run:
            run.commit({"run_id": "stopped"})
    assert [m for m in messages if "midway" in m] == [
        f"the commit was stopped midway and was finished from its journal: {commit.partition_path(output, PARTITION)}"
    ]


def test_a_model_whose_replacement_died_between_its_renames_is_finished_when_read(tmp_path):
    """A training killed between the swap's two renames left MODEL missing, its new directory
    complete beside it: until the next training into it, --model said "not a model directory:
    run jobs.train first". A reader now finishes the swap, as the next writer would."""
    from jobs.cli import check_model

    data = _fake_data(tmp_path)
    model = str(tmp_path / "MODEL")
    _save(model, data, "v1")
    for version, read in (
        ("v2", directory.read_config),
        ("v3", lambda m: directory.read_config(check_model(m, verify=False))),
    ):
        staged = str(tmp_path / ".MODEL.staging-dead")
        _save(staged, data, version)
        parked = str(tmp_path / ".MODEL.old-dead")
        os.rename(model, parked)  # the first rename done, then the process died
        journal = {"final": model, "staged": staged, "parked": parked, "started": 0}
        write_json(str(tmp_path / ".MODEL.swap.json"), journal)
        assert read(model)["version"] == version  # jobs' --model checks it first, then read_config
        assert not os.path.exists(staged) and not os.path.exists(parked)
        assert not os.path.exists(tmp_path / ".MODEL.swap.json")
    with pytest.raises(InputError, match="not a model directory"):  # nothing interrupted: the usual error
        directory.read_config(str(tmp_path / "nothing"))


@pytest.mark.faults
def test_a_relative_link_in_a_workdir_reached_through_a_symlink_points_at_the_new_model(tmp_path):
    """The link was made relative to its logical directory, which the kernel does not resolve it
    from: with `--workdir` under a symlink to a deeper place, the saved model's link pointed
    nowhere (a review, 2026-12-05)."""
    data = _fake_data(tmp_path)
    deep = tmp_path / "big" / "x" / "y" / "art"
    deep.mkdir(parents=True)
    (tmp_path / "art").symlink_to(deep)
    link = tmp_path / "art" / "model"
    os.symlink(".model-unset", link)  # what jobs.demo's model_links makes before the first training
    with pytest.raises(InputError, match=f"^{link}: not a model directory"):  # the path given, not .model-unset
        directory.ModelDir(str(link))
    _save(str(link), data, "v1")
    assert os.readlink(link) == "model-v1" and directory.read_config(str(link))["version"] == "v1"
    _save(str(link), data, "v2")
    assert os.readlink(link) == "model-v2" and directory.read_config(str(deep / "model-v1"))["version"] == "v1"
    handle = directory.ModelDir(str(link))
    _save(str(link), data, "v3")  # repointed while a reader holds the handle: it keeps its model
    assert handle.path == str(deep / "model-v2") and handle.version == "v2"


@pytest.mark.faults
def test_a_swap_journal_is_finished_after_its_tree_moved(tmp_path):
    """The journal held absolute paths: read under another path (the tree moved after the crash,
    or shared storage mounted elsewhere), none was found, the journal was dropped as finished,
    and the next run removed the new and the old directory alike (a review, 2026-12-05)."""
    data = _fake_data(tmp_path)
    before = tmp_path / "before"
    model = str(before / "MODEL")
    _save(model, data, "v1")
    staged, parked = str(before / ".MODEL.staging-dead"), str(before / ".MODEL.old-dead")
    _save(staged, data, "v2")
    journal = str(before / ".MODEL.swap.json")
    _die_between_renames(staged, model, parked, journal)
    assert os.path.exists(journal) and not os.path.exists(model)
    assert read_json(journal)["final"] == model  # absolute too: what older code reads
    after = tmp_path / "after"
    os.rename(before, after)
    assert directory.read_config(str(after / "MODEL"))["version"] == "v2"  # a reader finishes it there
    left = [n for n in os.listdir(after) if not n.endswith(".lock")]  # locks stay (the module's docstring)
    assert not [n for n in left if ".staging-" in n or ".old-" in n or n.endswith(".swap.json")], left
    # Older code's journal, absolute paths alone, in a tree moved since: its entries are beside it
    # (refused as paths outside the swap, the refusal's advice to remove it lost both models).
    older = {
        k: str(before / v) for k, v in (("final", "MODEL"), ("staged", ".MODEL.staging-x"), ("parked", ".MODEL.old-x"))
    }
    os.rename(after / "MODEL", after / ".MODEL.old-x")
    _save(str(after / ".MODEL.staging-x"), data, "v3")
    write_json(str(after / ".MODEL.swap.json"), {**older, "started": 0})
    assert directory.read_config(str(after / "MODEL"))["version"] == "v3"


@pytest.mark.faults
@pytest.mark.parametrize("written", ["absolute", "relative"])
def test_a_swap_journal_naming_a_folder_outside_its_swap_is_refused_and_the_folder_kept(tmp_path, written):
    """Paths in a journal were followed as written: a journal planted in a models folder that
    several accounts write made the next reader's roll-forward move another account's folder in
    (``staged``), and a writer's delete one (``parked``: rmtree) (a review, 2026-12-08)."""
    data = _fake_data(tmp_path)
    shared, victim = tmp_path / "shared", tmp_path / "home" / "secret"
    model = str(shared / "cj")
    _save(model, data, "v1")
    _write(str(victim / "id_rsa"))
    journal = str(shared / ".cj.swap.json")
    for key in ("staged", "parked"):
        outside = str(victim) if written == "absolute" else os.path.relpath(victim, shared)
        paths = {"final": "cj", "staged": ".cj.staging-x", "parked": ".cj.old-x", key: outside}
        write_json(journal, {**{k: str(shared / v) for k, v in paths.items()}, staging.RELATIVE: paths, "started": 0})
        if key == "staged":
            os.rename(model, str(shared / ".cj.old-x"))  # final missing: readers finish the swap
        with pytest.raises(InputError, match=f"names {victim}, outside the swap it journals"):
            (directory.read_config if key == "staged" else lambda m: _save(m, data, "v2"))(model)
        assert os.path.exists(victim / "id_rsa") and not os.path.exists(shared / "secret")
        if key == "staged":
            os.rename(str(shared / ".cj.old-x"), model)
    os.remove(journal)  # what the refusal asks, once its writer is known
    assert _save(model, data, "v2") and directory.read_config(model)["version"] == "v2"


@pytest.mark.faults
def test_a_commit_journal_naming_a_folder_outside_the_output_is_left_and_the_folder_kept(tmp_path):
    """The nightly output's journals, in ``OUT/_commit``, were followed as written too: another
    date's planted one moved or deleted any folder the nightly job's account may write."""
    output, victim = str(tmp_path / "out"), tmp_path / "secret"
    _write(str(victim / "keep"))
    other = "run_date=2024-01-01"
    journal = commit.journal_path(output, other)
    os.makedirs(os.path.dirname(journal))
    outside = {"final": str(tmp_path / "out" / other), "staged": str(tmp_path / "elsewhere"), "parked": str(victim)}
    write_json(journal, outside)
    messages = []
    with commit.PartitionRun(output, PARTITION, "next", log=messages.append) as run:
        _write(os.path.join(run.stage, "part-0.parquet"))
        run.commit({"run_id": "next"})
    assert os.path.exists(victim / "keep")
    assert any(f"the commit a dead run of {other} left could not be finished" in m and "outside" in m for m in messages)
    assert os.path.exists(journal)  # left to that date's run, which refuses it in the same words


@pytest.mark.faults
def test_a_runs_clean_up_leaves_another_targets_entries_whose_name_starts_like_its_own(tmp_path):
    """Dead runs' entries were found by their name's start: a run writing ``cj`` removed the live
    stage, the parked model, the journal and the lock of a target named ``cj.staging-eu``."""
    data = _fake_data(tmp_path)
    _save(str(tmp_path / "cj.staging-eu"), data, "v1")
    theirs = [".cj.staging-eu.staging-20261208T000000-0123abcd", ".cj.staging-eu.old-20261208T000000-0123abcd"]
    for name in theirs:
        os.makedirs(tmp_path / name)
    dead = ".cj.staging-20261201T000000-deadbeef"  # this target's own dead run
    os.makedirs(tmp_path / dead)
    _save(str(tmp_path / "cj"), data, "v1")
    assert all(os.path.exists(tmp_path / name) for name in theirs + [".cj.staging-eu.lock"])
    assert not os.path.exists(tmp_path / dead)


class _Died(BaseException):
    pass


def _die_between_renames(staged: str, final: str, parked: str, journal: str) -> None:
    """:func:`ncf.staging.swap` as a process killed between its two renames leaves it (its fault
    point raises here instead of ending the test's process)."""

    def die(name):
        if name == staging.BETWEEN_RENAMES:
            raise _Died()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(staging, "_fault_point", die)
        with pytest.raises(_Died):
            staging.swap(staged, final, parked, journal)


@pytest.mark.faults
def test_a_plain_directory_in_a_folder_reached_through_a_symlink_is_replaced(tmp_path):
    """The link fix's first form compared the folders as path strings: a plain output under a
    symlinked folder took its own lock a second time and waited for itself (a second read,
    2026-12-05)."""
    data = _fake_data(tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    model = str(tmp_path / "via" / "MODEL")
    _save(model, data, "v1")
    _save(model, data, "v2")
    assert not os.path.islink(model) and directory.read_config(model)["version"] == "v2"


@pytest.mark.faults
def test_a_links_target_folder_finishes_its_own_dead_swap_before_its_leftovers_go(tmp_path):
    """A plain H/model died between its renames; a save through P/model -> ../H/model removed
    H's staged and parked directories as leftovers, the new model and the old one (a second
    read, 2026-12-05)."""
    data = _fake_data(tmp_path)
    home, elsewhere = tmp_path / "H", tmp_path / "P"
    model = str(home / "model")
    _save(model, data, "v1")
    staged, parked = str(home / ".model.staging-dead"), str(home / ".model.old-dead")
    _save(staged, data, "v2")
    _die_between_renames(staged, model, parked, str(home / ".model.swap.json"))
    elsewhere.mkdir()
    os.symlink("../H/model", elsewhere / "model")
    _save(str(elsewhere / "model"), data, "v3")
    assert directory.read_config(model)["version"] == "v2"  # finished, not removed
    assert directory.read_config(str(elsewhere / "model"))["version"] == "v3"


@pytest.mark.faults
def test_the_demos_link_waits_for_a_dead_runs_swap_to_be_finished(tmp_path, capsys):
    """An older demo's plain MODEL killed between its renames: MODEL absent, so the demo put its
    link there, and every save and read after it raised "cannot finish the swap" (a review,
    2026-12-05)."""
    from jobs.demo import model_links

    data = _fake_data(tmp_path)
    model = str(tmp_path / "model")
    _save(model, data, "v1")
    staged, parked = str(tmp_path / ".model.staging-dead"), str(tmp_path / ".model.old-dead")
    _save(staged, data, "v2")
    _die_between_renames(staged, model, parked, str(tmp_path / ".model.swap.json"))
    model_links(model)
    assert not os.path.islink(model) and directory.read_config(model)["version"] == "v2"
    assert "is a plain directory (an older demo's)" in capsys.readouterr().out
    _save(model, data, "v3")
    assert directory.read_config(model)["version"] == "v3"


@pytest.mark.faults
def test_a_save_that_waited_for_the_lock_checks_its_target_again(tmp_path, monkeypatch):
    """The target was checked before the lock, which a save waits for: a DATA committed there
    meanwhile was swapped away by a model save without --overwrite (a review, 2026-12-05)."""
    import threading

    data = _fake_data(tmp_path)
    target = str(tmp_path / "X")
    parent, name = os.path.split(target)
    errors, asking = [], threading.Event()
    real_exclusive = staging.exclusive

    def exclusive(*args, **kwargs):  # the save takes the lock after its first check of X
        asking.set()
        return real_exclusive(*args, **kwargs)

    monkeypatch.setattr(staging, "exclusive", exclusive)
    with real_exclusive(os.path.join(parent, f".{name}.lock"), target):  # another run writes X
        waiting = threading.Thread(target=lambda: _catch(errors, _save, target, data, "v1"))
        waiting.start()
        assert asking.wait(60)  # the save has checked X (absent) and asks for the lock
        _write(os.path.join(target, "stats.json"), "{}")  # what that run commits
    waiting.join(timeout=60)
    assert len(errors) == 1 and isinstance(errors[0], InputError) and "not a model directory" in str(errors[0])
    assert os.path.exists(os.path.join(target, "stats.json"))


def _catch(errors, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - what the thread raised, for the test to read
        errors.append(e)


@pytest.mark.faults
def test_two_writers_of_one_json_file_never_share_a_temporary(tmp_path):
    """Every write went through PATH.tmp: one writer's cleanup removed the other's file before its
    rename (132 and 93 FileNotFoundErrors in 300 writes each; two evaluations tuning the
    baselines of one DATA write one file), and one could publish the other's half."""
    import threading

    path = str(tmp_path / "tuned.json")
    errors = []

    def writer(tag):
        for i in range(200):
            _catch(errors, write_json, path, {"writer": tag, "i": i, "pad": "x" * 2000})

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and read_json(path)["i"] == 199
    assert os.listdir(tmp_path) == ["tuned.json"]


# -- the nightly commit --------------------------------------------------------------------------------

_RUN = textwrap.dedent(
    """
    import sys, time
    from ncf.batch.commit import PartitionRun
    output, run_id, mode = sys.argv[1:]
    with PartitionRun(output, "{partition}", run_id) as run:
        open(run.stage + "/part-0.parquet", "w").write(run_id)
        if mode == "hold":
            print("holding", flush=True)
            sys.stdin.readline()
        run.commit({{"run_id": run_id}})
    """
).format(partition=PARTITION)


def _run(output: str, run_id: str, mode: str = "commit", **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _RUN, output, run_id, mode], cwd=REPO, text=True, stdout=subprocess.PIPE, **kwargs
    )


def test_a_commit_killed_between_the_renames_is_rolled_forward_by_the_next_run(tmp_path):
    """Old code: the next run deleted both the parked old partition and the dead run's new one."""
    output = str(tmp_path / "out")
    assert _run(output, "first").wait(timeout=60) == 0
    dead = _run(output, "dead", env=dict(os.environ, **{staging.FAULT_ENV: staging.BETWEEN_RENAMES}))
    assert dead.wait(timeout=60) == staging.FAULT_EXIT
    final = commit.partition_path(output, PARTITION)
    assert not os.path.exists(final)  # died with no partition in place
    assert os.path.exists(commit.journal_path(output, PARTITION))

    messages = []
    with commit.PartitionRun(output, PARTITION, "next", log=messages.append):
        # Rolled forward before this run does anything: the dead run's complete partition.
        assert read_json(os.path.join(final, commit.SUCCESS)) == {"run_id": "dead"}
        assert open(os.path.join(final, "part-0.parquet")).read() == "dead"
    assert any("finished the commit a dead run" in m for m in messages)
    assert not os.path.exists(os.path.join(output, commit.TMP, PARTITION))  # this run's stage is gone
    assert [n for n in os.listdir(os.path.join(output, commit.TMP)) if n.startswith(commit.REPLACED)] == []
    assert not os.path.exists(commit.journal_path(output, PARTITION))


def test_a_committed_run_leaves_nothing_in_tmp_for_the_next_run_to_report(tmp_path):
    """A committed run left its empty stage root, which the next run logged as 'removed what a
    previous run left' after every successful night."""
    output = str(tmp_path / "out")
    for run_id in ("first", "second"):
        messages = []
        with commit.PartitionRun(output, PARTITION, run_id, log=messages.append) as run:
            _write(os.path.join(run.stage, "part-0.parquet"), run_id)
            run.commit({"run_id": run_id})
        assert messages == [] and os.listdir(os.path.join(output, commit.TMP)) == []
    assert read_json(os.path.join(commit.partition_path(output, PARTITION), commit.SUCCESS)) == {"run_id": "second"}


def test_a_death_before_the_journal_leaves_the_old_partition(tmp_path):
    output = str(tmp_path / "out")
    assert _run(output, "first").wait(timeout=60) == 0
    with commit.PartitionRun(output, PARTITION, "aborted") as run:
        _write(os.path.join(run.stage, "part-0.parquet"), "aborted")
    with commit.PartitionRun(output, PARTITION, "next"):
        pass
    assert read_json(os.path.join(commit.partition_path(output, PARTITION), commit.SUCCESS)) == {"run_id": "first"}


def test_a_run_continues_the_newest_dead_stage_its_caller_accepts_and_removes_the_others(tmp_path):
    output = str(tmp_path / "out")
    assert _run(output, "first").wait(timeout=60) == 0
    accepted = lambda stage: os.path.basename(stage) != "other-plan"  # noqa: E731
    for age, run_id in enumerate(("older", "dead", "other-plan")):  # what three dead runs left
        stage = os.path.join(output, commit.TMP, PARTITION, run_id)
        _write(os.path.join(stage, "part-0.parquet"), run_id)
        _write(os.path.join(stage, ".part-1.parquet.tmp"), "half")  # never renamed: not whole
        os.utime(stage, (1_000 + age, 1_000 + age))
    root = os.path.join(output, commit.TMP, PARTITION)
    _write(os.path.join(output, commit.TMP, f"{commit.REMOVING}dead-cleaner", "part-0.parquet"))  # a cleaner's, dead
    messages = []
    with commit.PartitionRun(output, PARTITION, "next", log=messages.append, continues=accepted) as run:
        assert run.continued == "dead" and run.stage == os.path.join(root, "dead")
        assert os.listdir(run.stage) == ["part-0.parquet"]  # the half-written part removed
        assert sorted(os.listdir(root)) == ["dead"]
        run.commit({"run_id": "next"})
    assert sum("removed what a previous run left" in m for m in messages) >= 2
    # Each said before its removal too (a dead stage of 10M users takes a while): silent before.
    removing = [m.split(": ", 1)[1] for m in messages if m.startswith("removing what a previous run left: ")]
    removed = [m.split(": ", 1)[1] for m in messages if m.startswith("removed what a previous run left: ")]
    assert any(commit.REMOVING in path for path in removing)
    assert removing == removed and messages.index(f"removing what a previous run left: {removed[0]}") < messages.index(
        f"removed what a previous run left: {removed[0]}"
    )
    assert open(os.path.join(commit.partition_path(output, PARTITION), "part-0.parquet")).read() == "dead"
    assert not os.path.exists(root)
    # A failed run leaves its stage to the next, unless its caller clears leave_stage.
    with pytest.raises(RuntimeError):
        with commit.PartitionRun(output, PARTITION, "lost", continues=accepted) as run:
            _write(os.path.join(run.stage, "part-0.parquet"), "lost")
            raise RuntimeError("node lost")
    assert os.listdir(root) == ["lost"]
    with pytest.raises(RuntimeError):
        with commit.PartitionRun(output, PARTITION, "wrong", continues=accepted) as run:
            assert run.continued == "lost"
            run.leave_stage = False
            raise RuntimeError("verification failed")
    assert not os.path.exists(root)
    with commit.PartitionRun(output, PARTITION, "plain") as run:  # no continues: nothing is left
        _write(os.path.join(run.stage, "part-0.parquet"), "plain")
    assert not os.path.exists(root)


def test_a_stage_discarded_is_renamed_before_it_is_removed_so_a_kill_midway_leaves_nothing_to_continue(
    tmp_path, monkeypatch
):
    output = str(tmp_path / "out")
    root = os.path.join(output, commit.TMP, PARTITION)

    def killed_while_removing(path, ignore_errors=False):
        raise KeyboardInterrupt  # what a SIGKILL while a large stage is deleted leaves: all of it

    with pytest.raises(KeyboardInterrupt):
        with commit.PartitionRun(output, PARTITION, "failed", continues=lambda stage: True) as run:
            _write(os.path.join(run.stage, "part-0.parquet"), "failed its checks")
            run.leave_stage = False
            monkeypatch.setattr(commit.shutil, "rmtree", killed_while_removing)
            raise RuntimeError("verification failed")
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(root, "failed"))
    assert [n for n in os.listdir(os.path.join(output, commit.TMP)) if n.startswith(commit.REMOVING)]
    with commit.PartitionRun(output, PARTITION, "next", continues=lambda stage: True) as run:
        assert run.continued is None  # the renamed stage is not a stage
        assert not [n for n in os.listdir(os.path.join(output, commit.TMP)) if n.startswith(commit.REMOVING)]
        run.commit({"run_id": "next"})


def test_two_runs_of_one_date_at_once_the_second_is_refused(tmp_path):
    output = str(tmp_path / "out")
    holder = _run(output, "holder", mode="hold", stdin=subprocess.PIPE)
    try:
        assert readline_within(holder.stdout).strip() == "holding"
        with pytest.raises(staging.Busy, match=f"{PARTITION}: another run is writing it .*held by pid {holder.pid}"):
            with commit.PartitionRun(output, PARTITION, "second"):
                pass
        # Another date is not blocked.
        with commit.PartitionRun(output, "run_date=2024-01-03", "other") as run:
            run.commit({"run_id": "other"})
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    assert read_json(os.path.join(commit.partition_path(output, PARTITION), commit.SUCCESS)) == {"run_id": "holder"}
    # The refused run touched nothing: the holder committed, and its stage root went with it.
    assert not os.path.exists(os.path.join(output, commit.TMP, PARTITION))


def test_an_output_that_is_not_a_batch_scoring_directory_is_refused_unless_overwrite(tmp_path):
    """Old code wrote into any OUT: it removed another tool's ``_tmp`` entries and replaced a
    ``run_date=D/`` it had not written (no ``_SUCCESS``) with its own partition."""
    output = str(tmp_path / "out")
    foreign = os.path.join(output, commit.TMP, PARTITION, "their-work")
    theirs = os.path.join(commit.partition_path(output, PARTITION), "their.parquet")
    _write(os.path.join(foreign, "x"))
    _write(theirs, "theirs")
    with pytest.raises(InputError, match="is not empty and is not a batch-scoring directory .*--overwrite"):
        with commit.PartitionRun(output, PARTITION, "refused"):
            pass
    assert os.path.exists(os.path.join(foreign, "x")) and not os.path.exists(os.path.join(output, commit.COMMIT))

    # A batch-scoring directory (it has _commit/) with a foreign partition of the date: refused too.
    with commit.PartitionRun(output, "run_date=2024-01-03", "other", overwrite=True) as run:
        run.commit({"run_id": "other"})
    with pytest.raises(InputError, match=f"{PARTITION} exists without {commit.SUCCESS} .*--overwrite"):
        with commit.PartitionRun(output, PARTITION, "refused"):
            pass
    assert open(theirs).read() == "theirs"

    with commit.PartitionRun(output, PARTITION, "forced", overwrite=True) as run:
        _write(os.path.join(run.stage, "part-0.parquet"), "forced")
        run.commit({"run_id": "forced"})
    assert read_json(os.path.join(commit.partition_path(output, PARTITION), commit.SUCCESS)) == {"run_id": "forced"}
    assert not os.path.exists(theirs)
    with pytest.raises(InputError, match="exists and is not a directory"):
        commit.check_output(os.path.join(output, "run_date=2024-01-03", commit.SUCCESS), PARTITION, overwrite=True)
    os.makedirs(tmp_path / "empty")
    for fresh in ("absent", "empty"):  # a new OUT, or an empty one, is fine
        commit.check_output(str(tmp_path / fresh), PARTITION)


def test_another_tools_success_marker_does_not_make_a_partition_ours(tmp_path):
    """Old code took any ``_SUCCESS`` for a committed partition of its own, as Spark and Hadoop
    write one (empty) into each: a table laid out as ``run_date=D/`` was taken for a scoring
    output, and its partition of the date replaced and deleted without --overwrite."""
    output = str(tmp_path / "out")
    theirs = os.path.join(commit.partition_path(output, PARTITION), "part-00000.parquet")
    _write(theirs, "theirs")
    _write(os.path.join(commit.partition_path(output, PARTITION), commit.SUCCESS), "")
    with pytest.raises(InputError, match="is not empty and is not a batch-scoring directory .*--overwrite"):
        with commit.PartitionRun(output, PARTITION, "refused"):
            pass
    assert commit.read_committed(commit.partition_path(output, PARTITION)) is None
    assert partitions.read_manifest(output, "2024-01-02") is None
    # Beside a partition of ours, their partition of the date is still theirs.
    with commit.PartitionRun(output, "run_date=2024-01-03", "ours", overwrite=True) as run:
        run.commit({"run_id": "ours"})
    with pytest.raises(InputError, match=f"{PARTITION} exists without {commit.SUCCESS} of batch scoring"):
        with commit.PartitionRun(output, PARTITION, "refused"):
            pass
    assert open(theirs).read() == "theirs"


def _commit_rows(output, run_id, rows):
    """A run of PARTITION committed through the protocol: a part per row, the parts named alike
    from run to run, as the scoring job names them."""
    with commit.PartitionRun(output, PARTITION, run_id, overwrite=True) as run:
        for i, value in enumerate(rows):
            pq.write_table(pa.table({"run": [run_id], "value": [value]}), os.path.join(run.stage, f"part-{i}.parquet"))
        run.commit({"run_id": run_id, "rows": len(rows)})


def _a_rerun_swaps_in_mid_read(output: str, rerun_rows: list, monkeypatch) -> list:
    """PARTITION committed by run "first"; run "second" (``rerun_rows``) commits between a
    reader's listing of the parts and its read, once (the list it returns holds one entry then)."""
    _commit_rows(output, "first", [1, 2])
    real_dataset = partitions.pads.dataset
    swaps = []

    def dataset_then_rerun(*args, **kwargs):
        listed = real_dataset(*args, **kwargs)
        if not swaps:
            swaps.append(_commit_rows(output, "second", rerun_rows))
        return listed

    monkeypatch.setattr(partitions.pads, "dataset", dataset_then_rerun)
    return swaps


def test_a_reader_never_gets_parts_of_two_runs_when_a_rerun_swaps_in_mid_read(tmp_path, monkeypatch):
    """Old code listed the parts, then read them: a rerun's swap in between handed the reader the
    new run's files under the old listing (2 of its 3 rows), with no error."""
    output = str(tmp_path / "out")
    swaps = _a_rerun_swaps_in_mid_read(output, [10, 20, 30], monkeypatch)
    table = partitions.read_partition(output, "2024-01-02")
    assert swaps and table is not None
    assert table.column("run").to_pylist() == ["second"] * 3
    assert sorted(table.column("value").to_pylist()) == [10, 20, 30]


@pytest.mark.faults
def test_a_rerun_of_another_id_type_swapped_in_mid_read_is_read_again_and_damage_is_said(tmp_path, monkeypatch):
    """A rerun after a refresh that turned the ids to text swapped in while a reader read: the
    reader's listing of the old parts met the new schema, and ArrowInvalid came out of a function
    that retries a swap (a review of ncf/batch, 2026-12-07). A part of the same run that does not
    read is still an error."""
    output = str(tmp_path / "out")
    real_dataset = partitions.pads.dataset
    swaps = _a_rerun_swaps_in_mid_read(output, ["a", "b"], monkeypatch)  # the same part names, text values
    table = partitions.read_partition(output, "2024-01-02")
    assert swaps and table is not None and sorted(table.column("value").to_pylist()) == ["a", "b"]
    monkeypatch.setattr(partitions.pads, "dataset", real_dataset)
    part = os.path.join(commit.partition_path(output, PARTITION), "part-1.parquet")
    with open(part, "r+b") as f:
        f.truncate(20)  # damaged in place, the manifest unchanged
    with pytest.raises(pa.ArrowException):
        partitions.read_partition(output, "2024-01-02")


@pytest.mark.faults
def test_a_committed_partition_that_lost_a_part_is_damage_not_absent(tmp_path, monkeypatch):
    """read_partition read a committed partition short of a part (deleted by hand, lost on a
    copy) three times and then answered None, the answer for a date not scored yet: damage hidden
    as absence (a review, 2026-12-07). Said now; a rerun swapping in every time is said too."""
    output = str(tmp_path / "out")
    _commit_rows(output, "first", [10, 20, 30])
    os.remove(os.path.join(commit.partition_path(output, PARTITION), "part-2.parquet"))
    with pytest.raises(partitions.PartitionDamaged, match="its parts hold 2 rows, its _SUCCESS 3: a part lost"):
        partitions.read_partition(output, "2024-01-02")
    runs = iter(range(10))

    def a_rerun_each_time(*args, **kwargs):
        _commit_rows(output, f"rerun-{next(runs)}", [1, 2])
        raise FileNotFoundError("the parts were swapped away")

    monkeypatch.setattr(partitions.pads, "dataset", a_rerun_each_time)
    with pytest.raises(partitions.PartitionReplaced, match="replaced by reruns 3 times while it was read"):
        partitions.read_partition(output, "2024-01-02")


@pytest.mark.faults
def test_verifying_a_partition_a_rerun_swaps_in_meanwhile_checks_the_new_run(tmp_path, monkeypatch):
    """verify_partition read the manifest once: a rerun swapped in mid-check had its rows judged
    by the old manifest (a good partition reported "ok": false) or its parts gone, a
    FileNotFoundError (a review of ncf/batch, 2026-12-07). Checked again; the same run's damage raises."""
    from ncf.batch import verify

    output = str(tmp_path / "out")
    _commit_rows(output, "first", [1, 2])
    checked = []

    def rerun_during_the_first_check(directory, manifest, data, sample, seed):
        checked.append(manifest["run_id"])
        if len(checked) == 1:
            _commit_rows(output, "second", [10, 20, 30])
            raise FileNotFoundError(os.path.join(directory, "part-2.parquet"))
        return {"ok": manifest["rows"] == 3}

    monkeypatch.setattr(verify, "verify_parts", rerun_during_the_first_check)
    assert verify.verify_partition(output, "2024-01-02", "DATA") == {"ok": True}
    assert checked == ["first", "second"]
    # The rerun's parts read whole but judged by the old manifest: "ok": false for a good partition.
    checked.clear()

    def judged_by_the_old_manifest(directory, manifest, data, sample, seed):
        checked.append(manifest["run_id"])
        if len(checked) == 1:
            _commit_rows(output, "third", [7, 8, 9, 10])
        return {"ok": len(os.listdir(directory)) - 1 == manifest["rows"]}  # the parts against the manifest's rows

    monkeypatch.setattr(verify, "verify_parts", judged_by_the_old_manifest)
    assert verify.verify_partition(output, "2024-01-02", "DATA") == {"ok": True}
    assert checked == ["second", "third"]

    def damaged(directory, manifest, data, sample, seed):
        raise pa.ArrowInvalid("Parquet magic bytes not found")

    monkeypatch.setattr(verify, "verify_parts", damaged)
    with pytest.raises(pa.ArrowInvalid):
        verify.verify_partition(output, "2024-01-02", "DATA")


@pytest.mark.parametrize("second_try", ["succeeds", "fails"])
def test_a_swap_that_fails_after_its_journal_keeps_the_complete_stage(tmp_path, monkeypatch, second_try):
    """Old code: leaving the block after a failed swap removed the stage, the complete new
    partition the journal names, so the roll-forward had nothing to roll (and the date's new
    output was lost). Now the stage is swapped in on the way out, or by the next run."""
    output = str(tmp_path / "out")
    with commit.PartitionRun(output, PARTITION, "first") as run:
        run.commit({"run_id": "first"})
    finish = staging._finish
    calls = []

    def flaky_finish(record, journal):
        calls.append(journal)
        if len(calls) == 1 or second_try == "fails":
            raise OSError("disk hiccup")
        finish(record, journal)

    monkeypatch.setattr(staging, "_finish", flaky_finish)
    messages = []
    with pytest.raises(OSError, match="disk hiccup"):
        with commit.PartitionRun(output, PARTITION, "second", log=messages.append) as run:
            _write(os.path.join(run.stage, "part-0.parquet"), "second")
            run.commit({"run_id": "second"})
    final = commit.partition_path(output, PARTITION)
    if second_try == "succeeds":
        assert any("finished from its journal" in m for m in messages)
        assert read_json(os.path.join(final, commit.SUCCESS)) == {"run_id": "second"}
        assert not os.path.exists(commit.journal_path(output, PARTITION))
        return
    assert any("the next run of" in m for m in messages)
    assert os.path.exists(os.path.join(output, commit.TMP, PARTITION, "second", commit.SUCCESS))  # kept
    monkeypatch.setattr(staging, "_finish", finish)
    with commit.PartitionRun(output, PARTITION, "third"):
        assert read_json(os.path.join(final, commit.SUCCESS)) == {"run_id": "second"}
        assert open(os.path.join(final, "part-0.parquet")).read() == "second"


@pytest.mark.faults
def test_a_link_or_a_folder_at_the_lock_name_is_refused_and_its_target_kept(tmp_path):
    """The holder line truncates the lock file: opened through a link planted at its name, it
    emptied the file the link pointed to (found by the review of 2026-12-06)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    lock = tmp_path / ".out.lock"
    lock.symlink_to(victim)
    with pytest.raises(staging.InputError, match="symbolic link; remove it"):
        with staging.exclusive(str(lock), str(tmp_path / "out")):
            pass
    assert victim.read_text() == "keep"
    lock.unlink()
    lock.mkdir()
    with pytest.raises(staging.InputError, match="not a regular file"):
        with staging.exclusive(str(lock), str(tmp_path / "out")):
            pass
    lock.rmdir()
    os.mkfifo(lock)  # opened without blocking, then refused
    with pytest.raises(staging.InputError, match="not a regular file"):
        with staging.exclusive(str(lock), str(tmp_path / "out")):
            pass
    lock.unlink()
    with staging.exclusive(str(lock), str(tmp_path / "out")):
        assert lock.read_text().startswith("pid ")


def test_another_accounts_lock_file_on_nfs_is_refused_in_one_line(tmp_path, monkeypatch):
    """NFS locks only a file open for writing: another account's lock file, which this one may
    only read, gave an EBADF traceback there (a review, 2026-12-06). Root's tests can open any
    file for writing and this disk is not NFS, so both are played: the open refused, the lock EBADF."""
    import fcntl

    lock = tmp_path / ".out.lock"
    lock.write_text("pid 1 on another-host\n")
    real_open, real_flock = os.open, fcntl.flock

    def open_as_another_account(path, flags, *args):
        if str(path) == str(lock) and flags & os.O_RDWR and not flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args)

    def flock_as_nfs(fd, operation):
        if os.fstat(fd).st_ino == lock.stat().st_ino and operation & fcntl.LOCK_EX:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_flock(fd, operation)

    monkeypatch.setattr(os, "open", open_as_another_account)
    monkeypatch.setattr(fcntl, "flock", flock_as_nfs)
    with pytest.raises(staging.InputError, match=r"\.out\.lock: the lock file of .*another account's.*chmod g\+w"):
        with staging.exclusive(str(lock), str(tmp_path / "out")):
            pytest.fail("the block ran without its lock")
    # A reader finishing a dead run's half-done replacement leaves it to a writer, as on a
    # read-only mount (the review's second reading): no refusal of a directory it may read.
    (tmp_path / ".out.swap.json").write_text("{}")
    assert staging.finish_interrupted(str(tmp_path / "out")) is False
    monkeypatch.setattr(fcntl, "flock", real_flock)  # a local disk: locked read-only, the holder line kept
    with staging.exclusive(str(lock), str(tmp_path / "out")):
        assert lock.read_text() == "pid 1 on another-host\n"


@pytest.mark.faults
def test_an_output_whose_folder_this_account_may_not_write_is_refused_before_the_work(tmp_path, monkeypatch):
    """Said at the start in one line; it was a PermissionError traceback at the save, after the
    training (tests run as root, which may write anywhere: os.access answers as for another
    account)."""
    parent = tmp_path / "models"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(parent) else real_access(p, mode))
    for final in (parent / "model", parent / "not-yet" / "model"):
        with pytest.raises(staging.InputError, match="models is not writable by this account"):
            staging.check_target(str(final), "config.json", "model directory")
    # An output written in place (a sweep's) needs only itself writable, not its folder.
    sweep = parent / "sweep"
    sweep.mkdir()
    staging.check_target(str(sweep), "tune", "sweep directory", writes_beside=False)
    # A blue/green link: the new directory goes beside its target, so that folder is checked too.
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(parent) else real_access(p, mode))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (parent / "v1").mkdir()
    (elsewhere / "model").symlink_to(parent / "v1")
    with pytest.raises(staging.InputError, match="models is not writable by this account"):
        staging.check_target(str(elsewhere / "model"), "config.json", "model directory", overwrite=True)
