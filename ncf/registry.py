"""Experiment tracking and the model registry, on MLflow: the one place the platform talks to it.

Where: the tracking server named by ``MLFLOW_TRACKING_URI`` when it is set, else a local store,
``sqlite:///<cwd>/artifacts/mlflow.db`` (MLflow's model registry needs a database; the runs'
artifacts go beside it, to ``artifacts/mlflow-artifacts/``). ``mlflow ui`` on that store shows
everything below (README, "Models and runs"). A job submitted with ``ray job submit --working-dir``
runs in Ray's unpacked copy of that directory, deleted after it: a SQLite store there (the default
one, or a relative ``sqlite:///artifacts/mlflow.db``) is refused.

What is recorded:

* experiment ``ncf-train``: one run per training run that produced a model directory (for
  ``jobs.train --refit``: the validated run and the refit), with its parameters, every epoch's
  metrics (step = epoch) and the held-out table (``test_*`` metrics and ``heldout_test.json``);
* experiment ``ncf-sweeps``: one run per Tune trial (``tune.tracking.TrialLogger``, Ray's
  ``MLflowLoggerCallback``), with the trial's point and every epoch's metrics;
* registered model ``advanced-ncf``: one version per model directory. The directory stays where
  it is: the version stores its path (tag ``model_dir``), its ``kind`` (``validated`` or
  ``refit``: config.json's ``run``), ``model_version`` (what Serve's /healthz and the nightly
  job's ``model_version`` column report), headline metrics and its lineage:
  ``data_stats_sha256`` (of DATA/stats.json), ``code_commit``, ``sweep`` and ``trial_id`` (when
  it comes from a sweep) and ``weights_sha256`` (of model.pt, as its manifest seals it);
* the alias ``current``: what ``--model current`` resolves to. The first deployable version
  registered becomes current; :meth:`Registry.promote` moves the alias, :meth:`Registry.rollback`
  moves it back to the previous current (the registered model's ``current_history`` tag keeps
  the order).

MLflow refuses ``@`` in metric names: ``val_ndcg@10`` is recorded as ``val_ndcg_at_10``.

Example::

    version = track_model("artifacts/model/cj", data="artifacts/data/cj", run_name="train-20260101-120000")
    Registry().promote(version)
    resolve_model("current")  # -> "/abs/path/artifacts/model/cj"
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import pathlib
import re
import shlex
import socket
import sys
import time
import urllib.parse
import urllib.request
from typing import Dict, Iterable, List, Optional, Tuple

from ncf.code import code_version
from ncf.data import layout
from ncf.errors import InputError, TryLater, cannot_access, one_line, without_passwords
from ncf.jsonio import read_small_json
from ncf.model.directory import METRICS, WEIGHTS, read_config, read_metrics
from ncf.model.files import BEST_VAL_METRIC, without_diverged_score
from ncf.model.integrity import MANIFEST, note_verification, sha256_of, verify_model_dir, vocab_digest
from ncf.staging import present

MODEL_NAME = "advanced-ncf"
TRAIN_EXPERIMENT = "ncf-train"
SWEEP_EXPERIMENT = "ncf-sweeps"
CURRENT = "current"
HISTORY_TAG = "current_history"
# A version registered into a registry with nothing current, by a job that will make it current:
# of those, the lowest-numbered deployable one becomes current (see Registry.settle_first).
FIRST_CLAIM_TAG = "first_current_claim"
# The highest version number when current was last set: claims at or below it are settled
# (a race's losers, a job that died before settling, a version rolled back from).
CLAIMS_SETTLED_TAG = "claims_settled_through"
HISTORY_KEPT = 100  # versions remembered for rollback (a tag value is limited in length)
MODEL_DIR_TAG = "model_dir"
LOCAL_STORE = os.path.join("artifacts", "mlflow.db")
ARTIFACTS = "mlflow-artifacts"
POINTER = "model_dir"  # the run artifact folder a version's source names (pointer.json: the path)
HEADLINE = ("recall@10", "ndcg@10")
MODELS_CLI = "python -m jobs.models"
# Where Ray 2.60 unpacks a submitted job's --working-dir and starts its driver:
# <session>/runtime_resources/working_dir_files/_ray_pkg_<hash>, deleted when no job uses it.
RAY_UNPACKED = ("runtime_resources", "working_dir_files")
# A version number past what MLflow's stores hold (an int64 column): no such version.
VERSION_LIMIT = 2**63


def log(message: str) -> None:
    print(f"[registry] {without_passwords(message)}", flush=True)


# -- where ---------------------------------------------------------------------------------------


def tracking_uri(create: bool = True) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the local store ``sqlite:///<cwd>/artifacts/mlflow.db``.
    ``create=False`` (a command that only reads the registry) refuses a local store that does not
    exist: run from another directory, it would create an empty one and report nothing registered.
    Raises :class:`StoreUnavailable` for a local store inside a Ray job's unpacked working
    directory (:func:`check_outlives_the_job`), which Ray deletes after the job."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = os.path.abspath(LOCAL_STORE)
    check_outlives_the_job(path)
    if not create and not os.path.exists(path):
        raise InputError(
            f"no model registry here: {path} does not exist (the default store is artifacts/mlflow.db of the "
            "directory a command runs in): run from the directory the models were trained from, set "
            "MLFLOW_TRACKING_URI to their store, or train one (python -m jobs.train registers each model)"
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return sqlite_uri(path)


def in_unpacked_working_dir(path: str) -> bool:
    """Whether ``path`` is inside a Ray job's unpacked working directory (``ray job submit
    --working-dir .``: :data:`RAY_UNPACKED`), which Ray deletes after the job."""
    parts = pathlib.PurePath(os.path.abspath(path)).parts
    return any(parts[i : i + 2] == RAY_UNPACKED for i in range(len(parts) - 1))


def check_default_artifact_root(uri: str, experiment: str, cwd: Optional[str] = None) -> None:
    """Refuses to create ``experiment`` in a network database's store (PostgreSQL, MySQL) from
    inside a Ray job's unpacked working directory: MLflow puts a new experiment's artifacts in
    ``./mlruns`` where the command runs, which Ray deletes after the job, and every later run's
    held-out table and every version's pointer went there. (A tracking server chooses its own
    root; a SQLite store's is beside its file.)"""
    if not _database_store(uri) or sqlite_path(uri) is not None:
        return
    if in_unpacked_working_dir(cwd or os.getcwd()):
        raise StoreUnavailable(
            f"tracking store {uri}: experiment {experiment} would keep its artifacts in ./mlruns "
            "of this Ray job's unpacked working directory, which Ray deletes after the job; create it once with a "
            f"folder every node reads (mlflow experiments create -n {experiment} -l /shared/mlflow/artifacts), "
            "or use a tracking server (mlflow server ... --artifacts-destination ...)"
        )


def check_outlives_the_job(path: str, uri: Optional[str] = None) -> None:
    """Refuses a SQLite store at ``path`` inside a Ray job's unpacked working directory: Ray
    deletes that copy, and every run and version in it, after the job, which would have said its
    model was now current. ``uri``: the store's URI where one was given (a relative
    ``sqlite:///artifacts/mlflow.db`` is read there too); None for the default store."""
    if not in_unpacked_working_dir(path):
        return
    env = '{"env_vars": {"MLFLOW_TRACKING_URI": "sqlite:////shared/mlflow/mlflow.db"}}'
    where = (
        f"no MLFLOW_TRACKING_URI in a Ray job: the default store {os.path.abspath(path)} is"
        if uri is None
        else f"tracking store {uri} in a Ray job: its file {os.path.abspath(path)} is"
    )
    raise StoreUnavailable(
        f"{where} in the job's unpacked working directory, which Ray deletes after it; name a store that "
        f"outlives the job: ray job submit --runtime-env-json '{env}' (or a tracking server's http://...)"
    )


def check_store_outlives_the_job() -> None:
    """Refuses at once a SQLite store in a Ray job's unpacked working directory, the default one
    or the one ``MLFLOW_TRACKING_URI`` names (:func:`check_outlives_the_job`), for a job that
    registers only after its long work (a training): it would say "not recorded" after the hours."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        check_outlives_the_job(os.path.abspath(LOCAL_STORE))
        return
    store = sqlite_path(uri)
    if store is not None:
        check_outlives_the_job(store, uri)
    elif _database_store(uri) and in_unpacked_working_dir(os.getcwd()):
        _check_experiment_created(uri, TRAIN_EXPERIMENT)


_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def _local_socket(url) -> Optional[str]:
    """The Unix socket a database URL connects through, where it names one: MySQL's
    ``?unix_socket=`` file, or PostgreSQL's ``?host=`` folder (libpq's ``.s.PGSQL.<port>`` in it)."""

    def first(value):
        return value[0] if isinstance(value, tuple) else value

    if "unix_socket" in url.query:
        return first(url.query["unix_socket"])
    # libpq's lists (?host=/a,/b or repeated) are tried in turn: the first is probed.
    host = first(url.query.get("host", "")).split(",")[0]
    if url.get_backend_name() != "postgresql" or not host.startswith("/"):
        return None
    folder, colon, in_host = host.rpartition(":")  # ?host=/run/pg:5433, as SQLAlchemy passes it on
    if not (colon and in_host.isdigit()):
        folder, in_host = host, ""
    port = first(url.query.get("port", "")).split(",")[0] or in_host or url.port or _DATABASE_PORTS["postgresql"]
    return os.path.join(folder, f".s.PGSQL.{port}")


def _check_experiment_created(uri: str, experiment: str) -> None:
    """:func:`check_default_artifact_root` before a training's hours, where ``experiment`` is not
    in the store yet (a store that does not answer now is left to the registration's own line:
    a database whose port or Unix socket takes no connection within 5 s is not opened, which MLflow
    would retry for about 100 s)."""
    from mlflow.tracking import MlflowClient
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
        local = _local_socket(url)
        if local is not None:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(5.0)
                probe.connect(local)
        elif url.host and "host" not in url.query:  # libpq's ?host= list overrides the URL's host
            port = url.port or _DATABASE_PORTS.get(url.get_backend_name(), 0)
            socket.create_connection((url.host, port), timeout=5.0).close()
    except Exception:  # noqa: BLE001 (no answer, or a URL SQLAlchemy will refuse itself later)
        return
    _quiet_mlflow()
    try:
        found = MlflowClient(uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001
        return
    if found is None:
        check_default_artifact_root(uri, experiment)


def sqlite_uri(path: str) -> str:
    """The SQLite store URI of a file path. Only what SQLAlchemy would misread is percent-encoded:
    ``%`` (it decodes the path) and ``?`` (its query string). MLflow creates the database's folder
    from the URI's text as it is, undecoded: a space or ``#`` encoded needlessly left an empty
    ``a%20b`` folder beside the real one (a ``%`` or ``?`` in the path still does)."""
    return "sqlite:///" + os.path.abspath(path).replace("%", "%25").replace("?", "%3F")


def sqlite_path(uri: str) -> Optional[str]:
    """The database file a ``sqlite:`` URI opens, as SQLAlchemy reads it (the query string, such
    as ``?timeout=60``, apart and the path decoded); None for another store or an in-memory one."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(uri).database
    except ArgumentError:  # sqlite:x.db, sqlite:/x.db: checked before a training, one line there
        raise StoreUnavailable(
            f"tracking store {uri}: not a SQLite URI (sqlite:////absolute/path.db or sqlite:///relative/path.db)"
        ) from None
    if database and database.startswith("file:"):
        # SQLite's URI filename (sqlite:///file:/x.db?mode=ro&uri=true): read as a plain path it
        # would be a relative file:/x.db, a store created in a folder named "file:".
        raise StoreUnavailable(
            f"tracking store {uri}: SQLite URI filenames (file:...) are not supported; name the database file "
            "itself (sqlite:////absolute/path.db or sqlite:///relative/path.db)"
        )
    return None if database in (None, "", ":memory:") else database


def local_artifact_root(uri: str) -> Optional[str]:
    """Where a local SQLite store's runs keep their artifacts: beside the database. A tracking
    server decides for itself (None)."""
    store = sqlite_path(uri)
    return None if store is None else os.path.join(os.path.dirname(os.path.abspath(store)), ARTIFACTS)


def _local_path(location: Optional[str]) -> Optional[str]:
    """The folder an artifact location names on this machine: a ``file:`` URI's path, or a plain
    path (this code created its experiments with those before 2026-12-05); None for another
    scheme (``s3://``, ``mlflow-artifacts:``: not a local store's folder)."""
    if not location:
        return None
    if location.startswith("/"):
        return location
    parts = urllib.parse.urlsplit(location)
    return urllib.request.url2pathname(parts.path) if parts.scheme == "file" else None


def cli_env(uri: str) -> str:
    """What runs the ``mlflow`` CLI on the store at ``uri``: ``MLFLOW_TRACKING_URI=...`` (without
    it, the CLI opens its own default, ``sqlite:///mlflow.db`` of the directory it runs in). A
    SQLite store is named by its absolute path, which reads the same from any directory, its
    query string (``?timeout=60``) kept. A password in the URI is printed as ``***``: fill it in, or
    export MLFLOW_TRACKING_URI and leave the assignment out."""
    store = sqlite_path(uri)
    if store is not None:
        query = uri.partition("?")[2]  # SQLAlchemy's too: the path's own ? is percent-encoded
        uri = sqlite_uri(store) + (f"?{query}" if query else "")
    return f"MLFLOW_TRACKING_URI={shlex.quote(without_passwords(uri))} "


def _gc(uri: str) -> str:
    """``mlflow gc`` on the store at ``uri``: it deletes from ``--backend-store-uri`` (its default
    is ``sqlite:///mlflow.db`` where it runs) and refuses to run without a tracking URI. A
    tracking server's backend store is the server's: there it runs on the server."""
    if urllib.parse.urlsplit(uri).scheme in ("http", "https"):
        return "on the server: mlflow gc --backend-store-uri <its backend store>"
    env = cli_env(uri)
    return f"{env}mlflow gc --backend-store-uri {env.split('=', 1)[1].strip()}"


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or under it, as real paths (a store reached through a link)."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _raised_not_logged(record: logging.LogRecord) -> bool:
    # MLflow logs a database error with both tracebacks (60-100 lines on stderr) and then raises
    # it as an MlflowException, which the registry says in one line (store_failed).
    return not str(record.msg).startswith("SQLAlchemy database error")


def _quiet_mlflow() -> None:
    # INFO lines on stderr that no user can act on: the first use of a SQLite store creates its
    # tables; registering a version through a tracking server "waits" for a version that is
    # ready at once (its files stay where they are).
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.store.model_registry.abstract_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    database = logging.getLogger("mlflow.store.db.utils")
    if _raised_not_logged not in database.filters:
        database.addFilter(_raised_not_logged)


# -- what ------------------------------------------------------------------------------------------


def metric_key(name: str) -> str:
    """An MLflow-safe metric name: ``val_ndcg@10`` -> ``val_ndcg_at_10``."""
    return re.sub(r"[^/\w.\- ]", "_", str(name).replace("@", "_at_"))


def numeric(values: Dict, prefix: str = "", skip: Iterable[str] = ()) -> Dict[str, float]:
    """The finite numbers of ``values`` under MLflow-safe names (booleans, strings, lists dropped;
    a diverged epoch's placeholder score too)."""
    out = {}
    for key, value in without_diverged_score(values).items():
        if key in skip or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if math.isfinite(value):
            out[metric_key(prefix + key)] = float(value)
    return out


def _sealed_weights(model_dir: str) -> Optional[str]:
    """The weights' sha256 as the directory's manifest records it (None without one): the
    manifest is checked against the bytes before any model is served from it."""
    try:
        sealed = read_small_json(os.path.join(model_dir, MANIFEST))["files"][WEIGHTS]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sealed if isinstance(sealed, str) and len(sealed) == 64 else None  # a hand edit: the bytes' own


def _weights_sha256(model_dir: str) -> str:
    """model.pt's sha256 as its manifest seals it (checked against the bytes before any replica
    serves them), else of its bytes: a first registration read the weights a third time after
    the verification's two (2.8 GB at 10M x 1M)."""
    return _sealed_weights(model_dir) or sha256_of(os.path.join(model_dir, WEIGHTS))


def lineage(model_dir: str, data: Optional[str] = None) -> Dict[str, str]:
    """What a model directory came from, as registry tags (strings)."""
    config = read_config(model_dir)
    trained_vocab = config["data"].get("vocab_sha256")
    data = os.path.abspath(data or config["data"]["path"])
    stats = layout.stats_path(data)
    try:
        return _lineage(model_dir, config, data, stats, trained_vocab)
    except OSError as e:  # a stats.json or model.pt this account cannot read (a share's permissions)
        raise InputError(cannot_access(f"read {e.filename or model_dir}", e)) from None


def _lineage(model_dir: str, config: Dict, data: str, stats: str, trained_vocab: Optional[str]) -> Dict[str, str]:
    return {
        # The real path: a blue/green link is repointed by the next training, its old target kept.
        MODEL_DIR_TAG: os.path.realpath(model_dir),
        "model_version": str(config["version"]),
        "kind": str(config.get("run", "unknown")),
        "format_version": str(config["format_version"]),
        "trained_through": str(config["trained_through"]),
        "data_dir": data,
        "data_vocab_sha256": str(trained_vocab or "unknown"),  # the weights' DATA, whatever data_dir holds now
        "data_stats_sha256": (
            # As the model's save saw it (recorded since 2026-12-05), where data_dir is the DATA it
            # names: DATA may have been refreshed since.
            (config["data"].get("stats_sha256") if data == os.path.abspath(config["data"]["path"]) else None)
            or (sha256_of(stats) if os.path.exists(stats) else "unknown (no stats.json)")
        ),
        "weights_sha256": _weights_sha256(model_dir),  # what registered_as and held_instead compare
        **_trained_by(config),
    }


def _trained_by(config: Dict) -> Dict[str, str]:
    """The code that saved the model, where its directory says (a register run later, from another
    checkout, would name its own); the registering code's for older directories, and where the
    save could not tell (a cluster's working directory without .git or NCF_CODE_COMMIT)."""
    recorded = config.get("code") or {}
    return recorded if recorded.get("code_commit", "unknown") != "unknown" else code_version()


def check_trained_on(model_dir: str, data: str) -> None:
    """Refuses a ``data`` whose vocabularies are not the ones ``model_dir``'s weights were trained
    on (``register --data``: the version's lineage would name another DATA). Every preprocessing
    numbers products anew, so only the DATA trained on passes."""
    config = read_config(model_dir)
    trained_vocab = config["data"].get("vocab_sha256")
    if trained_vocab and vocab_digest(data) != trained_vocab:
        raise InputError(
            f"--data {data}: not the DATA {model_dir} was trained on (its vocabularies differ: the weights' rows "
            f"would mean other households and products); give that one ({config['data']['path']})"
        )


def headline(metrics: Dict, source: str = METRICS) -> Dict[str, str]:
    """A model's headline figures from its metrics.json, as tags: held-out test recall/NDCG@10
    (a refit model's are its validated run's: the refit saw the test weeks), the best validation
    NDCG@10 and the epoch kept. A figure that is not a number in [0, 1] (``null``, ``NaN``, a
    string: a file edited by hand; -1, training's mark for no finite validation figure) or an
    epoch that is not a whole number is left out, in a line on stderr naming ``source`` (the
    file) and the value."""
    tags, left_out = {}, []
    heldout, of = metrics.get("test"), "this model"
    if heldout is None and isinstance(metrics.get("validated"), dict) and "test" in metrics["validated"]:
        heldout, of = metrics["validated"]["test"], "its validated run"
    if isinstance(heldout, dict) and heldout:
        figures = {k: heldout[k] for k in HEADLINE if k in heldout}
        kept = _ratios(figures, prefix="test_")
        tags.update({k: f"{v:.4f}" for k, v in kept.items()})
        tags["test_of"] = of
        left_out += [(f"test {k}", v) for k, v in figures.items() if metric_key("test_" + k) not in kept]
    for part in ("training", "sweep"):
        if BEST_VAL_METRIC in (metrics.get(part) or {}):
            kept = _ratios({BEST_VAL_METRIC: metrics[part][BEST_VAL_METRIC]})
            tags.update({k: f"{v:.4f}" for k, v in kept.items()})
            left_out += [] if kept else [(f"{part} {BEST_VAL_METRIC}", metrics[part][BEST_VAL_METRIC])]
            break
    epoch = metrics.get("best_epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
        tags["best_epoch"] = str(epoch)
    elif "best_epoch" in metrics:
        left_out.append(("best_epoch", epoch))
    if left_out:
        said = ", ".join(f"{name} ({json.dumps(value)[:40]})" for name, value in left_out)
        print(
            f"[registry] {source}: {said} left out of the version's tags: not a number in [0, 1] (an epoch: "
            "not a whole number)",
            file=sys.stderr,
            flush=True,
        )
    return tags


def _ratios(values: Dict, prefix: str = "") -> Dict[str, float]:
    """The figures of ``values`` (:func:`numeric`) that are ratios, 0 to 1, as every headline
    figure is."""
    return {k: v for k, v in numeric(values, prefix=prefix).items() if 0.0 <= v <= 1.0}


def checked_metrics(model_dir: str) -> Dict:
    """``model_dir``'s metrics.json (:func:`read_metrics`), refused in one line naming it where
    what the run and the version's tags are made from is of another shape (``test``,
    ``training``, ``sweep``, ``validated`` not objects, ``history`` not a list of epochs): the
    file is outside the checksums, and may have been edited by hand."""
    metrics = read_metrics(model_dir)
    path = os.path.join(model_dir, METRICS)
    for part in ("test", "training", "sweep", "validated"):
        value = metrics.get(part)
        if value is not None and not isinstance(value, dict):
            raise InputError(f'{path}: "{part}" is {json.dumps(value)[:80]}, not an object; restore it')
    heldout = (metrics.get("validated") or {}).get("test")
    if heldout is not None and not isinstance(heldout, dict):
        raise InputError(f'{path}: "validated"."test" is {json.dumps(heldout)[:80]}, not an object; restore it')
    history = metrics.get("history")
    if history is not None and not (
        isinstance(history, list)
        and all(isinstance(epoch, dict) and _whole_number(epoch.get("epoch", 1)) for epoch in history)
    ):
        raise InputError(
            f'{path}: "history" is not a list of objects, one per epoch (its "epoch" a whole number); restore it'
        )
    return metrics


def _whole_number(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def version_tags(model_dir: str, data: Optional[str] = None, metrics: Optional[Dict] = None) -> Dict[str, str]:
    """A version's tags from its directory: its lineage and headline figures (from ``metrics``,
    its :func:`checked_metrics` where already read)."""
    metrics = checked_metrics(model_dir) if metrics is None else metrics
    return {**lineage(model_dir, data), **headline(metrics, os.path.join(model_dir, METRICS))}


# -- the registry -----------------------------------------------------------------------------------


class StoreUnavailable(InputError):
    """The tracking store does not open (a one-line error from the registry's commands; a
    training job that cannot record its model says so and goes on). Its words name the store
    without its password (:func:`ncf.errors.without_passwords`), as its subclasses' do."""

    def __init__(self, message: str = "") -> None:
        super().__init__(without_passwords(message))


class CurrentMovedMeanwhile(RuntimeError):
    """A promote or rollback on a store without the lock (a tracking server) whose writes stand,
    interleaved with another's: not one to retry as it is (a rollback run again goes back once
    more), exit 1; ``promote VERSION`` settles it."""

    def __init__(self, message: str = "") -> None:
        super().__init__(without_passwords(message))


class RegisteredNotSettled(CurrentMovedMeanwhile):
    """``register`` created its version, then the store failed before current was settled (the
    lock busy past its wait, the server gone): the version stands, so a retry would register the
    directory a second time; exit 1, the version and ``promote VERSION`` named."""


class StoreUnreachable(StoreUnavailable, TryLater):
    """No tracking server answers at the store's address (exit 75: it may be restarting)."""


class StoreBusy(StoreUnavailable, TryLater):
    """Another writer holds the store (exit 75): a SQLite database locked past MLflow's wait,
    a tracking server rate-limiting or answering 503 after MLflow's retries, or another
    promote, rollback or first registration holding the lock on a SQLite store's ``current``."""


# MLflow gives TEMPORARILY_UNAVAILABLE to every SQLite failure (a table gone too), and its server
# answers each with HTTP 503: only these say another writer holds the database.
_SQLITE_LOCKED = ("database is locked", "database table is locked")
# A server's 429 or 503 as MLflow's client reports it once its retries are spent (the answer's
# body lost), or one whose body is not the MLflow server's JSON (a proxy's page).
_SERVER_BUSY = re.compile(r"too many (429|503) error responses|failed with error code (429|503)\b")
_RATE_LIMITED = ("REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED")


def _busy(uri: str, error) -> Optional[str]:
    """Why ``error`` of the store at ``uri`` says another writer holds it (try later), or None."""
    text = str(error)
    if uri.startswith("sqlite:"):
        locked = next((locked for locked in _SQLITE_LOCKED if locked in text), None)
        return locked and f"another writer holds its database ({locked}, after MLflow's wait)"
    if not _server_store(uri):
        return None
    body = getattr(error, "json", None)
    if isinstance(body, dict):
        # The server's own answer (a RestException): its message says why. A dropped table, a
        # read-only database or a full disk is a 503 TEMPORARILY_UNAVAILABLE too, and no later try
        # mends it.
        message = str(body.get("message", ""))
        locked = next((locked for locked in _SQLITE_LOCKED if locked in message), None)
        if locked:
            return f"another writer holds the server's database ({locked})"
        code = getattr(error, "error_code", None)
        return f"the server answered {code}" if code in _RATE_LIMITED else None
    answered = _SERVER_BUSY.search(text)
    if answered:
        status = answered.group(1) or answered.group(2)
        why = "the server is overloaded, restarting, or its backend failing: see its log"
        why = "rate limited" if status == "429" else why
        spent = " after MLflow's retries" if answered.group(1) else ""
        return f"the server answered HTTP {status}{spent} ({why})"
    code = getattr(error, "error_code", None)
    return f"the server answered {code}" if code in _RATE_LIMITED else None


# How long promote, rollback and a first registration wait for another's lock on a SQLite
# store's current (a rollback holds it while it verifies every byte of the version it goes to).
CURRENT_LOCK_WAIT_S = 120.0


def _check_server_answers(uri: str, timeout_s: float = 5.0) -> None:
    """Refuses (one line) an HTTP tracking server where nothing accepts a connection: MLflow's
    client retries it 7 times with backoff, about 4 minutes, before its own error."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname):
        return  # reached through a proxy, as MLflow's requests reach it: not this machine's to probe
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except (OSError, ValueError) as e:  # ValueError: a port out of range
        raise StoreUnreachable(
            f"tracking store {uri}: no server answers there ({getattr(e, 'strerror', None) or e})"
        ) from None


class Registry:
    """The tracking store and the registered model ``name`` (:data:`MODEL_NAME`); ``create``:
    see :func:`tracking_uri`."""

    def __init__(self, uri: Optional[str] = None, name: str = MODEL_NAME, create: bool = True) -> None:
        _quiet_mlflow()
        from mlflow import MlflowClient

        if not name.strip() or set(name) & set("'\"`@/:"):
            # MLflow refuses / and : itself (blamed on the store); @ would split models:/NAME@ALIAS.
            raise InputError(
                f"--name {name!r}: a registered model's name is not blank and has no quotes, '@', '/' or ':' "
                "(models:/NAME/VERSION and models:/NAME@ALIAS name it)"
            )
        if uri is not None and not uri.strip():
            # Read as not given, it acted on $MLFLOW_TRACKING_URI's store or the local one.
            raise InputError("--tracking-uri is empty: give the store's URI, or leave it out for the default store")
        self.uri = uri or tracking_uri(create)
        self.name = name
        store = sqlite_path(self.uri)
        if store is not None:  # a named SQLite file, a relative one read in Ray's unpacked copy included
            check_outlives_the_job(store, self.uri)
        if not create and store and (not os.path.exists(store) or os.path.getsize(store) == 0):
            # MLflow would create an empty store there, and the command report nothing registered.
            raise InputError(
                f"no model registry at {self.shown}: {os.path.abspath(store)} "
                f"{'is empty' if os.path.exists(store) else 'does not exist'} (a relative "
                "sqlite:/// path is read from the directory a command runs in; a typo in MLFLOW_TRACKING_URI?); "
                "train one (python -m jobs.train registers each model)"
            )
        _check_server_answers(self.uri)
        try:
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.client.search_registered_models(max_results=1)  # a store that does not open fails here, in one line
        except Exception as e:  # MLflow's and SQLAlchemy's own errors, whose types vary with the store
            failed = store_failed(self.uri, e)
            if isinstance(failed, (StoreBusy, StoreUnreachable)):  # try later (exit 75): locked, or no answer
                raise failed from None
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise StoreUnavailable(f"tracking store {self.uri}: does not open ({type(e).__name__}: {first})") from None

    # runs

    @property
    def shown(self) -> str:
        """The store's URI as lines say it: without its password (:func:`ncf.errors.without_passwords`)."""
        return without_passwords(self.uri)

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created on first use (its artifacts beside a local store)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage != "active":
            # MLflow refuses runs in a deleted experiment: every run would be lost.
            raise StoreUnavailable(
                f"tracking store {self.uri}: experiment {name} is deleted; restore it ({cli_env(self.uri)}mlflow "
                f"experiments restore --experiment-id {found.experiment_id}, or the UI) or purge it ({_gc(self.uri)} "
                f"--experiment-ids {found.experiment_id})"
            )
        if found is not None:
            self._check_artifacts_beside(found)
            return found.experiment_id
        root = local_artifact_root(self.uri)
        if root is None:
            check_default_artifact_root(self.uri, name)
        try:
            # A file URI: a plain path's ``%`` or ``#`` would be read as URI syntax.
            location = root and pathlib.Path(root, name).as_uri()
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as e:
            # Created meanwhile by another job; any other refusal (a read-only store, a token
            # without write access) is the store's, said in one line.
            if not _already_exists(e):
                raise self._failed(e) from None
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise self._failed(e) from None
            return found.experiment_id

    def _check_artifacts_beside(self, experiment) -> None:
        """Refuses an experiment of a local store that this code created beside the store (its
        artifacts in ``<store's folder>/mlflow-artifacts/<experiment>``), found now beside another
        folder: the store was moved, copied or mounted at another path since, and the experiment
        keeps its absolute path of before, where runs would write their artifacts (recreating a
        moved folder, or on another host's disk), or fail on a file there. A location this code
        did not choose (``mlflow server --default-artifact-root``, ``mlflow experiments create
        --artifact-location``) is where MLflow itself writes: accepted."""
        root = local_artifact_root(self.uri)
        kept = _local_path(experiment.artifact_location)
        if root is None or kept is None or _inside(kept, root):
            return
        kept = kept.rstrip("/") or "/"
        if (os.path.basename(os.path.dirname(kept)), os.path.basename(kept)) != (ARTIFACTS, experiment.name):
            return  # not the layout this code creates: another choice of where the artifacts go
        with contextlib.suppress(OSError):
            if os.path.samefile(kept, os.path.join(root, experiment.name)):
                return  # the same folder, reached at another path here (a second mount of it)
        raise StoreUnavailable(
            f"tracking store {self.uri}: experiment {experiment.name} keeps its runs' artifacts in {kept}, not "
            f"beside the store ({root}): it was created beside a store in {os.path.dirname(os.path.dirname(kept))}, "
            "and this store was moved, copied or mounted at another path since; mount it at the same path "
            f"everywhere, or rename that experiment ({cli_env(self.uri)}mlflow experiments rename --experiment-id "
            f"{experiment.experiment_id} --new-name {experiment.name}-before-move, or the UI) and the next run "
            f"creates {experiment.name} beside the store"
        )

    @contextlib.contextmanager
    def _artifact_writes(self):
        """A run's artifact that the OS will not write (a local store's folder read-only, a file
        where its folder should be) as the store's one-line failure, not a traceback."""
        try:
            yield
        except OSError as e:
            raise self._failed(e) from None

    def log_run(
        self,
        experiment: str,
        run_name: str,
        params: Optional[Dict] = None,
        history: Iterable[Dict] = (),
        heldout: Optional[Dict] = None,
        tags: Optional[Dict] = None,
    ) -> str:
        """One finished run: ``params``, each epoch of ``history`` (step = its ``epoch``) and the
        held-out row (``test_*`` metrics and the table ``heldout_test.json``); returns its id."""
        from mlflow.entities import Metric, Param

        run = self.client.create_run(
            self.experiment_id(experiment), run_name=run_name, tags={k: str(v) for k, v in (tags or {}).items()}
        )
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            params = [Param(metric_key(k), str(v)[:6000]) for k, v in (params or {}).items()]
            metrics = [
                Metric(key, value, now, int(epoch.get("epoch", i + 1)))
                for i, epoch in enumerate(history)
                for key, value in numeric(epoch).items()
            ]
            if heldout:
                metrics += [Metric(k, v, now, 0) for k, v in numeric(heldout, prefix="test_").items()]
                with self._artifact_writes():
                    self.client.log_table(run_id, _table(heldout), "heldout_test.json")
            for start in range(0, len(params), 100):  # log_batch's limits: 100 params, 1000 metrics
                self.client.log_batch(run_id, params=params[start : start + 100])
            for start in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
        except BaseException as e:
            # Ctrl-C too: a run left RUNNING reads in the UI as one still under way.
            self.client.set_terminated(run_id, "FAILED" if isinstance(e, Exception) else "KILLED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def find_trial_run(self, sweep: str, trial_id: str, moved: bool = False) -> Optional[str]:
        """The run ``tune.tracking.TrialLogger`` recorded for a sweep's trial, tagged with the path the sweep
        started at. ``moved``: a sweep directory moved since is matched by the trial id alone,
        when one run has it (Tune's trial ids are random: 8 hex digits each with Optuna)."""
        experiment = [self.experiment_id(SWEEP_EXPERIMENT)]
        trial = f"tags.trial_id = {_quoted(trial_id)}"
        found = self.client.search_runs(
            experiment, f"tags.sweep = {_quoted(os.path.abspath(sweep))} and {trial}", max_results=1
        )
        if not found and moved:
            found = self.client.search_runs(experiment, trial, max_results=2)
            found = found if len(found) == 1 else []
        return found[0].info.run_id if found else None

    # versions

    def register(
        self,
        model_dir: str,
        data: Optional[str] = None,
        run_id: Optional[str] = None,
        tags: Optional[Dict] = None,
        description: Optional[str] = None,
        directory_tags: Optional[Dict[str, str]] = None,
    ) -> str:
        """A new version for ``model_dir`` (its path, lineage and headline metrics, or
        ``directory_tags``: :func:`version_tags` read before its run was logged); returns its number."""
        from mlflow.exceptions import MlflowException

        all_tags = dict(directory_tags if directory_tags is not None else version_tags(model_dir, data))
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        try:
            self.client.create_registered_model(self.name, description="AdvancedNCF model directories")
        except MlflowException as e:
            if not _already_exists(e):
                raise self._failed(e) from None
        source = all_tags[MODEL_DIR_TAG]
        if run_id:
            # A tracking server accepts a local path as source only inside the run's artifacts:
            # the version's source is a pointer there, the path itself is in the tag model_dir.
            with self._artifact_writes():
                self.client.log_dict(run_id, {"path": source, **all_tags}, f"{POINTER}/pointer.json")
            source = f"runs:/{run_id}/{POINTER}"
        version = self.client.create_model_version(
            self.name, source=source, run_id=run_id, tags=all_tags, description=description
        )
        return str(version.version)

    def registered_as(self, model_dir: str, deployable: bool) -> Optional[str]:
        """The version that already records ``model_dir`` as it is now (its real path, model
        version and weights, and ``deployable``), or None: a sweep resumed after its refit was
        interrupted registers its unchanged ``SWEEP/best`` again, which must not add a version."""
        held = str(read_config(model_dir)["version"])
        same = [
            row
            for row in self.versions_recording(model_dir)
            if row.get("model_version") == held and row.get("deployable", "true") == str(deployable).lower()
        ]
        if not same:
            return None
        weights = _weights_sha256(model_dir)
        return next((row["version"] for row in reversed(same) if row.get("weights_sha256") == weights), None)

    def versions_recording(self, model_dir: str) -> List[Dict]:
        """The versions (:meth:`versions`' rows) whose files are ``model_dir``'s, by its real path."""
        path = os.path.realpath(model_dir)
        return [row for row in self.versions() if row.get(MODEL_DIR_TAG) == path]

    def versions(self) -> List[Dict]:
        """Every version, oldest first: number, created (epoch ms), tags, run id, whether current."""
        from mlflow.exceptions import MlflowException

        current = self.current()
        try:
            found = self.client.search_model_versions(f"name = '{self.name}'")
        except MlflowException as e:  # a server's error between the two reads: one line, as current() says its own
            raise self._failed(e) from None
        rows = [
            {
                "version": str(v.version),
                "created": int(v.creation_timestamp or 0),
                "current": str(v.version) == current,
                "run_id": v.run_id,
                **dict(v.tags or {}),
            }
            for v in found
        ]
        return sorted(rows, key=lambda r: int(r["version"]))

    def current(self) -> Optional[str]:
        """The version the alias ``current`` names, or None."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_registered_model(self.name).aliases.get(CURRENT)
        except MlflowException as e:
            if _not_found(e):  # no such registered model yet
                return None
            raise self._failed(e) from None
        return None if version is None else str(version)

    def _found(self, version: str):
        """``version``'s record, or None where there is none (a number past what a store holds,
        which a SQLite store answered with an INTERNAL_ERROR, included)."""
        from mlflow.exceptions import MlflowException

        if not re.fullmatch(r"[0-9]+", str(version)) or int(version) >= VERSION_LIMIT:
            return None
        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as e:
            if not _not_found(e):
                raise self._failed(e) from None
            return None

    def path_of(self, version: str) -> str:
        """The model directory of ``version``, checked: still there, still a model directory, and
        still holding that version's model (not one trained into the same directory since)."""
        found = self._found(version)
        if found is None:
            raise InputError(f"no version {version} of {self.name} in {self.shown}; {MODELS_CLI} lists them")
        tags = found.tags or {}
        path = tags.get(MODEL_DIR_TAG) or found.source
        if not (present(path) and os.path.isdir(path)):
            raise InputError(f"{path}: version {version}'s model directory is gone (moved or deleted)")
        holds = held_instead(path, tags)
        if holds is not None:
            raise InputError(
                f"{path}: version {version}'s model ({tags['model_version']}) was replaced there by {holds} (trained "
                f"again into the same --output); {MODELS_CLI} list shows which version holds it. To keep "
                "each version's directory, train into a symlink (blue/green, README)"
            )
        return path

    def replaced_directory(self, version: str) -> Optional[str]:
        """``version``'s directory when it now holds another model (trained again into the same
        --output), else None."""
        found = self._found(version)
        if found is None:
            return None
        tags = found.tags or {}
        path = tags.get(MODEL_DIR_TAG) or found.source
        try:
            replaced = present(path) and os.path.isdir(path) and held_instead(path, tags) is not None
        except InputError:  # no model there at all: path_of says so
            return None
        return path if replaced else None

    def history(self) -> List[str]:
        """The versions that were current, oldest first, ending with the current one."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as e:
            if _not_found(e):
                return []
            raise self._failed(e) from None
        history = [v for v in (model.tags or {}).get(HISTORY_TAG, "").split(",") if v]
        edited = [v for v in history if not re.fullmatch(r"[0-9]+", v)]
        if edited:  # edited in MLflow's UI: a traceback at each first registration, written back by promote
            raise StoreUnavailable(
                f"tracking store {self.uri}: {self.name}'s tag {HISTORY_TAG} holds {edited[0]!r}, not a version "
                "number: set it to the versions that were current, oldest first, separated by commas, or delete it"
            )
        current = model.aliases.get(CURRENT)
        current = None if current is None else str(current)
        if current and (not history or history[-1] != current):  # the alias was moved elsewhere (the UI)
            history.append(current)
        return history

    def _set_current(self, version: str, history: List[str]) -> None:
        self.client.set_registered_model_alias(self.name, CURRENT, version)
        self._record_current(version, history)

    def _record_current(self, version: str, history: List[str]) -> None:
        """The tags that go with the alias: the history, and which claims it settles."""
        self._set_model_tag(HISTORY_TAG, ",".join(history[-HISTORY_KEPT:]))
        newest = self.client.search_model_versions(
            f"name = {_quoted(self.name)}", order_by=["version_number DESC"], max_results=1
        )
        settled = max([int(version), self._claims_settled_through()] + [int(v.version) for v in newest])
        self._set_model_tag(CLAIMS_SETTLED_TAG, str(settled))

    def _set_model_tag(self, key: str, value: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_registered_model_tag(self.name, key, value)
        except MlflowException as e:
            if _busy(self.uri, e):  # not the race below: a second try would wait as long again
                raise
            # Two claimants adding the tag at once: the second insert breaks its uniqueness (a
            # database store); the tag exists now, and writing it again is an update.
            self.client.set_registered_model_tag(self.name, key, value)

    def _model_tags(self) -> Dict[str, str]:
        """The registered model's tags, read now (the store's failure in one line)."""
        try:
            return self.client.get_registered_model(self.name).tags or {}
        except Exception as e:  # noqa: BLE001
            raise self._failed(e) from None

    def _claims_settled_through(self) -> int:
        settled = self._model_tags().get(CLAIMS_SETTLED_TAG, "0")
        if not re.fullmatch(r"[0-9]+", str(settled)):  # edited in MLflow's UI
            raise StoreUnavailable(
                f"tracking store {self.uri}: {self.name}'s tag {CLAIMS_SETTLED_TAG} is {settled!r}, not a version "
                "number: set it to the newest version registered when its current version was settled, or delete it"
            )
        return int(settled)

    def promote(self, version: str) -> Tuple[Optional[str], str]:
        """Makes ``version`` current; returns (previous, new).

        Raises:
            InputError: the version is unknown, or its directory is gone, holds another model or
                fails :func:`ncf.model.integrity.verify_model_dir` (a ``ModelIntegrityError``, or its
                ranking settings' one line): ``current`` is left as it was.
        """
        version = _version_number(version)
        self._deployable(version)
        with self._moving_current():
            # The alias, not the history's last entry: deleting the current version (the UI) removes
            # its alias and leaves the history, where promoting it again would have done nothing.
            previous, history = seen = self._current_and_history()
            if previous != version:
                # Verified before the lock: a training replacing its directory during those minutes
                # is seen here (the directory's presence and identity: no second reading of every byte).
                self.path_of(version)
                self._claims_settled_through()  # a tag edited by hand: refused before the first write
                self._check_unmoved(seen, version)
                self._set_current(version, _ending_with(history, version))
                self._check_still_current(version)
            elif self._recorded_last() != version:  # a promote whose alias write stood, its answer lost
                self._claims_settled_through()  # a tag edited by hand: refused before the first write
                self._check_unmoved(seen, version)
                self._record_current(version, _ending_with(history, version))
                self._check_still_current(version)
        return previous, version

    def _recorded_last(self) -> Optional[str]:
        """The last version the history tag records (the alias aside, which :meth:`history` adds)."""
        return _last_recorded(self._model_tags())

    @contextlib.contextmanager
    def _moving_current(self):
        """Holds ``<database>.lock`` beside a SQLite store while ``current`` and its history are
        read and rewritten (promote, rollback, a first registration): MLflow's alias has no
        compare-and-set, so two at once lost one's move (a promote during a rollback), and both
        said what was current before. Waits up to :data:`CURRENT_LOCK_WAIT_S`, then raises
        :class:`StoreBusy`. Another store has no file here to lock: :meth:`_check_still_current`."""
        store = sqlite_path(self.uri)
        if store is None:
            yield
            return
        from ncf.staging import Busy, exclusive

        # The real path: two links to one database take one lock.
        lock, what = os.path.realpath(store) + ".lock", f"tracking store {self.shown}"
        with contextlib.ExitStack() as held:
            try:
                # The database's mode bits: in a store a group shares, each member opens it.
                mode = _file_mode(os.path.realpath(store))
                try:
                    held.enter_context(exclusive(lock, what, mode=mode))
                except Busy:
                    print(
                        f"[registry] waiting up to {CURRENT_LOCK_WAIT_S:g} s for another promote, rollback or first "
                        f"registration on {self.shown} to finish (lock {lock})",
                        file=sys.stderr,
                        flush=True,
                    )
                    held.enter_context(exclusive(lock, what, wait_s=CURRENT_LOCK_WAIT_S, mode=mode))
            except Busy as e:
                raise StoreBusy(str(e)) from None
            except OSError as e:  # a store's folder this user cannot write: the store refuses writes
                raise self._failed(e) from None
            yield

    def _current_and_history(self) -> Tuple[Optional[str], List[str]]:
        return self.current(), self.history()

    def _check_unmoved(self, seen: Tuple[Optional[str], List[str]], version: str, move: str = "promote") -> None:
        """Before the first write of a promote or rollback (``move``, to ``version``) on a store
        :meth:`_moving_current` does not lock: raises :class:`CurrentMovedMeanwhile`, nothing
        written, where current or its history is no longer ``seen``, what the move was planned
        from (another promote or rollback finished while this one verified a directory). Written
        from the old reading, the other's version was gone from the alias and the history, and both
        commands said they succeeded. The window left is this reading's to the writes:
        :meth:`_check_still_current` reports a move in it (MLflow's aliases have no compare-and-set)."""
        if sqlite_path(self.uri) is not None:
            return
        now = self._current_and_history()
        if now != seen:
            raise CurrentMovedMeanwhile(
                f"tracking store {self.uri}: current changed while this {move} to version {version} checked it "
                f"(another promote or rollback): it names version {now[0] or 'none'} now, not {seen[0] or 'none'}; "
                f"nothing was written: {MODELS_CLI} list shows where it stands, and the {move} can be run again "
                "from there"
            )

    def _check_still_current(self, version: str, move: str = "promote") -> None:
        """After a promote or rollback (``move``) on a store :meth:`_moving_current` does not lock
        (a tracking server, another database): raises :class:`CurrentMovedMeanwhile` where the
        alias or the history names another version than ``version`` (another promote or rollback
        at the same moment). Its writes are not undone: which move's stand is the order the store
        took them in; a retry of the same command would move current again."""
        from mlflow.exceptions import MlflowException

        if sqlite_path(self.uri) is not None:
            return
        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as e:  # the writes stand: a retry of a rollback would go back once more
            raise CurrentMovedMeanwhile(
                f"tracking store {self.uri}: this {move}'s writes were made, and reading current back failed "
                f"({_without_retry_advice(store_failed(self.uri, e))}): {MODELS_CLI} list shows where it stands (do "
                f"not run the {move} again before), {MODELS_CLI} promote VERSION settles it"
            ) from None
        alias = model.aliases.get(CURRENT)
        recorded = _last_recorded(model.tags or {})
        if (None if alias is None else str(alias), recorded) != (version, version):
            raise CurrentMovedMeanwhile(
                f"tracking store {self.uri}: current changed meanwhile (another promote or rollback at the same "
                f"moment): it names version {alias or 'none'} now, its history {recorded or 'none'}, not {version}; "
                f"this {move}'s writes stand, interleaved with the other's: {MODELS_CLI} list shows where it "
                f"stands, {MODELS_CLI} promote VERSION settles it"
            )

    def settle_first(self) -> Tuple[Optional[str], Optional[str]]:
        """Makes the first claimant current when nothing is; returns (that claimant, current).

        Jobs registering into a registry with nothing current tag their versions with
        :data:`FIRST_CLAIM_TAG` (their directories verified first) and then call this. MLflow's
        aliases have no compare-and-set, but a database store numbers versions one after another,
        so every claimant, reading after its own version exists, sees every lower one and elects
        the same version: the lowest-numbered claim whose directory is still there. Each writes
        the same alias and history, so racing jobs agree; the loser's log names the winner. Claims
        older than a version that was current once (the alias deleted since) are not counted. On a
        SQLite store they take turns (:meth:`_moving_current`), with any promote or rollback.
        """
        with self._moving_current():
            return self._settle_first()

    def _settle_first(self) -> Tuple[Optional[str], Optional[str]]:
        from mlflow.exceptions import MlflowException

        history = self.history()
        claims = self.client.search_model_versions(
            f"name = {_quoted(self.name)} and tags.{FIRST_CLAIM_TAG} = 'true'", order_by=["version_number ASC"]
        )
        floor = max([self._claims_settled_through()] + [int(v) for v in history])
        winner = None
        for claim in (c for c in claims if int(c.version) > floor):
            try:
                self.path_of(str(claim.version))
            except (StoreUnavailable, TryLater):  # the store, or a swap being finished: not the claim
                raise
            except InputError:  # its directory gone since (a job that died before it was current)
                continue
            winner = str(claim.version)
            break
        current = self.current()
        if current is None and winner is not None:
            try:
                self.client.set_registered_model_alias(self.name, CURRENT, winner)
            except MlflowException as e:
                # Two claimants adding the alias at once: the second insert breaks its uniqueness
                # (a database store); the first's alias stands, and it is the same version.
                if self.current() is None:
                    raise self._failed(e) from None
            else:
                self._record_current(winner, _ending_with(history, winner))
            current = self.current()
        elif current is not None and claims and int(claims[-1].version) > self._claims_settled_through():
            # A claim registered after the current version settled the others (a job that read
            # "nothing current" before, then verified its directory for minutes) lost too: left
            # unsettled, it would win, weeks later, once the alias is deleted.
            self._set_model_tag(CLAIMS_SETTLED_TAG, str(claims[-1].version))
        return winner, current

    def rollback(self) -> Tuple[str, str]:
        """Makes the previous current version current again; returns (rolled back, now current)."""
        # The version gone back to is verified (every byte) before the lock, which promotes wait
        # for; under it, the history is read again, and a target other than the one verified (a
        # promote or rollback meanwhile) is verified there.
        verified = self._rollback_plan()[-2]
        self._rollback_target_deployable(verified)
        with self._moving_current():
            seen = self._current_and_history()
            kept = self._rollback_plan()
            if kept[-2] != verified:
                self._rollback_target_deployable(kept[-2])
            else:  # its directory replaced during the verification's minutes: seen here, as promote does
                self.path_of(kept[-2])
            self._claims_settled_through()  # a tag edited by hand: refused before the first write
            self._check_unmoved(seen, kept[-2], "rollback")
            # The history first: a rollback stopped before the alias moves then reads as not done
            # (the alias first, history() would take the version rolled back from as moved to,
            # and the next rollback would go back to it).
            self._record_current(kept[-2], kept[:-1])
            self._move_alias_back(kept[-2])
            self._check_still_current(kept[-2], "rollback")
        return kept[-1], kept[-2]

    def _move_alias_back(self, version: str) -> None:
        """A rollback's last write, the alias. A server's answer lost on the way (a timeout, a
        dropped connection) leaves it unknown whether the alias moved: not a failure to retry, as
        a rollback run again after a move that stood goes back once more (a database store's
        failure is its transaction's: nothing moved, and the history written first reads so)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_registered_model_alias(self.name, CURRENT, version)
        except MlflowException as e:
            failed = store_failed(self.uri, e)
            # MLflow's client retries a POST, and its last words are the last try's: a refused
            # connection, or a 503, may follow a first try the server took. Only a server's own
            # answer (a JSON body), or a database's failed transaction, says nothing moved; not a
            # network database's connection lost on the way, which may follow its COMMIT.
            lost = _connection_lost(self.uri, e)
            if (_database_store(self.uri) and not lost) or isinstance(getattr(e, "json", None), dict):
                raise failed from None
            answerer = "database's" if lost else "server's"
            raise CurrentMovedMeanwhile(
                f"{_without_retry_advice(failed)}: the rollback to version {version} may have moved current before "
                f"the {answerer} answer was lost; {MODELS_CLI} list shows where it stands (do not run the rollback "
                "again before)"
            ) from None

    def _rollback_plan(self) -> List[str]:
        """The history a rollback leaves behind, and the version it leaves (last): the versions
        that were current, less those deleted since."""
        history = self.history()
        if not history or self.current() is None:
            raise InputError(
                f"no version of {self.name} is current in {self.shown}: nothing to roll back "
                f"({MODELS_CLI} promote VERSION makes one current)"
            )
        # Versions deleted since they were current (the UI, the API) are passed over: the
        # history names them still, and would block every rollback.
        kept = [v for v in history[:-1] if self._exists(v)] + history[-1:]
        # 1, 2, 1 with 2 deleted: 1, 1, whose "previous" is the current version itself.
        kept = [v for i, v in enumerate(kept) if i == 0 or v != kept[i - 1]]
        if len(kept) < 2:
            raise InputError(_nothing_before(history))
        return kept

    def _rollback_target_deployable(self, version: str) -> None:
        try:
            self._deployable(version)
        except (StoreUnavailable, TryLater):
            raise  # the store's failure, or a save under way: not the version's
        except InputError as e:
            raise InputError(
                f"{e}; rollback goes to version {version} only: {MODELS_CLI} promote VERSION makes another current"
            ) from None

    def _exists(self, version: str) -> bool:
        return self._found(version) is not None

    def _failed(self, error) -> StoreUnavailable:
        """An MLflow error other than "not found", in one line: the store failed, not the question."""
        return store_failed(self.uri, error)

    def marked_deployable(self, version: str) -> bool:
        """Whether ``version`` was registered as one to deploy (a refit, a sweep's best without
        one); a validated model's labels stop before the test weeks: ``False``."""
        found = self._found(_version_number(version))
        if found is None:
            return True  # no such version: promote's own refusal says so
        return (found.tags or {}).get("deployable", "true") == "true"

    def _deployable(self, version: str) -> None:
        """Verifies ``version``'s directory whole (its ranking settings as replicas read them too)
        before it becomes current: every job that takes ``current`` would refuse a damaged one,
        the next night's included (reads every byte: said first where that takes a while)."""
        path = self.path_of(version)
        note_verification(f"version {version}", [path])
        verify_model_dir(path)

    def resolve(self, ref: str) -> str:
        """The model directory ``ref`` names: ``current``, ``models:/NAME/VERSION`` or
        ``models:/NAME@ALIAS``."""
        from mlflow.exceptions import MlflowException

        if ref == CURRENT:
            version = self.current()
            if version is None:
                raise InputError(
                    f"no version of {self.name} is current in {self.shown}: train one (python -m jobs.train) "
                    f"or promote a version ({MODELS_CLI} promote VERSION)"
                )
            return self.path_of(version)
        match = re.fullmatch(r"models:/([^/@:'\"`]*[^/@:'\"`\s][^/@:'\"`]*)(?:/(\d+)|@([\w-]+))", ref)
        if not match:  # a name Registry refuses too: said of the reference, not of a --name never given
            raise InputError(f"{ref}: not a model reference (current, models:/NAME/VERSION or models:/NAME@ALIAS)")
        name, number, alias = match.groups()
        registry = self if name == self.name else Registry(self.uri, name)
        if number:
            return registry.path_of(number)
        try:
            version = registry.client.get_model_version_by_alias(name, alias).version
        except MlflowException as e:
            # A missing alias is INVALID_PARAMETER_VALUE; anything else is the store failing.
            if not _not_found(e) and getattr(e, "error_code", None) != "INVALID_PARAMETER_VALUE":
                raise self._failed(e) from None
            raise InputError(f"{ref}: no version of {name} has the alias {alias} in {self.shown}") from None
        return registry.path_of(version)


def _nothing_before(history: List[str]) -> str:
    """Why a rollback from ``history``'s last version has nowhere to go: it was the first current,
    or the versions current before it were deleted since (the history still names them)."""
    deleted = list(dict.fromkeys(v for v in history[:-1] if v != history[-1]))
    if not deleted:
        return f"version {history[-1]} is the first that was current: no previous one to roll back to"
    return (
        f"no previous one to roll back to: the versions current before version {history[-1]} ({', '.join(deleted)}) "
        f"were deleted since; {MODELS_CLI} promote VERSION makes another current"
    )


def held_instead(path: str, tags: Dict) -> Optional[str]:
    """What ``path`` holds now in place of the model a version's ``tags`` recorded there (another
    training into the same --output, or more epochs under the same version string), or None."""
    recorded, weights = tags.get("model_version"), tags.get("weights_sha256")
    holds = str(read_config(path)["version"])
    if weights is not None and holds == recorded and _sealed_weights(path) not in (None, weights):
        holds = f"{holds} with other weights (a resumed --name trained on)"
    return None if recorded is None or holds == recorded else holds


def _file_mode(path: str) -> int:
    """``path``'s read and write permission bits (0o644 where it cannot be read)."""
    try:
        return os.stat(path).st_mode & 0o666
    except OSError:
        return 0o644


def _last_recorded(tags: Dict[str, str]) -> Optional[str]:
    """The last version a registered model's history tag records (None: none)."""
    return tags.get(HISTORY_TAG, "").split(",")[-1] or None


def _ending_with(history: List[str], version: str) -> List[str]:
    """``history`` with ``version`` as its last entry (not twice: the alias deleted and set again)."""
    return history if history[-1:] == [version] else history + [version]


# What MLflow's client says (an INTERNAL_ERROR, once its retries are spent) where no tracking
# server answered: requests' words for a refused, dropped or silent connection.
_NO_ANSWER = re.compile(
    r"Failed to establish a new connection|Connection aborted|RemoteDisconnected|(?:Read |Connect )?timed out|"
    r"ConnectTimeoutError|"
    r"Connection refused|Connection reset|Name or service not known|NameResolutionError"
)
# How the client words its own failure to be answered (mlflow.utils.rest_utils), where a server's
# non-JSON answer is "API request to endpoint ... failed with error code ...".
_CLIENT_FAILED = re.compile(r"^API request to \S+ failed with (timeout )?exception")


def _server_store(uri: str) -> bool:
    """Whether the store at ``uri`` is a tracking server's (MLflow's client speaks HTTP to it)."""
    return urllib.parse.urlsplit(uri).scheme in ("http", "https")


def _database_store(uri: str) -> bool:
    """Whether the store at ``uri`` is a database MLflow opens itself (SQLite, PostgreSQL, MySQL,
    SQL Server), whose failed write is its transaction's: nothing written."""
    return urllib.parse.urlsplit(uri).scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql")


# A network database's driver's words for a connection lost mid-transaction (psycopg2, MySQL's
# drivers, ODBC): what was sent last, a COMMIT included, may have been carried out.
_LOST_CONNECTION = re.compile(
    r"server closed the connection unexpectedly|connection already closed|could not receive data from server|"
    r"SSL SYSCALL error|terminating connection|Lost connection to (?:MySQL )?server|MySQL server has gone away|"
    r"Communication link failure|Connection reset",
    re.IGNORECASE,
)


def _connection_lost(uri: str, error) -> bool:
    """Whether a write to the network database at ``uri`` (not SQLite, a file) failed because its
    connection was lost: unknown whether its transaction was committed."""
    return _database_store(uri) and not uri.startswith("sqlite") and bool(_LOST_CONNECTION.search(str(error)))


def _without_retry_advice(error: Exception) -> str:
    """``error``'s line without its "try later": said inside a line that asks not to retry."""
    return str(error).removesuffix("; try later")


def store_failed(uri: str, error) -> StoreUnavailable:
    """An MLflow error of the store at ``uri`` (a read-only database, a refused token), in one
    line; :class:`StoreBusy` where another writer holds it (a locked database), and
    :class:`StoreUnreachable` where a tracking server stopped answering after the command
    opened the registry (it may be restarting: exit 75, as one that never answered)."""
    first = one_line(error)
    code = getattr(error, "error_code", None) or type(error).__name__
    busy = _busy(uri, error)
    if busy:
        return StoreBusy(f"tracking store {uri}: busy, {busy}; try later")
    # The client's own words (no server's answer, no JSON body): a server answering with its backend's
    # failure ("psycopg2 ... Connection refused") is that server's, not a silence to wait out.
    no_answer = (
        _NO_ANSWER.search(str(error))
        if _server_store(uri)
        and not isinstance(getattr(error, "json", None), dict)
        and _CLIENT_FAILED.match(str(error))
        else None
    )
    if no_answer:
        errno = re.search(r"\[Errno -?\d+\] ([^\"')]+)", str(error))
        why = errno.group(1).strip() if errno else no_answer.group(0)
        return StoreUnreachable(f"tracking store {uri}: no server answers there ({why}); try later")
    body = getattr(error, "json", None)
    if isinstance(body, dict) and str(body.get("message", "")).strip():
        # A tracking server's answer (its backend's failure: a table gone, a read-only database).
        said = str(body["message"]).strip().splitlines()[0]
        return StoreUnavailable(f"tracking store {uri}: the server answered {code}: {said[:300]}")
    return StoreUnavailable(f"tracking store {uri}: {code} ({first[:200]})")


@contextlib.contextmanager
def store_errors(uri: str):
    """MLflow's errors inside the block as :func:`store_failed`'s one line (a command's calls
    that the registry does not wrap one by one)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        raise store_failed(uri, e) from None


def _already_exists(error) -> bool:
    return getattr(error, "error_code", None) == "RESOURCE_ALREADY_EXISTS"


def _not_found(error) -> bool:
    """Whether an MlflowException says the thing asked for does not exist. Any other (a server
    error after MLflow's retries, a refused token) is not "nothing registered": read as that, a
    first candidate would be promoted over the real current version and the history rewritten."""
    return getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _version_number(version) -> str:
    if not re.fullmatch(r"[0-9]+", str(version)):  # isdigit() takes "²", which int() refuses
        raise InputError(f"{version!r}: a version is a number; {MODELS_CLI} lists them")
    return str(int(version))


def _table(row: Dict):
    import pandas as pd

    return pd.DataFrame([{k: v for k, v in row.items() if isinstance(v, (str, int, float, bool))}])


# -- what jobs call ---------------------------------------------------------------------------------


def is_registry_ref(ref: str) -> bool:
    return ref == CURRENT or ref.startswith("models:/")


def resolve_model(ref: str) -> str:
    """``ref`` itself when it is a path; the model directory it names when it is ``current`` or a
    ``models:/`` URI (a directory named "current" is ``./current``)."""
    return Registry(create=False).resolve(ref) if is_registry_ref(ref) else ref


def track_model(
    model_dir: str,
    data: Optional[str] = None,
    run_name: Optional[str] = None,
    params: Optional[Dict] = None,
    tags: Optional[Dict] = None,
    run_id: Optional[str] = None,
    candidate: bool = True,
    strict: bool = False,
    registry: Optional[Registry] = None,
) -> Optional[str]:
    """Records a saved model directory: a run in ``ncf-train`` from its metrics.json (parameters,
    per-epoch history, held-out table), unless ``run_id`` names one already (a sweep trial's), and
    a registry version linked to it. A ``candidate`` (a deployable model) becomes current when
    nothing is. Returns the version.

    A failure to record does not fail the job that trained the model (``strict=False``): it says
    so on stderr, with the command that records the directory later. An input error does (a
    directory that is not a model, or, for the first candidate, one that fails
    :func:`ncf.model.integrity.verify_model_dir` before it becomes current: registered, not current).
    """
    tags = {k: v for k, v in (tags or {}).items() if v is not None}
    tags.setdefault("deployable", str(candidate).lower())  # refit/best-without-refit: true; validated: false
    try:
        version, claimed = None, False
        registry = registry or Registry()
        read_config(model_dir)  # not a model directory: refused before a run is logged for it
        # Not where a deployable one would become current (nothing is): that goes through the first claim.
        deployable = tags["deployable"] == "true"
        already = None if candidate and registry.current() is None else registry.registered_as(model_dir, deployable)
        if already is not None:
            current = registry.current()
            now = f"current is {current}" if current else "nothing is current"
            log(f"{model_dir}: already version {already} of {registry.name}, the same model; {now} ({registry.uri})")
            return already
        # Before any run is logged: a metrics.json these cannot be made from leaves no run behind.
        metrics = checked_metrics(model_dir)
        directory_tags = version_tags(model_dir, data, metrics)
        if run_id is None:
            run_name = run_name or os.path.basename(os.path.abspath(model_dir))
            run_id = registry.log_run(
                TRAIN_EXPERIMENT, run_name, params, metrics.get("history") or [], metrics.get("test"), tags
            )
        current = registry.current()
        first = candidate and current is None
        if first:
            try:
                verify_model_dir(model_dir)  # a claim to become current is a deployable directory's
            except InputError as refused:
                try:
                    # Registered, not current.
                    version = registry.register(model_dir, data, run_id, tags, directory_tags=directory_tags)
                except Exception:  # noqa: BLE001 - the directory's error is the one to say
                    pass
                raise refused from None
        claim = {**tags, FIRST_CLAIM_TAG: "true"} if first else tags
        version = registry.register(model_dir, data, run_id, claim, directory_tags=directory_tags)
        claimed = True
        promote_it = f"{MODELS_CLI} promote {version} makes it current"
        if first:
            _, current = registry.settle_first()
            if current == version:
                note = "now current (nothing was)"
            else:  # another job's version, registered at the same time
                note = f"version {current} became current meanwhile; {promote_it}" if current else promote_it
        elif current and registry.replaced_directory(current) == os.path.realpath(model_dir):
            # A plain --output trained into again: current still names the old model, which is gone.
            promote = promote_it if candidate else f"{MODELS_CLI} promote VERSION makes a deployable one current"
            replaced = f"current is {current}, whose directory this one replaced"
            note = f"{replaced}: --model current is refused until {promote}"
        elif candidate:
            note = f"current is {current}; {promote_it}"  # nothing current makes this one the first claim
        else:
            note = f"current is {current}" if current else "nothing is current"
        log(f"{model_dir}: version {version} of {registry.name}{', ' + note if note else ''} ({registry.uri})")
        return version
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [""])[0]
        if version is not None:  # registered; the store failed before current could be settled
            later = f"{MODELS_CLI} promote {version} makes it current" if candidate else "it is not deployable"
            failed = f"{type(e).__name__}: {first_line}"
            message = f"registered as version {version}, current not settled ({failed}); {later}"
            if strict and claimed:  # said as a busy store (75), a retry registered the directory again
                raise RegisteredNotSettled(f"{model_dir}: {message}; do not register it again") from e
        if strict or (isinstance(e, InputError) and not isinstance(e, StoreUnavailable)):
            raise
        if version is None:
            later = _register_later(registry, model_dir, candidate)
            message = f"not recorded ({type(e).__name__}: {first_line}); record it later with {later}"
        print(f"[registry] {model_dir} {without_passwords(message)}", file=sys.stderr, flush=True)
        return version


def _register_later(registry: Optional[Registry], model_dir: str, candidate: bool) -> str:
    """The command that registers ``model_dir`` in the store this job meant (``registry``; None
    where it did not open: the environment's): run from a shell, without the job's runtime
    environment, ``register`` would create a fresh default store and make the model current there."""
    uri = registry.uri if registry is not None else os.environ.get("MLFLOW_TRACKING_URI")
    # The store is named even where it is the default: run from another directory, the command's
    # own default would be another store.
    uri = uri or sqlite_uri(os.path.abspath(LOCAL_STORE))
    try:
        env = cli_env(uri)
    except InputError:  # a URI SQLAlchemy would refuse: said as given, the failure before says why
        env = f"MLFLOW_TRACKING_URI={shlex.quote(without_passwords(uri))} "
    name = registry.name if registry is not None else MODEL_NAME
    named = f" --name {shlex.quote(name)}" if name != MODEL_NAME else ""
    flag = "" if candidate else " --not-deployable"
    return f"{env}{MODELS_CLI}{named} register {shlex.quote(os.path.abspath(model_dir))}{flag}"


def _quoted(value: str) -> str:
    """A value in an MLflow search filter: in single quotes, or double where it holds one (a
    path may; a value with both cannot be searched for)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise InputError(f"{value!r}: holds both quote characters, which an MLflow search cannot match")


def track_sweep_model(model_dir: str, data: str, sweep: str, candidate: bool = True, tags: Optional[Dict] = None):
    """:func:`track_model` for a sweep's model directory (``SWEEP/best``: the winning trial's
    checkpoint, linked to the trial's run; ``SWEEP/refit``: its refit, a run of its own), tagged
    with the sweep and the trial id its metrics.json names."""
    metrics = checked_metrics(model_dir)  # "sweep" or "validated" edited into another shape: one line
    trial_id = (metrics.get("sweep") or metrics.get("validated") or {}).get("trial_id", "unknown")
    tags = {"sweep": os.path.abspath(sweep), "trial_id": trial_id, **(tags or {})}
    run_id = None
    if "sweep" in metrics:  # the trial's own checkpoint: its run has every epoch
        try:
            run_id = Registry().find_trial_run(sweep, trial_id, moved=True)
        except Exception as e:  # noqa: BLE001 - the store unreachable: track_model says so too
            first = (str(e).strip().splitlines() or [""])[0]
            print(
                f"[registry] {model_dir}: trial {trial_id}'s run not looked up ({type(e).__name__}: "
                f"{without_passwords(first)[:200]}); "
                "the version gets a run of its own, not linked to the trial's",
                file=sys.stderr,
                flush=True,
            )
    kind = read_config(model_dir).get("run", "model")
    return track_model(model_dir, data, f"sweep-{trial_id}-{kind}", tags=tags, run_id=run_id, candidate=candidate)
