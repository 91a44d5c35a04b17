"""The import layering README states ("Data flows one way"), checked on every module's imports,
those inside functions included: a later import of a higher layer fails here, not in a review."""

import ast
import os

from helpers import REPO

# Inside ncf, each folder imports only those to its left, the shared pieces and itself.
NCF_ORDER = ("data", "model", "rank", "evaluate", "train", "batch")
SHARED = {"errors", "jsonio", "splits", "moments", "device", "staging", "code", "slot", "cluster"}
# Beyond that order: the registry reads data and model only, training records its runs through
# it, and scoring is rank's public name.
ALSO_ALLOWED = {"registry": {"data", "model"}, "train": {"registry"}, "scoring": {"rank"}}
TOP_ALLOWED = {
    "ncf": {"ncf"},
    "tune": {"ncf", "tune"},
    "serve": {"ncf", "serve"},
    "jobs": {"ncf", "tune", "serve", "jobs"},
}


def _imports(path: str):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def _modules(package: str):
    for root, _, names in os.walk(os.path.join(REPO, package)):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield os.path.relpath(path, REPO), path


def _ncf_part(relative: str) -> str:
    """``ncf/data/x.py`` -> ``data``; ``ncf/errors.py`` -> ``errors``."""
    parts = relative.split(os.sep)
    return parts[1] if len(parts) > 2 else parts[1][: -len(".py")]


def test_every_import_follows_the_layers_readme_states():
    wrong = []
    for top, allowed in TOP_ALLOWED.items():
        for relative, path in _modules(top):
            for module in _imports(path):
                first = module.split(".")[0]
                if first in TOP_ALLOWED and first not in allowed:
                    wrong.append(f"{relative} imports {module}")
                if top != "ncf" or first != "ncf" or module == "ncf":
                    continue
                mine, theirs = _ncf_part(relative), module.split(".")[1]
                if theirs in (mine, *SHARED) or theirs in ALSO_ALLOWED.get(mine, ()):
                    continue
                if mine in SHARED or theirs not in NCF_ORDER or mine not in NCF_ORDER:
                    wrong.append(f"{relative} imports {module}")
                elif NCF_ORDER.index(theirs) > NCF_ORDER.index(mine):
                    wrong.append(f"{relative} imports {module}")
    assert not wrong, wrong
