"""Fault drills (issue 10): a Serve replica killed under load, a sweep interrupted and resumed.

The other drills live beside the code they exercise: a training worker killed mid-epoch
(test_training.py) and a batch-scoring run killed then rerun (test_batch_score.py).
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pandas as pd
import pytest
from helpers import REPO, free_port

pytestmark = pytest.mark.faults

RETRIES = 3  # the client's retry window: 3 tries, 0.5 s apart


def post(url: str, payload: dict, timeout: float = 10.0) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def replica_names(app: str, deployment: str) -> set:
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def test_a_killed_serve_replica_loses_no_request_after_retries(ray_session, small_model_dir, capsys):
    from ray import serve

    from serve.app import DEPLOYMENT_NAME, build_app
    from serve.launch import start, wait_until_healthy

    ray = ray_session
    url = start(
        build_app({"model": small_model_dir, "default_at": "data-end", "min_replicas": 2, "max_replicas": 2}),
        host="127.0.0.1",
        port=free_port(),
        app_name="faults",
    )
    try:
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
                    except (urllib.error.URLError, ConnectionError, TimeoutError):
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


def _sweep(data: str, output: str, resume: bool) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "jobs.tune_sweep",
        "--data",
        data,
        "--output",
        output,
        "--trials",
        "2",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "3",
        "--val-users",
        "20",
        "--batch-size",
        "256",
    ] + (["--resume"] if resume else [])
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}  # the log is read as it grows
    env.pop("RAY_ADDRESS", None)  # its own local cluster, as a user's laptop run
    log = open(os.path.join(output + (".resume" if resume else "") + ".log"), "w")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _started_trials(output: str) -> int:
    """Trials Tune has started, from the sweep's console log. Not the trial directories: those
    appear in the storage path only when a trial's first result is synced, which for a
    one-epoch trial is moments before it ends."""
    with open(output + ".log") as log:
        return len(re.findall(r"^Trial train_trial_\w+ started with configuration", log.read(), flags=re.M))


def _reported_trials(output: str) -> set:
    experiment = os.path.join(output, "tune", "sweep")
    dirs = [d for d in os.listdir(experiment) if d.startswith("train_trial_")] if os.path.isdir(experiment) else []
    results = {d.split("_")[2]: os.path.join(experiment, d, "result.json") for d in dirs}
    return {trial for trial, path in results.items() if os.path.exists(path) and os.path.getsize(path) > 0}


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_losing_or_repeating_trials(small_data, tmp_path):
    data, _ = small_data
    output = str(tmp_path / "sweep")
    first = _sweep(data, output, resume=False)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and first.poll() is None and _started_trials(output) < 2:
            time.sleep(1)
        # Trials run one at a time here: the second has started, so the first has finished.
        assert first.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(2)  # into the second trial, which trains for tens of seconds
        first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its experiment state and exits
        assert first.wait(timeout=120) == 130, open(output + ".log").read()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert not os.path.exists(os.path.join(output, "results.parquet"))
    assert "sweep interrupted with 1 of 2 trials finished" in open(output + ".log").read()
    finished_before = _reported_trials(output)
    assert len(finished_before) == 1

    second = _sweep(data, output, resume=True)
    assert second.wait(timeout=400) == 0, open(output + ".resume.log").read()[-3000:]
    table = pd.read_parquet(os.path.join(output, "results.parquet"))
    assert len(table) == 2 and table["trial_id"].is_unique  # none lost, none repeated
    assert finished_before <= set(table["trial_id"])
    assert table["best_val_ndcg@10"].notna().all()
    assert os.path.exists(os.path.join(output, "best", "config.json"))
