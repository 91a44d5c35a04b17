"""jobs.deploy against two real replicas that disagree: one refuses a model the other takes, or
one is busy with a long request. Each test starts Serve on a free 127.0.0.1 port and shuts it
down.

The faults are our own code's, patched inside each replica by a Ray worker setup hook
(:func:`install_replica_faults`, named in the deployment's runtime_env): a test in the driver
cannot reach a replica's process otherwise. This module is imported there as
``tests.test_serve_rollout`` (the repository root is on the replicas' path, tests/ is not), so
its top level imports nothing from tests/.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

FAULTS_ENV = "NCF_TEST_REPLICA_FAULTS"  # the directory of fault switches the replicas read
SETUP_HOOK = "tests.test_serve_rollout.install_replica_faults"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW_HOUSEHOLD = "slow-household"  # a /recommend/batch for it holds its replica until released
# At most: the test releases it (the "release" switch) once its checks are done; the deploys'
# request timeout (REQUEST_TIMEOUT_S) is above it, so the proxy never ends it first on a slow CI.
SLOW_FOR_S = 240.0
REQUEST_TIMEOUT_S = 300


def install_replica_faults() -> None:
    """In each replica, at its start: ``ModelService.load`` of a model whose directory is named in
    a ``refuse-NAME`` switch fails on the first replica to claim the switch (one replica of two
    refuses it, the other takes it); ``recommend_batch`` for :data:`SLOW_HOUSEHOLD` waits for
    the ``release`` switch (a past day's pass of minutes, as far as routing is concerned)."""
    from serve.service import ModelService

    faults = os.environ[FAULTS_ENV]
    load, recommend_batch = ModelService.load, ModelService.recommend_batch

    def load_unless_refused(settings, previous=None):
        switch = os.path.join(faults, f"refuse-{os.path.basename(settings.model_dir)}")
        if os.path.exists(switch) and _claim(f"{switch}.claimed"):
            raise RuntimeError("this replica refuses the model (a fault test)")
        return load(settings, previous)

    def slow_batch(self, request):
        if SLOW_HOUSEHOLD in request.user_ids:
            open(os.path.join(faults, "slow-started"), "w").close()
            deadline = time.monotonic() + SLOW_FOR_S
            while not os.path.exists(os.path.join(faults, "release")) and time.monotonic() < deadline:
                time.sleep(0.05)
            open(os.path.join(faults, "slow-ended"), "w").close()
        return recommend_batch(self, request)

    ModelService.load = staticmethod(load_unless_refused)
    ModelService.recommend_batch = slow_batch


def _claim(path: str) -> bool:
    """True for the first process to ask, across processes (an exclusive create)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@pytest.fixture
def faulty_replicas(ray_session, tmp_path, monkeypatch):
    """Every app jobs.deploy builds here runs :func:`install_replica_faults` in its replicas;
    yields the switches' directory. Serve, started by the test through jobs.deploy, is shut down
    after it."""
    from ray import serve
    from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

    from serve import app as serve_app

    faults = tmp_path / "faults"
    faults.mkdir()
    original = serve_app._application

    def with_faults(a, settings):
        bound = original(a, settings)._bound_deployment
        # Ray honours runtime_env's "worker_process_setup_hook" for a job's environment only; a
        # worker runs the hook its environment variable names (what Ray sets for a job's), before
        # the job's paths are on sys.path: PYTHONPATH finds tests/ as a package of the root.
        hook = {WORKER_PROCESS_SETUP_HOOK_ENV_VAR: SETUP_HOOK, "PYTHONPATH": REPO, FAULTS_ENV: str(faults)}
        runtime_env = {"env_vars": hook}
        return bound.options(ray_actor_options={**bound.ray_actor_options, "runtime_env": runtime_env}).bind()

    monkeypatch.setattr(serve_app, "_application", with_faults)
    try:
        yield faults
    finally:
        (faults / "release").touch()  # a slow request still held ends
        serve.shutdown()


def _two_replicas(port: int) -> list:
    return [
        *("--port", str(port), "--detach", "--min-replicas", "2", "--max-replicas", "2"),
        *("--request-timeout-s", str(REQUEST_TIMEOUT_S)),
    ]


@pytest.mark.faults
def test_a_restore_one_replica_cannot_load_is_said_and_fails_the_job(
    faulty_replicas, small_model_dir, tmp_path, monkeypatch, capsys
):
    """Old code: replica B refused model m1, A took it; the job deployed m0's settings again and
    said "deployed again as Serve's target", exit 2. But m0's path held other files by then (a
    model saved again there), so A's reload of m0 failed; its reconfigure kept m1 and returned,
    and Serve counted it on the target all the same: A served m1 and B m0 after the job. The
    restore is now checked on every replica: exit 1, "replicas still differ", each model named.
    The old line also said replicas started later would load the refused files: they refuse them."""
    from helpers import free_port, sealed_copy

    from jobs import deploy
    from serve import app as serve_app
    from serve.launch import every_replica_health

    m0 = sealed_copy(small_model_dir, str(tmp_path / "m0"), "m0")
    m1 = sealed_copy(small_model_dir, str(tmp_path / "m1"), "m1")
    args = _two_replicas(free_port())
    assert deploy.main(["--model", m0, *args])["replicas_checked"] == 2
    capsys.readouterr()
    (faulty_replicas / "refuse-m1").touch()  # the first replica to load m1 refuses it
    restore_app = serve_app.restore_app

    def saved_again_first(app_args, user_config):  # m0 saved again between the rollout and the restore
        with open(os.path.join(m0, "manifest.json"), "a") as f:
            f.write("\n")
        return restore_app(app_args, user_config)

    monkeypatch.setattr(serve_app, "restore_app", saved_again_first)
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", m1, *args])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 1, error
    assert error.startswith("error: the rollout failed on 1 of 2 replica(s), which kept serving model m0"), error
    assert "replicas still differ: 2 of 2 replica(s) answered (model m0 on 1, model m1 on 1)" in error, error
    assert "1 failed to load it: InputError: <model_dir> (or its DATA) changed after" in error, error
    assert "which replicas started later refuse (they fail to start)" in error, error
    assert "\n" not in error and str(tmp_path) not in error
    # What the line says is what runs: one replica on each model.
    assert sorted(h["model_version"] for h in every_replica_health(2).values()) == ["m0", "m1"]


@pytest.mark.faults
def test_a_replica_busy_with_a_long_request_is_asked_too(
    faulty_replicas, small_model_dir, tmp_path, monkeypatch, capsys
):
    """Old code asked /healthz one question at a time through the handle, which sends each to the
    replica with fewer requests in flight: a replica busy with a long request (a past day's pass of
    minutes) was never asked, and the job exited 0 with a note on stderr. Questions now go in
    rounds, several at once, until every replica answered; fewer answers exit 1 with the count."""
    import requests
    from helpers import free_port, sealed_copy

    from jobs import deploy

    port = free_port()
    args = _two_replicas(port)
    assert deploy.main(["--model", small_model_dir, *args])["replicas_checked"] == 2
    v2 = sealed_copy(small_model_dir, str(tmp_path / "v2"), "v2")
    held = threading.Thread(
        target=lambda: requests.post(
            f"http://127.0.0.1:{port}/recommend/batch",
            json={"user_ids": [SLOW_HOUSEHOLD], "k": 3},
            timeout=REQUEST_TIMEOUT_S,
        ),
        daemon=True,
    )
    held.start()
    deadline = time.monotonic() + 30
    while not (faulty_replicas / "slow-started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (faulty_replicas / "slow-started").exists(), "the long request never reached a replica"
    monkeypatch.setattr(deploy, "REPLICA_ANSWER_TIMEOUT_S", 10.0)  # old code: 1 of 2 after it, exit 0
    started = time.monotonic()
    deployed = deploy.main(["--model", v2, *args])
    took = time.monotonic() - started
    assert deployed["model_version"] == "v2" and deployed["replicas_checked"] == 2, capsys.readouterr().err
    assert not (faulty_replicas / "slow-ended").exists(), "the long request ended before the check: it proved nothing"
    # A replica that does not answer in time is not vouched for: exit 1, the count named.
    monkeypatch.setattr(deploy, "REPLICA_ANSWER_TIMEOUT_S", 0.0)  # only the HTTP probe's replica heard
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", v2, *args])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 1, error
    assert error.startswith("error: only 1 of 2 replica(s) answered their health within 0 s"), error
    (faulty_replicas / "release").touch()
    held.join(timeout=60)
    with capsys.disabled():
        print(f"\n[faults] a rollout checked on a replica busy with a long request: {took:.1f} s")
