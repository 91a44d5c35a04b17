"""Picks the accelerator when there is one; CPU otherwise. Nothing here requires CUDA.

``--gpu auto|yes|no`` means the same for every job: GPUs of the Ray cluster the job runs on
(a laptop run's cluster is this machine; a submitted job's is the cluster's nodes).
"""

from __future__ import annotations

import sys

import torch

from ncf.errors import InputError

GPU_SETTINGS = ("auto", "yes", "no")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cluster_gpus() -> int:
    """GPUs of the Ray cluster this process is connected to (Ray must be initialised)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def resolve_gpu(setting: str, available: int, workers: int = 1) -> bool:
    """Whether ``workers`` (each holding one GPU at once: training's workers, a sweep trial's)
    run on GPUs: ``auto`` when the cluster's ``available`` GPUs are enough, else CPU (saying why
    when there are some); ``yes`` refused when they are not; ``no``.

    Raises:
        InputError: an unknown setting, or ``yes`` with fewer GPUs than workers (Ray Train would
            wait for the missing ones forever).
    """
    if setting not in GPU_SETTINGS:
        raise InputError(f"--gpu must be one of {', '.join(GPU_SETTINGS)}, not {setting!r}")
    if setting == "no":
        return False
    if available >= workers:
        return True
    if setting == "yes":
        if available == 0:
            raise InputError("--gpu yes: the Ray cluster has no GPU")
        raise InputError(
            f"--gpu yes: {workers} workers need a GPU each and the Ray cluster has {available}; "
            f"use --workers {available} or fewer, or --gpu no"
        )
    if available > 0:
        print(
            f"[gpu] --gpu auto: {workers} workers need a GPU each and the Ray cluster has {available}; running on CPU",
            file=sys.stderr,
            flush=True,
        )
    return False
