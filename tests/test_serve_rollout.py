"""jobs.deploy's rollouts against real replicas: two that disagree (one refuses a model the other
takes, or one is busy with a long request), a rollout refused while another deploy acts or
interrupted, replicas no node can place, and deploys at once. Each of those tests starts Serve
on a free 127.0.0.1 port and shuts it down. The last tests check the same paths' logic without
Ray: Serve's status, its replicas' answers or its target faked.

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
import uuid

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
    refuses it, the other takes it), and one named in an ``ignore-NAME`` switch is not loaded by
    the first replica to claim it, which keeps its model without an error; ``recommend_batch``
    for :data:`SLOW_HOUSEHOLD` waits for the ``release`` switch (a past day's pass of minutes, as
    far as routing is concerned)."""
    from serve.service import ModelService

    faults = os.environ[FAULTS_ENV]
    load, recommend_batch = ModelService.load, ModelService.recommend_batch

    def load_unless_refused(settings, previous=None):
        switch = os.path.join(faults, f"refuse-{os.path.basename(settings.model_dir)}")
        if os.path.exists(switch) and _claim(f"{switch}.claimed"):
            raise RuntimeError("this replica refuses the model (a fault test)")
        ignored = os.path.join(faults, f"ignore-{os.path.basename(settings.model_dir)}")
        if previous is not None and os.path.exists(ignored) and _claim(f"{ignored}.claimed"):
            return previous  # keeps its model and says nothing: a reconfigure that never happened
        return load(settings, previous)

    def slow_batch(self, request):
        if SLOW_HOUSEHOLD in request.user_ids:
            open(os.path.join(faults, "slow-started"), "w").close()
            open(os.path.join(faults, f"slow-started-{uuid.uuid4().hex}"), "w").close()  # one per start
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

    def with_faults(a, settings, runtime_env=None):  # the hook's environment, whatever a rollout would keep
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


@pytest.fixture
def serve_shut_down_after(ray_session):
    """Serve, started by the test through jobs.deploy (if at all), shut down after it."""
    from ray import serve

    try:
        yield
    finally:
        serve.shutdown()


def _target_user_config() -> dict:
    """The user_config of Serve's target for jobs.deploy's app: what a replica Serve starts next loads."""
    from serve.rollout import _target

    return _target().deployment_config.user_config


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

    def saved_again_first(app_args, user_config, runtime_env=None):  # m0 saved again between rollout and restore
        with open(os.path.join(m0, "manifest.json"), "a") as f:
            f.write("\n")
        return restore_app(app_args, user_config, runtime_env)

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
    assert sorted(h["model_version"] for h in every_replica_health(2).answers.values()) == ["m0", "m1"]
    # The next deploy read what Serve served from whichever replica answered first, and would
    # have restored that one's settings after a failed rollout: it asks every replica now, and is
    # refused before anything changes while they differ.
    monkeypatch.setattr(serve_app, "restore_app", restore_app)
    target = _target_user_config()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", m0, *args])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 1, error
    assert error.startswith("error: the app's replicas serve different settings (2 replicas serve 2 different"), error
    assert f"{m0} (m0:" in error and f"{m1} (m1:" in error and "serve.delete('ncf')" in error, error
    assert _target_user_config() == target  # nothing deployed


@pytest.mark.faults
def test_work_whose_clients_left_holds_at_most_the_replicas_worker_threads(faulty_replicas, small_model_dir):
    """/recommend/batch, /score and the explorer's routes were plain FastAPI routes, run in
    anyio's pool: when Serve cancelled a request (its client gone, the request timeout), its slot
    was free at once while its thread went on computing, so clients that give up and retry piled
    up work without bound (a review of serve/, session 68: 100 cancelled calls, 100 threads). Now
    they hand their work to a bounded pool of threads: a request cancelled before its turn is
    never computed. Two waves of eight abandoned requests start HEAVY_ROUTE_THREADS at most, and
    once those end the replica answers again."""
    import requests
    from helpers import free_port

    from jobs import deploy
    from serve.app import HEAVY_ROUTE_THREADS

    port = free_port()
    one_replica = ["--port", str(port), "--detach", "--min-replicas", "1", "--max-replicas", "1"]
    deploy.main(["--model", small_model_dir, *one_replica, "--request-timeout-s", str(REQUEST_TIMEOUT_S)])
    url = f"http://127.0.0.1:{port}"

    def abandoned() -> None:
        try:
            requests.post(f"{url}/recommend/batch", json={"user_ids": [SLOW_HOUSEHOLD], "k": 3}, timeout=1.0)
        except requests.exceptions.RequestException:
            pass  # the client gives up: Serve cancels the request

    for _ in range(2):  # the second wave comes once the first's slots are free again
        wave = [threading.Thread(target=abandoned, daemon=True) for _ in range(8)]
        for client in wave:
            client.start()
        for client in wave:
            client.join(timeout=30)
        time.sleep(1.0)
    started = len(list(faulty_replicas.glob("slow-started-*")))
    assert 1 <= started <= HEAVY_ROUTE_THREADS, f"{started} abandoned requests computed at once"
    (faulty_replicas / "release").touch()
    answer = requests.post(f"{url}/recommend/batch", json={"user_ids": ["1"], "k": 3}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert len(list(faulty_replicas.glob("slow-started-*"))) == started  # the cancelled ones never ran


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


def _one_replica(port: int) -> list:
    return ["--port", str(port), "--detach", "--max-replicas", "1", "--request-timeout-s", str(REQUEST_TIMEOUT_S)]


@pytest.mark.faults
def test_a_second_deploy_while_one_rolls_out_is_refused(serve_shut_down_after, small_model_dir, capsys):
    """Two deploys at once undid each other: A rolled out a good model, B a bad one the replicas
    refused (they kept A's and named B's error on /healthz); A's health round saw that error, took
    its own rollout for failed and restored what both had read before. Deploys take turns now
    (the cluster's deploy slot): a second one is refused in one line, exit 75, before it reads
    or deploys anything."""
    from helpers import free_port

    from jobs import deploy
    from serve.deploy_slot import deploy_slot
    from serve.launch import running_address

    with deploy_slot("jobs.deploy --model elsewhere"):
        with pytest.raises(SystemExit) as exited:
            deploy.main(["--model", small_model_dir, *_one_replica(free_port())])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 75, error
    assert error == (
        "error: another deploy rolls out on this cluster (jobs.deploy --model elsewhere): two at once undo each "
        "other's rollouts; try again when it ends"
    )
    assert running_address() is None  # nothing started
    with deploy_slot("jobs.deploy --model right after"):  # freed when the holder ended
        pass


@pytest.mark.faults
def test_a_restore_leaves_a_target_another_deploy_set_since(
    faulty_replicas, small_model_dir, tmp_path, monkeypatch, capsys
):
    """A refused rollout was undone by deploying the settings served before whatever Serve's
    target had become meanwhile: a deploy by other means (``serve deploy``, a script) between the
    rollout and its restore was undone with it. The restore now first checks that the target is
    still the settings this job deployed, and leaves another's alone, exit 1."""
    from helpers import free_port, sealed_copy

    from jobs import deploy
    from serve.app import app_of, serve_settings
    from serve.launch import start

    m0 = sealed_copy(small_model_dir, str(tmp_path / "m0"), "m0")
    m1 = sealed_copy(small_model_dir, str(tmp_path / "m1"), "m1")
    m2 = sealed_copy(small_model_dir, str(tmp_path / "m2"), "m2")
    port = free_port()
    args = _one_replica(port)
    assert deploy.main(["--model", m0, *args])["model_version"] == "m0"
    (faulty_replicas / "refuse-m1").touch()  # the replica refuses m1 and keeps m0
    refused_rollout = deploy.refused_rollout

    def another_deploy_first(answers):  # m2 deployed by other means before this job's restore
        other = {"model": m2, "max_replicas": 1}
        start(app_of(other, serve_settings(other)), port=port, request_timeout_s=REQUEST_TIMEOUT_S)
        return refused_rollout(answers)

    monkeypatch.setattr(deploy, "refused_rollout", another_deploy_first)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", m1, *args])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 1, error
    assert error.startswith("error: the rollout failed on 1 of 1 replica(s), which kept serving model m0"), error
    assert error.endswith(
        f"(not deployed again: Serve's target is no longer this rollout's settings but model_dir {m2} "
        "(another deploy since))"
    ), error
    assert _target_user_config()["model_dir"] == m2


@pytest.mark.faults
def test_an_interrupted_rollout_says_it_is_unverified_and_how_to_check_it(
    faulty_replicas, small_model_dir, tmp_path, monkeypatch, capsys
):
    """Ctrl-C (or SIGTERM) after a --detach rollout went to Serve only said "interrupted before
    the app answered": Serve's target was the new settings, untested, and where the replicas
    refused them every replica Serve started later failed. The line now says the rollout is
    unverified and how to check or undo it, exit 130; running the same command again does undo a
    refused one."""
    from helpers import free_port, sealed_copy

    from jobs import deploy

    m0 = sealed_copy(small_model_dir, str(tmp_path / "m0"), "m0")
    m1 = sealed_copy(small_model_dir, str(tmp_path / "m1"), "m1")
    args = _one_replica(free_port())
    assert deploy.main(["--model", m0, *args])["model_version"] == "m0"
    (faulty_replicas / "refuse-m1").touch()
    wait_until_healthy = deploy.wait_until_healthy

    def interrupted(*args, **kwargs):  # Ctrl-C once Serve has the rollout
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy, "wait_until_healthy", interrupted)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", m1, *args])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 130, error
    assert error.startswith("error: interrupted after the rollout went to Serve: it may be Serve's target"), error
    # What served before, not a command: one without the options that served it (--port, --candidates,
    # --replica-memory-gb...) deployed other settings, or was refused.
    assert error.endswith(
        f"model {m0} was served before, deploy it again with the options of the deploy that served it"
    )
    assert "\n" not in error, error
    assert _target_user_config()["model_dir"] == m1  # untested, as the line says
    # The same command again checks every replica and undoes the rollout they refused.
    monkeypatch.setattr(deploy, "wait_until_healthy", wait_until_healthy)
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", m1, *args])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "(deployed again as Serve's target)" in error, error
    assert _target_user_config()["model_dir"] == m0


@pytest.mark.faults
def test_a_rollout_whose_replicas_never_answer_healthy_is_undone(
    serve_shut_down_after, small_model_dir, tmp_path, monkeypatch, capsys
):
    """A rollout that Serve ran but whose /healthz did not answer in time (a replica woken from
    zero that loads for longer, or fails on the new model) ended the job without a restore: the
    rollout stayed Serve's target, which every replica Serve starts later loads. Now it is undone
    where the settings served before are known, as a rollout Serve failed is."""
    from helpers import free_port, sealed_copy

    from jobs import deploy
    from ncf.errors import InputError
    from serve.rollout import Restored

    m0 = sealed_copy(small_model_dir, str(tmp_path / "m0"), "m0")
    m1 = sealed_copy(small_model_dir, str(tmp_path / "m1"), "m1")
    args = _one_replica(free_port())
    assert deploy.main(["--model", m0, *args])["model_version"] == "m0"
    asked = []

    def never_healthy(url, timeout_s=60.0):
        asked.append(timeout_s)
        raise TimeoutError(f"{url}/healthz not healthy after {timeout_s:.0f} s: HTTP 503")

    monkeypatch.setattr(deploy, "wait_until_healthy", never_healthy)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", m1, *args])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 1, error
    assert (
        "/healthz not healthy after 60 s: HTTP 503; the settings served before: deployed again as Serve's target;"
        in (error)
    ), error
    assert "\n" not in error, error
    assert asked == [60.0]  # a running replica: the minute, not the cold load's five
    assert _target_user_config()["model_dir"] == m0

    def refused(url, timeout_s=60.0):  # an answer waiting will not change (a host the proxy does not take)
        raise InputError(f"{url}/healthz answered 421: misdirected")

    monkeypatch.setattr(deploy, "wait_until_healthy", refused)
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", m1, *args])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "answered 421: misdirected; the settings served before: deployed again" in error
    assert _target_user_config()["model_dir"] == m0
    # A restore that did not agree: the run failed (1), whatever the refusal was (a second read).
    failed_too = Restored("deploying the serving settings again failed too (drill)", False)
    monkeypatch.setattr(deploy, "restore_previous", lambda *args, **kwargs: failed_too)
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", m1, *args])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 1 and "the settings served before: deploying the serving settings again failed" in error


@pytest.mark.faults
def test_a_deploy_whose_replicas_no_node_can_place_ends_and_is_undone(
    faulty_replicas, small_model_dir, tmp_path, monkeypatch, capsys
):
    """serve.run waited without end for replicas Ray cannot place (--replica-memory-gb beyond
    every node): the deploy hung, Serve's target the unplaceable one. Now the wait ends at
    --start-timeout-s (short here) with one line: a first deploy's app deleted, a rollout's
    undone to the settings and asks served before."""
    from helpers import free_port, sealed_copy
    from ray import serve

    from jobs import deploy
    from serve import launch
    from serve.rollout import _target

    m1 = sealed_copy(small_model_dir, str(tmp_path / "m1"), "m1")
    args = _one_replica(free_port())
    # The restore waits as long again: its replica is the one already running, at once RUNNING.
    unplaceable = ["--replica-memory-gb", "100000", "--start-timeout-s", "10"]
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", small_model_dir, *args, *unplaceable])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 1, error
    assert error.startswith(
        "error: Serve could not start the app (the app was not running within the start timeout, 10 s"
    ), error
    assert "; nothing served before: the app is deleted; the replicas' logs:" in error and "\n" not in error, error
    assert launch.APP_NAME not in serve.status().applications
    first_took = time.monotonic() - started
    assert deploy.main(["--model", small_model_dir, *args])["model_version"] == "v1"
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", m1, *args, *unplaceable])
    error = capsys.readouterr().err.strip()
    took = time.monotonic() - started
    assert exited.value.code == 1, error
    assert error.startswith(
        "error: Serve could not start the app (the app was not running within the start timeout, 10 s"
    ), error
    assert "; the settings served before: deployed again as Serve's target;" in error, error
    target = _target()
    assert target.deployment_config.user_config["model_dir"] == small_model_dir
    assert "memory" not in target.replica_config.ray_actor_options  # the asks that placed the replicas
    assert launch.every_replica_health(1).answers  # a replica serves
    assert max(first_took, took) < 120, (first_took, took)
    with capsys.disabled():
        print(f"\n[faults] deploys whose replicas no node can place, ended: {first_took:.0f} s, {took:.0f} s")


@pytest.mark.faults
def test_a_rollout_keeps_the_replicas_the_app_runs(faulty_replicas, small_model_dir, tmp_path, capsys):
    """Ray 2.60 resets a deployment whose config changed (every rollout's user_config) to its
    initial_replicas where one is set, and jobs.deploy always set one: an app scaled up dropped
    to it. A rollout now leaves it unset, so that Serve keeps its target (2 here, below which the
    rollout's --min-replicas 1 would have set it); a first deploy still starts with one. A guard
    against setting initial_replicas on every rollout only: the code before (initial_replicas the
    running count, serve.rollout.replicas_kept) passes it too; it differed where the autoscaler
    moved between the count's reading and the rollout.

    Also Serve's refusal of a method the replicas' code lacks, which tells replicas of the code
    before ``served_settings`` (asked what they serve once, bare: serve.launch.no_such_method)."""
    from helpers import free_port, sealed_copy
    from ray import serve
    from ray.serve.context import _get_global_client

    from jobs import deploy
    from serve.app import DEPLOYMENT_NAME
    from serve.launch import APP_NAME, no_such_method

    def target_replicas() -> int:
        details = _get_global_client().get_serve_details()
        return details["applications"][APP_NAME]["deployments"][DEPLOYMENT_NAME]["target_num_replicas"]

    port = free_port()
    assert deploy.main(["--model", small_model_dir, *_two_replicas(port)])["replicas_checked"] == 2
    v2 = sealed_copy(small_model_dir, str(tmp_path / "v2"), "v2")
    one_to_two = ["--min-replicas", "1", "--max-replicas", "2"]
    deployed = deploy.main(["--model", v2, "--port", str(port), "--detach", *one_to_two])
    assert deployed["model_version"] == "v2" and deployed["replicas_checked"] == 2, capsys.readouterr().err
    assert target_replicas() == 2
    with pytest.raises(Exception) as refused:
        serve.get_deployment_handle(DEPLOYMENT_NAME, APP_NAME).not_in_this_code.remote().result(timeout_s=30)
    assert no_such_method(refused.value, "not_in_this_code"), refused.value


@pytest.mark.faults
def test_a_replica_left_on_the_previous_model_without_an_error_fails_the_rollout(
    faulty_replicas, small_model_dir, tmp_path, capsys
):
    """A replica that serves the previous model without a rollout error (a reconfigure Serve
    never called, or one undone since) answered /healthz as healthy as one on the new model, and
    the deploy reported success with two models served (Left open since session 58). Each
    replica is now asked what it serves: the rollout is undone and the job fails."""
    from helpers import free_port, sealed_copy

    from jobs import deploy

    m0 = sealed_copy(small_model_dir, str(tmp_path / "m0"), "m0")
    m1 = sealed_copy(small_model_dir, str(tmp_path / "m1"), "m1")
    port = free_port()
    assert deploy.main(["--model", m0, *_two_replicas(port)])["replicas_checked"] == 2
    (faulty_replicas / "ignore-m1").touch()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", m1, *_two_replicas(port)])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 1, error
    assert f"1 of 2 replica(s) serve model {m0}, not the rollout's, without a rollout error" in error, error
    assert "(deployed again as Serve's target)" in error, error
    assert _target_user_config()["model_dir"] == m0


@pytest.mark.faults
def test_a_replica_not_heard_saying_what_it_serves_is_not_vouched_for(monkeypatch):
    """The check after the health round passed where a replica did not answer in time: nothing
    heard, nothing different (a second read)."""
    from serve import launch, rollout

    deployed = {"model_dir": "/m/m1"}
    heard = {"r1": {"replica": "r1", "user_config": deployed}}
    running = {"r1"}

    def answered(method, replicas, app, timeout_s, first=None):  # as every_replica_answer reads them
        return launch.Heard({tag: a for tag, a in heard.items() if tag in running}, len(running - heard.keys()))

    monkeypatch.setattr(launch, "every_replica_answer", answered)
    assert rollout.serving_other_settings(deployed, 1, 30.0) is None
    running.add("r2")  # runs, silent
    with pytest.raises(TimeoutError, match=r"only 1 of 2 replica\(s\) said what they serve within 30 s"):
        rollout.serving_other_settings(deployed, 2, 30.0)
    heard["r2"] = {"replica": "r2", "user_config": {"model_dir": "/m/m0"}}
    assert rollout.serving_other_settings(deployed, 2, 30.0).startswith("1 of 2 replica(s) serve model /m/m0")
    # The same model on other settings (a rollout of another --data): the settings named, not the
    # rollout's own model as the replica's (a review of serve/, 2026-12-07).
    # The question before the rounds and the rounds share one timeout (a slow first answer left
    # the rounds a whole one more: 120 s for the 60 s said; a review of serve/, 2026-12-07).
    asked = []

    def answers(method, replicas, app, timeout_s, first=None):
        asked.append(timeout_s)
        return answered(method, replicas, app, timeout_s, first)

    monkeypatch.setattr(launch, "every_replica_answer", answers)
    launch.every_replica_served(1, "app", 60.0, heard["r1"], spent_s=45.0)
    launch.every_replica_served(1, "app", 60.0, heard["r1"], spent_s=75.0)
    assert asked == [15.0, 0.0]
    heard["r1"]["user_config"] = {"model_dir": "/m/m1", "data": "/d/new"}
    heard["r2"] = {"replica": "r2", "user_config": {"model_dir": "/m/m1", "data": "/d/old"}}
    assert rollout.serving_other_settings(heard["r1"]["user_config"], 2, 30.0) == (
        "1 of 2 replica(s) serve other settings (data /d/old, not /d/new), not the rollout's, without a rollout error"
    )


def _app_status(status, states: dict, trigger=None, message: str = "", deployment_status=None):
    """Serve's status of jobs.deploy's app (as ``serve.status()`` holds it): ``states``, replicas
    by state; the deployment HEALTHY where the app is RUNNING, UPDATING otherwise, unless given."""
    from types import SimpleNamespace

    from ray.serve._private.common import DeploymentStatus
    from ray.serve.schema import ApplicationStatus

    from serve.app import DEPLOYMENT_NAME

    if deployment_status is None:
        running = status == ApplicationStatus.RUNNING
        deployment_status = DeploymentStatus.HEALTHY if running else DeploymentStatus.UPDATING
    deployment = SimpleNamespace(
        replica_states=states, status=deployment_status, status_trigger=trigger, message=message
    )
    return SimpleNamespace(status=status, message=message, deployments={DEPLOYMENT_NAME: deployment})


def _serve_reads(monkeypatch, readings) -> None:
    """``serve.status()`` gives jobs.deploy's app each of ``readings`` (an iterable of
    :func:`_app_status`) in turn."""
    from types import SimpleNamespace

    from ray import serve

    from serve.launch import APP_NAME

    readings = iter(readings)
    monkeypatch.setattr(serve, "status", lambda: SimpleNamespace(applications={APP_NAME: next(readings)}))


@pytest.mark.faults
def test_the_wait_for_a_deploy_has_one_deadline(monkeypatch):
    """A wait that ends once no replica changed state for a while is wrong both ways on an
    autoscaling cluster: replicas STARTING, unchanged, for the minutes a new node takes are
    declared stalled (a first deploy's app deleted, a rollout undone), and a crash loop beside a
    running replica changes state at each retry, which resets the wait (a review: up to an hour,
    and as long again for the restore). One deadline (jobs.deploy's --start-timeout-s); Serve's
    failures end the wait at once."""
    import itertools

    from ray.serve._private.common import DeploymentStatusTrigger
    from ray.serve.schema import ApplicationStatus

    from jobs import deploy
    from serve import launch

    monkeypatch.setattr(launch, "STATUS_POLL_S", 0.01)
    deploying, running = ApplicationStatus.DEPLOYING, ApplicationStatus.RUNNING
    assert deploy.parse_args(["--model", "m"]).start_timeout_s == launch.START_TIMEOUT_S == 1800

    # A new node: STARTING, unchanged, for a while, then RUNNING within the timeout.
    waiting_for_a_node = [_app_status(deploying, {"STARTING": 1})] * 100
    _serve_reads(monkeypatch, [*waiting_for_a_node, _app_status(running, {"RUNNING": 1})])
    launch.wait_until_running(timeout_s=30)

    # A crash loop beside a running replica (Serve never fails the deployment): its states change
    # at every reading, and the wait still ends at its deadline, naming the states and Serve's message.
    message = "Deployment 'RecommenderDeployment' has 1 replicas that have taken more than 30s to be scheduled."
    crash_loop = [_app_status(deploying, {"RUNNING": 1, "STARTING": 1}, message=message)]
    crash_loop.append(_app_status(deploying, {"RUNNING": 1}, message=message))
    _serve_reads(monkeypatch, itertools.cycle(crash_loop))
    started = time.monotonic()
    with pytest.raises(launch.DeployStalled) as stalled:
        launch.wait_until_running(timeout_s=1)
    assert 1 <= time.monotonic() - started < 6
    assert str(stalled.value).startswith(
        "the app was not running within the start timeout, 1 s (app DEPLOYING; replicas:"
    )
    assert str(stalled.value).endswith(message)

    # Serve's failures: at once, and not taken for a stall (DeployStalled deletes a first deploy's app).
    failing = [
        _app_status(ApplicationStatus.DEPLOY_FAILED, {}, message="RecommenderDeployment failed"),
        _app_status(ApplicationStatus.UNHEALTHY, {"RUNNING": 1}, DeploymentStatusTrigger.REPLICA_STARTUP_FAILED),
    ]
    for failed, words in zip(failing, ["failed: RecommenderDeployment failed", "its replicas fail to start"]):
        _serve_reads(monkeypatch, itertools.repeat(failed))
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=words) as raised:
            launch.wait_until_running(timeout_s=60)
        assert not isinstance(raised.value, launch.DeployStalled) and time.monotonic() - started < 5


@pytest.mark.faults
def test_a_rollout_of_the_same_code_from_another_jobs_environment_reconfigures_the_replicas_in_place(
    serve_shut_down_after, small_model_dir, tmp_path, monkeypatch
):
    """Serve gives replicas the deploying job's runtime environment where the app sets none, and
    `ray job submit --working-dir .` makes a new one for every change of any file (README, tests)
    and every NCF_CODE_COMMIT: each model rollout restarted every replica instead of the
    reconfigure in place (a surge's room needed; a refused model DEPLOY_FAILED, exit 1 not 2; a
    review of the rollouts, 2026-12-07). A rollout of the same code keeps the replicas' environment.
    The job's environment is set here as `ray job submit --runtime-env-json` sets a driver's."""
    from helpers import free_port, sealed_copy
    from ray.runtime_context import RuntimeContext

    from jobs import deploy
    from serve.rollout import _target

    submission = {"commit": "a"}
    environment = property(lambda self: {"env_vars": {"NCF_TEST_SUBMISSION": submission["commit"]}})
    monkeypatch.setattr(RuntimeContext, "runtime_env", environment)
    args = ["--port", str(free_port()), "--detach"]
    first = deploy.main(["--model", small_model_dir, *args])
    submission["commit"] = "b"
    second = deploy.main(["--model", sealed_copy(small_model_dir, str(tmp_path / "v2"), "v2"), *args])
    assert second["model_version"] == "v2" and second["replicas_checked"] == 1
    assert second["replica"] == first["replica"]  # the same replica, reconfigured: not restarted
    assert _target().replica_config.ray_actor_options["runtime_env"] == {"env_vars": {"NCF_TEST_SUBMISSION": "a"}}


@pytest.mark.faults
def test_a_deploy_onto_a_route_another_app_holds_is_one_line_and_leaves_that_app(
    serve_shut_down_after, small_model_dir, capsys
):
    """`serve run serve.app:build_app ...` (an app named default, at /) then `jobs.deploy --detach`
    onto the same Serve: Ray's RayServeException from the controller was a traceback, exit 1 (a
    review of the rollouts, 2026-12-07). Now one line naming the other app, exit 2, nothing deployed."""
    from helpers import free_port
    from ray import serve

    from jobs import deploy

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
    class Other:
        def __call__(self, request) -> str:
            return "other"

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Other.bind(), name="default", route_prefix="/")
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", small_model_dir, "--port", str(port), "--detach"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exited.value.code == 2, line
    assert line.startswith("error: Serve's route / is taken by another application, default"), line
    assert "nothing was deployed" in line and "serve.delete('default')" in line
    assert set(serve.status().applications) == {"default"}


@pytest.mark.faults
def test_a_rollout_that_an_autoscaling_decision_met_is_waited_for_until_every_replica_has_it(monkeypatch, capsys):
    """An autoscaling decision during a rollout turns the deployment's UPDATING into UPSCALING, and
    Serve calls the app RUNNING while replicas still serve, or are being given, the previous
    settings: heard then, a good rollout read as two models served and was undone (a review of
    the rollouts, 2026-12-07). The wait goes on until the deployment is HEALTHY, within its
    deadline; at the deadline a RUNNING app is handed to the replicas' own answers."""
    import itertools

    from ray.serve._private.common import DeploymentStatus, DeploymentStatusTrigger
    from ray.serve.schema import ApplicationStatus

    from serve import launch

    monkeypatch.setattr(launch, "STATUS_POLL_S", 0.01)
    running, autoscaling = ApplicationStatus.RUNNING, DeploymentStatusTrigger.AUTOSCALING
    mid_rollout = _app_status(
        running, {"RUNNING": 2, "UPDATING": 1}, autoscaling, deployment_status=DeploymentStatus.UPSCALING
    )
    done = _app_status(running, {"RUNNING": 3})
    readings = iter([mid_rollout] * 5 + [done])
    _serve_reads(monkeypatch, readings)
    launch.wait_until_running(timeout_s=30)
    assert next(readings, None) is None  # every reading taken: it returned at HEALTHY, not before
    (line,) = capsys.readouterr().err.splitlines()  # said once, not at each reading
    assert line.startswith("[deploy] ncf runs; waiting for Serve to finish the rollout on every replica"), line

    _serve_reads(monkeypatch, itertools.repeat(mid_rollout))  # a rollout that does not end
    started = time.monotonic()
    launch.wait_until_running(timeout_s=1)  # no DeployStalled: the app runs, the replicas are asked
    assert 1 <= time.monotonic() - started < 6

    # The rollout done, an upscale waiting for a node (Serve's words): no replica rolled for the
    # grace, handed on well before the deadline (it held the deploy slot for --start-timeout-s).
    monkeypatch.setattr(launch, "SETTLE_GRACE_S", 0.5)
    no_node = "Deployment 'RecommenderDeployment' has 1 replicas that have taken more than 30s to be scheduled."
    upscaling = _app_status(
        running, {"RUNNING": 2, "STARTING": 1}, autoscaling, no_node, deployment_status=DeploymentStatus.UPSCALING
    )
    _serve_reads(monkeypatch, itertools.chain([mid_rollout] * 3, itertools.repeat(upscaling)))
    started = time.monotonic()
    launch.wait_until_running(timeout_s=60)
    assert 0.5 <= time.monotonic() - started < 10

    # New code: a new replica STARTING (surge first, the old ones RUNNING, none UPDATING) loads its
    # model for longer than the grace, and a stretch DEPLOYING between two RUNNING readings: both
    # waited for, to HEALTHY (the second review of this wait).
    surging = _app_status(
        running, {"RUNNING": 2, "STARTING": 1}, autoscaling, deployment_status=DeploymentStatus.UPSCALING
    )
    deploying = _app_status(ApplicationStatus.DEPLOYING, {"RUNNING": 2, "STARTING": 1})
    # And the rollout's own replica loading beside an upscale's that waits for a node (Serve's
    # words name how many wait: one of the two STARTING).
    beside = _app_status(
        running, {"RUNNING": 2, "STARTING": 2}, autoscaling, no_node, deployment_status=DeploymentStatus.UPSCALING
    )
    for middle in (surging, deploying, beside):
        readings = iter([surging] + [middle] * 150 + [surging, done])  # 1.5 s of readings, 3 graces
        _serve_reads(monkeypatch, readings)
        launch.wait_until_running(timeout_s=60)
        assert next(readings, None) is None

    # A constructor failing again and again beside running replicas (a first deploy's: Serve never
    # fails it): no rollout's end to wait for, handed on after the grace, not the deadline.
    retried = "A replica failed to start with exception. Retrying (2/100). Error: RuntimeError: boom"
    crash_loop = _app_status(
        running, {"RUNNING": 1, "STARTING": 1}, autoscaling, retried, deployment_status=DeploymentStatus.UPSCALING
    )
    _serve_reads(monkeypatch, itertools.repeat(crash_loop))
    started = time.monotonic()
    launch.wait_until_running(timeout_s=60)
    assert time.monotonic() - started < 10

    # Serve failing the deployment once the app ran (new replicas refusing a model they have no
    # earlier one to keep beside): handed to the running replicas, whose refusals say it (exit 2);
    # Serve's reason said on stderr.
    capsys.readouterr()
    failed = _app_status(ApplicationStatus.DEPLOY_FAILED, {"RUNNING": 2}, message="RecommenderDeployment failed")
    _serve_reads(monkeypatch, iter([mid_rollout, failed]))
    launch.wait_until_running(timeout_s=60)
    assert "Serve failed ncf's deployment after it ran (RecommenderDeployment failed)" in capsys.readouterr().err


@pytest.mark.faults
def test_what_serve_serves_is_read_from_one_status_and_every_replica(monkeypatch):
    """serving_user_config read Serve's status twice (the app's, then the running count), which
    could disagree; and it trusted the first replica to answer. One reading now, every running
    replica asked its served_settings, by tag (one replica answering every question is one of
    two, not two: untagged answers counted apart let it pass for all); agreed settings are
    returned, different ones raise ReplicasDiffer naming them, too few answers TimeoutError.
    Replicas of the code before served_settings are asked their serving_user_config once."""
    import itertools
    from types import SimpleNamespace

    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from serve import launch

    readings = []
    status = SimpleNamespace(applications={launch.APP_NAME: _app_status(ApplicationStatus.RUNNING, {"RUNNING": 2})})
    monkeypatch.setattr(serve, "status", lambda: readings.append(1) or status)
    monkeypatch.setattr(launch, "running_replica_ids", lambda app_name=launch.APP_NAME: {"r1", "r2"})
    m0, m1 = {"model_dir": "/m/m0", "model_fingerprint": "m0:aa"}, {"model_dir": "/m/m1", "model_fingerprint": "m1:bb"}

    def replicas_answering(*served_settings) -> None:
        """The app's handle: its replicas answer served_settings in turn (an exception: raised)."""
        turns = itertools.cycle(served_settings)

        def response(answer):
            def result(timeout_s):
                if isinstance(answer, Exception):
                    raise answer
                return answer

            return SimpleNamespace(result=result, cancel=lambda: None)

        handle = SimpleNamespace(
            served_settings=SimpleNamespace(remote=lambda: response(next(turns))),
            serving_user_config=SimpleNamespace(remote=lambda: response(m1)),
        )
        monkeypatch.setattr(serve, "get_deployment_handle", lambda *args: handle)

    replicas_answering({"replica": "r1", "user_config": m0}, {"replica": "r2", "user_config": m0})
    assert launch.serving_user_config() == m0 and len(readings) == 1
    replicas_answering({"replica": "r1", "user_config": m0}, {"replica": "r2", "user_config": m1})
    with pytest.raises(launch.ReplicasDiffer, match="2 replicas serve 2 different settings: ") as differ:
        launch.serving_user_config()
    assert "/m/m0 (m0:aa) on 1" in str(differ.value) and "/m/m1 (m1:bb) on 1" in str(differ.value)
    replicas_answering({"replica": "r1", "user_config": m0})  # only r1 answers, however often
    with pytest.raises(TimeoutError, match="1 of 2 replica"):
        launch.serving_user_config(timeout_s=0.5)
    replicas_answering(RuntimeError("Tried to call a method 'served_settings' that does not exist. Available: []"))
    assert launch.serving_user_config() == m1  # the code before: one bare answer
    replicas_answering(TimeoutError("no answer"))  # any other failure is no sign of older code
    with pytest.raises(TimeoutError, match="no answer"):
        launch.serving_user_config()


@pytest.mark.faults
def test_a_replica_the_autoscaler_stops_during_the_questions_is_not_waited_for(monkeypatch):
    """A deploy just after a busy spell: Serve ran two replicas when the deploy counted them, the
    autoscaler stopped one before it answered, and the rounds waited for it until their timeout:
    a good rollout failed, "only 1 of 2 replica(s) answered" (a review of the deploys,
    2026-12-07). The running replicas are read again, by id, after each round that leaves one
    unheard: a stopped one is not waited for, and its answer no longer speaks for the app (a
    second read: by count, a stopped replica's answer stood for a running one that never
    answered, and a moment's dip in the count ended the wait for a replacement); one still
    running that does not answer fails the check, and one started meanwhile is asked too."""
    import time
    from types import SimpleNamespace

    from ray import serve

    from serve import launch

    running = ["r1", "r2"]
    readings = []

    def running_ids(app_name=launch.APP_NAME):
        readings.append(1)
        return set(running)

    monkeypatch.setattr(launch, "running_replica_ids", running_ids)
    answering = ["r1"]  # the replicas that answer, in turn
    turn = iter(range(10**6))

    def answer(make):
        def remote():
            tag = answering[next(turn) % len(answering)]
            return SimpleNamespace(result=lambda timeout_s: make(tag), cancel=lambda: None)

        return SimpleNamespace(remote=remote)

    handle = SimpleNamespace(
        healthz=answer(lambda tag: {"replica": tag, "model_version": "m1"}),
        served_settings=answer(lambda tag: {"replica": tag, "user_config": {"model_dir": "/m/m1"}}),
    )
    monkeypatch.setattr(serve, "get_deployment_handle", lambda *args: handle)
    started = time.monotonic()
    heard = launch.every_replica_health(2, timeout_s=0.5)  # r2 runs, silent: waited for
    assert list(heard.answers) == ["r1"] and heard.unheard == 1 and time.monotonic() - started >= 0.5
    assert heard.words() == "only 1 of 2 replica(s)"
    with pytest.raises(TimeoutError, match=r"only 1 of 2 replica\(s\) said what they serve"):
        launch.every_replica_served(2, launch.APP_NAME, 0.5)
    running.remove("r2")  # the autoscaler stopped r2
    started = time.monotonic()
    assert launch.every_replica_health(2, timeout_s=30) == launch.Heard({"r1": heard.answers["r1"]}, 0)
    assert list(launch.every_replica_served(2, launch.APP_NAME, 30)) == ["r1"]
    assert time.monotonic() - started < 10  # not the 30 s timeout
    # r1, which answered first, is stopped; r3 runs and answers: r1's answer is dropped.
    running[:] = ["r3"]
    answering[:] = ["r3"]
    first = {"replica": "r1", "model_version": "m1"}
    assert list(launch.every_replica_health(2, timeout_s=30, first=first).answers) == ["r3"]
    # r1 answered, then stopped, while r2 runs and never answers: not vouched for by r1's answer.
    running[:] = ["r2"]
    answering[:] = ["r1"]
    heard = launch.every_replica_health(2, timeout_s=0.5, first=first)
    assert heard == launch.Heard({}, 1) and heard.words() == "only 0 of 1 replica(s)"
    # None running by Serve's reading: a replica answers only once Serve runs it, so r1's answer
    # is a stopped replica's, not the app's (a third read).
    running[:] = []
    assert launch.every_replica_health(2, timeout_s=0.3, first=first) == launch.Heard({}, 1)


@pytest.mark.faults
def test_a_replica_says_what_it_serves_bare_to_any_deploy_and_tagged_to_this_one(monkeypatch):
    """serving_user_config keeps its bare answer, the user_config: a jobs.deploy of older code
    (after a code rollback) reads it as the settings served, and an answer of another shape
    under the same name would be taken for them (a review). served_settings adds the tag."""
    from types import SimpleNamespace

    from serve import app as serve_app

    settings = {"model_dir": "/m/m0", "model_fingerprint": "m0:aa"}
    replica = serve_app.RecommenderDeployment.func_or_class
    serving = SimpleNamespace(
        _serving=serve_app.Serving(SimpleNamespace(settings=SimpleNamespace(user_config=lambda: settings)), None)
    )
    monkeypatch.setattr(serve_app.serve, "get_replica_context", lambda: SimpleNamespace(replica_tag="r1"))
    assert replica.serving_user_config(serving) == settings
    serving.serving_user_config = lambda: replica.serving_user_config(serving)
    assert replica.served_settings(serving) == {"replica": "r1", "user_config": settings}
    assert replica.serving_user_config(SimpleNamespace(_serving=serve_app.Serving(None, None))) is None


@pytest.mark.faults
def test_replicas_serving_different_settings_while_serve_deploys_is_a_retry(monkeypatch):
    """Replicas that differ while the app is DEPLOYING (a rollout Serve still applies) clear once
    Serve settles it, as an unreadable app does: a retry (exit 75), not a refusal for good.
    Differing in a RUNNING app (a restore that left them so) is exit 1, the app to delete."""
    from ray.serve.schema import ApplicationStatus

    from serve import launch, rollout

    def differ():
        raise launch.ReplicasDiffer("2 replicas serve 2 different settings")

    monkeypatch.setattr(rollout, "serving_user_config", differ)
    for status, retry, words in [
        (ApplicationStatus.DEPLOYING, True, "; the app is DEPLOYING: retry once Serve settles it"),
        (ApplicationStatus.RUNNING, False, "; delete the app (serve.delete('ncf')) to deploy afresh"),
        # Serve keeps a failed deploy's status until the next deploy: a retry meets it again (75 forever).
        (ApplicationStatus.DEPLOY_FAILED, False, "; delete the app (serve.delete('ncf')) to deploy afresh"),
    ]:
        _serve_reads(monkeypatch, [_app_status(status, {"RUNNING": 2})])
        with pytest.raises(rollout.ServingUnknown) as unknown:
            rollout.serving_before(("127.0.0.1", 8000))
        assert unknown.value.retry is retry and words in str(unknown.value), unknown.value

    def unanswered():  # a hung replica of a failed rolling update: the app stays DEPLOY_FAILED
        raise TimeoutError("1 of 2 replica(s) said what they serve within 300 s")

    monkeypatch.setattr(rollout, "serving_user_config", unanswered)
    _serve_reads(monkeypatch, [_app_status(ApplicationStatus.DEPLOY_FAILED, {"RUNNING": 2})])
    with pytest.raises(rollout.ServingUnknown) as unknown:
        rollout.serving_before(("127.0.0.1", 8000))
    assert unknown.value.retry is False and str(unknown.value).endswith("serve.delete('ncf')) to deploy afresh")


@pytest.mark.faults
def test_reconfigures_of_one_replica_apply_one_at_a_time_in_the_order_they_came(monkeypatch):
    """Serve can call reconfigure again before the last one ended (a replica whose rank a
    scale-down changed stays RUNNING while it reconfigures; a restarted controller): a slow
    reload of a refused model B that began before a restore's quick one finished after it, and
    its refusal came back on /healthz (a review, session 59). One at a time, the restore's comes
    last and stands; and in the order they came (a threading lock's waiters take it in any
    order: an older model C applied after the restore)."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from serve import app as serve_app
    from serve import service as serve_service

    loading_b, release_b = threading.Event(), threading.Event()
    loaded = []

    def load(user_config, previous=None):
        loaded.append(user_config["model_dir"])
        if user_config["model_dir"] == "/m/b":
            loading_b.set()
            release_b.wait(10)
            raise RuntimeError("model B refused")
        return SimpleNamespace(version=user_config["model_dir"][-1])

    # The classes themselves: the deployment's methods read a copy of serve.app's globals.
    monkeypatch.setattr(serve_service.ModelService, "load", staticmethod(load))
    monkeypatch.setattr(serve_service.ServeSettings, "from_user_config", staticmethod(lambda config: config))
    replica = object.__new__(serve_app.RecommenderDeployment.func_or_class)
    replica._serving = serve_app.Serving(SimpleNamespace(version="a"), "model B refused")
    replica._reconfiguring = asyncio.Lock()  # as __init__ makes them (which also sets torch's threads)
    replica._loader = ThreadPoolExecutor(1)

    async def calls() -> None:
        retry = asyncio.create_task(replica.reconfigure({"model_dir": "/m/b"}))
        assert await asyncio.to_thread(loading_b.wait, 10)
        older = asyncio.create_task(replica.reconfigure({"model_dir": "/m/c"}))
        await asyncio.sleep(0.05)
        restore = asyncio.create_task(replica.reconfigure({"model_dir": "/m/a"}))
        await asyncio.sleep(0.3)  # without the lock, the restore is done by now
        assert loaded == ["/m/b"]
        release_b.set()
        await asyncio.wait_for(asyncio.gather(retry, older, restore), 10)

    asyncio.run(calls())
    assert loaded == ["/m/b", "/m/c", "/m/a"]
    assert replica._serving.rollout_error is None and replica._serving.service.version == "a"


def _target_of(user_config: dict, ray_actor_options: dict):
    """Serve's target for the app's deployment (serve.rollout._target's DeploymentInfo), as far as read."""
    from types import SimpleNamespace

    return SimpleNamespace(
        deployment_config=SimpleNamespace(user_config=user_config),
        replica_config=SimpleNamespace(ray_actor_options=ray_actor_options),
    )


@pytest.mark.faults
def test_a_restore_asks_for_the_resources_of_the_replicas_that_served(monkeypatch):
    """Serve's target after an earlier rollout that stalled, not undone, asks what no node could
    place, and a restore must not ask it again (a review): the target's asks are the serving
    replicas' only where the target is the settings served; None otherwise, and the restore
    asks what the deploy's own options ask."""
    from serve import rollout

    serving, stalled = {"model_dir": "/m/m0"}, {"model_dir": "/m/m1"}
    placed = {"num_cpus": 0.5}
    monkeypatch.setattr(rollout, "_target", lambda app_name=None: _target_of(serving, placed))
    assert rollout.target_asks(serving) == {"num_cpus": 0.5, "memory_gb": None}
    monkeypatch.setattr(
        rollout, "_target", lambda app_name=None: _target_of(stalled, {"num_cpus": 0.5, "memory": 100000 * 2**30})
    )
    assert rollout.target_asks(serving) is None


@pytest.mark.faults
def test_a_first_deploy_that_did_not_run_deletes_only_its_own_app(monkeypatch):
    """A first deploy whose app did not run in time deletes it, but not where Serve's target has
    become another's meanwhile (serve deploy, a script), which would go with it (a review):
    deleted only where the target is still this job's settings."""
    from ray import serve

    from serve import rollout

    deleted = []
    monkeypatch.setattr(serve, "delete", lambda name: deleted.append(name))
    ours, another = {"model_dir": "/m/m0"}, {"model_dir": "/m/m2"}
    monkeypatch.setattr(rollout, "_target", lambda app_name=None: _target_of(another, {}))
    words = rollout.delete_unstarted(ours)
    assert not deleted and words == (
        "the app is not deleted: Serve's target is no longer this rollout's settings but model_dir /m/m2 "
        "(another deploy since)"
    )
    monkeypatch.setattr(rollout, "_target", lambda app_name=None: _target_of(ours, {}))
    assert rollout.delete_unstarted(ours) == "nothing served before: the app is deleted" and deleted == ["ncf"]


@pytest.mark.faults
def test_a_second_ctrl_c_while_serve_shuts_down_is_ignored_not_a_traceback(monkeypatch, capsys):
    """serve.shutdown() waits up to 30 s for the replicas to drain; a second Ctrl-C then ended a
    foreground deploy in a chained KeyboardInterrupt traceback, the shutdown asked already (a
    review of serve/launch, session 67). Ignored while it runs, Python's handler back after."""
    import signal

    from ray import serve

    from serve.launch import shutdown_serve

    during = []
    monkeypatch.setattr(serve, "shutdown", lambda: during.append(signal.getsignal(signal.SIGINT)))
    before = signal.getsignal(signal.SIGINT)
    shutdown_serve()
    assert during == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) is before
    # On stderr: jobs.deploy's stdout is its one JSON object.
    assert capsys.readouterr().err == "[serve] shutting Serve down (its replicas finish their requests)\n"


@pytest.mark.faults
def test_a_deploy_stopped_by_sigterm_or_ctrl_c_ends_in_one_line_with_a_failing_status(monkeypatch, capsys):
    """A deploy stopped during its rollout ends in one line with a failing status: SIGTERM
    (jobs.cli's SystemExit 143) with its code, a SystemExit without one (sys.exit(), which says
    success) with 1, Ctrl-C with 130, while a failed rollout is undone too (a traceback before)."""
    from argparse import Namespace
    from types import SimpleNamespace

    from jobs import deploy
    from serve.rollout import Restored

    serving = {"model_dir": "/m/m0", "data": "/d/d0"}
    stopped = []
    monkeypatch.setattr(deploy, "_stop_owned", lambda owns: stopped.append(owns))
    for stop, status in [(SystemExit(143), 143), (SystemExit(None), 1), (SystemExit(0), 1), (KeyboardInterrupt(), 130)]:
        with pytest.raises(SystemExit) as exited:
            deploy._interrupted(stop, serving, False)
        error = capsys.readouterr().err.strip()
        assert exited.value.code == status, (stop, error)
        assert error.startswith("error: interrupted after the rollout went to Serve: it may be Serve's target"), error
        assert "model /m/m0 with DATA /d/d0 was served before" in error and "\n" not in error, error
    # Nothing served before: a first deploy's own Serve stopped, without a line (SIGTERM's is the shell's).
    for stop, status in [(SystemExit(143), 143), (SystemExit(None), 1)]:
        with pytest.raises(SystemExit) as exited:
            deploy._interrupted(stop, None, True)
        assert exited.value.code == status and not capsys.readouterr().err
    assert stopped == [True, True]
    # Ctrl-C: a first deploy into a Serve the job did not start (--detach) stays Serve's target,
    # which the next deploy waits on while it starts (exit 75); the line says how to remove it.
    for owns_serve, left in [(True, False), (False, True)]:
        with pytest.raises(SystemExit) as exited:
            deploy._interrupted(KeyboardInterrupt(), None, owns_serve)
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 130 and error.startswith("error: interrupted before the app answered"), error
        assert ("serve.delete('ncf') removes it" in error) == left, error
    assert stopped == [True, True, True, False]
    # Stopped once every replica answered, while asked what they serve: the app runs.
    with pytest.raises(SystemExit) as exited:
        deploy._interrupted(KeyboardInterrupt(), None, False, answered=True)
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: interrupted while the replicas were asked what they serve; the app runs"), error
    assert exited.value.code == 130 and error.endswith("serve.delete('ncf') removes it"), error

    # Ctrl-C while the settings served before are deployed again, after the new replicas failed.
    def failed(app, args, handed_off):
        raise RuntimeError("Deploying application ncf failed")

    def interrupted(*args, **kwargs) -> Restored:
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy, "_started", failed)
    monkeypatch.setattr(deploy, "app_of", lambda app_args, settings, runtime_env=None: None)
    monkeypatch.setattr(deploy, "start_failure_reason", str)
    monkeypatch.setattr(deploy, "restore_previous", interrupted)
    settings = SimpleNamespace(user_config=lambda: {"model_dir": "/m/m1"})
    args = Namespace(detach=True, host="127.0.0.1", port=8000, request_timeout_s=30, start_timeout_s=60)
    with pytest.raises(SystemExit) as exited:
        deploy._rolled_out(args, {}, settings, deploy._Before(("127.0.0.1", 8000), serving, None))
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 130 and error.startswith("error: interrupted after the rollout went to Serve"), error
    assert "\n" not in error

    # Ctrl-C before anything is deployed (the slot's actor starting, a replica woken to say what
    # it serves: minutes): one line, 130, where it was a traceback.
    from contextlib import nullcontext

    def waking(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy, "_checked", lambda args, app_args: settings)
    monkeypatch.setattr(deploy, "init_ray", lambda: None)
    monkeypatch.setattr(deploy, "deploy_slot", lambda holder: nullcontext())
    monkeypatch.setattr(deploy, "_before_rollout", waking)
    with pytest.raises(SystemExit) as exited:
        deploy.main(["--model", "/m/m1", "--detach"])
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 130 and error == "error: interrupted before anything was deployed", error
