"""The edge of the HTTP API: limits every request meets before any application code runs.

:class:`EdgeLimits` is plain ASGI (no Ray, no torch: it is imported by Serve's HTTP proxy). It
runs twice: in the **proxy**, through Serve's hook for proxy middlewares
(``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, set for the proxy by :mod:`serve.launch` and
``serve/config.yaml``), so that a bad body is refused before Serve queues it for a replica or
holds a replica slot; and again in the **replica** (:func:`serve.api.create_app`), so that the
body size and the body deadline hold even where the proxy hook is not configured (Serve 2.60's
proxy hands the request to a replica at once and streams the body to it); the control headers
are stripped only in the proxy, which acts on them before a replica sees the request.

What it does, per request:

* **Body size.** A declared ``Content-Length`` over ``max_body_bytes`` is refused at once; a
  chunked body is read up to the limit (never more is held in memory) and refused past it. The
  refusal is a 413 JSON answer the client can read: the rest of the body is first read and
  dropped (up to ``DRAIN_MAX_BYTES`` within ``DRAIN_TIMEOUT_S``), because a server that
  answers and closes while the client is still sending makes the kernel reset the connection,
  and the client then sees "connection reset" instead of the answer (what Python's ``urllib``
  saw before). A client that announced ``Expect: 100-continue`` gets the 413 without sending
  anything.
* **Body read deadline.** The whole body must arrive within ``body_timeout_s`` of the headers;
  a slower client gets a 408 JSON answer and the connection is closed. Since the proxy's copy
  reads the body before the request is handed on, a slow client never holds a replica (without
  the proxy hook it holds one for up to ``body_timeout_s``).
* **Serve's control headers** (``x-request-timeout-seconds``, ``x-request-disconnect-disabled``,
  ``serve-multiplexed-model-id``, ``x-session-id``) are dropped from client requests, in either
  spelling (Ray reads the last two with ``_`` for ``-``): the first two would let any client lift
  the request timeout; a model id steers routing, and each distinct one no replica holds stays in
  the proxy's router for good (a set Ray never prunes: memory a client could grow without end);
  a session id steers routing under a session-affinity router. ``x-request-id`` passes: Serve
  only labels the request's logs with it and sends it back.
* **Loopback names** (``loopback_names_only=True``, the proxy): a request that arrived on a
  loopback address must name an address (``127.0.0.1``, ``[::1]``, ``0.0.0.0``...),
  ``localhost``, this machine's own name, or a name in ``NCF_SERVE_HOSTS``; else 421. A web
  page a local browser opens can point its own domain at 127.0.0.1 (DNS rebinding) and read the
  answers, households' histories included; the browser then sends that domain, never an address
  or this machine's name. nginx in front sends ``Host: 127.0.0.1:8000``. The body is read and
  dropped first, within the 413's limits, so that a client still sending reads the 421.
* **JSON errors** (``json_errors=True``, the proxy): Serve's own error answers are plain text;
  they become ``{"error": ...}`` like the application's, and a request Serve ends without an
  answer (a replica died under it), or with an error's start but not its body, gets a JSON 500
  rather than uvicorn's plain text. Serve's request timeout, which Serve answers with 408,
  becomes 504: 408 here means the client was too slow, 504 that the server was.
  Load shedding (``max_queued_requests``) answers 503 with ``Retry-After``.

Not here: the request line and headers. They are parsed by uvicorn before any ASGI code runs,
and Serve's uvicorn bounds neither their size nor their time (a client may send headers for
ever); malformed framing (a ``Content-Length`` that is not a number) gets uvicorn's own
plain-text 400. Keep Serve on 127.0.0.1 or behind a reverse proxy such as
``deploy/nginx/ncf.conf``, which bounds both.

Example::

    app = EdgeLimits(app, max_body_bytes=64 * 1024, body_timeout_s=10)
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import os
import socket
from typing import Dict, List, Optional

MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_S = 10.0  # the whole body, after the headers
DRAIN_MAX_BYTES = 64 * 2**20  # an oversized body is read and dropped up to this...
DRAIN_TIMEOUT_S = 5.0  # ...for at most this long, then the connection is closed
REQUEST_TIMEOUT_S = 30.0  # Serve's end-to-end request timeout (http_options.request_timeout_s)
MAX_LENGTH_DIGITS = 20  # 2**64 has 20 digits: a longer Content-Length (less its leading zeros) is too large
NOT_A_NUMBER = -1  # what _declared_length makes of a Content-Length that is no number
MAX_ERROR_BYTES = 2048  # the most of a plain-text error kept in its JSON form
# A request Serve gave up on without an answer (a replica that died under it: out of memory, a
# lost node): uvicorn would answer a plain-text 500.
SERVER_FAILED = "the server failed to answer this request (a replica stopped?); try again"

# Request headers Serve's proxy acts on (ray/serve/_private/proxy.py, setup_request_context_and_handle;
# constants.py), meant for a trusted load balancer, never a client; compared with "_" read as "-",
# as Ray reads the model and session ids. The session id's name is Ray's setting
# (RAY_SERVE_SESSION_ID_HEADER_KEY, x-session-id unless set; nginx's line must name the same).
CONTROL_HEADERS = frozenset(
    {
        b"x-request-timeout-seconds",
        b"x-request-disconnect-disabled",
        b"serve-multiplexed-model-id",
        os.environ.get("RAY_SERVE_SESSION_ID_HEADER_KEY", "x-session-id").lower().replace("_", "-").encode(),
    }
)

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
EXTRA_HOSTS_ENV = "NCF_SERVE_HOSTS"  # comma-separated names a loopback request may also carry

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "serve.limits:proxy_middlewares"


def proxy_middlewares() -> List:
    """What Serve's HTTP proxy calls (through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)
    for the middlewares it wraps itself in."""
    from starlette.middleware import Middleware

    return [Middleware(EdgeLimits, json_errors=True, loopback_names_only=True)]


def proxy_env(host: Optional[str] = None) -> Dict[str, str]:
    """Environment that makes Serve's proxy run :class:`EdgeLimits`: given to the Serve
    controller (``controller_options.runtime_env.env_vars``), whose proxies inherit it (with
    ``NCF_SERVE_HOSTS`` where the deploying process has it, and ``host``, the name Serve binds,
    where it is a name: the server's own address, which its clients will send)."""
    names = _listed_names()
    if host and ip_address_of(host) is None and host.lower() not in LOOPBACK_NAMES:
        names.append(host)
    return {PROXY_CALLBACK_ENV: PROXY_CALLBACK, **({EXTRA_HOSTS_ENV: ",".join(names)} if names else {})}


def is_control_header(name: bytes) -> bool:
    """Whether a request header is one of Serve's :data:`CONTROL_HEADERS`, spelt with ``-`` or ``_``."""
    return name.lower().replace(b"_", b"-") in CONTROL_HEADERS


def _host_name(host: bytes) -> str:
    """``Host`` header -> its name, lower case, without port or brackets."""
    return _name_of(host.decode("latin-1"))


def _name_of(text: str) -> str:
    """A host as written (a ``Host`` header, a listed name) -> its name, lower case, without
    port, brackets or the root's dot."""
    text = text.strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return (text.rsplit(":", 1)[0] if text.count(":") == 1 else text).rstrip(".")  # "localhost." is localhost


def ip_address_of(text: Optional[str]):
    """An IP address (an IPv4-mapped IPv6 one as its IPv4: a dual-stack socket's view of an
    IPv4 client), or None for a name."""
    try:
        ip = ipaddress.ip_address((text or "").split("%")[0])
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


@functools.lru_cache(maxsize=1)
def _own_names() -> frozenset:
    """This machine's names (Debian maps its hostname to 127.0.1.1): a page cannot rebind them."""
    return frozenset(n.lower() for n in {socket.gethostname(), socket.getfqdn()} if n)


def _extra_names() -> set:
    """The names ``NCF_SERVE_HOSTS`` adds (read when asked: only a request naming none of the others)."""
    return {_as_sent(_name_of(n)) for n in _listed_names()}


def _listed_names() -> List[str]:
    """``NCF_SERVE_HOSTS``'s entries as written."""
    return [n for n in os.environ.get(EXTRA_HOSTS_ENV, "").split(",") if n.strip()]


def _as_sent(name: str) -> str:
    """A listed name as a browser sends it: a name in another script as its punycode
    (``日本.example`` -> ``xn--wgv71a.example``); one IDNA refuses as it is."""
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def misdirected(scope) -> Optional[str]:
    """Why a request that arrived on a loopback address names another host (DNS rebinding), or
    None where it may pass."""
    server = scope.get("server") or (None, None)
    host = dict(scope.get("headers") or []).get(b"host")
    arrived_on = ip_address_of(server[0])
    if host is None or arrived_on is None or not arrived_on.is_loopback:
        return None
    name = _host_name(host)
    if ip_address_of(name) is not None or name in LOOPBACK_NAMES or name in _own_names() or name in _extra_names():
        return None
    return (
        f"Host {host.decode('latin-1')[:100]!r} is not this server's: a request on {server[0]} names an address, "
        f"localhost or this machine ({EXTRA_HOSTS_ENV} adds names)"
    )


class EdgeLimits:
    """ASGI middleware: body size, body read deadline, no control headers, JSON errors."""

    def __init__(
        self,
        app,
        max_body_bytes: int = MAX_BODY_BYTES,
        body_timeout_s: float = BODY_TIMEOUT_S,
        json_errors: bool = False,
        loopback_names_only: bool = False,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.json_errors = json_errors
        self.loopback_names_only = loopback_names_only
        if loopback_names_only:
            _own_names()  # a reverse lookup: at start-up, not on a request's event loop

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            # The API has no WebSocket route, and Serve's proxy routes one by the same control
            # headers (a model id kept for good): refused before it reads them (403 to the client).
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers") or [] if not is_control_header(k)]
        scope = {**scope, "headers": headers}
        named = dict(headers)
        declared = _declared_length(named.get(b"content-length"))
        wrong_host = misdirected(scope) if self.loopback_names_only else None
        if wrong_host is not None:
            # The body is read and dropped first, as for a 413: closing on a client still sending
            # makes the kernel reset the connection, and the client never reads the 421.
            if _worth_draining(named, declared):
                await _drain(receive, DRAIN_MAX_BYTES, DRAIN_TIMEOUT_S)
            await _answer(send, 421, wrong_host, close=True)
            return
        if declared == NOT_A_NUMBER:
            # Defence only: uvicorn's parsers (httptools, h11) refuse such framing before any ASGI
            # code runs, with their own plain-text 400.
            await _answer(send, 400, "Content-Length is not a number", close=True)
            return
        if declared is not None and declared > self.max_body_bytes:
            if _worth_draining(named, declared):
                await self._refuse_too_large(receive, send)
            else:
                await _answer(send, 413, self._too_large(), close=True)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        messages, size = [], 0
        while True:  # ends at the last body chunk, at a disconnect, past the limit or the deadline
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                await _answer(send, 408, f"request body not received within {self.body_timeout_s:g} s", close=True)
                return
            if message["type"] == "http.disconnect":  # the client left mid-body: nothing to answer
                return
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await self._refuse_too_large(receive, send, more=message.get("more_body", False))
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        if not self.json_errors:
            await self.app(scope, replayed, send)
            return
        answering = _JsonErrors(send)
        try:
            await self.app(scope, replayed, answering)
        except Exception:
            if not answering.sent:
                await _answer(send, 500, SERVER_FAILED, extra_headers=answering.kept_headers())
            raise
        # Serve's proxy answers nothing itself for a 500; an error answer held for its body that
        # never came is no answer either (uvicorn would send its own plain-text 500).
        if not answering.sent:  # the held start's headers kept (its x-request-id, for one)
            await _answer(send, 500, SERVER_FAILED, extra_headers=answering.kept_headers())

    def _too_large(self) -> str:
        return f"request body larger than {self.max_body_bytes} bytes"

    async def _refuse_too_large(self, receive, send, more: bool = True) -> None:
        """413 once the rest of the body is read and dropped (so the client reads the answer),
        or at once with the connection closed when the rest is too big or too slow to drop."""
        drained = not more or await _drain(receive, DRAIN_MAX_BYTES, DRAIN_TIMEOUT_S)
        await _answer(send, 413, self._too_large(), close=not drained)


def _declared_length(value: Optional[bytes]) -> Optional[int]:
    """A ``Content-Length`` value -> its number of bytes (None without one, ``NOT_A_NUMBER``).
    Leading zeros go before ``int()``, which refuses more than 4,300 digits: httptools passes
    ``000...02`` of any length on as 2, and ``int()`` raising here made uvicorn answer a
    plain-text 500. A longer number than any 64-bit length is capped past every limit (413)."""
    if value is None:
        return None
    digits = value.strip()
    if not digits.isdigit():
        return NOT_A_NUMBER
    digits = digits.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= MAX_LENGTH_DIGITS else 10**MAX_LENGTH_DIGITS


def _worth_draining(named: Dict[bytes, bytes], declared: Optional[int]) -> bool:
    """Whether to read and drop a request's body before refusing it. Not where the client waits
    for ``100 Continue`` (it sent nothing, and reading would ask it to), where the length is no
    number (nothing to count), or past what the drain reads anyway (it would give up)."""
    if named.get(b"expect", b"").lower() == b"100-continue":
        return False
    return declared is None or 0 <= declared <= DRAIN_MAX_BYTES


async def _drain(receive, max_bytes: int, timeout_s: float) -> bool:
    """Reads and drops the rest of a request body; True when it all came within the limits."""
    loop = asyncio.get_running_loop()
    deadline, size = loop.time() + timeout_s, 0
    while size <= max_bytes:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            return False
        if message["type"] != "http.request":
            return False  # the client left
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


async def _answer(send, status: int, message: str, close: bool = False, extra_headers=()) -> None:
    """A JSON error answer, ``nosniff`` as the app's are (:class:`NoSniff`): a 421's echoes the
    request's ``Host``."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += list(extra_headers) + ([(b"connection", b"close")] if close else [])
    if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
        headers.append((b"x-content-type-options", b"nosniff"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# A replica starting loads its model in seconds (Complete Journey) to a minute or two (a 10M x 1M
# state): Retry-After of the app's "no model loaded yet" and of Serve's "no replica running".
STARTING_RETRY_AFTER_S = 5


class _JsonErrors:
    """Wraps ``send``: a plain-text error answer (Serve's own: 404, 408, 503) is re-sent as
    ``{"error": text}``, keeping its other headers (Retry-After, X-Request-ID); Serve's request
    timeout (408) becomes 504. Everything else passes through untouched."""

    def __init__(self, send) -> None:
        self.send = send
        self.start: Optional[dict] = None
        self.body = b""
        self.sent = False  # whether an answer's start went out (one held for its body did not)

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers") or []).get(b"content-type", b"")
            if message["status"] >= 400 and not content_type.startswith(b"application/json"):
                self.start = message  # held until its body is complete
                return
        elif self.start is not None and message["type"] == "http.response.body":
            self.body = (self.body + message.get("body", b""))[:MAX_ERROR_BYTES]
            if not message.get("more_body", False):
                await self._send_as_json()
            return
        self.sent = self.sent or message["type"] == "http.response.start"
        await self.send(message)

    def kept_headers(self) -> list:
        """The held start's headers but those of its plain-text body (none when none is held)."""
        headers = [] if self.start is None else self.start.get("headers") or []
        return [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]

    async def _send_as_json(self) -> None:
        status = 504 if self.start["status"] == 408 else self.start["status"]
        text = self.body.decode("utf-8", "replace").strip() or f"HTTP {status}"
        headers = self.kept_headers()
        if status == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
            # Serve's own "deployment unavailable" (no replica running: all replaced at once, or
            # starting) says no time; a client that honours Retry-After needs one.
            headers.append((b"retry-after", str(STARTING_RETRY_AFTER_S).encode()))
        self.sent = True
        await _answer(self.send, status, text, extra_headers=headers)


class NoSniff:
    """ASGI middleware: every answer of the app's routes and their refusals says
    ``X-Content-Type-Options: nosniff`` (not a bug's bare 500: Starlette sends it outside the
    added middleware, plain text that echoes nothing; the explorer's
    files set it with their policy, :mod:`serve.ui`; the JSON answers and errors, which echo a
    request's text, set it here), so that no browser reads a JSON answer as another type."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_header(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_header)
