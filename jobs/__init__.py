"""The command-line jobs (``python -m jobs.NAME``).

Run as a command, a job imports torch, Ray and MLflow before its ``main`` (seconds): a Ctrl-C
then ended in a KeyboardInterrupt traceback of an import. Until :func:`started`, which each job
calls as its ``main`` begins, a Ctrl-C is one line and exit 130; imported otherwise (tests, the
demo's stages, a notebook), nothing here changes how Ctrl-C works.
"""

from __future__ import annotations

import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    sys.stderr.write("error: interrupted (Ctrl-C) while the job started; nothing was done\n")
    raise SystemExit(130)


def started() -> None:
    """Gives Ctrl-C back to Python's KeyboardInterrupt, which the job answers in its own words."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# `python -m jobs.NAME` imports this package first, with sys.argv[0] "-m" until the job's module runs.
if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)
