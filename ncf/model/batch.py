"""The batch AdvancedNCF reads: U households at U moments, and N candidates among them.

Training lists (:mod:`ncf.data.examples`) and ranking requests (:mod:`ncf.rank`) become the same
:class:`Batch`, so the model sees one shape of input wherever it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ncf.data import examples as E
from ncf.data.features import NUM_FEATURES, Catalog


@dataclass
class Batch:
    """U household contexts and N candidates (each belongs to one context through ``owner``).

    Indices are rows of the model's embedding tables (0 = unknown / padding).

    Args:
        user (torch.Tensor): U household rows.
        time_parts (torch.Tensor): U x 4 (hour, day of week, day of year, month) of each moment.
        history (torch.Tensor): U x L latest purchased products, most recent first (0 = padding).
        history_age_days (torch.Tensor): U x L days between each of them and the moment.
        owner (torch.Tensor): N context row of each candidate.
        product (torch.Tensor): N candidate product rows.
        department (torch.Tensor): N department rows of the candidates.
        category (torch.Tensor): N category rows of the candidates.
        features (torch.Tensor): N x NUM_FEATURES purchase-timing features (:mod:`ncf.data.features`).
        label (torch.Tensor): N targets in {0, 1} (ignored when ranking).
        log_q (torch.Tensor): N log-probabilities that the candidate was in its list (logQ
            correction; 0 when ranking).
    """

    user: torch.Tensor
    time_parts: torch.Tensor
    history: torch.Tensor
    history_age_days: torch.Tensor
    owner: torch.Tensor
    product: torch.Tensor
    department: torch.Tensor
    category: torch.Tensor
    features: torch.Tensor
    label: torch.Tensor
    log_q: torch.Tensor

    @property
    def num_contexts(self) -> int:
        return self.user.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.product.shape[0]

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def with_history_length(self, length: int) -> "Batch":
        """Keeps the ``length`` most recent history purchases (a model may read fewer than the
        examples hold, never more)."""
        stored = self.history.shape[1]
        if length > stored:
            raise ValueError(f"the model reads {length} history purchases but the examples hold {stored}")
        if length == stored:
            return self
        return replace(self, history=self.history[:, :length], history_age_days=self.history_age_days[:, :length])

    def with_contexts(self, count: int) -> "Batch":
        """At least ``count`` context rows, the first repeated to fill: no candidate's ``owner``
        points to a copy, so every candidate scores as before. A compiled model then sees one
        context shape, where a shorter last chunk would make it compile again."""
        missing = count - self.num_contexts
        if missing <= 0:
            return self

        def filled(rows: torch.Tensor) -> torch.Tensor:
            return torch.cat([rows, rows[:1].expand(missing, *rows.shape[1:])])

        return replace(
            self,
            user=filled(self.user),
            time_parts=filled(self.time_parts),
            history=filled(self.history),
            history_age_days=filled(self.history_age_days),
        )

    def with_unknown_rows(self, generator: torch.Generator, user_share: float, product_share: float) -> "Batch":
        """Replaces a share of household and candidate rows by the unknown row 0, so that row
        learns a generic household (product) for the ones the tables have never seen. The draws
        come from ``generator`` (a CPU one: the same draws on any device), then move to the batch's."""
        drawn_users = torch.rand(self.num_contexts, generator=generator).to(self.user.device)
        drawn_products = torch.rand(self.num_candidates, generator=generator).to(self.product.device)
        user = torch.where(drawn_users < user_share, 0, self.user)
        product = torch.where(drawn_products < product_share, 0, self.product)
        return replace(self, user=user, product=product)

    @staticmethod
    def from_arrow(table: pa.Table, catalog: Catalog) -> "Batch":
        """Training lists (rows of :mod:`ncf.data.examples`) -> a batch."""

        def fixed(name: str, dtype) -> np.ndarray:
            column = table.column(name).combine_chunks()
            flat = column.flatten().to_numpy(zero_copy_only=False)
            return flat.reshape(len(column), column.type.list_size).astype(dtype, copy=False)

        def flat(name: str, dtype) -> np.ndarray:
            return pc.list_flatten(table.column(name)).to_numpy(zero_copy_only=False).astype(dtype, copy=False)

        product = flat(E.PRODUCT, np.int64)
        lengths = pc.list_value_length(table.column(E.PRODUCT)).to_numpy(zero_copy_only=False)

        def t(values: np.ndarray, dtype=None) -> torch.Tensor:
            # Arrow hands out read-only buffers, which torch warns about; copy only those.
            return torch.as_tensor(np.require(values, requirements="W"), dtype=dtype)

        return Batch(
            user=t(table.column(E.USER).to_numpy(), dtype=torch.long),
            time_parts=t(fixed(E.TIME_PARTS, np.int64)),
            history=t(fixed(E.HISTORY, np.int64)),
            history_age_days=t(fixed(E.HISTORY_AGE_DAYS, np.float32)),
            owner=t(np.repeat(np.arange(len(lengths)), lengths), dtype=torch.long),
            product=t(product),
            department=t(catalog.department[product], dtype=torch.long),
            category=t(catalog.category[product], dtype=torch.long),
            features=t(flat(E.FEATURES, np.float32).reshape(len(product), NUM_FEATURES)),
            label=t(flat(E.LABEL, np.float32)),
            log_q=t(flat(E.LOG_Q, np.float32)),
        )

    @staticmethod
    def for_ranking(
        user: np.ndarray,
        time_parts: np.ndarray,
        history: np.ndarray,
        history_age_days: np.ndarray,
        owner: np.ndarray,
        product: np.ndarray,
        department: np.ndarray,
        category: np.ndarray,
        features: np.ndarray,
        device: Optional[torch.device] = None,
    ) -> "Batch":
        """A ranking request's batch (no labels, no sampling)."""
        n = len(product)

        def t(a, dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

        return Batch(
            user=t(user, torch.long),
            time_parts=t(time_parts, torch.long),
            history=t(history, torch.long),
            history_age_days=t(history_age_days, torch.float32),
            owner=t(owner, torch.long),
            product=t(product, torch.long),
            department=t(department, torch.long),
            category=t(category, torch.long),
            features=t(features, torch.float32),
            label=torch.zeros(n, device=device),
            log_q=torch.zeros(n, device=device),
        )
