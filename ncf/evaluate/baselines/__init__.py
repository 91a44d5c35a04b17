"""Baselines ranked by the same evaluation code as the model, one module per family.

* ``popularity`` (:mod:`.popularity`): the most bought products before the period;
* ``own_frequency`` and ``decayed_frequency`` (:mod:`.frequency`): the household's own most
  bought products, plainly counted or recency-decayed (half-life tuned);
* ``tifu_knn`` (:mod:`.tifuknn`): TIFU-KNN (Hu et al., SIGIR 2020), time-decayed group vectors
  blended with the nearest households' (groups, decays, alpha and k tuned);
* ``als`` (:mod:`.als`): implicit-feedback matrix factorisation (``implicit``; regularisation
  and factors tuned);
* ``boosted_ranker`` (:mod:`.boosted`): LightGBM on the model's own purchase-timing features
  and training lists (its leaves tuned).

Each is built for a period from a :class:`PointInTime` (what was known at its start) and
ranks a household at a moment from purchases strictly before it. :data:`BASELINES` lists
them with their tuning grids (searched on the validation weeks by
:mod:`ncf.evaluate.tuning`, never on test).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import inspect
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

from ncf.evaluate.baselines.als import ALSRanker
from ncf.evaluate.baselines.base import PointInTime, Ranker, rank_with_ties, tie_prior, top_k
from ncf.evaluate.baselines.boosted import BoostedRanker
from ncf.evaluate.baselines.frequency import DecayedFrequencyRanker, OwnFrequencyRanker
from ncf.evaluate.baselines.popularity import PopularityRanker
from ncf.evaluate.baselines.tifuknn import TifuKnnRanker, tifu_vectors


@dataclass(frozen=True)
class Baseline:
    """A baseline family: how to build it, its fixed parameters and its tuning grid.

    ``stages``: the grid, searched stage by stage; each stage is the Cartesian product of its
    values, the other parameters at the best found so far (``defaults`` before any). The
    best setting of a stage (by validation NDCG@10; the incumbent wins ties) carries over.
    ``stages_excluding_purchased``: the grid where rankings leave out what the household bought
    before (None: ``stages``), for parameters that only order the household's own products.
    """

    name: str
    build: Callable[..., Ranker]  # build(context, **params)
    defaults: Dict = field(default_factory=dict)
    stages: Tuple[Dict[str, Tuple], ...] = ()
    stages_excluding_purchased: Optional[Tuple[Dict[str, Tuple], ...]] = None

    @property
    def tunable(self) -> bool:
        return bool(self.stages)

    def stages_for(self, exclude_purchased: bool) -> Tuple[Dict[str, Tuple], ...]:
        if exclude_purchased and self.stages_excluding_purchased is not None:
            return self.stages_excluding_purchased
        return self.stages

    def grid(self, exclude_purchased: bool = False, rules: tuple = ()) -> Dict:
        """The whole search, as recorded beside tuned parameters (a cache is valid for it only),
        with a digest of the code that builds the baseline and of ``rules`` (the search's own
        functions): a changed baseline is searched again."""
        stages = [{k: list(v) for k, v in s.items()} for s in self.stages_for(exclude_purchased)]
        return {"defaults": self.defaults, "stages": stages, "code": code_digest(self.build, rules)}


# The libraries whose fits the baselines are: another version may choose other parameters.
TUNED_WITH = ("numpy", "scipy", "implicit", "lightgbm")


def _project_modules(module) -> list:
    """``module`` and the project's modules it takes names from (``ncf.rank.candidates`` for the
    boosted ranker's candidate counts, ``ncf.data.features`` for its features...)."""
    found = {module.__name__: module}
    for value in vars(module).values():
        name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(name, str) and name.startswith("ncf.") and name in sys.modules:
            found.setdefault(name, sys.modules[name])
    return [found[name] for name in sorted(found)]


@lru_cache(maxsize=None)
def code_digest(build: Callable, rules: tuple = ()) -> str:
    """A short digest of the code of the module that defines ``build``, of :mod:`.base` (what
    every baseline ranks through), of the evaluation protocol and metrics that score its
    validation trials, of every project module those take names from, through theirs (the time
    filters of ``ncf.data`` too), of ``rules`` (:func:`ncf.evaluate.tuning.tune`: its objective
    and tie rule choose among the trials) with what they use of their own module, and of the
    versions of :data:`TUNED_WITH`, as joblib's cache keys its functions by their code.

    The code is its syntax tree without docstrings, comments or line numbers: an edit of words,
    or of a function of the tuning module that ``tune`` does not reach (the cache's reading),
    keeps every baseline's tuning (days of search at 10M households); any change to what runs
    searches again, and so does another Python (its trees differ).

    Example::

        code_digest(BoostedRanker)  # 12 hex digits; another when boosted.py, features.py, protocol.py... change
    """
    from ncf.evaluate import metrics, protocol
    from ncf.evaluate.baselines import base

    modules = _modules_reached([inspect.getmodule(build), base, protocol, metrics])
    code = [_code(_syntax(modules[name]).body) for name in sorted(modules)]
    code += [_code(_used_by(rule)) for rule in rules]
    # The syntax trees' dump differs between Python versions (3.12 adds fields): an upgrade searches again, named here.
    versions = [f"{name} {_version(name)}" for name in TUNED_WITH] + [
        f"python {sys.version_info[0]}.{sys.version_info[1]}"
    ]
    return hashlib.sha256("\0".join(code + versions).encode()).hexdigest()[:12]


def _syntax(module) -> ast.Module:
    """``module``'s syntax tree without its docstrings (comments are not in it)."""
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and _docstring(node):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def _docstring(node) -> bool:
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _used_by(function: Callable) -> list:
    """The top-level statements of ``function``'s module that it may run: every one that is not
    a function or class definition (imports, constants, their updates), and the definitions of
    ``function`` and of every name they use there, through theirs (its helpers), in the
    module's order."""
    tree = _syntax(inspect.getmodule(function))
    defines: Dict[str, list] = {}
    for node in tree.body:
        if isinstance(node, _DEFINITIONS):
            defines.setdefault(node.name, []).append(node)
    used = {id(node): node for node in tree.body if not isinstance(node, _DEFINITIONS)}
    todo = [function.__name__] + [n.id for node in used.values() for n in ast.walk(node) if isinstance(n, ast.Name)]
    while todo:
        for node in defines.get(todo.pop(), []):
            if id(node) not in used:
                used[id(node)] = node
                todo.extend(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    return [node for node in tree.body if id(node) in used]


def _code(statements: list) -> str:
    return "\n".join(ast.dump(statement) for statement in statements)


def _modules_reached(roots: list) -> Dict:
    """``roots`` and every project module they take names from, through those modules' own, by name."""
    reached, todo = {}, list(roots)
    while todo:
        module = todo.pop()
        if module.__name__ not in reached:
            reached[module.__name__] = module
            todo.extend(_project_modules(module))
    return reached


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


# Grids: small on purpose (all of them tune in about two minutes on 2 cores on Complete
# Journey). Their ranges were set on the validation weeks: on Complete Journey, TIFU-KNN's
# within-decay 0.9, across-decay 0.6 and 28 groups were clearly worse there, and the best
# settings sit on a plateau (val NDCG@10 within 0.002 of each other).
# Where rankings leave out what the household bought, every product decayed frequency scores
# is left out: what remains is popularity, the same at every half-life, so nothing is searched
# (its record's stages are empty, its parameters the defaults).
DECAYED_FREQUENCY = Baseline(
    "decayed_frequency",
    DecayedFrequencyRanker,
    defaults={"half_life_days": 120.0},
    stages=({"half_life_days": (14.0, 30.0, 60.0, 90.0, 120.0, 180.0, 365.0)},),
    stages_excluding_purchased=(),
)
# TIFU-KNN: first the household's own vector alone (alpha 1: no neighbours, cheap), then the
# blend with its neighbours on the best vector (on Complete Journey the own vector carries
# nearly all of it: val NDCG@10 0.408 alone, 0.411 blended). Where rankings leave out what the
# household bought, its own vector is 0 on every product ranked: the neighbours' part alone
# orders them (any alpha below 1 gives the same order), so the groups and decays are searched
# with 50 neighbours, then the neighbours' count. On the no-rebuy log of "Beyond repeats" that
# gave test 0.1708 / 0.1573, where the count first (at the default decays) gave 0.1253 / 0.1212
# and the old own-vector stage 0.1493 / 0.1372 (BENCHMARKS).
TIFU_KNN = Baseline(
    "tifu_knn",
    TifuKnnRanker,
    defaults={
        "groups": 14,
        "within_decay": 0.9,
        "across_decay": 0.9,
        "alpha": 1.0,
        "neighbours": 0,
        "metric": "cosine",
    },
    stages=(
        {"groups": (3, 7, 14), "within_decay": (0.95, 0.97, 0.99), "across_decay": (0.8, 0.9, 0.95)},
        {"neighbours": (50, 100, 300), "alpha": (0.7, 0.8, 0.9)},
    ),
    stages_excluding_purchased=(
        {
            "alpha": (0.5,),
            "neighbours": (50,),
            "groups": (3, 7, 14),
            "within_decay": (0.95, 0.97, 0.99),
            "across_decay": (0.8, 0.9, 0.95),
        },
        {"neighbours": (10, 20, 50, 100, 300)},
    ),
)
# ALS: the regularisation, then the width at it (BM25 weighting with a product idf, K1 100, B 0.8).
# The BM25 weights reach about 100 times a count, so the regularisation that balances them is
# in the tens and hundreds: on Complete Journey's validation weeks 100 gave NDCG@10 0.286 and
# the old grid's 0.01-0.5 all 0.2265 (a one-off search of 2026-12-04: BENCHMARKS, "The
# baselines' grids looked at again"); the other weightings (implicit's orientation, raw
# counts) were lower at every regularisation.
ALS = Baseline(
    "als",
    ALSRanker,
    defaults={"factors": 128, "iterations": 15, "regularization": 100.0},
    stages=({"regularization": (10.0, 30.0, 100.0, 300.0)}, {"factors": (128, 256, 512)}),
)
# The boosted ranker: its size (each setting trains on the validated run's lists: ~1 min each).
BOOSTED = Baseline(
    "boosted_ranker",
    BoostedRanker,
    defaults={"num_leaves": 63, "rounds": 300},
    stages=({"num_leaves": (31, 63, 127)},),
)
BASELINES: Dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("popularity", PopularityRanker),
        Baseline("own_frequency", OwnFrequencyRanker),
        DECAYED_FREQUENCY,
        TIFU_KNN,
        ALS,
        BOOSTED,
    )
}

__all__ = [
    "ALSRanker",
    "BoostedRanker",
    "BASELINES",
    "Baseline",
    "DecayedFrequencyRanker",
    "OwnFrequencyRanker",
    "PointInTime",
    "PopularityRanker",
    "Ranker",
    "TifuKnnRanker",
    "code_digest",
    "rank_with_ties",
    "tie_prior",
    "tifu_vectors",
    "top_k",
]
