"""Load on the Serve endpoint beside a Serve no-op, in the same run: requests/s, p50, p99 and
replica counts over time (serve.status()), as JSON on stdout.

python -m bench.serve_load [--model artifacts/demo/model] [--clients 8] [--seconds 30] [--rounds 3]

The no-op is the same FastAPI ingress (same request and response models, body limit and error
handlers, same autoscaling) answering every request with a fixed ranking of the same size and
no model, so the difference between the two is what the model costs. First both endpoints
take load at once for ``--warmup`` seconds, so that both deployments scale up to it, and the
run waits until no replica is starting; then load alternates between the two in ``--rounds``
rounds (so that whatever else runs on the machine weighs on both alike), ``--seconds`` per
endpoint in all; then the load stops and the run waits (bounded) for the recommender's
replicas to fall back. Clients are threads with keep-alive sessions on this machine, so on a
2-core box they compete with the server for the same cores (as in DESIGN.md's floor).
Requests, requests/s, latencies and CPU per request count the 200 answers only: a refusal or a
timeout costs the server something else than an answer. The others are ``errors``, counted by
status code (or exception) in ``errors_by_status``.
"""

# No `from __future__ import annotations`: Serve must resolve the no-op route's request model.

import argparse
import json
import os
import threading
import time
from collections import Counter
from typing import Callable, Dict, List

import numpy as np
import requests

# The replicas scale on short delays here so that a ~3 minute run shows the rise and the fall.
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,  # on 2 cores a third replica adds a process to share them, not capacity
    "target_ongoing_requests": 2,
    "upscale_delay_s": 2,
    "downscale_delay_s": 30,  # longer than a round of the other endpoint plus the settling: no churn
    "look_back_period_s": 12,  # must exceed the replicas' 10 s metrics interval
}
NUM_CPUS = 0.25  # per replica: both deployments at max replicas fit in 2 CPUs
K = 10  # items per answer, from both deployments


def noop_app(autoscaling: Dict, num_cpus: float, k: int):
    """A FastAPI ingress with the same contract plumbing as the recommender and no model: it
    answers every request with a fixed ranking of ``k`` items, so that the response (its
    validation, serialisation and transfer through the proxy) weighs the same as a real one."""
    from datetime import datetime, timezone

    from ray import serve

    from serve.api import RecommendRequest, RecommendResponse, create_app

    api = create_app()
    items = [{"product_id": 1_000_000 + i, "score": 1.0 / (i + 1)} for i in range(k)]
    at = datetime.now(timezone.utc)

    @serve.deployment(
        name="NoOp", max_ongoing_requests=32, autoscaling_config=autoscaling, ray_actor_options={"num_cpus": num_cpus}
    )
    @serve.ingress(api)
    class NoOp:
        @api.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
        async def recommend(self, request: RecommendRequest) -> Dict:
            return {"user_id": request.user_id, "cold_start": False, "items": items, "at": at, "model_version": "noop"}

    return NoOp.bind()


def running_replicas(app_name: str) -> int:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


class ReplicaLog(threading.Thread):
    """Samples each application's RUNNING replicas every ``period_s`` until stopped."""

    def __init__(self, apps: List[str], started: float, period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.apps, self.started, self.period_s = apps, started, period_s
        self.samples: Dict[str, List] = {a: [] for a in apps}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            t = round(time.monotonic() - self.started, 1)
            for a in self.apps:
                self.samples[a].append([t, running_replicas(a)])


# Which Serve process a /proc cmdline belongs to (Ray sets it to the actor's name; a replica
# still starting is named SERVE_REPLICA::app#deployment#id).
ROLES = {
    b"ProxyActor": "proxy",
    b"ServeReplica:ncf:": "recommend_replicas",
    b"SERVE_REPLICA::ncf#": "recommend_replicas",
    b"ServeReplica:noop:": "noop_replicas",
    b"SERVE_REPLICA::noop#": "noop_replicas",
}


def cluster_actor_pids() -> set:
    """The pids of the live actors of the Ray cluster this process is connected to: another
    session's Serve on the machine (a test suite's, a demo's) is not this benchmark's."""
    import ray
    from ray.util.state import list_actors

    # Its own address: without one, list_actors refuses to guess when the machine runs two clusters.
    address = ray.get_runtime_context().gcs_address
    actors = list_actors(address=address, limit=10_000, raise_on_missing_output=False)
    return {str(a.pid) for a in actors if a.pid and a.state != "DEAD"}


def serve_cpu_seconds() -> Dict[int, tuple]:
    """pid -> (role, CPU seconds so far) of this cluster's Serve proxy and replicas, read from
    /proc: the CPU a request costs, whatever else the machine is busy with."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in cluster_actor_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        role = next((r for key, r in ROLES.items() if key in cmdline), None)
        if role:
            found[int(pid)] = (role, (int(fields[11]) + int(fields[12])) / tick)  # utime + stime
    return found


def cpu_used(before: Dict[int, tuple], after: Dict[int, tuple]) -> Dict[str, float]:
    """CPU seconds by role between two snapshots. Processes started in between count apart
    (``<role>_started``): their start-up, model loading included, is the cost of scaling up,
    not of answering."""
    used: Dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        key = role if pid in before else f"{role}_started"
        used[key] = used.get(key, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return used


class Load:
    """Latencies of the 200 answers, the other answers by status, and CPU of one endpoint,
    gathered over several rounds."""

    def __init__(self) -> None:
        self.latencies: List[float] = []
        self.errors_by_status: Counter = Counter()
        self.seconds = 0.0
        self.cpu: Dict[str, float] = {}

    def summary(self) -> Dict:
        if not self.latencies:  # no rate, latency or cost to report: say why rather than print zeros
            raise RuntimeError(f"no request answered 200; the others: {dict(self.errors_by_status)}")
        ms = np.asarray(self.latencies) * 1000
        per_request = {
            f"{role}_cpu_ms_per_request": round(1000 * s / ms.size, 2) for role, s in sorted(self.cpu.items())
        }
        return {
            "requests": int(ms.size),
            "errors": sum(self.errors_by_status.values()),
            "errors_by_status": dict(sorted(self.errors_by_status.items())),
            "requests_per_s": round(ms.size / self.seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            **per_request,
        }


def local_session() -> requests.Session:
    """A session for the bench's own server on 127.0.0.1: an HTTP(S)_PROXY set for the outside
    must not relay it."""
    session = requests.Session()
    session.trust_env = False
    return session


def drive(url: str, payloads: Callable[[int], Dict], clients: int, seconds: float, load: Load) -> None:
    """``clients`` threads send requests back to back for ``seconds``, adding to ``load``."""
    latencies: List[List[float]] = [[] for _ in range(clients)]
    errors_by_status = [Counter() for _ in range(clients)]
    deadline = 0.0  # set once the opening snapshot is taken, just before the clients start

    def client(i: int) -> None:
        with local_session() as s:
            n = 0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    status = str(s.post(url, json=payloads(i * 1_000_003 + n), timeout=30).status_code)
                except requests.RequestException as failed:
                    status = type(failed).__name__
                if status == "200":
                    latencies[i].append(time.perf_counter() - started)
                else:
                    errors_by_status[i][status] += 1
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    # The snapshots (each a State API call, list_actors, from this process) stay outside the load
    # window and the client's CPU: the window starts after the opening one, and the client's CPU
    # is read before the closing one.
    cpu_before = serve_cpu_seconds()
    client_before = time.process_time()
    started = time.monotonic()
    deadline = started + seconds
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load.seconds += time.monotonic() - started
    client_cpu = time.process_time() - client_before
    used = cpu_used(cpu_before, serve_cpu_seconds())
    used["client"] = client_cpu
    for role, seconds in used.items():
        load.cpu[role] = load.cpu.get(role, 0.0) + seconds
    load.latencies += [x for per_client in latencies for x in per_client]
    for counts in errors_by_status:
        load.errors_by_status.update(counts)


def wait_until_settled(apps: List[str], timeout_s: float) -> float:
    """Seconds until no replica of ``apps`` is starting or stopping (or ``timeout_s``)."""
    from ray import serve

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        states = serve.status().applications
        moving = [
            n
            for a in apps
            if a in states
            for d in states[a].deployments.values()
            for state, n in d.replica_states.items()
            if state != "RUNNING" and n
        ]
        if not moving:
            break
        time.sleep(1)
    return round(time.monotonic() - started, 1)


def wait_for_scale_down(app_name: str, floor: int, timeout_s: float) -> float:
    """Seconds until the app is back to ``floor`` replicas (or ``timeout_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if running_replicas(app_name) <= floor:
            break
        time.sleep(1)
    return round(time.monotonic() - started, 1)


def _total_cpu_ms(summary: Dict) -> float:
    """Steady-state CPU per request: every role but the start-up of new replicas."""
    return sum(v for k, v in summary.items() if k.endswith("_cpu_ms_per_request") and "_started" not in k)


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="artifacts/demo/model", help="model directory to serve")
    p.add_argument("--data", default=None, help="DATA whose histories it ranks from (default: the model's state)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30, help="load per endpoint, over all rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--candidates", type=int, default=None)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--idle-timeout", type=float, default=90)
    p.add_argument(
        "--warmup", type=float, default=20, help="load per endpoint before measuring, so that both have scaled"
    )
    p.add_argument(
        "--target-ongoing",
        type=float,
        default=AUTOSCALING["target_ongoing_requests"],
        help="autoscaling target of both deployments (a batching replica wants about its batch)",
    )
    args = p.parse_args(argv)
    if args.rounds < 1 or args.clients < 1 or args.seconds <= 0:
        p.error("--rounds and --clients: at least 1; --seconds: above 0")
    autoscaling = {**AUTOSCALING, "target_ongoing_requests": args.target_ongoing}

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts its workers (proxy, replicas) at nice 15 below the driver; on a shared machine
    # that measures everyone else's load more than Serve's. A serving box runs them at 0.
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray
    from ray import serve

    from ncf.data.vocab import Vocabulary
    from ncf.evaluate.protocol import sample_users
    from ncf.model.directory import read_config
    from ncf.rank.candidates import RankingSettings
    from serve.app import build_app
    from serve.launch import check_port_free, start, wait_until_healthy

    # Another Serve on the port would answer the health check and the load meant for this one.
    check_port_free("127.0.0.1", args.port, "stop it or give the bench another --port")
    # The dashboard serves the State API that cluster_actor_pids reads; on 127.0.0.1 only, as
    # jobs.cli.init_ray starts it.
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    started = time.monotonic()
    app_args = {
        "model": args.model,
        "data": args.data,
        "candidates": args.candidates,
        "default_at": "data-end",
        "num_cpus": NUM_CPUS,
        **autoscaling,
    }
    url = start(build_app(app_args), port=args.port, app_name="ncf")
    serve.run(noop_app(autoscaling, NUM_CPUS, K), name="noop", route_prefix="/noop")
    wait_until_healthy(url, timeout_s=120)

    vocab = os.path.join(args.data or os.path.join(args.model, "state"), "vocab", "users.parquet")
    households = Vocabulary.load(vocab)
    # 2,000 (a small log's all) in a seeded sample: households are indexed by their purchases, most first.
    users = households.raw_of(sample_users(np.arange(1, len(households)), 2000))
    request = lambda n: {"user_id": users[n % len(users)], "k": K}  # noqa: E731
    log = ReplicaLog(["ncf", "noop"], started)
    log.start()
    noop, recommend, recommend_windows = Load(), Load(), []
    try:
        # Warm-up: both endpoints under load at once, so that both deployments scale to it
        # (the rise is in replicas_over_time) and their new replicas finish starting before
        # the rounds below; those then measure answering requests, while a replica's start-up
        # (imports, model load: seconds of CPU) is the one-off cost of scaling.
        window_start = time.monotonic() - started
        warmups = [
            threading.Thread(target=drive, args=(f"{url}{path}", request, args.clients, args.warmup, Load()))
            for path in ("/noop/recommend", "/recommend")
        ]
        for t in warmups:
            t.start()
        for t in warmups:
            t.join()
        recommend_windows.append((window_start, time.monotonic() - started))
        settle_s = wait_until_settled(["ncf", "noop"], timeout_s=120)
        for _ in range(args.rounds):
            drive(f"{url}/noop/recommend", request, args.clients, args.seconds / args.rounds, noop)
            window_start = time.monotonic() - started
            drive(f"{url}/recommend", request, args.clients, args.seconds / args.rounds, recommend)
            recommend_windows.append((window_start, time.monotonic() - started))
        scale_down_s = wait_for_scale_down("ncf", autoscaling["min_replicas"], args.idle_timeout)
        replicas_after_idle = running_replicas("ncf")
    finally:
        log.stop.set()
        log.join()
        serve.shutdown()
        ray.shutdown()

    ncf_samples = log.samples["ncf"]
    under_load = [n for t, n in ncf_samples if any(a <= t <= b for a, b in recommend_windows)]
    noop, recommend = noop.summary(), recommend.summary()
    result = {
        "benchmark": "serve_load",
        "model_version": read_config(args.model)["version"],
        "candidates": args.candidates
        or RankingSettings.of_model(read_config(args.model)["ranking"], args.model).candidates,
        "clients": args.clients,
        "seconds_per_endpoint": args.seconds,
        "rounds": args.rounds,
        "autoscaling": autoscaling,
        "replica_num_cpus": NUM_CPUS,
        "ray_worker_niceness": int(os.environ["RAY_worker_niceness"]),
        "noop": noop,
        "recommend": recommend,
        "rps_ratio": round(recommend["requests_per_s"] / max(noop["requests_per_s"], 1e-9), 3),
        # Steady-state CPU per request (proxy, replicas, idle ones included, and client threads):
        # what bounds requests/s on a machine with nothing else to do; the ratio is the
        # rps_ratio such a machine would see.
        "cpu_cost_ratio": round(_total_cpu_ms(noop) / max(_total_cpu_ms(recommend), 1e-9), 3),
        "p99_ratio": round(recommend["p99_ms"] / max(noop["p99_ms"], 1e-9), 3),
        "recommend_replicas_max_under_load": max(under_load, default=0),
        "warmup_s_per_endpoint": args.warmup,
        "settle_s": settle_s,
        "recommend_replicas_after_idle": replicas_after_idle,
        "scale_down_s": scale_down_s,
        "replicas_over_time": log.samples,
    }
    result["targets"] = {
        "rps_at_least_80pct_of_noop": result["rps_ratio"] >= 0.8,
        "p99_within_1.5x_of_noop": result["p99_ratio"] <= 1.5,
        "replicas_rise_under_load": result["recommend_replicas_max_under_load"] > autoscaling["min_replicas"],
        "replicas_fall_when_idle": result["recommend_replicas_after_idle"] == autoscaling["min_replicas"],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
