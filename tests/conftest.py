"""Shared fixtures: one local Ray cluster per test session (starting one takes ~7 s)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Data progress bars are noise in test logs.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Ray Train's controller polls its workers every 2 s, so a run's start and end wait on it; the
# suite's runs are seconds of training each (a probe of two: 18.7 / 16.4 s a run, 14.8 / 11.7 s
# at 0.2 s). Inherited by the jobs and clusters the tests start; what is tested does not change.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

# Imported once here, not first inside a test: Ray Serve binds its logger's handler to the
# sys.stderr of the moment, and a test's capsys stream is closed when that test ends (every
# later "ray.serve" log line was then a "Logging error" on stderr, which broke the checks of a
# job's one line in tests/test_serve_rollout.py when run after tests/test_cli.py).
import ray.serve  # noqa: E402, F401

RAY_FIXTURES = {"ray_session"}


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """The session's own experiment tracking and model registry store (ncf.registry): jobs run by
    tests never write to the repository's artifacts/mlflow.db, nor to a user's tracking server."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri  # inherited by the jobs tests start as subprocesses
    try:
        yield uri
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session", autouse=True)
def batch_tracebacks_removed():
    """The nightly job keeps a failed run's traceback in the temp folder by design (its one line
    names the file); the failures the tests cause are removed at the session's end, only this
    checkout's (a path in them names it): another session's stay."""
    import glob
    import tempfile
    import time

    start, repo = time.time(), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    yield
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "ncf-batch-score-*.traceback.txt")):
        try:
            if os.path.getmtime(path) >= start - 1:
                with open(path, encoding="utf-8", errors="replace") as f:
                    ours = f'File "{repo}{os.sep}' in f.read()
                if ours:
                    os.remove(path)
        except OSError:
            pass


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster shared by every integration test of the session (num_cpus=2)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Tests that use the Ray cluster are `ray`, the rest `unit`, so `-m unit` stays fast."""
    for item in items:
        uses_ray = RAY_FIXTURES & set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.ray if uses_ray else pytest.mark.unit)


@pytest.fixture(scope="session")
def small_data(ray_session, tmp_path_factory):
    """A small synthetic dataset, preprocessed once per session: (data dir, stats)."""
    from ncf.data import datasets, schema
    from ncf.data.preprocess import preprocess, small_config

    root = tmp_path_factory.mktemp("small")
    logs, catalog = datasets.write_synthetic(str(root / "raw"), datasets.SMALL)
    data = str(root / "data")
    stats = preprocess(schema.resolve_files(logs), schema.resolve_files(catalog), data, small_config())
    return data, stats


SMALL_MODEL = {
    "mf_embedding_dim": 16,
    "mlp_embedding_dim": 16,
    "temporal_dim": 8,
    "mlp_hidden_dims": [32, 16],
    "history_length": 8,
}


@pytest.fixture(scope="session")
def small_model_dir(small_data, tmp_path_factory):
    """A model directory on ``small_data`` with seeded, untrained weights (enough for serving
    and scoring mechanics; training itself is tested in test_training.py)."""
    from ncf.model.directory import save_untrained_model_dir

    data, _ = small_data
    return save_untrained_model_dir(str(tmp_path_factory.mktemp("model") / "v1"), data, version="v1", **SMALL_MODEL)
