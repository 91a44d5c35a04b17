"""The scoring API in raw ids (``shared/DESIGN.md``), over the one ranking path.

``Recommender.load(MODEL)`` ranks from the state the model was trained with (its ``state/``: the
histories through that DATA's end); ``Recommender.load(MODEL, data=DATA)`` ranks from a newer
DATA's state (every household and product in it, the latest purchases), without retraining.

Example::

    rec = Recommender.load("artifacts/demo/model", data="artifacts/demo/data")
    rec.recommend([1364], k=5)  # [[raw product ids]]
    rec.score(1364, [1082185, 6534178])  # [probabilities]
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ncf.data.examples import check_features_version
from ncf.data.product_stats import ProductStats
from ncf.data.vocab import UNKNOWN_INDEX
from ncf.model.directory import ModelDir
from ncf.moments import after_the_data, as_datetime, day_of, first_rankable, moment_of, run_date_of
from ncf.rank.candidates import RankingSettings
from ncf.rank.ranker import Ranker, Ranking, check_k
from ncf.rank.reasons import Reason
from ncf.rank.state import RankingState, check_catalog, check_data_products

AS_OF_DAYS = 4  # past days whose product stats a recommender keeps (each a pass over the purchases)


@dataclass
class RankedItems:
    """One household's ranking in raw ids."""

    user_id: object
    at: int
    cold_start: bool
    product_ids: List
    scores: List[float]
    # With explanations: for each product, the (raw product id, weight) past purchases behind it.
    because: Optional[List[List[Tuple[object, float]]]] = None
    # With explanations, for a household that is no cold start: each product's purchase timing and
    # its scores had the household never bought it or its category (ncf.rank.reasons.Reason).
    reasons: Optional[List[Reason]] = None


class BeforeTheData(ValueError):
    """A moment before the end of the data's first UTC day: a past moment ranks from the products
    known at its day's start, and none was known yet (a client error: Serve answers 422)."""


class PassBusy(RuntimeError):
    """A past day not computed yet, asked of a recommender that does not queue passes while a
    pass runs, for that day or another, or before its passes' share of time allows another
    (Serve's: 503 with Retry-After, rather than a worker thread held for the pass's length).
    ``retry_after_s``: when a new pass may start, where known."""

    def __init__(self, message: str, retry_after_s: Optional[float] = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PassNeeded(Exception):
    """A moment whose day's products' stats are not kept, asked of :meth:`Recommender.as_of`
    with ``start_pass=False`` (Serve's ``@serve.batch``: a pass there would hold every request
    batched with it); the caller ranks it on its own."""

    def __init__(self, at: int) -> None:
        super().__init__(f"at {at}: its day's products' stats are not kept")
        self.at = at


class _BackgroundPass:
    """A pass running in a thread of its own: ``done`` set when it ends, ``error`` what it raised."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: Optional[BaseException] = None
        self.started = time.monotonic()


class _PastDay:
    """A past day's recommender, computed by the first caller while later ones for that day wait
    (or, passes run in the background, by a thread of its own: ``running``, its latest)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recommender: Optional["Recommender"] = None
        self.running: Optional[_BackgroundPass] = None


class UnknownProductIds(KeyError):
    """Product ids the model's catalog does not know (``product_ids``, in the order asked)."""

    def __init__(self, product_ids: List) -> None:
        super().__init__(f"unknown product ids: {product_ids}")
        self.product_ids = product_ids


class _Passes:
    """A recommender's passes over the purchases (a past day's products' stats): one at a time
    (``lock``), and the next not before ``next_at`` (``time.monotonic()``: its share of time).
    ``last_s``: how long the last pass took (0 before any); ``started``: when the pass running
    began (None: none runs)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_at = 0.0
        self.last_s = 0.0
        self.started: Optional[float] = None


def listed_ids(name: str, ids) -> Sequence:
    """``ids`` as a list of ids (a pyarrow array's as Python values, so that answers and errors
    carry them); TypeError for what is not one: a string was read character by character
    (``recommend("12")`` ranked households "1" and "2"), an int (or a 0-d array) failed deep
    inside, a generator was used up before its unknown ids were looked for, and a column of ids
    (an n x 1 array, a DataFrame, a list of lists) read as anything but ids: "[1364]" for each,
    every household a cold start, or the frame's column names."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__") or getattr(ids, "ndim", 1) == 0:
        raise TypeError(f"{name}: a list of ids is asked, not one id ({ids!r}): pass [{ids!r}] for one")
    if hasattr(ids, "to_pylist"):  # a pyarrow array
        ids = ids.to_pylist()
    if getattr(ids, "ndim", 1) != 1 or (len(ids) and isinstance(next(iter(ids)), (list, tuple, dict, np.ndarray))):
        raise TypeError(
            f"{name}: a flat list of ids is asked, not a column or a table of them (ids.ravel(), df[column])"
        )
    return ids


class Recommender:
    """Ranks raw household ids with a :class:`Ranker`.

    Args:
        ranker: the ranking path over a model and a state.
        version: the model version reported with every answer.
        queue_passes: a past day not computed yet, asked for while a pass runs (for that day
            or another), waits for it (True) or raises :class:`PassBusy` (False).
        pass_share: the most of its time the recommender spends on passes: after a pass of d
            seconds, a new day's pass waits d * (1 / pass_share - 1) seconds (PassBusy meanwhile,
            when passes are not queued). 1: no wait. Serve's replicas take 0.25, so that anyone
            cycling through past days cannot keep a replica's cores on passes.
        pass_wait_s: passes not queued, a new day's pass runs in a thread of its own, and the
            caller that starts it waits at most this long for it, then gets :class:`PassBusy`
            while the pass goes on (callers for that day meanwhile get it at once): Serve's
            request held a worker thread for the pass's length (minutes at a billion purchases),
            and its client got the proxy's 504 after 30 s. None: the caller computes the day.
    """

    def __init__(
        self,
        ranker: Ranker,
        version: str = "dev",
        queue_passes: bool = True,
        pass_share: float = 1.0,
        pass_wait_s: Optional[float] = None,
    ) -> None:
        if not 0.0 < pass_share <= 1.0:
            raise ValueError(f"pass_share={pass_share}: a share of time, in (0, 1]")
        if pass_wait_s is not None and (queue_passes or not pass_wait_s >= 0):
            raise ValueError(f"pass_wait_s={pass_wait_s}: seconds >= 0, for a recommender that does not queue passes")
        self.ranker = ranker
        self.version = version
        self.queue_passes = queue_passes
        self.pass_share = pass_share
        self.pass_wait_s = pass_wait_s
        self._days: "OrderedDict[int, _PastDay]" = OrderedDict()  # as_of's, latest used last
        self._days_lock = threading.Lock()  # guards _days only: a day's pass runs under its own lock
        self._passes = _Passes()  # one pass over the purchases at a time, and its share of time

    @staticmethod
    def load(
        model_dir: str,
        data: Optional[str] = None,
        settings: Optional[RankingSettings] = None,
        device: Optional[torch.device] = None,
        queue_passes: bool = True,
        pass_share: float = 1.0,
        pass_wait_s: Optional[float] = None,
    ) -> "Recommender":
        """The model of ``model_dir`` ranking from ``data``'s state (default: the model's own)."""
        handle = ModelDir(model_dir)
        if data is not None:
            # Before the state: a DATA of an older version lacks files it reads (neighbours.npz).
            check_features_version(data)  # its product stats feed the features
        state = RankingState.load(data or handle.state_dir)
        if data is not None:
            check_catalog(handle.config["model"], state.vocabs.sizes(), data)
            # Before the ranker: without a saved index it builds one (minutes at 1M products).
            check_data_products(handle, data)
        ranker = Ranker.of_model_dir(handle, state, settings, device=device)
        return Recommender(ranker, handle.version, queue_passes, pass_share, pass_wait_s)

    # -- what the state says ------------------------------------------------------------------

    @property
    def state(self) -> RankingState:
        return self.ranker.state

    @property
    def vocabs(self):
        return self.state.vocabs

    @property
    def settings(self) -> RankingSettings:
        return self.ranker.settings

    def as_of(self, at: int, stats: Optional[ProductStats] = None, start_pass: bool = True) -> "Recommender":
        """The same model ranking ``at`` from what was known then. For a moment inside the state's
        data, the products' stats (popularity, repurchase cycles, the catalog of products seen)
        are those of the start of its UTC day, recomputed from the purchases before it (one
        computation per day, the last :data:`AS_OF_DAYS` kept): every path that ranks a past
        moment (Serve's ``at``, the nightly job's ``--at``, its verification) ranks it the same
        way, and none sees a later purchase. A moment after the data (``default_at`` or later)
        needs nothing recomputed: this recommender itself. ``stats``: the stats at
        :func:`ncf.moments.day_of` ``at``, when computed once for several recommenders (the nightly job's
        actors). ``start_pass`` False: a day not kept raises :class:`PassNeeded` instead of being
        computed (checked and taken under one lock: a :meth:`needs_pass` apart from this call may
        see a day that another thread's finished pass forgets before this call takes it)."""
        if at > self.state.end:
            return self
        self.check_rankable(at)
        day = day_of(at)
        with self._days_lock:
            past = self._days.get(day)
            if not start_pass and (past is None or past.recommender is None):
                raise PassNeeded(at)
            past = past or _PastDay()
            self._days[day] = past
            self._days.move_to_end(day)  # used last: forgotten last
        # A day's stats are a pass over every purchase (minutes at a billion): under the shared
        # lock, a request for a day already kept waited behind another day's pass. Passes still
        # run one at a time (each holds memory in proportion to the purchases).
        if past.recommender is not None:  # kept (set once, never unset): no lock to wait on
            return past.recommender
        if not past.lock.acquire(blocking=self.queue_passes):
            return self._await_day(past, at, past.running, wait_s=0.0)
        in_the_background: Optional[_BackgroundPass] = None
        try:
            if past.recommender is None:
                try:
                    kept = self._start_pass(past, day, at)
                except BaseException:
                    self._settle(past, day)
                    raise
                if kept is not None:  # computed while this caller waited for the pass lock
                    return kept
                if self.pass_wait_s is None:
                    self._run_pass(past, day, stats)
                else:  # its thread releases past.lock when the pass ends
                    in_the_background = self._start_in_the_background(past, day, stats)
            if in_the_background is not None:
                return self._await_day(past, at, in_the_background, wait_s=self.pass_wait_s)
            return past.recommender
        finally:
            if in_the_background is None:
                past.lock.release()

    def _kept_meanwhile(self, past: _PastDay, day: int) -> Optional["Recommender"]:
        """The day's recommender where another caller's pass computed it while this one waited
        for the pass lock: a retry after a failed pass, whose day a later caller had asked for
        again (a new entry) meanwhile. Each had run a full pass (minutes at a billion purchases)."""
        with self._days_lock:
            other = self._days.get(day)
            if past.recommender is None and other is not None and other.recommender is not None:
                past.recommender = other.recommender
            return past.recommender

    def _start_pass(self, past: _PastDay, day: int, at: int) -> Optional["Recommender"]:
        """Takes the pass lock (one pass at a time) once the last pass's share of time allows
        another; a recommender that does not queue passes raises :class:`PassBusy` instead. Where
        another caller's pass computed the day meanwhile (:meth:`_kept_meanwhile`), returns it at
        once, the lock released: no pass, no wait for the share."""
        if not self._passes.lock.acquire(blocking=self.queue_passes):
            raise self._busy(at, another_day=True)
        try:
            kept = self._kept_meanwhile(past, day)
            if kept is None:
                self._wait_for_the_pass_share(at)
        except BaseException:
            self._passes.lock.release()
            raise
        if kept is not None:
            self._passes.lock.release()
        return kept

    def _run_pass(
        self, past: _PastDay, day: int, stats: Optional[ProductStats], in_the_background: bool = False
    ) -> None:
        """The pass over the purchases for ``day`` (under ``past.lock`` and the pass lock, which
        it releases), then ``past`` kept or, failed, dropped for a later call to try again."""
        try:  # the pass lock released whatever stops this, a Ctrl-C in the bookkeeping too
            started = self._passes.started = time.monotonic()
            try:
                # The MF product vectors shared: only the products known that day differ.
                ranker = self.ranker.derived(state=self.state.as_of(day, stats))
                past.recommender = Recommender(ranker, self.version)
            finally:
                spent = time.monotonic() - started
                self._passes.last_s, self._passes.started = spent, None
                self._passes.next_at = time.monotonic() + spent * (1.0 / self.pass_share - 1.0)
                # Kept (or handed over) before the next caller takes the pass lock, which then
                # finds the day computed (_kept_meanwhile) instead of passing over it again.
                self._settle(past, day, used_last=in_the_background)
        finally:
            self._passes.lock.release()

    def _start_in_the_background(self, past: _PastDay, day: int, stats: Optional[ProductStats]) -> _BackgroundPass:
        """:meth:`_run_pass` in a thread of its own, which releases ``past.lock`` when it ends."""
        running = past.running = _BackgroundPass()
        thread = threading.Thread(target=self._run_in_the_background, args=(past, day, stats, running), daemon=True)
        try:
            thread.start()
        except BaseException:  # no thread to be had: nothing computed, nothing held
            self._passes.lock.release()
            self._settle(past, day)
            raise
        return running

    def _run_in_the_background(
        self, past: _PastDay, day: int, stats: Optional[ProductStats], running: _BackgroundPass
    ) -> None:
        try:
            self._run_pass(past, day, stats, in_the_background=True)
        except BaseException as e:  # noqa: BLE001 - raised for the callers waiting (_await_day)
            running.error = e
        finally:
            # Set before the lock is released: a caller taking the lock next may start the day's
            # next pass, and this pass's callers still read this one's outcome.
            running.done.set()
            past.lock.release()

    def _settle(self, past: _PastDay, day: int, used_last: bool = False) -> None:
        """After a pass, or its refusal: the day kept (among the :data:`AS_OF_DAYS` used last)
        or, not computed, dropped for a later call to try again. ``used_last``: a pass in the
        background, whose day counts as used now (the days asked for while it ran minutes would
        make it the oldest, forgotten the moment it was computed)."""
        with self._days_lock:
            if past.recommender is None:
                if self._days.get(day) is past:
                    del self._days[day]
            elif day not in self._days:  # a retry by a caller that waited on a failed pass
                self._days[day] = past
            else:
                other = self._days[day]
                if other.recommender is None:
                    # A retry whose failed first try dropped the day, which a later caller asked for
                    # again meanwhile (a new entry, its pass queued): this pass is that caller's too.
                    other.recommender = past.recommender
                if used_last:
                    self._days.move_to_end(day)
            self._forget_oldest_days()

    def _await_day(self, past: _PastDay, at: int, running: Optional[_BackgroundPass], wait_s: float) -> "Recommender":
        """``past``'s recommender once its pass is over, waiting at most ``wait_s`` for a pass in
        the background: the caller that started it waits ``pass_wait_s``, the others for that day
        not at all (each wait holds one of a Serve replica's few worker threads, the batches'
        too). Else :class:`PassBusy`, with the seconds the pass may still take where it runs in the
        background; the pass's own error where it failed."""
        if self.pass_wait_s is not None and running is not None and running.done.wait(wait_s):
            if past.recommender is None and running.error is not None:
                raise running.error
        if past.recommender is not None:  # computed meanwhile
            return past.recommender
        if self.pass_wait_s is None or running is None:
            raise self._busy(at, another_day=False)
        elapsed = time.monotonic() - running.started
        left = self._passes.last_s - elapsed  # the last pass's length: the best guess there is
        retry = left if left >= 1.0 else max(1.0, self.pass_wait_s)
        raise PassBusy(
            f"at {as_datetime(at).isoformat()}: that day's products' stats are being computed (a pass over every "
            f"purchase, started {elapsed:.0f} s ago); ask again in {math.ceil(retry)} s",
            retry_after_s=retry,
        )

    def _wait_for_the_pass_share(self, at: int) -> None:
        """Under the pass lock: waits (or, not queueing, refuses) until the last pass's share of
        time allows another."""
        wait = self._passes.next_at - time.monotonic()
        if wait <= 0:
            return
        if not self.queue_passes:
            raise PassBusy(
                f"at {as_datetime(at).isoformat()}: this replica spends at most {self.pass_share:.0%} of its time "
                f"computing past days' products' stats; ask again in {math.ceil(wait)} s, or for a day already "
                "asked for",
                retry_after_s=wait,
            )
        time.sleep(wait)

    def _busy(self, at: int, another_day: bool) -> PassBusy:
        """What a recommender that does not queue passes answers while one runs: each waiting
        request would hold a worker thread for the pass's length. When to ask again, where a pass
        ran before: the running one's rest, by the last one's length, then the share's wait after
        it (a flat 10 s told a client to ask every 10 s through a pass of minutes, then to wait
        three times its length)."""
        passes, retry = self._passes, None
        started = passes.started
        if started is not None and passes.last_s > 0:
            retry = max(1.0, passes.last_s - (time.monotonic() - started))
            if another_day:  # that day's answer is ready when its pass ends; another waits the share
                retry += passes.last_s * (1.0 / self.pass_share - 1.0)
        when = f"ask again in {math.ceil(retry)} s" if retry is not None else "ask again shortly"
        whose = "another past day's" if another_day else "that day's"
        return PassBusy(
            f"at {as_datetime(at).isoformat()}: {whose} products' stats are being computed (a pass over every "
            f"purchase); {when}, or for a day already asked for",
            retry_after_s=retry,
        )

    def needs_pass(self, at: int) -> bool:
        """Whether ranking ``at`` first computes its day's products' stats (a moment inside the
        data whose day is not kept): Serve ranks such a request on its own, not in a batch."""
        if at > self.state.end:
            return False
        with self._days_lock:
            past = self._days.get(day_of(at))
        return past is None or past.recommender is None

    def _forget_oldest_days(self) -> None:
        """Keeps the :data:`AS_OF_DAYS` days used last among those computed (under ``_days_lock``);
        a day being computed is never dropped, so its pass is never run twice."""
        computed = [day for day, past in self._days.items() if past.recommender is not None]
        for day in computed[: max(0, len(computed) - AS_OF_DAYS)]:
            del self._days[day]

    def check_rankable(self, at: int) -> None:
        """Raises :class:`BeforeTheData` for a moment before the end of the data's first UTC day
        (the nightly job refuses the same ``--at``), instead of an empty ranking."""
        if at > self.state.end:
            return
        first = self.state.first_purchase
        if first is not None and at < first_rankable(first):
            raise BeforeTheData(
                f"at {as_datetime(at).isoformat()}: the data's first purchase is on {run_date_of(first)} and "
                f"no product was known before that day ended; ask for {as_datetime(first_rankable(first)).isoformat()} "
                "or later"
            )

    def with_settings(self, **changes) -> "Recommender":
        """A recommender sharing this one's model and state with other first-stage sizes."""
        settings = dataclasses.replace(self.settings, **changes)
        # The same MF lists where mf_candidates is unchanged (Serve's --candidates): kept once.
        ranker = self.ranker.derived(settings=settings)
        derived = Recommender(ranker, self.version, self.queue_passes, self.pass_share, self.pass_wait_s)
        # Its own past days (each carries its settings), the same pass limits: a pass of this one
        # still running for requests in flight (a rollout of Serve's --candidates) and one of the
        # new ran at once, each a pass over every purchase, and the share of time began again.
        derived._passes = self._passes
        return derived

    @property
    def default_at(self) -> int:
        """The first moment after the state's data: every purchase it holds is history
        (:func:`ncf.moments.after_the_data`: a log of dates, the midnight after its last day)."""
        return after_the_data(self.state.end, self.state.stats.dates_only)

    def moment(self, at) -> int:
        """``at`` in epoch seconds (None: :attr:`default_at`), read as a job's ``--at`` is
        (:func:`ncf.moments.moment_of`): ``"now"`` is the clock (never before :attr:`default_at`),
        ``"data-end"`` :attr:`default_at`, an ISO time without a zone UTC; ``"today"`` and a
        datetime without a time zone (``datetime.now()``, local time) raise
        :class:`ncf.errors.InputError`, not read as UTC."""
        return self.default_at if at is None else moment_of(at, data_end=self.default_at)

    # -- raw-id API ----------------------------------------------------------------------------

    def recommend(self, user_ids: Sequence, k: int = 10, at=None, exclude_purchased: bool = False) -> List[List]:
        """Top-``k`` raw product ids for each raw household id (unknown households: cold start)."""
        return [r.product_ids for r in self.rank(user_ids, k, at, exclude_purchased)]

    def rank(
        self,
        user_ids: Sequence,
        k: int = 10,
        at=None,
        exclude_purchased: bool = False,
        explain: bool = False,
        reasons: Optional[bool] = None,
    ) -> List[RankedItems]:
        """Each household's ranking at ``at`` (one moment, or one per household); ``explain`` and
        ``reasons`` as :meth:`Ranker.rank` takes them.

        Raises:
            TypeError: ``user_ids`` is not a list of ids (:func:`listed_ids`).
            ValueError: ``k`` not an integer from 1 to :data:`~ncf.rank.candidates.MAX_K` (100)
                and this first stage's ``candidates``, or as many moments as households neither
                one nor all.
            BeforeTheData: a moment before any product was known.
        """
        user_ids = listed_ids("user_ids", user_ids)
        if isinstance(at, (list, tuple, np.ndarray)):
            if len(at) != len(user_ids):
                raise ValueError(f"{len(at)} moments for {len(user_ids)} households: one each, or one for all")
            moments = [self.moment(a) for a in at]
        else:
            moments = [self.moment(at)] * len(user_ids)
        # Before any day's stats are computed; a first stage narrower than k answered short lists
        # (Serve and the nightly job refuse such a k apart, evaluation reads short lists on purpose).
        check_k(k, candidates=self.ranker.settings.candidates)
        for moment in set(moments):  # a moment no day can rank, before any other day is computed
            self.check_rankable(moment)
        users = self.vocabs.users.index_of(list(user_ids))
        # Households at a moment inside the data rank from the stats of that moment's day, one day
        # at a time: over more past days than are kept, taking every day's first held them all in
        # memory at once, and computed a day forgotten meanwhile twice.
        by_day: Dict[Optional[int], List[int]] = {}
        for i, moment in enumerate(moments):
            by_day.setdefault(day_of(moment) if moment <= self.state.end else None, []).append(i)
        rankings: List[Optional[Ranking]] = [None] * len(moments)
        for positions in by_day.values():
            recommender = self.as_of(moments[positions[0]])  # the day's, for each of its moments
            moments_here = [moments[i] for i in positions]
            ranked = recommender.ranker.rank(
                users[positions], moments_here, k, exclude_purchased, explain=explain, reasons=reasons
            )
            for i, ranking in zip(positions, ranked):
                rankings[i] = ranking
        return [self._raw(u, a, r) for u, a, r in zip(self.answered_ids(user_ids, users), moments, rankings)]

    def answered_ids(self, user_ids: Sequence, users: np.ndarray) -> List:
        """Household ids as answers carry them: a known household's as its vocabulary types it
        (``1364`` for ``"1364"`` where the logs' ids were integers), as the nightly partitions and
        ``/households`` do, so that answers join with them; an unknown one's as it was asked.
        ``users``: their indices (:meth:`Vocabulary.index_of`)."""
        typed = self.vocabs.users.raw_of(users)
        return [asked if index == UNKNOWN_INDEX else known for asked, index, known in zip(user_ids, users, typed)]

    def score(self, user_id, product_ids: Sequence, at=None) -> List[float]:
        """Probabilities that the household buys each product within the horizon after ``at``.

        Raises:
            KeyError: naming the product ids that are not in the catalog.
            TypeError: ``product_ids`` is not a list of ids (:func:`listed_ids`).
        """
        return self.score_items(user_id, product_ids, at)[0]

    def score_items(self, user_id, product_ids: Sequence, at=None, logits: bool = False) -> Tuple[List[float], bool]:
        """:meth:`score` and whether the household is a cold start (unknown, or no purchases
        before ``at``: the model's unknown household row scores it); with ``logits``, the logits
        the probabilities come from (:meth:`Ranker.score`)."""
        product_ids = listed_ids("product_ids", product_ids)
        products = self.vocabs.products.index_of(list(product_ids))
        # Each unknown id once (in the order asked): a list of one id repeated was a list as long.
        unknown = list(dict.fromkeys(p for p, i in zip(product_ids, products) if i == UNKNOWN_INDEX))
        if unknown:
            raise UnknownProductIds(unknown)
        user = int(self.vocabs.users.index_of([user_id])[0])
        moment = self.moment(at)
        probs, cold = self.as_of(moment).ranker.score(user, products, moment, logits=logits)
        return probs.astype(float).tolist(), cold

    def _raw(self, user_id, at: int, ranking: Ranking) -> RankedItems:
        raw = self.vocabs.products.raw_of(ranking.products)
        because = None
        if ranking.explanations is not None:
            because = [
                list(zip(self.vocabs.products.raw_of([p for p, _ in pairs]), [w for _, w in pairs]))
                for pairs in ranking.explanations
            ]
        scores = ranking.scores.astype(float).tolist()
        return RankedItems(user_id, at, ranking.cold_start, raw, scores, because, ranking.reasons)
