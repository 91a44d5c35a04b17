"""deploy/nginx/ncf.conf, the example front proxy for Serve beyond localhost (README "Serving").

Without nginx on this machine the file is parsed here (a small reader of nginx's syntax: blocks,
statements, quoted strings) and its limits compared with Serve's own (serve/limits.py); where
nginx is installed, ``nginx -t`` checks it as well, inside a minimal main config, and real requests go
through nginx running it to a small upstream standing in for Serve.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest
from helpers import REPO, free_ports

from serve.limits import BODY_TIMEOUT_S, CONTROL_HEADERS, MAX_BODY_BYTES, REQUEST_TIMEOUT_S, misdirected

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
    # Serve's proxy refuses a request on 127.0.0.1 naming another host (DNS rebinding): nginx
    # names the upstream, and passes the client's name on.
    headers = {words[0].lower(): words[1] for words in directives(server, "proxy_set_header")}
    assert misdirected({"server": ("127.0.0.1", 8000), "headers": [(b"host", headers["host"].encode())]}) is None
    assert headers["x-forwarded-host"] == "$host"


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
    """Stands in for Serve behind nginx: answers 200 with what reached it (method, path, headers)."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"method": self.command, "path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


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


@pytest.mark.faults
@pytest.mark.skipif(NGINX is None, reason="no nginx (make nginx unpacks one)")
def test_nginx_passes_the_api_and_answers_its_refusals_as_serve_does(tmp_path):
    """Real requests through nginx running ncf.conf: the four routes reach the upstream, Serve's
    control headers do not, and a wrong method, an unknown path, a large body and a stopped
    upstream get JSON answers. A wrong method was a 403 until 2026-12-06; Serve answers 405
    with Allow, so clients saw two codes for one mistake depending on the hop."""
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
    finally:
        nginx.terminate()
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait(timeout=10)
        upstream.shutdown()
        upstream.server_close()
