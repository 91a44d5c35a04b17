"""AdvancedNCF: the seed model (``shared/seed/advanced_ncf_design.md``) on TorchRec.

A hybrid of matrix factorisation and a deep network for purchase prediction:

* dual embedding paths, ``mf_embedding_collection`` and ``mlp_embedding_collection``, each a
  TorchRec ``EmbeddingBagCollection`` with a user and a product table;
* ``TemporalEncoding``: sinusoidal tables for the time of the event (hour, day of week,
  day of year, month) and for the age of each past purchase;
* ``MultiHeadAttention``: the candidate product (with the user) queries the user's recent
  purchase history; its output is the MLP path's vector;
* ``CategoryHierarchy``: product, category and department weighted by attention;
* ``feature_combination``: Linear, ReLU, BatchNorm1d, Dropout down through ``mlp_hidden_dims``;
* dual outputs ``mf_output`` and ``mlp_output`` joined by ``final`` = Linear(2, 1) + Sigmoid.

One addition to the seed, needed to rank a household's staples (see README, "Model"):
``repeat_projection`` turns how often and how recently the user bought the candidate into a
``temporal_dim`` vector added to the temporal features.

The model is split into a user side (:meth:`AdvancedNCF.encode_user`), a product side
(:meth:`AdvancedNCF.encode_products`) and their combination, so that ranking many candidates
for one user computes the user side once (:meth:`AdvancedNCF.score_candidates`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ncf.data.features import Batch, repeat_features

USER_KEY = "user"
PRODUCT_KEY = "product"


def history_feature_names(history_length: int) -> List[str]:
    """One jagged feature per history position, all looked up in ``product_mlp_embeddings``.

    An ``EmbeddingBagCollection`` pools each feature into one vector per example, so each
    position is its own bag (empty when the user has fewer purchases): attention needs the
    purchases one by one, not their sum.
    """
    return [f"history_{i}" for i in range(history_length)]


@dataclass
class ModelConfig:
    """Sizes and switches of :class:`AdvancedNCF`.

    The ``use_*`` switches remove a part for ablations: ``use_temporal`` (event-time and
    history-age encodings), ``use_attention`` (history lookup and attention),
    ``use_hierarchy`` (department/category), ``use_mf`` (the MF path and its output),
    ``use_mlp`` (the whole MLP path and its output) and ``use_repeat`` (the user's purchase
    count and recency of the candidate).
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
    use_repeat: bool = True

    def __post_init__(self) -> None:
        if not (self.use_mf or self.use_mlp):
            raise ValueError("ModelConfig: at least one of use_mf and use_mlp must be on")
        if self.mlp_embedding_dim % self.num_heads:
            raise ValueError(
                f"ModelConfig: mlp_embedding_dim={self.mlp_embedding_dim} "
                f"is not divisible by num_heads={self.num_heads}"
            )
        if self.temporal_dim % 2:
            raise ValueError(f"ModelConfig: temporal_dim={self.temporal_dim} must be even (sin/cos pairs)")
        if not self.mlp_hidden_dims:
            raise ValueError("ModelConfig: mlp_hidden_dims needs at least one layer")
        for name in ("num_users", "num_products", "num_departments", "num_categories"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig: {name} must be >= 1")

    @property
    def has_temporal_features(self) -> bool:
        return self.use_mlp and (self.use_temporal or self.use_repeat)

    @property
    def combined_dim(self) -> int:
        """mf_embedding_dim + mlp_embedding_dim (MLP path) + mlp_embedding_dim (hierarchy) + temporal_dim."""
        dim = 2 * self.mlp_embedding_dim
        if self.use_mf:
            dim += self.mf_embedding_dim
        if self.has_temporal_features:
            dim += self.temporal_dim
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


class TemporalEncoding(nn.Module):
    """Sinusoidal encoding of time, as in the seed.

    ``forward`` encodes the parts of an event's time (hour, day of week, day of year, month),
    each a position in the sinusoidal table, and projects their concatenation to ``out_dim``.
    ``lookup`` encodes any position, e.g. the age in days of a past purchase.

    Args:
        embed_dim (int): width of the sinusoidal table (even).
        max_period (int): number of positions; larger positions are clamped.
        num_parts (int): time parts per event.
        out_dim (int): width of the projected event encoding.

    Example::

        enc = TemporalEncoding(16)
        enc(torch.tensor([[13, 2, 180, 6]]))  # 1 x 16
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
        """(...) positions -> (...) x embed_dim."""
        return self.pe[positions.long().clamp(0, self.max_period - 1)]

    def forward(self, time_parts: torch.Tensor) -> torch.Tensor:
        """B x num_parts -> B x out_dim."""
        return self.projection(self.lookup(time_parts).flatten(1))


class MultiHeadAttention(nn.Module):
    """Multi-head attention of one query (or Q queries) over a set of keys, with a padding mask.

    A learned "nothing relevant" slot is always present, so a user without history (all
    keys masked) still gets a defined output. Several queries over one key set (a user's
    candidates over the user's history) project the keys and values once, not once per query.

    Args:
        embed_dim (int): D, width of queries, keys and values.
        num_heads (int): heads; D must be divisible by it.

    Example::

        attn = MultiHeadAttention(32, num_heads=4)
        out, weights = attn(torch.randn(8, 32), torch.randn(8, 5, 32), torch.randn(8, 5, 32), need_weights=True)
        # out: 8 x 32, weights: 8 x 5
        out, _ = attn(torch.randn(8, 100, 32), torch.randn(8, 5, 32), torch.randn(8, 5, 32))  # 8 x 100 x 32
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

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        need_weights: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            query: B x D, or B x Q x D (Q queries sharing row b's keys).
            keys, values: B x L x D.
            mask: B x L, True where a key takes part (None: all do).
            need_weights: also return the attention weights, averaged over heads.

        Returns:
            B x D (or B x Q x D) output, and B x L (or B x Q x L) weights (or None).
        """
        one_query = query.dim() == 2
        if one_query:
            query = query.unsqueeze(1)
        b, length, d = keys.shape
        queries = query.shape[1]
        keys = torch.cat([self.null_key.expand(b, 1, d), keys], dim=1)
        values = torch.cat([self.null_value.expand(b, 1, d), values], dim=1)
        always = torch.ones(b, 1, dtype=torch.bool, device=keys.device)
        mask = always.expand(b, length + 1) if mask is None else torch.cat([always, mask], dim=1)

        q = self._heads(self.q_proj(query))  # B x H x Q x d
        k = self._heads(self.k_proj(keys))  # B x H x (L+1) x d
        v = self._heads(self.v_proj(values))
        attn_mask = mask[:, None, None, :]
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            probs = scores.masked_fill(~attn_mask, float("-inf")).softmax(dim=-1)
            out = probs @ v
            weights = probs.mean(dim=1)[:, :, 1:]  # B x Q x L: the null slot dropped
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.out_proj(out.transpose(1, 2).reshape(b, queries, d))
        if one_query:
            return out.squeeze(1), None if weights is None else weights.squeeze(1)
        return out, weights


class CategoryHierarchy(nn.Module):
    """Product, category and department embeddings weighted by attention into one vector.

    Args:
        num_departments (int): size of the department vocabulary (0 = unknown).
        num_categories (int): size of the category vocabulary (0 = unknown).
        embed_dim (int): D.

    Example::

        h = CategoryHierarchy(5, 20, 32)
        h(torch.randn(8, 32), torch.randint(5, (8,)), torch.randint(20, (8,)))  # 8 x 32
    """

    def __init__(self, num_departments: int, num_categories: int, embed_dim: int, num_heads: int = 4) -> None:
        super().__init__()
        self.department_embed = nn.Embedding(num_departments, embed_dim)
        self.category_embed = nn.Embedding(num_categories, embed_dim)
        self.hierarchy_attn = MultiHeadAttention(embed_dim, num_heads)

    def forward(
        self, product_embedding: torch.Tensor, department: torch.Tensor, category: torch.Tensor
    ) -> torch.Tensor:
        """B x D, B, B -> B x D."""
        levels = torch.stack(
            [product_embedding, self.category_embed(category), self.department_embed(department)], dim=1
        )  # B x 3 x D
        out, _ = self.hierarchy_attn(product_embedding, levels, levels)
        return out


@dataclass
class UserSide:
    """What :meth:`AdvancedNCF.encode_user` computes once per user context (U rows)."""

    user_mf: Optional[torch.Tensor]  # U x mf_dim
    user_mlp: Optional[torch.Tensor]  # U x mlp_dim
    history_keys: Optional[torch.Tensor]  # U x L x mlp_dim
    history_mask: Optional[torch.Tensor]  # U x L
    temporal: Optional[torch.Tensor]  # U x temporal_dim

    @property
    def num_rows(self) -> int:
        """U, the number of user contexts."""
        return next(t.shape[0] for t in (getattr(self, f.name) for f in dataclasses.fields(self)) if t is not None)


@dataclass
class ProductSide:
    """What :meth:`AdvancedNCF.encode_products` computes per product (independent of users)."""

    product_mf: Optional[torch.Tensor]  # N x mf_dim
    product_mlp: Optional[torch.Tensor]  # N x mlp_dim
    hierarchy: Optional[torch.Tensor]  # N x mlp_dim

    def select(self, index: torch.Tensor) -> "ProductSide":
        """The rows ``index`` (I) of each tensor: I x ... (index_select: much faster than t[index] on CPU)."""
        return ProductSide(
            *(
                None if t is None else t.index_select(0, index)
                for t in (self.product_mf, self.product_mlp, self.hierarchy)
            )
        )


def _jagged(
    keys: List[str], batch_size: int, present: Dict[str, Tuple[torch.Tensor, torch.Tensor]], device
) -> KeyedJaggedTensor:
    """A KJT over all ``keys`` of a collection; keys absent from ``present`` get empty bags."""
    values, lengths = [], []
    empty = torch.zeros(batch_size, dtype=torch.int32, device=device)
    for key in keys:
        if key in present:
            v, n = present[key]
            values.append(v)
            lengths.append(n.to(torch.int32))
        else:
            lengths.append(empty)
    value_tensor = torch.cat(values) if values else torch.zeros(0, dtype=torch.long, device=device)
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=value_tensor, lengths=torch.cat(lengths))


def _table(collection: nn.Module, name: str) -> torch.Tensor:
    """The N x D weight of one table of an unsharded EmbeddingBagCollection."""
    bags = getattr(collection, "embedding_bags", None)
    if bags is None or name not in bags:
        raise TypeError(
            f"{type(collection).__name__} has no plain table {name!r} (a sharded collection?): use table_lookup=False"
        )
    return bags[name].weight


def _block(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.BatchNorm1d(out_dim), nn.Dropout(dropout))


class AdvancedNCF(nn.Module):
    """The seed's hybrid MF + deep model, scoring (user, product, moment) examples.

    Args:
        config (ModelConfig): sizes and part switches.
        device (torch.device): where to allocate the embedding tables (``meta`` for sharding).

    Example::

        config = ModelConfig(num_users=100, num_products=500, num_departments=5, num_categories=20)
        model = AdvancedNCF(config).eval()
        probs = model(example_batch(config, batch_size=8))  # 8 probabilities in (0, 1)
    """

    def __init__(self, config: ModelConfig, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.use_mf:
            self.mf_embedding_collection = EmbeddingBagCollection(
                tables=[
                    EmbeddingBagConfig(
                        name="user_mf_embeddings",
                        embedding_dim=c.mf_embedding_dim,
                        num_embeddings=c.num_users,
                        feature_names=[USER_KEY],
                    ),
                    EmbeddingBagConfig(
                        name="product_mf_embeddings",
                        embedding_dim=c.mf_embedding_dim,
                        num_embeddings=c.num_products,
                        feature_names=[PRODUCT_KEY],
                    ),
                ],
                device=device,
            )
            self.mf_output = nn.Linear(c.mf_embedding_dim, 1)
        if c.use_mlp:
            history_features = history_feature_names(c.history_length) if c.use_attention else []
            self.mlp_embedding_collection = EmbeddingBagCollection(
                tables=[
                    EmbeddingBagConfig(
                        name="user_mlp_embeddings",
                        embedding_dim=c.mlp_embedding_dim,
                        num_embeddings=c.num_users,
                        feature_names=[USER_KEY],
                    ),
                    EmbeddingBagConfig(
                        name="product_mlp_embeddings",
                        embedding_dim=c.mlp_embedding_dim,
                        num_embeddings=c.num_products,
                        feature_names=[PRODUCT_KEY] + history_features,
                    ),
                ],
                device=device,
            )
            if c.use_temporal:
                self.temporal_encoding = TemporalEncoding(c.temporal_dim, c.max_period, out_dim=c.temporal_dim)
            if c.use_attention:
                self.history_attention = MultiHeadAttention(c.mlp_embedding_dim, c.num_heads)
                if c.use_temporal:
                    self.history_age_projection = nn.Linear(c.temporal_dim, c.mlp_embedding_dim)
            if c.use_hierarchy:
                self.category_hierarchy = CategoryHierarchy(
                    c.num_departments, c.num_categories, c.mlp_embedding_dim, c.num_heads
                )
            if c.use_repeat:
                self.repeat_projection = nn.Linear(2, c.temporal_dim)
            self.feature_combination = _block(c.combined_dim, c.mlp_hidden_dims[0], c.dropout)
            self.mlp_layers = nn.Sequential(
                *[_block(a, b, c.dropout) for a, b in zip(c.mlp_hidden_dims[:-1], c.mlp_hidden_dims[1:])]
            )
            self.mlp_output = nn.Linear(c.mlp_hidden_dims[-1], 1)
        self.final = nn.Sequential(nn.Linear(2, 1), nn.Sigmoid())

    # -- the two sides -------------------------------------------------------------------

    def encode_user(
        self,
        user: torch.Tensor,
        time_parts: torch.Tensor,
        history: torch.Tensor,
        history_age_days: torch.Tensor,
        table_lookup: bool = False,
    ) -> UserSide:
        """User-dependent part of the model.

        Args:
            user: U user indices.
            time_parts: U x 4 (hour, day of week, day of year, month) of the moment scored.
            history: U x L previous purchases (0 = padding), most recent first.
            history_age_days: U x L days between each of them and the moment.
            table_lookup: read the embeddings straight from the tables' rows (see
                :meth:`_user_embeddings_from_tables`) instead of through the collections.
        """
        c = self.config
        lookup = self._user_embeddings_from_tables if table_lookup else self._user_embeddings
        user_mf, user_mlp, history_keys = lookup(user, history)
        history_mask = temporal = None
        if c.use_mlp:
            if c.use_attention:
                history_mask = history > 0
                if c.use_temporal:
                    age = self.temporal_encoding.lookup(history_age_days)
                    history_keys = history_keys + self.history_age_projection(age)
            if c.use_temporal:
                temporal = self.temporal_encoding(time_parts)
        return UserSide(user_mf, user_mlp, history_keys, history_mask, temporal)

    def _user_embeddings(self, user: torch.Tensor, history: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        """U x mf_dim, U x mlp_dim and U x L x mlp_dim (the history, empty slots zero) pooled by
        the EmbeddingBagCollections: the path training and sharded models take."""
        c = self.config
        n, device = user.shape[0], user.device
        ones = torch.ones(n, dtype=torch.int32, device=device)
        user_mf = user_mlp = history_embeddings = None
        if c.use_mf:
            kjt = _jagged([USER_KEY, PRODUCT_KEY], n, {USER_KEY: (user, ones)}, device)
            user_mf = self.mf_embedding_collection(kjt)[USER_KEY]
        if c.use_mlp:
            present = {USER_KEY: (user, ones)}
            names = history_feature_names(c.history_length) if c.use_attention else []
            if c.use_attention:
                by_position = history.t()  # L x U: one feature per position
                slots = by_position > 0
                for i, name in enumerate(names):
                    present[name] = (by_position[i][slots[i]], slots[i])
            pooled = self.mlp_embedding_collection(
                _jagged([USER_KEY, PRODUCT_KEY] + names, n, present, device)
            ).to_dict()
            user_mlp = pooled[USER_KEY]
            if c.use_attention:
                history_embeddings = torch.stack([pooled[name] for name in names], dim=1)
        return user_mf, user_mlp, history_embeddings

    def _user_embeddings_from_tables(
        self, user: torch.Tensor, history: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], ...]:
        """What :meth:`_user_embeddings` returns, gathered from the tables' weights.

        Every bag here holds one id or none, and a one-id sum-pooled bag is that id's row (an
        empty one is zero), so the numbers are the same; skipping the KeyedJaggedTensor round
        trip and the per-feature lookups is what makes small inference batches cheap. The
        tables must be whole on this device (not sharded).
        """
        c = self.config
        user_mf = user_mlp = history_embeddings = None
        if c.use_mf:
            user_mf = _table(self.mf_embedding_collection, "user_mf_embeddings").index_select(0, user)
        if c.use_mlp:
            user_mlp = _table(self.mlp_embedding_collection, "user_mlp_embeddings").index_select(0, user)
            if c.use_attention:
                rows = _table(self.mlp_embedding_collection, "product_mlp_embeddings").index_select(
                    0, history.reshape(-1)
                )
                history_embeddings = rows.view(*history.shape, -1) * (history > 0).unsqueeze(-1)
        return user_mf, user_mlp, history_embeddings

    def encode_products(self, product: torch.Tensor, department: torch.Tensor, category: torch.Tensor) -> ProductSide:
        """User-independent part of the model for N products (cacheable for a whole catalog)."""
        c = self.config
        n, device = product.shape[0], product.device
        ones = torch.ones(n, dtype=torch.int32, device=device)
        product_mf = product_mlp = hierarchy = None
        if c.use_mf:
            kjt = _jagged([USER_KEY, PRODUCT_KEY], n, {PRODUCT_KEY: (product, ones)}, device)
            product_mf = self.mf_embedding_collection(kjt)[PRODUCT_KEY]
        if c.use_mlp:
            names = [USER_KEY, PRODUCT_KEY] + (history_feature_names(c.history_length) if c.use_attention else [])
            product_mlp = self.mlp_embedding_collection(_jagged(names, n, {PRODUCT_KEY: (product, ones)}, device))[
                PRODUCT_KEY
            ]
            hierarchy = self.category_hierarchy(product_mlp, department, category) if c.use_hierarchy else product_mlp
        return ProductSide(product_mf, product_mlp, hierarchy)

    def combine(
        self, user: UserSide, products: ProductSide, repeat: torch.Tensor, need_weights: bool = False
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Joins U user rows with B = U x C product rows into B logits (and B x L history
        attention weights). User row u goes with product rows u*C .. u*C+C-1: C = 1 in training,
        C candidates per user when ranking, where each user's history is projected once."""
        c = self.config
        logits, weights = [], None
        parts = []
        groups, b = user.num_rows, repeat.shape[0]
        if b % groups:
            raise ValueError(f"{b} product rows do not split evenly over {groups} user rows")
        per_user = b // groups

        def rows(t: torch.Tensor) -> torch.Tensor:  # U x ... -> B x ...
            return t if per_user == 1 else t.repeat_interleave(per_user, dim=0)

        if c.use_mf:
            mf_vector = rows(user.user_mf) * products.product_mf  # B x mf_dim
            logits.append(self.mf_output(mf_vector))
            parts.append(mf_vector)
        if c.use_mlp:
            mlp_vector = rows(user.user_mlp)
            if c.use_attention:
                query = user.user_mlp.unsqueeze(1) + products.product_mlp.reshape(
                    groups, per_user, c.mlp_embedding_dim
                )  # U x C x D
                if per_user == 1:
                    query = query.squeeze(1)
                attended, weights = self.history_attention(
                    query, user.history_keys, user.history_keys, user.history_mask, need_weights
                )
                mlp_vector = mlp_vector + attended.reshape(b, c.mlp_embedding_dim)
                weights = None if weights is None else weights.reshape(b, c.history_length)
            parts += [mlp_vector, products.hierarchy]
            if c.has_temporal_features:
                temporal = rows(user.temporal) if c.use_temporal else 0.0
                if c.use_repeat:
                    temporal = temporal + self.repeat_projection(repeat)
                parts.append(temporal)
            hidden = self.mlp_layers(self.feature_combination(torch.cat(parts, dim=1)))
            logits.append(self.mlp_output(hidden))
        if len(logits) == 1:  # the switched-off path contributes a constant 0
            zero = torch.zeros_like(logits[0])
            logits = [logits[0], zero] if c.use_mf else [zero, logits[0]]
        return self.final[0](torch.cat(logits, dim=1)).squeeze(1), weights

    # -- entry points ----------------------------------------------------------------------

    def forward(self, batch: Batch, return_logits: bool = False) -> torch.Tensor:
        """B examples -> B probabilities (or pre-sigmoid logits, for BCEWithLogitsLoss)."""
        user = self.encode_user(batch.user, batch.time_parts, batch.history, batch.history_age_days)
        products = self.encode_products(batch.product, batch.department, batch.category)
        logits, _ = self.combine(user, products, batch.repeat)
        return logits if return_logits else torch.sigmoid(logits)

    @torch.no_grad()
    def score_candidates(
        self,
        user_side: UserSide,
        products: ProductSide,
        repeat_count: torch.Tensor,
        days_since: torch.Tensor,
        need_weights: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Scores C candidates for each of U user contexts, encoding each user side once.

        Args:
            user_side: from :meth:`encode_user` on U user contexts (often U = 1).
            products: N = U x C candidates, user by user, from :meth:`encode_products` (or a
                cached catalog's :meth:`ProductSide.select`).
            repeat_count, days_since: N, each user's history with each of its candidates.

        Returns:
            N probabilities, and N x L attention weights over the history (or None).
        """
        logits, weights = self.combine(user_side, products, repeat_features(repeat_count, days_since), need_weights)
        return torch.sigmoid(logits), weights


def example_batch(config: ModelConfig, batch_size: int, seed: int = 0) -> Batch:
    """A valid random batch for ``config``: docstring examples, tests and benchmarks."""
    g = torch.Generator().manual_seed(seed)
    b, length = batch_size, config.history_length

    def ints(high: int, *shape: int, low: int = 1) -> torch.Tensor:
        return torch.randint(min(low, high - 1), high, shape, generator=g)

    history = ints(config.num_products, b, length)
    # Shorter histories are padded at the end (most recent purchases come first).
    history_len = ints(length + 1, b, low=0)
    history[torch.arange(length)[None, :] >= history_len[:, None]] = 0
    return Batch(
        user=ints(config.num_users, b),
        product=ints(config.num_products, b),
        department=ints(config.num_departments, b),
        category=ints(config.num_categories, b),
        time_parts=torch.stack([ints(24, b, low=0), ints(7, b, low=0), ints(366, b, low=0), ints(13, b)], dim=1),
        history=history,
        history_age_days=torch.sort(torch.rand(b, length, generator=g) * 200, dim=1).values,
        repeat=repeat_features(ints(5, b, low=0).float(), torch.rand(b, generator=g) * 366),
        label=ints(2, b, low=0).float(),
        sampling_log_q=torch.zeros(b),
    )
