"""What a job prints: logs that read well on a terminal and in a file (``make demo > demo.log``).

One place decides it; :func:`jobs.cli.init_ray` applies it before Ray starts, and every Ray worker
of the job runs :func:`quiet_dependencies` when it starts (a ``worker_process_setup_hook``).

Each setting removes one kind of noise, traced to its cause on small runs of the jobs:

* **Progress bars only on a terminal.** Off a terminal, Ray Data logs a multi-line progress table
  for every dataset it runs, dozens per job, and Ray Data running *inside* a worker (Ray Train's
  input pipeline) draws tqdm bars through the driver (``use_ray_tqdm``, switched off). Off a
  terminal Ray Data's console output is at WARNING (its full log stays
  in the session's ``ray-data.log``: :func:`quiet_ray_data_console`) and the jobs' own
  ``[stage]`` lines tell the progress.
* **No colour codes off a terminal:** the ``(Worker pid=...)`` prefixes of lines forwarded from
  workers (``RAY_COLOR_PREFIX=0``) and the dashboard address in Ray's start-up line.
* **"N PYTHON worker processes have been started ... maximum expected startup concurrency".**
  Not fractional CPU requests: Ray Data's Parquet reader lists files on a pool of 32 zero-CPU
  ``FooterReader`` actors, a process each, on every read whatever the cluster's size (every epoch
  of training on a 2-core machine started 32 processes and waited ~20 s for them). A local
  cluster caps the pool at its CPUs.
* **core_worker "constructor arguments in the object store" errors:** Ray Train's
  ``PreemptionWatcher`` (it watches nodes for spot preemption: nothing to watch on a local
  cluster, so it is off there) and the batch-scoring actors (see :mod:`ncf.batch.scorer`).
* **"Token authentication is enabled for this Ray cluster"**: a WARNING on every local start
  announcing the secure default the project wants. Setting ``RAY_AUTH_MODE=token`` ourselves would
  avoid it, but only before ``import ray`` (Ray caches the mode at import), so the notice is
  filtered by its message instead.
* **Dependency chatter in every process** (:func:`quiet_dependencies`): harmless warnings of
  torch, TorchRec and FBGEMM that nothing in this project can change, each filtered by its exact
  message, and their INFO logs (TorchRec's planner tables, FBGEMM's kernel arguments), which Ray
  workers would otherwise print because Ray sets their root logger to INFO.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Dict, Optional

# The hook Ray runs in each worker process of a job started by init_ray.
WORKER_SETUP_HOOK = "jobs.logs.quiet_dependencies"
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `jobs` imports from
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# Harmless Python warnings raised inside dependencies: (category, start of the message, why).
DEPENDENCY_WARNINGS = [
    (
        FutureWarning,
        "Please use DTensor instead and we are deprecating ShardedTensor",
        "torch deprecates ShardedTensor on import, yet TorchRec 1.8 shards its tables as ShardedTensors",
    ),
    (
        FutureWarning,
        "`broadcast_buffers` is deprecated",
        "TorchRec's DistributedModelParallel passes the deprecated DDP argument itself",
    ),
    (
        Warning,  # ray.util.annotations.RayDeprecationWarning, without importing Ray here
        "`ExecutionOptions.exclude_resources` is deprecated",
        "Ray Train's own dataset manager calls the deprecated Ray Data option",
    ),
]
# Harmless log records of dependencies: (logger, start of the message, why).
DEPENDENCY_LOG_RECORDS = [
    (
        "torch.fx._symbolic_trace",
        "is_fx_tracing will return true",
        "torch 2.13's ProxyableClassMeta (the metaclass of TorchRec's KeyedTensor and "
        "KeyedJaggedTensor) calls torch's own deprecated is_fx_tracing() on every construction; "
        "the warning is about torch calling itself, once per process that runs the model",
    ),
]
# Ray's notices about settings the project chose on purpose: (logger, start of the message, why).
RAY_NOTICES = [
    (
        "ray._private.authentication.authentication_token_setup",
        "Token authentication is enabled for this Ray cluster",
        "token authentication is the security default the project keeps (RELIABILITY.md)",
    ),
]
# Libraries whose INFO logs are internals (planner tables, kernel arguments, loaded .so files).
CHATTY_LIBRARIES = ("torchrec", "fbgemm_gpu")


def interactive() -> bool:
    """True when both output streams are terminals (then bars and colours are for a person)."""
    return _isatty(sys.stdout) and _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


class _LibraryInfo(logging.Filter):
    """Drops records below WARNING logged on the root logger from inside a library (FBGEMM logs
    with ``logging.info`` on the root logger, so its logger name cannot tell it apart)."""

    def __init__(self, packages) -> None:
        super().__init__()
        self.markers = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(m in record.pathname for m in self.markers)


class _StripAnsi(logging.Filter):
    """Removes terminal escape codes from a record's message (Ray colours the dashboard address)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\x1b" in message:
            record.msg, record.args = ANSI_ESCAPE.sub("", message), None
        return True


def _add_filter_once(logger: logging.Logger, new: logging.Filter) -> None:
    if not any(type(f) is type(new) for f in logger.filters):
        logger.addFilter(new)


def quiet_dependencies() -> None:
    """Filters the dependency warnings and logs listed above in this process (idempotent).

    Runs in the driver (from :func:`configure`) and, as Ray's ``worker_process_setup_hook``, in
    every worker process of a job: Ray Train workers, Ray Data actors, Serve replicas.
    """
    for category, message, _why in DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    by_logger: Dict[str, list] = {}
    for name, message, _why in DEPENDENCY_LOG_RECORDS + RAY_NOTICES:
        by_logger.setdefault(name, []).append(message)
    for name, messages in by_logger.items():
        _add_filter_once(logging.getLogger(name), _DropMessages(messages))
    for name in CHATTY_LIBRARIES:
        if logging.getLogger(name).level < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)
    _add_filter_once(logging.getLogger(), _LibraryInfo(CHATTY_LIBRARIES))


def quiet_ray_data_console() -> None:
    """Ray Data's own logging configuration with its console handler at WARNING, for this process
    and (through ``RAY_DATA_LOGGING_CONFIG``, which Ray Data reads when a worker imports it) the
    local cluster's workers. Built from Ray Data's default configuration, so its file handlers
    stay as they are; Ray's internals are used here, so a Ray without them keeps its defaults."""
    if "RAY_DATA_LOGGING_CONFIG" in os.environ:
        return  # the user's own configuration
    try:
        import copy

        import yaml
        from ray.data._internal import logging as ray_data_logging

        config = copy.deepcopy(ray_data_logging.DEFAULT_CONFIG)
        config["handlers"]["console"]["level"] = "WARNING"
        path = os.path.join(tempfile.gettempdir(), f"ncf-ray-data-logging-{os.getuid()}.yaml")
        # A fresh file of its own (O_EXCL), never a fixed name another user could plant a link at.
        descriptor, written = tempfile.mkstemp(prefix=os.path.basename(path) + ".", dir=os.path.dirname(path))
        try:
            with os.fdopen(descriptor, "w") as f:
                yaml.safe_dump(config, f)
            os.replace(written, path)
        except BaseException:
            os.unlink(written)
            raise
        os.environ["RAY_DATA_LOGGING_CONFIG"] = path
        # Ray Data configured itself when first imported, which in the driver may be earlier.
        ray_data_logging.configure_logging()
    except (ImportError, AttributeError, KeyError, OSError) as error:
        logging.getLogger(__name__).info("Ray Data's console logging left as it is: %r", error)


def configure(local: bool, num_cpus: Optional[int] = None) -> Dict:
    """Applies the settings above to this process before ``ray.init``; returns the
    ``runtime_env`` the job's workers need.

    Args:
        local: True when this process starts its own local cluster (whose processes inherit this
            process's environment and import path), False when it joins one (``RAY_ADDRESS``):
            then only the driver's own output is configured, since the cluster's workers may not
            have this code on their path.
        num_cpus: the local cluster's CPUs (default: the machine's).
    """
    quiet_dependencies()
    if local:
        # Ray runs the setup hook before it puts the driver's directory on a worker's import
        # path, so the hook's package must be importable from the environment the local
        # cluster's processes inherit (without it every worker fails to start, and Ray retries
        # the task forever).
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in dict.fromkeys([PROJECT_ROOT, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]) if p
        )
        # Node preemption (spot instances) cannot happen to a one-machine cluster.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # Footer reads are I/O: a few processes are plenty on one machine.
        cpus = num_cpus or os.cpu_count() or 1
        os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", str(max(1, min(int(cpus), 4))))
    if not interactive():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        _add_filter_once(logging.getLogger("ray._private.worker"), _StripAnsi())
        quiet_ray_data_console()
        from ray.data import DataContext

        DataContext.get_current().use_ray_tqdm = False
    return {"worker_process_setup_hook": WORKER_SETUP_HOOK} if local else {}
