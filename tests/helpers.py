"""Small helpers shared by test modules (plain functions, not fixtures)."""

import os
import socket
from contextlib import contextmanager

from ncf.evaluate.evaluation import BASELINE_ORDER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every baseline but ALS, whose tuning and fitting the tests that only need the others skip.
BASELINES_WITHOUT_ALS = tuple(b for b in BASELINE_ORDER if b != "als")


def replica_names(app: str, deployment: str) -> set:
    """The named actors of a Serve deployment's replicas now (a replaced replica has a new name)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list:
    """``count`` distinct free ports (held together while chosen, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def model_health(health: dict) -> dict:
    """A /healthz answer without ``data_end`` (the histories' last purchase) and ``replica`` (the
    one that answered), both checked apart."""
    return {k: v for k, v in health.items() if k not in ("data_end", "replica")}


def sealed_copy(model_dir: str, destination: str, version: str) -> str:
    """A copy of a model directory with another version in config.json, sealed again (the
    checksum manifest rewritten, as saving would have): a second model to roll out."""
    import json
    import shutil

    from ncf.model.directory import CONFIG, METRICS
    from ncf.model.integrity import write_manifest

    shutil.copytree(model_dir, destination)
    with open(os.path.join(destination, CONFIG)) as f:
        config = json.load(f)
    config["version"] = version
    with open(os.path.join(destination, CONFIG), "w") as f:
        json.dump(config, f)
    write_manifest(destination, unsealed=[METRICS])
    return destination


# Headless Chromium (Debian's package, `make browser`): no network beyond the page, no first-run
# work, a fresh profile per launch.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: `make test` installs it (make browser)"
    return path


def launch_chromium(playwright, profile_dir, width: int = 1200, height: int = 900):
    """A Playwright browser context on Debian's Chromium (no browser download) with a fresh
    profile in ``profile_dir``."""
    return playwright.chromium.launch_persistent_context(
        str(profile_dir),
        executable_path=chromium_path(),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": width, "height": height},
    )


def readline_within(stream, seconds: float = 300) -> str:
    """A child process's next line, or an AssertionError after ``seconds``: a plain readline()
    of a hung child would hang the test until pytest-timeout ends the whole run (its thread
    method exits the process), leaving the child and its cluster running. The reader thread ends
    when the caller kills the child (its pipe closes)."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=seconds)
    except queue.Empty:
        raise AssertionError(f"the child process printed no line within {seconds:g} s") from None


@contextmanager
def answering_server(answer):
    """A plain HTTP server on 127.0.0.1 (its base URL yielded) whose every GET and POST is
    answered ``answer(path) -> (status, body bytes)``; stopped on leaving."""
    import http.server
    import threading

    class Answers(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = answer(self.path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
