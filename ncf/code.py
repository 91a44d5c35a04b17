"""What code runs: a digest of the project's Python source, for what must change when it does
(Serve's deployment version; a nightly run's plan, which a rerun on other code must not continue)."""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_digest(
    packages: Sequence[str] = ("ncf",),
    also: Callable[[str, str], bool] = lambda folder, name: False,
    root: str = REPO,
) -> str:
    """sha256 (16 hex digits) over the ``.py`` files of ``packages`` under the repository, and
    the files ``also(folder, name)`` names (a folder relative to ``root``, the repository), names
    and bytes."""
    digest = hashlib.sha256()
    for package in packages:
        for folder, dirs, files in sorted(os.walk(os.path.join(root, package))):
            dirs.sort()
            relative = os.path.relpath(folder, root)
            for name in sorted(f for f in files if f.endswith(".py") or also(relative, f)):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()[:16]
