"""What code runs: a digest of the project's Python source, for what must change when it does
(Serve's deployment version; a nightly run's plan, which a rerun on other code must not continue),
and its commit, for a model's lineage."""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Callable, Dict, Sequence

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
        for folder, _, files in sorted(os.walk(os.path.join(root, package))):
            relative = os.path.relpath(folder, root)
            for name in sorted(f for f in files if f.endswith(".py") or also(relative, f)):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()[:16]


def code_version() -> Dict[str, str]:
    """The commit of the code that runs (``NCF_CODE_COMMIT`` overrides it: a cluster's working
    directory has no .git) and whether tracked files differ from it."""
    if os.environ.get("NCF_CODE_COMMIT"):
        return {"code_commit": os.environ["NCF_CODE_COMMIT"], "code_dirty": "unknown"}
    try:
        git = ["git", "-C", REPO]
        commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(
            git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=30
        )
        return {"code_commit": commit.stdout.strip(), "code_dirty": str(bool(status.stdout.strip())).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"code_commit": "unknown", "code_dirty": "unknown"}
