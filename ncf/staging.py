"""Stage, then swap: a directory other jobs read is never deleted before its replacement exists.

Every job that writes such a directory (DATA from preprocessing, MODEL from training, a
batch-scoring partition) builds the new one beside it and swaps it in at the end::

    with replacing("artifacts/data/cj", marker="stats.json", inputs=log_paths) as stage:
        ...  # write everything under ``stage``
    # now artifacts/data/cj is the new directory; had the block raised, the old one would be untouched

Pieces, each usable alone (``ncf.batch.commit`` builds the partition commit from them):

* :func:`exclusive`: one run at a time per target (``fcntl.flock`` on a lock file that is never
  deleted, so two runs can never hold locks on two different files of the same name). The
  kernel drops the lock when its process dies, so on a local disk a held lock means a live run;
  on NFS (where Linux takes ``flock`` as a lock of the whole file on the server) a dead client's
  lock lasts until its lease ends (about 90 s), and the refusal is the same "try later".
* :func:`swap`: the journaled replacement of ``final`` by a complete ``staged`` directory.
  POSIX cannot rename a directory over a non-empty one, so the swap is two renames (``final``
  to ``parked``, ``staged`` to ``final``); a journal written before the first says what is under
  way, and :func:`roll_forward` (which every later run calls first) finishes a swap a dead
  process left half done. The staged tree is fsynced before the journal is written and every
  renamed entry's directory after the rename, so the journal never names a directory whose
  files a power cut could still lose.
* blue/green: when the target is a symlink, the new directory is written beside the link's
  target under a new name and the link is repointed atomically (a new link renamed over it).
  The directory the link pointed at is never deleted (roll back by pointing the link at it).

Layout next to a target ``PARENT/NAME``: ``.NAME.lock`` (kept), ``.NAME.swap.json`` (only mid-swap),
``.NAME.staging-RUN`` (a run in progress), ``.NAME.old-RUN`` (the replaced directory, mid-swap, or
after it where it could not be deleted: the next run sweeps it).
Hidden names: readers that list PARENT (pyarrow, Ray Data, ``resolve_files``) skip them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import socket
import stat
import sys
import time
import uuid
from contextlib import ExitStack, contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

from ncf.errors import InputError, Interrupted, TryLater, os_error_words
from ncf.jsonio import fsync_parent, fsync_path, is_temporary_of, read_json, write_json

# Fault drills (tests only): NCF_FAULT=between-renames makes the process exit at once after the
# first rename of a swap, as a kill or power cut there would (status FAULT_EXIT, nothing cleaned).
FAULT_ENV = "NCF_FAULT"
BETWEEN_RENAMES = "between-renames"
FAULT_EXIT = 86


def _fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os._exit(FAULT_EXIT)


class Busy(TryLater):
    """Another live run holds the target's lock (a one-line error, exit status 75 from the jobs)."""


class ReadOnlyLock(InputError):
    """The target's lock file is another account's, which this one may only read, on a file
    system that locks only files open for writing (NFS): a writer is refused, a reader goes on."""


# -- durability -------------------------------------------------------------------------------------


def fsync_tree(root: str) -> None:
    """Flushes every file and directory under ``root`` (children before their directory)."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                fsync_path(path)
        fsync_path(directory)


def remove(path: str) -> None:
    """Removes a file, symlink or directory tree; absent is fine."""
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


# -- one run at a time ------------------------------------------------------------------------------


@contextmanager
def exclusive(lock_path: str, what: str, wait_s: float = 0.0, mode: Optional[int] = None) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``lock_path`` for the block.

    With ``wait_s`` 0 a held lock refuses at once; otherwise it is retried for up to ``wait_s``
    seconds. Raises :class:`Busy` (one line: the target, the holder's pid and host). A lock file
    created here gets ``mode`` where given, the umask aside (a file several users share; else
    0o644 less the umask); one this user may only read is locked all the same on a local disk
    (``flock`` needs no write access there), its holder line not written. NFS locks only a file
    open for writing: there such a file is refused in one line (EBADF) naming the fix.
    """
    os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
    writable = True
    # Never through a link: the holder line truncates the file, and a link planted at the lock's
    # name would have emptied whatever it points to that this account may write.
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO planted there must not block the open
    try:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | flags, 0o644 if mode is None else mode)
            if mode is not None:
                try:
                    os.fchmod(fd, mode)
                except OSError:  # a file system without modes: as created
                    pass
        except FileExistsError:
            try:
                fd = os.open(lock_path, os.O_RDWR | flags)
            except PermissionError:  # another user's lock file
                fd, writable = os.open(lock_path, os.O_RDONLY | flags), False
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{lock_path}: the lock file of {what} is a symbolic link; remove it") from None
        if e.errno == errno.EISDIR:
            raise InputError(f"{lock_path}: the lock file of {what} is not a regular file; remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{lock_path}: the lock file of {what} is not a regular file; remove it")
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno == errno.EBADF and not writable:
                    raise ReadOnlyLock(
                        f"{lock_path}: the lock file of {what} is another account's, which this account may only "
                        "read, and this file system (NFS) locks only files open for writing; make it writable by "
                        "every account that runs jobs here (a group they share: chmod g+w), or remove it"
                    ) from None
                if not isinstance(e, BlockingIOError):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    raise Busy(
                        f"{what}: another run is writing it (lock {lock_path} held by {holder}); "
                        "not started, try again when that run has finished"
                    ) from None
                time.sleep(0.2)
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (see the module docstring)


# -- the journaled swap -----------------------------------------------------------------------------


PATHS = ("final", "staged", "parked")  # what a swap's journal names
RELATIVE = "relative_to_journal"


def swap(staged: str, final: str, parked: str, journal: str, root: Optional[str] = None) -> None:
    """Replaces ``final`` (absent, a directory or a file) by the complete directory ``staged``.

    ``parked`` (where the old ``final`` waits until the new one is in place) and ``staged`` must
    be on ``final``'s file system. The caller holds the target's lock. ``root``: the folder all
    three lie in (:func:`journal_record`).
    """
    fsync_tree(staged)
    fsync_parent(staged)
    # Absolute, as older code reads them, and relative to the journal, which this code reads: a
    # tree moved (or mounted elsewhere) after a crash still finds them.
    base = os.path.dirname(os.path.abspath(journal))
    paths = {k: os.path.abspath(p) for k, p in zip(PATHS, (final, staged, parked))}
    record = {**paths, RELATIVE: {k: os.path.relpath(p, base) for k, p in paths.items()}, "started": time.time()}
    checked = journal_record(journal, root, record)  # a swap only ever writes what a roll-forward accepts
    write_json(journal, record)
    fsync_parent(journal)
    _finish(checked, journal)


def roll_forward(journal: str, root: Optional[str] = None) -> Optional[Dict]:
    """Finishes the swap a dead run left (see :func:`swap`); returns its record, its paths
    absolute, or None when there was none. Idempotent: a crash during the roll-forward is
    finished by the next one."""
    if not os.path.exists(journal):
        return None
    record = journal_record(journal, root)
    _finish(record, journal)
    return record


def journal_record(journal: str, root: Optional[str] = None, record: Optional[Dict] = None) -> Dict:
    """A swap's journal (``record``: as read from it), its paths absolute: written relative to
    the journal's directory (a journal of older code holds absolute ones, taken as they are).

    Refuses (InputError) a journal naming a path outside the swap's own: a roll-forward renames
    and deletes what the journal names, so one planted in a folder several accounts write (or
    left by a tree moved since) would move or delete another folder with the rights of whoever
    reads next. Without ``root``, the swap is :func:`replacing`'s: ``NAME`` (from the journal's
    name ``.NAME.swap.json``), its ``.NAME.staging-`` and ``.NAME.old-`` entries, beside the
    journal. With ``root``: anything whose folder, symlinks resolved, is in ``root``."""
    record = read_json(journal) if record is None else record
    base = os.path.dirname(os.path.abspath(journal))
    written = record.get(RELATIVE) or record  # older journals: absolute paths alone
    try:
        paths = {k: os.path.normpath(os.path.join(base, written[k])) for k in PATHS}
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"{journal}: a swap's journal without its three paths; remove it") from None
    if RELATIVE not in record and root is None:
        # Older code wrote absolute paths alone, always of entries beside the journal: a tree moved
        # since names them where they were (refused, its advice to remove the journal lost both).
        paths = {
            k: p if _swaps_own(p, journal, root) else os.path.join(base, os.path.basename(p)) for k, p in paths.items()
        }
    for path in paths.values():
        if not _swaps_own(path, journal, root):
            raise InputError(
                f"{journal}: names {path}, outside the swap it journals; not followed "
                "(check who wrote it, then remove it)"
            )
    return {**record, **paths}


def _swaps_own(path: str, journal: str, root: Optional[str]) -> bool:
    folder, entry = os.path.split(path)
    if root is not None:
        return entry not in ("", ".", "..") and within(folder, root)
    journal_folder, journal_name = os.path.split(os.path.abspath(journal))
    target = re.fullmatch(r"\.(.+)\.swap\.json", journal_name)
    if target is None or not os.path.isdir(folder) or not os.path.samefile(folder, journal_folder):
        return False
    names = _siblings(folder, target.group(1))
    return entry == target.group(1) or entry.startswith((names["staging"], names["parked"]))


def _finish(record: Dict, journal: str) -> None:
    """Every step checks what is there first, so it completes a swap stopped at any point.

    The staged directory is complete by construction (the journal is written after it), so
    the swap always rolls forward; only when the staged directory is gone and ``final`` too
    (which this module never does) does the parked one go back.
    """
    final, staged, parked = record["final"], record["staged"], record["parked"]
    if os.path.lexists(staged):
        if os.path.lexists(final):
            if os.path.lexists(parked):
                raise RuntimeError(f"{journal}: cannot finish the swap: {final}, {staged} and {parked} all exist")
            os.rename(final, parked)
            fsync_parent(final)
            _fault_point(BETWEEN_RENAMES)
        os.rename(staged, final)
        fsync_parent(final)
        fsync_parent(staged)
    elif not os.path.lexists(final) and os.path.lexists(parked):
        os.rename(parked, final)
        fsync_parent(final)
    # The swap is done once the journal is gone; the old tree is garbage under a name the next run
    # sweeps (remove_dead_runs, clean_stale). Removed before the journal, a tree that cannot be
    # deleted (a read-only folder copied into a model, an NFS file still open) failed this run
    # after its output was in place, and every later run's roll-forward on the same step.
    os.remove(journal)
    try:
        fsync_parent(journal)
    except OSError as e:
        # The swap is done: raised here, the run reported an error after its output was in place
        # and skipped the old tree's removal. A journal brought back by a crash finds nothing left
        # to do but this.
        print(
            f"[staging] the swap into {final} is done; its journal's removal may not be on disk ({os_error_words(e)})",
            file=sys.stderr,
            flush=True,
        )
    remove_or_say(parked)


def remove_or_say(path: str, tag: str = "staging") -> bool:
    """Removes what a finished swap or a dead run left (:func:`remove`); one that cannot be
    removed is said on stderr and left to the next run. Whether it is gone."""
    try:
        remove(path)
    except OSError as e:
        print(f"[{tag}] left {path}, which cannot be removed ({os_error_words(e)})", file=sys.stderr, flush=True)
        return False
    return True


# -- blue/green through a symlink -------------------------------------------------------------------


def repoint(link: str, target: str) -> None:
    """Points the symlink ``link`` at ``target`` atomically (a new link renamed over the old);
    relative when the old link was relative."""
    old = os.readlink(link)
    # Relative to the link's physical directory, where the kernel resolves it: the logical one
    # (a workdir reached through a symlink) may sit at another depth.
    home = os.path.realpath(os.path.dirname(os.path.abspath(link)))
    value = target if os.path.isabs(old) else os.path.relpath(os.path.realpath(target), home)
    parent, name = os.path.split(os.path.abspath(link))
    tmp = os.path.join(parent, _siblings(parent, name)["link"] + uuid.uuid4().hex[:8])
    os.symlink(value, tmp)
    os.replace(tmp, link)
    fsync_parent(link)


def _fresh_name(directory: str, base: str) -> str:
    """``directory/base``, or ``base-2``, ``base-3``... when taken."""
    path, n = os.path.join(directory, base), 1
    while os.path.lexists(path):
        n += 1
        path = os.path.join(directory, f"{base}-{n}")
    return path


# -- what may be replaced -----------------------------------------------------------------------------


def within(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or under it, symlinks resolved."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def check_parent(path: str) -> str:
    """Refuses (InputError, one line) a path whose nearest existing ancestor is a file: the run
    would fail making its directory, after its work. Returns that ancestor."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise InputError(f"{path}: {ancestor} is a file, not a directory")
    return ancestor


def check_named(final: str) -> None:
    """Refuses (InputError) an output path of "" or blanks: the working directory to ``abspath``,
    which a replacement would swap out and delete (an unset variable in a caller's script)."""
    if not os.fspath(final).strip():
        raise InputError(f"the output path {final!r} is empty: give the directory to write")


def check_target(
    final: str,
    marker: str,
    what: str,
    inputs: Sequence[str] = (),
    overwrite: bool = False,
    remedy: str = "pass --overwrite to replace it",
    writes_beside: bool = True,
) -> None:
    """Refuses (InputError, one line) to replace ``final`` when

    * it is, contains or is inside one of ``inputs`` (always: the run would delete what it reads,
      or write into it), or is a mount point (replaced beside itself), or a file stands where one
      of its parent directories would, or the nearest existing one is not writable by this account, or
    * it exists, is not empty and is not a ``what`` (no ``marker`` file in it), or is a file,
      unless ``overwrite`` (``remedy`` says how the command asks for it).

    A symlink is judged by the directory it points at (which blue/green never deletes).
    """
    check_named(final)
    real = os.path.realpath(final)
    for path in inputs:
        if within(path, final):
            raise InputError(f"{final}: contains the input {path}; write the output somewhere else")
        if within(final, path):
            raise InputError(f"{final}: inside the input {path}; write the output somewhere else")
    absolute = os.path.abspath(final)  # "link/" follows the link: a link's is no mount point of ours
    if writes_beside and not os.path.islink(absolute) and os.path.ismount(absolute):
        # Linux refuses to rename a mount point (EBUSY): the swap failed after the work, its journal
        # left for every later run to fail on too (a volume mounted at exactly --output).
        raise InputError(
            f"{final}: is a mount point, which the swap cannot replace; write the output into a folder "
            "inside it, or make the output a symlink to one there (replaced blue/green)"
        )
    ancestor = check_parent(final)
    # Where the run will write: beside final (its lock and stage; for a link, beside its target
    # too), or, for an output written in place (a sweep's, ``writes_beside`` False), inside it.
    # Unwritable, it failed with a PermissionError traceback at the save, after the work.
    if writes_beside:
        places = [ancestor] + ([os.path.dirname(real)] if os.path.islink(final) else [])
    else:
        places = [real if os.path.isdir(real) else ancestor]
    for place in places:
        if not os.access(place, os.W_OK | os.X_OK):
            raise InputError(f"{final}: {place} is not writable by this account; write the output somewhere else")
    if overwrite or not os.path.lexists(final):
        return
    if os.path.exists(real) and not os.path.isdir(real):
        raise InputError(f"{final}: exists and is not a directory; {remedy}")
    if os.path.isdir(real) and os.listdir(real) and not os.path.exists(os.path.join(real, marker)):
        raise InputError(
            f"{final}: exists, is not empty and is not a {what} (no {marker}); refusing to replace it ({remedy})"
        )


def _siblings(parent: str, name: str) -> Dict[str, str]:
    return {
        "lock": os.path.join(parent, f".{name}.lock"),
        "journal": os.path.join(parent, f".{name}.swap.json"),
        "staging": f".{name}.staging-",
        "parked": f".{name}.old-",
        "link": f".{name}.link-",  # a new link not yet renamed over the old (repoint)
    }


def _new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _run_entry(entry: str, prefix: str) -> bool:
    """Whether ``entry`` is ``prefix`` and a run's id (:func:`_new_run_id`)."""
    return re.fullmatch(re.escape(prefix) + r"\d{8}T\d{6}-[0-9a-f]{8}", entry) is not None


def _link_entry(entry: str, names: Dict[str, str]) -> bool:
    return re.fullmatch(re.escape(names["link"]) + r"[0-9a-f]{8}", entry) is not None


def finish_interrupted(final: str) -> bool:
    """Finishes the replacement of ``final`` that a dead run left between its two renames (the
    journal beside it, the new directory complete), as the next run writing ``final`` would, so
    that a reader finds it; True when there was one. A reader that may not write beside
    ``final`` leaves it (False). Raises :class:`Busy` while a run holds the lock (it is writing
    ``final`` now)."""
    parent, name = os.path.split(os.path.abspath(final))
    names = _siblings(parent, name)
    if not os.path.exists(names["journal"]):
        return False
    try:
        with exclusive(names["lock"], os.path.abspath(final)):
            finished = roll_forward(names["journal"]) is not None
    except ReadOnlyLock:  # another account's lock file on NFS: a writer's to finish
        return False
    except OSError as e:  # a reader without write access: a read-only mount, another user's files
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return False
        raise
    if finished:
        # stderr: a reader's output (jobs.models list's table, a JSON answer) stays what it reads
        note = f"[staging] finished the replacement of {final} that a dead run left half done"
        print(note, file=sys.stderr, flush=True)
    return finished


def present(path: str) -> bool:
    """Whether ``path`` exists, once a replacement of it that a dead run left half done is
    finished (:func:`finish_interrupted`): what every reader of a DATA or model directory asks."""
    return os.path.exists(path) or (finish_interrupted(path) and os.path.exists(path))


def remove_dead_runs(directory: str, name: str) -> List[str]:
    """Removes the staging and parked entries of ``name`` in ``directory``, and a repoint's new link
    or a journal's temporary a kill left (the caller holds the lock and has rolled the journal
    forward, so they belong to dead runs); one that cannot be removed is said and left. Returns
    the removed ones."""
    names = _siblings(directory, name)
    if not os.path.isdir(directory):
        return []
    removed = []
    for entry in sorted(os.listdir(directory)):
        # By their whole shape: a prefix alone took another target's ("cj.staging-eu" for "cj").
        dead = _run_entry(entry, names["staging"]) or _run_entry(entry, names["parked"]) or _link_entry(entry, names)
        if dead or is_temporary_of(entry, names["journal"]):  # a journal's temporary: a write killed midway
            if remove_or_say(os.path.join(directory, entry)):
                removed.append(os.path.join(directory, entry))
    return removed


@contextmanager
def replacing(
    final: str,
    marker: str,
    what: str,
    inputs: Sequence[str] = (),
    overwrite: bool = False,
    wait_s: float = 0.0,
    version: Optional[str] = None,
    log=None,
) -> Iterator[str]:
    """Yields an empty staging directory; when the block ends normally it replaces ``final``.

    A plain directory (or nothing) at ``final`` is swapped with :func:`swap`; a symlink gets a new
    directory beside its target, named ``<link name>-<version>`` (``version``: default the UTC
    time), and is repointed to it. When the block raises, the staging directory is removed and
    ``final`` is untouched. Raises :class:`Busy` when another run holds the target's lock and
    InputError when :func:`check_target` refuses.
    """
    log = log or (lambda message: None)
    check_named(final)  # before abspath makes "" the working directory
    final = os.path.abspath(final)
    check_target(final, marker, what, inputs, overwrite)
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    names = _siblings(parent, name)
    run_id = _new_run_id()
    with ExitStack() as held:
        held.enter_context(exclusive(names["lock"], final, wait_s=wait_s))
        if roll_forward(names["journal"]):
            log(f"finished the replacement of {final} that a dead run left half done")
        # Again under the lock: another run may have written there while this one waited for it.
        check_target(final, marker, what, inputs, overwrite)
        linked = os.path.islink(final)
        home = os.path.dirname(os.path.realpath(final)) if linked else parent
        # Compared as folders, not as path strings: a parent reached through a symlink (or a bind
        # mount) is the same folder, whose lock this run already holds.
        elsewhere = linked and os.path.isdir(home) and not os.path.samefile(home, parent)
        if elsewhere:  # links of one name in other folders may point here too: their runs share this lock
            beside_target = _siblings(home, name)
            held.enter_context(exclusive(beside_target["lock"], final, wait_s=wait_s))
            roll_forward(beside_target["journal"])  # a dead plain swap there: its entries are not leftovers
        for path in remove_dead_runs(parent, name) + (remove_dead_runs(home, name) if elsewhere else []):
            log(f"removed what a dead run left: {path}")
        stage = os.path.join(home, names["staging"] + run_id)
        os.makedirs(stage)
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)  # never hide the error that stopped the run
            raise
        target = None
        try:
            if linked:
                target = _fresh_name(home, f"{name}-{version or time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
                fsync_tree(stage)
                os.rename(stage, target)
                fsync_parent(target)
                repoint(final, target)
                log(f"{final} -> {target} (the previous target is kept)")
            else:
                swap(stage, final, os.path.join(parent, names["parked"] + run_id), names["journal"])
        except KeyboardInterrupt:
            left = _left_by_a_stopped_swap(final, stage, names["journal"], target)
            raise (Interrupted(left) if left else KeyboardInterrupt()) from None
        except SystemExit:  # SIGTERM (jobs' handler): the exit status stays, the words are said here
            left = _left_by_a_stopped_swap(final, stage, names["journal"], target)
            if left:
                print(f"[staging] stopped during the swap: {left}", file=sys.stderr, flush=True)
            raise


def _left_by_a_stopped_swap(final: str, stage: str, journal: str, target: Optional[str]) -> Optional[str]:
    """What a stop (Ctrl-C, SIGTERM) during the swap at a run's end left (``target``: a link's
    new directory, None for a plain swap); None before it began, where the jobs' "the output is as
    it was" holds."""
    if target is not None:
        if not os.path.isdir(target):
            return None
        if os.path.realpath(final) == os.path.realpath(target):
            return f"{final} points at the new directory {target} (the previous target is kept)"
        return (
            f"{final} is as it was; the new directory is complete at {target} (point the link at it to use it, "
            "or remove it: a new run writes another)"
        )
    if not os.path.lexists(stage):  # renamed into place: only the swap moves it
        return f"{final} is the new directory (the old one, being removed, is removed by the next run)"
    if os.path.exists(journal):
        now = "as it was for now" if os.path.lexists(final) else "missing for now"
        return (
            f"{final} is {now}: the new directory is complete and journaled beside it, and the next run "
            f"writing {final} puts it in place first (a reader too, where {final} is missing)"
        )
    return None
