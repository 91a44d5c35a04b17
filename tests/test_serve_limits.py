"""The edge limits over real HTTP against a real Serve app on 127.0.0.1 (``serve.limits``):
oversized bodies get a readable 413, slow bodies a 408 without holding a replica, slow answers a
504, overload a 503; every one JSON. Raw sockets where the client's pace is the point."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import requests
from helpers import free_port

from ncf.errors import InputError
from serve.app import SHED_RETRY_AFTER_S, build_app
from serve.launch import start, wait_until_healthy
from serve.limits import BODY_TIMEOUT_S, EXTRA_HOSTS_ENV, MAX_BODY_BYTES, misdirected

pytestmark = pytest.mark.faults

REQUEST_TIMEOUT_S = 3.0  # Serve's request timeout in this module (production: 30 s)
BIG = b'{"user_id": 1, "pad": "' + b"x" * (20 * 2**20) + b'"}'  # 20 MiB


def _sleeper():
    """A deployment that answers after ``seconds``: a slow model, to meet the request timeout."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Sleeper", ray_actor_options={"num_cpus": 0.05})
    @serve.ingress(api)
    class Sleeper:
        @api.get("/sleep")
        async def sleep(self, seconds: float) -> dict:
            await asyncio.sleep(seconds)
            return {"slept": seconds}

    return Sleeper.bind()


@pytest.fixture(scope="module")
def edge(ray_session, small_model_dir):
    """The recommender with one request at a time and one waiting (so that overload is easy to
    make), and a sleeper under /slow, behind one proxy with a 3 s request timeout."""
    from ray import serve

    args = {
        "model": small_model_dir,
        "default_at": "data-end",
        "min_replicas": 1,
        "max_replicas": 1,
        "num_cpus": 0.25,
        "max_ongoing_requests": 1,
        "max_queued_requests": 1,
    }
    try:
        url = start(build_app(args), port=free_port(), app_name="edge", request_timeout_s=REQUEST_TIMEOUT_S)
        serve.run(_sleeper(), name="sleeper", route_prefix="/slow")
        wait_until_healthy(url, timeout_s=120)
        yield url
    finally:
        serve.shutdown()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _read_response(sock: socket.socket, timeout: float) -> tuple:
    """(status, headers, body) of one HTTP/1.1 answer read from ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data[:200]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _request_head(path: str, length: int | str, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {length}"]
    return ("\r\n".join(lines + list(extra)) + "\r\n\r\n").encode()


def _assert_json_error(status: int, body: bytes, expected: int) -> str:
    assert status == expected, body[:300]
    message = json.loads(body)["error"]
    assert isinstance(message, str) and message
    return message


# -- oversized bodies: 413 the client can read ------------------------------------------------


def test_a_20_mib_body_from_urllib_gets_a_readable_413(edge):
    """urllib sends Connection: close: a server that answers and closes while the body is still
    coming makes the kernel reset the connection (what this client saw before: no answer)."""
    request = urllib.request.Request(f"{edge}/recommend", data=BIG, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=60)
    message = _assert_json_error(answer.value.code, answer.value.read(), 413)
    assert str(MAX_BODY_BYTES) in message


def test_a_20_mib_body_from_requests_gets_413_and_the_connection_stays_usable(edge):
    with requests.Session() as session:
        r = session.post(f"{edge}/recommend", data=BIG, headers={"content-type": "application/json"}, timeout=60)
        _assert_json_error(r.status_code, r.content, 413)
        r = session.post(f"{edge}/recommend", json={"user_id": 1, "k": 3}, timeout=60)
        assert r.status_code == 200, r.text


def test_a_20_mib_body_sent_slowly_in_pieces_gets_413(edge):
    with socket.create_connection(("127.0.0.1", _port(edge)), timeout=60) as sock:
        sock.sendall(_request_head("/recommend", len(BIG)))
        for start_at in range(0, len(BIG), 2**20):
            sock.sendall(BIG[start_at : start_at + 2**20])
        status, _, body = _read_response(sock, timeout=30)
    _assert_json_error(status, body, 413)


def test_a_client_expecting_100_continue_gets_413_without_sending_the_body(edge):
    with socket.create_connection(("127.0.0.1", _port(edge)), timeout=30) as sock:
        sock.sendall(_request_head("/recommend", len(BIG), "Expect: 100-continue"))
        status, headers, body = _read_response(sock, timeout=30)
    _assert_json_error(status, body, 413)
    assert headers.get("connection") == "close"


def test_a_content_length_of_5001_digits_is_read_as_its_number(edge):
    """httptools passes ``000...022`` of any length on as 22; Python's int() refuses more than
    4,300 digits, and the edge's raise made uvicorn answer a plain-text 500. A longer number than
    any 64-bit length (a defence: httptools refuses it itself) is too large."""
    body = b'{"user_id": 1, "k": 3}'
    with socket.create_connection(("127.0.0.1", _port(edge)), timeout=30) as sock:
        sock.sendall(_request_head("/recommend", "0" * 5000 + str(len(body))) + body)
        status, _, answer = _read_response(sock, timeout=30)
    assert status == 200 and len(json.loads(answer)["items"]) == 3, answer[:300]
    sent, read = _through_edge(None, [(b"content-length", b"9" * 25)], [])
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"] and read == 0


# -- slow bodies: 408, and no replica held while they trickle in ----------------------------------


def test_slow_bodies_get_408_and_hold_no_replica(edge):
    """Three clients send headers and a few bytes of a 200-byte body, then stall. The replica
    (one request at a time, one waiting) keeps answering others; the stalled ones get 408."""
    # Warm: the replica's first /recommend (its batch queue, the ranking's first call) is not timed.
    assert requests.post(f"{edge}/recommend", json={"user_id": 1, "k": 3}, timeout=60).status_code == 200
    stalled = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", _port(edge)), timeout=30)
            sock.sendall(_request_head("/recommend", 200) + b'{"user_id": 1,')
            stalled.append(sock)
        began = time.monotonic()
        for _ in range(3):
            r = requests.post(f"{edge}/recommend", json={"user_id": 1, "k": 3}, timeout=30)
            assert r.status_code == 200, r.text
        # Answered before the stalled bodies' deadline: they held no replica (a loaded machine's
        # margin, not a speed target: the 408s below come at the deadline).
        assert time.monotonic() - began < BODY_TIMEOUT_S - 1
        for sock in stalled:
            status, headers, body = _read_response(sock, timeout=BODY_TIMEOUT_S + 10)
            assert "not received within" in _assert_json_error(status, body, 408)
            assert headers.get("connection") == "close"
        assert time.monotonic() - began >= BODY_TIMEOUT_S - 1  # the deadline, not sooner
    finally:
        for sock in stalled:
            sock.close()


# -- slow answers: Serve's request timeout, as 504 JSON -------------------------------------------


def test_an_answer_slower_than_the_request_timeout_gets_504_json(edge):
    began = time.monotonic()
    r = requests.get(f"{edge}/slow/sleep", params={"seconds": 4 * REQUEST_TIMEOUT_S}, timeout=60)
    took = time.monotonic() - began
    assert "timed out" in _assert_json_error(r.status_code, r.content, 504)
    assert REQUEST_TIMEOUT_S - 0.5 < took < 3 * REQUEST_TIMEOUT_S


def test_a_client_cannot_lift_the_request_timeout_with_serves_header(edge):
    """Serve's proxy honours x-request-timeout-seconds (meant for a trusted load balancer); a
    non-positive value disables the timeout. The edge drops it from client requests."""
    r = requests.get(
        f"{edge}/slow/sleep",
        params={"seconds": 4 * REQUEST_TIMEOUT_S},
        headers={"x-request-timeout-seconds": "0"},
        timeout=60,
    )
    _assert_json_error(r.status_code, r.content, 504)


def test_an_answer_within_the_timeout_passes(edge):
    r = requests.get(f"{edge}/slow/sleep", params={"seconds": 0.1}, timeout=30)
    assert r.status_code == 200 and r.json() == {"slept": 0.1}


# -- overload: shed at once with 503, Retry-After, JSON --------------------------------------------


def test_overload_is_shed_with_503_json_and_retry_after(edge):
    """16 simultaneous 100-household batches against one slot and one queue place: the ones
    that find no place are refused at once, the one in the slot answered."""
    # 250 explained items: about 0.2 s in the slot on this data, far inside the module's 3 s
    # timeout even with the 16 clients, the proxy and the replica sharing 2 cores.
    body = {"user_ids": list(range(1, 51)), "k": 5, "explain": True}
    gate, answers = threading.Barrier(16), []

    def client():
        gate.wait()
        answers.append(requests.post(f"{edge}/recommend/batch", json=body, timeout=60))

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    statuses = sorted(r.status_code for r in answers)
    # The one queue place may wait past the 3 s timeout behind the slot on a loaded machine: 504.
    assert len(answers) == 16 and set(statuses) <= {200, 503, 504} and statuses.count(504) <= 1, statuses
    shed = [r for r in answers if r.status_code == 503]
    # At least the request in the slot is answered; whether the queued one is too depends on when
    # the router counts it as assigned (on a loaded 2-core machine it was shed as well).
    assert shed and statuses.count(200) >= 1, statuses
    for r in shed:
        assert "backpressure" in _assert_json_error(r.status_code, r.content, 503)
        assert r.headers["retry-after"] == str(SHED_RETRY_AFTER_S)


# -- DNS rebinding: a request on a loopback address names a loopback host ------------------------


def test_a_request_on_loopback_naming_another_host_is_refused(edge, monkeypatch):
    """A page a local browser opens can point its own domain at 127.0.0.1 and read what Serve
    answers (every household's history); the browser then sends that domain as Host. Old code
    answered it. Addresses, localhost and this machine's names pass (jobs.deploy --host 0.0.0.0
    probes http://0.0.0.0:8000, which arrives on 127.0.0.1), and so do names in NCF_SERVE_HOSTS."""
    import socket

    port = _port(edge)
    rebound = requests.get(f"{edge}/healthz", headers={"Host": f"rebound.example:{port}"}, timeout=30)
    assert "is not this server's" in _assert_json_error(rebound.status_code, rebound.content, 421)
    for name in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", f"0.0.0.0:{port}", socket.gethostname()):
        assert requests.get(f"{edge}/healthz", headers={"Host": name}, timeout=30).status_code == 200, name

    def scope(server: str, host: bytes) -> dict:
        return {"type": "http", "server": (server, 8000), "headers": [(b"host", host)]}

    assert misdirected(scope("127.0.0.1", b"evil.example")) and misdirected(scope("::1", b"evil.example:80"))
    assert misdirected(scope("127.0.1.1", b"evil.example"))  # Debian's address of the hostname
    assert misdirected(scope("::ffff:127.0.0.1", b"evil.example"))  # an IPv4 client of a dual-stack `--host ::`
    assert misdirected(scope("::1", b"[fe80::1]:80")) is None  # an address: no page can rebind one
    assert misdirected(scope("127.0.0.1", b"localhost.:8000")) is None  # the root's dot
    assert misdirected(scope("10.1.2.3", b"evil.example")) is None  # not loopback: exposed as asked
    monkeypatch.setenv(EXTRA_HOSTS_ENV, "recs.internal, other")
    assert misdirected(scope("127.0.0.1", b"Recs.Internal:8000")) is None


def test_a_rebound_host_still_sending_its_body_reads_the_421(edge):
    """The 421 closed the connection without reading the body: the kernel reset it under a
    client still sending (a reverse proxy passing its clients' Host on), which never read why.
    4 MiB in 1 MiB pieces, as the 413's drill: more than the socket buffers hold."""
    body = b"x" * (4 * 2**20)
    with socket.create_connection(("127.0.0.1", _port(edge)), timeout=30) as sock:
        head = _request_head("/recommend", len(body)).replace(b"Host: 127.0.0.1", b"Host: rebound.example")
        sock.sendall(head)
        for start_at in range(0, len(body), 2**20):
            sock.sendall(body[start_at : start_at + 2**20])
        status, headers, answer = _read_response(sock, timeout=30)
    assert "is not this server's" in _assert_json_error(status, answer, 421)
    assert headers.get("connection") == "close"


# -- the edge on its own (plain ASGI, no Serve) -----------------------------------------------------


def _through_edge(app, headers: list, body_messages: list, sent: list | None = None) -> tuple:
    """What EdgeLimits (as in the proxy) sends for one request to ``app``: (messages sent, the
    number of body messages it read). ``sent`` collects them where ``app`` raises."""
    from serve.limits import EdgeLimits

    sent, read = [] if sent is None else sent, []

    async def receive():
        read.append(1)
        return body_messages.pop(0) if body_messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "server": ("127.0.0.1", 8000), "headers": [(b"host", b"127.0.0.1"), *headers]}
    asyncio.run(EdgeLimits(app, json_errors=True, loopback_names_only=True)(scope, receive, send))
    return sent, len(read)


def test_serves_own_503_gets_a_retry_after_and_a_json_body():
    """Serve's proxy answers 503 in plain text without Retry-After when the deployment has no
    replica running (a review of Serve, 2026-12-07): sent as JSON with Retry-After; a 503 that
    has one (load shedding) keeps its own."""
    from serve.limits import STARTING_RETRY_AFTER_S

    def serve_answers(headers):
        async def app(scope, receive, send):
            start = {"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]}
            start["headers"] += headers
            await send(start)
            await send({"type": "http.response.body", "body": b"Deployment 'NCF' is unavailable"})

        return app

    request = [{"type": "http.request", "body": b"", "more_body": False}]
    sent, _ = _through_edge(serve_answers([]), [], request)
    assert sent[0]["status"] == 503 and (b"retry-after", str(STARTING_RETRY_AFTER_S).encode()) in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"error": "Deployment 'NCF' is unavailable"}
    request = [{"type": "http.request", "body": b"", "more_body": False}]  # the first was read
    sent, _ = _through_edge(serve_answers([(b"retry-after", b"1")]), [], request)
    assert [v for k, v in sent[0]["headers"] if k.lower() == b"retry-after"] == [b"1"]


@pytest.mark.faults
def test_the_proxys_own_answers_say_nosniff_and_a_client_gone_mid_body_is_not_handed_on():
    """The proxy's own refusals (413, 408, the 421 that echoes the request's Host) and Serve's
    errors it sends as JSON lacked ``X-Content-Type-Options: nosniff``, which README says every
    answer carries; a request whose client left mid-body was handed on to Serve with half its
    body (a review of serve/, session 68)."""

    async def must_not_run(scope, receive, send):
        raise AssertionError("the request reached the app")

    def nosniff(start) -> bool:
        return (b"x-content-type-options", b"nosniff") in start["headers"]

    sent, _ = _through_edge(must_not_run, [(b"host", b"rebound.example")], [])
    assert sent[0]["status"] == 421 and nosniff(sent[0])
    big = [(b"content-length", str(MAX_BODY_BYTES + 1).encode())]
    sent, _ = _through_edge(must_not_run, big, [{"type": "http.request", "body": b"", "more_body": False}])
    assert sent[0]["status"] == 413 and nosniff(sent[0])

    async def serve_refuses(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Path '/x' not found"})

    sent, _ = _through_edge(serve_refuses, [], [{"type": "http.request", "body": b"", "more_body": False}])
    assert sent[0]["status"] == 404 and nosniff(sent[0])
    half = [{"type": "http.request", "body": b'{"user_id"', "more_body": True}]  # then the client is gone
    sent, read = _through_edge(must_not_run, [(b"content-length", b"40")], half)
    assert sent == [] and read == 2


def test_a_request_serve_ends_without_an_answer_gets_a_json_500():
    """Serve's proxy sends nothing itself for a 500 (a replica that died under the request):
    uvicorn then answered in plain text, past the JSON errors."""

    async def answers_nothing(scope, receive, send):
        await receive()

    sent, _ = _through_edge(answers_nothing, [], [{"type": "http.request", "body": b"", "more_body": False}])
    assert sent[0]["status"] == 500 and (b"content-type", b"application/json") in sent[0]["headers"]
    assert "failed to answer" in json.loads(sent[1]["body"])["error"]

    async def answers(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent, _ = _through_edge(answers, [], [{"type": "http.request", "body": b"", "more_body": False}])
    assert [m.get("status") for m in sent] == [200, None]  # an answer is left alone

    # A plain-text error's start is held for its body (to send it as JSON): one whose body never
    # comes was no answer, yet it counted as one, and uvicorn answered a plain-text 500.
    async def starts_an_error(scope, receive, send):
        headers = [(b"content-type", b"text/plain"), (b"x-request-id", b"r-1")]
        await send({"type": "http.response.start", "status": 500, "headers": headers})

    async def starts_an_error_and_fails(scope, receive, send):
        await starts_an_error(scope, receive, send)
        raise RuntimeError("the replica went away")

    sent, _ = _through_edge(starts_an_error, [], [{"type": "http.request", "body": b"", "more_body": False}])
    assert [m.get("status") for m in sent] == [500, None] and "failed to answer" in json.loads(sent[1]["body"])["error"]
    assert (b"x-request-id", b"r-1") in sent[0]["headers"]  # the request stays traceable in Serve's logs
    assert (b"content-type", b"text/plain") not in sent[0]["headers"]
    sent = []
    with pytest.raises(RuntimeError):
        _through_edge(starts_an_error_and_fails, [], [{"type": "http.request", "body": b"", "more_body": False}], sent)
    assert [m.get("status") for m in sent] == [500, None] and "failed to answer" in json.loads(sent[1]["body"])["error"]


def test_a_body_declared_past_what_the_edge_would_drain_is_refused_without_reading_it():
    """A 1 GiB Content-Length: 64 MiB were read and dropped, then the connection closed anyway."""
    from serve.limits import DRAIN_MAX_BYTES

    chunks = [{"type": "http.request", "body": b"x" * 2**20, "more_body": True} for _ in range(80)]
    sent, read = _through_edge(None, [(b"content-length", str(2**30).encode())], chunks)
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"] and read == 0
    chunks = [{"type": "http.request", "body": b"x" * 2**20, "more_body": i < 2} for i in range(3)]
    sent, read = _through_edge(None, [(b"content-length", str(3 * 2**20).encode())], chunks)
    assert sent[0]["status"] == 413 and read == 3 and 3 * 2**20 < DRAIN_MAX_BYTES  # drained: the client reads it
    assert (b"connection", b"close") not in sent[0]["headers"]


def test_extra_host_names_match_as_the_host_header_is_read(monkeypatch):
    """NCF_SERVE_HOSTS="ncf.local:8000, Api.Example." never matched: the Host header loses its
    port and trailing dot, the listed names did not. A name Serve binds (--host) is added."""
    from serve.limits import proxy_env

    def scope(host: bytes) -> dict:
        return {"type": "http", "server": ("127.0.0.1", 8000), "headers": [(b"host", host)]}

    monkeypatch.setenv(EXTRA_HOSTS_ENV, "ncf.local:8000, Api.Example.")
    for host in (b"ncf.local:8000", b"ncf.local", b"api.example", b"api.example.:8000"):
        assert misdirected(scope(host)) is None, host
    assert misdirected(scope(b"other.example"))
    # A name in another script, listed as written, is matched as browsers send it (punycode);
    # it made every named loopback request a plain-text 500 (UnicodeEncodeError) on the way.
    monkeypatch.setenv(EXTRA_HOSTS_ENV, "recs.internal,日本.example")
    assert misdirected(scope(b"recs.internal:8000")) is None and misdirected(scope(b"xn--wgv71a.example")) is None
    monkeypatch.setenv(EXTRA_HOSTS_ENV, "ncf.local:8000, Api.Example.")
    assert proxy_env("recs.local")[EXTRA_HOSTS_ENV] == "ncf.local:8000, Api.Example.,recs.local"
    for address in ("127.0.0.1", "0.0.0.0", "::1", "localhost"):
        assert proxy_env(address)[EXTRA_HOSTS_ENV] == "ncf.local:8000, Api.Example."
    monkeypatch.delenv(EXTRA_HOSTS_ENV)
    assert EXTRA_HOSTS_ENV not in proxy_env("127.0.0.1") and proxy_env("recs.local")[EXTRA_HOSTS_ENV] == "recs.local"


@pytest.mark.faults
def test_a_deploy_naming_a_loopback_alias_serves_proxy_refuses_is_refused_before_the_rollout(edge, monkeypatch):
    """A redeploy with --host ncf.local (a name for 127.0.0.1) onto a Serve started on every
    address: its proxies refuse that name (421, the DNS-rebinding check), and the deploy's health
    probe, asking by it, met the 421 and undid a good rollout, exit 2 (a review of the deploys,
    session 67). The proxy is asked first, by that name, and the deploy refused before anything
    changes; addresses and localhost pass, unasked."""
    from serve.rollout import check_proxy_takes_name

    port = _port(edge)
    running = ("127.0.0.1", port)
    for host in ("127.0.0.1", "localhost"):
        check_proxy_takes_name(running, host, port)
    check_proxy_takes_name(None, "anything.example", port)  # no Serve: nothing to ask
    alias = "ncf-rebound.example"  # a name this machine resolves to 127.0.0.1, as /etc/hosts would
    resolve = socket.getaddrinfo

    def with_alias(host, *args, **kwargs):
        return resolve("127.0.0.1" if host == alias else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", with_alias)
    with pytest.raises(InputError) as refused:
        check_proxy_takes_name(running, alias, port)
    assert str(refused.value) == (
        f"Serve's proxy at http://127.0.0.1:{port} refuses requests naming {alias} (421: a name for a loopback "
        f"address its proxies did not start with): deploy with --host 127.0.0.1, or start Serve again with "
        f"NCF_SERVE_HOSTS={alias} set for the deploy that starts it"
    )


@pytest.mark.faults
def test_a_rebound_hosts_body_is_drained_within_the_413s_bounds_and_long_lengths_read_as_numbers():
    """The 421's drain (the edge review of 2026-12-06) reads what a 413's would and no more: not
    a body the client waits to be asked for (100-continue), not one past the drain's bound; a
    Content-Length of thousands of zero-padded digits reaches the app as its number."""
    from serve.limits import DRAIN_MAX_BYTES

    async def must_not_run(scope, receive, send):
        raise AssertionError("a refused request reached the app")

    rebound = (b"host", b"rebound.example")
    mib = [{"type": "http.request", "body": b"x" * 2**20, "more_body": True} for _ in range(2)]
    mib.append({"type": "http.request", "body": b"x" * 2**20, "more_body": False})
    for headers, body, reads in (
        ([rebound, (b"content-length", str(3 * 2**20).encode())], mib, 3),  # read, then answered
        ([rebound, (b"content-length", str(DRAIN_MAX_BYTES + 1).encode())], [], 0),  # the drain would give up
        ([rebound, (b"content-length", b"5"), (b"expect", b"100-continue")], [], 0),  # nothing sent yet
    ):
        sent, read = _through_edge(must_not_run, headers, body)
        assert sent[0]["status"] == 421 and read == reads, (headers[1:], read)
        assert "Host" in json.loads(sent[1]["body"])["error"]

    async def echoes_length(scope, receive, send):
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(message["body"])).encode()})

    padded = b"0" * 5000 + b"2"
    sent, _ = _through_edge(echoes_length, [(b"content-length", padded)], [{"type": "http.request", "body": b"{}"}])
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"2"
