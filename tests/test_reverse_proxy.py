"""deploy/nginx/ncf.conf, the example front proxy for Serve beyond localhost (README "Serving").

Without nginx on this machine the file is parsed here (a small reader of nginx's syntax: blocks,
statements, quoted strings) and its limits compared with Serve's own (serve/limits.py); where
nginx is installed, ``nginx -t`` checks it as well, inside a minimal main config, and real requests go
through nginx running it to a small upstream standing in for Serve.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from typing import Dict, List, Optional, Tuple

import pytest
from helpers import REPO, free_ports

from serve.limits import (
    BODY_TIMEOUT_S,
    CONTROL_HEADERS,
    MAX_BODY_BYTES,
    REQUEST_TIMEOUT_S,
    EdgeLimits,
    misdirected,
)

CONF = os.path.join(REPO, "deploy", "nginx", "ncf.conf")
# The system's nginx (in /usr/sbin, off a user's PATH on Debian), else the one `make nginx`
# unpacks into the venv (make test does).
UNPACKED_NGINX = os.path.join(REPO, ".venv", "tools", "nginx", "usr", "sbin", "nginx")
NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", UNPACKED_NGINX) if os.access(path, os.X_OK)), None
)


def _temp_paths(folder) -> str:
    """Every temporary folder nginx creates, in ``folder``: the unpacked package's binary names
    /var/lib/nginx/..., which only the nginx-common package creates, and nginx makes them even for
    ``nginx -t``."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    return " ".join(f"{kind}_temp_path {folder}/{kind};" for kind in kinds)


ROUTES = {"/recommend": "POST", "/recommend/batch": "POST", "/score": "POST", "/healthz": "GET"}

Statement = Tuple[List[str], list]  # (words, children: a block's statements, [] for a plain one)


def parse(text: str) -> List[Statement]:
    """nginx's syntax: ``words ;`` or ``words { ... }``; '#' comments; quoted words. Raises
    ValueError on an unbalanced brace or a statement without its ';'."""
    tokens = re.findall(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[{};]|[^\s{};'\"]+", re.sub(r"#[^\n]*", "", text))
    stack: List[List[Statement]] = [[]]
    words: List[str] = []
    for token in tokens:
        if token == ";":
            if not words:
                raise ValueError("empty statement")
            stack[-1].append((words, []))
            words = []
        elif token == "{":
            children: List[Statement] = []
            stack[-1].append((words, children))
            stack.append(children)
            words = []
        elif token == "}":
            if words or len(stack) == 1:
                raise ValueError(f"unexpected '}}' after {words}")
            stack.pop()
        else:
            words.append(token)
    if words or len(stack) != 1:
        raise ValueError("unterminated statement or block")
    return stack[0]


def directives(block: List[Statement], name: str) -> List[List[str]]:
    return [words[1:] for words, _ in block if words[0] == name]


def one(block: List[Statement], name: str) -> List[str]:
    (found,) = directives(block, name)
    return found


def seconds(value: str) -> float:
    return float(value.rstrip("s"))


@pytest.fixture(scope="module")
def server() -> List[Statement]:
    with open(CONF) as f:
        top = parse(f.read())
    (server,) = [children for words, children in top if words == ["server"]]
    return server


def test_the_reader_refuses_broken_syntax():
    with pytest.raises(ValueError):
        parse("server { listen 80 }")
    with pytest.raises(ValueError):
        parse("server { listen 80; ")


def test_body_and_timeouts_agree_with_serves_limits(server):
    size = one(server, "client_max_body_size")[0]
    assert size.endswith("k") and int(size[:-1]) * 1024 == MAX_BODY_BYTES
    assert seconds(one(server, "client_body_timeout")[0]) == BODY_TIMEOUT_S
    assert seconds(one(server, "client_header_timeout")[0]) <= BODY_TIMEOUT_S
    # Serve answers its own timeout (504 JSON) before nginx gives up on it.
    assert seconds(one(server, "proxy_read_timeout")[0]) > REQUEST_TIMEOUT_S
    assert one(server, "proxy_request_buffering") == ["on"]  # slow bodies stay here, not on a replica
    assert one(server, "proxy_next_upstream") == ["off"]  # a POST is never replayed


@pytest.mark.faults
def test_rate_limits_and_serves_control_headers_cleared(server):
    assert one(server, "limit_req")[0] == "zone=ncf_requests" and one(server, "limit_conn")
    cleared = {words[0].lower().encode() for words in directives(server, "proxy_set_header") if words[1] == '""'}
    assert CONTROL_HEADERS <= cleared
    # The underscore spellings Ray also reads are dropped by nginx only while it refuses such names.
    assert directives(server, "underscores_in_headers") == [["off"]]  # not left to the http block's
    assert directives(server, "ignore_invalid_headers") == [["on"]]
    # Serve's proxy refuses a request on 127.0.0.1 naming another host (DNS rebinding): nginx
    # names the upstream, and passes the client's name on.
    headers = {words[0].lower(): words[1] for words in directives(server, "proxy_set_header")}
    assert misdirected({"server": ("127.0.0.1", 8000), "headers": [(b"host", headers["host"].encode())]}) is None
    assert headers["x-forwarded-host"] == "$host"


@pytest.mark.faults
def test_control_headers_are_every_request_header_serves_proxy_acts_on():
    """Ray 2.60's proxy reads these (setup_request_context_and_handle, parse_request_timeout_header):
    a rename in a Ray upgrade fails here rather than letting clients steer Serve again. The model
    id was passed until 2026-12-06: each distinct one no replica held stayed in the router's
    fallback set for good, memory on the head any client could grow."""
    from ray.serve._private import constants

    read_by_serve = {
        constants.SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER,
        constants.SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER,
        constants.SERVE_MULTIPLEXED_MODEL_ID,
        constants.SERVE_SESSION_ID,
    }
    assert {name.lower().replace("_", "-").encode() for name in read_by_serve} == CONTROL_HEADERS


@pytest.mark.faults
def test_the_proxy_middleware_drops_control_headers_in_either_spelling():
    seen = {}

    async def app(scope, receive, send):
        seen["headers"] = scope["headers"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    kept = [(b"host", b"127.0.0.1:8000"), (b"x-request-id", b"abc")]  # a request id only labels logs
    control = [
        (b"serve-multiplexed-model-id", b"m1"),
        (b"serve_multiplexed_model_id", b"m2"),
        (b"X-Session-Id", b"s1"),
        (b"x_session_id", b"s2"),
        (b"x_request_timeout_seconds", b"0"),
    ]
    scope = {"type": "http", "method": "POST", "path": "/recommend", "headers": kept + control}
    asyncio.run(EdgeLimits(app, json_errors=True)(scope, receive, send))
    assert seen["headers"] == kept


@pytest.mark.faults
def test_a_websocket_request_is_closed_before_serve_reads_its_headers():
    """Serve's proxy routes WebSocket requests by the same control headers; the middleware let them
    through untouched (the API has no WebSocket route)."""
    called, sent = [], []

    async def app(scope, receive, send):
        called.append(scope)

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": "/recommend", "headers": [(b"serve-multiplexed-model-id", b"m1")]}
    asyncio.run(EdgeLimits(app, json_errors=True, loopback_names_only=True)(scope, receive, send))
    assert called == [] and sent == [{"type": "websocket.close", "code": 1008}]


def test_only_the_api_routes_are_proxied(server):
    locations = {tuple(words[1:]): children for words, children in server if words[0] == "location"}
    proxied = {words[-1]: children for words, children in locations.items() if directives(children, "proxy_pass")}
    assert set(proxied) == set(ROUTES)
    for route, method in ROUTES.items():
        # Any other method: Serve's 405 and Allow (an access rule's 403 stays the rule's).
        (refusal,) = [(w, c) for w, c in proxied[route] if w[0] == "if"]
        assert refusal[0] == ["if", "($request_method", "!=", f"{method})"], refusal[0]
        assert (["add_header", "Allow", method, "always"], []) in refusal[1]
        assert [w[:2] for w, _ in refusal[1] if w[0] == "return"] == [["return", "405"]]
    assert one(locations[("/",)], "return")[0] == "404"
    too_large = one(locations[("@too_large",)], "return")
    assert too_large[0] == "413" and str(MAX_BODY_BYTES) in too_large[1]


def test_the_server_is_port_80s_default_for_ipv4_and_ipv6(server):
    """Debian's stock sites-enabled/default is ``listen 80 default_server`` (and [::]:80) with
    ``server_name _``: a server without default_server on the port would never be chosen, so
    every client would get Debian's page, past all the limits here."""
    listens = directives(server, "listen")
    assert listens and all("default_server" in words[1:] for words in listens), listens
    addresses = [words[0] for words in listens]
    ipv6 = [a for a in addresses if a.startswith("[")]
    ipv4 = [a for a in addresses if not a.startswith("[")]
    assert len(ipv6) == 1 and len(ipv4) == 1, addresses
    assert ipv6[0].rsplit(":", 1)[-1] == ipv4[0].rsplit(":", 1)[-1] == "80", addresses
    with open(CONF) as f:
        header = f.read().split("\n\n", 1)[0]
    assert "/etc/nginx/sites-enabled/default" in header  # to remove: nginx -t refuses two default servers


@pytest.mark.faults
def test_a_client_timeout_has_no_error_page(server):
    """nginx answers nothing on a client timeout (it ends the request, and with
    reset_timedout_connection resets the connection): an error_page 408 would never be used."""
    assert not any("408" in words for words in directives(server, "error_page"))
    assert not [words for words, _ in server if words[:2] == ["location", "@too_slow"]]
    assert one(server, "reset_timedout_connection") == ["on"]


@pytest.mark.skipif(NGINX is None, reason="no nginx (make nginx unpacks one)")
def test_nginx_accepts_the_config(tmp_path):
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid; error_log stderr; events {{}}\n"
        f"http {{ access_log off; {_temp_paths(tmp_path)} include {CONF}; }}\n"
    )
    done = subprocess.run(
        [NGINX, "-t", "-e", "stderr", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Stands in for Serve behind nginx: answers 200 with what reached it (method, path, headers),
    or, asked ``?status=N`` (and ``&retry_after=S``), an error as Serve's proxy sends it: status,
    ``Retry-After`` and a JSON body (:func:`_upstream_error`)."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        status = int(query.get("status", ["200"])[0])
        seen = {"method": self.command, "path": self.path, "headers": dict(self.headers)}
        body = json.dumps(seen if status == 200 else _upstream_error(status)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if "retry_after" in query:
            self.send_header("Retry-After", query["retry_after"][0])
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def _upstream_error(status: int) -> dict:
    return {"error": f"the stand-in's own {status}"}


def _site_on(tmp_path, port: int, upstream_port: int) -> str:
    """ncf.conf as is, but for its port 80 (this test is no root daemon) and Serve's 8000."""
    with open(CONF) as f:
        text = f.read()
    moved = {
        "listen 80 default_server;": f"listen 127.0.0.1:{port} default_server;",
        "listen [::]:80 default_server;": "",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream_port};",
    }
    for old, new in moved.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    site = tmp_path / "ncf.conf"
    site.write_text(text)
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"daemon off; master_process off; pid {tmp_path}/nginx.pid; error_log stderr; events {{}}\n"
        f"http {{ access_log off; {_temp_paths(tmp_path)} include {site}; }}\n"
    )
    return str(main)


def _ask(port: int, method: str, path: str, body: bytes = b"", headers: Optional[Dict[str, str]] = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.headers, answer.read()
    finally:
        connection.close()


def _ask_raw(port: int, request: bytes) -> Tuple[int, bytes, bytes]:
    """``request`` sent as it is (no Host unless it has one): (status, head, body), read to the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


@pytest.fixture
def proxied(tmp_path):
    """nginx running ncf.conf on a free port of 127.0.0.1 in front of :class:`_Upstream`:
    (nginx's port, the upstream server); both stopped when the test ends."""
    if NGINX is None:
        pytest.skip("no nginx (make nginx unpacks one)")
    port, upstream_port = free_ports(2)
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", upstream_port), _Upstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    nginx = subprocess.Popen(
        [NGINX, "-e", "stderr", "-c", _site_on(tmp_path, port, upstream_port), "-p", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):  # up to 10 s for nginx to listen
            assert nginx.poll() is None, nginx.stderr.read().decode()
            try:
                _ask(port, "GET", "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        yield port, upstream
    finally:
        nginx.terminate()
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait(timeout=10)
        upstream.shutdown()  # a second shutdown (a test stopped it) returns at once
        upstream.server_close()


@pytest.mark.faults
def test_nginx_passes_the_api_and_answers_its_refusals_as_serve_does(proxied):
    """Real requests through nginx running ncf.conf: the four routes reach the upstream, Serve's
    control headers do not, and a wrong method, an unknown path, a large body and a stopped
    upstream get JSON answers. A wrong method was a 403 until 2026-12-06; Serve answers 405
    with Allow, so clients saw two codes for one mistake depending on the hop."""
    port, upstream = proxied
    status, _, body = _ask(port, "POST", "/recommend", b"{}", {"X-Request-Timeout-Seconds": "999"})
    seen = json.loads(body)
    assert status == 200 and seen["method"] == "POST" and seen["path"] == "/recommend"
    assert "x-request-timeout-seconds" not in {k.lower() for k in seen["headers"]}
    assert _ask(port, "GET", "/healthz")[0] == 200
    for host in ("10.0.0.5", "[::1]:80", "LocalHost"):  # addresses no page can rebind, and localhost
        assert _ask(port, "GET", "/healthz", headers={"Host": host})[0] == 200, host
    for host in ("rebound.example", "10.0.0.5.rebound.example"):  # a page's own name pointed here
        status, _, body = _ask(port, "POST", "/recommend", b"{}", {"Host": host})
        assert status == 421 and "Host" in json.loads(body)["error"], host
    for method, path, allowed in (
        ("GET", "/recommend", "POST"),
        ("PUT", "/score", "POST"),
        ("POST", "/healthz", "GET"),
    ):
        status, headers, body = _ask(port, method, path, b"{}" if method != "GET" else b"")
        assert (status, headers["Allow"], json.loads(body)) == (405, allowed, {"error": "Method Not Allowed"})
    status, _, body = _ask(port, "GET", "/docs")
    assert status == 404 and json.loads(body)["error"]
    # nginx's own 404s come before its rate limit (ncf.conf's header says so): more than a burst
    # of them leaves a proxied route's allowance whole.
    assert {_ask(port, "GET", "/docs")[0] for _ in range(60)} == {404}
    assert _ask(port, "GET", "/healthz")[0] == 200
    status, _, body = _ask(port, "POST", "/score", b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413 and str(MAX_BODY_BYTES) in json.loads(body)["error"]
    for _ in range(200):  # 20 a second with bursts of 40: a quick run of requests meets the limit
        status, headers, body = _ask(port, "GET", "/healthz")
        if status != 200:
            break
    assert status == 429 and headers["Retry-After"] == "1" and json.loads(body)["error"]
    time.sleep(2.5)  # the burst's allowance back
    upstream.shutdown()
    upstream.server_close()
    status, headers, body = _ask(port, "POST", "/recommend", b"{}")
    assert status == 503 and headers["Retry-After"] == "1" and json.loads(body)["error"]


@pytest.mark.faults
def test_serves_error_answers_pass_through_nginx_unchanged(proxied):
    """Serve's load shedding (503, Retry-After: 5 for a busy replica) and its request timeout
    (JSON 504) reach the client as Serve sent them: nginx's error pages are for its own
    errors, not the upstream's (no proxy_intercept_errors), and must not turn a 503's
    Retry-After: 5 into nginx's 1."""
    port, _ = proxied
    status, headers, body = _ask(port, "POST", "/recommend?status=503&retry_after=5", b"{}")
    assert (status, headers["Retry-After"], json.loads(body)) == (503, "5", _upstream_error(503))
    status, headers, body = _ask(port, "POST", "/score?status=504", b"{}")
    assert (status, headers["Retry-After"], json.loads(body)) == (504, None, _upstream_error(504))


@pytest.mark.faults
def test_serves_control_headers_never_reach_it_through_nginx(proxied):
    port, _ = proxied
    sent = {
        "Serve-Multiplexed-Model-Id": "m1",
        "serve_multiplexed_model_id": "m2",  # Ray reads "_" as "-"; nginx drops such names
        "X-Session-Id": "s1",
        "x_session_id": "s2",
        "X-Request-Disconnect-Disabled": "?1",
        "X-Request-Id": "abc",  # only labels Serve's logs: passed on
    }
    status, _, body = _ask(port, "POST", "/recommend", b"{}", sent)
    reached = {name.lower().replace("_", "-"): value for name, value in json.loads(body)["headers"].items()}
    assert status == 200 and reached["x-request-id"] == "abc"
    assert not {name.encode() for name in reached} & CONTROL_HEADERS, reached


@pytest.mark.faults
def test_nginxs_own_bad_request_answers_are_json(proxied):
    """A header line or a request line past large_client_header_buffers (8 KiB), and a malformed
    request, got nginx's HTML page though every other refusal is JSON."""
    port, _ = proxied
    for answer, status in (
        (_ask(port, "GET", "/healthz", headers={"X-Padding": "a" * 9216}), 400),
        (_ask(port, "GET", "/healthz?" + "a" * 9216), 414),
    ):
        assert answer[0] == status and answer[1]["Content-Type"] == "application/json", answer
        assert json.loads(answer[2])["error"]
    malformed = (
        b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 needs a Host
        b"NOT-HTTP\r\n\r\n",  # no request line: no URI to answer from (a named error page's 500)
        b"GET /healthz HTTP/1.1\r\nHost: rebound.example\r\nHost: rebound.example\r\n\r\n",  # its own 400, not a 421
    )
    for request in malformed:
        status, head, body = _ask_raw(port, request)
        assert status == 400 and b"application/json" in head, (request, head, body)
        assert json.loads(body) == {"error": "malformed request"}, (request, body)
    # The internal URI behind those answers is no route of its own.
    status, _, body = _ask(port, "GET", "/_ncf/bad-request")
    assert (status, json.loads(body)) == (404, {"error": "not found"})


@pytest.mark.faults
def test_a_request_without_host_reaches_the_api(proxied):
    """HTTP/1.0 health checkers may send no Host: nginx's $host is then server_name's "_", which
    got 421 until 2026-12-06."""
    port, _ = proxied
    status, _, body = _ask_raw(port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status == 200 and json.loads(body)["path"] == "/healthz", body
    status, _, body = _ask_raw(port, b"GET /healthz HTTP/1.0\r\nHost: rebound.example\r\n\r\n")
    assert status == 421 and json.loads(body)["error"]
