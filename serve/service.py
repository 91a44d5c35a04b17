"""What a Serve replica does with a request, without Ray: settings, model swap, answers.

Kept apart from the deployment class so that the request -> answer logic is plain Python over
:class:`ncf.rank.recommender.Recommender` (the scoring core the nightly job uses too, so online and
batch rankings agree), and so that a rollout is one attribute swap: a replica builds a new
:class:`ModelService` beside the old one and replaces it; requests already running finish on
the old model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Mapping, Optional, Union

from ncf.data import layout
from ncf.errors import InputError
from ncf.model.directory import read_config
from ncf.model.integrity import data_fingerprint, model_fingerprint, verify_data_state, verify_model_dir
from ncf.moments import AHEAD_OF_THE_CLOCK_S, DATA_END, NOW, SECONDS_PER_DAY
from ncf.rank.ranker import MAX_K
from ncf.rank.recommender import RankedItems, Recommender, UnknownProductIds
from ncf.rank.state import histories_against_model
from serve.api import BatchRecommendRequest, RecommendRequest, ScoreRequest, UnknownProducts

DEFAULT_AT_CHOICES = (NOW, DATA_END)
# Histories ending this long before now are stale for requests at now (the default label window).
STALE_AFTER_DAYS = 35
# The most of a replica's time spent computing past days' products' stats (an `at` inside the
# data, a pass over every purchase): a client cycling through days cannot keep its cores on them.
PASS_SHARE = 0.25
# How long a request waits for its past day's pass before a 503 with Retry-After while the pass
# goes on (in a thread of its own): well inside Serve's request timeout, after which the client
# got a 504 and the request's worker thread stayed held for the pass's length.
PASS_WAIT_S = 10.0


@dataclass(frozen=True)
class ServeSettings:
    """A deployment's ``user_config``: which model, how many candidates, which default moment.

    Args:
        model_dir: the model directory to serve (jobs.train output or SWEEP/best).
        data: a DATA directory (``jobs.preprocess``, or ``--state-only``) whose histories the
            model ranks from (every household and its latest purchases); None: the state the
            model was trained with. A new ``data`` rolls out like a new model, without a restart.
        candidates: how many first-stage candidates the full model re-ranks (at least ``MAX_K``);
            None keeps the model directory's own setting. More candidates: closer to brute force, slower.
        default_at: the moment used when a request has no ``at``: ``"now"`` (live traffic)
            or ``"data-end"`` (the first moment after the data ranked from: demos and replays of history).
        ui: serve the explorer page at /ui. Here, not a constructor argument: Serve compares only
            the ``user_config`` of a deployment whose version is set, so turning it on or off is a
            reconfigure like any other option.
        model_fingerprint, data_fingerprint: what is in ``model_dir`` and ``data`` when the
            deployment was built (:func:`model_fingerprint`, :func:`data_fingerprint`); computed
            from the files when absent. The workflows reuse paths (a model trained again into the
            same ``--output``, a blue/green link repointed, new DATA swapped in at the same path):
            with paths alone the ``user_config`` would not change, Serve would not call
            ``reconfigure``, and the old model would keep serving.
    """

    model_dir: str
    candidates: Optional[int] = None
    default_at: str = "now"
    data: Optional[str] = None
    ui: bool = False
    model_fingerprint: Optional[str] = None
    data_fingerprint: Optional[str] = None

    @staticmethod
    def from_user_config(config: Mapping) -> "ServeSettings":
        """Validates a user_config dict; a bad one fails the rollout instead of every request."""
        if not isinstance(config, Mapping):  # a config file's list, say: said as such, not AttributeError
            raise ValueError(f"user_config must be a mapping of settings, not {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(ServeSettings)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown user_config keys {unknown}; expected some of {sorted(known)}")
        if not isinstance(config.get("model_dir"), str) or not config["model_dir"]:
            raise ValueError("user_config needs model_dir, a model directory path")
        candidates = config.get("candidates")
        # Ranking returns at most `candidates` products: fewer than a request's k would answer it
        # with a shorter list and no error.
        if candidates is not None and (
            isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < MAX_K
        ):
            raise ValueError(
                f"candidates must be an integer of at least {MAX_K} (the largest k a request may ask for), "
                f"not {candidates!r}"
            )
        default_at = config.get("default_at", "now")
        if default_at not in DEFAULT_AT_CHOICES:
            raise ValueError(f"default_at must be one of {DEFAULT_AT_CHOICES}, not {default_at!r}")
        data = config.get("data")
        if data is not None and (not isinstance(data, str) or not data):
            raise ValueError(f"data must be a DATA directory path, not {data!r}")
        ui = config.get("ui", False)
        if not isinstance(ui, bool):
            raise ValueError(f"ui must be true or false, not {ui!r}")
        for key in ("model_fingerprint", "data_fingerprint"):
            if config.get(key) is not None and not isinstance(config[key], str):
                raise ValueError(f"{key} must be a string, not {config[key]!r}")
        model_dir = os.path.abspath(config["model_dir"])
        data = None if data is None else os.path.abspath(data)
        return ServeSettings(
            model_dir=model_dir,
            candidates=candidates,
            default_at=default_at,
            data=data,
            ui=ui,
            model_fingerprint=config.get("model_fingerprint") or model_fingerprint(model_dir),
            data_fingerprint=None if data is None else config.get("data_fingerprint") or data_fingerprint(data),
        )

    def user_config(self) -> Dict:
        return dataclasses.asdict(self)

    def content(self) -> tuple:
        """What the loaded model and state depend on: equal, a reconfigure reuses them."""
        return self.model_dir, self.model_fingerprint, self.data, self.data_fingerprint


def _warn_if_stale(recommender: Recommender, settings: ServeSettings, content_changed: bool = True) -> None:
    """Requests at now rank from histories that end at the state's last purchase: far behind now,
    every household looks lapsed and the timing features leave what training saw. A ``data``
    older than the model's own, or built from part of the log, is said too (``content_changed``:
    only when the model or DATA is new; the staleness also where only ``default_at`` became now)."""
    logger = logging.getLogger("ray.serve")
    if settings.data and content_changed:
        boundaries = layout.DataStats(settings.data).boundaries
        for note in histories_against_model(read_config(settings.model_dir), boundaries):
            logger.warning(note)
    behind_days = (time.time() - recommender.state.end) / SECONDS_PER_DAY
    if settings.default_at == NOW and -behind_days * SECONDS_PER_DAY > AHEAD_OF_THE_CLOCK_S:
        logger.warning(
            "the histories end %.1f hours after now (%s UTC): requests without `at` rank at their end, "
            "not at the clock; are the log's timestamps local times read as UTC? (give their offsets)",
            -behind_days * 24,
            datetime.fromtimestamp(recommender.state.end, timezone.utc).isoformat(timespec="minutes"),
        )
    if settings.default_at == NOW and behind_days > STALE_AFTER_DAYS:
        logger.warning(
            "the histories end %.0f days before now (%s): requests without `at` rank as if nobody had "
            "shopped since; deploy newer DATA (--data) or use default_at data-end for a historical dataset",
            behind_days,
            datetime.fromtimestamp(recommender.state.end, timezone.utc).date(),
        )


def _check_unchanged(settings: ServeSettings) -> None:
    """Raises unless the paths still hold what the deployment was built with: a replica started
    later (autoscaling, a replacement) would otherwise serve another model beside the others."""
    if not same_content_on_disk(settings):
        raise InputError(
            f"{settings.model_dir} (or its DATA) changed after this deployment was built; "
            "roll the new one out with python -m jobs.deploy"
        )


def same_content_on_disk(settings: ServeSettings) -> bool:
    """True when ``settings``' fingerprints are those of what its paths hold now."""
    if settings.model_fingerprint != model_fingerprint(settings.model_dir):
        return False
    return settings.data is None or settings.data_fingerprint == data_fingerprint(settings.data)


def short_first_stage(model_dir: str, candidates: int) -> str:
    """The refusal of a model directory whose own first stage keeps fewer than ``MAX_K``
    candidates (a hand-edited config.json): a request's k above it would be answered short."""
    return (
        f"{model_dir}: its first stage keeps {candidates} candidates (config.json's ranking), fewer than the "
        f"largest k a request may ask for ({MAX_K}); deploy it with --candidates {MAX_K} or more (the app "
        "argument candidates)"
    )


class ModelService:
    """Answers the HTTP contract's requests with one loaded model (immutable once built).

    ``recommender`` answers; ``base`` is the model as loaded, before the settings' first-stage
    override, so that a later reconfigure applies its own override to it (not on top of this
    one's) and reuses the loaded model and state.
    """

    def __init__(self, recommender: Recommender, settings: ServeSettings, base: Optional[Recommender] = None) -> None:
        self.recommender = recommender
        self.settings = settings
        self.base = recommender if base is None else base

    @staticmethod
    def load(settings: ServeSettings, previous: Optional["ModelService"] = None) -> "ModelService":
        """Loads ``settings.model_dir`` over ``settings.data``; reuses ``previous``'s model and
        state when only options changed (same paths and fingerprints).

        A new model is checked as a whole before it can answer anything: the directory against
        its manifest and itself (:func:`ncf.model.integrity.verify_model_dir`), the DATA's state
        against itself (:func:`ncf.model.integrity.verify_data_state`), then loaded, warmed
        and asked for one known and one unknown household (:func:`_rehearse`). Any failure raises
        here, while ``previous`` is still the one serving.
        """
        # Paths and fingerprints: a new model or DATA written at the same path is a new one.
        same = previous is not None and previous.settings.content() == settings.content()
        if not same:
            verify_model_dir(settings.model_dir)  # damage first: its reason is the one to report
            if settings.data is not None:
                verify_data_state(settings.data)
            _check_unchanged(settings)
        # A past day's pass holds a worker thread and memory for its length: a request for another
        # new past day meanwhile is refused (PassBusy, 503) rather than queued behind it.
        base = (
            previous.base
            if same
            else Recommender.load(
                settings.model_dir,
                data=settings.data,
                queue_passes=False,
                pass_share=PASS_SHARE,
                pass_wait_s=PASS_WAIT_S,
            )
        )
        if not same:
            _check_unchanged(settings)  # replaced while it was verified and loaded
        if same and previous.settings.candidates == settings.candidates:
            recommender = previous.recommender
        elif settings.candidates is not None:
            # A new recommender sharing the model and state: requests in flight keep the old one.
            recommender = base.with_settings(candidates=settings.candidates)
        else:
            recommender = base  # back to the model directory's own first stage
        shortest = recommender.ranker.settings.candidates
        if shortest < MAX_K:  # a hand-edited ranking: a request's k above it would be answered short, silently
            raise ValueError(short_first_stage(settings.model_dir, shortest))
        if not same or recommender is not previous.recommender:
            # The first stage's lists, once per ranker and before any request (cheap when warm).
            recommender.ranker.warm()
        if not same:
            _rehearse(recommender)
            _warn_if_stale(recommender, settings)
        elif settings.default_at == NOW and previous.settings.default_at != NOW:
            _warn_if_stale(recommender, settings, content_changed=False)  # the same histories, now live traffic
        return ModelService(recommender, settings, base)

    @property
    def version(self) -> str:
        return self.recommender.version

    def moment(self, at: Optional[datetime]) -> int:
        """Epoch seconds to rank for: the request's ``at``, else the configured default."""
        if at is not None:
            return int(at.timestamp())
        if self.settings.default_at != NOW:
            return self.recommender.default_at
        # Never before the histories' end (ncf.moments.resolve_at's now): a log stamped ahead of
        # the clock made each request a past day's pass, its newest purchases cut.
        return max(int(time.time()), self.recommender.default_at)

    # -- routes ------------------------------------------------------------------------------

    def health(self, rollout_error: Optional[str] = None) -> Dict:
        """The version and how fresh the histories are; never the model's path (nobody's business
        outside the server)."""
        return {
            "status": "ok",
            "model_version": self.version,
            "data_end": datetime.fromtimestamp(self.recommender.state.end, timezone.utc).isoformat(),
            "rollout_error": rollout_error,
        }

    def recommend(self, request: RecommendRequest) -> Dict:
        """One request ranked on its own (the route's path for a request the batch leaves to it:
        a past day whose stats are not kept); raises its refusal (:meth:`recommend_many`)."""
        answer = self.recommend_many([request])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def needs_pass(self, request: RecommendRequest) -> bool:
        """Whether ranking ``request`` first computes a past day's products' stats: the app ranks
        it on its own, so that the requests batched with it do not wait for the pass."""
        return self.recommender.needs_pass(self.moment(request.at))

    def recommend_many(
        self, requests: List[RecommendRequest], start_passes: bool = True
    ) -> List[Union[Dict, Exception]]:
        """One answer per request, all from this model (what a ``@serve.batch`` call runs):
        requests with the same ``k``, ``exclude_purchased``, ``explain`` and day's stats (one
        past day's, or the present's) are ranked in one model call. A request whose ``at``
        cannot be ranked gets its :class:`BeforeTheData` as its answer (to raise for it alone),
        one whose day's products' stats do not come gets that error (:class:`PassBusy`...), and
        each request of a group whose ranking fails gets its own :class:`RankingFailed`, caused
        by the group's exception: the others of the batch are answered.
        ``start_passes`` False (the batch): a request whose day is not kept gets
        :class:`PassNeeded`, for the route to rank it on its own."""
        answers: List[Union[None, Dict, Exception]] = [None] * len(requests)
        moments: Dict[int, int] = {}
        # Each request's recommender for its moment (a past day's, or this one), taken once: asked
        # again at ranking time, a day the check found kept may have been forgotten meanwhile
        # (other requests' days), and its pass would run inside the batch or refuse the group.
        recommenders: Dict[int, Recommender] = {}
        groups: Dict[tuple, List[int]] = {}
        for i, r in enumerate(requests):
            moments[i] = self.moment(r.at)
            try:  # here, not in rank() below, so that it refuses this request alone
                # The moment checked, then its day's stats; not kept (PassNeeded: kept when routed,
                # forgotten or reloaded since) found and refused under the lock that takes them.
                recommenders[i] = self.recommender.as_of(moments[i], start_pass=start_passes)
            except Exception as refused:  # noqa: BLE001 (BeforeTheData, PassBusy, PassNeeded: the route's)
                answers[i] = refused
                continue
            groups.setdefault((r.k, r.exclude_purchased, r.explain, id(recommenders[i])), []).append(i)
        for (k, exclude, explain, _), rows in groups.items():
            at = [moments[i] for i in rows]
            try:
                ranked = recommenders[rows[0]].rank([requests[i].user_id for i in rows], k, at, exclude, explain)
            except Exception as failed:  # noqa: BLE001 (raised for this group's requests by the route)
                for i in rows:
                    answers[i] = _own(failed)
                continue
            for i, items in zip(rows, ranked):
                answers[i] = {**recommendation(items), "at": _iso(items.at), "model_version": self.version}
        return answers

    def recommend_batch(self, request: BatchRecommendRequest) -> Dict:
        at = self.moment(request.at)
        ranked = self.recommender.rank(request.user_ids, request.k, at, request.exclude_purchased, request.explain)
        return {"results": [recommendation(r) for r in ranked], "at": _iso(at), "model_version": self.version}

    def score(self, request: ScoreRequest) -> Dict:
        """Raises UnknownProducts (a 422 naming them) before any scoring; an ``at`` before the
        data's first day ended raises BeforeTheData from the ranking core (a 422 too)."""
        at = self.moment(request.at)
        try:
            # The ranking core looks the products up and refuses unknown ones before scoring.
            scores, cold = self.recommender.score_items(request.user_id, request.product_ids, at)
        except UnknownProductIds as unknown:
            raise UnknownProducts(unknown.product_ids) from None
        user = self.recommender.vocabs.users.index_of([request.user_id])
        return {
            "user_id": self.recommender.answered_ids([request.user_id], user)[0],
            "cold_start": cold,
            "scores": scores,
            "at": _iso(at),
            "model_version": self.version,
        }


class RankingFailed(RuntimeError):
    """The ranking of a request's group failed (a fault: a 500); ``__cause__`` is the group's
    exception."""


def _own(failed: Exception) -> RankingFailed:
    """A request's own exception for its group's failure: the group's one object, raised by each
    of its requests' routes, gathered every route's frames into its ``__traceback__``."""
    own = RankingFailed(f"ranking the request's batch failed: {type(failed).__name__}: {failed}")
    own.__cause__ = failed
    return own


def _rehearse(recommender: Recommender) -> None:
    """Ranks one household with purchases and one unknown household at the state's end: the
    whole path (state -> embedding rows -> model) runs once before the first real request. Looks
    up a product by its id too: finding a few ids sorts the vocabulary first (about 0.3 s at 1M
    products), which the households' ids have just done for theirs."""
    known = recommender.state.states.users()[:1]
    households = list(recommender.vocabs.users.raw_of(known)) + [None]
    rankings = recommender.rank(households, k=5, at=recommender.default_at)
    if len(rankings) != len(households) or not all(len(r.product_ids) for r in rankings):
        raise RuntimeError(f"the new model ranked nothing for {households}")
    recommender.vocabs.products.index_of(rankings[0].product_ids[:1])


def recommendation(ranked: RankedItems) -> Dict:
    """A household's ranking as the HTTP contract's ``Recommendation`` (``reason`` and ``because``
    only when explained; no ``reason`` for a cold start)."""
    items = [{"product_id": p, "score": s} for p, s in zip(ranked.product_ids, ranked.scores)]
    if ranked.reasons is not None:
        for item, reason in zip(items, ranked.reasons):
            item["reason"] = reason.as_dict()
    if ranked.because is not None:
        for item, because in zip(items, ranked.because):
            item["because"] = [{"product_id": p, "weight": w} for p, w in because]
    return {"user_id": ranked.user_id, "cold_start": ranked.cold_start, "items": items}


def _iso(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
