"""Errors that jobs turn into a one-line message and exit status 2 (75 for :class:`TryLater`),
finding our own errors under what Ray wraps them in, and the exit status of a stopped job."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Optional, Type, TypeVar

E = TypeVar("E", bound=BaseException)


class InputError(Exception):
    """Bad input that stops a job: the message is one line naming the path and what is wrong."""


# user:password@ in a URL (a tracking store's postgresql://u:p@db/x, an https:// server's), the
# password up to the next @ (SQLAlchemy reads postgresql://u:pa/ss@db/x as the password pa/ss)
# but not a port (http://host:8080/path@x is no password), and a database URL's ?password=... .
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^/\s:@]*):(?!\d+(?:[/?#\s]|$))[^\s@]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&\s]*", re.IGNORECASE)


def without_passwords(text: str) -> str:
    """``text`` with the password of every URL in it masked (``postgresql://u:***@db/mlflow``):
    what a line, a log or a printed command says of a store never carries its secret."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", str(text)))


class TryLater(InputError):
    """Nothing wrong with the command, but what it needs is not ready now (another run holds what
    it writes, the GPUs it waited for have not come, the tracking server does not answer): the
    same command later may succeed. Jobs exit with :data:`EXIT_TRY_LATER`, so that a scheduler
    can retry these and not the others."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C where a job's own words for a stop would be wrong: the message says what the stop
    left, and the job says it instead (a KeyboardInterrupt still: no ``except Exception`` takes it
    for a failure)."""


EXIT_TRY_LATER = 75  # sysexits.h's EX_TEMPFAIL: what cron wrappers and Airflow's retries know
EXIT_STOPPED = 128 + signal.SIGTERM  # what a shell reports for a process SIGTERM stopped


def one_line(error: BaseException) -> str:
    """An error's text on one line (at most 300 characters), for a refusal naming the path (a
    decoder's message may quote a newline); its type's name where it has no text."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]


def os_error_words(error: OSError) -> str:
    """An OSError's reason in one line, for a refusal that names the path itself: the errno's
    name and the OS's words (``EACCES: Permission denied``), else its type and text."""
    code = errno.errorcode.get(error.errno, "") if error.errno else ""
    if code and error.strerror:
        return f"{code}: {error.strerror}"
    return f"{type(error).__name__}: {one_line(error)}" if str(error).strip() else type(error).__name__


@contextmanager
def naming(path: str) -> Iterator[None]:
    """An OSError raised in the block without a file name (pyarrow's, a file object's write on a
    full disk) raised again naming ``path``: a job's one line then says which output."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or one_line(e), path) from e


@contextmanager
def said_as(staged: str, final: str) -> Iterator[None]:
    """An OSError naming a file under ``staged`` (a staging directory, removed by the time the
    job's one line is read) raised again naming its place under ``final``, the output."""
    try:
        yield
    except OSError as e:
        name = e.filename if isinstance(e.filename, str) else None
        if name is None or e.errno is None or os.path.commonpath([os.path.abspath(name), staged]) != staged:
            raise
        inside = os.path.relpath(os.path.abspath(name), staged)
        raise OSError(e.errno, e.strerror or one_line(e), os.path.join(final, inside)) from e


@contextmanager
def full_disk_said(path: str, needed_bytes: int) -> Iterator[None]:
    """A native writer's RuntimeError (torch.save's: it swallows the OSError of a full disk)
    raised again as the OSError(ENOSPC) it was, naming ``path`` (the file written), where the
    room the write had (what is free now and what it wrote) was less than ``needed_bytes``; any
    other stays."""
    try:
        yield
    except RuntimeError as e:
        try:
            written = os.path.getsize(path) if os.path.exists(path) else 0
            room = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free + written
        except OSError:
            raise e from None
        if room >= needed_bytes:
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from e


def cannot_access(what: str, error: OSError) -> str:
    """The one line for a file or folder the OS will not read (no permission, a failing disk):
    its bytes may be whole, so it is not called damaged. ``what``: "read PATH", "list FOLDER"."""
    return f"cannot {what} ({os_error_words(error)}): check its access and the disk"


_SIGTERM = {"received": False}  # a plain flag: an Event's lock is not safe to take again in a handler


def exit_on_sigterm():
    """SIGTERM raises SystemExit(:data:`EXIT_STOPPED`), so ``finally`` runs, until the returned
    handler is restored; None where handlers cannot be set (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(*_):
        _SIGTERM["received"] = True
        sys.exit(EXIT_STOPPED)

    return signal.signal(signal.SIGTERM, stop)


def stopped_by_sigterm(error: BaseException) -> bool:
    """Whether ``error`` (a SystemExit) ends a job that SIGTERM stopped: its own exit status, or
    another where the signal came during a ``ray.get`` (Ray turns the handler's SystemExit raised
    inside its wait into one of status 1, and the job ended without a word)."""
    if not isinstance(error, SystemExit):
        return False
    return error.code == EXIT_STOPPED or (error.code == 1 and _SIGTERM["received"])


def chain_of(error: Optional[BaseException]) -> Iterator[BaseException]:
    """``error`` and what it was raised from, outermost first: Ray's ``cause`` (a
    ``RayTaskError``'s original), else Python's ``__cause__`` or ``__context__``; each once."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__


def raised_within(error: Optional[BaseException], kind: Type[E]) -> Optional[E]:
    """The ``kind`` exception a Ray task or actor raised, from under what Ray wrapped it in
    (``RayTaskError(kind)``, whose text is the remote traceback, with the original as its
    cause); None when no such exception is attached."""
    for link in chain_of(error):
        if isinstance(link, kind) and not type(link).__module__.startswith("ray."):
            return link
    return None
