"""The first stage: which products the full model re-ranks for a household at a moment.

1. its own past products, the ``own_candidates`` most bought by the 90-day decayed count (the
   training lists hold the same ones);
2. the products nearest to its past products by co-purchase, none it bought, best first
   (:meth:`ncf.data.neighbours.ProductNeighbours.best`, as the training lists' 100; here they
   follow its own products within the ``candidates``, so a household with more than 200 of its
   own gets fewer, and the sources below none once its own and their neighbours fill the
   ``candidates``): where households rarely buy a product twice, what households with the same
   products bought;
3. the MF path's best products for the household (they do not depend on the moment, so each
   household's list is computed once and kept while the table of them stays small);
4. the best sellers of the household's own categories (the ``CATEGORY_SPREAD`` it bought most,
   by the 365-day decayed count): where households rarely buy a product twice, what they buy
   next is mostly new products of the categories they shop, which neither their own products
   nor the MF path's short list reach (on the no-rebuy log of BENCHMARKS.md this source took
   the share of the next products among the candidates from 0.29 to 0.59);
5. the most bought products in the 28 days before the state's cutoff (all time breaking ties);

distinct, only products known at the cutoff, at most ``candidates``. With
``exclude_purchased`` the household's past products are removed *before* the cut, and the list is
completed from the popular products, so that k items come back whenever the catalog has k
products it never bought. A household without purchases before the moment gets the cold-start
list: the products most bought at that hour of the day.
"""

from __future__ import annotations

import sys
import threading
from typing import List, Optional

import numpy as np
import pandas as pd
import torch

from ncf.data.features import CATEGORY_HALF_LIVES, HALF_LIVES
from ncf.data.timeline import UserTimeline
from ncf.model import ann
from ncf.model.advanced_ncf import AdvancedNCF
from ncf.model.ann import ProductIndex
from ncf.model.ranking import RankingSettings
from ncf.moments import HOUR, time_parts_of
from ncf.rank.state import EmbeddingRows, RankingState

CATEGORY_SPREAD = 5  # categories the category source draws from
# Scores one warm-up step holds (households x catalog floats): 1,024 households of a 1M-product
# catalog would be 4 GiB, when a small household table is cached beside a large catalog.
WARM_SCORES = 1 << 26


MAX_K = 100  # the most products one ranking returns (HTTP requests and the nightly job alike)


class MFFirstStage:
    """Each household's ``width`` best products by the MF path's logit, over the state's catalog.

    While every household's list fits in ``ann.MF_CACHE_MAX_ENTRIES`` and all of them cost at most
    ``ann.MF_EXACT_MAX_SCORES`` dot products (Complete Journey: 2.5k households x 68k products),
    lists are exact (one matrix product over the catalog) and kept: they do not depend on the
    moment. Beyond that, the model directory's HNSW index (:mod:`ncf.model.ann`, built when the
    model was saved) answers each household approximately (agreement with the exact lists:
    BENCHMARKS.md); a directory without one keeps exact lists where they fit the cache (a line
    says so; each household's first request scans the catalog once), and has an index built here
    where they do not. With ``exact``, lists are exact whatever the size (a few
    households ranked, as training's validation does): kept as above where they fit, else one
    matrix product per question.
    Products whose embedding row is the unknown one (new to the model) have no MF vector of
    their own and are left to the other sources.
    """

    def __init__(
        self,
        model: AdvancedNCF,
        rows: EmbeddingRows,
        known: np.ndarray,
        width: int,
        index: Optional[ProductIndex] = None,
        exact: bool = False,
        items: Optional[torch.Tensor] = None,
    ) -> None:
        """``items``: the D x P product vectors of another stage over the same ``model`` and
        ``rows`` (:meth:`derived`), shared instead of computed again."""
        known = known & (rows.product > 0)
        # What the stage was built from, so that a derived ranker can tell whether it may reuse it.
        self._model, self._rows, self._asked, self._exact, self._products = model, rows, width, exact, known
        self._users = _table(model, "user_mf_embeddings")
        self._user_rows = rows.user
        self.width = min(width, int(known.sum()))
        searches = ann.needed(len(rows.user), self.width, len(known))
        if searches and index is None and not ann.lists_too_large(len(rows.user), self.width) and not exact:
            _say_exact_lists_kept(len(rows.user), len(known))
            searches = False
        cacheable = not searches
        self._top = np.zeros((len(rows.user), self.width), np.int32) if cacheable else None
        self._known = np.zeros(len(rows.user), bool) if cacheable else None
        self._filling = threading.Lock()
        self._index = None
        self._items: Optional[torch.Tensor] = None
        if cacheable or exact:
            self._items = _product_items(model, rows, self._users.device) if items is None else items
            # Added to every household's scores: -inf drops the products without a vector of their
            # own (a broadcast add; a boolean column mask costs several times as much).
            self._unknown_penalty = torch.where(torch.as_tensor(known, device=self._items.device), 0.0, -torch.inf).to(
                self._items.dtype
            )
        else:
            self._index = index or _built_here(model)
            # Searched among the model rows of the state's known products, answered in state indices;
            # the mask prepared once (its bitmap and rows), not at every search.
            allowed = np.zeros(self._index.rows, bool)
            allowed[rows.product[known]] = True
            self._allowed = ann.AllowedRows(allowed)
            self._product_of_row = np.full(self._index.rows, -1, np.int64)
            self._product_of_row[rows.product[known]] = np.flatnonzero(known)

    def derived(
        self,
        model: AdvancedNCF,
        rows: EmbeddingRows,
        known: np.ndarray,
        width: int,
        index: Optional[ProductIndex] = None,
        exact: bool = False,
    ) -> "MFFirstStage":
        """The stage these arguments build, for a ranker derived from this stage's
        (``Recommender.with_settings``, ``Recommender.as_of``): this one itself when they are the
        ones it was built from (the same model, rows, known products, width and index: its
        lists, computed and kept, are those a new stage would compute again), else a new stage
        sharing its product vectors where the model and rows are the same (only the known
        products' penalty differs between a state's past days)."""
        same_source = model is self._model and rows is self._rows
        if (
            same_source
            and width == self._asked
            and exact == self._exact
            and (index is None or self._index is None or index is self._index)
            and np.array_equal(known & (rows.product > 0), self._products)
        ):
            return self
        items = self._items if same_source else None
        return MFFirstStage(model, rows, known, width, index or self._index, exact, items)

    @property
    def index(self) -> Optional[ProductIndex]:
        """The HNSW index searched (the directory's, or the one built here), None with exact lists."""
        return self._index

    @property
    def searches_graph(self) -> bool:
        """Whether a search walks the index's graph: not where the rows it allows are so few that
        :meth:`ncf.model.ann.ProductIndex.search` ranks them exactly (:func:`ncf.model.ann.searches_exactly`)."""
        return self._index is not None and not ann.searches_exactly(len(self._allowed.rows), self._index.rows)

    @property
    def products(self) -> int:
        """The catalog the exact lists score (0 where the index is searched)."""
        return 0 if self._items is None else int(self._items.shape[1])

    @property
    def cached(self) -> bool:
        """Whether households' lists are kept (:func:`ncf.model.ann.needed` says they are not)."""
        return self._top is not None

    def top(self, users: np.ndarray) -> np.ndarray:
        """U x width product indices, best first, for U state households."""
        if self._top is None:
            return self._compute(users)
        if self._known[users].all():  # not behind another thread's computing
            return self._top[users]
        # Serve asks from several threads at once: a household's list computed once, not by each.
        with self._filling:
            missing = users[~self._known[users]]
            if len(missing):
                self._top[missing] = self._compute(missing)
                self._known[missing] = True
        return self._top[users]

    def warm(self, users: np.ndarray, chunk: int = 1024) -> int:
        """Computes the lists of ``users`` now (serving does it on load), at most
        :data:`WARM_SCORES` scores a step; returns how many."""
        if self._top is not None:
            chunk = max(1, min(chunk, WARM_SCORES // max(1, self._items.shape[1])))
        for start in range(0, len(users), chunk):
            self.top(users[start : start + chunk])
        return len(users)

    @torch.no_grad()
    def _compute(self, users: np.ndarray) -> np.ndarray:
        # The table is on the model's device (a GPU for validation and batch_score --gpu).
        rows = torch.as_tensor(self._user_rows[users], device=self._users.device)
        vectors = self._users.index_select(0, rows)
        if self._index is not None:
            found = self._index.search(vectors.cpu().numpy(), self.width, self._allowed)
            return self._product_of_row[np.maximum(found, 0)].astype(np.int32)
        scores = exact_mf_scores(vectors, self._items).add_(self._unknown_penalty)
        return torch.topk(scores, self.width, dim=1).indices.cpu().numpy().astype(np.int32)


# Rows the exact lists' matmul takes at least: BLAS takes other kernels for a few rows (1 to 15
# of them here), whose sums differ in their last bits from a larger block's, so a household's
# list (its order, at times its members) depended on how many households were computed with it:
# a request alone, a nightly batch of cold starts, the warm-up's last chunk.
MIN_SCORED_ROWS = 32


def exact_mf_scores(vectors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """U x P: ``vectors`` (U x D) times ``items`` (D x P), each row's sums the same whatever U."""
    rows = vectors.shape[0]
    if rows < MIN_SCORED_ROWS:
        vectors = torch.cat([vectors, vectors.new_zeros(MIN_SCORED_ROWS - rows, vectors.shape[1])])
    return (vectors @ items)[:rows]


def _product_items(model: AdvancedNCF, rows: EmbeddingRows, device: torch.device) -> torch.Tensor:
    """D x P: the MF vector of each state product (its model row's). The MF logit is
    mf_output(u * p): with its weights folded into p, one matmul."""
    folded = torch.as_tensor(ann.product_vectors(model.state_dict()), device=device)
    return folded[torch.as_tensor(rows.product, device=folded.device)].T.contiguous()


_SAID_NO_INDEX: set = set()


def _say_exact_lists_kept(households: int, products: int) -> None:
    """Says, once a process for each size, that a model with no index for a state whose lists fit
    the cache but cost many scans of the catalog (saved before the catalog counted, 2026-12-05,
    or ranking a DATA grown past the headroom it was saved with) keeps its exact lists, each
    computed at its household's first request past the warm-up, rather than minutes of building
    an index in every replica and actor."""
    if (households, products) not in _SAID_NO_INDEX:
        _SAID_NO_INDEX.add((households, products))
        print(
            f"[ranking] the model directory has no MF index for {households:,} households x {products:,} products "
            "(saved before the catalog counted, or for a smaller DATA): exact first-stage lists, each computed once",
            file=sys.stderr,
            flush=True,
        )


def _built_here(model: AdvancedNCF) -> ProductIndex:
    print(
        "[ranking] the model directory has no MF index: building it now, in this process (minutes at a "
        "million products; a model is saved with one once twice its households would need it)",
        file=sys.stderr,
        flush=True,
    )
    return ProductIndex.build(model.state_dict())


def _by_category(popular: np.ndarray, category: np.ndarray) -> tuple:
    """(products grouped by category, most bought first within each; each category's start, C + 1)."""
    order = np.argsort(category[popular], kind="stable")
    grouped = popular[order]
    starts = np.searchsorted(category[grouped], np.arange(int(category.max()) + 2))
    return grouped, starts


def _table(model: AdvancedNCF, name: str) -> torch.Tensor:
    """The N x D weight of one table of an unsharded EmbeddingBagCollection."""
    collection = model.mf_embedding_collection
    return collection.embedding_bags[name].weight.detach()


class CandidateGenerator:
    """The first stage over one :class:`RankingState` (see the module docstring)."""

    def __init__(
        self,
        model: AdvancedNCF,
        state: RankingState,
        rows: EmbeddingRows,
        settings: RankingSettings,
        mf_index: Optional[ProductIndex] = None,
        exact_mf: bool = False,
        shared_mf: Optional[MFFirstStage] = None,
    ) -> None:
        """``shared_mf``: the MF first stage of a ranker this one derives from, reused
        (:meth:`MFFirstStage.derived`)."""
        self.state = state
        self.settings = settings
        self.known = state.stats.lines > 0  # products bought before the state's cutoff
        self.known[0] = False
        self.popular = state.stats.popularity_order
        # popularity_order lists products nobody bought before the cutoff too (last).
        self.popular_known = self.popular[self.known[self.popular]]
        self.by_category = _by_category(self.popular_known, state.catalog.category)
        self.mf: Optional[MFFirstStage] = None
        if model.config.use_mf and settings.mf_candidates > 0:  # 0: no MF stage, not one of empty lists
            stage_args = (model, rows, self.known, settings.mf_candidates, mf_index, exact_mf)
            self.mf = MFFirstStage(*stage_args) if shared_mf is None else shared_mf.derived(*stage_args)

    def cold_start(self, at: int) -> np.ndarray:
        hour = int(time_parts_of(np.array([at]))[HOUR][0])
        listed = self.state.stats.by_hour[hour]
        return listed[self.known[listed]][: self.settings.candidates]

    def for_household(
        self, user: int, timeline: UserTimeline, at: int, exclude_purchased: bool, mf_top: Optional[np.ndarray]
    ) -> np.ndarray:
        """Candidate product indices for one household with purchases before ``at``."""
        s = self.settings
        own = timeline.aggregates(at, HALF_LIVES)
        skip = own.keys if exclude_purchased else np.zeros(0, np.int64)
        sources = [] if exclude_purchased else [own.most_bought(s.own_candidates)]
        sources.append(self.state.stats.neighbours.best(own, s.neighbour_candidates))
        if mf_top is not None:
            sources.append(mf_top[mf_top >= 0])  # -1: the index found fewer products than asked
        merged = self._merged(sources, skip)
        # A heavy buyer's own products, neighbours and MF list fill the candidates: the category and
        # popular sources, whose products the cut would drop, are computed only for the others.
        if len(merged) < s.candidates:
            if s.category_candidates:
                sources.append(self._from_categories(timeline, at, own.keys if exclude_purchased else None))
            sources.append(self.popular[: s.popular_candidates])
            merged = self._merged(sources, skip)
        # Completed from the popular products (never bought, with exclude_purchased): a household
        # whose sources list few (no MF path, a short history) still gets the longest ranking a
        # request may ask for, MAX_K, and with exclude_purchased every candidate.
        need = (s.candidates if exclude_purchased else min(s.candidates, MAX_K)) - len(merged)
        if need > 0:
            # Each product skipped is bought or already listed, so the first need + |bought|
            # + |listed| known products hold every one taken: no scan of the whole catalog.
            prefix = self.popular_known[: need + len(skip) + len(merged)]
            more = prefix[~np.isin(prefix, skip) & ~np.isin(prefix, merged)]
            merged = np.concatenate([merged, more[:need]])
        return merged[: s.candidates]

    def _merged(self, sources: List[np.ndarray], skip: np.ndarray) -> np.ndarray:
        """The known products of ``sources`` not in ``skip``, once each, in the sources' order."""
        merged = pd.unique(np.concatenate(sources).astype(np.int64))
        merged = merged[self.known[merged]]
        return merged[~np.isin(merged, skip)]

    def _from_categories(self, timeline: UserTimeline, at: int, skip: Optional[np.ndarray]) -> np.ndarray:
        """The most bought products of the household's categories, most bought category first
        (by its 365-day decayed count), as many from each of the top ``CATEGORY_SPREAD``;
        ``skip``: products left out (with ``exclude_purchased``, those it bought)."""
        categories = timeline.aggregates(at, CATEGORY_HALF_LIVES, categories=self.state.catalog.category)
        if not len(categories.keys):
            return np.zeros(0, np.int64)
        top = categories.keys[np.argsort(-categories.decayed[:, -1], kind="stable")[:CATEGORY_SPREAD]]
        products, starts = self.by_category
        each = -(-self.settings.category_candidates // len(top))
        picked = []
        for category in top.tolist():
            block = products[starts[category] : starts[category + 1]]
            if skip is not None:  # at most len(skip) of the block's head are skipped: not the whole category
                block = block[: each + len(skip)]
                block = block[~np.isin(block, skip)]
            picked.append(block[:each])
        return np.concatenate(picked)[: self.settings.category_candidates]

    def mf_top(self, users: np.ndarray) -> Optional[np.ndarray]:
        return None if self.mf is None else self.mf.top(users)
