"""Picks the accelerator when there is one; CPU otherwise. Nothing here requires CUDA."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def use_gpu(setting: str | bool = "auto") -> bool:
    """Resolves a ``--gpu auto|yes|no`` style setting against what this machine has."""
    if isinstance(setting, bool):
        wanted = setting
    elif setting == "auto":
        return torch.cuda.is_available()
    elif setting in ("yes", "true", "1"):
        wanted = True
    elif setting in ("no", "false", "0"):
        wanted = False
    else:
        raise ValueError(f"gpu setting must be auto, yes or no, not {setting!r}")
    if wanted and not torch.cuda.is_available():
        raise RuntimeError("a GPU was asked for (--gpu yes) but torch sees no CUDA device")
    return wanted
