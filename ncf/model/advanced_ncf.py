"""AdvancedNCF: the seed model (``docs/advanced_ncf_design.md``) on TorchRec.

A hybrid of matrix factorisation and a deep network that scores (household, product, moment):

* dual embedding paths, ``mf_embedding_collection`` and ``mlp_embedding_collection``, each a
  TorchRec ``EmbeddingBagCollection`` with a user and a product table; every batch looks each
  side up once (households, then the products of its candidates and histories: each distinct
  product once from training's sharded tables, every row directly from an unsharded one);
* ``TemporalEncoding`` (sinusoidal): the moment's time parts, the durations of the purchase-timing
  features (days since the household last bought the candidate, its typical gap, ...) and the
  age of each past purchase;
* ``MultiHeadAttention``: each candidate (with its household) queries the household's latest
  purchases, whose keys carry the product and its age; the weights are the explanation;
* ``CategoryHierarchy``: product, category and department weighted by attention, the category
  level carrying the household's cadence in that category;
* ``feature_combination`` (Linear, ReLU, BatchNorm1d, Dropout) and ``mlp_layers`` down through
  ``mlp_hidden_dims``, over [MF vector, MLP vector, hierarchy, temporal, timing features,
  neighbour score];
* dual outputs ``mf_output`` and ``mlp_output`` joined by ``final`` = Linear(2, 1) + Sigmoid.

The additions to the seed are the purchase-timing block (:mod:`ncf.data.features`): on grocery
data what a household buys next is mostly what it buys every few weeks and is due again; and
the co-purchase neighbour score (:mod:`ncf.data.neighbours`), normalised like the timing block:
where households rarely buy a product twice, what they buy next is what households with the
same products bought.

Example::

    config = ModelConfig(num_users=100, num_products=500, num_departments=5, num_categories=20)
    model = AdvancedNCF(config).eval()
    probs = model(example_batch(config, contexts=4, candidates_per_context=8))  # 32 probabilities
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ncf.data.features import (
    CATEGORY_COLUMNS,
    CATEGORY_DURATION_COLUMNS,
    DURATION_COLUMNS,
    NEIGHBOUR_COLUMNS,
    NEVER_DAYS,
    NUM_FEATURES,
    TIMING_COLUMNS,
)
from ncf.model.batch import Batch
from ncf.model.config import ModelConfig
from ncf.model.modules import CategoryHierarchy, MultiHeadAttention, TemporalEncoding

USER_KEY = "user"
PRODUCT_KEY = "product"


def _collection(prefix: str, config: ModelConfig, dim: int, device) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"user_{prefix}_embeddings",
                embedding_dim=dim,
                num_embeddings=config.num_users,
                feature_names=[USER_KEY],
            ),
            EmbeddingBagConfig(
                name=f"product_{prefix}_embeddings",
                embedding_dim=dim,
                num_embeddings=config.num_products,
                feature_names=[PRODUCT_KEY],
            ),
        ],
        device=device,
    )


def lookup(collection: nn.Module, key: str, ids: torch.Tensor) -> torch.Tensor:
    """One row per id of the ``key`` feature's table (``len(ids) x D``); the collection's other
    feature gets empty bags, so only this side's table is read (and, in training, updated).

    An unsharded collection (evaluation, ranking) is read directly: a bag of one id pools to its
    row, and building the KJT and pooling bags of one costs about 15 times the gather (3.8 against
    0.22 ms for 10k product rows) and breaks ``torch.compile``'s graph. Training's collections are
    sharded (fused kernels) and go through TorchRec's lookup.
    """
    if isinstance(collection, EmbeddingBagCollection):
        return nn.functional.embedding(ids, _table_of(collection, key).weight)
    n = ids.shape[0]
    ones = torch.ones(n, dtype=torch.int32, device=ids.device)
    empty = torch.zeros(n, dtype=torch.int32, device=ids.device)
    lengths = torch.cat([ones, empty] if key == USER_KEY else [empty, ones])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=[USER_KEY, PRODUCT_KEY], values=ids, lengths=lengths)
    return collection(kjt)[key]


def lookup_distinct(collection: nn.Module, key: str, ids: torch.Tensor) -> torch.Tensor:
    """:func:`lookup` where ``ids`` repeat (candidates and histories share products): a sharded
    table is asked for each distinct id once, so its lookup moves, and its fused optimizer
    updates, each row once. A plain table gathers every id: no ``torch.unique``, whose
    data-dependent size would break a compiled graph."""
    if isinstance(collection, EmbeddingBagCollection):
        return lookup(collection, key, ids)
    distinct, inverse = torch.unique(ids, return_inverse=True)
    return lookup(collection, key, distinct).index_select(0, inverse)


def _table_of(collection: EmbeddingBagCollection, key: str) -> nn.EmbeddingBag:
    """The table that the ``key`` feature reads."""
    for config in collection.embedding_bag_configs():
        if key in config.feature_names:
            return collection.embedding_bags[config.name]
    raise KeyError(f"no table of {collection} reads the feature {key!r}")


def _block(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.BatchNorm1d(out_dim), nn.Dropout(dropout))


class AdvancedNCF(nn.Module):
    """The seed's hybrid MF + deep model over U household contexts and N candidates.

    Args:
        config (ModelConfig): sizes and part switches.
        device (torch.device): where to allocate the embedding tables (``meta`` for sharding).

    Example::

        config = ModelConfig(num_users=100, num_products=500, num_departments=5, num_categories=20)
        model = AdvancedNCF(config)
        logits, weights = model.logits(example_batch(config, 4, 8), need_weights=True)  # 32, 32 x L
    """

    def __init__(self, config: ModelConfig, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.config = c = config
        if c.use_mf:
            self.mf_embedding_collection = _collection("mf", c, c.mf_embedding_dim, device)
            self.mf_output = nn.Linear(c.mf_embedding_dim, 1)
        if c.use_mlp:
            self.mlp_embedding_collection = _collection("mlp", c, c.mlp_embedding_dim, device)
            if c.use_temporal:
                self.temporal_encoding = TemporalEncoding(c.temporal_dim, c.max_period, out_dim=c.temporal_dim)
                self.duration_projection = nn.Linear(c.num_durations * c.temporal_dim, c.temporal_dim)
            if c.use_attention:
                self.history_attention = MultiHeadAttention(c.mlp_embedding_dim, c.num_heads)
                if c.use_temporal:
                    self.history_age_projection = nn.Linear(c.temporal_dim, c.mlp_embedding_dim)
            if c.use_hierarchy:
                self.cadence_norm = nn.BatchNorm1d(CATEGORY_COLUMNS.stop - CATEGORY_COLUMNS.start)
                self.category_hierarchy = CategoryHierarchy(
                    c.num_departments, c.num_categories, c.mlp_embedding_dim, c.num_heads, c.cadence_dim
                )
            if c.use_timing:
                self.timing_norm = nn.BatchNorm1d(c.num_timing)
            if c.use_neighbours:
                self.neighbour_norm = nn.BatchNorm1d(NEIGHBOUR_COLUMNS.stop - NEIGHBOUR_COLUMNS.start)
            self.feature_combination = _block(c.combined_dim, c.mlp_hidden_dims[0], c.dropout)
            self.mlp_layers = nn.Sequential(
                *[_block(a, b, c.dropout) for a, b in zip(c.mlp_hidden_dims[:-1], c.mlp_hidden_dims[1:])]
            )
            self.mlp_output = nn.Linear(c.mlp_hidden_dims[-1], 1)
        self.final = nn.Sequential(nn.Linear(2, 1), nn.Sigmoid())

    # -- the parts -------------------------------------------------------------------------------

    def _durations(self, days: torch.Tensor) -> torch.Tensor:
        """N x k days -> N x (k * temporal_dim) sinusoidal encodings."""
        return self.temporal_encoding.lookup(days.clamp(0, NEVER_DAYS)).flatten(1)

    def _mlp_path(
        self, batch: Batch, need_weights: bool, mf_vector: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """N MLP-path logits (and N x L attention weights); ``mf_vector`` (N x mf_dim) joins the
        combined features when the MF path is on."""
        c = self.config
        owner = batch.owner
        user = lookup(self.mlp_embedding_collection, USER_KEY, batch.user)  # U x D
        with_history = c.use_attention
        ids = torch.cat([batch.product, batch.history.reshape(-1)]) if with_history else batch.product
        products = lookup_distinct(self.mlp_embedding_collection, PRODUCT_KEY, ids)  # (N + U * L) x D
        candidate = products[: batch.num_candidates]  # N x D
        user_rows = user.index_select(0, owner)
        mlp_vector, weights = user_rows, None
        if c.use_attention:
            history = products[batch.num_candidates :].view(*batch.history.shape, -1)
            mask = batch.history > 0
            keys = history * mask.unsqueeze(-1)
            if c.use_temporal:
                keys = keys + self.history_age_projection(self.temporal_encoding.lookup(batch.history_age_days))
            attended, weights = self.history_attention(
                user_rows + candidate, keys, keys, mask, need_weights=need_weights, owner=owner
            )
            mlp_vector = mlp_vector + attended
        features = batch.features
        parts = [mlp_vector]
        if c.use_hierarchy:
            cadence = [self.cadence_norm(features[:, CATEGORY_COLUMNS])]
            if c.use_temporal:
                cadence.append(self._durations(features[:, CATEGORY_DURATION_COLUMNS]))
            parts.append(self.category_hierarchy(candidate, batch.department, batch.category, torch.cat(cadence, 1)))
        else:
            parts.append(candidate)
        if c.use_temporal:
            moment = self.temporal_encoding(batch.time_parts).index_select(0, owner)
            parts.append(moment + self.duration_projection(self._durations(features[:, DURATION_COLUMNS])))
        if c.use_timing:
            parts.append(self.timing_norm(features[:, TIMING_COLUMNS]))
        if c.use_neighbours:
            parts.append(self.neighbour_norm(features[:, NEIGHBOUR_COLUMNS]))
        if mf_vector is not None:
            parts.insert(0, mf_vector)
        hidden = self.mlp_layers(self.feature_combination(torch.cat(parts, dim=1)))
        return self.mlp_output(hidden).squeeze(1), weights

    def _mf_vector(self, batch: Batch) -> torch.Tensor:
        """N x mf_dim: household vector * candidate vector."""
        user = lookup(self.mf_embedding_collection, USER_KEY, batch.user).index_select(0, batch.owner)
        return user * lookup(self.mf_embedding_collection, PRODUCT_KEY, batch.product)

    # -- entry points ----------------------------------------------------------------------------

    @property
    def attends(self) -> bool:
        """Whether the model attends over the household's history, so that :meth:`logits` can
        return attention weights (the attention lives on the MLP path)."""
        return self.config.use_mlp and self.config.use_attention

    def logits(self, batch: Batch, need_weights: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """N pre-sigmoid scores (``final``'s Linear over the two paths' logits) and, with
        ``need_weights``, the N x L attention weights over each candidate's household history
        (the null slot's share left out, so a row sums to at most 1: less when the candidate
        attends to nothing in particular)."""
        if batch.features.shape[1] != NUM_FEATURES:
            raise ValueError(f"the batch has {batch.features.shape[1]} features, the model reads {NUM_FEATURES}")
        zero = torch.zeros(batch.num_candidates, device=batch.features.device)
        mf_vector = self._mf_vector(batch) if self.config.use_mf else None
        mf = zero if mf_vector is None else self.mf_output(mf_vector).squeeze(1)
        mlp, weights = self._mlp_path(batch, need_weights, mf_vector) if self.config.use_mlp else (zero, None)
        return self.final[0](torch.stack([mf, mlp], dim=1)).squeeze(1), weights

    def forward(self, batch: Batch, return_logits: bool = False) -> torch.Tensor:
        """N probabilities of purchase: ``final`` (Linear(2, 1) + Sigmoid) over the two paths (or,
        with ``return_logits``, its pre-sigmoid output, for the logQ-corrected loss)."""
        logits, _ = self.logits(batch)
        return logits if return_logits else self.final[1](logits)


def model_from_weights(
    config: ModelConfig,
    weights: Dict[str, torch.Tensor],
    device: Optional[torch.device] = None,
    model_class: type = AdvancedNCF,
) -> AdvancedNCF:
    """An AdvancedNCF (or ``model_class``, a subclass) in eval mode whose tensors are ``weights``
    themselves.

    The embedding tables are built on the meta device and the given tensors take their place: no
    random tables are initialised and no second copy is allocated to load into (at 10M
    households the tables are gigabytes, and the peak was twice that).
    """
    model = model_class(config, device=torch.device("meta"))
    model.load_state_dict(weights, assign=True)
    return model.to(device or torch.device("cpu")).eval()


def example_batch(config: ModelConfig, contexts: int, candidates_per_context: int, seed: int = 0) -> Batch:
    """A valid random batch for ``config``: docstring examples, tests and benchmarks."""
    g = torch.Generator().manual_seed(seed)
    u, length = contexts, config.history_length
    n = contexts * candidates_per_context

    def ints(high: int, *shape: int, low: int = 1) -> torch.Tensor:
        return torch.randint(min(low, high - 1), high, shape, generator=g)

    history = ints(config.num_products, u, length)
    # Shorter histories are padded at the end (most recent purchases come first).
    history_len = ints(length + 1, u, low=0)
    history[torch.arange(length)[None, :] >= history_len[:, None]] = 0
    features = torch.rand(n, NUM_FEATURES, generator=g) * 3
    features[:, DURATION_COLUMNS] = torch.rand(n, DURATION_COLUMNS.stop - DURATION_COLUMNS.start, generator=g) * 366
    return Batch(
        user=ints(config.num_users, u),
        time_parts=torch.stack([ints(24, u, low=0), ints(7, u, low=0), ints(366, u, low=0), ints(13, u)], dim=1),
        history=history,
        history_age_days=torch.sort(torch.rand(u, length, generator=g) * 200, dim=1).values,
        owner=torch.arange(u).repeat_interleave(candidates_per_context),
        product=ints(config.num_products, n),
        department=ints(config.num_departments, n),
        category=ints(config.num_categories, n),
        features=features,
        label=ints(2, n, low=0).float(),
        log_q=torch.zeros(n),
    )
