"""Shared command-line plumbing for jobs: Ray start-up (with the log settings of :mod:`jobs.logs`),
one-line errors, parsers that explain themselves (help and default for every option, ``--version``)
and the checks of the paths a job reads, made before Ray starts."""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import signal
import socket
import sys
import time
from contextlib import contextmanager
from typing import Callable, NoReturn, Optional, Sequence

from jobs import logs, started
from ncf.cluster import joins_a_cluster
from ncf.errors import (
    EXIT_STOPPED,
    EXIT_TRY_LATER,
    InputError,
    Interrupted,
    TryLater,
    exit_on_sigterm,
    one_line,
    os_error_words,
    stopped_by_sigterm,
    without_passwords,
)


def refuse_bad_ray_address() -> None:
    """Refuses (one line) a RAY_ADDRESS no job can start with, as far as that is known without a
    cluster: a dashboard's (``http://``), or not an address. A job that reads minutes before it
    starts Ray (the nightly job's verification of MODEL and DATA) asks this first."""
    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith(("http://", "https://")):
        # `ray job submit` reads the dashboard's address and gives its jobs the cluster's own.
        raise InputError(
            f"RAY_ADDRESS={address} is a dashboard address, which `ray job submit` reads; to run a job "
            "directly on a running cluster, set RAY_ADDRESS to its head's address (HOST:6379), or submit it"
        )
    if joins_a_cluster():
        check_ray_address(address)


def init_ray(num_cpus: int | None = None) -> None:
    """Joins the cluster a job was submitted to (RAY_ADDRESS), else starts a local one."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS", "")
    refuse_bad_ray_address()
    local = not joins_a_cluster()
    if not local:
        check_head_answers(address)
    runtime_env = logs.configure(local=local, num_cpus=num_cpus)  # before Ray starts: its processes inherit it
    # ray.init installs a SIGTERM handler that exits with status 15, which a scheduler reads as a
    # failure of its own kind; 143 is what a shell reports for a process SIGTERM stopped (README's
    # table): ours before ray.init, its 15 turned into 143 during it, ours again after.
    exit_on_sigterm()
    try:
        if not local:
            try:
                ray.init(address=address)
            except ray.exceptions.AuthenticationError as e:
                raise InputError(_auth_refused(address, getattr(e, "message", str(e)))) from None
            except ConnectionError as e:  # auto with no cluster up, a ray:// that does not answer (no errno)
                raise InputError(
                    f"RAY_ADDRESS={address}: no Ray cluster answers ({one_line(e)}); start one (ray start --head) "
                    "or unset RAY_ADDRESS to run on a local one"
                ) from None
            except RuntimeError as e:
                if not str(e).startswith("Version mismatch"):
                    raise
                # A driver's Ray or Python other than the cluster's (3.11.9 against 3.11.10 too).
                raise InputError(
                    f"RAY_ADDRESS={address}: the cluster runs another Ray or Python than this job "
                    f"({one_line(e)}); run the job from the cluster's environment, or submit it with ray job submit"
                ) from None
        else:
            # address="local": never attach to whatever cluster a previous `ray start` left a
            # pointer to in /tmp/ray; without RAY_ADDRESS a job runs on its own local cluster.
            # The dashboard (on 127.0.0.1) serves the State API, which Ray Train's placement-group
            # cleaner needs when Tune stops a trial: without it the trial's CPUs are never freed.
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                runtime_env=runtime_env,
            )
    except SystemExit as stopped:
        if stopped.code == signal.SIGTERM:
            raise SystemExit(EXIT_STOPPED) from None
        raise
    exit_on_sigterm()


def _auth_refused(address: str, message: str) -> str:
    """The line for a cluster whose token authentication this job did not pass: Ray 2.60's ``ray
    start`` turns it on where ``~/.ray/auth_token`` exists, and a client must then say
    ``RAY_AUTH_MODE=token``; one that says so where the cluster runs without it, or without a
    token of its own, is refused too (Ray's reason, first line)."""
    reason = (message.strip().splitlines() or ["refused"])[0]
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (
            f"RAY_ADDRESS={address}: the cluster requires token authentication; set RAY_AUTH_MODE=token "
            f"(the cluster's token in ~/.ray/auth_token, or RAY_AUTH_TOKEN) ({reason})"
        )
    return (
        f"RAY_ADDRESS={address}: token authentication failed ({reason}): the cluster's token in ~/.ray/auth_token "
        "or RAY_AUTH_TOKEN, or unset RAY_AUTH_MODE for a cluster that runs without authentication"
    )


def check_ray_address(address: str) -> None:
    """Refuses (one line) a RAY_ADDRESS that is none of the forms Ray reads (``HOST:PORT``,
    ``auto``, ``local``, a client's ``SCHEME://...`` such as ``ray://HOST:PORT``): a port left off,
    or a trailing blank from a script, ended in Ray's ValueError or ConnectionError traceback, exit 1."""
    host, _, port = address.rpartition(":")
    head = bool(host.strip("[]")) and port.isdigit() and 0 < int(port) < 65536
    # ray://, or another client's scheme (Ray imports a module of its name): Ray's to judge.
    if not any(c.isspace() for c in address) and (head or address in ("auto", "local") or "://" in address):
        return
    raise InputError(
        f"RAY_ADDRESS={address!r} is not an address Ray reads: give the head's HOST:PORT (6379 unless `ray start "
        "--head --port` said otherwise), auto, or ray://HOST:PORT; unset it to run on a local cluster"
    )


# A head started beside the job (a container, a script's `ray start --head &`) is listening
# within seconds; an address that stays silent this long is a mistake, not a slow start.
HEAD_WAIT_S = 15.0


def check_head_answers(address: str, wait_s: float = HEAD_WAIT_S, timeout_s: float = 5.0) -> None:
    """Refuses (one line) a ``HOST:PORT`` RAY_ADDRESS where nothing accepts a connection within
    ``wait_s``: Ray would retry it for minutes, printing a line every few seconds."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", "ray://HOST:PORT" (Ray Client): Ray's own forms
    deadline = time.monotonic() + wait_s
    for attempt in itertools.count():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise InputError(
                    f"RAY_ADDRESS={address}: no Ray head answers there after {wait_s:g} s ({e.strerror or e}); "
                    "start one with `ray start --head`, or unset RAY_ADDRESS to run on a local cluster"
                ) from None
            if attempt == 0:
                print(
                    f"[ray] waiting up to {wait_s:g} s for the Ray head at {address} to answer",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


# The jobs' exit codes (README's table; 75 is :data:`ncf.errors.EXIT_TRY_LATER`).
EXIT_FAILED = 1  # the run failed after it started: a verification, replicas that did not come up
EXIT_BAD_INPUT = 2  # bad input or arguments (argparse's own code for a bad command line)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C: a sweep resumes with --resume


def fail(message: str, status: int = EXIT_FAILED) -> NoReturn:
    """Ends the job with ``error: MESSAGE``, one line on stderr, and ``status``."""
    print(f"error: {without_passwords(message)}", file=sys.stderr, flush=True)
    sys.exit(status)


# A disk full or closed to this account: the machine's state, not a bug, said in one line.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO})


def environment_error(error: BaseException) -> bool:
    """Whether ``error`` is an OSError of :data:`ENVIRONMENT_ERRNOS`."""
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS


def environment_line(error: OSError, where: str = "") -> str:
    """The start of the one line for :func:`environment_error`: the file, the OS's words, where."""
    return f"{error.filename or 'a file'}: {os_error_words(error)}{where}"


def run_main(
    main: Callable[[], object],
    advice: str | Callable[[], str],
    where: Callable[[], str] = lambda: "",
    again: Callable[[], str] = lambda: "run the same command again",
) -> None:
    """``python -m jobs.<job>``: ``main()``, where a Ctrl-C the job does not answer in its own words
    ends it in one line, ``error: interrupted (Ctrl-C)WHERE; ADVICE`` (what the stop leaves and how
    to go on; a callable is asked then), and exit 130, not a KeyboardInterrupt traceback; and a
    disk full or closed to this account (:func:`environment_error`) in one line naming the file,
    ``...WHERE; free space or fix access, then AGAIN``, exit 1 (a bug's OSError keeps its
    traceback)."""
    started()  # the imports' one line for Ctrl-C (jobs/__init__.py) gives way to the job's own
    try:
        main()
    except KeyboardInterrupt as stopped:
        # What this stop left, where ADVICE is wrong.
        left = stopped if isinstance(stopped, Interrupted) else advice() if callable(advice) else advice
        fail(f"interrupted (Ctrl-C){where()}; {left}", EXIT_INTERRUPTED)
    except OSError as e:
        if not environment_error(e):
            raise
        fail(f"{environment_line(e, where())}; free space or fix access, then {again()}")
    except SystemExit as e:  # SIGTERM inside a ray.get came out as Ray's status 1: 143, as README says
        if stopped_by_sigterm(e) and e.code != EXIT_STOPPED:
            raise SystemExit(EXIT_STOPPED) from None
        raise


def training_failed(error: Exception, resumes: str) -> NoReturn:
    """Ends a job whose training (``fit``) raised ``error``: a worker's refusal (an InputError Ray
    Train wrapped) in one line, exit 2 (75 for a target another run holds); Ray Train's failure
    in one line naming the worker and its error, exit 1, then ``resumes`` (where the checkpoints
    are kept and how to go on from them). This code's own error is raised again, its traceback kept."""
    from ncf.train.trainer import training_failure

    failure = training_failure(error)
    if failure is None:
        raise error
    if isinstance(failure, InputError):
        fail(str(failure), exit_status(failure))
    fail(f"{failure}; {resumes}")


@contextmanager
def one_line_errors():
    """Bad input ends the job with a one-line message and exit code 2, not a traceback; a target
    another run holds (:class:`ncf.errors.TryLater`) with exit code 75, which a retry may clear."""
    try:
        yield
    except InputError as e:
        fail(str(e), exit_status(e))


def exit_status(error: Exception) -> int:
    """75 (EX_TEMPFAIL) for a target another run holds, 2 for other bad input."""
    return EXIT_TRY_LATER if isinstance(error, TryLater) else EXIT_BAD_INPUT


# -- parsers ----------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default, unless there is none to show (required options,
    flags, and None: those options say in words what happens without them). A flag's default is
    the value behind it, not the flag's: ``--no-resume`` would show "(default: True)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.required or action.nargs == 0 or _no_default(action.default):
            return text
        return text + " (default: %(default)s)"


def _no_default(default) -> bool:
    # Identity, not ==: 0 == False, and a default of 0 is one to show.
    return default is None or default is False or default is argparse.SUPPRESS


def add_training_gpu_options(p: argparse.ArgumentParser) -> None:
    """``--gpu`` and ``--gpu-wait`` of the jobs that train (one GPU per Ray Train worker)."""
    from ncf.device import GPU_SETTINGS

    p.add_argument("--gpu", default="auto", choices=GPU_SETTINGS, help="GPUs of the Ray cluster: auto, yes or no")
    p.add_argument(
        "--gpu-wait",
        type=wait_seconds,
        default=0.0,
        help="seconds to wait for a GPU per worker (a sweep: per worker of its --concurrent trials), asked of "
        "the autoscaler of a cluster the job joined (a cluster.yaml cluster starts without GPU nodes; the request "
        "replaces any other job's standing one; a local cluster has none, so no wait); 0 counts the GPUs already up",
    )


def gpu_wait_applies(args: argparse.Namespace) -> bool:
    """Whether ``--gpu-wait`` waits: a positive wait on a cluster the job joined (``RAY_ADDRESS``),
    whose autoscaler may add GPUs; the job's own local cluster has none."""
    return args.gpu_wait > 0 and joins_a_cluster()


def training_on_gpu(args: argparse.Namespace, workers: int, wait_for: int | None = None) -> bool:
    """Whether the workers train on GPUs, from ``--gpu`` and ``--gpu-wait`` (Ray initialised).
    ``wait_for``: the GPUs ``--gpu-wait`` asks the autoscaler for, when more than ``workers``
    could train at once (a sweep's trials)."""
    from ncf.device import cluster_gpus, gpu_build_missing, gpus_usable, gpus_within, resolve_gpu

    up = cluster_gpus()
    # The build first: GPU nodes started, and minutes waited, for a build that cannot use them.
    if not gpus_usable(args.gpu, gpu_build_missing(training=True), up):
        return False
    wanted, wait, advice = max(workers, wait_for or 0), args.gpu_wait, {}
    if wait > 0 and not gpu_wait_applies(args):
        wait, advice = 0.0, {"advice": ""}  # the advice to wait would be the option just given
        if up < wanted:
            print(
                "[gpu] --gpu-wait: this job's own local cluster has no autoscaler to add GPUs; not waiting",
                file=sys.stderr,
                flush=True,
            )
    available = gpus_within(wanted, wait)
    return resolve_gpu(args.gpu, available, workers=workers, waited_s=wait, **advice)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def non_negative_float(text: str) -> float:
    """argparse type: a number, 0 or more."""
    value = _number(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def wait_seconds(text: str) -> float:
    """argparse type: seconds to wait, 0 or more and finite (a job waits for a bound)."""
    value = non_negative_float(text)
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number above 0 (a learning rate)."""
    value = _number(text)
    if not value > 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: seconds above 0, ``inf`` for no limit."""
    value = _number(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be above 0 (inf: no limit), not {text}")
    return value


def tcp_port(text: str) -> int:
    """argparse type: a TCP port, 1..65535."""
    value = _int_at_least(text, 1)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, not {value}")
    return value


def bind_host(text: str) -> str:
    """argparse type: an address or host name to bind a server to. An empty one (a script's
    unset variable) is refused: Serve would bind every address for it."""
    host = text.strip()
    if not host or any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(
            f"an address to bind (127.0.0.1: this machine only; 0.0.0.0: every address), not {text!r}"
        )
    if host.startswith("[") or host.endswith("]"):
        raise argparse.ArgumentTypeError(f"an IPv6 address goes without brackets: {host.strip('[]')}")
    return host


def positive_int(text: str) -> int:
    """argparse type: a whole number, 1 or more (a count of workers, epochs, lists per step)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number, 0 or more (for options where 0 means "all" or "no cap")."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more, not {value}")
    return value


def version_line() -> str:
    """``--version``: the package and the model directory format it writes and reads."""
    from ncf import __version__
    from ncf.model.directory import FORMAT_VERSION

    return f"advanced-ncf-platform {__version__} (model directory format {FORMAT_VERSION})"


RAY_CLUSTER_EPILOG = (  # lines of the help's width: the formatter keeps an epilog as written
    "Ray cluster: the one RAY_ADDRESS names (HOST:6379, from `ray start --head`) when\n"
    "set, else a local one started for the job and stopped with it; or submit the job\n"
    "with `ray job submit`."
)


def job_parser(
    job: str, description: str, epilog: str | None = None, uses_ray: bool = False
) -> argparse.ArgumentParser:
    """The parser of ``python -m jobs.<job>``, with ``--version``; ``uses_ray``: the help says
    how the job finds its cluster."""
    epilog = "\n\n".join(part for part in (epilog, RAY_CLUSTER_EPILOG if uses_ray else None) if part) or None
    p = argparse.ArgumentParser(
        prog=f"python -m jobs.{job}", description=description, epilog=epilog, formatter_class=HelpFormatter
    )
    p.add_argument("--version", action="version", version=version_line(), help="print the versions and exit")
    return p


# -- the paths a job reads ----------------------------------------------------------------------------

PREPROCESS_FIRST = "run python -m jobs.preprocess first"
TRAIN_FIRST = "run python -m jobs.train first"
DATA_DIR = "preprocessed DATA directory"
MODEL_DIR = "model directory"


def refuse_empty_paths(args: argparse.Namespace, options: Sequence[str]) -> None:
    """Refuses (InputError, one line naming the option) a path option given as "" or blanks: an
    unset variable in a script (``--output "$MODEL"``), which some callers would read as not
    given and others as the working directory, which ``--overwrite`` replaces."""
    for option in options:
        value = _option_value(args, option)
        if isinstance(value, str) and not value.strip():
            raise empty_path(option)


def refuse_empty_name(name: Optional[str]) -> None:
    """``--name ""`` (an unset variable: ``--name "$RUN"``) started a fresh training, the
    interrupted run's checkpoints left behind: refused in one line."""
    if name is not None and not name.strip():
        raise InputError("--name is empty: give the run's name (an unset variable in a script?)")


def refuse_unpacked_outputs(args: argparse.Namespace, options: Sequence[str]) -> None:
    """:func:`refuse_unpacked` for each path option of ``options`` (what the job writes)."""
    for option in options:
        refuse_unpacked(option, _option_value(args, option))


def refuse_unpacked(option: str, path) -> None:
    """Refuses (InputError, one line) ``path`` (what a job writes, or registers) inside a Ray
    job's unpacked working directory: ``ray job submit --working-dir .`` with a relative
    ``--output artifacts/model`` wrote the model into Ray's copy, deleted after the job, and the
    registry named it current."""
    from ncf.registry import in_unpacked_working_dir

    if isinstance(path, str) and "://" not in path and in_unpacked_working_dir(path):
        raise InputError(unpacked_path(option, path))


def _option_value(args: argparse.Namespace, option: str):
    """The value argparse keeps for ``--option-name``."""
    return getattr(args, option.lstrip("-").replace("-", "_"))


def unpacked_path(option: str, path: str) -> str:
    """The refusal of ``path`` given as ``option`` inside a Ray job's unpacked working directory."""
    return (
        f"{option} {path} is in the job's unpacked working directory ({os.path.abspath(path)}), which Ray deletes "
        "after the job, on the head alone: give a path on storage every node mounts"
    )


def empty_path(option: str) -> InputError:
    """The refusal of a path option given as "" or blanks."""
    return InputError(f"{option} is empty: give a path (an unset variable in a script?)")


def require_dir(path: str, what: str, option: str, run_first: str) -> str:
    """``path`` is a directory with something in it, else a one-line error saying what to run."""
    from ncf.staging import present

    if not path.strip():  # an unset variable in a script: "" would be the working directory to some callers
        raise empty_path(option)
    reason = None
    if not present(path):  # a replacement killed between its renames is finished first
        reason = "no such directory"
    elif not os.path.isdir(path):
        reason = "not a directory"
    else:
        try:
            reason = None if os.listdir(path) else "empty"
        except OSError as e:  # a folder this user may not list (a share's permissions)
            raise InputError(f"{path}: not readable ({e.strerror or e}, {option})") from None
    if reason:
        raise InputError(f"{path}: not a {what} ({reason}, {option}); {run_first}")
    return path


def check_data(path: str, runs: tuple = (), option: str = "--data") -> str:
    """A DATA directory of jobs.preprocess (its stats.json), with the training lists of ``runs``
    (``validated``, ``refit``) when a job trains on it."""
    from ncf.data import layout
    from ncf.data.examples import check_features_version
    from ncf.data.neighbours import FILE as NEIGHBOURS_FILE

    require_dir(path, DATA_DIR, option, PREPROCESS_FIRST)
    stats = layout.DataStats(path)  # no stats.json: names the path and jobs.preprocess
    for run in runs:
        recorded = stats.raw.get("cutoffs", {}).get(run, [])
        found = layout.existing_examples_dirs(path, recorded)
        missing = [c for c in recorded if c not in found]
        if missing and not stats.raw.get("state_only") and stats.raw.get("examples", {}).get(run, {}).get("lists"):
            raise InputError(
                f"{path}: no training lists at {len(missing)} of the {run} run's cutoffs "
                f"({', '.join(str(c) for c in missing[:3])}): removed since, or preprocessed by a version that "
                "recorded cutoffs where no household had a list (a short log); run python -m jobs.preprocess again"
            )
        if stats.raw.get("state_only") or missing or run not in stats.raw.get("cutoffs", {}):
            raise InputError(
                f"{path}: no training lists for the {run} run ({option}; preprocessed with --state-only?); "
                "run python -m jobs.preprocess without --state-only first"
            )
    if not runs and not os.path.exists(os.path.join(layout.product_stats_dir(path), NEIGHBOURS_FILE)):
        raise InputError(
            f"{path}: preprocessed by an older version (no product_stats/{NEIGHBOURS_FILE}, the products' "
            "co-purchase neighbours every ranking reads); run python -m jobs.preprocess again"
        )
    check_features_version(path)
    return path


def data_state_paths(data: str) -> list:
    """The folders of DATA that :func:`ncf.model.integrity.verify_data_state` reads."""
    from ncf.data import layout

    return [layout.vocab_dir(data), layout.user_state_dir(data), layout.product_stats_dir(data)]


def check_model(ref: str, option: str = "--model", verify: bool = True) -> str:
    """The model directory ``ref`` names (a path, or ``current`` / ``models:/...`` through the
    registry), checked: it exists, holds a config.json this code reads and, with ``verify``,
    matches its checksum manifest and agrees with itself (:func:`ncf.model.integrity.verify_model_dir`;
    ``verify=False`` for the jobs whose library call verifies it anyway).

    Returns it resolved (a blue/green link's target, as :func:`ncf.batch.scoring.resolved`): the
    directory checked, which a training repointing the link meanwhile does not change."""
    from ncf.model.directory import ModelDir
    from ncf.model.integrity import note_verification, verify_model_dir
    from ncf.registry import is_registry_ref, resolve_model

    path = resolve_model(ref)
    if not is_registry_ref(ref):
        require_dir(path, MODEL_DIR, option, TRAIN_FIRST)
    # No config.json, or another format: names the path and jobs.train; read from the target, once.
    checked = ModelDir(path).path
    if verify:
        # A damaged or half-copied directory would rank wrongly, silently; the one verified is returned.
        note_verification(f"{option} {ref}", [checked])
        checked = verify_model_dir(path)
    return checked


def model_overrides(text: str, option: str = "--model-config") -> dict:
    """``--model-config`` (alias ``--model``) of the training jobs: ModelConfig overrides as JSON, checked."""
    from ncf.model.config import ModelConfig

    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as e:
        mixup = (
            " (a model directory is --model of jobs.evaluate, batch_score and deploy; here it sets the architecture)"
            if os.path.isdir(text)
            else ""
        )
        raise InputError(f"{option} {text!r}: not JSON ({e.msg}); e.g. '{{\"mf_embedding_dim\": 64}}'{mixup}") from None
    if not isinstance(overrides, dict):
        raise InputError(f"{option} {text!r}: expected a JSON object of ModelConfig fields")
    try:
        ModelConfig(num_users=1, num_products=1, num_departments=1, num_categories=1, **overrides)
    except (TypeError, ValueError) as e:
        raise InputError(f"{option} {text!r}: {e}") from None
    return overrides
