"""The one ranking path: candidates -> features -> model -> top-k, explanations optional.

Every entry point ranks through :meth:`Ranker.rank` (or scores given products through
:meth:`Ranker.score`, the same path without the first stage): Serve's single, explained and batch
requests and ``/score``, evaluation, validation during training and the nightly job. Households
are ranked many at a time, one model call per chunk, so a batch of requests costs little more
than one. Cold start is a case of the same path: a household without purchases before the
moment gets the popular products of that hour as candidates and the model's unknown household
row, so its scores are probabilities on the same scale as everyone else's.

Example::

    ranker = Ranker.of_model_dir(ModelDir(MODEL), RankingState.load(DATA))
    rankings = ranker.rank(np.array([12, 40]), np.array([at, at]), k=10)
    rankings[0].products, rankings[0].scores, rankings[0].cold_start
"""

from __future__ import annotations

import itertools
import numbers
import warnings
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ncf.data.features import candidate_features, household_inputs
from ncf.data.timeline import UserTimeline
from ncf.model import ann
from ncf.model.advanced_ncf import AdvancedNCF
from ncf.model.ann import ProductIndex
from ncf.model.batch import Batch
from ncf.model.directory import ModelDir
from ncf.rank.candidates import MAX_K, CandidateGenerator, MFFirstStage, RankingSettings
from ncf.rank.reasons import (
    Reason,
    category_lines,
    product_lines,
    purchase_facts,
    without_category,
    without_product,
)
from ncf.rank.state import EmbeddingRows, RankingState

CHUNK_USERS = 32  # households per model call: the per-call overheads amortised, memory small


@dataclass
class Ranking:
    """One household's top products (state indices), best first, with their probabilities."""

    products: np.ndarray
    scores: np.ndarray
    cold_start: bool
    # For each ranked product: (history product index, attention weight) pairs, when explained.
    explanations: Optional[List[List[Tuple[int, float]]]] = None
    # For each ranked product, when explained: the entropy (nats) of its attention over the history
    # (the weights renormalised over the history), and the weight on the attention's null slot.
    attention_entropy: Optional[np.ndarray] = None
    attention_null: Optional[np.ndarray] = None
    # For each ranked product, when explained and the household is not a cold start: its purchase
    # timing and its scores had the household never bought it or its category (ncf.rank.reasons).
    reasons: Optional[List[Reason]] = None
    # The first stage's candidates the products were drawn from (evaluation reports their coverage).
    candidates: Optional[np.ndarray] = None


@dataclass
class _Question:
    """One household at one moment over its candidates."""

    user: int
    at: int
    candidates: np.ndarray
    cold_start: bool
    timeline: UserTimeline  # read once per question: candidates and features share it
    history: Optional[np.ndarray] = None  # L latest purchases (state indices), set with the batch


# The first stage's lists a ranker computes before its first request, at most (households x
# catalog): 64 households x 1M products took 0.17 s here, so about 45 s; all of Complete Journey's
# (2,500 x 68,000) are far below it. Lists are kept only within the same budget
# (ann.MF_EXACT_MAX_SCORES) where the model has an index; this bounds those of a model without one
# (saved before the rule, or for a smaller DATA), which keeps exact lists past the budget; until
# 2026-12-05 every model kept lists up to 333k households x 1M products, a quarter hour.
WARM_MAX_SCORES = ann.MF_EXACT_MAX_SCORES


def check_k(k: int, brute_force: bool = False, candidates: Optional[int] = None) -> None:
    """Refuses (ValueError) a ``k`` a ranking cannot answer: not an integer (an int or a numpy
    integer: ``2.5`` failed in a slice, ``True`` ranked one, and a float is refused as such),
    below 1 (a slice of ``[:k]`` would answer every candidate but the last ``-k``), or above
    :data:`MAX_K` or the first stage's ``candidates`` unless ``brute_force`` (the first stage
    keeps that many, not more: longer lists came back short)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k={k!r}: an integer number of products, not {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k={k}: at least 1 product is ranked")
    if k > MAX_K and not brute_force:
        raise ValueError(f"k={k}: at most {MAX_K} products are ranked")
    if candidates is not None and k > candidates and not brute_force:
        raise ValueError(f"k={k}: the first stage keeps {candidates} candidates a household; ask for at most that many")


class ScoresNotANumber(ValueError):
    """The model's scores hold NaN (weights that diverged in training, or overflowed): no ranking."""


class Ranker:
    """Ranks a :class:`RankingState`'s households with an AdvancedNCF model.

    Args:
        model: the trained model (switched to eval mode).
        state: histories and products to rank from.
        rows: state index -> model embedding rows (identity when the model was trained on it).
        settings: first-stage sizes.
        mf_index: the model directory's MF index (:mod:`ncf.model.ann`), for states too large
            for exact first-stage lists (:class:`ncf.rank.candidates.MFFirstStage` says what is
            done without one).
        exact_mf: exact first-stage lists whatever the state's size (kept only where the
            state's are small enough): for ranking a few households (training's validation
            sample) without an index (which a model being trained does not have yet).
        shared_mf: the MF first stage of a ranker this one derives from (:meth:`derived`): reused
            whole where it would be built the same, its product vectors shared otherwise.
    """

    def __init__(
        self,
        model: AdvancedNCF,
        state: RankingState,
        rows: EmbeddingRows,
        settings: Optional[RankingSettings] = None,
        mf_index: Optional[ProductIndex] = None,
        exact_mf: bool = False,
        shared_mf: Optional[MFFirstStage] = None,
    ) -> None:
        self.model = model.eval()
        self.state = state
        self.rows = rows
        self.settings = settings or RankingSettings()
        self.device = next(model.parameters()).device
        self.exact_mf = exact_mf
        self.candidates = CandidateGenerator(model, state, rows, self.settings, mf_index, exact_mf, shared_mf)
        # The index the first stage searches, also one it had to build: a ranker derived from this
        # one (``Recommender.with_settings``) reuses it instead of building it again.
        built = self.candidates.mf.index if self.candidates.mf is not None else None
        self.mf_index = mf_index or built
        self._logits = model.logits

    @staticmethod
    def of_model_dir(
        handle: ModelDir,
        state: RankingState,
        settings: Optional[RankingSettings] = None,
        model: Optional[AdvancedNCF] = None,
        device: Optional[torch.device] = None,
    ) -> "Ranker":
        """A model directory's model ranking ``state``: its embedding rows for the state's ids, its
        ranking settings (unless ``settings``), its saved MF index where the first stage searches
        one, and its model (unless ``model``, one already loaded from it)."""
        settings = settings or RankingSettings.of_model(handle.ranking, handle.path)
        rows = EmbeddingRows.of_model(handle, state.vocabs)
        index = handle.mf_index_for(len(state.vocabs.users), settings.mf_candidates, len(state.vocabs.products))
        return Ranker(model if model is not None else handle.load_model(device), state, rows, settings, index)

    def derived(self, state: Optional[RankingState] = None, settings: Optional[RankingSettings] = None) -> "Ranker":
        """This ranker's model over ``state`` (a past day's, :meth:`RankingState.as_of`) or with
        other first-stage ``settings``: its MF index and its MF first stage shared, so that the
        same lists are not computed and held twice (on Complete Journey, Serve's --candidates
        built and warmed a second copy in 0.66 s; 0.007 s shared) nor each past day's product
        vectors copied."""
        return Ranker(
            self.model,
            self.state if state is None else state,
            self.rows,
            self.settings if settings is None else settings,
            self.mf_index,
            self.exact_mf,
            shared_mf=self.candidates.mf,
        )

    def compile(self) -> None:
        """Scores through ``torch.compile`` from now on: Inductor fuses the model's chain of small
        memory-bound steps over the N candidates. The first call compiles (about a minute on a
        CPU core, less with Inductor's on-disk cache warm); worth it for a long batch job, not for
        a replica that must start fast. A compilation that fails (a broken compiler, a full disk)
        warns and leaves the eager model, which gives the same scores, to score from then on."""
        compiled = torch.compile(self.model.logits, dynamic=True)

        def compiled_or_eager(batch: Batch, need_weights: bool = False):
            try:
                return compiled(batch.with_contexts(CHUNK_USERS), need_weights=need_weights)
            except Exception as error:
                warnings.warn(
                    f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); scoring eagerly",
                    stacklevel=2,
                )
                self._logits = self.model.logits
                return self._logits(batch, need_weights=need_weights)

        self._logits = compiled_or_eager

    @property
    def history_length(self) -> int:
        return self.model.config.history_length

    def warm(self) -> int:
        """Computes the households' first-stage MF lists now (serving does it when it loads a
        model, so that no request pays for it), the most recent shoppers first, at most
        :data:`WARM_MAX_SCORES` scores in all; returns how many households that took. A household
        past the budget computes its own list at its first ranking (one product table's worth
        of dot products: about 3 ms at 1M products)."""
        mf = self.candidates.mf
        if mf is None or not mf.cached:
            return 0
        users = self.state.states.users()
        most = max(1, WARM_MAX_SCORES // max(1, mf.products))
        if len(users) > most:
            last = self.state.states.timestamps[self.state.states.offsets[users + 1] - 1]
            users = users[np.argsort(-last, kind="stable")[:most]]
        return mf.warm(users)

    # -- entry points ----------------------------------------------------------------------------

    def rank(
        self,
        users: Sequence[int],
        at: Sequence[int],
        k: int = 10,
        exclude_purchased: bool = False,
        explain: bool = False,
        brute_force: bool = False,
        explain_top: int = 3,
        reasons: Optional[bool] = None,
        keep_candidates: bool = False,
    ) -> List[Ranking]:
        """The top-``k`` products of each (household, moment) pair (state indices; households
        unknown to the state or without purchases before the moment get the cold start).
        ``explain``: with the attention's "because" products and the reasons; ``reasons``: the
        reasons or not whatever ``explain`` says. Explained or not, the scores are a plain
        ranking's to the last bit. ``keep_candidates``: each ranking keeps the first stage's
        candidates it was drawn from (evaluation's coverage; a nightly batch would hold them all).
        ``brute_force``: every known product re-ranked for a household with purchases (benchmarks
        of the first stage); a cold start still gets its hourly list (at most 200 products)."""
        check_k(k, brute_force)  # evaluation asks 100 deep of any first stage (bench.first_stage_size's 10)
        with_reasons = explain if reasons is None else reasons
        users, at = np.asarray(users, np.int64), np.asarray(at, np.int64)
        if users.shape != at.shape:
            raise ValueError(f"{at.size} moments for {users.size} households: one each")
        self._check_after_stats(at)
        rankings: List[Ranking] = []
        for start in range(0, len(users), 1 if brute_force else CHUNK_USERS):
            chunk = slice(start, start + (1 if brute_force else CHUNK_USERS))
            questions = self._questions(users[chunk], at[chunk], exclude_purchased, brute_force)
            logits, weights = self._score(questions, explain)
            ranked = self._top(questions, logits, weights, k, explain_top, keep_candidates)
            if with_reasons:
                self._add_reasons(questions, ranked)
            rankings += ranked
        return rankings

    def inputs(self, user: int, at: int, products: np.ndarray) -> Batch:
        """The model's inputs for one household at ``at`` over ``products`` (what :meth:`score`
        feeds the model; tests compare it with the training lists)."""
        return self._batch([self._given(user, at, products)])

    def score(
        self, user: int, products: np.ndarray, at: int, logits: bool = False, timeline: Optional[UserTimeline] = None
    ) -> Tuple[np.ndarray, bool]:
        """Probabilities that the household buys each of ``products`` (state indices) within the
        horizon after ``at`` (with ``logits``, the logits they come from, which keep the order
        float32's sigmoid loses above about 17), and whether it is a cold start. With
        ``timeline``, as if the household's purchases were those instead of the state's (what
        the explanations' occlusion asks, :mod:`ncf.rank.reasons`)."""
        question = self._given(user, at, products, timeline)
        raw, _ = self._score([question], False)
        return (raw if logits else self._probabilities(raw)), question.cold_start

    # -- the path --------------------------------------------------------------------------------

    def _given(self, user: int, at: int, products, timeline: Optional[UserTimeline] = None) -> _Question:
        """A question over given products (no first stage), on the state's timeline of the
        household unless ``timeline``."""
        products = np.asarray(products, np.int64)
        self._check_after_stats(np.asarray([at], np.int64))
        timeline = self.state.states.timeline(user) if timeline is None else timeline
        return _Question(user, at, products, self._is_cold(user, at, timeline), timeline)

    def _check_after_stats(self, at: np.ndarray) -> None:
        """Refuses moments before the products' statistics: their popularity, neighbours and cycles
        would hold purchases after the moment (rank an earlier moment from
        ``RankingState.as_of``, as evaluation and :meth:`ncf.rank.recommender.Recommender.as_of` do)."""
        cutoff = int(self.state.stats.cutoff)
        if at.size and int(at.min()) < cutoff:
            raise ValueError(
                f"moment {int(at.min())} is before the product statistics' cutoff {cutoff}: they would hold "
                "later purchases; rank it from a state as of that moment"
            )

    def _add_reasons(self, questions: List[_Question], rankings: List[Ranking]) -> None:
        """Each warm ranking's :class:`Reason` per product, from occluded questions scored
        through :meth:`_score` like any other: one a product over it alone (the household's
        timeline without its purchases of the product), then one a category over the ranking's
        products of that category (the timeline without the category's purchases). A product of
        the unknown category 0 has no category: without it is without the product."""
        catalog = self.state.catalog
        warm = [(q, ranking) for q, ranking in zip(questions, rankings) if not q.cold_start]
        groups = [_by_category(ranking.products, catalog.category) for _, ranking in warm]

        # A product (or category) the household never bought before the moment leaves what the
        # model reads of its timeline as it is (a past moment's later purchases are not read):
        # that question is the ranking's own, whose scores are taken instead of asking it again
        # (with exclude_purchased, every product's).
        before = [q.timeline.timestamps < q.at for q, _ in warm]
        asked = [
            (
                [bool((product_lines(q.timeline, p) & read).any()) for p in ranking.products.tolist()],
                [bool((category_lines(q.timeline, int(members[0]), catalog) & read).any()) for members in by_category],
            )
            for (q, ranking), by_category, read in zip(warm, groups, before)
        ]

        def occluded() -> Iterator[_Question]:
            for ((q, ranking), by_category), (products, categories) in zip(zip(warm, groups), asked):
                for product, bought in zip(ranking.products.tolist(), products):
                    if bought:
                        yield self._given(q.user, q.at, [product], without_product(q.timeline, product))
                for members, bought in zip(by_category, categories):
                    if bought:
                        timeline = without_category(q.timeline, int(members[0]), catalog)
                        yield self._given(q.user, q.at, members, timeline)

        # Built a model call at a time: each holds its own copy of a household's purchases.
        step, pending, scores = CHUNK_USERS * 8, occluded(), []
        while chunk := list(itertools.islice(pending, step)):
            scores.append(self._probabilities(self._score(chunk, False)[0]).astype(float))
        flat = iter(np.concatenate(scores).tolist() if scores else [])
        for ((q, ranking), by_category), (bought_products, bought_categories) in zip(zip(warm, groups), asked):
            products = ranking.products.tolist()
            own = dict(zip(products, ranking.scores.astype(float).tolist()))
            never = {p: next(flat) if bought else own[p] for p, bought in zip(products, bought_products)}
            without_its_category = dict(never)  # category 0: no category
            for members, bought in zip(by_category, bought_categories):
                ids = members.tolist()
                if bought:
                    without_its_category.update(zip(ids, itertools.islice(flat, len(ids))))
                else:
                    without_its_category.update((p, own[p]) for p in ids)
            ranking.reasons = [
                Reason(
                    *purchase_facts(q.timeline, product, q.at),
                    score_if_never_bought=never[product],
                    score_if_category_never_bought=without_its_category[product],
                )
                for product in products
            ]

    def _is_cold(self, user: int, at: int, timeline: Optional[UserTimeline] = None) -> bool:
        timeline = self.state.states.timeline(user) if timeline is None else timeline
        return not (0 < user < self.state.states.num_users) or timeline.count_before(np.array([at]))[0] == 0

    def _questions(self, users: np.ndarray, at: np.ndarray, exclude: bool, brute_force: bool) -> List[_Question]:
        timelines = [self.state.states.timeline(u) for u in users.tolist()]
        cold = np.array([self._is_cold(u, a, t) for u, a, t in zip(users.tolist(), at.tolist(), timelines)], bool)
        warm = users[~cold]
        mf_top = self.candidates.mf_top(warm) if len(warm) and not brute_force else None
        questions, j = [], 0
        for u, a, c, timeline in zip(users.tolist(), at.tolist(), cold.tolist(), timelines):
            if c:
                candidates = self.candidates.cold_start(a)
            elif brute_force:
                candidates = np.flatnonzero(self.candidates.known)
                if exclude:
                    candidates = candidates[~np.isin(candidates, timeline.products_before(a))]
            else:
                candidates = self.candidates.for_household(
                    u, timeline, a, exclude, None if mf_top is None else mf_top[j]
                )
                j += 1
            questions.append(_Question(u, a, candidates, c, timeline))
        return questions

    def _batch(self, questions: List[_Question]) -> Batch:
        """The model's inputs for the questions: :func:`ncf.data.features.candidate_features`, the
        function training examples are built with."""
        rows, catalog = self.rows, self.state.catalog
        length = self.history_length
        users, histories, ages, parts, features = [], [], [], [], []
        for q in questions:
            history, age, time_parts = household_inputs(q.timeline, q.at, length)
            q.history = history
            # Its own row was trained only at cutoffs after its first purchase (no training list
            # holds a household without purchases): before that, it would carry what came later.
            users.append(0 if q.cold_start or not 0 < q.user < len(rows.user) else q.user)
            histories.append(history)
            ages.append(age)
            parts.append(time_parts)
            features.append(candidate_features(q.timeline, q.candidates, q.at, catalog, self.state.stats))
        product = np.concatenate([q.candidates for q in questions]).astype(np.int64)
        return Batch.for_ranking(
            user=rows.user[np.array(users)],
            time_parts=np.stack(parts),
            history=rows.product[np.stack(histories)],
            history_age_days=np.stack(ages),
            owner=np.repeat(np.arange(len(questions)), [len(q.candidates) for q in questions]),
            product=rows.product[product],
            department=rows.department[catalog.department[product]],
            category=rows.category[catalog.category[product]],
            features=np.concatenate(features),
            device=self.device,
        )

    @torch.no_grad()
    def _score(self, questions: List[_Question], explain: bool):
        batch = self._batch(questions)
        logits, weights = self._logits(batch, need_weights=explain)
        logits = logits.float().cpu().numpy()
        not_a_number = int(np.isnan(logits).sum())
        if not_a_number:
            # A stable sort keeps NaN scores in the candidates' order (the household's own
            # products first): a diverged model ranked as decayed frequency, its validation plausible.
            raise ScoresNotANumber(f"the model scored {not_a_number:,} of {logits.size:,} candidates NaN")
        return logits, None if weights is None else weights.float().cpu().numpy()

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The model's own ``final`` sigmoid on logits already computed."""
        return self.model.final[1](torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))).numpy()

    def _top(
        self, questions: List[_Question], logits, weights, k: int, explain_top: int, keep_candidates: bool = False
    ) -> List[Ranking]:
        """Each question's ``k`` best candidates by logit, scored with their probabilities. Sorted
        by logit because float32's sigmoid rounds every logit above about 17 to exactly 1.0 (a third
        of Complete Journey's top-10 scores), which would leave the order among them to the
        candidates' order."""
        out, start = [], 0
        for q in questions:
            end = start + len(q.candidates)
            order = np.argsort(-logits[start:end], kind="stable")[:k]
            probabilities = self._probabilities(logits[start:end][order])
            ranking = Ranking(q.candidates[order], probabilities, q.cold_start)
            if keep_candidates:
                ranking.candidates = q.candidates
            if weights is not None:
                ranked = weights[start + order]  # k x L
                attended = self.rows.product[q.history] > 0
                ranking.explanations = [_because(q.history, attended, w, explain_top) for w in ranked]
                ranking.attention_entropy, ranking.attention_null = attention_spread(ranked)
            out.append(ranking)
            start = end
        return out


def _by_category(products: np.ndarray, category: np.ndarray) -> List[np.ndarray]:
    """The ranked ``products`` of each known category (not 0), in the order of their first
    product, each group in ranking order."""
    of = category[products]
    known, first = np.unique(of[of > 0], return_index=True)
    return [products[of == c] for c in known[np.argsort(first)]]


def _because(history: np.ndarray, attended: np.ndarray, weights: np.ndarray, top: int) -> List[Tuple[int, float]]:
    """The ``top`` distinct past purchases (state indices) the attention weighted most, each with
    the weights of all its places in the history; ``attended``: the places the model attends to
    (the model masks products on its unknown row: their weight is 0, they explain nothing)."""
    products, first, place_of = np.unique(history[attended], return_index=True, return_inverse=True)
    summed = np.bincount(place_of, weights=weights[attended], minlength=len(products))
    best = np.lexsort((first, -summed))[:top]  # ties: the most recent purchase first
    return [(int(products[i]), float(summed[i])) for i in best]


def attention_spread(weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(entropy in nats, null-slot weight) of each row of ``weights`` (N x L, the attention over
    the history without its null slot). The rows sum to 1 less the null slot's weight: the
    entropy is that of the weights renormalised over the history, comparable with log(L) of
    uniform weights. A row with nothing attended has entropy 0."""
    on_history = weights.sum(axis=1)
    shares = weights / np.maximum(on_history, 1e-12)[:, None]
    entropy = -(shares * np.log(np.clip(shares, 1e-12, 1.0))).sum(axis=1)
    return entropy, np.clip(1.0 - on_history, 0.0, 1.0)
