"""What a /recommend for a past day costs the other requests of a Serve replica, as JSON on stdout.

python -m bench.serve_past_days [--model artifacts/demo/model] [--rounds 6]

A past ``at`` ranks from the products' stats of its day's start: the first request for a day
that is not kept computes them (a pass over every purchase: about 3 s on Complete Journey here,
minutes at a billion purchases). Each round sends a /recommend for a new past day and, 0.2 s
later, one for the present, and times both; then two requests for two other new days at once,
whose second is refused (503 with Retry-After) while the first's pass runs. One replica, on a
local cluster of 2 CPUs, on 127.0.0.1.
"""

import argparse
import calendar
import json
import statistics
import threading
import time
from typing import Dict, List

from bench.multinode_sweep import free_port
from bench.serve_load import local_session

DELAY_S = 0.2  # between the past day's request and the present's: the pass is running by then


def post(url: str, body: Dict) -> Dict:
    started = time.time()
    with local_session() as session:
        response = session.post(url, json=body, timeout=300)
    return {
        "s": round(time.time() - started, 3),
        "status": response.status_code,
        "retry_after": response.headers.get("Retry-After"),
    }


def at_once(url: str, bodies: List[Dict], delay_s: float) -> List[Dict]:
    """Each body posted from its own thread, ``delay_s`` after the one before; the answers in order."""
    answers: List[Dict] = [{} for _ in bodies]

    def send(i: int) -> None:
        answers[i] = post(url, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
        time.sleep(delay_s)
    for thread in threads:
        thread.join()
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="artifacts/demo/model")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    import ray
    from ray import serve

    from serve import launch
    from serve.app import build_app
    from serve.service import PASS_SHARE

    # address="local": a cluster of its own, not one a `ray start` left running on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        base = launch.start(build_app({"model": args.model}), port=free_port())
        with local_session() as session:
            data_end = session.get(f"{base}/healthz", timeout=60).json()["data_end"]
            user = session.post(f"{base}/households", json={"prefix": ""}, timeout=60).json()["user_ids"][0]
        end = calendar.timegm(time.strptime(data_end[:19], "%Y-%m-%dT%H:%M:%S"))
        url = f"{base}/recommend"
        for _ in range(5):  # warm: the first requests load what the replica loads lazily
            post(url, {"user_id": user})
        rounds = []
        for i in range(args.rounds):
            past, present = at_once(url, [{"user_id": user, "at": end - (10 + i) * 86400}, {"user_id": user}], DELAY_S)
            rounds.append({"past_day": past, "present": present})
            print(json.dumps({"round": i, **rounds[-1]}), flush=True)
            # The replica spends at most PASS_SHARE of its time on passes (since 2026-12-04): the
            # next round's new day waits that out, or it would measure the 503 that refuses it.
            time.sleep(past["s"] * (1 / PASS_SHARE - 1) + 0.5)
        first, second = at_once(
            url, [{"user_id": user, "at": end - (10 + args.rounds + d) * 86400} for d in range(2)], DELAY_S
        )
        summary = {
            "model": args.model,
            "rounds": args.rounds,
            # The mean of the two middle values of an even count (the upper one was reported before).
            "present_median_s": round(statistics.median(r["present"]["s"] for r in rounds), 4),
            "present_max_s": max(r["present"]["s"] for r in rounds),
            "past_day_median_s": round(statistics.median(r["past_day"]["s"] for r in rounds), 4),
            "statuses": sorted({r["present"]["status"] for r in rounds} | {r["past_day"]["status"] for r in rounds}),
            "two_new_days_at_once": [first, second],
        }
        print(json.dumps(summary), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
