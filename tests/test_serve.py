"""The Serve application over HTTP on 127.0.0.1: every route, every class of bad input, cold
start, batch/single agreement, and a rollout of a second model version under traffic."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import requests
from helpers import free_port, model_health, replica_names, sealed_copy

from ncf.errors import InputError
from ncf.moments import first_rankable, run_date_of
from ncf.rank.recommender import BeforeTheData, PassBusy, PassNeeded
from serve.api import MAX_BATCH_USERS, MAX_BODY_BYTES, MAX_EXPLAINED_ITEMS, MAX_K, MAX_PRODUCT_IDS
from serve.app import DEPLOYMENT_NAME, build_app
from serve.launch import start, wait_until_healthy
from serve.service import PASS_SHARE, PASS_WAIT_S, ModelService, ServeSettings

TIMEOUT = 30  # seconds per HTTP call
UNKNOWN_USER = "no-such-user"


def _app_args(model_dir: str) -> dict:
    # One small replica: fits beside the rest of the session's work, keeps the rollout ordered.
    return {
        "model": model_dir,
        "default_at": "data-end",
        "min_replicas": 1,
        "max_replicas": 1,
        "num_cpus": 0.25,
        "memory_gb": 0.5,  # placed by memory too, as --replica-memory-gb asks
    }


@pytest.fixture(scope="module")
def server(ray_session, small_model_dir):
    """The app on a free 127.0.0.1 port, shut down (CPUs freed) when the module ends."""
    from ray import serve

    try:
        url = start(build_app(_app_args(small_model_dir)), port=free_port(), app_name="ncf_test")
        wait_until_healthy(url, timeout_s=90)
        yield url
    finally:
        serve.shutdown()


@pytest.fixture
def rollout_port(server, small_model_dir):
    """The server's port, for a test that rolls other models out: v1 serves again after it (ui
    off), so that the module's tests pass in any order and any ``-k`` selection."""
    port = int(server.rsplit(":", 1)[1])
    try:
        yield port
    finally:
        start(build_app(_app_args(small_model_dir)), port=port, app_name="ncf_test")


@pytest.fixture(scope="module")
def recommender(small_model_dir):
    from ncf.rank.recommender import Recommender

    return Recommender.load(small_model_dir)


@pytest.fixture(scope="module")
def users(recommender):
    """Two raw user ids with purchase histories."""
    return recommender.vocabs.users.raw_of(recommender.state.states.users()[:2])


def expected_items(recommender, user, k, at) -> dict:
    """What the scoring core answers, in the HTTP contract's shape."""
    from serve.service import recommendation

    return recommendation(recommender.rank([user], k, at)[0])


def post(url: str, payload, busy_tries: int = 10) -> requests.Response:
    """POST as a client should: a 503 for a new past day while the replica's passes' share of its
    time is spent (PASS_SHARE) is asked again after its Retry-After, as the explorer does."""
    for _ in range(busy_tries):
        response = requests.post(url, json=payload, timeout=TIMEOUT)
        if response.status_code != 503 or "of its time" not in response.text:
            return response
        time.sleep(float(response.headers["Retry-After"]))
    return response


def ids(items) -> list:
    return [item["product_id"] for item in items]


# -- routes ------------------------------------------------------------------------------------


@pytest.mark.faults
def test_healthz_reports_the_loaded_version_and_no_path(server, small_model_dir, recommender):
    r = requests.get(f"{server}/healthz", timeout=TIMEOUT)
    assert r.status_code == 200
    body = r.json()
    # How fresh the histories are: the last purchase of the state the replica ranks from.
    data_end = datetime.fromisoformat(body.pop("data_end").replace("Z", "+00:00"))
    assert data_end.timestamp() == recommender.state.end
    assert body.pop("replica")  # Serve's tag of the replica that answered: a rollout is checked on each
    assert body == {"status": "ok", "model_version": "v1", "rollout_error": None}
    assert os.path.dirname(os.path.abspath(small_model_dir)) not in r.text  # where files live is not told


@pytest.mark.faults
def test_healthz_reads_the_model_and_its_rollout_error_as_one_pair(monkeypatch):
    """Old code read the model serving, then the last rollout's error, from two attributes that
    reconfigure assigns one after the other: a health check between them
    paired a model with another rollout's error, or the kept model with no error. Here a
    reconfigure that succeeds right after /healthz's first read: the answer is the pair as read."""
    import asyncio
    from types import SimpleNamespace

    from ray import serve

    from serve.app import RecommenderDeployment, Serving

    class Model:  # what /healthz asks of a ModelService
        def __init__(self, version: str) -> None:
            self.version = version

        def health(self, rollout_error=None) -> dict:
            return {"status": "ok", "model_version": self.version, "rollout_error": rollout_error}

    reconfigured = []

    class Replica(RecommenderDeployment.func_or_class):
        def __getattribute__(self, name):
            value = super().__getattribute__(name)
            if name == "_serving" and not reconfigured:  # the rollout of m1 ends just after this read
                reconfigured.append(name)
                object.__setattr__(self, "_serving", Serving(Model("m1"), None))
            return value

    replica = object.__new__(Replica)
    object.__setattr__(replica, "_serving", Serving(Model("m0"), "InputError: refused"))
    # Outside a replica Serve has no replica context: the tag is all /healthz takes from it.
    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(replica_tag="r1"))
    assert asyncio.run(replica.healthz()) == {  # async since session 68: on the event loop
        "status": "ok",
        "model_version": "m0",
        "rollout_error": "InputError: refused",
        "replica": "r1",
    }
    assert reconfigured and asyncio.run(replica.healthz())["model_version"] == "m1"  # the next check sees the rollout


@pytest.mark.faults
def test_a_rollout_of_a_user_config_that_is_no_dict_keeps_the_model_serving(caplog):
    """The failed rollout's log line read ``user_config.get(...)``: a user_config that is no dict
    (a list in a config file) raised AttributeError from reconfigure, and Serve stops a replica
    whose reconfigure raises, the model it kept serving with it."""
    import asyncio
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from serve.app import RecommenderDeployment, Serving

    class Model:
        version = "m0"

    serving = Model()
    replica = object.__new__(RecommenderDeployment.func_or_class)
    replica._serving = Serving(serving, None)
    replica._reconfiguring = asyncio.Lock()  # as __init__ makes them (which also sets torch's threads)
    replica._loader = ThreadPoolExecutor(1)
    serve_logger = logging.getLogger("ray.serve")  # Ray's loggers do not propagate to pytest's root handler
    serve_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.ERROR, logger="ray.serve"):
            asyncio.run(replica.reconfigure(["model_dir"]))
    finally:
        serve_logger.removeHandler(caplog.handler)
    assert replica._serving.service is serving
    assert replica._serving.rollout_error == "ValueError: user_config must be a mapping of settings, not list"
    assert "rollout of None failed, still serving m0" in caplog.text


@pytest.mark.faults
def test_the_demo_refuses_a_cluster_whose_serve_runs_before_any_work(server, tmp_path, monkeypatch, capsys):
    """Submitted to a cluster that serves a deployed app, the demo rolled its own model into an
    app of the same name (on Serve's address, whatever its --port) and at its end shut Serve
    down, every app of it (a review, 2026-12-05)."""
    import ray

    from jobs import demo

    for name in ("RAY_SERVE_LOG_TO_STDERR", "MLFLOW_TRACKING_URI"):  # the demo sets defaults: undone after
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a submitted job; init_ray: already connected
    monkeypatch.setattr(ray, "shutdown", lambda: None)  # the session's cluster stays up
    workdir = tmp_path / "demo"
    with pytest.raises(SystemExit) as exited:
        demo.main(["--workdir", str(workdir), "--port", str(free_port())])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(
        f"Serve already runs on this cluster ({server}): the demo deploys an app of its own "
        "and shuts Serve down at its end; run the demo on another cluster, or locally "
        "(without RAY_ADDRESS)"
    ), error
    assert not workdir.exists()
    assert requests.get(f"{server}/healthz", timeout=10).status_code == 200  # still serving


def test_serve_runs_one_proxy_on_the_head_as_its_config_file_says(server):
    """jobs.deploy and serve/config.yaml start the same Serve: its only HTTP ingress on the head
    (Ray's default would open the port on every worker with a replica)."""
    import ray
    import yaml
    from ray.serve.config import ProxyLocation
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    with open(os.path.join(os.path.dirname(__file__), "..", "serve", "config.yaml")) as f:
        configured = yaml.safe_load(f)["proxy_location"]
    assert ray.get(controller.get_proxy_location.remote()) == ProxyLocation(configured) == ProxyLocation.HeadOnly


def test_the_config_file_starts_serve_as_jobs_deploy_does(monkeypatch):
    """serve/config.yaml says it sets the same limits as ``python -m jobs.deploy``: each value they
    share, read from the file and from the job's defaults (no Serve started)."""
    import yaml

    from jobs.deploy import parse_args
    from serve.launch import APP_NAME
    from serve.limits import EXTRA_HOSTS_ENV, REQUEST_TIMEOUT_S, proxy_env

    monkeypatch.delenv(EXTRA_HOSTS_ENV, raising=False)
    with open(os.path.join(os.path.dirname(__file__), "..", "serve", "config.yaml")) as f:
        config = yaml.safe_load(f)
    deploy = parse_args(["--model", "m"])
    assert config["http_options"] == {"host": deploy.host, "port": deploy.port, "request_timeout_s": REQUEST_TIMEOUT_S}
    assert deploy.request_timeout_s == REQUEST_TIMEOUT_S
    assert config["controller_options"]["runtime_env"]["env_vars"] == proxy_env(deploy.host)
    (app,) = config["applications"]
    assert (app["name"], app["route_prefix"]) == (APP_NAME, "/")
    shared = ("min_replicas", "max_replicas", "default_at")
    assert {key: app["args"][key] for key in shared} == {key: getattr(deploy, key) for key in shared}


def test_openapi_docs_list_every_route_and_the_error_bodies_sent(server, users):
    """Old docs: each route's 422 was FastAPI's {"detail": [...]} schema (the service sends
    {"error": ..., "detail" | "unknown_product_ids": ...}), and 413, 503 and 504 were missing; then
    400 (a body FastAPI cannot decode) and 421 (a rebound Host on a loopback address) were."""
    from serve.api import ErrorBody

    # Swagger UI's page (FastAPI's /docs, /redoc) loads its scripts from a CDN: not served.
    assert [requests.get(f"{server}{page}", timeout=TIMEOUT).status_code for page in ("/docs", "/redoc")] == [404, 404]
    paths = requests.get(f"{server}/openapi.json", timeout=TIMEOUT).json()["paths"]
    assert {"/recommend", "/recommend/batch", "/score", "/healthz"} <= set(paths)
    for path in ("/recommend", "/recommend/batch", "/score"):
        responses = paths[path]["post"]["responses"]
        assert {"400", "413", "421", "422", "503", "504"} <= set(responses), path
        for status in ("400", "421", "422"):
            assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
        assert "not UTF-8" in responses["400"]["description"] and "Content-Length" in responses["400"]["description"]
        assert "loopback" in responses["421"]["description"]
    assert {"400", "421"} <= set(paths["/healthz"]["get"]["responses"])
    # What is sent fits what is documented.
    as_json = {"content-type": "application/json"}
    not_utf8 = requests.post(f"{server}/recommend", data=b'{"user_id": "\xff"}', headers=as_json, timeout=TIMEOUT)
    too_deep = requests.post(f"{server}/recommend", data=b"[" * 5000 + b"]" * 5000, headers=as_json, timeout=TIMEOUT)
    rebound = requests.get(f"{server}/healthz", headers={"Host": "rebound.example"}, timeout=TIMEOUT)
    assert (not_utf8.status_code, too_deep.status_code, rebound.status_code) == (400, 400, 421)
    assert not_utf8.json() == too_deep.json() == {"error": "There was an error parsing the body"}
    for body in (
        post(f"{server}/recommend", {"user_id": users[0], "k": 0}).json(),
        post(f"{server}/score", {"user_id": users[0], "product_ids": ["no-such-product"]}).json(),
        not_utf8.json(),
        rebound.json(),
    ):
        assert ErrorBody.model_validate(body).error and set(body) <= set(ErrorBody.model_fields)


def test_recommend_matches_the_scoring_core(server, recommender, users):
    r = post(f"{server}/recommend", {"user_id": users[0], "k": 7})
    assert r.status_code == 200
    body = r.json()
    expected = expected_items(recommender, users[0], 7, recommender.default_at)
    assert body["model_version"] == "v1" and body["cold_start"] is False and body["user_id"] == users[0]
    assert ids(body["items"]) == ids(expected["items"])
    assert [i["score"] for i in body["items"]] == pytest.approx([i["score"] for i in expected["items"]], abs=1e-5)
    # default_at=data-end in this deployment: the answer says which moment it ranked for
    assert body["at"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(recommender.default_at)))
    assert "because" not in body["items"][0] and "reason" not in body["items"][0]


@pytest.mark.faults
def test_answers_type_a_known_households_id_as_its_vocabulary_does(server, recommender, users):
    """The small data's ids are integers: asked for as text ("1364", as the explorer asks), the
    answers carry the integer, as the nightly partitions and /households do, so that they join
    on user_id; an unknown household's id comes back as it was asked. Old code echoed the
    request's JSON type, so one household answered as 1364 and as "1364"."""
    assert recommender.vocabs.users.kind == "int" and isinstance(users[0], int)
    asked = str(users[0])
    single = post(f"{server}/recommend", {"user_id": asked, "k": 3}).json()
    batch = post(f"{server}/recommend/batch", {"user_ids": [asked, users[0], "no-such-household"], "k": 3}).json()
    scored = post(f"{server}/score", {"user_id": asked, "product_ids": [single["items"][0]["product_id"]]}).json()
    history = post(f"{server}/history", {"user_id": asked}).json()
    assert [r["user_id"] for r in batch["results"]] == [users[0], users[0], "no-such-household"]
    assert single["user_id"] == scored["user_id"] == history["user_id"] == users[0]
    assert ids(single["items"]) == ids(batch["results"][0]["items"]) == ids(batch["results"][1]["items"])
    # Ids as ingest keys them (trimmed; 1364.0, a float column's, is 1364): asked with a space or
    # as a float's text, the household was unknown and got the popular products (a review, 2026-12-07).
    padded = post(f"{server}/recommend/batch", {"user_ids": [f" {asked} ", f"{asked}.0"], "k": 3}).json()
    assert [r["user_id"] for r in padded["results"]] == [users[0], users[0]]
    assert [ids(r["items"]) for r in padded["results"]] == [ids(single["items"])] * 2
    product = single["items"][0]["product_id"]
    scored_padded = post(f"{server}/score", {"user_id": f"{asked} ", "product_ids": [f" {product}"]})
    assert scored_padded.status_code == 200 and scored_padded.json()["scores"] == pytest.approx(scored["scores"])


def test_at_changes_the_temporal_features(server, recommender, users):
    early = post(
        f"{server}/recommend", {"user_id": users[0], "at": recommender.default_at - 40 * 86400 + 3 * 3600}
    ).json()
    late = post(f"{server}/recommend", {"user_id": users[0], "at": "2030-06-01T15:00:00Z"}).json()
    assert early["at"] != late["at"] and late["at"].startswith("2030-06-01T15:00:00")
    assert [i["score"] for i in early["items"]] != [i["score"] for i in late["items"]]


@pytest.mark.faults
def test_an_at_before_the_first_day_ended_is_a_422_naming_the_first_moment(server, recommender, users):
    """Old code answered 200 with an empty list (no product was known yet), where the nightly job
    refuses the same --at; the household's history there is still answered."""
    first = recommender.state.first_purchase
    at = first_rankable(first) - 1
    expected_product_ids = recommender.recommend([users[0]], k=2)[0]
    for route, body in (
        ("/recommend", {"user_id": users[0], "at": at}),
        ("/recommend/batch", {"user_ids": users[:2], "at": at}),
        ("/score", {"user_id": users[0], "product_ids": expected_product_ids, "at": at}),
    ):
        r = post(f"{server}{route}", body)
        assert r.status_code == 422, (route, r.text)
        assert f"first purchase is on {run_date_of(first)}" in r.json()["error"]
    assert post(f"{server}/history", {"user_id": users[0], "at": at}).status_code == 200
    assert post(f"{server}/recommend", {"user_id": users[0], "at": first_rankable(first)}).json()["items"]


def test_exclude_purchased_drops_past_purchases(server, recommender, users):
    user = users[0]
    bought = set(
        recommender.vocabs.products.raw_of(
            recommender.state.states.timeline(int(recommender.vocabs.users.index_of([user])[0])).products_before(
                recommender.default_at
            )
        )
    )
    body = post(f"{server}/recommend", {"user_id": user, "k": 20, "exclude_purchased": True}).json()
    assert len(body["items"]) == 20 and not bought & set(ids(body["items"]))


def test_explain_names_weighted_past_purchases(server, recommender, users):
    body = post(f"{server}/recommend", {"user_id": users[0], "k": 3, "explain": True}).json()
    history = set(
        recommender.vocabs.products.raw_of(
            recommender.state.states.timeline(int(recommender.vocabs.users.index_of([users[0]])[0])).products
        )
    )
    ranked = recommender.rank([users[0]], 3, explain=True)[0]
    assert len(body["items"]) == 3 == len(ranked.reasons)  # else the checks below check nothing
    for item, reason in zip(body["items"], ranked.reasons):
        assert item["because"], item
        assert {b["product_id"] for b in item["because"]} <= history
        assert all(0.0 <= b["weight"] <= 1.0 for b in item["because"])
        # The reason as the recommender gives it; what is unknown (never bought) is left out.
        assert item["reason"] == pytest.approx({k: v for k, v in reason.as_dict().items() if v is not None})


def test_an_explained_never_bought_product_leaves_its_timing_out(server, users):
    from serve.api import RecommendResponse

    body = post(f"{server}/recommend", {"user_id": users[0], "k": 3, "exclude_purchased": True, "explain": True}).json()
    RecommendResponse.model_validate(body)  # the answer is what the OpenAPI schema says
    assert len(body["items"]) == 3
    for item in body["items"]:
        assert item["reason"]["days_bought"] == 0
        assert set(item["reason"]) == {"days_bought", "score_if_never_bought", "score_if_category_never_bought"}
        assert item["reason"]["score_if_never_bought"] == pytest.approx(item["score"], abs=1e-6)


def test_an_explained_batch_is_bounded_by_its_items(server, users):
    per_user = MAX_EXPLAINED_ITEMS // 50
    at_limit = post(f"{server}/recommend/batch", {"user_ids": [users[0]] * per_user, "k": 50, "explain": True})
    assert at_limit.status_code == 200 and len(at_limit.json()["results"]) == per_user
    over = post(f"{server}/recommend/batch", {"user_ids": [users[0]] * (per_user + 1), "k": 50, "explain": True})
    assert over.status_code == 422 and str(MAX_EXPLAINED_ITEMS) in over.json()["error"]


def test_unknown_user_gets_the_cold_start_ranking(server, recommender):
    # 18:00 three weeks before the data's end: the products bought most at that hour until that day.
    day = (recommender.default_at - 21 * 86_400) // 86_400 * 86_400
    at = datetime.fromtimestamp(day + 18 * 3600, timezone.utc).isoformat()
    body = post(f"{server}/recommend", {"user_id": UNKNOWN_USER, "k": 5, "at": at}).json()
    expected = expected_items(recommender, UNKNOWN_USER, 5, at)
    assert body["cold_start"] is True and expected["cold_start"] is True
    assert ids(body["items"]) == ids(expected["items"]) and len(body["items"]) == 5
    # Before the first purchase nothing was known: refused, rather than later bestsellers.
    early = post(f"{server}/recommend", {"user_id": UNKNOWN_USER, "k": 5, "at": "2017-11-20T18:00:00Z"})
    assert early.status_code == 422 and "first purchase is on" in early.json()["error"]


def test_batch_agrees_with_single_calls(server, users):
    batch_users = [users[0], UNKNOWN_USER, users[1]]
    r = post(f"{server}/recommend/batch", {"user_ids": batch_users, "k": 5})
    assert r.status_code == 200
    batch = r.json()
    assert batch["model_version"] == "v1" and [res["user_id"] for res in batch["results"]] == batch_users
    for result in batch["results"]:
        single = post(f"{server}/recommend", {"user_id": result["user_id"], "k": 5}).json()
        assert result["cold_start"] == single["cold_start"]
        assert ids(result["items"]) == ids(single["items"])
        assert [i["score"] for i in result["items"]] == pytest.approx([i["score"] for i in single["items"]], abs=1e-6)


def test_score_agrees_with_the_ranking(server, users):
    ranked = post(f"{server}/recommend", {"user_id": users[1], "k": 4}).json()["items"]
    r = post(f"{server}/score", {"user_id": users[1], "product_ids": ids(ranked)})
    assert r.status_code == 200 and r.json()["model_version"] == "v1"
    assert r.json()["cold_start"] is False
    assert r.json()["scores"] == pytest.approx([i["score"] for i in ranked], abs=1e-5)
    # README: a product asked for twice is scored twice, in request order.
    twice = post(f"{server}/score", {"user_id": users[1], "product_ids": ids(ranked)[1::-1] * 2}).json()["scores"]
    expected = [ranked[1]["score"], ranked[0]["score"]] * 2
    assert twice == pytest.approx(expected, abs=1e-5)


@pytest.mark.faults
def test_score_flags_an_unknown_household_as_a_cold_start(server, recommender, users):
    """The unknown household row scores it (never a silent untrained embedding): flagged."""
    products = recommender.vocabs.products.raw_of([1, 2, 3])
    r = post(f"{server}/score", {"user_id": UNKNOWN_USER, "product_ids": products})
    assert r.status_code == 200 and r.json()["cold_start"] is True
    assert len(r.json()["scores"]) == 3 and all(0.0 <= p <= 1.0 for p in r.json()["scores"])
    assert r.json()["scores"] == pytest.approx(recommender.score(UNKNOWN_USER, products), abs=1e-5)


# -- at: ISO-8601 with a time zone, a date (midnight UTC) or epoch seconds as a number ------------

# After the test data (which starts in 2024): before its first day ended, `at` is a 422.
AT_ACCEPTED = {
    "2027-11-27T04:01:21Z": "2027-11-27T04:01:21",
    "2027-11-27T05:01:21+01:00": "2027-11-27T04:01:21",
    "2027-11-27": "2027-11-27T00:00:00",
    1827288081: "2027-11-27T04:01:21",
    1827288081.5: "2027-11-27T04:01:21",
    # One range, parse_at's (to 2242): old code refused 2200-2242 with a second range's words.
    "2230-01-01T00:00:00Z": "2230-01-01T00:00:00",
}


@pytest.mark.parametrize("at", list(AT_ACCEPTED), ids=[str(a) for a in AT_ACCEPTED])
@pytest.mark.faults
def test_at_forms_that_are_accepted(server, users, at):
    r = post(f"{server}/recommend", {"user_id": users[0], "k": 3, "at": at})
    assert r.status_code == 200, r.text
    assert r.json()["at"].startswith(AT_ACCEPTED[at])


@pytest.mark.parametrize(
    "at, why",
    [
        ("20200101", "digits in a string"),  # was read as epoch seconds: 1970-08-22
        ("1511755281", "digits in a string"),
        ("2017-11-27T04:01:21", "no time zone"),  # was silently UTC
        ("2017-11-27 04:01", "no time zone"),
        ("27/11/2017", ""),
        (True, "boolean"),
    ],
)
@pytest.mark.faults
def test_ambiguous_at_forms_are_refused_with_what_is_accepted(server, users, at, why):
    r = post(f"{server}/recommend", {"user_id": users[0], "k": 3, "at": at})
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    assert "ISO-8601 time with a time zone" in message and "YYYY-MM-DD" in message and "JSON number" in message
    assert why in message


# -- bad input: always 4xx with a message, never a 500 -------------------------------------------

BAD_REQUESTS = {
    "malformed json": ("/recommend", b'{"user_id": 1,', 422),
    "not an object": ("/recommend", [1, 2], 422),
    "missing user_id": ("/recommend", {"k": 3}, 422),
    "user_id wrong type": ("/recommend", {"user_id": [1]}, 422),
    "user_id bool": ("/recommend", {"user_id": True}, 422),
    "k zero": ("/recommend", {"user_id": 1, "k": 0}, 422),
    "k too large": ("/recommend", {"user_id": 1, "k": MAX_K + 1}, 422),
    "k a string": ("/recommend", {"user_id": 1, "k": "10"}, 422),
    "unknown field": ("/recommend", {"user_id": 1, "kk": 3}, 422),
    "at not a date": ("/recommend", {"user_id": 1, "at": "yesterday-ish"}, 422),
    "at out of range": ("/recommend", {"user_id": 1, "at": "2999-01-01T00:00:00Z"}, 422),
    "at epoch out of range": ("/recommend", {"user_id": 1, "at": 10**30}, 422),
    "batch empty": ("/recommend/batch", {"user_ids": []}, 422),
    "batch too large": ("/recommend/batch", {"user_ids": list(range(MAX_BATCH_USERS + 1))}, 422),
    "batch explaining too many items": (
        "/recommend/batch",
        {"user_ids": list(range(MAX_EXPLAINED_ITEMS // 50 + 1)), "k": 50, "explain": True},
        422,
    ),
    "score no products": ("/score", {"user_id": 1, "product_ids": []}, 422),
    "score too many products": ("/score", {"user_id": 1, "product_ids": list(range(MAX_PRODUCT_IDS + 1))}, 422),
    # Ids are int64 at most: past it, one was echoed back until one of 4,301 digits was a 400.
    "user_id past int64": ("/recommend", {"user_id": 2**63}, 422),
    "product_id below int64": ("/score", {"user_id": 1, "product_ids": [-(2**63) - 1]}, 422),
    # A number Python will not read (its 4,300-digit limit) fails the JSON decoding itself.
    "id of 4,301 digits": ("/recommend", b'{"user_id": 1' + b"0" * 4300 + b"}", 400),
    "body too large": ("/recommend/batch", {"user_ids": ["x" * 100] * 1000}, 413),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
@pytest.mark.faults
def test_bad_input_gets_a_4xx_with_a_message(server, case):
    path, payload, status = BAD_REQUESTS[case]
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    r = requests.post(f"{server}{path}", data=data, headers={"content-type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_validation_message_names_the_field_and_limit(server):
    r = post(f"{server}/recommend", {"user_id": 1, "k": MAX_K + 1})
    assert "k" in r.json()["error"] and str(MAX_K) in r.json()["error"]


@pytest.mark.faults
def test_a_small_body_of_many_bad_ids_gets_a_small_answer(server):
    """Every problem was listed, twice per id (int or string): this 4 KB body's answer was 2,000
    problems, 332 KB, and 10-15 ms of the replica's event loop."""
    from serve.api import MAX_ERRORS_LISTED

    body = json.dumps({"user_id": 1, "product_ids": [[]] * MAX_PRODUCT_IDS})
    r = requests.post(f"{server}/score", data=body, headers={"content-type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 422 and len(r.content) < 8192, (r.status_code, len(r.content))
    more = f"... and {MAX_PRODUCT_IDS - MAX_ERRORS_LISTED} more"
    assert r.json()["error"].endswith(more) and r.json()["error"].startswith("body.product_ids.0: ")
    assert r.json()["detail"][-1] == {"loc": [], "msg": more, "type": "more_errors"}
    assert len(r.json()["detail"]) == MAX_ERRORS_LISTED + 1
    # One problem per bad id, at the field's own location: the union of int and str said each twice,
    # at locations named after pydantic's labels (body.user_id.constrained-int; a review, 2026-12-07).
    from serve.api import ID_FORMS

    r = post(f"{server}/recommend/batch", {"user_ids": [1, True, "x" * 129, "ok"]})
    assert r.status_code == 422
    assert [(d["loc"], d["msg"]) for d in r.json()["detail"]] == [(["body", "user_ids", i], ID_FORMS) for i in (1, 2)]


def test_chunked_body_over_the_limit_is_refused(server):
    chunks = (b" " * 8192 for _ in range(MAX_BODY_BYTES // 8192 + 2))  # no Content-Length
    r = requests.post(f"{server}/recommend", data=chunks, headers={"content-type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 413 and r.json()["error"]


def test_unknown_products_are_named(server, recommender, users):
    known = recommender.vocabs.products.raw_of([1])[0]
    r = post(f"{server}/score", {"user_id": users[0], "product_ids": [known, "nope-1", 987654321, 2**63 - 1]})
    assert r.status_code == 422
    assert r.json()["unknown_product_ids"] == ["nope-1", 987654321, 2**63 - 1]  # int64's largest: an id
    assert r.json()["error"] == f"3 unknown product ids: ['nope-1', 987654321, {2**63 - 1}]"


@pytest.mark.faults
def test_many_unknown_products_are_counted_in_the_message_and_listed_once(server, users):
    """The whole list was in the message and again in unknown_product_ids (1,000 ids twice)."""
    unknown = [f"nope-{i}" for i in range(MAX_PRODUCT_IDS)]
    r = post(f"{server}/score", {"user_id": users[0], "product_ids": unknown})
    assert r.status_code == 422 and r.json()["unknown_product_ids"] == unknown
    assert r.json()["error"] == f"{MAX_PRODUCT_IDS} unknown product ids, the first 10: {unknown[:10]}"
    # Each unknown id once: one id asked 1,000 times was "1000 unknown product ids" listed 1,000 times.
    r = post(f"{server}/score", {"user_id": users[0], "product_ids": ["nope"] * (MAX_PRODUCT_IDS - 1) + ["nope-2"]})
    assert r.status_code == 422 and r.json()["unknown_product_ids"] == ["nope", "nope-2"]
    assert r.json()["error"] == "2 unknown product ids: ['nope', 'nope-2']"


@pytest.mark.faults
def test_score_names_unknown_products_from_the_ranking_cores_own_check(
    small_model_dir, recommender, users, monkeypatch
):
    """Old code looked the products up, then Recommender.score_items looked them up again and
    refused unknown ones with a KeyError Serve never reached. /score now leaves the check to the
    ranking core and names the unknown ids from its refusal (UnknownProductIds: not looked up a
    third time); a KeyError of anything else is the fault it is (a 500), not a 422 naming no
    product."""
    from serve.api import ScoreRequest, UnknownProducts

    service = ModelService.load(ServeSettings.from_user_config({"model_dir": small_model_dir}))
    known = recommender.vocabs.products.raw_of([1])[0]
    with pytest.raises(UnknownProducts) as unknown:
        service.score(ScoreRequest(user_id=users[0], product_ids=[known, "nope-1", 987654321]))
    assert unknown.value.product_ids == ["nope-1", 987654321]
    assert service.score(ScoreRequest(user_id=users[0], product_ids=[known]))["scores"]

    def broken(*args, **kwargs):
        raise KeyError("a fault inside the ranking core")

    monkeypatch.setattr(service.recommender, "score_items", broken)
    with pytest.raises(KeyError, match="a fault inside"):
        service.score(ScoreRequest(user_id=users[0], product_ids=[known]))


def test_unknown_routes_and_methods_are_4xx_json(server):
    assert requests.get(f"{server}/nope", timeout=TIMEOUT).status_code == 404
    r = requests.get(f"{server}/recommend", timeout=TIMEOUT)
    assert r.status_code == 405 and r.json()["error"] and r.headers["allow"] == "POST"


# -- settings (no HTTP) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, message",
    [
        ({}, "model_dir"),
        ({"model_dir": "m", "candidates": 0}, "candidates"),
        ({"model_dir": "m", "candidates": True}, "candidates"),
        # Old code: accepted, and a request for k=MAX_K got MAX_K - 1 products and no error.
        ({"model_dir": "m", "candidates": MAX_K - 1}, f"candidates must be an integer of at least {MAX_K}"),
        ({"model_dir": "m", "default_at": "yesterday"}, "default_at"),
        ({"model_dir": "m", "modeldir": "m"}, "modeldir"),
        ({"model_dir": "m", "ui": "yes"}, "ui"),
        (["model_dir"], "user_config must be a mapping"),  # was AttributeError: 'list' object has no 'get'
    ],
)
def test_bad_user_config_is_refused_with_its_key(config, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings.from_user_config(config)


def test_build_app_refuses_a_missing_model_dir(tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        build_app({"model": str(tmp_path)})


@pytest.mark.faults
def test_build_app_refuses_data_whose_state_does_not_load(small_model_dir, small_data, tmp_path):
    """A DATA directory has no manifest: its state is loaded and checked against itself."""
    from ncf.data import layout
    from ncf.model.integrity import DataIntegrityError

    broken = str(tmp_path / "broken")
    os.makedirs(broken)
    shutil.copy(layout.stats_path(small_data[0]), layout.stats_path(broken))  # what check_data looks at
    with pytest.raises(DataIntegrityError, match="the DATA's state does not load"):
        build_app({"model": small_model_dir, "data": broken})


@pytest.mark.faults
def test_build_app_and_deploy_refuse_a_damaged_model_dir(small_model_dir, tmp_path):
    """The whole directory is verified before anything is deployed: one line, exit code 2."""
    import subprocess
    import sys

    from helpers import REPO

    from ncf.model.integrity import ModelIntegrityError

    damaged = str(tmp_path / "damaged")
    shutil.copytree(small_model_dir, damaged)
    with open(os.path.join(damaged, "model.pt"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ModelIntegrityError, match="model.pt has 100 bytes"):
        build_app({"model": damaged})
    job = subprocess.run(
        [sys.executable, "-m", "jobs.deploy", "--model", damaged, "--port", str(free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert job.returncode == 2, job.stderr[-2000:]
    assert job.stderr.strip().count("\n") == 0 and job.stderr.startswith("error: ") and "model.pt" in job.stderr


def test_a_model_rollout_keeps_the_deployment_version(small_model_dir, tmp_path):
    """Serve reconfigures running replicas only when the version is unchanged; a random one per
    serve.run (the default) replaced the healthy replica on every rollout, bad model or not."""
    v2 = sealed_copy(small_model_dir, str(tmp_path / "v2"), "v2")
    first, second = (build_app({"model": m})._bound_deployment for m in (small_model_dir, v2))
    assert first.version is not None and first.version == second.version
    assert first.user_config != second.user_config


def test_a_replica_asks_ray_for_the_memory_it_is_given_and_the_deploy_job_says_what_it_needs(small_model_dir, tmp_path):
    """Replicas asked Ray for CPUs only (4,426 MiB each at 10M x 1M, about twice that in a
    rollout), so Ray could place more of them on a node than its memory holds."""
    from ncf.batch.scoring import ACTOR_BYTES_PER_HOUSEHOLD
    from ncf.model.directory import ModelDir
    from serve.app import replica_memory_bytes

    asked = build_app(_app_args(small_model_dir))._bound_deployment.ray_actor_options
    assert asked["memory"] == 2**29 and asked["num_cpus"] == 0.25
    unasked = build_app({**_app_args(small_model_dir), "memory_gb": None})._bound_deployment.ray_actor_options
    assert "memory" not in unasked
    weights = os.path.getsize(os.path.join(small_model_dir, "model.pt"))
    assert replica_memory_bytes(small_model_dir) > (640 << 20) + 2 * weights
    # A DATA grown past the model's households: the replica holds its state, all of them (a review).
    grown = tmp_path / "grown"
    grown.mkdir()
    model_users = int(ModelDir(small_model_dir).config["model"]["num_users"])
    (grown / "stats.json").write_text(json.dumps({"vocab_sizes": {"num_users": model_users + 1_000_000}}))
    more = replica_memory_bytes(small_model_dir, str(grown)) - replica_memory_bytes(small_model_dir)
    assert more == 2 * ACTOR_BYTES_PER_HOUSEHOLD * 1_000_000
    with pytest.raises(ValueError, match="memory_gb"):
        build_app({**_app_args(small_model_dir), "memory_gb": 0})


def test_the_deployment_has_a_bounded_queue_and_sheds_with_503(small_model_dir):
    from serve.app import MAX_ONGOING_REQUESTS, MAX_QUEUED_REQUESTS

    # The application deployed, not the decorated class: build_app's options() replace its settings.
    deployed = build_app(_app_args(small_model_dir))._bound_deployment
    assert deployed.max_queued_requests == MAX_QUEUED_REQUESTS > 0
    assert deployed.max_ongoing_requests == MAX_ONGOING_REQUESTS
    assert deployed.backpressure_config.status_code == 503
    assert deployed.backpressure_config.retry_after_s >= 1
    asked = build_app({**_app_args(small_model_dir), "max_queued_requests": 7})._bound_deployment
    assert asked.max_queued_requests == 7 and asked.backpressure_config.status_code == 503


@pytest.mark.parametrize(
    "args, message",
    [
        ({"model": "m", "candidates": 0}, "candidates"),
        ({"model": "m", "candidates": MAX_K - 1}, "candidates"),
        ({"model": "m", "replicas": 2}, "replicas"),
    ],
)
def test_build_app_refuses_bad_args_in_one_line(args, message):
    with pytest.raises(ValueError, match=message) as error:
        build_app(args)
    assert "\n" not in str(error.value)


@pytest.mark.faults
def test_changing_candidates_reuses_the_model_without_touching_the_old_service(small_model_dir):
    old = ModelService.load(ServeSettings.from_user_config({"model_dir": small_model_dir}))
    new = ModelService.load(
        ServeSettings.from_user_config({"model_dir": small_model_dir, "candidates": MAX_K + 17}), previous=old
    )
    assert new.recommender.ranker.model is old.recommender.ranker.model
    assert new.recommender.settings.candidates == MAX_K + 17
    assert old.recommender.settings.candidates != MAX_K + 17
    # A replica's recommenders keep to their passes' share of its time, with_settings' copies too.
    assert old.recommender.pass_share == new.recommender.pass_share == PASS_SHARE < 1
    # ... and run a pass in the background past PASS_WAIT_S (then 503), well inside the request timeout.
    from serve.limits import REQUEST_TIMEOUT_S

    assert old.recommender.pass_wait_s == new.recommender.pass_wait_s == PASS_WAIT_S < REQUEST_TIMEOUT_S / 2
    # Old code: back to the default (None) kept the override, applied to the previous recommender,
    # so the replica ranked with MAX_K + 17 candidates while the nightly job used the default.
    back = ModelService.load(ServeSettings.from_user_config({"model_dir": small_model_dir}), previous=new)
    assert back.recommender.settings.candidates == old.recommender.settings.candidates
    assert back.recommender.ranker.model is old.recommender.ranker.model
    again = ModelService.load(
        ServeSettings.from_user_config({"model_dir": small_model_dir, "candidates": MAX_K + 5}), previous=new
    )
    assert again.recommender.settings.candidates == MAX_K + 5 and again.base is old.base
    same = ModelService.load(ServeSettings.from_user_config({"model_dir": small_model_dir}), previous=back)
    assert same.recommender is back.recommender  # nothing to change: the warm ranker kept
    # A model directory whose own ranking keeps fewer than MAX_K candidates (a hand-edited
    # config.json) answered a request's k above it with a shorter list and no error (a review of
    # ncf/rank, 2026-12-07): refused at load, as a candidates setting below MAX_K is.
    short = ModelService(again.recommender, again.settings, again.base.with_settings(candidates=MAX_K - 50))
    with pytest.raises(ValueError, match=f"keeps {MAX_K - 50} candidates .*, fewer than the largest k"):
        ModelService.load(ServeSettings.from_user_config({"model_dir": small_model_dir}), previous=short)


@pytest.mark.faults
def test_now_never_ranks_before_the_histories_end(recommender, small_model_dir, monkeypatch, caplog):
    """A log stamped ahead of the clock (local times east of UTC read as UTC) made every request
    at now a past day's pass over every purchase, its newest purchases cut (a review of the
    nightly job, 2026-12-07): now is the clock or the histories' end, whichever is later, and the
    deployment says so."""
    import logging

    from serve import service

    live = ModelService(recommender, ServeSettings(model_dir=small_model_dir, default_at="now"), recommender)
    end = recommender.state.end
    monkeypatch.setattr(service.time, "time", lambda: end - 3 * 3600.0)
    assert live.moment(None) == recommender.default_at == end + 1 and not recommender.needs_pass(live.moment(None))
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        service._warn_if_stale(recommender, live.settings, content_changed=False)
    assert "the histories end 3.0 hours after now" in caplog.text
    caplog.clear()
    monkeypatch.setattr(service.time, "time", lambda: end - 600.0)  # a live refresh's skew: ranked at the end, unsaid
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        service._warn_if_stale(recommender, live.settings, content_changed=False)
    assert live.moment(None) == end + 1 and "after now" not in caplog.text
    monkeypatch.setattr(service.time, "time", lambda: end + 86_400.0)
    assert live.moment(None) == end + 86_400


@pytest.mark.faults
def test_a_deploy_of_a_model_whose_own_first_stage_is_short_is_refused_before_serve(small_model_dir, monkeypatch):
    """Refused by the deploy's own checks, before Ray and a rollout (the second read of
    2026-12-07: only the replicas refused it, after Serve's retries), unless --candidates says more."""
    from ncf.model.files import read_config
    from serve import app

    monkeypatch.setattr(app, "read_config", lambda path: {**read_config(path), "ranking": {"candidates": 50}})
    with pytest.raises(InputError, match=r"keeps 50 candidates .*; deploy it with --candidates 100 or more"):
        app.serve_settings({"model": small_model_dir})
    assert app.serve_settings({"model": small_model_dir, "candidates": MAX_K}).candidates == MAX_K


@pytest.mark.faults
def test_new_data_at_the_same_path_is_loaded_again(small_model_dir, small_data, tmp_path):
    """jobs.preprocess swaps new DATA in at the same --output: its fingerprint, not its path, says
    whether the replica may keep the state it loaded."""
    from ncf.data import layout
    from ncf.model.directory import copy_state

    data = str(tmp_path / "data")
    copy_state(small_data[0], data)
    shutil.copy(layout.stats_path(small_data[0]), layout.stats_path(data))
    config = {"model_dir": small_model_dir, "data": data}
    old = ModelService.load(ServeSettings.from_user_config(config))
    again = ModelService.load(ServeSettings.from_user_config(config), previous=old)
    with open(layout.stats_path(data), "a") as f:
        f.write("\n")  # what a new run at the same path does: a new stats.json
    new = ModelService.load(ServeSettings.from_user_config(config), previous=old)
    assert again.recommender is old.recommender
    assert new.settings.data_fingerprint != old.settings.data_fingerprint
    assert new.recommender.state is not old.recommender.state


def test_settings_tell_when_their_paths_hold_other_files(small_model_dir, small_data, tmp_path):
    """What jobs.deploy checks after restoring the serving settings: a model retrained into the
    same path leaves the restored target pointing at the refused files."""
    from ncf.data import layout
    from ncf.model.directory import copy_state
    from serve.service import same_content_on_disk

    data = str(tmp_path / "data")
    copy_state(small_data[0], data)
    shutil.copy(layout.stats_path(small_data[0]), layout.stats_path(data))
    model = str(tmp_path / "model")
    shutil.copytree(small_model_dir, model)
    settings = ServeSettings.from_user_config({"model_dir": model, "data": data})
    assert same_content_on_disk(settings)
    with open(layout.stats_path(data), "a") as f:
        f.write("\n")
    assert not same_content_on_disk(settings)
    settings = ServeSettings.from_user_config({"model_dir": model, "data": data})
    with open(os.path.join(model, "manifest.json"), "a") as f:
        f.write("\n")
    assert not same_content_on_disk(settings)


@pytest.mark.faults
def test_a_replica_started_after_its_model_was_replaced_refuses_to_serve_it(small_model_dir, tmp_path):
    """Old code: a replica started by autoscaling or as a replacement loaded whatever the path held
    by then, and served it beside replicas of the deployed model; a blue/green link repointed
    since did the same."""
    model = str(tmp_path / "model")
    shutil.copytree(small_model_dir, model)
    link = str(tmp_path / "serving")
    os.symlink(model, link)
    # build_app records the link's target: repointing the link later does not reach the replicas.
    assert build_app({"model": link})._bound_deployment.user_config["model_dir"] == model
    settings = ServeSettings.from_user_config({"model_dir": model})
    assert ModelService.load(settings).version
    with open(os.path.join(model, "manifest.json"), "a") as f:
        f.write("\n")  # what another model saved at the path does: a new manifest
    with pytest.raises(InputError, match="changed after this deployment was built"):
        ModelService.load(settings)


@pytest.mark.faults
def test_a_busy_past_day_is_a_503_json_with_retry_after():
    """The HTTP side of PassBusy (the ranking core's refusal is tested in test_scoring): clients
    are told when to come back, not given a 500."""
    import asyncio

    from serve.api import PASS_RETRY_AFTER_S, _on_pass_busy, create_app

    assert create_app().exception_handlers[PassBusy] is _on_pass_busy
    response = asyncio.run(_on_pass_busy(None, PassBusy("the day 2017-06-01 is being computed")))
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(PASS_RETRY_AFTER_S) == "10"
    assert json.loads(response.body) == {"error": "the day 2017-06-01 is being computed"}
    spaced = asyncio.run(_on_pass_busy(None, PassBusy("at most 25% of its time", retry_after_s=4.2)))
    assert spaced.status_code == 503 and spaced.headers["retry-after"] == "5"  # when a pass may start


@pytest.mark.faults
def test_a_mixed_request_batch_gets_the_answers_of_single_requests(small_model_dir, recommender, users):
    """What a @serve.batch call runs: requests grouped by k, exclude_purchased and explain are
    ranked in one model call each; every answer equals the single request's."""
    from serve.api import RecommendRequest

    service = ModelService.load(
        ServeSettings.from_user_config({"model_dir": small_model_dir, "default_at": "data-end"})
    )
    earlier = datetime.fromtimestamp(recommender.default_at - 7 * 86400, tz=timezone.utc)
    batch = [
        RecommendRequest(user_id=users[0], k=5),
        RecommendRequest(user_id=users[1], k=3, exclude_purchased=True),
        RecommendRequest(user_id=UNKNOWN_USER, k=5),
        RecommendRequest(user_id=users[1], k=5, at=earlier),
        RecommendRequest(user_id=users[0], k=3, explain=True),
        RecommendRequest(user_id=users[0], k=3, exclude_purchased=True),
    ]

    def rounded(answer: dict) -> dict:  # a batched matrix product may differ in the last bits
        return {**answer, "items": [{**item, "score": round(item["score"], 5)} for item in answer["items"]]}

    together = service.recommend_many(batch)
    assert [rounded(a) for a in together] == [rounded(service.recommend(r)) for r in batch]
    assert together[2]["cold_start"] and not together[0]["cold_start"]
    assert together[3]["at"] == earlier and "because" in together[4]["items"][0]
    # A request refused for its `at` gets its own error; the rest of its batch is answered.
    too_early = RecommendRequest(user_id=users[0], k=5, at=datetime.fromtimestamp(0, tz=timezone.utc))
    mixed = service.recommend_many([batch[0], too_early, batch[3]])
    assert isinstance(mixed[1], BeforeTheData) and [rounded(mixed[0]), rounded(mixed[2])] == [
        rounded(together[0]),
        rounded(together[3]),
    ]
    with pytest.raises(BeforeTheData):
        service.recommend(too_early)
    # A new past day in the same group as a present one (same k): while another day's pass holds
    # the replica's pass lock it gets PassBusy (503) alone, its group-mate its answer; the batch
    # (start_passes False) leaves it to the route (PassNeeded) rather than run a pass for it.
    new_day = RecommendRequest(user_id=users[1], k=5, at=earlier - timedelta(days=2))
    assert service.needs_pass(new_day) and not service.needs_pass(batch[0]) and not service.needs_pass(batch[3])
    with service.recommender._passes.lock:  # another day's pass, running
        mixed = service.recommend_many([batch[0], new_day])
    assert isinstance(mixed[1], PassBusy) and rounded(mixed[0]) == rounded(together[0])
    batched = service.recommend_many([batch[0], new_day], start_passes=False)
    assert isinstance(batched[1], PassNeeded) and rounded(batched[0]) == rounded(together[0])
    assert service.needs_pass(new_day)  # the batch ran no pass
    service.recommender._passes.next_at = 0.0  # the replica's pass share (test_scoring's) not waited out here
    assert service.recommend(new_day)["items"] and not service.needs_pass(new_day)  # the pass over


@pytest.mark.faults
def test_each_request_of_a_failed_group_gets_its_own_exception(small_model_dir, users, monkeypatch):
    """A group whose ranking failed gave its one exception to every request: each route raised
    that object, and its ``__traceback__`` gathered the frames of every request raising it. Each
    now raises its own, caused by the group's (still a 500: no error handler takes it)."""
    from serve.api import RecommendRequest, create_app
    from serve.service import RankingFailed

    service = ModelService.load(
        ServeSettings.from_user_config({"model_dir": small_model_dir, "default_at": "data-end"})
    )
    fault = KeyError("a fault inside the ranking core")

    def broken(*args, **kwargs):
        raise fault

    monkeypatch.setattr(service.recommender, "rank", broken)
    answers = service.recommend_many([RecommendRequest(user_id=u, k=5) for u in users])
    assert len(answers) == 2 and answers[0] is not answers[1]
    assert all(isinstance(a, RankingFailed) and a.__cause__ is fault for a in answers)
    assert "KeyError" in str(answers[0]) and "a fault inside" in str(answers[0])

    def depth(error: BaseException) -> int:
        frames, tb = 0, error.__traceback__
        while tb is not None:
            frames, tb = frames + 1, tb.tb_next
        return frames

    def route(answer):
        raise answer

    raised_in_group = depth(fault)
    for answer in answers:  # as each request's route does
        with pytest.raises(RankingFailed):
            route(answer)
    assert depth(answers[0]) == depth(answers[1]) and depth(fault) == raised_in_group
    handled = [t for t in create_app().exception_handlers if isinstance(t, type)]
    assert not [t for t in handled if issubclass(RankingFailed, t)]  # Serve's 500, as before


class _ForgetsAfterFirstUse:
    """A lock whose first holder, once it lets go, sees ``forget`` run under it: another thread's
    pass ending just then and forgetting the oldest kept day."""

    def __init__(self, lock, forget) -> None:
        self.lock, self.forget, self.used = lock, forget, False

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc) -> None:
        self.lock.release()
        if not self.used:
            self.used = True
            with self.lock:
                self.forget()


@pytest.mark.faults
def test_a_kept_day_forgotten_while_its_batch_starts_runs_no_pass_in_the_batch(
    small_model_dir, recommender, users, monkeypatch
):
    """Old code: a batch asked whether a request's day was kept (``needs_pass``), then took it
    (``as_of``), two sections of the days' lock: another thread's pass ending in between could
    forget the day, whose pass then ran inside the ``@serve.batch`` call, every request of the
    batch waiting for it (or, the replica's pass share spent, its group got a 503) (a review,
    2026-12-06). Here the day is forgotten right after the batch's first look at the kept days:
    the request is ranked from the day taken in that look, and no pass runs in the batch."""
    from ncf.moments import day_of
    from ncf.rank.state import RankingState
    from serve.api import RecommendRequest

    service = ModelService.load(
        ServeSettings.from_user_config({"model_dir": small_model_dir, "default_at": "data-end"})
    )
    rec = service.recommender
    at = recommender.default_at - 3 * 86_400
    request = RecommendRequest(user_id=users[0], k=5, at=datetime.fromtimestamp(at, tz=timezone.utc))
    alone = service.recommend(request)  # the route's own pass: the day is kept
    assert not service.needs_pass(request)
    passes = []
    original = RankingState.as_of

    def counted(state, cutoff, stats=None):
        passes.append(cutoff)
        return original(state, cutoff, stats)

    monkeypatch.setattr(RankingState, "as_of", counted)
    rec._days_lock = _ForgetsAfterFirstUse(rec._days_lock, lambda: rec._days.pop(day_of(at)))
    answer = service.recommend_many([request], start_passes=False)[0]
    assert passes == [], "a pass ran inside the batch"
    assert isinstance(answer, dict) and answer["items"] == alone["items"]
    assert service.needs_pass(request)  # forgotten meanwhile, as the other pass did
    # Forgotten before the batch's look: left to the route (PassNeeded), still no pass here.
    assert isinstance(service.recommend_many([request], start_passes=False)[0], PassNeeded)
    assert passes == []


@pytest.mark.faults
def test_explained_requests_are_batched_apart_within_what_a_batch_request_may_explain(monkeypatch):
    """Old code: one ``@serve.batch`` of up to 16 ``/recommend`` requests, explained or not: 16
    explained at k = 100 were 1,600 explained items (each scored twice more, about 3 s) in one
    call that held every request batched with them (a review, 2026-12-06), where
    ``/recommend/batch`` refuses more than MAX_EXPLAINED_ITEMS. Here 20 explained and 12 plain
    requests reach the replica's route at once, through its real batch queues."""
    import asyncio
    from types import SimpleNamespace

    from ray import serve

    from serve.api import RecommendRequest
    from serve.app import MAX_BATCH_SIZE, RecommenderDeployment, Serving

    calls = []

    class Service:  # what /recommend and its batches ask of a ModelService
        def needs_pass(self, request) -> bool:
            return False

        def recommend_many(self, requests, start_passes=True) -> list:
            assert not start_passes  # a batch runs no pass
            calls.append([(r.explain, r.k) for r in requests])
            return [{"user_id": r.user_id} for r in requests]

    # Outside a replica Serve has no replica context: the batch queues read its request limit.
    context = SimpleNamespace(replica_tag="r1", _deployment_config=SimpleNamespace(max_ongoing_requests=32))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    replica = object.__new__(RecommenderDeployment.func_or_class)
    replica._serving = Serving(Service(), None)
    # Each batch queue is the class's, made on first use: dropped after the test, or the class
    # would no longer pickle for the module's later deployments.
    for batched in (replica._recommend_batched, replica._recommend_explained):
        monkeypatch.setattr(batched._get_max_batch_size.__self__, "_queue", None)
    asked = [RecommendRequest(user_id=i, k=MAX_K, explain=i < 20) for i in range(32)]

    async def all_at_once() -> list:
        return await asyncio.gather(*(replica.recommend(r) for r in asked))

    assert [a["user_id"] for a in asyncio.run(all_at_once())] == list(range(32))
    assert sorted(len(call) for call in calls) == [10, 10, 12]
    for call in calls:
        explained = [k for is_explained, k in call if is_explained]
        assert len(explained) in (0, len(call)), call  # explained requests batched apart
        assert sum(explained) <= MAX_EXPLAINED_ITEMS and len(call) <= MAX_BATCH_SIZE


# -- rollout (each test that rolls out takes `rollout_port`, which leaves v1 serving) ------------


class Traffic(threading.Thread):
    """Sends /recommend requests until stopped (at most ``limit``), recording versions and failures."""

    def __init__(self, url: str, user, limit: int = 5000) -> None:
        super().__init__(daemon=True)
        self.url, self.user, self.limit = url, user, limit
        self.versions, self.failures = [], []
        self.stop = threading.Event()

    def run(self) -> None:
        for _ in range(self.limit):
            if self.stop.is_set():
                return
            try:
                r = post(f"{self.url}/recommend", {"user_id": self.user, "k": 5})
                if r.status_code == 200:
                    self.versions.append(r.json()["model_version"])
                else:
                    self.failures.append(f"{r.status_code}: {r.text[:200]}")
            except requests.RequestException as e:
                self.failures.append(repr(e))


@pytest.mark.faults
def test_second_version_rolls_out_while_requests_keep_succeeding(
    server, rollout_port, small_model_dir, users, tmp_path
):
    v2 = sealed_copy(small_model_dir, str(tmp_path / "v2"), "v2")
    traffic = Traffic(server, users[0])
    traffic.start()
    try:
        deadline = time.monotonic() + 30
        while len(traffic.versions) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        replicas = replica_names("ncf_test", DEPLOYMENT_NAME)
        start(
            build_app(_app_args(v2)), port=rollout_port, app_name="ncf_test"
        )  # user_config change: reconfigure in place
        deadline = time.monotonic() + 60
        while "v2" not in traffic.versions[-5:] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a few more answers after the switch
    finally:
        traffic.stop.set()
        traffic.join(timeout=TIMEOUT)
    assert traffic.failures == []
    assert traffic.versions[0] == "v1" and traffic.versions[-1] == "v2"
    switch = traffic.versions.index("v2")
    assert set(traffic.versions[switch:]) == {"v2"}, "one replica: no v1 answer after the first v2"
    assert len(replicas) == 1 and replica_names("ncf_test", DEPLOYMENT_NAME) == replicas, "reconfigured in place"
    assert model_health(requests.get(f"{server}/healthz", timeout=TIMEOUT).json()) == {
        "status": "ok",
        "model_version": "v2",
        "rollout_error": None,
    }


def _health(url: str) -> dict:
    return requests.get(f"{url}/healthz", timeout=TIMEOUT).json()


@pytest.mark.faults
def test_a_new_model_at_the_same_path_rolls_out_and_ui_follows_the_args(
    server, rollout_port, small_model_dir, tmp_path
):
    """jobs.train writes a new model where the old one was: deploying the same args again rolls it
    out (the user_config carries its fingerprint). Turning ui on is a reconfigure as well."""
    port = rollout_port
    model = sealed_copy(small_model_dir, str(tmp_path / "model"), "same-path-1")
    start(build_app(_app_args(model)), port=port, app_name="ncf_test")
    assert _health(server)["model_version"] == "same-path-1"
    shutil.rmtree(model)
    sealed_copy(small_model_dir, model, "same-path-2")
    start(build_app(_app_args(model)), port=port, app_name="ncf_test")
    assert model_health(_health(server)) == {"status": "ok", "model_version": "same-path-2", "rollout_error": None}
    assert requests.get(f"{server}/ui/config", timeout=TIMEOUT).status_code == 404
    start(build_app({**_app_args(model), "ui": True}), port=port, app_name="ncf_test")
    assert requests.get(f"{server}/ui/config", timeout=TIMEOUT).json()["model_version"] == "same-path-2"


@pytest.mark.faults
def test_a_rollout_one_replica_of_two_refused_is_a_refused_rollout():
    """One replica loaded the new model, the other kept the old one (out of memory there, say):
    the job fails and deploys the old settings again, rather than leave answers alternating."""
    from serve.rollout import refused_rollout

    took = {"status": "ok", "model_version": "v2", "rollout_error": None, "replica": "a"}
    kept = {"status": "ok", "model_version": "v1", "rollout_error": "MemoryError: ", "replica": "b"}
    assert refused_rollout({"a": took}) is None
    line = refused_rollout({"a": took, "b": kept})
    assert line.startswith("the rollout failed on 1 of 2 replica(s), which kept serving model v1: MemoryError")


def _refused_model(model_dir: str, destination: str, monkeypatch) -> str:
    """A sealed model whose ranking settings this code does not know, which only the replicas
    refuse: the deploy's own check (here, in the test's process) is made to pass them, as it would
    a model whose fault only loading finds (the replicas, other processes, read them as ever)."""
    from ncf.model.directory import CONFIG, METRICS
    from ncf.model.integrity import write_manifest
    from ncf.model.ranking import RankingSettings

    monkeypatch.setattr(RankingSettings, "of_model", staticmethod(lambda ranking, where: RankingSettings()))

    refused = sealed_copy(model_dir, destination, "refused")
    with open(os.path.join(refused, CONFIG)) as f:
        config = json.load(f)
    with open(os.path.join(refused, CONFIG), "w") as f:
        json.dump({**config, "ranking": {"no_such_setting": 1}}, f)
    write_manifest(refused, unsealed=[METRICS])
    return refused


def _target_user_config(app_name: str) -> dict:
    """The user_config of Serve's target for the app's deployment: what a replica Serve starts
    next (a replacement, a scale-up) loads."""
    from ray.serve.context import _get_global_client

    info, _ = _get_global_client().get_deployment_info(DEPLOYMENT_NAME, app_name)
    return info.deployment_config.user_config


@pytest.mark.faults
def test_deploy_exits_2_on_a_refused_rollout_and_makes_the_serving_model_the_target_again(
    server, rollout_port, small_model_dir, tmp_path, monkeypatch, capsys
):
    """A rollout the replica refuses (a sealed model whose ranking settings this code does not
    know: only loading it finds out) keeps the old model serving; jobs.deploy says so in one line,
    exits 2, and deploys the serving settings again, so that a replica Serve starts later does not
    load the refused ones."""
    from ray import serve

    from jobs import deploy
    from serve.launch import serving_user_config

    port = rollout_port
    refused = _refused_model(small_model_dir, str(tmp_path / "refused"), monkeypatch)
    # Two replicas: each answer of /healthz is one replica's, so the job asks until both answered.
    args = ["--port", str(port), "--detach", "--min-replicas", "2", "--max-replicas", "2"]
    serve.delete("ncf_test")  # jobs.deploy's app is at the route prefix / too
    try:
        deployed = deploy.main(["--model", small_model_dir, *args])
        assert deployed["model_version"] == "v1" and deployed["replicas_checked"] == 2
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            deploy.main(["--model", refused, *args])
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 2
        assert error.startswith("error: the rollout failed on 2 of 2 replica(s), which kept serving model v1"), error
        assert "no_such_setting" in error
        assert "\n" not in error and str(tmp_path) not in error
        # The serving settings reconfigured the replica again: the error is gone, the target is v1.
        assert model_health(_health(server)) == {"status": "ok", "model_version": "v1", "rollout_error": None}
        assert serving_user_config()["model_dir"] == small_model_dir
    finally:
        serve.delete("ncf")  # rollout_port deploys the session's app again


@pytest.mark.faults
def test_a_rollout_whose_new_replicas_fail_to_start_makes_the_serving_model_the_target_again(
    server, rollout_port, small_model_dir, tmp_path, monkeypatch, capsys
):
    """New code restarts the replicas, and a new replica has no model to keep: one that cannot load
    the model rolled out raises in reconfigure, and Serve gives up on the rollout (DEPLOY_FAILED)
    while the old replica serves on. jobs.deploy exited 1 leaving the refused settings as Serve's
    target, which every replica Serve started later (a replacement, a scale-up, one woken from
    --min-replicas 0) failed on (a review of serve/): now it deploys the settings served before
    again, so that a replica started on the target serves, and still exits 1 in one line."""
    from ray import serve

    from jobs import deploy
    from serve import app as serve_app
    from serve.launch import serving_user_config

    refused = _refused_model(small_model_dir, str(tmp_path / "refused"), monkeypatch)
    args = ["--port", str(rollout_port), "--detach", "--max-replicas", "1"]
    serve.delete("ncf_test")  # jobs.deploy's app is at the route prefix / too
    try:
        assert deploy.main(["--model", small_model_dir, *args])["model_version"] == "v1"
        before = replica_names("ncf", DEPLOYMENT_NAME)
        capsys.readouterr()
        monkeypatch.setattr(serve_app, "code_version", lambda: "new-code")  # as any .py change under ncf/
        started = time.monotonic()
        with pytest.raises(SystemExit) as exited:
            deploy.main(["--model", refused, *args])
        took = time.monotonic() - started
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 1, error
        # Serve's target is the model served before, and a replica started on it (of the new code,
        # replacing the old one) serves it.
        assert _target_user_config("ncf")["model_dir"] == small_model_dir, error
        assert serving_user_config()["model_dir"] == small_model_dir
        after = replica_names("ncf", DEPLOYMENT_NAME)
        assert after and not after & before, (before, after)
        assert model_health(_health(server)) == {"status": "ok", "model_version": "v1", "rollout_error": None}
        assert post(f"{server}/recommend", {"user_id": UNKNOWN_USER, "k": 3}).status_code == 200
        assert error.startswith("error: Serve could not start the app ("), error
        assert "no_such_setting" in error, error  # why the replicas failed, from the deployment's status
        assert "; the settings served before: deployed again as Serve's target; the replicas' logs:" in error, error
        assert "\n" not in error
    finally:
        serve.delete("ncf")  # rollout_port deploys the session's app again
    with capsys.disabled():
        print(f"\n[faults] a rollout whose new replicas failed, undone: {took:.0f} s")


@pytest.mark.faults
def test_a_first_deploy_whose_replicas_fail_has_nothing_to_undo_and_the_next_one_does_not_wait(
    server, rollout_port, small_model_dir, tmp_path, monkeypatch, capsys
):
    """No replica served before: nothing to deploy again, and the job says only why it failed. The
    next deploy asks the app's replicas what they serve; with none running and the app failed it
    does not wait out the question's timeout (long enough for a model's cold load)."""
    from ray import serve

    from jobs import deploy
    from serve.launch import COLD_LOAD_TIMEOUT_S, serving_user_config

    refused = _refused_model(small_model_dir, str(tmp_path / "refused"), monkeypatch)
    args = ["--port", str(rollout_port), "--detach", "--max-replicas", "1"]
    serve.delete("ncf_test")  # jobs.deploy's app is at the route prefix / too
    try:
        with pytest.raises(SystemExit) as exited:
            deploy.main(["--model", refused, *args])
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 1 and error.startswith("error: Serve could not start the app ("), error
        assert "served before" not in error and "\n" not in error and "no_such_setting" in error
        started = time.monotonic()
        assert serving_user_config() is None
        assert deploy.main(["--model", small_model_dir, *args])["model_version"] == "v1"
        assert time.monotonic() - started < COLD_LOAD_TIMEOUT_S / 2
    finally:
        serve.delete("ncf")  # rollout_port deploys the session's app again


@pytest.mark.faults
def test_a_demo_whose_app_serve_cannot_start_stops_it_and_says_why_in_one_line(
    server, rollout_port, small_model_dir, small_data, tmp_path, monkeypatch, capsys
):
    """The demo started its app before the try whose finally stops it: a deploy that failed left
    the app behind (on a cluster the detached Serve too, beside which the next demo refused to
    run) and ended in Serve's traceback. Now the app is stopped and the demo says why in one
    line, naming the Serve logs of its own Ray session (a review)."""
    import ray
    from ray import serve

    from jobs import demo

    refused = _refused_model(small_model_dir, str(tmp_path / "refused"), monkeypatch)
    data, _ = small_data
    serve.delete("ncf_test")  # the demo's app is at the route prefix / too
    # The session's Serve already listens on the port, where the demo's own Serve would.
    monkeypatch.setattr(demo, "check_port_free", lambda *args: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as exited:
        demo.online_queries(refused, data, rollout_port)
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 1, error
    assert error.startswith("error: Serve could not start the app (") and "no_such_setting" in error, error
    assert "\n" not in error
    logs = error.rsplit("; Serve's logs: ", 1)[1]
    assert logs == os.path.join(ray._private.worker._global_node.get_logs_dir_path(), "serve")
    assert os.path.isdir(logs) and os.listdir(logs)  # the controller's and proxy's logs are there
    assert "ncf" not in serve.status().applications


@pytest.mark.faults
def test_a_deploy_that_cannot_tell_what_serve_serves_is_refused_before_any_rollout(
    server, rollout_port, small_model_dir, tmp_path, monkeypatch, capsys
):
    """Old code took any error reading the served settings (a 60 s timeout, a controller error)
    for "no app of ours": the rollout went ahead with nothing to undo it to, and a rollout the
    replicas refused left its settings as Serve's target without a word (or "restored" them from
    a replica that had taken the new model). Now the deploy is refused in one line, exit 1,
    before anything changes; Serve without our app still deploys (nothing served before)."""
    from ray import serve

    from jobs import deploy
    from serve import rollout

    args = ["--port", str(rollout_port), "--detach", "--max-replicas", "1"]
    v2 = sealed_copy(small_model_dir, str(tmp_path / "v2"), "v2")
    serve.delete("ncf_test")  # jobs.deploy's app is at the route prefix / too
    try:
        assert rollout.serving_before(("127.0.0.1", rollout_port)) is None  # Serve runs, no app of ours
        assert deploy.main(["--model", small_model_dir, *args])["model_version"] == "v1"
        capsys.readouterr()

        def unanswered(*args, **kwargs):
            raise TimeoutError("no replica answered within 60 s")

        monkeypatch.setattr(rollout, "serving_user_config", unanswered)
        with pytest.raises(SystemExit) as exited:
            deploy.main(["--model", v2, *args])
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 1, error
        assert error == (
            "error: cannot tell what Serve serves (TimeoutError: no replica answered within 60 s); nothing was "
            "deployed: a rollout the replicas refused could not be undone"
        )
        assert _target_user_config("ncf")["model_dir"] == small_model_dir  # nothing deployed
        assert model_health(_health(server))["model_version"] == "v1"
    finally:
        serve.delete("ncf")  # rollout_port deploys the session's app again


@pytest.mark.faults
def test_a_deploy_running_serve_would_not_do_as_asked_is_refused_before_any_rollout(server, small_model_dir, capsys):
    """Serve already runs on the cluster (the session's app): a foreground deploy would shut it
    down, every app of it, when it stops; one on another port would roll out while the job waited
    on a port Serve never opens (Serve keeps its address and only logs that). Both are one line,
    exit 2, before anything is deployed."""
    from jobs import deploy

    port = int(server.rsplit(":", 1)[1])
    cases = (
        (["--port", str(port)], "roll out into it with --detach"),
        (["--port", str(port + 1), "--detach"], f"--host 127.0.0.1 --port {port}"),
    )
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exited:
            deploy.main(["--model", small_model_dir, "--max-replicas", "1", *argv])
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and "\n" not in error and expected in error, error
    assert model_health(_health(server))["model_version"] == "v1"


@pytest.mark.faults
def test_a_redeploy_without_data_says_it_drops_the_data_serve_ranks_from(
    server, rollout_port, small_model_dir, small_data, capsys
):
    """After jobs.models promote, the printed jobs.deploy --model current without --data rolled the
    model's own (older) histories out in place of the DATA Serve ranked from, without a word."""
    from ray import serve

    from jobs import deploy

    data, _ = small_data
    args = ["--model", small_model_dir, "--port", str(rollout_port), "--detach", "--max-replicas", "1"]
    serve.delete("ncf_test")  # jobs.deploy's app is at the route prefix / too
    try:
        deploy.main([*args, "--data", data])
        assert "note:" not in capsys.readouterr().err
        deploy.main(args)
        note = capsys.readouterr().err
        assert f"Serve ranks from DATA {os.path.realpath(data)}; without --data" in note, note
        deploy.main(args)  # nothing to drop any more
        assert "note:" not in capsys.readouterr().err
    finally:
        serve.delete("ncf")  # rollout_port deploys the session's app again


def test_every_entry_point_ranks_the_same(server, recommender, users):
    """One ranking path: Serve's single, explained and batch requests, /score, the evaluation's
    ranking and the nightly job's give the same products and scores for one household and moment."""
    import pyarrow as pa

    from ncf.batch.scorer import score_users
    from ncf.evaluate.evaluation import model_fns

    household, at = users[0], recommender.default_at
    core = recommender.rank([household], k=5, at=at)[0]
    single = post(f"{server}/recommend", {"user_id": household, "k": 5}).json()
    explained = post(f"{server}/recommend", {"user_id": household, "k": 5, "explain": True}).json()
    batch = post(f"{server}/recommend/batch", {"user_ids": [household], "k": 5}).json()["results"][0]
    scored = post(f"{server}/score", {"user_id": household, "product_ids": core.product_ids}).json()["scores"]
    index = recommender.vocabs.users.index_of([household])
    rank_many, _ = model_fns(recommender.ranker)
    evaluated = recommender.vocabs.products.raw_of(rank_many(index, np.array([at]), 5)[0])
    nightly = score_users(recommender, pa.array([household]), 5, at, at)
    for answer in (single, explained, batch):
        assert ids(answer["items"]) == core.product_ids
        assert [i["score"] for i in answer["items"]] == pytest.approx(core.scores, abs=1e-5)
    assert scored == pytest.approx(core.scores, abs=1e-5)
    assert evaluated == core.product_ids == nightly.column("product_id").to_pylist()
    assert nightly.column("score").to_numpy() == pytest.approx(core.scores, abs=1e-5)


def test_a_replica_warns_when_the_histories_it_ranks_now_from_are_stale(recommender, small_model_dir, caplog):
    """README: a replica whose DATA ends more than 35 days before now says so when it loads,
    unless it ranks at the data's end (a historical dataset); the note was untested."""
    import logging
    import time

    from serve.service import STALE_AFTER_DAYS, _warn_if_stale

    assert (time.time() - recommender.state.end) / 86_400 > STALE_AFTER_DAYS  # the test data is history
    serve_logger = logging.getLogger("ray.serve")  # Ray's loggers do not propagate to pytest's root handler
    serve_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="ray.serve"):
            _warn_if_stale(recommender, ServeSettings.from_user_config({"model_dir": small_model_dir}))
            stale = [r.getMessage() for r in caplog.records if "days before now" in r.getMessage()]
            caplog.clear()
            config = {"model_dir": small_model_dir, "default_at": "data-end"}
            _warn_if_stale(recommender, ServeSettings.from_user_config(config))
    finally:
        serve_logger.removeHandler(caplog.handler)
    assert len(stale) == 1 and "deploy newer DATA (--data)" in stale[0]
    assert not [r for r in caplog.records if "days before now" in r.getMessage()]
