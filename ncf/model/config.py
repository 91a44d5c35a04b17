"""Sizes and part switches of AdvancedNCF."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from ncf.data.features import CATEGORY, CATEGORY_DURATIONS, DURATIONS, NEIGHBOURS, TIMING

SWITCHES = ("use_temporal", "use_attention", "use_hierarchy", "use_mf", "use_mlp", "use_timing", "use_neighbours")


# Sizes no weight's shape ties to a model directory's files: unbounded, a config.json edited (or
# --model) to 2**40 passed every check and asked for terabytes building TemporalEncoding's table.
AT_MOST = {"max_period": 36_600, "history_length": 1_000}


@dataclass
class ModelConfig:
    """Sizes and switches of :class:`ncf.model.AdvancedNCF`.

    The ``use_*`` switches remove a part for ablations: ``use_temporal`` (the sinusoidal
    encodings: the moment's time parts, the durations of the purchase-timing features, the
    history's ages), ``use_attention`` (attention over the history), ``use_hierarchy``
    (department/category and the category-level cadence), ``use_mf`` (the MF path and its
    output), ``use_mlp`` (the whole MLP path and its output), ``use_timing`` (the numeric
    purchase-timing features) and ``use_neighbours`` (the co-purchase neighbour score).
    """

    num_users: int
    num_products: int
    num_departments: int
    num_categories: int
    mf_embedding_dim: int = 32
    mlp_embedding_dim: int = 32
    temporal_dim: int = 16
    mlp_hidden_dims: List[int] = field(default_factory=lambda: [128, 64])
    num_heads: int = 4
    history_length: int = 20
    dropout: float = 0.1
    max_period: int = 366
    use_temporal: bool = True
    use_attention: bool = True
    use_hierarchy: bool = True
    use_mf: bool = True
    use_mlp: bool = True
    use_timing: bool = True
    use_neighbours: bool = True

    def __post_init__(self) -> None:
        self._check_kinds()
        if not (self.use_mf or self.use_mlp):
            raise ValueError("ModelConfig: at least one of use_mf and use_mlp must be on")
        if self.mlp_embedding_dim % self.num_heads:
            raise ValueError(
                f"ModelConfig: mlp_embedding_dim={self.mlp_embedding_dim} is not divisible "
                f"by num_heads={self.num_heads}"
            )
        if self.temporal_dim % 2:
            raise ValueError(f"ModelConfig: temporal_dim={self.temporal_dim} must be even (sin/cos pairs)")
        if not self.mlp_hidden_dims:
            raise ValueError("ModelConfig: mlp_hidden_dims needs at least one layer")

    def _check_kinds(self) -> None:
        """Each field of its kind and in its range (``--model`` overrides are JSON a user typed:
        ``"false"`` is a true string, ``"20"`` no length)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                ok, kind = isinstance(value, (bool, np.bool_)), "true or false"
            elif f.type == "float":
                ok, kind = _number(value) and 0 <= value < 1, "a number from 0 to below 1"
            elif f.type == "List[int]":
                ok = isinstance(value, (list, tuple)) and all(_whole(v) and v >= 1 for v in value)
                kind = "a list of whole numbers of 1 or more"
            elif f.name in AT_MOST:
                ok = _whole(value) and 1 <= value <= AT_MOST[f.name]
                kind = f"a whole number from 1 to {AT_MOST[f.name]:,}"
            else:
                ok, kind = _whole(value) and value >= 1, "a whole number of 1 or more"
            if not ok:
                raise ValueError(f"ModelConfig: {f.name} must be {kind}, not {value!r}")
            # numpy's numbers pass as their kind, but config.json would hold them as text, which
            # no later load accepts; a tuple would differ from the list read back.
            setattr(self, f.name, _plain(value, f.type))

    @property
    def num_timing(self) -> int:
        return len(TIMING)

    @property
    def num_durations(self) -> int:
        return len(DURATIONS)

    @property
    def cadence_dim(self) -> int:
        """Width of the category cadence input of the hierarchy: numeric, plus the durations'
        sinusoidal encodings when the temporal part is on."""
        return len(CATEGORY) + (len(CATEGORY_DURATIONS) * self.temporal_dim if self.use_temporal else 0)

    @property
    def combined_dim(self) -> int:
        """The seed's mf_embedding_dim + mlp_embedding_dim (MLP path) + mlp_embedding_dim
        (hierarchy) + temporal_dim, plus the timing features and the neighbour score."""
        dim = 2 * self.mlp_embedding_dim
        if self.use_mf:
            dim += self.mf_embedding_dim
        if self.use_temporal:
            dim += self.temporal_dim
        if self.use_timing:
            dim += self.num_timing
        if self.use_neighbours:
            dim += len(NEIGHBOURS)
        return dim

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(values: Dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"ModelConfig: unknown keys {sorted(unknown)}")
        return ModelConfig(**values)


def _plain(value, kind: str):
    """``value`` (checked to be of ``kind``) as the Python type JSON writes and reads back."""
    if kind == "bool":
        return bool(value)
    if kind == "float":
        return float(value)
    if kind == "List[int]":
        return [int(v) for v in value]
    return int(value)


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and value == value  # not nan
