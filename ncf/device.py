"""Picks the accelerator when there is one; CPU otherwise. Nothing here requires CUDA.

``--gpu auto|yes|no`` means the same for every job: GPUs of the Ray cluster the job runs on
(a laptop run's cluster is this machine; a submitted job's is the cluster's nodes).
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Callable, Optional

import torch

from ncf.errors import InputError, TryLater, exit_on_sigterm

GPU_SETTINGS = ("auto", "yes", "no")
_ON_AUTOSCALING = " (on a cluster that adds GPU nodes on demand, --gpu-wait SECONDS waits for them)"


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def check_gpu_usable(instead: str, training: bool = False) -> None:
    """Refuses (InputError, one line) a process Ray gave a GPU that this node's builds cannot use:
    Ray counts GPUs from the hardware, and the driver decided from the cluster's GPUs (on a
    cluster, its own node's builds are the CPU ones: :func:`gpu_build_missing`), so a GPU node set
    up with the CPU builds, or whose NVIDIA driver is older than torch's CUDA (or missing), passed
    every check before, and the work then failed on its first CUDA call (or its first NCCL
    collective) with a traceback. ``training``: fbgemm's CUDA build too. ``instead``: the job's
    way around, e.g. ``--gpu no``."""
    import socket

    node = f"this node ({socket.gethostname()}) was given a GPU but"
    missing = local_build_missing(training)
    if missing is not None:
        raise InputError(f"{node} {missing}: set it up with make setup ACCEL=cuda, or {instead}")
    if not torch.cuda.is_available():
        raise InputError(
            f"{node} torch cannot use one (torch.cuda.is_available() is False, torch built for CUDA "
            f"{torch.version.cuda}): is its NVIDIA driver older than that, or missing? Update the driver, or {instead}"
        )


def gpus_on_other_nodes() -> bool:
    """Whether this process joined a cluster (``RAY_ADDRESS``) on a node that holds no GPU: the
    cluster's GPU work then runs on other nodes, with their own builds (cluster.yaml installs the
    CPU builds on CPU nodes, where the CUDA fbgemm-gpu cannot even load), which each worker and
    actor checks as it starts (:func:`check_gpu_usable`). Ray must be initialised."""
    import os

    import ray

    if not (os.environ.get("RAY_ADDRESS") and ray.is_initialized()):
        return False
    here = ray.get_runtime_context().get_node_id()
    return any(
        node.get("NodeID") == here and not node.get("Resources", {}).get("GPU")
        for node in ray.nodes()
        if node.get("Alive")
    )


def cluster_gpus() -> int:
    """GPUs of the Ray cluster this process is connected to (Ray must be initialised)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def gpus_within(workers: int, wait_s: float, log: Callable[[str], None] = print, poll_s: float = 5.0) -> int:
    """The cluster's GPUs, after waiting up to ``wait_s`` seconds for ``workers`` of them.

    An autoscaling cluster (``cluster.yaml``) starts with no GPU node, so counting at once would
    refuse ``--gpu yes`` and run ``auto`` on CPU. The autoscaler is asked for one GPU per worker
    and the count polled until they are up; the request is withdrawn before returning, so GPU
    nodes left idle after the job scale down as usual, and also when the job is stopped while it
    waits (``ray job stop`` sends SIGTERM, whose default handling skips ``finally``). The request
    is the cluster's one standing request: it replaces another job's, and withdrawing it clears
    that one too. Ray must be initialised.
    """
    available = cluster_gpus()
    if available >= workers or wait_s <= 0:
        return available
    from ray.autoscaler.sdk import request_resources

    log(f"[gpu] waiting up to {wait_s:g} s for {workers} GPUs (the cluster has {available}): asked the autoscaler")
    deadline = time.monotonic() + wait_s
    previous = exit_on_sigterm()
    try:
        # Inside the try: a SIGTERM the moment the request is made still withdraws it.
        request_resources(bundles=[{"GPU": 1}] * workers)
        while available < workers and time.monotonic() < deadline:
            time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
            available = cluster_gpus()
    finally:
        request_resources(bundles=[])
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log(f"[gpu] the cluster has {available} GPUs")
    return available


def fbgemm_cuda_build() -> bool:
    """Whether the installed fbgemm is its CUDA build (the ``fbgemm-gpu`` package, ``make setup
    ACCEL=cuda``), whose kernels TorchRec's sharded, fused embedding tables train with on GPUs;
    the CPU build (``fbgemm-gpu-cpu``, a plain ``make setup``) has none."""
    from importlib import metadata

    try:
        metadata.distribution("fbgemm-gpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def torch_cuda_build() -> bool:
    """Whether this environment's torch is built with CUDA (``make setup`` may find its CPU build)."""
    return torch.version.cuda is not None


def gpu_build_missing(training: bool) -> Optional[str]:
    """Why this environment cannot run on GPUs, whatever GPUs the cluster has (Ray counts them
    from the hardware, not from what is installed): torch's CPU build; for ``training``, fbgemm's
    CPU build too (:func:`fbgemm_cuda_build`). None when it can, and where the GPUs are other
    nodes' (:func:`gpus_on_other_nodes`: a driver on a CPU head), whose builds they check."""
    return None if gpus_on_other_nodes() else local_build_missing(training)


def local_build_missing(training: bool) -> Optional[str]:
    """Why this process's own builds cannot run on a GPU (torch's CPU build; for ``training``,
    fbgemm's too), or None: :func:`gpu_build_missing` before a job starts, :func:`check_gpu_usable`
    in each worker and actor given a GPU."""
    if not torch_cuda_build():
        return "torch is installed as its CPU build (torch.version.cuda is None)"
    if training and not fbgemm_cuda_build():
        return (
            "fbgemm is installed as its CPU build (fbgemm-gpu-cpu), without the CUDA kernels TorchRec's tables "
            "train with"
        )
    return None


def gpus_usable(setting: str, missing: Optional[str], cluster_gpus: int) -> bool:
    """Whether ``setting`` may use GPUs given :func:`gpu_build_missing`'s answer ``missing``: ``no``
    never; ``auto`` not where the build lacks CUDA (said where the cluster has GPUs: on a CPU
    cluster that is the ordinary run); ``yes`` refused there. Asked before any wait for GPUs, so
    that no GPU node is started for a build that cannot use it.

    Raises:
        InputError: ``yes`` where the build lacks CUDA.
    """
    if setting == "no":
        return False
    if missing is None:
        return True
    if setting == "yes":
        raise InputError(f"--gpu yes: {missing}; install the CUDA builds (make setup ACCEL=cuda) or use --gpu no")
    if cluster_gpus > 0:
        print(
            f"[gpu] --gpu auto: {missing}: running on CPU (make setup ACCEL=cuda installs the CUDA builds)",
            file=sys.stderr,
            flush=True,
        )
    return False


def resolve_gpu(
    setting: str,
    available: int,
    workers: int = 1,
    waited_s: float = 0.0,
    *,
    holders: str = "workers",
    advice: str = _ON_AUTOSCALING,
) -> bool:
    """Whether ``workers`` (each holding one GPU at once: training's workers, a sweep trial's,
    batch scoring's actors) run on GPUs: ``auto`` when the cluster's ``available`` GPUs are
    enough, else CPU (saying why when there are some); ``yes`` refused when they are not; ``no``.
    ``holders`` names them as their option does (``workers``: ``--workers``; ``actors``:
    ``--actors``); ``advice`` ends a refusal that did not wait (training's: ``--gpu-wait``).

    Raises:
        InputError: an unknown setting, or ``yes`` with fewer GPUs than workers (Ray Train would
            wait for the missing ones forever); ``waited_s``: how long ``--gpu-wait`` waited.
        TryLater: the same after ``--gpu-wait`` waited (exit 75: the GPUs may still come).
    """
    hint = f" (after waiting {waited_s:g} s for them)" if waited_s > 0 else advice
    if setting not in GPU_SETTINGS:
        raise InputError(f"--gpu must be one of {', '.join(GPU_SETTINGS)}, not {setting!r}")
    if setting == "no":
        return False
    if available >= workers:
        return True
    if setting == "yes":
        # After --gpu-wait the GPUs may still come (an autoscaler's nodes starting): try later.
        shortage = TryLater if waited_s > 0 else InputError
        if available == 0:
            raise shortage(f"--gpu yes: the Ray cluster has no GPU; use --gpu no{hint}")
        raise shortage(
            f"--gpu yes: {workers} {holders} need a GPU each and the Ray cluster has {available}; "
            f"use --{holders} {available} or fewer, or --gpu no{hint}"
        )
    if available > 0:
        print(
            f"[gpu] --gpu auto: {workers} {holders} need a GPU each and the Ray cluster has {available}; "
            "running on CPU",
            file=sys.stderr,
            flush=True,
        )
    return False
