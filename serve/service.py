"""What a Serve replica does with a request, without Ray: settings, model swap, answers.

Kept apart from the deployment class so that the request -> answer logic is plain Python over
:class:`ncf.rank.recommender.Recommender` (the scoring core the nightly job uses too, so online and
batch rankings agree), and so that a rollout is one attribute swap: a replica builds a new
:class:`ModelService` beside the old one and replaces it; requests already running finish on
the old model.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Mapping, Optional

from ncf.data.vocab import UNKNOWN_INDEX
from ncf.rank.recommender import Recommender
from serve.api import BatchRecommendRequest, RecommendRequest, ScoreRequest, UnknownProducts

DEFAULT_AT_CHOICES = ("now", "data_end")


@dataclass(frozen=True)
class ServeSettings:
    """A deployment's ``user_config``: which model, how many candidates, which default moment.

    Args:
        model_dir: the model directory to serve (jobs.train output or SWEEP/best).
        candidates: how many first-stage candidates the full model re-ranks; None keeps the
            model directory's own setting. More candidates: closer to brute force, slower.
        default_at: the moment used when a request has no ``at``: ``"now"`` (live traffic)
            or ``"data_end"`` (the end of the model's data: demos and replays of history).
    """

    model_dir: str
    candidates: Optional[int] = None
    default_at: str = "now"

    @staticmethod
    def from_user_config(config: Mapping) -> "ServeSettings":
        """Validates a user_config dict; a bad one fails the rollout instead of every request."""
        known = {f.name for f in dataclasses.fields(ServeSettings)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown user_config keys {unknown}; expected some of {sorted(known)}")
        if not isinstance(config.get("model_dir"), str) or not config["model_dir"]:
            raise ValueError("user_config needs model_dir, a model directory path")
        candidates = config.get("candidates")
        if candidates is not None and (
            isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1
        ):
            raise ValueError(f"candidates must be a positive integer, not {candidates!r}")
        default_at = config.get("default_at", "now")
        if default_at not in DEFAULT_AT_CHOICES:
            raise ValueError(f"default_at must be one of {DEFAULT_AT_CHOICES}, not {default_at!r}")
        return ServeSettings(os.path.abspath(config["model_dir"]), candidates, default_at)

    def user_config(self) -> Dict:
        return dataclasses.asdict(self)


class ModelService:
    """Answers the HTTP contract's requests with one loaded model (immutable once built)."""

    def __init__(self, recommender: Recommender, settings: ServeSettings) -> None:
        self.recommender = recommender
        self.settings = settings

    @staticmethod
    def load(settings: ServeSettings, previous: Optional["ModelService"] = None) -> "ModelService":
        """Loads ``settings.model_dir``; reuses ``previous``'s model when only options changed."""
        if previous is not None and previous.settings.model_dir == settings.model_dir:
            # A shallow copy shares the loaded model and data; changing its ranking settings
            # leaves the instance that requests in flight are using untouched.
            recommender = copy.copy(previous.recommender)
        else:
            recommender = Recommender.load(settings.model_dir)
            recommender.warm_first_stage()
        if settings.candidates is not None:
            recommender.settings = dataclasses.replace(recommender.settings, candidates=settings.candidates)
        return ModelService(recommender, settings)

    @property
    def version(self) -> str:
        return self.recommender.version

    def moment(self, at: Optional[datetime]) -> int:
        """Epoch seconds to rank for: the request's ``at``, else the configured default."""
        if at is not None:
            return int(at.timestamp())
        return int(time.time()) if self.settings.default_at == "now" else self.recommender.data_end

    # -- routes ------------------------------------------------------------------------------

    def health(self) -> Dict:
        return {"status": "ok", "model_version": self.version, "model_dir": self.settings.model_dir}

    def recommend(self, request: RecommendRequest) -> Dict:
        at = self.moment(request.at)
        ranked = self.recommender.recommend_items(
            request.user_id, request.k, at, request.exclude_purchased, request.explain
        )
        return {**ranked, "at": _iso(at), "model_version": self.version}

    def recommend_many(self, requests: List[RecommendRequest]) -> List[Dict]:
        """One answer per request, all from this model (what a ``@serve.batch`` call runs):
        requests with the same ``k`` and ``exclude_purchased`` are ranked in one model call."""
        answers: List[Optional[Dict]] = [None] * len(requests)
        groups: Dict[tuple, List[int]] = {}
        for i, r in enumerate(requests):
            if r.explain:
                answers[i] = self.recommend(r)
            else:
                groups.setdefault((r.k, r.exclude_purchased), []).append(i)
        for (k, exclude), rows in groups.items():
            at = [self.moment(requests[i].at) for i in rows]
            ranked = self.recommender.recommend_items_many([requests[i].user_id for i in rows], k, at, exclude)
            for i, a, answer in zip(rows, at, ranked):
                answers[i] = {**answer, "at": _iso(a), "model_version": self.version}
        return answers

    def recommend_batch(self, request: BatchRecommendRequest) -> Dict:
        at = self.moment(request.at)
        if request.explain:
            results = [
                self.recommender.recommend_items(u, request.k, at, request.exclude_purchased, explain=True)
                for u in request.user_ids
            ]
        else:
            results = self.recommender.recommend_items_many(
                request.user_ids, request.k, [at] * len(request.user_ids), request.exclude_purchased
            )
        return {"results": results, "at": _iso(at), "model_version": self.version}

    def score(self, request: ScoreRequest) -> Dict:
        """Raises UnknownProducts (a 422 naming them) before any scoring."""
        index = self.recommender.vocabs.products.index_of(request.product_ids)
        unknown = [p for p, i in zip(request.product_ids, index.tolist()) if i == UNKNOWN_INDEX]
        if unknown:
            raise UnknownProducts(unknown)
        at = self.moment(request.at)
        scores = self.recommender.score(request.user_id, request.product_ids, at)
        return {"user_id": request.user_id, "scores": scores, "at": _iso(at), "model_version": self.version}


def _iso(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
