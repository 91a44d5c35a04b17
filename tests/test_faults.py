"""Fault drills (issues 10, 19): a Serve replica killed under load, corrupt model rollouts under
load.

The other drills live beside the code they exercise: a training worker killed mid-epoch
(test_training.py), a batch-scoring run killed then rerun (test_batch_score.py), a sweep
interrupted and resumed (test_tune_sweep.py).
"""

import json
import os
import threading
import time
import urllib.error
import urllib.request

import pytest
from helpers import free_port, model_health, replica_names, sealed_copy

pytestmark = pytest.mark.faults

RETRIES = 3  # the client's retry window: 3 tries, 0.5 s apart


def post(url: str, payload: dict, timeout: float = 10.0) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def test_a_killed_serve_replica_loses_no_request_after_retries(ray_session, small_model_dir, capsys):
    from ray import serve

    from serve.app import DEPLOYMENT_NAME, build_app
    from serve.launch import start, wait_until_healthy

    ray = ray_session
    try:
        url = start(
            build_app({"model": small_model_dir, "default_at": "data-end", "min_replicas": 2, "max_replicas": 2}),
            host="127.0.0.1",
            port=free_port(),
            app_name="faults",
        )
        wait_until_healthy(url, timeout_s=120)
        deadline = time.time() + 60
        while len(replica_names("faults", DEPLOYMENT_NAME)) < 2 and time.time() < deadline:
            time.sleep(0.5)
        before = replica_names("faults", DEPLOYMENT_NAME)
        assert len(before) == 2

        counts = {"sent": 0, "first_try_failures": 0, "lost": 0}
        stop = threading.Event()

        def steady_load():
            while not stop.is_set():
                counts["sent"] += 1
                for attempt in range(RETRIES):
                    try:
                        post(f"{url}/recommend", {"user_id": 1, "k": 5})
                        break
                    except Exception:  # a cut-off answer too (IncompleteRead, a partial JSON body)
                        counts["first_try_failures"] += attempt == 0
                        time.sleep(0.5)
                else:
                    counts["lost"] += 1

        clients = [threading.Thread(target=steady_load) for _ in range(2)]
        for client in clients:
            client.start()
        time.sleep(3)
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        deadline = time.time() + 90  # Serve's controller replaces the dead replica
        while time.time() < deadline:
            now = replica_names("faults", DEPLOYMENT_NAME)
            if victim not in now and len(now) == 2:
                break
            time.sleep(0.5)
        time.sleep(3)  # steady load on the recovered pair
        stop.set()
        for client in clients:
            client.join(timeout=30)

        after = replica_names("faults", DEPLOYMENT_NAME)
        assert victim not in after and len(after) == 2, "the killed replica was replaced"
        with capsys.disabled():
            print(f"\n[faults] replica killed under load: {json.dumps(counts)}")
        assert counts["sent"] > 20
        assert counts["lost"] == 0  # every request answered within the retry window
    finally:
        serve.shutdown()  # the HTTP proxy too: the next test's app may listen on another port


def _truncate_weights(model_dir: str) -> None:
    """model.pt cut in half after saving (a copy that died midway): the manifest disagrees."""
    path = os.path.join(model_dir, "model.pt")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _vocabulary_of_another_size(model_dir: str) -> None:
    """The product vocabulary of another run (10 products fewer), sealed again: consistent with
    its manifest, wrong for the model's tables."""
    from ncf.data.vocab import Vocabulary
    from ncf.model.directory import METRICS
    from ncf.model.integrity import write_manifest

    path = os.path.join(model_dir, "state", "vocab", "products.parquet")
    products = Vocabulary.load(path)
    keep = len(products.ids) - 10
    Vocabulary(products.ids[:keep], products.kind, {k: v[:keep] for k, v in products.extra.items()}).save(path)
    write_manifest(model_dir, unsealed=[METRICS])


def _bad_config(model_dir: str) -> None:
    """config.json cut short and sealed again (what a crashed writer without atomic renames leaves)."""
    from ncf.model.directory import METRICS
    from ncf.model.integrity import write_manifest

    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    write_manifest(model_dir, unsealed=[METRICS])


CORRUPT_ROLLOUTS = {
    "truncated model.pt": (_truncate_weights, "model.pt has"),
    "vocabulary of another size": (_vocabulary_of_another_size, "vocabularies do not fit the embedding tables"),
    "bad config.json": (_bad_config, "unreadable config.json"),
}


def _health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
        return json.load(response)


def recommend_until(stop: threading.Event, url: str, answers: list, failures: list) -> None:
    """A client asking for household 1's recommendations until ``stop``: each answer's model
    version into ``answers``, each failure into ``failures``."""
    while not stop.is_set():
        try:
            answers.append(post(f"{url}/recommend", {"user_id": 1, "k": 5})["model_version"])
        except Exception as e:  # every failure counts: HTTP errors, resets, timeouts
            failures.append(repr(e)[:300])


def test_new_code_rolls_out_with_a_replica_serving_throughout(ray_session, small_model_dir, monkeypatch, capsys):
    """New code restarts the replicas. Serve 2.60 stopped the one replica before its replacement
    was up, so the app had none running for a model's load (a review, 2026-12-05): now one surge
    replica, so that a replica runs at every moment of the rollout and no request fails."""
    from ray import serve

    from serve import app as serve_app
    from serve.launch import base_url, start, wait_until_healthy

    def app():
        return serve_app.build_app(
            {"model": small_model_dir, "default_at": "data-end", "min_replicas": 1, "max_replicas": 1}
        )

    port = free_port()
    url = base_url("127.0.0.1", port)
    answers, failures, running, stop = [], [], [], threading.Event()
    watch_errors, rolled_out_at, last_look = [], [], []

    def client():
        recommend_until(stop, url, answers, failures)

    def watcher():  # the replicas' states through the rollout, every 50 ms
        try:
            while not stop.is_set():
                states = serve.status().applications["code"].deployments[serve_app.DEPLOYMENT_NAME].replica_states
                running.append(states.get("RUNNING", 0))
                last_look[:] = [time.time()]
                time.sleep(0.05)
        except BaseException as e:  # a thread's exception never reaches the test: it looked no further
            watch_errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(2)] + [threading.Thread(target=watcher)]
    try:
        assert start(app(), port=port, app_name="code") == url
        wait_until_healthy(url, timeout_s=120)
        before = replica_names("code", serve_app.DEPLOYMENT_NAME)
        for t in threads:
            t.start()
        time.sleep(1)
        monkeypatch.setattr(serve_app, "code_version", lambda: "new-code")  # as any .py change under ncf/
        start(app(), port=port, app_name="code")
        deadline = time.time() + 120
        while time.time() < deadline:
            states = serve.status().applications["code"].deployments[serve_app.DEPLOYMENT_NAME].replica_states
            now = replica_names("code", serve_app.DEPLOYMENT_NAME)
            if now and not now & before and states == {"RUNNING": 1}:
                rolled_out_at.append(time.time())
                break
            time.sleep(0.1)
        time.sleep(1)  # traffic on the new replica
        after = replica_names("code", serve_app.DEPLOYMENT_NAME)
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:
                t.join(timeout=30)
        serve.shutdown()
    with capsys.disabled():
        print(f"\n[faults] code rollout: {len(answers)} answers, {len(failures)} failed, {len(running)} looks")
    assert after and not after & before, (before, after)  # replaced, not reconfigured
    # The watcher looked through the whole rollout, not only before it.
    assert watch_errors == [] and rolled_out_at and last_look[0] >= rolled_out_at[0], (watch_errors, running)
    assert failures == [] and min(running) >= 1, (failures[:3], running)
    assert len(answers) > 0


def test_corrupt_model_rollouts_under_load_fail_no_request(ray_session, small_model_dir, tmp_path, capsys):
    """Three corrupt model directories are rolled out while two clients send requests, each
    damaged after build_app verified it (the race a check in the deploy command cannot close),
    then a good one. The replica keeps serving v1 through the bad ones, reports each on
    /healthz, is never restarted, and serves v2 after the good one: no request fails."""
    from ray import serve

    from serve.app import DEPLOYMENT_NAME, build_app
    from serve.launch import base_url, start, wait_until_healthy

    def app(model_dir: str):
        return build_app({"model": model_dir, "default_at": "data-end", "min_replicas": 1, "max_replicas": 1})

    port = free_port()
    url = base_url("127.0.0.1", port)
    answers, failures, stop = [], [], threading.Event()

    def client():
        recommend_until(stop, url, answers, failures)

    clients = [threading.Thread(target=client) for _ in range(2)]
    reported, deploy_errors = {}, []
    try:  # Serve shut down after it even when the first deploy fails (it would keep this port)
        assert start(app(small_model_dir), port=port, app_name="rollouts") == url
        wait_until_healthy(url, timeout_s=120)
        replicas = replica_names("rollouts", DEPLOYMENT_NAME)
        for c in clients:
            c.start()
        time.sleep(1)
        for i, (name, (corrupt, expected)) in enumerate(CORRUPT_ROLLOUTS.items()):
            bad = sealed_copy(small_model_dir, str(tmp_path / f"bad{i}"), f"bad-{i}")
            verified = app(bad)
            corrupt(bad)
            try:
                start(verified, port=port, app_name="rollouts")
            except Exception as e:  # Serve gave up on the deployment
                deploy_errors.append(f"{name}: {e!r}"[:300])
            deadline = time.time() + 60
            while time.time() < deadline and expected not in (reported.get(name) or ""):
                try:
                    reported[name] = _health(url).get("rollout_error")
                except Exception as e:
                    reported[name] = f"healthz failed: {e!r}"
                time.sleep(0.25)
            time.sleep(1)  # traffic on the old model after the failed rollout
        served_before_good = len(answers)
        start(app(sealed_copy(small_model_dir, str(tmp_path / "v2"), "v2")), port=port, app_name="rollouts")
        deadline = time.time() + 60
        while time.time() < deadline and _health(url)["model_version"] != "v2":
            time.sleep(0.25)
        time.sleep(1)
        health = _health(url)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=30)
        try:
            after = replica_names("rollouts", DEPLOYMENT_NAME)
        finally:
            serve.shutdown()
    with capsys.disabled():
        print(f"\n[faults] corrupt rollouts: {len(answers)} answers, {len(failures)} failed; /healthz said {reported}")
    assert failures == [] and deploy_errors == []
    for name, (_, expected) in CORRUPT_ROLLOUTS.items():
        assert expected in (reported.get(name) or ""), (name, reported)
        assert str(tmp_path) not in reported[name]  # no server path on /healthz
    assert set(answers[:served_before_good]) == {"v1"}, "a corrupt model never answered"
    assert answers[-1] == "v2" and model_health(health) == {
        "status": "ok",
        "model_version": "v2",
        "rollout_error": None,
    }
    assert after == replicas, "the replica serving v1 was never stopped"
