"""The seed's modules (``docs/advanced_ncf_design.md``): TemporalEncoding,
MultiHeadAttention and CategoryHierarchy."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class TemporalEncoding(nn.Module):
    """Sinusoidal encoding of time, as in the seed.

    ``forward`` encodes the parts of a moment (hour, day of week, day of year, month), each a
    position in the sinusoidal table, and projects their concatenation to ``out_dim``;
    ``lookup`` encodes any position, e.g. a duration in days.

    Args:
        embed_dim (int): width of the sinusoidal table (even).
        max_period (int): number of positions; larger positions are clamped.
        num_parts (int): time parts per moment.
        out_dim (int): width of the projected encoding.

    Example::

        enc = TemporalEncoding(16)
        enc(torch.tensor([[13, 2, 180, 6]]))  # 1 x 16
        enc.lookup(torch.tensor([[3.0, 30.0]]))  # 1 x 2 x 16
    """

    def __init__(
        self, embed_dim: int, max_period: int = 365, num_parts: int = 4, out_dim: Optional[int] = None
    ) -> None:
        super().__init__()
        self.max_period = max_period
        position = torch.arange(max_period).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, embed_dim, 2) * (-math.log(10000.0) / embed_dim))
        pe = torch.zeros(max_period, embed_dim)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        # Derived from the sizes, so not saved in checkpoints.
        self.register_buffer("pe", pe, persistent=False)
        self.projection = nn.Linear(num_parts * embed_dim, out_dim or embed_dim)

    def lookup(self, positions: torch.Tensor) -> torch.Tensor:
        """(...) positions (rounded down, clamped) -> (...) x embed_dim."""
        return self.pe[positions.long().clamp(0, self.max_period - 1)]

    def forward(self, time_parts: torch.Tensor) -> torch.Tensor:
        """B x num_parts -> B x out_dim."""
        return self.projection(self.lookup(time_parts).flatten(1))


class MultiHeadAttention(nn.Module):
    """Multi-head attention of queries over sets of keys, with a padding mask.

    A learned "nothing relevant" slot is always present, so a household without history (all
    keys masked) still gets a defined output. With ``owner``, N queries attend over the key
    sets of U rows (query ``i`` over row ``owner[i]``): the keys and values are projected and
    read once per row, the row's queries side by side (a household's candidates share its
    history), never copied per query.

    Args:
        embed_dim (int): D, width of queries, keys and values.
        num_heads (int): heads; D must be divisible by it.

    Example::

        attn = MultiHeadAttention(32, num_heads=4)
        out, weights = attn(torch.randn(8, 32), torch.randn(8, 5, 32), torch.randn(8, 5, 32), need_weights=True)
        # out: 8 x 32, weights: 8 x 5
        owner = torch.tensor([0, 0, 1])
        out, _ = attn(torch.randn(3, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32), owner=owner)  # 3 x 32
    """

    def __init__(self, embed_dim: int, num_heads: int = 4) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.null_key = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.null_value = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _project(self, keys: torch.Tensor, values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """B x L x D keys and values through their projections; one matrix product when the keys
        are the values (self-attention over a set, as both callers do)."""
        if keys is not values:
            return self.k_proj(keys), self.v_proj(values)
        weight = torch.cat([self.k_proj.weight, self.v_proj.weight])
        bias = torch.cat([self.k_proj.bias, self.v_proj.bias])
        return F.linear(keys, weight, bias).chunk(2, dim=-1)

    def _one_query_per_row(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        null_k: torch.Tensor,
        null_v: torch.Tensor,
        mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """B x H x d attention output of one query per row over a few keys, elementwise (a batch
        of 1-row matrix products is slower), the null slot scored apart so that the keys and
        values are never copied to make room for it."""
        b, length, _ = k.shape
        k = k.view(b, length, self.num_heads, self.head_dim)
        v = v.view(b, length, self.num_heads, self.head_dim)
        null_k = null_k.view(1, self.num_heads, self.head_dim)
        null_v = null_v.view(1, self.num_heads, self.head_dim)
        scale = 1.0 / math.sqrt(self.head_dim)
        null_score = (q * null_k).sum(-1, keepdim=True).mul(scale)  # B x H x 1
        scores = (q.unsqueeze(1) * k).sum(-1).mul(scale)  # B x L x H
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        probs = torch.cat([null_score.transpose(1, 2), scores], dim=1).softmax(dim=1)  # B x (L+1) x H
        return probs[:, 0].unsqueeze(-1) * null_v + (probs[:, 1:].unsqueeze(-1) * v).sum(1)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        need_weights: bool = False,
        owner: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            query: B x D (or N x D with ``owner``).
            keys, values: B x L x D (U x L x D with ``owner``).
            mask: B x L (U x L), True where a key takes part (None: all do).
            need_weights: also return the attention weights, averaged over heads.
            owner: N row of the key set each query attends over.

        Returns:
            B x D (N x D) output, and B x L (N x L) weights (or None).
        """
        b, length, d = keys.shape
        n = query.shape[0]
        q = self.q_proj(query).view(n, self.num_heads, self.head_dim)  # N x H x d
        k, v = self._project(keys, values)  # B x L x D each
        # The null slot is the same for every row: projected once, not once per row.
        null_k, null_v = self.k_proj(self.null_key), self.v_proj(self.null_value)  # 1 x 1 x D
        if owner is None and not need_weights:
            return self.out_proj(self._one_query_per_row(q, k, v, null_k, null_v, mask).reshape(n, d)), None
        always = torch.ones(b, 1, dtype=torch.bool, device=keys.device)
        mask = always.expand(b, length + 1) if mask is None else torch.cat([always, mask], dim=1)
        k = self._heads(torch.cat([null_k.expand(b, 1, d), k], dim=1))  # B x H x (L+1) x d
        v = self._heads(torch.cat([null_v.expand(b, 1, d), v], dim=1))
        if owner is None:
            owner = torch.arange(n, device=q.device)
            slot = torch.zeros(n, dtype=torch.long, device=q.device)
            grouped = q.unsqueeze(1)  # B x 1 x H x d
        else:
            # A row's queries side by side (B x width, padded), so that each set of keys is read
            # once per row: one small matrix product per row, not a copy of the keys per query.
            slot, width = _slots(owner, b)
            grouped = q.new_zeros(b, width, self.num_heads, self.head_dim)
            grouped[owner, slot] = q
        grouped = grouped.transpose(1, 2)  # B x H x width x d
        attn_mask = mask[:, None, None, :]
        weights = None
        if need_weights:
            # The output still comes from the fused kernel below: an explained ranking must score
            # exactly as a plain one (the explicit product differs in the last bits).
            scores = (grouped @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            probs = scores.masked_fill(~attn_mask, float("-inf")).softmax(dim=-1)
            weights = probs.mean(dim=1)[owner, slot, 1:]  # N x L: the null slot dropped
        out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2)[owner, slot]  # N x H x d
        return self.out_proj(out.reshape(n, d)), weights


def _slots(owner: torch.Tensor, rows: int) -> Tuple[torch.Tensor, int]:
    """Each query's position among its row's queries (N), and the most queries of one row."""
    counts = torch.bincount(owner, minlength=rows)
    order = torch.argsort(owner, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(owner)
    slot[order] = torch.arange(owner.shape[0], device=owner.device) - starts[owner[order]]
    return slot, int(counts.max()) if owner.numel() else 1


class CategoryHierarchy(nn.Module):
    """Product, category and department weighted by attention into one vector; the category
    level also carries the household's cadence in that category (``cadence``), so that a
    sparse product inherits what its category says about timing.

    Args:
        num_departments (int): size of the department vocabulary (0 = unknown).
        num_categories (int): size of the category vocabulary (0 = unknown).
        embed_dim (int): D.
        num_heads (int): heads of the hierarchy attention.
        cadence_dim (int): width of the cadence input (0: none).

    Example::

        h = CategoryHierarchy(5, 20, 32, cadence_dim=6)
        h(torch.randn(8, 32), torch.randint(5, (8,)), torch.randint(20, (8,)), torch.randn(8, 6))  # 8 x 32
    """

    def __init__(
        self, num_departments: int, num_categories: int, embed_dim: int, num_heads: int = 4, cadence_dim: int = 0
    ) -> None:
        super().__init__()
        self.department_embed = nn.Embedding(num_departments, embed_dim)
        self.category_embed = nn.Embedding(num_categories, embed_dim)
        self.hierarchy_attn = MultiHeadAttention(embed_dim, num_heads)
        self.cadence_projection = nn.Linear(cadence_dim, embed_dim) if cadence_dim else None

    def forward(
        self,
        product_embedding: torch.Tensor,
        department: torch.Tensor,
        category: torch.Tensor,
        cadence: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """B x D, B, B, B x cadence_dim -> B x D."""
        category_level = self.category_embed(category)
        if self.cadence_projection is not None and cadence is not None:
            category_level = category_level + self.cadence_projection(cadence)
        levels = torch.stack([product_embedding, category_level, self.department_embed(department)], dim=1)
        out, _ = self.hierarchy_attn(product_embedding, levels, levels)
        return out
