"""Hostile HTTP requests against the Serve app (property-based, hypothesis): every answer is a
4xx with a message or a 200, never a 500; the replica survives with bounded memory."""

import json
import os
import time
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
import requests
from helpers import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncf.rank.recommender import AS_OF_DAYS

pytestmark = pytest.mark.faults

ROUTES = ["/recommend", "/recommend/batch", "/score"]
FIELDS = ["user_id", "user_ids", "product_ids", "k", "at", "explain", "exclude_purchased"]

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=8), st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=30,
)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(json.dumps),  # right names, wrong values
    json_values.map(json.dumps),  # any JSON at all
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),  # not JSON
    st.sampled_from(
        [
            "[" * 5000 + "]" * 5000,  # deep nesting
            json.dumps({"user_id": "x" * 200_000}),  # over the body limit
            json.dumps({"user_ids": list(range(10_000)), "k": 10}),  # too many ids
            json.dumps({"user_id": 1, "k": 10**9}),
            json.dumps({"user_id": 1, "at": "99999-01-01"}),
            json.dumps({"user_id": 1, "product_ids": ["nope"] * 3}),
        ]
    ),
)


@pytest.fixture(scope="module")
def app(ray_session, small_model_dir):
    from ray import serve

    from serve.app import DEPLOYMENT_NAME, build_app
    from serve.launch import start, wait_until_healthy

    try:
        url = start(
            build_app({"model": small_model_dir, "default_at": "data-end", "min_replicas": 1, "max_replicas": 1}),
            host="127.0.0.1",
            port=free_port(),
            app_name="fuzz",
        )
        wait_until_healthy(url, timeout_s=120)
        (name,) = [
            a["name"]
            for a in ray_session.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::fuzz#{DEPLOYMENT_NAME}#")
        ]
        pid = ray_session.get(
            ray_session.get_actor(name, namespace="serve").__ray_call__.remote(lambda self: os.getpid())
        )
        # Before any test's requests: the memory test bounds what all of them leave behind.
        yield SimpleNamespace(url=url, pid=pid, start_rss=rss_bytes(pid))
    finally:
        serve.shutdown()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    route=st.sampled_from(ROUTES),
    body=bodies,
    content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
)
def test_hostile_requests_never_get_a_500(app, route, body, content_type):
    response = requests.post(
        app.url + route, data=body.encode("utf-8", "surrogatepass"), headers={"Content-Type": content_type}, timeout=30
    )
    assert response.status_code < 500 or pass_busy(response), (
        route,
        body[:200],
        response.status_code,
        response.text[:300],
    )
    if response.status_code >= 400:
        assert response.json(), "errors carry a message"


def pass_busy(response: requests.Response) -> bool:
    """PassBusy's 503: a new past day while another's pass runs or the replica's passes' share of
    its time is spent (PASS_SHARE), the replica saying when to come back. Any other 503 (NotReady:
    the replica lost its model) is a failure, Retry-After or not."""
    text = response.text
    return (
        response.status_code == 503
        and "retry-after" in response.headers
        and ("of its time" in text or "being computed" in text)
    )


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def post(url: str, payload) -> requests.Response:
    """POST as a client should: PassBusy's 503 is asked again after its Retry-After."""
    for _ in range(10):
        response = requests.post(url, json=payload, timeout=30)
        if not pass_busy(response):
            return response
        time.sleep(float(response.headers["Retry-After"]))
    return response


def test_the_replica_survives_the_fuzzing_with_bounded_memory(app):
    url = app.url
    data_end = datetime.fromisoformat(requests.get(url + "/healthz", timeout=30).json()["data_end"])
    households = requests.post(url + "/households", json={"prefix": "", "limit": 3}, timeout=30).json()["user_ids"]
    assert len(households) == 3
    # More past days than the replica keeps (AS_OF_DAYS): each new one is a pass over every
    # purchase, and the kept days' stats must be let go as new ones come.
    past = [(data_end - timedelta(days=d)).isoformat() for d in range(1, AS_OF_DAYS + 3)]
    for i in range(30):
        long_id = requests.post(
            url + "/recommend",
            data=json.dumps({"user_id": "x" * 60_000}),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        many_ids = requests.post(
            url + "/recommend/batch",
            data=json.dumps({"user_ids": list(range(5000))}),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        # Refused by the schema, under the body limit (413 would not reach the replica at all).
        assert (long_id.status_code, many_ids.status_code) == (422, 422), (long_id.text[:200], many_ids.text[:200])
        # Accepted ones, which rank: a known household (explained every other time), an unknown
        # one, a batch of both, and its scores.
        ranked = post(url + "/recommend", {"user_id": households[i % 3], "k": 20, "explain": i % 2 == 0})
        unknown = post(url + "/recommend", {"user_id": f"no-such-household-{i}", "k": 20})
        batch = post(url + "/recommend/batch", {"user_ids": [households[i % 3], f"nobody-{i}"], "k": 10})
        assert (ranked.status_code, unknown.status_code, batch.status_code) == (200, 200, 200), (
            ranked.text[:200],
            unknown.text[:200],
            batch.text[:200],
        )
        products = [item["product_id"] for item in ranked.json()["items"]]
        scored = post(url + "/score", {"user_id": households[(i + 1) % 3], "product_ids": products})
        assert scored.status_code == 200 and len(scored.json()["scores"]) == len(products), scored.text[:200]
        if i < 2 * len(past):  # twice round the days: every one of them computed again
            at = past[i % len(past)]
            then = post(url + "/recommend", {"user_id": households[i % 3], "k": 10, "at": at, "explain": True})
            assert then.status_code == 200 and then.json()["items"], then.text[:200]
    assert os.path.exists(f"/proc/{app.pid}")  # the same replica process, still alive
    assert requests.get(url + "/healthz", timeout=30).status_code == 200
    grown = rss_bytes(app.pid) - app.start_rss
    # Since before the fuzzing: what every test of the module left behind, past days included.
    assert grown < 100 * 2**20, f"the replica grew {grown / 2**20:.0f} MiB"
