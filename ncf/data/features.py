"""The model's input: column names of the preprocessed data and the batch the model reads.

One row of the preprocessed data is one (user, product, moment) example. The same columns
are produced by preprocessing (training data), by the scoring core (online and nightly
ranking) and by :func:`ncf.model.example_batch` (tests and benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Mapping

import numpy as np
import pyarrow as pa
import torch

from ncf.moments import SECONDS_PER_DAY, TIME_PARTS, time_parts_of  # noqa: F401  (re-exported column names)

# Columns of one example, as written by preprocessing.
USER = "user"
PRODUCT = "product"
DEPARTMENT = "department"
CATEGORY = "category"
HISTORY = "history"  # previous purchases, most recent first, 0 = padding
HISTORY_AGE_DAYS = "history_age_days"  # days between each history purchase and the event
REPEAT_COUNT = "repeat_count"  # how often the user bought this product before the event
DAYS_SINCE = "days_since"  # days since the user last bought it; NEVER_BOUGHT_DAYS if never
LABEL = "label"
SAMPLING_LOG_Q = "sampling_log_q"  # log-probability of the product under the negative sampler

MODEL_COLUMNS = (
    USER,
    PRODUCT,
    DEPARTMENT,
    CATEGORY,
    *TIME_PARTS,
    HISTORY,
    HISTORY_AGE_DAYS,
    REPEAT_COUNT,
    DAYS_SINCE,
    LABEL,
    SAMPLING_LOG_Q,
)
NEVER_BOUGHT_DAYS = 366.0


@dataclass
class Batch:
    """One batch of examples for :class:`ncf.model.AdvancedNCF`.

    Args:
        user (torch.Tensor): B user indices (0 = unknown user).
        product (torch.Tensor): B candidate product indices (0 = unknown product).
        department (torch.Tensor): B department indices of the candidates.
        category (torch.Tensor): B category indices of the candidates.
        time_parts (torch.Tensor): B x 4 (hour, day of week, day of year, month) of the event.
        history (torch.Tensor): B x L previously purchased product indices, 0 = padding.
        history_age_days (torch.Tensor): B x L age of each history purchase in days.
        repeat (torch.Tensor): B x 2 (log1p(times bought before), days since last purchase).
        label (torch.Tensor): B targets in {0, 1} (ignored at inference).
        sampling_log_q (torch.Tensor): B log-probabilities of each product under the negative
            sampler, subtracted from the logits in training (0 when not sampled).
    """

    user: torch.Tensor
    product: torch.Tensor
    department: torch.Tensor
    category: torch.Tensor
    time_parts: torch.Tensor
    history: torch.Tensor
    history_age_days: torch.Tensor
    repeat: torch.Tensor
    label: torch.Tensor
    sampling_log_q: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.user.shape[0]

    @property
    def history_length(self) -> int:
        return self.history.shape[1]

    def select(self, rows: torch.Tensor) -> "Batch":
        """The rows picked by a boolean mask or an index tensor."""
        return Batch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def with_history_length(self, length: int) -> "Batch":
        """Keeps the ``length`` most recent history purchases (a model may read fewer than
        preprocessing stored; it cannot read more)."""
        if length > self.history_length:
            raise ValueError(f"the model reads {length} history purchases but the examples hold {self.history_length}")
        if length == self.history_length:
            return self
        return replace(self, history=self.history[:, :length], history_age_days=self.history_age_days[:, :length])

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    @staticmethod
    def from_arrow(table: pa.Table) -> "Batch":
        """Builds a batch from a preprocessed Arrow table (fast path for training)."""
        columns = {}
        for name in table.column_names:
            col = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(col.type):
                columns[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
            elif name in MODEL_COLUMNS:
                columns[name] = col.to_numpy(zero_copy_only=False)
        return Batch.from_columns(columns)

    @staticmethod
    def from_columns(columns: Mapping[str, np.ndarray | torch.Tensor]) -> "Batch":
        """Builds a batch from preprocessed columns (numpy arrays or tensors)."""

        def t(name: str, dtype: torch.dtype) -> torch.Tensor:
            values = _stack(columns[name])
            if isinstance(values, np.ndarray) and not values.flags.writeable:
                values = values.copy()  # torch refuses read-only arrays (Arrow buffers)
            return torch.as_tensor(values, dtype=dtype)

        n = len(columns[USER])
        label = t(LABEL, torch.float32) if LABEL in columns else torch.zeros(n)
        log_q = t(SAMPLING_LOG_Q, torch.float32) if SAMPLING_LOG_Q in columns else torch.zeros(n)
        return Batch(
            user=t(USER, torch.long),
            product=t(PRODUCT, torch.long),
            department=t(DEPARTMENT, torch.long),
            category=t(CATEGORY, torch.long),
            time_parts=torch.stack([t(name, torch.long) for name in TIME_PARTS], dim=1),
            history=t(HISTORY, torch.long),
            history_age_days=t(HISTORY_AGE_DAYS, torch.float32),
            repeat=repeat_features(t(REPEAT_COUNT, torch.float32), t(DAYS_SINCE, torch.float32)),
            label=label,
            sampling_log_q=log_q,
        )


def repeat_features(repeat_count: torch.Tensor, days_since: torch.Tensor) -> torch.Tensor:
    """B x 2: log-scaled purchase count and a recency in [0, 1] (1 = bought today, 0 = never)."""
    recency = 1.0 - days_since.clamp(0, NEVER_BOUGHT_DAYS) / NEVER_BOUGHT_DAYS
    return torch.stack([torch.log1p(repeat_count), recency], dim=1)


def _stack(col: np.ndarray | torch.Tensor | list) -> np.ndarray | torch.Tensor:
    # Ray Data hands list columns over as object arrays of arrays.
    if isinstance(col, np.ndarray) and col.dtype == object:
        return np.stack(col) if len(col) else np.zeros((0, 0))
    return col
