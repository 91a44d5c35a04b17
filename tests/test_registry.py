"""Experiment tracking and the model registry (ncf.registry, jobs.models; issue 22).

* a training run through jobs.train (validated + refit) is in MLflow: parameters, per-epoch
  metrics with step = epoch, the held-out table, and a registered version per model directory
  with its lineage (data stats digest, code commit, weights digest);
* promote / rollback move what ``--model current`` resolves to;
* rolling ``current`` back changes what a redeployed Serve app (/healthz) and the nightly job
  (its model_version column) use.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest
import requests
from conftest import SMALL_MODEL
from helpers import REPO, free_port
from test_integrity import SMALL, tiny_data

from jobs import batch_score, deploy, models, train
from jobs.cli import exit_status
from ncf import registry as reg
from ncf.data import layout
from ncf.errors import InputError, TryLater
from ncf.jsonio import read_json, write_json
from ncf.model.directory import METRICS, WEIGHTS, save_untrained_model_dir
from ncf.model.integrity import write_manifest


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A registry of the test's own (versions numbered from 1). MLflow's process-wide URIs and
    experiment, which Ray's MLflow callback sets (and MlflowClient.load_table reads), are put
    back after each test."""
    import mlflow.tracking._model_registry.utils as registry_uris
    import mlflow.tracking._tracking_service.utils as tracking_uris
    import mlflow.tracking.fluent as fluent

    for module, name in ((tracking_uris, "_tracking_uri"), (registry_uris, "_registry_uri")):
        monkeypatch.setattr(module, name, None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return reg.Registry()


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def fake_model_dir(root, version: str, test_ndcg: float = 0.3) -> str:
    """A sealed model directory with untrained weights on a tiny DATA, recorded as a validated run
    with test figures (what the registry reads and ``promote`` verifies)."""
    data = os.path.join(root, "tiny", "data")
    if not os.path.isdir(data):
        tiny_data(os.path.join(root, "tiny"))
    path = save_untrained_model_dir(str(root / version), data, version=version, **SMALL)
    config = read_json(os.path.join(path, "config.json"))
    write_json(os.path.join(path, "config.json"), {**config, "run": "validated"})
    history = [{"epoch": 1, "train_loss": 0.5, "val_ndcg@10": 0.2}]
    metrics = {"history": history, "test": {"ndcg@10": test_ndcg, "recall@10": 0.2}}
    write_json(os.path.join(path, METRICS), metrics)
    write_manifest(path, unsealed=[METRICS])  # as save_model_dir seals it
    return path


# -- promote / rollback --------------------------------------------------------------------------------


def test_promote_and_rollback_move_what_current_resolves_to(store, tmp_path, capsys):
    first = fake_model_dir(tmp_path, "v1")
    second = fake_model_dir(tmp_path, "v2", test_ndcg=0.4)
    assert reg.track_model(first, strict=True) == "1"
    assert reg.track_model(second, strict=True) == "2"
    # The first deployable version became current; a later one waits for a promote.
    assert store.current() == "1" and reg.resolve_model("current") == first
    assert "version 2" in capsys.readouterr().out

    from ncf.model import integrity

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patched:  # a long verification is said first (here: any size)
        patched.setattr(integrity, "VERIFY_NOTE_BYTES", 0)
        models.main(["promote", "2"])
    assert capsys.readouterr().err.startswith("[verify] version 2: reading its ")
    assert reg.resolve_model("current") == second == reg.resolve_model("models:/advanced-ncf@current")
    assert reg.resolve_model("models:/advanced-ncf/1") == first
    rows = models.main(["list"])
    assert [(r["version"], r["current"]) for r in rows] == [("1", False), ("2", True)]
    table = capsys.readouterr().out
    assert "*  2" in table and "0.4000" in table and "current: 2 (before it: 1)" in table

    models.main(["rollback"])
    assert reg.resolve_model("current") == first
    out = capsys.readouterr().out
    assert "current: 1 (rolled back from 2)" in out and "Serve keeps its model until" in out
    with pytest.raises(SystemExit) as exit_info:  # 1 was the first current: nothing before it
        models.main(["rollback"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no previous one" in err[0]
    # jobs.verify names a reference as given (it printed the path "current" made absolute).
    from jobs import verify

    verify.main(["current"])
    assert json.loads(capsys.readouterr().out) == {"model": "current", "verified_dir": first, "verified": True}

    # A version whose directory is gone cannot become current; a path is never looked up.
    os.rename(second, second + "-moved")
    with pytest.raises(InputError, match="gone"):
        store.promote("2")
    assert store.current() == "1" and reg.resolve_model(first) == first


@pytest.mark.faults
def test_a_full_disk_during_a_promote_or_rollback_says_not_to_run_it_again(store, monkeypatch, capsys):
    """Its writes may stand: run_main's "run the same command again" would move current once more
    (a rollback goes back again; a review, 2026-12-07). A list's stays run_main's."""
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", "/store/mlflow.db")
    monkeypatch.setattr(models, "_run", lambda *args: (_ for _ in ()).throw(full))
    for command in (["rollback"], ["promote", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            models.main(command)
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 1 and line.startswith("error: /store/mlflow.db: ENOSPC: No space left"), line
        assert line.endswith(f"list shows where the registry stands (do not run the {command[0]} again before)")
    with pytest.raises(OSError):  # run_main's to say
        models.main(["list"])


@pytest.mark.faults
def test_after_the_current_alias_was_deleted_promote_and_a_new_candidate_set_it(store, tmp_path, capsys):
    """The UI can delete the alias (or the version it named) and leave the history tag: promoting
    the history's last version again said "current: 2 (was 2)" and set nothing."""
    first, second = fake_model_dir(tmp_path, "v1"), fake_model_dir(tmp_path, "v2")
    reg.track_model(first, strict=True), reg.track_model(second, strict=True)
    store.promote("2")
    store.client.delete_registered_model_alias(store.name, reg.CURRENT)
    models.main(["list"])
    assert "current: none;" in capsys.readouterr().out
    models.main(["promote", "2"])
    assert store.current() == "2" and store.history() == ["1", "2"]
    assert "current: 2 (was none)" in capsys.readouterr().out
    # With nothing current, a new candidate is made current; the claims before it do not count.
    store.client.delete_registered_model_alias(store.name, reg.CURRENT)
    assert reg.track_model(fake_model_dir(tmp_path, "v3"), strict=True) == "3"
    assert store.current() == "3" and store.history() == ["1", "2", "3"]
    # Version 3 rolled back from, the alias deleted again: a rollback has nothing to go from, and
    # the next candidate, not version 3's old claim, becomes current.
    models.main(["rollback"])
    store.client.delete_registered_model_alias(store.name, reg.CURRENT)
    with pytest.raises(InputError, match="nothing to roll back"):
        store.rollback()
    assert reg.track_model(fake_model_dir(tmp_path, "v4"), strict=True) == "4"
    assert store.current() == "4" and store.history() == ["1", "2", "4"]
    # A registry reference is not a directory to register: refused before a run is logged.
    with pytest.raises(SystemExit) as exit_info:
        models.main(["register", "current"])
    assert exit_info.value.code == 2 and "not a registry reference" in capsys.readouterr().err
    runs = store.client.search_runs([store.experiment_id(reg.TRAIN_EXPERIMENT)])
    assert len(runs) == 4


@pytest.mark.faults
def test_a_claim_that_lost_late_does_not_win_once_the_alias_is_gone(store, tmp_path):
    """Job B read "nothing current", verified its directory for minutes and claimed after job A
    had become current: its claim stayed unsettled, and once the alias was deleted the next
    training elected B's weeks-old model (and said "version 2 became current meanwhile")."""
    assert reg.track_model(fake_model_dir(tmp_path, "a"), strict=True) == "1"
    assert store.current() == "1"
    late = store.register(fake_model_dir(tmp_path, "b"), None, None, {reg.FIRST_CLAIM_TAG: "true"})
    assert store.settle_first()[1] == "1"  # B lost: version 1 stays current
    store.client.delete_registered_model_alias(store.name, reg.CURRENT)
    assert reg.track_model(fake_model_dir(tmp_path, "c"), strict=True) == "3"
    assert store.current() == "3" != late


RACER = """
import sys, os, time
from ncf import registry as reg
model_dir, run_id, go = sys.argv[1:]
store = reg.Registry()
open(model_dir + ".ready", "w").close()
deadline = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.005)
reg.track_model(model_dir, run_id=run_id, strict=True, registry=store)
"""


@pytest.mark.faults
def test_first_candidates_racing_into_an_empty_registry_agree_on_the_lowest(tmp_path, monkeypatch):
    """Three jobs register their first candidates into an empty registry at once (released
    together once each has opened the store). Before, each saw nothing current and promoted its
    own: the last alias won, the others' logs said "now current" of a version that was not, and
    the history tag could name another version than the alias (a rollback to one never current)."""
    outvoted = 0
    # Three rounds, and up to three more while none raced: on a loaded machine the racers may
    # run one after another (each then finds version 1 current), which proves nothing either way.
    for round_ in range(6):
        if round_ >= 3 and outvoted:
            break
        root = tmp_path / f"round{round_}"
        root.mkdir()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        store = reg.Registry()  # the store's tables made before the racers open it
        dirs = [fake_model_dir(root, f"v{i}") for i in range(3)]
        runs = [store.log_run(reg.TRAIN_EXPERIMENT, f"racer-{i}") for i in range(3)]
        go = root / "go"
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, d, r, str(go)],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": REPO},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for d, r in zip(dirs, runs)
        ]
        deadline = time.monotonic() + 120
        while not all(os.path.exists(d + ".ready") for d in dirs) and time.monotonic() < deadline:
            time.sleep(0.05)  # each has imported MLflow and opened the store
        go.write_text("go")
        logs = []
        for racer in racers:
            out, err = racer.communicate(timeout=120)
            assert racer.returncode == 0, err[-2000:]
            logs.append(out)
        assert store.current() == "1" and store.history() == ["1"], (round_, logs)
        lines = [line for log in logs for line in log.splitlines() if "version" in line]
        assert len(lines) == 3 and sum("now current (nothing was)" in line for line in lines) == 1, lines
        (won,) = [line for line in lines if "now current" in line]
        assert "version 1 of" in won
        # The others: outvoted, or too late to claim (version 1 was current when they asked).
        for line in lines:
            if line != won:
                assert "version 1 became current meanwhile" in line or "current is 1;" in line, lines
        outvoted += sum("became current meanwhile" in line for line in lines)
    assert outvoted, "no round raced: every job found version 1 current"


@pytest.mark.faults
def test_a_version_whose_directory_was_trained_over_is_refused_not_resolved_to_the_newer_model(store, tmp_path):
    """Old code: the registry kept only the path, so after a second training into the same
    --output, rollback (and models:/NAME/1) resolved to the newer model and said it was 1."""
    model = fake_model_dir(tmp_path, "week1")
    assert reg.track_model(model, strict=True) == "1"
    shutil.rmtree(model)
    os.rename(fake_model_dir(tmp_path, "week2"), model)  # jobs.train swaps a new directory in
    assert reg.track_model(model, strict=True) == "2"
    store.promote("2")
    with pytest.raises(InputError, match=r"version 1's model \(week1\) was replaced there by week2"):
        store.rollback()
    assert store.current() == "2" and reg.resolve_model("current") == model
    with pytest.raises(InputError, match="was replaced"):
        reg.resolve_model("models:/advanced-ncf/1")


@pytest.mark.faults
def test_a_version_whose_weights_were_trained_on_under_the_same_version_is_refused(store, tmp_path):
    """A reused --name resumes its run and trains on (more --epochs) into the same --output under
    the same version string: old code compared the strings alone and served the new weights as
    the old version."""
    model = fake_model_dir(tmp_path, "week1")
    assert reg.track_model(model, strict=True) == "1"
    weights = os.path.join(model, WEIGHTS)
    with open(weights, "ab") as f:
        f.write(b"\0")  # other bytes, the directory sealed again as a training's save seals it
    write_manifest(model, unsealed=[METRICS])
    with pytest.raises(InputError, match=r"version 1's model \(week1\) was replaced there by week1 with other weights"):
        store.path_of("1")


@pytest.mark.faults
def test_a_deleted_experiment_or_a_store_that_does_not_exist_is_one_line(store, tmp_path):
    """A deleted experiment made every run fail (the training's advice to register later failed
    the same way, with a traceback); a read-only command given a store path with a typo created
    an empty store there and said nothing was registered."""
    experiment = store.experiment_id("ncf-train")
    store.client.delete_experiment(experiment)
    with pytest.raises(reg.StoreUnavailable, match="experiment ncf-train is deleted; restore it"):
        store.experiment_id("ncf-train")
    typo = tmp_path / "elsewhere" / "mlfow.db"
    with pytest.raises(InputError, match="no model registry at sqlite:///.*mlfow.db: .* does not exist"):
        reg.Registry(f"sqlite:///{typo}", create=False)
    assert not typo.exists() and not typo.parent.exists()


@pytest.mark.faults
def test_a_store_that_refuses_a_write_is_one_line(store, tmp_path, monkeypatch, capsys):
    """A store that can be read but not written (a read-only database, a token without write
    access): creating an experiment was read as "created meanwhile", and the lookup after it
    failed with an AttributeError; promote's alias call was a traceback."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    def refused(*args, **kwargs):
        raise MlflowException("the store refuses writes", error_code=PERMISSION_DENIED)

    assert reg.track_model(fake_model_dir(tmp_path, "v1"), strict=True) == "1"
    assert reg.track_model(fake_model_dir(tmp_path, "v2"), strict=True) == "2"
    monkeypatch.setattr(MlflowClient, "create_experiment", refused)
    with pytest.raises(reg.StoreUnavailable, match="PERMISSION_DENIED .the store refuses writes"):
        store.experiment_id("ncf-new")
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refused)
    with pytest.raises(SystemExit) as exit_info:
        models.main(["promote", "2"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "tracking store sqlite:///" in error[0] and "PERMISSION_DENIED" in error[0]
    assert store.current() == "1"


@pytest.mark.faults
def test_sqlite_uris_are_read_as_sqlalchemy_reads_them(tmp_path, monkeypatch):
    """The store's file was the URI with its prefix cut off: a query string (``?timeout=60``) was
    part of the path, so every reader refused an existing store, and a working directory with a
    space or ``%41`` in its name put the database and its runs' artifacts in different places."""
    odd = tmp_path / "a b%41c"
    odd.mkdir()
    monkeypatch.chdir(odd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = reg.Registry()
    assert reg.sqlite_path(default.uri) == str(odd / "artifacts" / "mlflow.db")
    assert (odd / "artifacts" / "mlflow.db").is_file()
    assert reg.local_artifact_root(default.uri) == str(odd / "artifacts" / reg.ARTIFACTS)
    experiment = default.client.get_experiment(default.experiment_id("ncf-train"))
    assert experiment.artifact_location == (odd / "artifacts" / reg.ARTIFACTS / "ncf-train").as_uri()
    with_timeout = reg.Registry(f"{default.uri}?timeout=60", create=False)
    assert with_timeout.client.get_experiment_by_name("ncf-train").experiment_id == experiment.experiment_id
    assert reg.sqlite_path("sqlite://") is None and reg.local_artifact_root("http://127.0.0.1:5000") is None
    # MLflow makes the database's folder from the URI's text undecoded: a space or '#' encoded
    # needlessly left an empty "a%20b%23c" folder beside the real one (2026-12-06).
    plain = tmp_path / "plain" / "a b#c"
    plain.mkdir(parents=True)
    monkeypatch.chdir(plain)
    beside = reg.Registry()
    assert beside.uri == f"sqlite:///{plain}/artifacts/mlflow.db"
    assert reg.track_model(fake_model_dir(tmp_path / "plain" / "a b#c", "v1"), strict=True, registry=beside) == "1"
    assert os.listdir(tmp_path / "plain") == ["a b#c"]
    (run,) = beside.client.search_runs([beside.experiment_id("ncf-train")])
    assert run.info.artifact_uri.startswith((plain / "artifacts" / reg.ARTIFACTS).as_uri())


@pytest.mark.faults
def test_rollback_passes_over_a_version_deleted_since_it_was_current(store, tmp_path, capsys):
    """The history still named a deleted version, and every rollback failed on it."""
    for version in ("v1", "v2", "v3"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    store.promote("2")
    store.promote("3")
    store.client.delete_model_version(store.name, "2")
    assert store.rollback() == ("3", "1")
    assert store.current() == "1" and store.history() == ["1"]
    models.main(["--tracking-uri", store.uri, "promote", "3"])
    out = capsys.readouterr().out
    assert f"[RAY_AUTH_MODE=token] MLFLOW_TRACKING_URI={store.uri} python -m jobs.deploy --model current" in out


@pytest.mark.faults
def test_a_rollback_stopped_midway_or_over_a_deleted_version_never_goes_back_to_the_bad_one(
    store, tmp_path, monkeypatch
):
    """Found by the registry review of 2026-12-05. A rollback stopped between its two writes (the
    alias moved, the history not) read as a move to the old version, so the next rollback went
    back to the version just rolled back from; 1, 2, 1 with 2 deleted rolled back from 1 to 1,
    said so and erased the history."""
    for version in ("v1", "v2", "v3"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    store.promote("2")
    store.promote("3")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    # Stopped at either write: the old order moved the alias first, so a stop at the history's
    # write left 2 current with a history that read 2 as moved to from 3.
    for write in (store._set_model_tag, store.client.set_registered_model_alias):
        with monkeypatch.context() as patch:
            patch.setattr(write.__self__, write.__name__, stopped)
            with pytest.raises(KeyboardInterrupt):
                store.rollback()
        assert store.current() == "3" and store.history()[-2:] == ["2", "3"]  # not done: asked again
    assert store.rollback() == ("3", "2") and store.current() == "2"
    assert store.rollback() == ("2", "1") and store.current() == "1"

    store.promote("2")
    store.promote("1")
    store.client.delete_model_version(store.name, "2")
    with pytest.raises(InputError, match="no previous one"):
        store.rollback()
    assert store.current() == "1"


@pytest.mark.faults
def test_registering_with_a_data_the_model_was_not_trained_on_is_refused(store, tmp_path, capsys):
    """``register --data`` recorded any DATA as the version's lineage; the weights' own is kept too."""
    model = fake_model_dir(tmp_path, "v1")
    other = tiny_data(str(tmp_path / "other"), users=7)
    with pytest.raises(SystemExit) as exit_info:
        models.main(["register", model, "--data", other])
    assert exit_info.value.code == 2
    assert "not the DATA" in capsys.readouterr().err and store.versions() == []
    assert store.client.search_experiments(filter_string="name = 'ncf-train'") == []  # no run logged for it
    trained_on = os.path.join(tmp_path, "tiny", "data")
    models.main(["register", model, "--data", trained_on])
    (row,) = store.versions()
    assert row["data_vocab_sha256"] == read_json(os.path.join(model, "config.json"))["data"]["vocab_sha256"]


@pytest.mark.faults
def test_a_blue_green_link_registers_each_target_so_rollback_reaches_the_old_model(store, tmp_path):
    link = str(tmp_path / "serving")
    blue = fake_model_dir(tmp_path, "blue")
    os.symlink(blue, link)
    assert reg.track_model(link, strict=True) == "1"
    green = fake_model_dir(tmp_path, "green")
    os.remove(link)
    os.symlink(green, link)  # what a training into the link does
    assert reg.track_model(link, strict=True) == "2"
    store.promote("2")
    assert reg.resolve_model("current") == green
    store.rollback()
    assert reg.resolve_model("current") == blue


@pytest.mark.faults
def test_a_tracking_server_that_accepts_and_never_answers_is_try_later_within_minutes(monkeypatch):
    """A wedged server (or a load balancer without a backend) accepts the connection and never
    answers: with MLflow's defaults each registry call waited about 20 minutes (120 s a try, read
    timeouts retried 7 times), then said "does not open" (exit 2) where no answer is exit 75 (a
    review of the registry, 2026-12-07). ncf sets 60 s a try and 3 retries; the silence is
    StoreUnreachable. Here 1 s and no retry, against a socket on 127.0.0.1 that never replies."""
    import socket
    import threading

    import ncf  # noqa: F401 - sets MLflow's defaults where the environment does not

    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    silent = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept_and_say_nothing():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue

    acceptor = threading.Thread(target=accept_and_say_nothing, daemon=True)
    acceptor.start()
    try:
        started = time.monotonic()
        with pytest.raises(reg.StoreUnreachable, match="no server answers there .*try later"):
            reg.Registry(uri=f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert time.monotonic() - started < 60 and held  # connected, then given up on
    finally:
        stop.set()
        acceptor.join(5)
        for connection in held:
            connection.close()
        silent.close()


@pytest.mark.faults
def test_verify_seal_refuses_a_registered_directory_given_by_its_path(store, tmp_path, capsys, monkeypatch):
    """`jobs.verify current --seal` was refused (session 63), the same directory by its path was
    sealed again in place: its edited files became what verify called "verified", while the
    registry's record of the version no longer matched them (a review, 2026-12-07)."""
    from jobs import verify

    model = fake_model_dir(tmp_path, "best")
    assert reg.track_model(model, strict=True) == "1"
    manifest = os.path.join(model, "manifest.json")
    sealed = open(manifest, "rb").read()
    link = tmp_path / "link"
    link.symlink_to(model)
    for given in (model, str(link)):
        with pytest.raises(SystemExit) as exited:
            verify.main([given, "--seal"])
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and error.startswith(f"error: --seal {given}: the directory is version 1 of")
        assert "copy it to a new directory, seal that" in error
    assert open(manifest, "rb").read() == sealed
    copy = shutil.copytree(model, tmp_path / "copy")
    verify.main([str(copy), "--seal"])  # not registered: sealed
    assert json.loads(capsys.readouterr().out)["verified"] is True
    # A store that does not answer is not "no registry": the second read found the check skipped.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SystemExit) as exited:
        verify.main([model, "--seal"])
    error = capsys.readouterr().err
    assert exited.value.code == 75 and "no server answers there" in error, error
    assert open(manifest, "rb").read() == sealed


@pytest.mark.faults
def test_the_same_model_registered_again_is_the_version_it_already_is(store, tmp_path, capsys):
    """A sweep resumed after its refit was interrupted registered its unchanged SWEEP/best again:
    each resume added a version of the same weights (a review, 2026-12-05)."""
    model = fake_model_dir(tmp_path, "best")
    assert reg.track_model(model, strict=True) == "1"
    assert reg.track_model(model, strict=True) == "1"
    assert "already version 1 of advanced-ncf, the same model; current is 1 (" in capsys.readouterr().out
    assert reg.track_model(model, strict=True, candidate=False) == "2"  # recorded otherwise: not the same
    with open(os.path.join(model, WEIGHTS), "ab") as f:  # a resumed --name trained on: other weights
        f.write(b"more")
    write_manifest(model, unsealed=[METRICS])  # sealed again, as a save does
    assert reg.track_model(model, strict=True) == "3"
    assert [v["version"] for v in store.versions()] == ["1", "2", "3"]
    store.client.delete_registered_model_alias(store.name, reg.CURRENT)  # nothing current: the first claim
    assert reg.track_model(model, strict=True) == "4" and store.current() == "4"


@pytest.mark.faults
def test_the_demos_model_links_keep_each_reruns_version_resolvable(store, tmp_path):
    """A second `make demo` trained into the same plain workdir/model, replacing the directory of
    the first run's version, which was current: `--model current` was refused from then on (a
    review, 2026-12-05). The demo's outputs are blue/green links from the first run on."""
    from jobs.demo import model_links
    from ncf.model.directory import written_dir

    data = tiny_data(str(tmp_path / "tiny"))
    model = str(tmp_path / "demo" / "model")
    versions = []
    for run in ("run1", "run2"):
        model_links(model)  # a rerun keeps the link as it is
        save_untrained_model_dir(model, data, version=run, **SMALL)
        versions.append(written_dir(model, run))
        reg.track_model(versions[-1], strict=True)
    assert os.path.islink(model) and versions == [str(tmp_path / "demo" / f"model-{run}") for run in ("run1", "run2")]
    assert reg.resolve_model("current") == versions[0]  # the first demo's, still on disk
    store.promote("2")
    assert reg.resolve_model("current") == versions[1]
    store.rollback()
    assert reg.resolve_model("current") == versions[0]


@pytest.mark.faults
def test_a_training_whose_output_another_saved_to_meanwhile_acts_on_its_own_directory_or_stops(tmp_path):
    """The training job evaluated, annotated and registered whatever its --output held minutes
    after its save: a second training's model under the first's test figures and parameters.
    ``written_dir`` gives the run its own directory behind a blue/green link, and refuses a
    plain directory another save replaced."""
    from ncf.model.directory import written_dir

    data = tiny_data(str(tmp_path / "tiny"))
    plain = str(tmp_path / "plain")
    save_untrained_model_dir(plain, data, version="first", **SMALL)
    assert written_dir(plain, "first") == os.path.realpath(plain)
    save_untrained_model_dir(plain, data, version="second", **SMALL)
    with pytest.raises(InputError, match="another training saved model second there after this run saved first"):
        written_dir(plain, "first")
    link = str(tmp_path / "serving")
    os.symlink(save_untrained_model_dir(str(tmp_path / "blue"), data, version="blue", **SMALL), link)
    save_untrained_model_dir(link, data, version="green", **SMALL)  # writes serving-green, repoints the link
    green = written_dir(link, "green")
    save_untrained_model_dir(link, data, version="third", **SMALL)  # another training, meanwhile
    assert green == str(tmp_path / "serving-green") and written_dir(green, "green") == green
    with pytest.raises(InputError):
        written_dir(link, "green")


@pytest.mark.faults
def test_a_damaged_version_is_not_made_current(store, tmp_path, capsys):
    """Old code checked only that the directory existed and held the version: a changed tensor
    became current, and every job that takes ``current`` refused it from then on."""
    first = fake_model_dir(tmp_path, "v1")
    second = fake_model_dir(tmp_path, "v2")
    assert reg.track_model(first, strict=True) == "1" and reg.track_model(second, strict=True) == "2"
    weights = os.path.join(second, "model.pt")
    intact = open(weights, "rb").read()
    with open(weights, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(bytes([intact[-1] ^ 0xFF]))
    with pytest.raises(SystemExit) as exit_info:
        models.main(["promote", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.pt does not match its sha256" in err[0]
    assert store.current() == "1" and store.history() == ["1"]
    # Repaired, it is promoted; then the first is damaged: no rollback to it.
    with open(weights, "wb") as f:
        f.write(intact)
    store.promote("2")
    os.remove(os.path.join(first, "model.pt"))
    with pytest.raises(InputError, match="model.pt"):
        store.rollback()
    assert store.current() == "2" and reg.resolve_model("current") == second


@pytest.mark.faults
def test_a_sweep_trial_restarted_by_resume_keeps_its_run_and_a_moved_sweep_finds_it(
    store, tmp_path, monkeypatch, capsys
):
    from ray.tune.experiment import Trial

    from tune.tracking import trial_logger

    trial = Trial("train_trial", config={"learning_rate": 0.01}, trial_id="abcde_00000", stub=True)
    sweep = str(tmp_path / "it's a sweep")  # a quote in the path: the run is still searched for
    for epoch in (1, 2):  # the first attempt, then the callback Tune restores on --resume (its runs not saved)
        logger = trial_logger(sweep)
        logger.setup()
        logger.log_trial_start(trial)
        logger.log_trial_result(1, trial, {"epoch": epoch, "val_ndcg@10": 0.3})
    (run,) = store.client.search_runs([store.experiment_id(reg.SWEEP_EXPERIMENT)])
    assert [m.step for m in store.client.get_metric_history(run.info.run_id, "val_ndcg_at_10")] == [1, 2]
    # Resumed, it trains on under today's code: its run says which, beside the first commit.
    assert run.data.tags["resumed_code_commit"] == reg.code_version()["code_commit"] == run.data.tags["code_commit"]
    assert store.find_trial_run(sweep, trial.trial_id) == run.info.run_id
    moved = str(tmp_path / "moved")
    assert store.find_trial_run(moved, trial.trial_id) is None
    assert store.find_trial_run(moved, trial.trial_id, moved=True) == run.info.run_id

    # A lookup that fails (the store away a moment) costs the trial its earlier run, not the sweep;
    # it is asked once more first (a review of tune/, session 67: a resume during a server's
    # restart started a second run for the trial).
    from tune import tracking

    looked_up = []

    def unreachable(*args, **kwargs):
        looked_up.append(1)
        raise reg.StoreUnavailable("tracking store: does not open")

    monkeypatch.setattr(reg.Registry, "find_trial_run", unreachable)
    monkeypatch.setattr(tracking, "LOOKUP_RETRY_S", 0.0)
    other = Trial("train_trial", config={"learning_rate": 0.02}, trial_id="fghij_00001", stub=True)
    logger = trial_logger(sweep)
    logger.setup()
    logger.log_trial_start(other)
    assert "trial fghij_00001: its earlier run not looked up" in capsys.readouterr().out and looked_up == [1, 1]
    assert len(store.client.search_runs([store.experiment_id(reg.SWEEP_EXPERIMENT)])) == 2

    # The store lost mid-sweep: Tune calls its callbacks unguarded, so a raising one ended every
    # trial; now the trials' records are what is lost, said once a kind, and the sweep goes on.
    def lost(*args, **kwargs):
        raise reg.StoreUnavailable("tracking store: does not open")

    monkeypatch.setattr(logger.mlflow_util, "log_metrics", lost)
    monkeypatch.setattr(logger.mlflow_util, "end_run", lost)
    for epoch in (1, 2):
        logger.log_trial_result(1, other, {"epoch": epoch, "val_ndcg@10": 0.3})
    logger.log_trial_end(other)
    said = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1] for line in said] == [
        "an epoch's metrics not recorded, the sweep goes on (tracking store",
        "a trial's end not recorded, the sweep goes on (tracking store",
    ], said
    # A server that stops answering: each call waited out MLflow's timeouts and retries (minutes)
    # inside Tune's loop, per epoch and per trial (a second read, 2026-12-07). Asked no more.
    asked = []

    def silent(*args, **kwargs):
        asked.append(1)
        from mlflow.exceptions import MlflowException

        raise MlflowException(  # the client's words, as mlflow.utils.rest_utils raises them
            "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
            "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: "
            "/api/2.0/mlflow/runs/log-batch (Caused by ReadTimeoutError(\"HTTPConnectionPool(host='127.0.0.1', "
            'port=5000): Read timed out. (read timeout=60)"))'
        )

    logger.tracking_uri = "http://127.0.0.1:5000"
    refused = []

    def restarting(*args, **kwargs):
        from mlflow.exceptions import MlflowException

        refused.append(1)
        raise MlflowException(
            "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
            "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: "
            "/api/2.0/mlflow/runs/log-batch (Caused by NewConnectionError('<urllib3.connection.HTTPConnection "
            "object>: Failed to establish a new connection: [Errno 111] Connection refused'))"
        )

    monkeypatch.setattr(logger.mlflow_util, "log_metrics", restarting)
    for epoch in (1, 2):  # a server restarting refuses for seconds: asked again each time
        logger.log_trial_result(1, other, {"epoch": epoch, "val_ndcg@10": 0.3})
    assert refused == [1, 1] and "no answer in time" not in capsys.readouterr().out
    monkeypatch.setattr(logger.mlflow_util, "log_metrics", silent)
    monkeypatch.setattr(logger.mlflow_util, "end_run", silent)
    for epoch in (1, 2, 3):
        logger.log_trial_result(1, other, {"epoch": epoch, "val_ndcg@10": 0.3})
    logger.log_trial_end(other)
    logger.log_trial_start(Trial("train_trial", config={}, trial_id="fghij_00002", stub=True))
    said = capsys.readouterr().out
    assert asked == [1] and said.count("no answer in time") == 1, said
    assert "recording nothing more there until it is resumed" in said
    # The lookup of a trial's earlier run goes silent the same way: it waited out MLflow's timeouts,
    # then the run's start waited them out again (a review of tune/, session 67).

    fresh = trial_logger(sweep)
    fresh.setup()

    def silent_registry(uri):  # the real Registry's opening query, timed out, as the registry words it
        try:
            silent()
        except Exception as e:
            raise reg.store_failed(uri, e) from None

    wrapped = None
    try:
        silent_registry("http://127.0.0.1:5000")
    except reg.StoreUnreachable as e:
        wrapped = str(e)
    assert wrapped is not None and "timed out" in wrapped, wrapped
    asked.clear()
    monkeypatch.setattr(tracking, "Registry", silent_registry)
    fresh.tracking_uri = "http://127.0.0.1:5000"
    monkeypatch.setattr(fresh.mlflow_util, "start_run", lambda *a, **k: pytest.fail("the run's start was asked"))
    asked.clear()
    fresh.log_trial_start(Trial("train_trial", config={}, trial_id="fghij_00003", stub=True))
    fresh.log_trial_start(Trial("train_trial", config={}, trial_id="fghij_00004", stub=True))
    said = capsys.readouterr().out
    assert asked == [1] and said.count("no answer in time") == 1, said
    assert "trial fghij_00003's run (looking up its earlier one) not recorded, no answer in time" in said, said


def test_current_with_nothing_registered_is_a_one_line_error(store, capsys, tmp_path):
    with pytest.raises(InputError, match="no version of advanced-ncf is current.*jobs.train"):
        reg.resolve_model("current")
    for argv in (["promote", "7"], ["promote", "latest"], ["resolve", "models:/nope"]):
        with pytest.raises(SystemExit) as exit_info:
            models.main(argv)
        assert exit_info.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "no version 7" in errors[0] and "'latest'" in errors[1]


@pytest.mark.faults
def test_a_validated_model_registered_by_hand_is_not_made_current(store, tmp_path, capsys):
    """What a training job prints when the store was down: `register MODEL-validated
    --not-deployable`, then `register MODEL`. Without the flag the validated model (trained without
    the test weeks) became current in an empty registry, before the refit."""
    validated = fake_model_dir(tmp_path, "v1")
    assert models.main(["register", validated, "--not-deployable"]) == "1"
    assert store.current() is None and store.versions()[0]["deployable"] == "false"
    assert "version 1 of advanced-ncf, nothing is current (" in capsys.readouterr().out  # README: names current
    assert models.main(["register", fake_model_dir(tmp_path, "v2")]) == "2"
    assert store.current() == "2"
    # Promoted by hand all the same: as asked, and said (running README's commands, 2026-12-05).
    capsys.readouterr()
    assert models.main(["promote", "1"]) == "1" and store.current() == "1"
    said = capsys.readouterr()  # stdout: promote's one line (README), the note beside it on stderr
    assert "note: version 1 was registered --not-deployable" in said.err
    assert len(said.out.splitlines()) == 1 and said.out.startswith("current: 1 (was 2)")
    models.main(["promote", "2"])
    assert "--not-deployable" not in capsys.readouterr().out


@pytest.mark.faults
def test_the_registrys_readers_do_not_create_an_empty_store_where_they_run(tmp_path, monkeypatch, capsys):
    """Run from another directory without MLFLOW_TRACKING_URI, the read-only commands created an
    empty artifacts/mlflow.db there and reported nothing registered, nothing current."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    for argv in (["list"], ["resolve"], ["promote", "1"], ["rollback"]):
        with pytest.raises(SystemExit) as exit_info:
            models.main(argv)
        assert exit_info.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all("no model registry here" in line for line in errors), errors
    with pytest.raises(InputError, match="MLFLOW_TRACKING_URI"):
        reg.resolve_model("current")
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.faults
def test_a_store_that_fails_is_not_read_as_nothing_registered(store, tmp_path, capsys):
    """Every MLflow error read as "no such model": a failing store had nothing current, so a
    first candidate was promoted over the real current version and the rollback history reset.
    Only "not found" means that now; any other failure is one line, and a training job that
    records its model then says it was not recorded."""
    import sqlite3

    assert reg.track_model(fake_model_dir(tmp_path, "v1"), strict=True) == "1"
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("DROP TABLE registered_model_aliases")
    for read in (store.current, store.history):
        with pytest.raises(reg.StoreUnavailable, match="tracking store .*registered_model_aliases"):
            read()
    with pytest.raises(SystemExit) as exit_info:
        models.main(["list"])
    assert exit_info.value.code == 2
    # MLflow logged the database error, with its tracebacks, before raising it: 66-98 lines.
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no such table: registered_model_aliases" in error[0], error[:3]
    assert reg.track_model(fake_model_dir(tmp_path, "v2")) is None  # not promoted over version 1
    assert "not recorded (StoreUnavailable" in capsys.readouterr().err


@pytest.mark.faults
def test_a_store_that_does_not_open_is_one_line_yet_does_not_fail_a_finished_training(tmp_path, monkeypatch, capsys):
    """A tracking store that is not a database: the registry's commands refuse it in one line
    (a SQLAlchemy traceback before); a training job that cannot record its model says so and
    goes on (the refit still runs), as for any failure to record."""
    garbage = tmp_path / "mlflow.db"
    garbage.write_text("not a database\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{garbage}")
    with pytest.raises(SystemExit) as exit_info:
        models.main(["list"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: tracking store sqlite:///{garbage}: does not open (DatabaseError: "
        "(sqlite3.DatabaseError) file is not a database)"
    ]
    model_dir = str(tmp_path / "model")
    assert reg.track_model(model_dir, str(tmp_path / "data")) is None
    assert "not recorded (StoreUnavailable: tracking store" in capsys.readouterr().err
    with pytest.raises(reg.StoreUnavailable):
        reg.track_model(model_dir, str(tmp_path / "data"), strict=True)


@pytest.mark.faults
def test_a_tracking_server_that_is_down_is_one_line_at_once(monkeypatch, capsys):
    """MLflow's client retried a refused connection 7 times with backoff (minutes) before its
    own error; `jobs.models` now says so in one line."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        models.main(["list"])
    assert exit_info.value.code == 75 and time.monotonic() - started < 30  # a server restarting: try later
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: tracking store http://127.0.0.1:1: no server answers there")


# -- a training run ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_training_run_is_tracked_and_its_models_registered(small_data, store, tmp_path):
    data, _ = small_data
    output = str(tmp_path / "model")
    argv = ["--data", data, "--output", output, "--refit", "--epochs", "2", "--batch-size", "8"]
    argv += ["--max-steps-per-epoch", "3", "--val-users", "20", "--patience", "5", "--name", "train-regtest"]
    argv += ["--test-users", "15"]  # a seeded sample of the test weeks' households
    argv += ["--model", json.dumps(SMALL_MODEL), "--storage", str(tmp_path / "runs")]
    train.main(argv)
    client = store.client

    # Runs: one per training run, with parameters, every epoch (step = epoch), the held-out table.
    experiment = client.get_experiment_by_name(reg.TRAIN_EXPERIMENT)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"train-regtest", "train-regtest-refit"}
    validated = runs["train-regtest"]
    assert validated.data.params["epochs"] == "2" and validated.data.params["refit"] == "True"
    history = client.get_metric_history(validated.info.run_id, "val_ndcg_at_10")
    assert sorted(m.step for m in history) == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(validated.info.run_id, "train_loss")) == [1, 2]
    assert {"test_ndcg_at_10", "test_recall_at_10"} <= set(validated.data.metrics)
    with open(os.path.join(output + "-validated", "metrics.json")) as f:
        assert json.load(f)["test"]["users"] == 15
    table = client.load_table(experiment.experiment_id, "heldout_test.json", run_ids=[validated.info.run_id])
    assert table["ndcg@10"].iloc[0] == pytest.approx(validated.data.metrics["test_ndcg_at_10"])

    # Versions: the validated and the refit model, told apart, with their lineage.
    versions = {v["kind"]: v for v in store.versions()}
    assert set(versions) == {"validated", "refit"}
    v, refit = versions["validated"], versions["refit"]
    assert v["model_dir"] == output + "-validated" and refit["model_dir"] == output
    assert v["model_version"].endswith("-validated") and refit["model_version"].endswith("-refit")
    assert v["run_id"] == validated.info.run_id and refit["run_id"] == runs["train-regtest-refit"].info.run_id
    assert v["data_stats_sha256"] == sha256(layout.stats_path(data)) == refit["data_stats_sha256"]
    assert v["weights_sha256"] == sha256(os.path.join(v["model_dir"], "model.pt")) != refit["weights_sha256"]
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert v["code_commit"] == (head or "unknown")
    assert float(v["test_ndcg_at_10"]) == pytest.approx(validated.data.metrics["test_ndcg_at_10"], abs=1e-4)
    assert refit["test_of"] == "its validated run" and refit["validated_version"] == v["version"]
    assert (v["deployable"], refit["deployable"]) == ("false", "true")
    # The deployment model (the refit) is current: the first deployable model registered.
    assert store.current() == refit["version"] and reg.resolve_model("current") == output


@pytest.mark.slow
@pytest.mark.faults
def test_a_run_refused_its_model_directory_at_export_is_exported_by_its_name(
    small_data, store, tmp_path, capsys, monkeypatch
):
    """Another run writing MODEL when the training ends: exit 75 naming the run, whose checkpoints
    a rerun with --name exports without training again (before, a retry trained from scratch)."""
    from ncf.model import directory
    from ncf.model.files import read_config
    from ncf.staging import exclusive

    monkeypatch.setattr(directory, "SAVE_WAIT_S", 2.0)  # the save's wait for the other run: 120 s

    data, _ = small_data
    output = str(tmp_path / "model")
    argv = ["--data", data, "--output", output, "--epochs", "1", "--batch-size", "8", "--max-steps-per-epoch", "3"]
    argv += ["--val-users", "20", "--test-users", "15", "--model-config", json.dumps(SMALL_MODEL)]
    argv += ["--storage", str(tmp_path / "runs")]
    with exclusive(str(tmp_path / ".model.lock"), "the test's other run"):
        with pytest.raises(SystemExit) as exit_info:
            train.main(argv)
    assert exit_info.value.code == 75 and not os.path.exists(output)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {output}: another run is writing it") and "checkpoints are kept" in error
    name = error.split("--name ")[1].split()[0]
    assert train.main(argv + ["--name", name]) == output
    assert f"[train] resuming run {name} after epoch 1" in capsys.readouterr().out
    assert read_config(output)["version"].startswith(name.removeprefix("train-"))


# -- rollback reaches Serve and the nightly job ---------------------------------------------------------


def _batch_versions(model: str, data: str, output: str) -> set:
    argv = ["--model", model, "--data", data, "--output", output, "--k", "3", "--at", "data-end"]
    summary = batch_score.main(argv + ["--actors", "1", "--cpus-per-actor", "0.5", "--batch-size", "50"])
    frame = pd.read_parquet(os.path.join(output, f"run_date={summary['run_date']}"))
    return set(frame["model_version"])


def _served_version(url: str, expected: str, timeout_s: float = 60) -> str:
    """/healthz's model_version once it is ``expected`` (a rollout reconfigures the replicas)."""
    deadline = time.monotonic() + timeout_s
    while True:
        version = requests.get(f"{url}/healthz", timeout=30).json()["model_version"]
        if version == expected or time.monotonic() > deadline:
            return version
        time.sleep(0.5)


@pytest.mark.slow
def test_rolling_back_current_changes_what_serve_and_the_nightly_job_use(small_data, store, tmp_path):
    from ray import serve

    data, _ = small_data
    for version in ("v1", "v2"):
        path = save_untrained_model_dir(str(tmp_path / version), data, version=version, seed=1, **SMALL_MODEL)
        reg.track_model(path, data, strict=True)
    models.main(["promote", "2"])
    assert _batch_versions("current", data, str(tmp_path / "scores")) == {"v2"}
    port = free_port()
    deploy_argv = ["--model", "current", "--port", str(port), "--max-replicas", "1", "--detach"]
    try:
        assert deploy.main(deploy_argv)["model_version"] == "v2"
        models.main(["rollback"])
        deploy.main(deploy_argv)  # deployed again: the same app, rolled out to what is current now
        assert _served_version(f"http://127.0.0.1:{port}", "v1") == "v1"
    finally:
        serve.shutdown()
    assert _batch_versions("current", data, str(tmp_path / "scores")) == {"v1"}


@pytest.mark.faults
def test_the_registry_sends_no_usage_data_out_of_the_machine():
    """MLflow 3 fetches a telemetry config at import and queues an event per registry call, from
    every process outside CI (the registry review of 2026-12-05): importing the project turns it
    off before mlflow is imported, where a user set nothing."""
    ci = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    env = {k: v for k, v in os.environ.items() if k not in ci}
    probe = (
        "import ncf.registry, mlflow\n"
        "from mlflow.telemetry.utils import is_telemetry_disabled\n"
        "print(is_telemetry_disabled())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "True", out.stderr[-2000:]


@pytest.mark.faults
def test_a_version_registered_later_names_the_code_and_data_it_was_trained_on(store, tmp_path, monkeypatch):
    """``jobs.models register`` after a store outage tagged the commit of the checkout that ran it
    and DATA's stats.json as it was then (the registry review of 2026-12-05): the directory now
    records both when it is saved, and the version's tags are those."""
    monkeypatch.setenv("NCF_CODE_COMMIT", "commit-that-trained")
    model = fake_model_dir(tmp_path, "v1")
    data = read_json(os.path.join(model, "config.json"))["data"]["path"]
    trained_stats = sha256(layout.stats_path(data))
    monkeypatch.setenv("NCF_CODE_COMMIT", "commit-that-registers")
    stats = read_json(layout.stats_path(data))
    write_json(layout.stats_path(data), {**stats, "refreshed": True})  # DATA refreshed meanwhile
    assert reg.track_model(model, strict=True) == "1"
    tags = store.client.get_model_version(store.name, "1").tags
    assert tags["code_commit"] == "commit-that-trained" and tags["data_stats_sha256"] == trained_stats


# -- the registry review of 2026-12-06 -------------------------------------------------------------------


@pytest.mark.faults
def test_training_again_into_a_plain_output_says_current_names_a_replaced_directory(
    store, tmp_path, capsys, monkeypatch
):
    """The second version was registered with "current is 1; promote 2 makes it current", though
    version 1's directory now held it: every `--model current` was refused from then on, and
    `list` showed version 1 unmarked. Current stays where it was (a promote decides), and both say so."""
    model = fake_model_dir(tmp_path, "week1")
    assert reg.track_model(model, strict=True) == "1"
    shutil.rmtree(model)
    os.rename(fake_model_dir(tmp_path, "week2"), model)  # jobs.train swaps a new directory in
    capsys.readouterr()
    assert reg.track_model(model, strict=True) == "2"
    line = capsys.readouterr().out.strip()
    assert "version 2 of advanced-ncf, current is 1, whose directory this one replaced: --model current is " in line
    assert "refused until python -m jobs.models promote 2 makes it current" in line
    assert store.current() == "1"
    models.main(["list"])
    first, second = capsys.readouterr().out.splitlines()[1:3]
    assert first.startswith("*  1 ") and first.endswith(f"{model} (replaced)")
    assert second.split()[0] == "2" and second.endswith(model)
    # A version registered beside it is not said to have replaced current's directory.
    reg.track_model(fake_model_dir(tmp_path, "other"), strict=True)
    assert "current is 1; python -m jobs.models promote 3" in capsys.readouterr().out
    models.main(["promote", "2"])
    assert reg.resolve_model("current") == model
    # A directory holding a model of an older format (every command says "retrain it"), one that
    # holds none, and one whose swap another run is finishing: all were "(not a model)".
    config = read_json(os.path.join(model, "config.json"))
    write_json(os.path.join(model, "config.json"), {**config, "format_version": 3})
    os.remove(tmp_path / "other" / "config.json")
    capsys.readouterr()
    models.main(["list"])
    rows = capsys.readouterr().out.splitlines()[1:]
    assert rows[1].endswith(f"{model} (older format)") and rows[2].endswith(f"{tmp_path / 'other'} (not a model)")

    def finishing(path, tags):
        raise TryLater(f"{path}: another run is finishing its replacement")

    monkeypatch.setattr(models, "held_instead", finishing)
    models.main(["list"])
    assert capsys.readouterr().out.splitlines()[1].endswith(model)  # no mark: the next list tells


@pytest.mark.faults
def test_the_default_store_inside_a_ray_jobs_unpacked_working_directory_is_refused(tmp_path, monkeypatch, capsys):
    """`ray job submit --working-dir .` starts the driver in Ray's unpacked copy of the directory
    (Ray 2.60: <session>/runtime_resources/working_dir_files/_ray_pkg_<hash>), which Ray deletes:
    without MLFLOW_TRACKING_URI the jobs registered into a store there and said "now current"."""
    from tune.tracking import sweep_store

    model = fake_model_dir(tmp_path, "v1")
    package = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for argv in (["list"], ["register", model]):
        with pytest.raises(SystemExit) as exit_info:
            models.main(argv)
        assert exit_info.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("no MLFLOW_TRACKING_URI in a Ray job" in line for line in errors), errors
    assert 'ray job submit --runtime-env-json \'{"env_vars": {"MLFLOW_TRACKING_URI": ' in errors[0]
    with pytest.raises(reg.StoreUnavailable, match="no MLFLOW_TRACKING_URI in a Ray job"):
        sweep_store()  # a sweep: before its first trial
    from jobs import train

    with pytest.raises(SystemExit) as exit_info:  # a training is refused before it starts, not after its hours
        train.main(
            ["--data", str(tmp_path / "no-data"), "--output", str(tmp_path / "model"), "--storage", str(tmp_path)]
        )
    assert exit_info.value.code == 2 and "no MLFLOW_TRACKING_URI in a Ray job" in capsys.readouterr().err
    # track_model itself (a training's registration once its model is written) says it and goes on.
    assert reg.track_model(model) is None
    assert "not recorded (StoreUnavailable: no MLFLOW_TRACKING_URI in a Ray job" in capsys.readouterr().err
    assert os.listdir(package) == []  # nothing written there
    # The README's spelled default, relative: read in the unpacked copy too (it was accepted there).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///artifacts/mlflow.db")
    with pytest.raises(SystemExit) as exit_info:
        models.main(["register", model])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"tracking store sqlite:///artifacts/mlflow.db in a Ray job: its file {package}/artifacts/mlflow.db" in line
    assert "--runtime-env-json" in line
    with pytest.raises(reg.StoreUnavailable, match="in a Ray job: its file"):
        reg.check_store_outlives_the_job()  # what a training asks before it starts
    with pytest.raises(reg.StoreUnavailable, match="in a Ray job: its file"):
        reg.Registry(f"sqlite:///{package / 'mlflow.db'}")  # --tracking-uri, absolute
    assert os.listdir(package) == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}")
    reg.check_store_outlives_the_job()
    assert reg.track_model(model, strict=True) == "1"


@pytest.mark.faults
def test_an_empty_uri_a_name_references_cannot_name_and_a_version_past_int64_are_one_line(store, tmp_path, capsys):
    """`--tracking-uri ""` acted on the default store; `--name a@b` (or a/b, a:b) was accepted
    and its printed models:/ references refused later (MLflow refuses / and : itself, blamed on
    the store); version 99999999999999999999 was the store's INTERNAL_ERROR (int too large)."""
    reg.track_model(fake_model_dir(tmp_path, "v1"), strict=True)
    cases = [
        (["--tracking-uri", "", "list"], "--tracking-uri is empty"),
        (["list", "--tracking-uri", " "], "--tracking-uri is empty"),
        *((["--name", f"shop{c}2", "list"], f"--name 'shop{c}2': a registered model's name") for c in "@/:"),
        (["resolve", "models:/shop:2/1"], "models:/shop:2/1: not a model reference"),
        (["resolve", "models:/o'brien/1"], "models:/o'brien/1: not a model reference"),  # was: --name "o'brien"
        (["resolve", "models:/ /1"], "models:/ /1: not a model reference"),
        (["promote", "99999999999999999999"], "no version 99999999999999999999 of advanced-ncf"),
        (["resolve", f"models:/advanced-ncf/{2**63}"], f"no version {2**63} of advanced-ncf"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            models.main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and expected in error[0], (argv, error)
    assert store.current() == "1"


@pytest.mark.faults
def test_a_rollback_past_deleted_versions_says_they_were_deleted(store, tmp_path):
    """Versions 1 and 2 current before 3, both deleted since: the rollback said "version 3 is the
    first that was current"."""
    for version in ("v1", "v2", "v3"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    store.promote("2")
    store.promote("3")
    for version in ("1", "2"):
        store.client.delete_model_version(store.name, version)
    expected = r"the versions current before version 3 \(1, 2\) were deleted since; python -m jobs.models promote"
    with pytest.raises(InputError, match=expected):
        store.rollback()
    assert store.current() == "3"


@pytest.mark.faults
def test_a_moved_local_store_is_refused_naming_the_rename_and_an_unwritable_artifact_is_one_line(
    tmp_path, monkeypatch, capsys
):
    """The project moved with its store: the experiments kept their old absolute artifact
    location, where runs wrote their artifacts (recreating the moved folder), or, a file there, a
    NotADirectoryError traceback escaped."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "before").mkdir()
    monkeypatch.chdir(tmp_path / "before")
    assert reg.track_model(fake_model_dir(tmp_path, "v1"), strict=True) == "1"
    monkeypatch.chdir(tmp_path)
    os.rename(tmp_path / "before", tmp_path / "after")
    monkeypatch.chdir(tmp_path / "after")
    moved = reg.Registry(create=False)
    with pytest.raises(reg.StoreUnavailable) as refused:
        moved.experiment_id("ncf-train")
    refusal = str(refused.value)
    assert (
        f"experiment ncf-train keeps its runs' artifacts in {tmp_path}/before/artifacts/mlflow-artifacts/ncf-train, "
        in refusal
    )
    assert (
        f"it was created beside a store in {tmp_path}/before/artifacts, and this store was moved, copied or mounted"
        in refusal
    )
    capsys.readouterr()
    assert reg.track_model(fake_model_dir(tmp_path, "v2")) is None
    assert "not recorded (StoreUnavailable: tracking store" in capsys.readouterr().err
    assert not (tmp_path / "before").exists()
    # The remedy the line names, run as printed from another directory: it names the store (the
    # mlflow CLI's own default is an mlflow.db where it runs); the next run's experiment is beside it.
    rename = refusal.split("rename that experiment (")[1].split(", or the UI)")[0]
    assert rename.startswith(
        f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/after/artifacts/mlflow.db mlflow experiments rename"
    )
    (tmp_path / "elsewhere").mkdir()
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
    done = subprocess.run(
        rename, shell=True, cwd=tmp_path / "elsewhere", env={**os.environ, "PATH": path}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.listdir(tmp_path / "elsewhere") == []  # no stray mlflow.db
    assert moved.client.get_experiment_by_name("ncf-train-before-move") is not None
    assert reg.track_model(fake_model_dir(tmp_path, "v3"), strict=True) == "2"
    assert reg.resolve_model("models:/advanced-ncf/1") == str(tmp_path / "v1")
    # A file where the experiment's folder should be: the store's one line, not a traceback.
    artifacts = tmp_path / "after" / "artifacts" / reg.ARTIFACTS / "ncf-train"
    shutil.rmtree(artifacts)
    artifacts.write_text("in the way\n")
    with pytest.raises(SystemExit) as exit_info:
        models.main(["register", fake_model_dir(tmp_path, "v4")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "tracking store sqlite:///" in error[0] and "NotADirectoryError" in error[0], error

    # A store reached through a symlink: the same folder, by either path.
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    linked = reg.Registry(f"sqlite:///{tmp_path / 'link' / 'mlflow.db'}")
    experiment = linked.experiment_id("ncf-train")
    assert reg.Registry(f"sqlite:///{tmp_path / 'real' / 'mlflow.db'}").experiment_id("ncf-train") == experiment
    # Artifacts where this code did not put them (`mlflow experiments create --artifact-location`,
    # a server's --default-artifact-root/<id>): where MLflow itself writes them, not a move.
    foreign = reg.Registry(f"sqlite:///{tmp_path / 'foreign' / 'mlflow.db'}")
    chosen = {"ncf-train": tmp_path / "bucket" / "artifacts", "ncf-sweeps": tmp_path / "served" / "7"}
    for name, location in chosen.items():
        foreign.client.create_experiment(name, artifact_location=location.as_uri())
        assert foreign.experiment_id(name) == foreign.client.get_experiment_by_name(name).experiment_id
    foreign.log_run("ncf-train", "kept-there", heldout={"ndcg@10": 0.3, "recall@10": 0.2})
    assert list((tmp_path / "bucket" / "artifacts").glob("*/artifacts/heldout_test.json"))


@pytest.mark.faults
@pytest.mark.slow
def test_a_job_submitted_with_its_working_dir_refuses_the_default_store_and_takes_the_one_it_is_given(
    tmp_path, monkeypatch
):
    """The drill on a real `ray start --head`: a job registering a model into the default store,
    in Ray 2.60's unpacked copy of the working directory, said "now current" and the store went
    with the copy. Where Ray starts the driver is what the refusal recognises, and the README's
    --runtime-env-json gives the job a store that outlives it."""
    from test_tune_sweep import head_node, submit_job

    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the head's jobs inherit its environment: no store named
    model = fake_model_dir(tmp_path, "v1")
    shared = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register = ["python", "-m", "jobs.models", "register", model]
    with head_node() as (address, env):
        refused = submit_job(address, env, register)
        env_json = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": shared}})
        given = submit_job(address, env, register, options=("--runtime-env-json", env_json))
    assert refused.returncode == 1, refused.stdout[-3000:] + refused.stderr[-2000:]
    # One line, which Ray's client prints twice (the log it tails, then the failed job's log again).
    (line,) = {line for line in refused.stdout.splitlines() if line.startswith("error:")}
    assert "error: no MLFLOW_TRACKING_URI in a Ray job: the default store /" in line
    assert "/runtime_resources/working_dir_files/_ray_pkg_" in line and "--runtime-env-json" in line
    assert given.returncode == 0, given.stdout[-3000:] + given.stderr[-2000:]
    assert f"version 1 of advanced-ncf, now current (nothing was) ({shared})" in given.stdout
    assert reg.Registry(shared, create=False).current() == "1"


@pytest.mark.faults
def test_a_malformed_sqlite_uri_and_a_fifo_manifest_are_one_line_not_a_traceback_or_a_hang(tmp_path, monkeypatch):
    """The final read of 2026-12-06: the store check a training now runs first raised SQLAlchemy's
    ArgumentError (a traceback) for sqlite:x.db; the registry's read of a manifest (jobs.models
    list, promote, --model current) waited for ever on a FIFO."""
    for uri in ("sqlite:x.db", "sqlite:/shared/mlflow.db"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(reg.StoreUnavailable, match="not a SQLite URI"):
            reg.check_store_outlives_the_job()
    model = fake_model_dir(tmp_path, "v1")
    copy = str(tmp_path / "copy")
    shutil.copytree(model, copy)
    os.remove(os.path.join(copy, "manifest.json"))
    os.mkfifo(os.path.join(copy, "manifest.json"))
    import threading

    answers = []
    asking = threading.Thread(
        target=lambda: answers.append(reg.held_instead(copy, {"model_version": "v1", "weights_sha256": "0" * 64})),
        daemon=True,  # one left blocked on the FIFO (the old read) must not hold the session
    )
    asking.start()
    asking.join(timeout=20)
    assert answers == [None]  # the manifest unread: the weights' seal unknown, not "other weights"


# -- the registry review's third reading (2026-12-06) ---------------------------------------------------


@pytest.mark.faults
def test_a_locked_sqlite_store_says_try_later_in_one_line(store, tmp_path, monkeypatch, capsys):
    """Another process holding the database (a sqlite3 shell's transaction, a long write) was exit
    2, "fix the command", after MLflow's ERROR log of 70 lines; it is exit 75, one line."""
    import sqlite3

    import mlflow.store.db.utils as db_utils
    import sqlalchemy

    for version in ("v1", "v2"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    capsys.readouterr()
    shortened = []

    class ShortWait:
        """MLflow sets a 20 s busy timeout of its own on each session (no URI option changes
        it): 0.2 s here."""

        def __getattr__(self, name):
            return getattr(sqlalchemy.sql, name)

        def text(self, statement):
            shortened.append("busy_timeout = 20000" in statement)
            return sqlalchemy.sql.text(statement.replace("busy_timeout = 20000", "busy_timeout = 200"))

    monkeypatch.setattr(db_utils, "sql", ShortWait())
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(reg.StoreBusy, match="database is locked"):
            store.promote("2")  # a registry already open: the store's own call fails
        with pytest.raises(SystemExit) as exit_info:
            models.main(["promote", "2"])
        assert exit_info.value.code == 75
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "busy, another writer holds its database (database is locked" in error[0], error
        assert error[0].endswith("try later")
    finally:
        holder.close()
    assert any(shortened)  # the waits were MLflow's own, shortened
    assert store.current() == "1"
    models.main(["promote", "2"])  # the holder gone, the same command goes through
    assert store.current() == "2"
    # Any other failure of the store is not another writer's: exit 2 (MLflow calls them all
    # TEMPORARILY_UNAVAILABLE).
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("DROP TABLE registered_model_tags")
    with pytest.raises(reg.StoreUnavailable) as failed:
        store.promote("1")
    assert not isinstance(failed.value, TryLater) and "no such table" in str(failed.value)


@pytest.mark.faults
def test_a_tracking_server_answering_503_or_429_says_try_later(monkeypatch, capsys):
    """A server that is overloaded or restarting answers 503 (429: rate limited): exit 75, as for
    one that does not answer; another refusal (500) stays exit 2."""
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        status = 503

        def do_GET(self):
            self.send_response(Answer.status)
            self.end_headers()
            self.wfile.write(b"unavailable")

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's backoff: minutes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}")
    try:
        for status, code in ((503, 75), (429, 75), (500, 2)):
            Answer.status = status
            with pytest.raises(SystemExit) as exit_info:
                models.main(["list"])
            error = capsys.readouterr().err.strip().splitlines()
            assert exit_info.value.code == code and len(error) == 1, (status, error)
            assert (f"busy, the server answered HTTP {status}" in error[0]) == (code == 75), error
            # MLflow's retries dropped the answer: what it was cannot be told, only where to look.
            assert ("overloaded, restarting, or its backend failing: see its log" in error[0]) == (status == 503)
    finally:
        server.shutdown()


@pytest.mark.faults
def test_a_tracking_server_answering_503_for_a_broken_backend_is_not_try_later(monkeypatch, capsys):
    """MLflow's server answers every backend failure (a dropped table, a read-only database, a
    full disk) with 503 TEMPORARILY_UNAVAILABLE: read as busy, exit 75 "try later" for ever, the
    cause dropped. Its answer's message decides: a locked database is busy (75), anything else
    exit 2 with the server's message."""
    import http.server
    import threading

    import mlflow.utils.request_utils as request_utils

    class Answer(http.server.BaseHTTPRequestHandler):
        message = ""

        def do_GET(self):
            body = {"error_code": "TEMPORARILY_UNAVAILABLE", "message": Answer.message}
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        do_POST = do_GET

        def log_message(self, *args):
            pass

    # MLflow 3.17's client raises a 503 away once its retries are spent, the answer dropped: a
    # client handed the last answer instead (what MLflow parses where it gets one).
    session = request_utils._get_request_session

    def returning_the_answer(retries, backoff, jitter, codes, raise_on_status, respect_retry_after):
        return session(retries, backoff, jitter, codes, False, respect_retry_after)

    monkeypatch.setattr(request_utils, "_get_request_session", returning_the_answer)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        Answer.message = "(sqlite3.OperationalError) no such table: registered_models\n[SQL: SELECT ...]"
        with pytest.raises(SystemExit) as exit_info:
            models.main(["list"])
        error = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(error) == 1, error
        assert "no such table: registered_models" in error[0] and "busy" not in error[0], error
        failed = reg.store_failed(uri, _rest_exception(Answer.message))
        assert not isinstance(failed, TryLater)
        assert str(failed) == (
            f"tracking store {uri}: the server answered TEMPORARILY_UNAVAILABLE: "
            "(sqlite3.OperationalError) no such table: registered_models"
        )
        Answer.message = "(sqlite3.OperationalError) database is locked"
        with pytest.raises(SystemExit) as exit_info:
            models.main(["list"])
        error = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 75 and len(error) == 1, error
        assert "busy, another writer holds the server's database (database is locked)" in error[0], error
    finally:
        server.shutdown()


def _rest_exception(message: str):
    from mlflow.exceptions import RestException

    return RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": message})


def _wait_for(capsys, text: str, timeout_s: float = 60) -> str:
    """stderr until it holds ``text`` (another thread writes it)."""
    seen, deadline = "", time.monotonic() + timeout_s
    while text not in seen and time.monotonic() < deadline:
        seen += capsys.readouterr().err
        time.sleep(0.02)
    return seen


@pytest.mark.faults
def test_a_promote_waits_for_another_promote_or_rollback_on_a_sqlite_store(store, tmp_path, monkeypatch, capsys):
    """promote and rollback read the alias and history, then wrote them, with nothing between two
    processes: a promote during a rollback was lost, and two promotes both said "was 1". On a
    SQLite store each holds ``mlflow.db.lock`` from its read to its last write."""
    import fcntl
    import threading

    for version in ("v1", "v2", "v3"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    capsys.readouterr()
    lock = os.open(tmp_path / "mlflow.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another process's promote or rollback, under way
    answers = []
    promoting = threading.Thread(target=lambda: answers.append(reg.Registry().promote("2")), daemon=True)
    promoting.start()
    assert "waiting up to 120 s for another promote, rollback" in _wait_for(capsys, "waiting up to")
    # The other's move, made while it holds the lock: the promote reads what it left.
    store._set_current("3", ["1", "3"])
    assert promoting.is_alive() and not answers
    os.close(lock)
    promoting.join(timeout=60)
    assert answers == [("3", "2")]  # before: ("1", "2"), and the history without 3
    assert store.current() == "2" and store.history() == ["1", "3", "2"]
    # Held past the wait: exit 75 in one line, nothing moved.
    monkeypatch.setattr(reg, "CURRENT_LOCK_WAIT_S", 0.2)
    lock = os.open(tmp_path / "mlflow.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with pytest.raises(SystemExit) as exit_info:
            models.main(["rollback"])
    finally:
        os.close(lock)
    assert exit_info.value.code == 75
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "mlflow.db.lock held by" in errors[0] and "try again when" in errors[0], errors
    assert store.current() == "2"


@pytest.mark.faults
def test_on_a_store_without_the_lock_a_promote_raced_meanwhile_says_so_and_is_not_retried(
    store, tmp_path, monkeypatch, capsys
):
    """A tracking server has no file to lock: after its writes a promote reads current back, and
    another promote's move in between is one line, not one saying what it did not do. Exit 1,
    not 75 (a registry review, 2026-12-06): its writes stand, and a retried rollback went back
    twice."""
    for version in ("v1", "v2", "v3"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    other = reg.Registry()
    monkeypatch.setattr(reg, "sqlite_path", lambda uri: None)  # as a server's store is
    write, other_write = store._set_current, other._set_current

    def raced(version, history):
        write(version, history)
        other_write("3", ["1", "3"])  # another promote, its writes after this one's

    monkeypatch.setattr(store, "_set_current", raced)
    with pytest.raises(reg.CurrentMovedMeanwhile, match="current changed meanwhile .*names version 3 now.*not 2") as e:
        store.promote("2")
    # Not undone: the store took both moves, so what is current is promote's to settle.
    assert "this promote's writes stand" in str(e.value) and "promote VERSION settles it" in str(e.value)
    set_current = reg.Registry._set_current  # the job opens a Registry of its own: raced on the class
    monkeypatch.setattr(reg.Registry, "_set_current", lambda self, version, history: raced(version, history))
    with pytest.raises(SystemExit) as exit_info:  # the job: one line, exit 1
        models.main(["promote", "2"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 1 and "current changed meanwhile" in line, line
    monkeypatch.setattr(reg.Registry, "_set_current", set_current)
    monkeypatch.setattr(store, "_set_current", write)
    assert store.promote("2") == ("3", "2")  # unraced, the re-read agrees


@pytest.mark.faults
def test_on_a_store_without_the_lock_a_move_finished_while_one_verified_stops_before_its_writes(
    store, tmp_path, monkeypatch
):
    """A promote or rollback that another move overtook while it verified a directory wrote from
    its old reading: the other's version was gone from the alias and the history, and both said
    they succeeded (a registry review, 2026-12-07). Now nothing is written and it says so."""
    for version in ("v1", "v2", "v3"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    for version in ("2", "3"):
        store.promote(version)
    other = reg.Registry()
    monkeypatch.setattr(reg, "sqlite_path", lambda uri: None)  # as a server's store is
    settled = store._claims_settled_through
    moves = []

    def overtaken():  # read right before the first write: another command's whole move lands first
        if not moves:
            moves.append(other.promote(moves_to))
        return settled()

    monkeypatch.setattr(store, "_claims_settled_through", overtaken)
    for move, moves_to in ((lambda: store.rollback(), "1"), (lambda: store.promote("2"), "3")):
        before = other.history()
        moves.clear()
        with pytest.raises(reg.CurrentMovedMeanwhile, match=f"names version {moves_to} now.*nothing was written"):
            move()
        # The other's move stands whole: its alias, and its history ending with it.
        assert other.current() == moves_to and other.history() == reg._ending_with(before, moves_to)
    monkeypatch.setattr(store, "_claims_settled_through", settled)
    assert store.promote("2") == ("3", "2")  # run again from there, unraced


@pytest.mark.faults
def test_a_database_store_creates_no_experiment_whose_artifacts_ray_deletes(tmp_path, monkeypatch):
    """PostgreSQL or MySQL opened by the job: MLflow puts a new experiment's artifacts in ./mlruns
    where the command runs, under `ray job submit --working-dir .` a copy Ray deletes after the job
    (a registry review, 2026-12-07)."""
    unpacked = str(tmp_path.joinpath(*reg.RAY_UNPACKED, "abc"))
    postgres = "postgresql://mlflow@db.internal/mlflow"
    with pytest.raises(reg.StoreUnavailable, match=r"experiment ncf-train would keep its artifacts in \./mlruns of"):
        reg.check_default_artifact_root(postgres, "ncf-train", cwd=unpacked)
    reg.check_default_artifact_root(postgres, "ncf-train", cwd=str(tmp_path))  # a folder that stays
    for store in ("http://127.0.0.1:5000", f"sqlite:///{tmp_path}/mlflow.db"):  # they choose their own root
        reg.check_default_artifact_root(store, "ncf-train", cwd=unpacked)
    # A training checks before its hours (the registration after them only said "not recorded").
    # No PostgreSQL here: a socket listens at its address, and the store's answer is MlflowClient's
    # lookup, set for each case.
    import socket

    from mlflow.tracking import MlflowClient

    os.makedirs(unpacked)
    monkeypatch.chdir(unpacked)
    listener = socket.create_server(("127.0.0.1", 0))
    here = f"postgresql://mlflow@127.0.0.1:{listener.getsockname()[1]}/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", here)
    monkeypatch.setattr(MlflowClient, "__init__", lambda self, uri: None)  # no driver to connect with
    try:
        monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lambda self, name: None)
        with pytest.raises(reg.StoreUnavailable, match="experiment ncf-train would keep its artifacts"):
            reg.check_store_outlives_the_job()
        monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lambda self, name: object())  # created once
        reg.check_store_outlives_the_job()
    finally:
        listener.close()

    opened = []  # a database that takes no connection is not opened (MLflow retries it ~100 s)

    def not_asked(self, name):
        opened.append(name)  # (an exception raised here would be taken for the store's own failure)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_asked)  # the registration's line says it
    reg.check_store_outlives_the_job()
    assert not opened
    # A database reached through its Unix socket is probed there (it was opened unprobed: ~100 s).
    sockets = tempfile.mkdtemp(prefix="s", dir="/tmp")  # a socket's path is limited to 107 bytes
    for uri, path in (
        (f"postgresql://mlflow@/mlflow?host={sockets}", os.path.join(sockets, ".s.PGSQL.5432")),
        (f"postgresql://mlflow@/mlflow?host={sockets}&port=5433", os.path.join(sockets, ".s.PGSQL.5433")),
        (f"postgresql://mlflow@/mlflow?host={sockets}:5434,/elsewhere", os.path.join(sockets, ".s.PGSQL.5434")),
        (f"mysql+pymysql://mlflow@/mlflow?unix_socket={sockets}/mysqld.sock", f"{sockets}/mysqld.sock"),
    ):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_asked)
        reg.check_store_outlives_the_job()  # nothing listens there yet
        assert not opened, uri
        with socket.socket(socket.AF_UNIX) as listening:
            listening.bind(path)
            listening.listen()
            monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lambda self, name: None)
            with pytest.raises(reg.StoreUnavailable, match="experiment ncf-train would keep its artifacts"):
                reg.check_store_outlives_the_job()
        os.unlink(path)
    os.rmdir(sockets)


@pytest.mark.faults
def test_a_stores_password_is_never_printed_nor_pickled_into_a_sweep(store, tmp_path, capsys, monkeypatch):
    """postgresql://u:PASS@db/mlflow, or an https server's user and password: printed in every
    registration line, store error and copy-paste command, and pickled into a sweep's tuner.pkl
    with its callback (a security review, 2026-12-07). Masked as *** in every line."""
    from ray import cloudpickle

    from jobs.cli import fail
    from tune.tracking import trial_logger

    secret = "S3cr3t-pw"
    for uri in (f"postgresql://mlflow:{secret}@127.0.0.1:9/mlflow", f"http://mlflow:{secret}@127.0.0.1:9"):
        with pytest.raises(SystemExit) as exited:
            models.main(["--tracking-uri", uri, "list"])
        error = capsys.readouterr().err
        assert exited.value.code in (2, 75) and secret not in error and "mlflow:***@127.0.0.1:9" in error, error
        assert reg.cli_env(uri) == f"MLFLOW_TRACKING_URI='{uri.replace(secret, '***')}' "
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the store the job meant, where it did not open
        assert secret not in reg._register_later(None, str(tmp_path / "m"), True)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
        assert secret not in str(reg.StoreUnavailable(f"tracking store {uri}: does not open"))
        with pytest.raises(SystemExit):
            fail(f"tracking store {uri} refused")
        assert secret not in capsys.readouterr().err
    # A SQLite path holding ':' and '@' is no password; a password holding '/' (SQLAlchemy reads one)
    # or given as ?password= is one.
    for kept in (
        "sqlite:////srv/a:b@c/mlflow.db",
        "http://host:8080/path@x",
        "http://mlflow:5000/#/models/ncf@champion",
    ):
        assert reg.without_passwords(kept) == kept  # a port is no password
    for given, said in (
        (f"postgresql://u:{secret}/x@db/m", "postgresql://u:***@db/m"),
        (
            f"postgresql://db/m?user=u&password={secret}&sslmode=require",
            "postgresql://db/m?user=u&password=***&sslmode=require",
        ),
    ):
        assert reg.without_passwords(given) == said
    # A registry's own refusals name the store as lines say it (Serve's build task shows them raw).
    monkeypatch.setattr(reg.Registry, "current", lambda self: None)
    shown = object.__new__(reg.Registry)
    shown.uri, shown.name = f"postgresql://u:{secret}@db/m", reg.MODEL_NAME
    with pytest.raises(reg.InputError) as refused:
        shown.resolve("current")
    assert secret not in str(refused.value) and "u:***@db" in str(refused.value)
    # The sweep's callback, pickled by Tune (cloudpickle) at the sweep's start, holds no store URI
    # (setup reads it).
    logger = trial_logger(str(tmp_path / "sweep"))
    assert logger.tracking_uri is None and store.uri.encode() not in cloudpickle.dumps(logger)


@pytest.mark.faults
def test_a_history_tag_edited_by_hand_is_one_line_naming_it(store, tmp_path):
    """`1,2,v3` typed in MLflow's UI: a ValueError traceback at every first registration, and promote
    wrote the bad entry back (a registry review, 2026-12-07)."""
    reg.track_model(fake_model_dir(tmp_path, "v1"), strict=True)
    store.client.set_registered_model_tag(store.name, reg.HISTORY_TAG, "1,v3")
    for call in (store.history, lambda: store.promote("1"), store.settle_first):
        with pytest.raises(reg.StoreUnavailable, match=f"tag {reg.HISTORY_TAG} holds 'v3', not a version number"):
            call()
    store.client.set_registered_model_tag(store.name, reg.HISTORY_TAG, "1")
    assert store.history() == ["1"]


@pytest.mark.faults
def test_a_move_that_stands_is_told_so_and_a_directory_replaced_during_its_check_is_refused(
    store, tmp_path, monkeypatch, capsys
):
    """A rollback whose writes stood exited 75 (try later) when the store was busy at the read of
    its directory for the line: a retry went back once more. And a promote verified the
    directory, minutes, outside the lock: a training into the same --output meanwhile left current
    on the replaced directory (a registry review, 2026-12-06)."""
    for version in ("v1", "v2"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    models.main(["promote", "2"])
    capsys.readouterr()
    path_of = reg.Registry.path_of

    def busy_after_the_move(self, version):
        if self.current() == version:
            raise reg.StoreBusy(f"tracking store {self.uri}: busy, another writer holds its database; try later")
        return path_of(self, version)

    monkeypatch.setattr(reg.Registry, "path_of", busy_after_the_move)
    models.main(["rollback"])  # exit 0: the move stands
    assert capsys.readouterr().out.startswith("current: 1 (rolled back from 2): its directory not read again (")
    assert store.current() == "1"
    monkeypatch.setattr(reg.Registry, "path_of", path_of)
    deployable = reg.Registry._deployable

    def replaced_meanwhile(self, version):
        deployable(self, version)
        shutil.rmtree(tmp_path / "v2")
        os.rename(fake_model_dir(tmp_path, "v3"), tmp_path / "v2")  # jobs.train swaps its new directory in

    monkeypatch.setattr(reg.Registry, "_deployable", replaced_meanwhile)
    with pytest.raises(SystemExit) as exit_info:
        models.main(["promote", "2"])
    assert exit_info.value.code == 2 and "was replaced there by" in capsys.readouterr().err
    assert store.current() == "1"


@pytest.mark.faults
def test_a_register_whose_store_fails_after_its_version_names_it_and_is_not_try_later(
    store, tmp_path, monkeypatch, capsys
):
    """``register`` created version 1 into an empty registry, then settling current met a busy
    store: exit 75 (try later) without the version, and the retry registered the directory a
    second time, nothing being current (a registry review, 2026-12-08)."""
    model = fake_model_dir(tmp_path, "v1")

    def busy(self):
        raise reg.StoreBusy(f"tracking store {self.uri}: busy, another writer holds its database; try later")

    monkeypatch.setattr(reg.Registry, "settle_first", busy)
    with pytest.raises(SystemExit) as exit_info:
        models.main(["register", model])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert f"{model}: registered as version 1, current not settled (StoreBusy: " in err
    assert "promote 1 makes it current; do not register it again" in err
    monkeypatch.undo()
    assert store.current() is None and [row["version"] for row in store.versions()] == ["1"]


@pytest.mark.faults
def test_a_deploy_of_current_that_moved_while_it_waited_for_its_slot_is_try_later(store, tmp_path):
    """`jobs.deploy --model current` resolved current before Ray started and the deploy slot was
    taken (minutes on a loaded head): a promote and another deploy meanwhile, and this one rolled
    the older model back out over the newer, both exiting 0 (a registry review, 2026-12-08). The
    slot's holder resolves it again."""
    import argparse

    from jobs import deploy

    old, new = fake_model_dir(tmp_path, "v1"), fake_model_dir(tmp_path, "v2")
    for model in (old, new):
        reg.track_model(model, strict=True)
    models.main(["promote", "2"])
    deploy._check_still_named(argparse.Namespace(model="current"), new)  # unchanged: goes on
    deploy._check_still_named(argparse.Namespace(model=old), old)  # a path names what it names
    with pytest.raises(TryLater, match=f"--model current named {old} when this deploy started and names {new} now"):
        deploy._check_still_named(argparse.Namespace(model="current"), old)


@pytest.mark.faults
def test_a_tracking_server_that_stops_answering_midway_is_try_later(monkeypatch):
    """The registry probes a server when it opens; one that stopped answering after (a restart
    during a promote's minutes of verification) was exit 2, "do not retry" (a registry review,
    2026-12-06). Here MLflow's own client meets a port where nothing listens."""
    import socket

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as silent:  # bound, not listening: connections are refused
        silent.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(MlflowException) as raised:
            MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("advanced-ncf")
    failed = reg.store_failed(uri, raised.value)
    assert isinstance(failed, reg.StoreUnreachable) and exit_status(failed) == 75, (failed, raised.value)
    assert str(failed) == f"tracking store {uri}: no server answers there (Connection refused); try later"
    local = reg.store_failed("sqlite:////tmp/m.db", raised.value)  # not a server's: its words, exit 2
    assert not isinstance(local, TryLater)


@pytest.mark.faults
def test_headline_figures_out_of_range_an_edited_tag_and_an_unreadable_file_are_said_in_one_line(
    store, tmp_path, monkeypatch, capsys
):
    """From a registry review (2026-12-06): training's -1 (no finite validation figure) was left
    out of the tags without a word, a test figure of 1.5 tagged as it was, a best_epoch of null
    tagged "None"; a claims tag edited in MLflow's UI and a stats.json this account cannot read
    were tracebacks; the command printed to register a model later named no store, so run from a
    shell it registered into a fresh default store and made the model current there."""
    edited = {"training": {"best_val_ndcg@10": -1}, "best_epoch": None, "test": {"ndcg@10": 1.5, "recall@10": 0.2}}
    tags = reg.headline(edited)
    assert tags == {"test_recall_at_10": "0.2000", "test_of": "this model"}
    assert capsys.readouterr().err == (
        "[registry] metrics.json: test ndcg@10 (1.5), training best_val_ndcg@10 (-1), best_epoch (null) left out of "
        "the version's tags: not a number in [0, 1] (an epoch: not a whole number)\n"
    )
    model = fake_model_dir(tmp_path, "v1")

    def unreadable(path):
        raise PermissionError(13, "Permission denied", path)

    with monkeypatch.context() as patch:
        patch.setattr(reg, "sha256_of", unreadable)
        patch.setattr(reg, "_sealed_weights", lambda model_dir: None)  # no manifest record: the bytes are read
        with pytest.raises(InputError, match=r"cannot read .*/v1/model.pt \(EACCES: Permission denied\): check its"):
            reg.lineage(model)
    assert reg.track_model(model, strict=True) == "1"
    store._set_model_tag(reg.CLAIMS_SETTLED_TAG, "3 (set by hand)")
    with pytest.raises(InputError, match="tag .* is '3 \\(set by hand\\)', not a version number"):
        store.settle_first()

    def store_fails(*args, **kwargs):
        raise reg.StoreUnavailable(f"tracking store {store.uri}: INTERNAL_ERROR (disk I/O error)")

    monkeypatch.setattr(reg.Registry, "log_run", store_fails)
    other = fake_model_dir(tmp_path, "v2")
    assert reg.track_model(other) is None
    line = capsys.readouterr().err.strip().splitlines()[-1]
    later = f"record it later with {reg.cli_env(store.uri)}{reg.MODELS_CLI} register {other}"
    assert line.endswith(later), line


@pytest.mark.faults
def test_a_rollback_whose_writes_may_stand_is_never_try_later(store, tmp_path, monkeypatch):
    """The second read of the registry's fixes (2026-12-06): a rollback on a tracking server
    whose read-back failed, or whose alias write lost the server's answer, still exited 75, and
    a retry went back twice; a server's own backend failure quoting "Connection refused" read as
    no server answering (75, retried for ever); a claims tag edited by hand was refused after
    promote's first write."""
    from mlflow.exceptions import MlflowException, RestException

    for version in ("v1", "v2"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    store.promote("2")
    monkeypatch.setattr(reg, "sqlite_path", lambda uri: None)  # as a server's store is
    moved, read = [], store.client.get_registered_model
    set_alias = store.client.set_registered_model_alias

    def alias_then_mark(*args):
        set_alias(*args)
        moved.append(args)

    def unreadable_once_moved(name):
        if moved:
            raise MlflowException("API request to http://mlflow:5000/api failed with exception Read timed out.")
        return read(name)

    monkeypatch.setattr(store.client, "set_registered_model_alias", alias_then_mark)
    monkeypatch.setattr(store.client, "get_registered_model", unreadable_once_moved)
    with pytest.raises(reg.CurrentMovedMeanwhile, match="this rollback's writes were made, and reading current back"):
        store.rollback()
    monkeypatch.setattr(store.client, "get_registered_model", read)
    assert store.current() == "1"
    # The alias write's answer lost (a server's URI): unknown whether it moved.
    store.uri = "http://mlflow:5000"

    def lost(*args):
        raise MlflowException(
            "API request to http://mlflow:5000/api/2.0/mlflow/registered-models/alias failed with exception "
            "HTTPConnectionPool(host='mlflow', port=5000): Read timed out. (read timeout=120)"
        )

    monkeypatch.setattr(store.client, "set_registered_model_alias", lost)
    with pytest.raises(reg.CurrentMovedMeanwhile, match="may have moved current before the server.s answer was lost"):
        store._move_alias_back("1")

    def refused(*args):
        raise MlflowException(
            "API request to http://mlflow:5000/api failed with exception Max retries exceeded (Caused by "
            "NewConnectionError: Failed to establish a new connection: [Errno 111] Connection refused)"
        )

    monkeypatch.setattr(store.client, "set_registered_model_alias", refused)
    # MLflow retries a POST: a refusal may follow a first try the server took (a third read).
    with pytest.raises(reg.CurrentMovedMeanwhile, match="may have moved current") as unknown:
        store._move_alias_back("1")
    assert "try later" not in str(unknown.value)

    def busy_after_retries(*args):  # its first try may have been taken: the 503s came after
        raise MlflowException(
            "API request to http://mlflow:5000/api failed with exception too many 503 error responses"
        )

    monkeypatch.setattr(store.client, "set_registered_model_alias", busy_after_retries)
    with pytest.raises(reg.CurrentMovedMeanwhile, match="may have moved current"):
        store._move_alias_back("1")

    def answered(*args):  # the server's own answer: nothing moved, its words stand
        raise RestException({"error_code": "PERMISSION_DENIED", "message": "not allowed"})

    monkeypatch.setattr(store.client, "set_registered_model_alias", answered)
    with pytest.raises(reg.StoreUnavailable, match="the server answered PERMISSION_DENIED"):
        store._move_alias_back("1")
    store.uri = "postgresql://db/mlflow"  # a database's failed write is its transaction's: nothing moved
    monkeypatch.setattr(store.client, "set_registered_model_alias", busy_after_retries)
    with pytest.raises(reg.StoreUnavailable) as failed:
        store._move_alias_back("1")
    assert not isinstance(failed.value, TryLater) and "may have moved" not in str(failed.value)

    def connection_lost(*args):  # psycopg2's words, as MLflow's store wraps them: the COMMIT may have stood
        raise MlflowException(
            "(psycopg2.OperationalError) server closed the connection unexpectedly\n\tThis probably means the "
            "server terminated abnormally"
        )

    monkeypatch.setattr(store.client, "set_registered_model_alias", connection_lost)
    with pytest.raises(reg.CurrentMovedMeanwhile, match="may have moved current before the database.s answer"):
        store._move_alias_back("1")
    store.uri = "sqlite:///m.db"  # a file: no connection to lose, its failed transaction is the answer
    with pytest.raises(reg.StoreUnavailable):
        store._move_alias_back("1")
    store.uri = "http://mlflow:5000"
    backend = RestException(
        {"error_code": "INTERNAL_ERROR", "message": "psycopg2: connection failed: Connection refused"}
    )
    assert not isinstance(reg.store_failed("http://mlflow:5000", backend), TryLater)
    connect_timeout = MlflowException(
        "API request to http://mlflow:5000/api failed with timeout exception HTTPConnectionPool(host='mlflow', "
        "port=5000): Max retries exceeded (Caused by ConnectTimeoutError(..., 'Connection to mlflow timed out.'))"
    )
    assert isinstance(reg.store_failed("http://mlflow:5000", connect_timeout), reg.StoreUnreachable)
    # A promote whose alias write stood and whose answer was lost, retried: its tags written then.
    store.uri = reg.tracking_uri()
    monkeypatch.setattr(store.client, "set_registered_model_alias", set_alias)
    set_alias(store.name, reg.CURRENT, "2")
    assert store._recorded_last() == "1" and store.promote("2") == ("2", "2") and store._recorded_last() == "2"
    store.rollback()
    # A tag edited by hand: refused before promote writes anything.
    store.uri = reg.tracking_uri()
    monkeypatch.setattr(store.client, "set_registered_model_alias", set_alias)
    store._set_model_tag(reg.CLAIMS_SETTLED_TAG, "two")
    with pytest.raises(reg.StoreUnavailable, match="not a version number"):
        store.promote("2")
    assert store.current() == "1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the later command names the default store too
    assert reg._register_later(None, "m", True).startswith(
        f"MLFLOW_TRACKING_URI={reg.sqlite_uri(os.path.abspath('artifacts/mlflow.db'))} "
    )


@pytest.mark.faults
def test_a_metrics_json_edited_by_hand_is_refused_before_a_run_is_logged(store, tmp_path, capsys):
    """metrics.json is outside the checksums: a null figure crashed register with a TypeError
    after its run was logged (an orphan run each try); a test or history of another shape is
    refused in one line naming the file, and a null figure is left out of the tags."""

    def runs():
        return store.client.search_runs([store.experiment_id(reg.TRAIN_EXPERIMENT)])

    model = fake_model_dir(tmp_path, "v1")
    path = os.path.join(model, METRICS)
    metrics = read_json(path)
    for edited, expected in (
        ({"test": [0.3]}, '"test" is [0.3], not an object'),
        ({"history": {"epoch": 1}}, '"history" is not a list of objects'),
        ({"history": [{"epoch": "one"}]}, '"history" is not a list of objects'),
        # headline() read these with .get(): an AttributeError's traceback.
        ({"training": [1]}, '"training" is [1], not an object'),
        ({"sweep": "x"}, '"sweep" is "x", not an object'),
        ({"validated": {"test": 0.3}}, '"validated"."test" is 0.3, not an object'),
    ):
        write_json(path, {**metrics, **edited})
        with pytest.raises(SystemExit) as exit_info:
            models.main(["register", model])
        error = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(error) == 1 and error[0].startswith(f"error: {path}: "), error
        assert expected in error[0] and runs() == []
    write_json(path, {**metrics, "test": {"ndcg@10": None, "recall@10": 0.2}})
    assert models.main(["register", model]) == "1"
    tags = store.client.get_model_version(store.name, "1").tags
    assert tags["test_recall_at_10"] == "0.2000" and "test_ndcg_at_10" not in tags
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[registry]")]
    assert said == [
        f"[registry] {path}: test ndcg@10 (null) left out of the version's tags: not a number in [0, 1] (an epoch: "
        "not a whole number)"
    ]
    (run,) = runs()
    assert run.data.metrics["test_recall_at_10"] == 0.2 and "test_ndcg_at_10" not in run.data.metrics


@pytest.mark.faults
def test_a_run_stopped_by_ctrl_c_is_marked_killed_not_left_running(store, monkeypatch):
    """A register interrupted while it logged its run left the run RUNNING for ever."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.client, "log_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.log_run(reg.TRAIN_EXPERIMENT, "stopped", {"learning_rate": 0.001})
    (run,) = store.client.search_runs([store.experiment_id(reg.TRAIN_EXPERIMENT)])
    assert run.info.status == "KILLED"


@pytest.mark.faults
def test_the_printed_deploy_command_names_a_relative_sqlite_store_by_its_absolute_path(
    store, tmp_path, monkeypatch, capsys
):
    """``--tracking-uri sqlite:///mlflow.db`` was repeated as given: the printed jobs.deploy
    command opened another store anywhere but this directory."""
    import shlex

    for version in ("v1", "v2"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    models.main(["--tracking-uri", "sqlite:///mlflow.db", "promote", "2"])
    absolute = shlex.quote(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert f"MLFLOW_TRACKING_URI={absolute} python -m jobs.deploy" in capsys.readouterr().out
    # Its query string too (it was dropped): the deploy waits as long on a busy database.
    models.main(["--tracking-uri", "sqlite:///mlflow.db?timeout=60", "promote", "1"])
    absolute = shlex.quote(f"sqlite:///{tmp_path / 'mlflow.db'}?timeout=60")
    assert f"MLFLOW_TRACKING_URI={absolute} python -m jobs.deploy" in capsys.readouterr().out


@pytest.mark.faults
def test_a_sqlite_uri_filename_is_refused_not_read_as_a_relative_path(tmp_path, monkeypatch):
    """``sqlite:///file:/x.db?mode=ro&uri=true`` was read as the relative path ``file:/x.db``: a
    store created in a folder named "file:" of the working directory."""
    monkeypatch.chdir(tmp_path)
    for uri in ("sqlite:///file:/x.db?mode=ro&uri=true", "sqlite:///file:x.db"):
        with pytest.raises(reg.StoreUnavailable, match="SQLite URI filenames .file:.... are not supported"):
            reg.Registry(uri)
    assert os.listdir(tmp_path) == []


# -- the registry review's fourth reading ------------------------------------------------------------


@pytest.mark.faults
def test_the_current_lock_is_the_databases_real_path_with_its_mode(store, tmp_path, monkeypatch):
    """The lock file was created 0o644: in a store a group shares, the other members could not
    open it for writing (PermissionError, exit 2). And two links to one database took two locks.
    It is the database's real path's, created with the database's mode bits; a lock file this user
    may only read is locked through a read-only descriptor."""
    import fcntl

    from ncf import staging

    for version in ("v1", "v2"):
        reg.track_model(fake_model_dir(tmp_path, version), strict=True)
    lock = tmp_path / "mlflow.db.lock"
    os.chmod(tmp_path / "mlflow.db", 0o660)
    os.remove(lock)  # the store shared before its first promote (one after: the read-only descriptor below)
    previous = os.umask(0o022)  # a user's usual umask, which took the group's write off
    try:
        store.promote("2")
    finally:
        os.umask(previous)
    assert os.stat(lock).st_mode & 0o777 == 0o660
    # Through a link to the database: the same lock, held by another's promote.
    os.symlink(tmp_path / "mlflow.db", tmp_path / "link.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'link.db'}")
    monkeypatch.setattr(reg, "CURRENT_LOCK_WAIT_S", 0.2)
    held = os.open(lock, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        with pytest.raises(reg.StoreBusy, match="mlflow.db.lock held by"):
            reg.Registry().promote("1")
    finally:
        os.close(held)
    assert store.current() == "2"
    # Tests run as root, whom no mode refuses: the refusal another member meets, made here.
    real_open = os.open

    def refused(path, flags, *args):
        if str(path) == str(lock) and flags & os.O_ACCMODE != os.O_RDONLY and not flags & os.O_EXCL:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    with monkeypatch.context() as patched:
        patched.setattr(staging.os, "open", refused)
        with staging.exclusive(str(lock), "the test's promote"):
            other = real_open(lock, os.O_RDONLY)
            try:
                with pytest.raises(BlockingIOError):  # held all the same
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(other)
    assert reg.Registry().promote("1") == ("2", "1")


@pytest.mark.faults
def test_a_rollback_verifies_its_target_before_it_takes_the_lock(store, tmp_path, monkeypatch):
    """A rollback held the lock while it read every byte of the version it went back to: a large
    model on slow storage kept every other promote waiting past its 120 s. It verifies first;
    under the lock, a target changed meanwhile (another rollback) is verified there."""
    import fcntl

    paths = {version: fake_model_dir(tmp_path, f"v{version}") for version in ("1", "2", "3")}
    for version in ("1", "2", "3"):
        reg.track_model(paths[version], strict=True)
    store.promote("2")
    store.promote("3")
    lock = tmp_path / "mlflow.db.lock"
    verified, real_verify = [], reg.verify_model_dir

    def verify(path):
        probe = os.open(lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = False
        except BlockingIOError:
            locked = True
        finally:
            os.close(probe)
        verified.append((path, locked))
        if len(verified) == 1:  # another rollback, done while this one verified
            store._record_current("2", ["1", "2"])
            store.client.set_registered_model_alias(store.name, reg.CURRENT, "2")
        return real_verify(path)

    monkeypatch.setattr(reg, "verify_model_dir", verify)
    assert store.rollback() == ("2", "1")
    assert verified == [(paths["2"], False), (paths["1"], True)]
    assert store.current() == "1" and store.history() == ["1"]
    monkeypatch.setattr(reg, "verify_model_dir", real_verify)
    store.promote("3")
    monkeypatch.setattr(reg, "verify_model_dir", verify)
    verified[:] = ["not the first call"]
    assert store.rollback() == ("3", "1")
    assert verified[1:] == [(paths["1"], False)]  # unraced: once, before the lock


@pytest.mark.faults
def test_a_sweep_models_failed_trial_lookup_is_said_and_its_shape_checked(store, tmp_path, monkeypatch, capsys):
    """track_sweep_model swallowed the failure to find the trial's run (the version then linked to
    a run of its own, without a word), and read "sweep" with .get(): a string was a traceback."""
    model = fake_model_dir(tmp_path, "v1")
    path = os.path.join(model, METRICS)
    metrics = read_json(path)
    write_json(path, {**metrics, "sweep": {"trial_id": "abc123", "best_val_ndcg@10": 0.25}})

    def failing(self, *args, **kwargs):
        raise reg.StoreUnavailable("tracking store x: the search failed")

    monkeypatch.setattr(reg.Registry, "find_trial_run", failing)
    assert reg.track_sweep_model(model, None, str(tmp_path / "sweep")) == "1"
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[registry]")]
    assert said == [
        f"[registry] {model}: trial abc123's run not looked up (StoreUnavailable: tracking store x: the search "
        "failed); the version gets a run of its own, not linked to the trial's"
    ]
    assert store.client.get_model_version(store.name, "1").tags["best_val_ndcg_at_10"] == "0.2500"
    write_json(path, {**metrics, "sweep": "x"})
    with pytest.raises(InputError, match='"sweep" is "x", not an object'):
        reg.track_sweep_model(model, None, str(tmp_path / "sweep"))


@pytest.mark.faults
def test_headline_figures_that_are_not_numbers_are_named_and_left_out(capsys):
    tags = reg.headline(
        {"test": {"ndcg@10": float("nan"), "recall@10": "0.2"}, "training": {"best_val_ndcg@10": None}},
        "m/metrics.json",
    )
    assert tags == {"test_of": "this model"}
    assert capsys.readouterr().err == (
        '[registry] m/metrics.json: test recall@10 ("0.2"), test ndcg@10 (NaN), training best_val_ndcg@10 (null) '
        "left out of the version's tags: not a number in [0, 1] (an epoch: not a whole number)\n"
    )
    assert reg.headline({"test": {"ndcg@10": 0.3}, "sweep": {"best_val_ndcg@10": -1}}) == {
        "test_ndcg_at_10": "0.3000",
        "test_of": "this model",
    }
    # A negative best (-1: no epoch's validation was finite) is left out, and said since session 58.
    assert "sweep best_val_ndcg@10 (-1) left out" in capsys.readouterr().err
