"""What a sweep searches: AdvancedNCF's dimensions and the training settings around them.

A sampled point is a flat dict (Optuna needs flat, independent parameters); :func:`to_train_config`
turns it into the ``TrainConfig`` one trial trains with. The MLP tower is searched as a depth
and a first width that halves layer by layer, so every sampled tower is a valid funnel, and
the head counts are divisors of every searched embedding width, so every point is a valid
model.

Example::

    point = default_point(data_limits("DATA"))
    config = to_train_config(point, TrainConfig(data="DATA"))
    config.model["mlp_hidden_dims"]  # [128, 64]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Dict, List

import numpy as np

from ncf.data import layout
from ncf.model.config import ModelConfig
from ncf.train.config import TrainConfig

EMBEDDING_DIMS = [16, 32, 64, 128]
HEADS = [1, 2, 4]  # divide every EMBEDDING_DIMS entry
TEMPORAL_DIMS = [8, 16, 32]
MLP_WIDTHS = [64, 128, 256]
MLP_DEPTHS = [1, 2, 3]
HISTORY_LENGTHS = [5, 10, 20]  # capped by what preprocessing stored, which is a choice too (data_limits)
UNKNOWN_SHARES = [0.02, 0.05, 0.2]  # share of lists / candidates trained on the unknown rows
LEARNING_RATE = (3e-4, 1e-2)
DROPOUT = (0.0, 0.3)

SEARCHED = [
    "mf_embedding_dim",
    "mlp_embedding_dim",
    "mlp_depth",
    "mlp_width",
    "temporal_dim",
    "num_heads",
    "history_length",
    "learning_rate",
    "dropout",
    "unknown_share",
]


def data_limits(data: str) -> Dict[str, int]:
    """The history length the preprocessed lists hold: a trial can read fewer, never more."""
    return {"history_length": int(layout.DataStats(data).examples["history_length"])}


def _capped(choices: List[int], limit: int) -> List[int]:
    return sorted({c for c in choices if c <= limit} | {limit})


def search_space(limits: Dict[str, int]) -> Dict:
    """The Ray Tune search space (sampled by Optuna's TPE through ``OptunaSearch``)."""
    from ray import tune

    return {
        "mf_embedding_dim": tune.choice(EMBEDDING_DIMS),
        "mlp_embedding_dim": tune.choice(EMBEDDING_DIMS),
        "mlp_depth": tune.choice(MLP_DEPTHS),
        "mlp_width": tune.choice(MLP_WIDTHS),
        "temporal_dim": tune.choice(TEMPORAL_DIMS),
        "num_heads": tune.choice(HEADS),
        "history_length": tune.choice(_capped(HISTORY_LENGTHS, limits["history_length"])),
        "learning_rate": tune.loguniform(*LEARNING_RATE),
        "dropout": tune.uniform(*DROPOUT),
        "unknown_share": tune.choice(UNKNOWN_SHARES),
    }


def mlp_tower(depth: int, width: int) -> List[int]:
    """``depth`` layers starting at ``width``, halving each time (at least 8 units)."""
    return [max(width >> i, 8) for i in range(depth)]


def is_point(config: Dict, point: Dict) -> bool:
    """Whether a trial's ``config`` is ``point`` in every searched dimension (floats as Optuna
    gives them back: within ``np.isclose``)."""
    values = [config.get(k) for k in SEARCHED]
    if any(v is None or point.get(k) is None for k, v in zip(SEARCHED, values)):
        return False
    return all(np.isclose(v, point[k]) for k, v in zip(SEARCHED, values))


def space_digest(limits: Dict[str, int]) -> str:
    """A digest of what a sweep's points mean: the searched dimensions, their choices and ranges,
    the towers their depths and widths build, and the default point. ``Tuner.restore`` samples a
    resumed sweep's new trials from the space pickled when it started, so a resume after a change
    to any of these would mix two spaces in one table (or fail each new trial on a new key)."""
    described = {
        "searched": sorted(SEARCHED),
        "space": {k: _described(domain) for k, domain in search_space(limits).items()},
        "towers": [mlp_tower(depth, width) for depth in MLP_DEPTHS for width in MLP_WIDTHS],
        "default": default_point(limits),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _described(domain) -> list:
    """A Tune domain as data, from Ray's public classes (not their private subclasses' names, which
    a Ray upgrade between a sweep's start and its resume may rename): its kind, its scale and its
    choices or bounds."""
    from ray.tune.search.sample import Categorical, LogUniform, Quantized

    if isinstance(domain, Categorical):
        return ["choice", list(domain.categories)]
    sampler = domain.get_sampler()
    step = ["q", sampler.q] if isinstance(sampler, Quantized) else []
    inner = sampler.sampler if isinstance(sampler, Quantized) else sampler
    scale = "log" if isinstance(inner, LogUniform) else "linear"
    return [type(domain).__name__.lower(), scale, *step, domain.lower, domain.upper]


def default_point(limits: Dict[str, int]) -> Dict:
    """The defaults of ``ModelConfig`` and ``TrainConfig`` as a point of the space, evaluated
    first so that every sweep measures its gain over them under the same budget."""
    model = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.default is not dataclasses.MISSING}
    hidden = ModelConfig.__dataclass_fields__["mlp_hidden_dims"].default_factory()
    train = TrainConfig()
    return {
        "mf_embedding_dim": model["mf_embedding_dim"],
        "mlp_embedding_dim": model["mlp_embedding_dim"],
        "mlp_depth": len(hidden),
        "mlp_width": hidden[0],
        "temporal_dim": model["temporal_dim"],
        "num_heads": model["num_heads"],
        "history_length": min(model["history_length"], limits["history_length"]),
        "learning_rate": train.learning_rate,
        "dropout": model["dropout"],
        "unknown_share": train.unknown_share,
    }


def to_train_config(point: Dict, base: TrainConfig) -> TrainConfig:
    """The ``TrainConfig`` of one sampled point: the model part and the training part."""
    model = {
        **base.model,
        "mf_embedding_dim": int(point["mf_embedding_dim"]),
        "mlp_embedding_dim": int(point["mlp_embedding_dim"]),
        "mlp_hidden_dims": mlp_tower(int(point["mlp_depth"]), int(point["mlp_width"])),
        "temporal_dim": int(point["temporal_dim"]),
        "num_heads": int(point["num_heads"]),
        "history_length": int(point["history_length"]),
        "dropout": float(point["dropout"]),
    }
    return dataclasses.replace(
        base,
        model=model,
        learning_rate=float(point["learning_rate"]),
        unknown_share=float(point["unknown_share"]),
    )
