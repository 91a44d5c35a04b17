"""All-or-nothing commit of one partition of a dataset directory, for jobs that rewrite a whole
partition per run (nightly batch scoring writes ``OUT/run_date=D/``).

Layout::

    OUT/
      run_date=2017-11-27/                    committed: the parts and _SUCCESS (a caller's transient files,
                                              such as _plan.json, only where a roll-forward committed it,
                                              or its run was killed after its swap)
      _tmp/run_date=2017-11-27/RUN/           a run in progress: its parts, then _SUCCESS last
      _tmp/replaced-run_date=2017-11-27-RUN   the old partition, while it is replaced (one that could not
                                              be deleted stays until a later run's cleaning can)
      _commit/run_date=2017-11-27.lock        flock held by the partition's run (file kept)
      _commit/run_date=2017-11-27.json        journal of a swap under way (absent otherwise)

Readers skip names that start with ``_`` or ``.`` (pyarrow, Ray Data) and must treat a
partition without ``_SUCCESS`` as absent.

What is not this protocol's is never touched (:func:`check_output`): a non-empty OUT with
neither ``_commit/`` nor a committed partition is refused, a partition directory without
``_SUCCESS`` is not replaced, and ``_tmp`` entries are removed only when their names are this
protocol's (a stage root or a parked partition of a partition that has a lock in ``_commit``).
``overwrite`` lifts the first two refusals.

Protocol (:class:`PartitionRun`):

1. open: take the partition's lock, refusing at once when another live run holds it
   (:class:`ncf.staging.Busy`, a one-line error: two runs of one date never interleave);
   finish any swap a dead run left (its journal: this partition's, and other partitions' whose
   lock is free); remove what dead runs left in ``_tmp``; create this run's stage.
2. the job writes its parts into the stage (each part whole or absent: a hidden name, then a
   rename).
3. :meth:`PartitionRun.commit`: ``_SUCCESS`` (the manifest) as the stage's last file, then the
   journaled swap of :func:`ncf.staging.swap`: fsync the stage's files and directories, write
   the journal, rename the old partition to ``replaced-...``, rename the stage into place, fsync
   both directories, delete the journal (the swap is done), delete the replaced partition (one
   that cannot be deleted is said and left to the next run's cleaning). Between the two
   renames (one directory fsync apart) the partition is absent: a reader looking then finds
   no partition, never a partial one.

A run that dies before 3 leaves only ``_tmp`` entries, which the next run removes, or continues
where its caller accepts the dead run's stage (``continues``: nightly scoring keeps a dead run's
whole parts when the rerun has the same inputs and settings, and scores the rest). One that
raises inside 3 after the journal is written keeps its stage and rolls the swap forward on its
way out (or, when that fails too, leaves both to the next run). One that dies inside 3
(between the two renames, say: no partition in place) leaves its journal, and the next run of
any partition rolls the swap forward (or a reader of it: :func:`finish_interrupted`): the partition
becomes the dead run's complete one, then that run replaces it as usual. The lock goes when its run
ends or its process dies (the kernel drops it), so a held lock is always a live run.

A dead run's commit that cannot be finished (its journal names entries that are all there, or
cannot be read) fails only runs of its own date: other dates' runs and readers say so in a line
and go on, and their cleaning leaves what its journal names; an I/O error (EIO) of OUT's disk
stops any run (exit 1). A run that cannot open ends in one line naming the path and the OS's
reason (:func:`output_error`): OUT not the run's to write (not writable, a read-only mount, a
lock file of another account: exit 2, as :func:`check_output` refuses it before the job starts)
or a full disk or an I/O error (:class:`OutputFailed`, exit 1).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from ncf.errors import InputError, os_error_words
from ncf.jsonio import read_json, write_json
from ncf.staging import (
    Busy,
    check_named,
    check_parent,
    exclusive,
    journal_record,
    remove,
    remove_or_say,
    roll_forward,
    swap,
)

SUCCESS = "_SUCCESS"
TMP = "_tmp"
COMMIT = "_commit"
REPLACED = "replaced-"
REMOVING = ".removing-"  # another date's old entry, renamed under its lock, removed after it
# Other partitions' staged runs older than this are from dead runs (a nightly run is shorter),
# and only removed when no live run holds that partition's lock.
STALE_SECONDS = 24 * 3600


def partition_path(output: str, partition: str) -> str:
    return os.path.join(output, partition)


def stage_root(output: str, partition: str) -> str:
    return os.path.join(output, TMP, partition)


def lock_path(output: str, partition: str) -> str:
    return os.path.join(output, COMMIT, f"{partition}.lock")


def journal_path(output: str, partition: str) -> str:
    return os.path.join(output, COMMIT, f"{partition}.json")


def parked_path(output: str, partition: str, run_id: str) -> str:
    return os.path.join(output, TMP, f"{REPLACED}{partition}-{run_id}")


# -- what may be written ------------------------------------------------------------------------------


def _partitions_with_locks(output: str) -> List[str]:
    """Partition names this protocol has run in OUT: each run takes its lock file first."""
    root = os.path.join(output, COMMIT)
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted(name[: -len(".lock")] for name in names if name.endswith(".lock"))


def read_committed(path: str) -> Optional[Dict]:
    """The manifest of a partition this protocol committed at ``path``: its ``_SUCCESS``, a JSON
    object naming its run. None when there is none, or when ``_SUCCESS`` is another tool's marker
    (Spark and Hadoop write an empty one into each partition too)."""
    try:
        manifest = read_json(os.path.join(path, SUCCESS))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "run_id" in manifest else None


def _committed(path: str) -> bool:
    return read_committed(path) is not None


def is_scoring_output(output: str) -> bool:
    """Whether the directory ``output`` is empty or batch scoring's (its ``_commit/`` or a
    committed partition there): what a run may write into without ``--overwrite``."""
    names = os.listdir(output)
    return not names or COMMIT in names or any(_committed(os.path.join(output, name)) for name in names)


def check_output(output: str, partition: str, overwrite: bool = False) -> None:
    """Refuses (InputError, one line) to write ``partition`` into ``output`` when ``output`` is
    a file, or is a non-empty directory that has neither ``_commit/`` nor a committed partition
    (not a batch-scoring directory: its ``_tmp`` and partitions may be another tool's), or when
    the partition is there but is not committed (no ``_SUCCESS`` manifest of this protocol's, so
    replacing it would delete someone's data), or when a run could not write there
    (:func:`check_writable`). ``overwrite`` lifts the two about what is there."""
    if os.path.lexists(output) and not os.path.isdir(output):
        raise InputError(f"--output {output}: exists and is not a directory")
    check_parent(output)
    check_writable(output, partition)
    if overwrite or not os.path.isdir(output):
        return
    if not is_scoring_output(output):
        raise InputError(
            f"--output {output}: is not empty and is not a batch-scoring directory (no {COMMIT}/, no "
            f"partition with batch scoring's {SUCCESS} manifest); refusing to write into it (pass --overwrite "
            "to write anyway)"
        )
    final = partition_path(output, partition)
    if os.path.lexists(final) and not _committed(final) and not os.path.exists(journal_path(output, partition)):
        raise InputError(
            f"--output {output}: {partition} exists without {SUCCESS} of batch scoring (a JSON manifest naming "
            "its run: not written by batch scoring); "
            "refusing to replace it (pass --overwrite to replace it anyway)"
        )


def _can(path: str, mode: int) -> bool:
    # A setuid process's effective user writes. Only then faccessat(AT_EACCESS): some container
    # sandboxes answer its faccessat2 with EPERM, which would refuse every OUT.
    setuid = os.getuid() != os.geteuid() or os.getgid() != os.getegid()
    effective = setuid and os.access in os.supports_effective_ids
    return os.access(path, mode, effective_ids=effective)


def check_writable(output: str, partition: str) -> None:
    """Refuses (InputError, one line) an OUT a run of ``partition`` could not write, before the
    job's work: OUT (or, where it does not exist yet, its nearest existing parent, where it will be
    made), its ``_commit/`` and ``_tmp/``, the partition's lock file (another account's, say) and
    the partition itself (a directory moved to another parent by the swap must be writable). Not
    every failure is foreseen (a full disk, ACLs the mode bits do not show): opening the run turns
    those into one line too (:func:`output_error`)."""
    output = os.path.abspath(output)
    existing = output
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    paths = [existing]
    if existing == output and os.path.isdir(output):
        ours = [os.path.join(output, COMMIT), os.path.join(output, TMP)]
        for path in ours:
            if os.path.lexists(path) and not os.path.isdir(path):
                raise InputError(f"--output {output}: {path} is not a directory (batch scoring keeps its runs there)")
        paths += [p for p in (*ours, partition_path(output, partition)) if os.path.isdir(p)]
        lock = lock_path(output, partition)
        if os.path.isfile(lock) and not _can(lock, os.R_OK | os.W_OK):
            raise InputError(f"--output {output}: cannot write {lock}, the lock of {partition} ({_who(lock)})")
    for path in paths:
        if os.path.isdir(path) and not _can(path, os.W_OK | os.X_OK):
            raise InputError(f"--output {output}: cannot write {path} ({_who(path)})")


def _who(path: str) -> str:
    """Why ``path`` cannot be written, in words: a read-only file system or its owner and mode."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "a read-only file system"
        info = os.stat(path)
    except OSError as e:
        return e.strerror or str(e)
    return f"owned by uid {info.st_uid}, mode {info.st_mode & 0o777:o}; this process runs as uid {os.geteuid()}"


class OutputFailed(RuntimeError):
    """An I/O failure while a run opens OUT that a rerun may not meet (a full disk, a quota, a
    failing disk): the job's one line and exit 1, as a commit's I/O error is."""


# What a rerun of the same command meets again: fix OUT or the command (exit 2).
_REFUSALS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT)


def output_error(output: str, doing: str, error: OSError) -> Exception:
    """The one line for an OSError while a run opens OUT, instead of a traceback: the path and
    the OS's reason; an InputError (exit 2) where OUT is not the run's to write (permissions, a
    read-only mount, a lock file of another account, a file where a folder goes), else
    :class:`OutputFailed` (exit 1: a full disk, an I/O error)."""
    reason = os_error_words(error)
    where = f"{error.filename}: " if error.filename else ""
    kind = InputError if error.errno in _REFUSALS else OutputFailed
    return kind(f"--output {output}: cannot {doing}: {where}{reason}")


@contextmanager
def _one_line(output: str, doing: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise output_error(output, doing, e) from None


def refuse_if_running(output: str, partition: str) -> None:
    """Raises :class:`ncf.staging.Busy` (the line and exit status 75 :class:`PartitionRun` gives)
    when a live run holds ``partition``'s lock now, and releases the lock at once otherwise: a
    job asks before its long preparation, and takes the lock for its run later (so a run may still
    start in between, and be refused there). Creates nothing: without a lock file no run holds it."""
    output = os.path.abspath(output)
    lock = lock_path(output, partition)
    if os.path.exists(lock):
        with _one_line(output, f"take the lock of {partition}"), exclusive(lock, partition_path(output, partition)):
            pass


# -- recovery ----------------------------------------------------------------------------------------


def recover(output: str, partition: str) -> Optional[str]:
    """Finishes the swap a dead run of ``partition`` left; the caller holds the partition's lock.
    Returns the committed partition's path when there was one to finish."""
    record = roll_forward(journal_path(output, partition), root=output)
    return record["final"] if record else None


def recover_others(output: str, partition: str, log: Callable[[str], None] = lambda m: None) -> List[str]:
    """Finishes the swaps dead runs of other partitions left, each under its lock (skipped while
    a live run holds it). One that cannot be finished (its entries all there, a journal cut
    short, a lock of another account) is said in a line through ``log`` and left, journal and
    entries, to that partition's own next run: another date's stuck commit never stops this run.
    An I/O error (EIO: OUT's disk failing) is raised, before hours of scoring. Returns the
    partitions committed this way."""
    root = os.path.join(output, COMMIT)
    done = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        other = name[: -len(".json")]
        if not name.endswith(".json") or other == partition:
            continue
        try:
            with exclusive(lock_path(output, other), partition_path(output, other)):
                if recover(output, other):
                    done.append(partition_path(output, other))
        except Busy:
            continue
        except OSError as e:
            if e.errno == errno.EIO:  # OUT's disk is failing: this run's commit would fail hours later
                raise
            _left(log, other, os.path.join(root, name), e)
        except Exception as e:  # noqa: BLE001  (any other failure of another date's commit is that date's)
            _left(log, other, os.path.join(root, name), e)
    return done


def _left(log: Callable[[str], None], other: str, journal: str, e: Exception) -> None:
    log(
        f"the commit a dead run of {other} left could not be finished ({type(e).__name__}: {e}); "
        f"left, with its journal {journal}, to the next run of {other}"
    )


def finish_interrupted(output: str, partition: str) -> bool:
    """Finishes the commit of ``partition`` that a dead run left between its two renames (its
    journal in ``_commit/``, the partition absent), as the next run of any partition would, so that
    a reader finds it (:mod:`ncf.batch.partitions`, :mod:`ncf.batch.verify`); True when there was
    one and it is committed now. The lock is taken without waiting: a live run holding it is
    swapping now (False: the date is absent for now), and so is a reader that may not write OUT
    (a read-only mount, another account's files: False). A note goes to stderr, so that a reader's
    own output stays what it reads. A commit that cannot be finished (a journal cut short, its
    entries all there, a disk or lock error) is said there in one line and left to the date's next
    run (False): a reader, and every date's run that lists the committed dates, goes on."""
    output = os.path.abspath(output)
    final = partition_path(output, partition)
    if not os.path.exists(journal_path(output, partition)):
        return False
    try:
        with exclusive(lock_path(output, partition), final):
            finished = recover(output, partition) is not None
    except Busy:
        return False
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return False
        return _not_finished(final, e)
    except Exception as e:  # noqa: BLE001  (the date's own run says it, and refuses, in its own words)
        return _not_finished(final, e)
    if finished:
        print(f"[batch] finished the commit of {final} that a dead run left half done", file=sys.stderr, flush=True)
    return finished


def _not_finished(final: str, error: Exception) -> bool:
    print(
        f"[batch] {final}: the commit a dead run left could not be finished ({type(error).__name__}: "
        f"{error}); read as absent, left to the date's next run",
        file=sys.stderr,
        flush=True,
    )
    return False


def _pending_paths(output: str) -> set:
    """Paths that journals of swaps still under way name (a live run's, since the dead runs'
    were rolled forward first): never cleaned."""
    root = os.path.join(output, COMMIT)
    paths = set()
    for name in os.listdir(root) if os.path.isdir(root) else []:
        if name.endswith(".json"):
            try:
                record = journal_record(os.path.join(root, name), root=output)
                paths.update(record[k] for k in ("staged", "parked"))
            except FileNotFoundError:
                continue  # that swap finished between the listing and the read: nothing of it pending
            except Exception:  # noqa: BLE001  (unreadable: another date's, whose entries _remove_stale leaves)
                continue
    return paths


def _owner(name: str, partitions: List[str]) -> Optional[str]:
    """The partition a ``_tmp`` entry belongs to (its stage root, or its parked old partition);
    None when the name is not this protocol's."""
    for partition in partitions:
        if name == partition or name.startswith(f"{REPLACED}{partition}-"):
            return partition
    return None


def clean_stale(
    output: str,
    partition: str,
    now: Optional[float] = None,
    keep: Optional[str] = None,
    removing: Callable[[str], None] = lambda path: None,
) -> List[str]:
    """Removes what dead runs left in ``OUT/_tmp``: every entry of ``partition`` (the caller
    holds its lock) but ``keep`` (a dead run's stage the caller continues, or its own new one) and other partitions'
    entries older than ``STALE_SECONDS``, each under its partition's lock taken without waiting
    (skipped while a live run holds it, or while a dead run's journal still names what it would
    swap in); never what a swap under way names, nor an entry whose name is not this protocol's
    (see :func:`_owner`). ``removing(path)`` is called before each removal (a dead run's stage of
    10M users takes a while to delete). Returns the removed paths."""
    root = os.path.join(output, TMP)
    if not os.path.isdir(root):
        return []
    now = time.time() if now is None else now
    pending = _pending_paths(output)
    partitions = sorted(set(_partitions_with_locks(output)) | {partition}, key=len, reverse=True)
    removed = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(REMOVING):  # renamed by a cleaner that died before removing it, or is removing it
            removing(path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            continue
        owner = _owner(name, partitions)
        if owner is None or os.path.abspath(path) in pending:
            continue
        if owner == partition and keep is not None and os.path.dirname(os.path.abspath(keep)) == os.path.abspath(path):
            for stage in sorted(os.listdir(path)):  # the partition's stage root: all but the one continued
                if stage == os.path.basename(keep):
                    continue
                removing(os.path.join(path, stage))
                if remove_or_say(os.path.join(path, stage), "batch"):
                    removed.append(os.path.join(path, stage))
        elif owner == partition:
            removing(path)
            if remove_or_say(path, "batch"):  # one left is never read (its name is the protocol's), swept later
                removed.append(path)
        elif _remove_stale(output, owner, path, now, removing):
            removed.append(path)
    return removed


def _last_written(path: str) -> float:
    """When ``path`` or one of its entries last changed: a stage root's own time moves only when
    a run's folder is made in it, that folder's with each part written (a run dead at 14:00 after
    twelve hours of parts read as stale at the next night's cleaning, its parts deleted)."""
    newest = os.path.getmtime(path)
    if os.path.isdir(path):
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except FileNotFoundError:
                    pass
    return newest


def _remove_stale(output: str, owner: str, path: str, now: float, removing: Callable[[str], None]) -> bool:
    """Removes another partition's old entry: renamed out of the protocol's names under that
    partition's lock (so that no run of it starts staging there, or finishes its swap and
    deletes the entry, meanwhile), then removed with the lock released, so that a run of that
    partition is not refused for as long as a large tree takes to delete. Whether it was removed.
    Runs of other dates go on meanwhile: an entry may vanish under the listing."""
    doomed = os.path.join(os.path.dirname(path), f"{REMOVING}{os.path.basename(path)}-{os.getpid()}")
    try:
        if now - _last_written(path) <= STALE_SECONDS:
            return False
        with exclusive(lock_path(output, owner), partition_path(output, owner)):
            if os.path.exists(journal_path(output, owner)):
                return False  # a dead run's swap, left to that partition's next run to finish
            os.rename(path, doomed)
    except Busy:  # a live run's
        return False
    except OSError as e:  # gone; a lock or entry of another account: left, said unless gone
        if not isinstance(e, FileNotFoundError):
            print(f"[batch] left {path}, which cannot be removed ({os_error_words(e)})", file=sys.stderr, flush=True)
        return False
    removing(path)
    try:
        remove(doomed)
    except FileNotFoundError:
        pass  # another cleaner swept it (see clean_stale)
    except OSError as e:  # out of the protocol's names now: the next cleaning sweeps it
        print(f"[batch] left {doomed}, which cannot be removed ({os_error_words(e)})", file=sys.stderr, flush=True)
        return False
    return True


# -- one run -------------------------------------------------------------------------------------------


class PartitionRun:
    """One run writing one partition (see the module docstring)::

        with PartitionRun(OUT, "run_date=2017-11-27", run_id) as run:
            ...  # write the parts into run.stage
            final = run.commit(manifest)

    Leaving the block without committing removes the stage (the partition is untouched), unless
    the swap had begun (its journal written): then the stage is complete and is swapped in on
    the way out, or left to the next run when that fails too. ``overwrite``: see
    :func:`check_output`. ``continues``: whether a dead run's stage (a path) holds parts this run
    may keep; the newest such stage becomes this run's (:attr:`continued` names its run) instead
    of being removed, and a run that fails leaves its stage to the next (unless
    :attr:`leave_stage` is cleared). ``transient``: names of files in the stage that stay through
    the swap (a plan by which the next run continues a stage whose commit a kill interrupted) and
    are removed from the partition, under the lock, as soon as this run's own commit is in place;
    a commit a roll-forward finished (another run's, a reader's), or whose run was killed between
    its swap and that removal (or could not remove them), keeps them, for the partition's next run
    to find.
    """

    def __init__(
        self,
        output: str,
        partition: str,
        run_id: str,
        log: Callable[[str], None] = lambda m: None,
        overwrite: bool = False,
        continues: Optional[Callable[[str], bool]] = None,
        transient: Sequence[str] = (),
    ):
        check_named(output)  # before abspath makes "" the working directory
        self.output, self.partition, self.run_id, self.log = os.path.abspath(output), partition, run_id, log
        self.overwrite, self.continues, self.transient = overwrite, continues, tuple(transient)
        self.final = partition_path(self.output, partition)
        self.stage = os.path.join(stage_root(self.output, partition), run_id)
        self.continued: Optional[str] = None
        # The partition a dead run's journal named, committed as this run opened: its caller may
        # find that commit already of its own plan (nightly scoring then scores nothing again).
        self.recovered: Optional[str] = None
        # A run that fails leaves its whole parts to the next one, which may continue them; its
        # caller clears this when they must not be kept (they failed a verification).
        self.leave_stage = continues is not None
        self.committed = False
        self._stack = ExitStack()

    def __enter__(self) -> "PartitionRun":
        with ExitStack() as stack:
            # Before the lock, which creates OUT/_commit/ (and so marks OUT as batch scoring's).
            check_output(self.output, self.partition, self.overwrite)
            # Each OSError from here on (OUT not writable after all, a full disk) is one line.
            with _one_line(self.output, f"take the lock of {self.partition}"):
                stack.enter_context(exclusive(lock_path(self.output, self.partition), self.final))
            # Again under the lock: the partition as this run will replace it.
            check_output(self.output, self.partition, self.overwrite)
            with _one_line(self.output, f"finish the commit a dead run of {self.partition} left"):
                try:
                    self.recovered = recover(self.output, self.partition)
                except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
                    # Its entries all there; a journal cut short, or JSON of another shape.
                    raise InputError(
                        f"{self.final}: the commit a dead run left cannot be finished ({type(e).__name__}: {e}); "
                        f"see what its journal {journal_path(self.output, self.partition)} names, keep the "
                        "complete partition and remove the rest and the journal"
                    ) from None
            if self.recovered:
                self.log(f"finished the commit a dead run of {self.partition} left: {self.final}")
            with _one_line(self.output, "finish other dates' commits dead runs left"):
                for path in recover_others(self.output, self.partition, self.log):
                    self.log(f"finished the commit a dead run left: {path}")
            with _one_line(self.output, "read the stages dead runs left"):
                kept = self._continued_stage()
            if kept is None:
                # Before the dead runs' stages go (the cleaning keeps this one): a run never removes
                # a stage, even one without a part, before its own exists.
                with _one_line(self.output, "create the run's stage"):
                    os.makedirs(self.stage)
            with _one_line(self.output, "remove what a previous run left"):
                said = lambda path: self.log(f"removing what a previous run left: {path}")  # noqa: E731
                for path in clean_stale(self.output, self.partition, keep=kept or self.stage, removing=said):
                    self.log(f"removed what a previous run left: {path}")
                if kept is not None:
                    self.stage, self.continued = kept, os.path.basename(kept)
                    for name in os.listdir(kept):  # a part the dead run was writing: never renamed, never whole
                        if name.startswith("."):
                            remove(os.path.join(kept, name))
            self._stack = stack.pop_all()
        return self

    def _continued_stage(self) -> Optional[str]:
        """The newest dead run's stage of this partition that :attr:`continues` accepts (the
        caller holds the lock: every stage there is a dead run's), or None."""
        root = stage_root(self.output, self.partition)
        if self.continues is None or not os.path.isdir(root):
            return None
        stages = [os.path.join(root, name) for name in os.listdir(root)]
        for stage in sorted(filter(os.path.isdir, stages), key=os.path.getmtime, reverse=True):
            if self.continues(stage):
                return stage
        return None

    def commit(self, manifest: Dict) -> str:
        """``_SUCCESS`` last into the stage, then the journaled swap; returns the partition path."""
        write_json(os.path.join(self.stage, SUCCESS), manifest)
        swap(
            self.stage,
            self.final,
            parked_path(self.output, self.partition, self.run_id),
            journal_path(self.output, self.partition),
            root=self.output,
        )
        self.committed = True
        self.drop_transient()
        return self.final

    def drop_transient(self) -> None:
        """Removes :attr:`transient` from the partition committed under this run's lock (its own
        commit, or a dead run's it returns as its own result): a later run of the partition finds
        them only where a roll-forward finished the commit, or a kill came between the swap and
        this. Readers skip their "_" names meanwhile; one that cannot be removed is left."""
        for name in self.transient:
            try:
                os.remove(os.path.join(self.final, name))
            except OSError:
                pass

    def _finish_or_leave(self, how: str = "failed") -> None:
        """The swap failed, or was stopped (``how``), after its journal: the stage is complete, so
        roll it forward now, or leave stage and journal for the next run's :func:`recover` (never
        delete either)."""
        try:
            recover(self.output, self.partition)
            self.drop_transient()  # the journal was this run's: the committed partition is its own
            self.log(f"the commit {how} midway and was finished from its journal: {self.final}")
        except Exception as e:  # noqa: BLE001  (the error that stopped the run is the one raised)
            self.log(f"the commit {how} midway ({e}); the next run of {self.partition} finishes it")

    def _discard_stage(self) -> None:
        """Removes the stage, renamed out of the protocol's names first: a run killed while a large
        stage is deleted must not leave part of it where the next run could continue it (its plan
        and some of the parts that failed their checks)."""
        doomed = os.path.join(
            os.path.dirname(stage_root(self.output, self.partition)),
            f"{REMOVING}{self.partition}-{self.run_id}-{os.getpid()}",
        )
        try:
            os.rename(self.stage, doomed)
        except FileNotFoundError:
            return
        except OSError:
            doomed = self.stage
        shutil.rmtree(doomed, ignore_errors=True)

    def __exit__(self, kind, *_) -> None:
        try:
            if not self.committed:
                if os.path.exists(journal_path(self.output, self.partition)):
                    # Ctrl-C or SIGTERM (the jobs' SystemExit): a stop, which the log says as such.
                    stopped = kind is not None and issubclass(kind, (KeyboardInterrupt, SystemExit))
                    self._finish_or_leave("was stopped" if stopped else "failed")
                elif not self.leave_stage:
                    self._discard_stage()
            # The partition's stage root, empty once the stage is renamed or removed: left, the
            # next run would report it as what a dead run left. Under the lock, no other run's
            # stage can be in it.
            try:
                os.rmdir(stage_root(self.output, self.partition))
            except OSError:
                pass
        finally:
            self._stack.close()
