"""deploy/nginx/ncf.conf, the example front proxy for Serve beyond localhost (README "Serving").

Without nginx on this machine the file is parsed here (a small reader of nginx's syntax: blocks,
statements, quoted strings) and its limits compared with Serve's own (serve/limits.py); where
nginx is installed, ``nginx -t`` checks it as well, inside a minimal main config.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import List, Tuple

import pytest
from helpers import REPO

from serve.limits import BODY_TIMEOUT_S, CONTROL_HEADERS, MAX_BODY_BYTES, REQUEST_TIMEOUT_S, misdirected

CONF = os.path.join(REPO, "deploy", "nginx", "ncf.conf")
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
        (limit,) = [(w, c) for w, c in proxied[route] if w[0] == "limit_except"]
        assert limit[0] == ["limit_except", method] and limit[1] == [(["deny", "all"], [])]
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


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_config(tmp_path):
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid; error_log stderr; events {{}}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}; include {CONF}; }}\n"
    )
    done = subprocess.run(["nginx", "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
