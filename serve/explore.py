"""Looking at one household: its latest baskets, product labels and an id search, without Ray.

The JSON routes behind the explorer page (``/history``, ``/products``, ``/households``), as plain
functions over a loaded :class:`serve.service.ModelService`: what they read is the state the
model ranks from (the same histories ``/recommend`` uses), so a basket shown is a purchase the
ranking saw.

Example::

    service = ModelService.load(ServeSettings.from_user_config({"model_dir": "artifacts/demo/model"}))
    history(service, HistoryRequest(user_id=1364, baskets=3))
    # {"user_id": 1364, "known": True, "purchases": 912, "baskets": [{"at": ..., "products": [...]}], ...}
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Dict, List, Sequence

import numpy as np

from ncf.data.vocab import UNKNOWN_INDEX
from serve.api import HistoryRequest, HouseholdSearchRequest, ProductsRequest, UnknownProducts
from serve.service import ModelService


def history(service: ModelService, request: HistoryRequest) -> Dict:
    """The household's ``request.baskets`` latest baskets strictly before the moment (the purchases
    the ranking at that moment reads), most recent first, each product with its labels."""
    recommender = service.recommender
    at = service.moment(request.at)
    user = int(recommender.vocabs.users.index_of([request.user_id])[0])
    timeline = recommender.state.states.timeline(user)
    before = int(timeline.count_before(np.array([at]))[0])
    times, products = timeline.timestamps[:before], timeline.products[:before]
    # Baskets are runs of one timestamp (the timeline is sorted by time): the last N runs.
    starts = np.flatnonzero(np.r_[True, times[1:] != times[:-1]]) if before else np.zeros(0, np.int64)
    starts = starts[-request.baskets :]
    ends = np.r_[starts[1:], before].astype(np.int64)
    chosen = list(zip(starts.tolist(), ends.tolist()))[::-1]
    baskets = [{"at": _iso(int(times[s])), "products": _basket_items(service, products[s:e])} for s, e in chosen]
    return {
        "user_id": recommender.answered_ids([request.user_id], np.array([user]))[0],
        "known": user != UNKNOWN_INDEX,
        "purchases": before,
        "baskets": baskets,
        "at": _iso(at),
        "model_version": service.version,
    }


def _basket_items(service: ModelService, lines: np.ndarray) -> List[Dict]:
    """A basket's distinct products (first line first), labelled, with their line counts."""
    distinct, first, counts = np.unique(lines, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    labels = product_labels(service, distinct[order])
    return [{**label, "lines": int(n)} for label, n in zip(labels, counts[order])]


def products(service: ModelService, request: ProductsRequest) -> Dict:
    """Labels of raw product ids, in request order; unknown ids raise UnknownProducts (a 422)."""
    index = service.recommender.vocabs.products.index_of(request.product_ids)
    unknown = [p for p, i in zip(request.product_ids, index.tolist()) if i == UNKNOWN_INDEX]
    if unknown:
        raise UnknownProducts(unknown)
    return {"products": product_labels(service, index), "model_version": service.version}


def search_households(service: ModelService, request: HouseholdSearchRequest) -> Dict:
    """Household ids that start with ``request.prefix`` (string order, at most ``limit``)."""
    # Ids are kept trimmed (ingest's rule, as a question's ids are looked up): leading spaces match nothing.
    found = service.recommender.vocabs.users.with_prefix(request.prefix.lstrip(), request.limit)
    return {"user_ids": found, "model_version": service.version}


def product_labels(service: ModelService, indices: Sequence[int]) -> List[Dict]:
    """``{"product_id", "department", "category"}`` for product indices of the state."""
    state = service.recommender.state
    vocabs, catalog = state.vocabs, state.catalog  # the state's arrays, not a copy of the columns a call
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        return []
    departments = vocabs.departments.raw_of(catalog.department[indices])
    categories = vocabs.categories.raw_of(catalog.category[indices])
    return [
        {"product_id": p, "department": _label(d), "category": _label(c)}
        for p, d, c in zip(vocabs.products.raw_of(indices), departments, categories)
    ]


def _label(value) -> str | None:
    return None if value is None else str(value)


def _iso(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
