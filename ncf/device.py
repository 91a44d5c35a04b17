"""Picks the accelerator when there is one; CPU otherwise. Nothing here requires CUDA.

``--gpu auto|yes|no`` means the same for every job: GPUs of the Ray cluster the job runs on
(a laptop run's cluster is this machine; a submitted job's is the cluster's nodes).
"""

from __future__ import annotations

import torch

from ncf.errors import InputError

GPU_SETTINGS = ("auto", "yes", "no")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cluster_gpus() -> int:
    """GPUs of the Ray cluster this process is connected to (Ray must be initialised)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def resolve_gpu(setting: str, available: int) -> bool:
    """``auto`` (GPUs when ``available``), ``yes`` (refused without any) or ``no``."""
    if setting not in GPU_SETTINGS:
        raise InputError(f"--gpu must be one of {', '.join(GPU_SETTINGS)}, not {setting!r}")
    if setting == "yes" and available == 0:
        raise InputError("--gpu yes: the Ray cluster has no GPU")
    return setting == "yes" or (setting == "auto" and available > 0)
