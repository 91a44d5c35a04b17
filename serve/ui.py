"""The explorer page: static files (``serve/static/``) served at ``/ui`` when a deployment turns
it on (``AppArgs.ui``, ``jobs.deploy --ui``); off, every ``/ui`` path is a 404.

The page is plain HTML, CSS and JavaScript, no build step: it calls the JSON routes
(``/households``, ``/history``, ``/recommend``, ``/products``) and ``/ui/config`` for the
deployment's defaults. It has no login: it is reachable wherever Serve binds (127.0.0.1 unless
``--host`` says otherwise), like the JSON routes it calls.

The page's files carry a strict Content-Security-Policy: scripts only from this origin (no inline
script, no eval), requests only to this origin, nothing framed (the JSON routes' answers, which a
browser does not render, carry ``nosniff``: :mod:`serve.api`). The page writes data into the
DOM as text only (``textContent``), never as HTML.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from functools import lru_cache
from typing import Dict

from starlette.exceptions import HTTPException
from starlette.responses import Response

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PAGE = "explorer.html"
# The only files served, with their media types: a request cannot name any other path.
ASSETS = {
    PAGE: "text/html; charset=utf-8",
    "explorer.js": "text/javascript; charset=utf-8",
    "explorer.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
OFF_MESSAGE = "the explorer page is off for this deployment (jobs.deploy --ui, or the app argument ui: true)"
# Written in the page's files where their version goes: the page's asset URLs (?v=) and a meta
# tag, and the script's own constant. During a rollout the page and its script may come from
# replicas of two versions; the script compares and loads the page again (explorer.js).
VERSION_MARK = b"__ASSETS_VERSION__"


def _raw(name: str) -> bytes:
    with open(os.path.join(STATIC_DIR, name), "rb") as f:
        return f.read()


@lru_cache(maxsize=None)
def assets_version() -> str:
    """A digest of the page's files, as this replica read them."""
    digest = hashlib.sha256()
    for name in sorted(ASSETS):
        digest.update(name.encode() + b"\0" + _raw(name) + b"\0")
    return digest.hexdigest()[:12]


@lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    return _raw(name).replace(VERSION_MARK, assets_version().encode())


def asset(name: str, enabled: bool) -> Response:
    """The static file ``name`` (one of :data:`ASSETS`) with the security headers; 404 when the
    page is off or the name is not one of them."""
    if not enabled:
        raise HTTPException(status_code=404, detail=OFF_MESSAGE)
    if name not in ASSETS:
        raise HTTPException(status_code=404, detail=f"no such file: /ui/{name}")
    return Response(_read(name), media_type=ASSETS[name], headers=HEADERS)


def to_page(enabled: bool, query: str) -> Response:
    """``/ui/``'s answer: a 308 to the page by a relative URL, its query kept (the page reads its
    question from it). Starlette's own redirect named ``http://<Host>/ui``, which a proxy that
    rewrites ``Host`` or strips a path prefix sent elsewhere. 404 when the page is off."""
    if not enabled:
        raise HTTPException(status_code=404, detail=OFF_MESSAGE)
    return Response(status_code=308, headers={"Location": "../ui" + (f"?{query}" if query else "")})


def config(enabled: bool, default_at: int, model_version: str, max_k: int, max_baskets: int) -> Dict:
    """What the page needs before the first question (``GET /ui/config``): the moment requests
    without ``at`` rank for (epoch seconds in, ISO-8601 UTC out), the model version, the limits."""
    if not enabled:
        raise HTTPException(status_code=404, detail=OFF_MESSAGE)
    at = datetime.fromtimestamp(default_at, tz=timezone.utc).isoformat()
    return {"default_at": at, "model_version": model_version, "max_k": max_k, "max_baskets": max_baskets}
