"""Ranking metrics for one user; averaged over users by :mod:`ncf.evaluate.evaluation`."""

from __future__ import annotations

from typing import Dict

import numpy as np


def ranking_metrics(ranked: np.ndarray, relevant: np.ndarray, k: int = 10) -> Dict[str, float]:
    """Metrics of one ranked list against the set of relevant items.

    Recall@k divides the hits by min(k, |relevant|), so a perfect top-k scores 1 even for
    users with more than k relevant items. NDCG@k uses binary gains. MRR is the reciprocal
    rank of the first relevant item within the whole ``ranked`` list (0 if absent).

    Example::

        ranking_metrics(np.array([3, 1, 2]), np.array([1]), k=2)
        # {'recall': 1.0, 'ndcg': 0.63..., 'hr': 1.0, 'mrr': 0.5}
    """
    if len(relevant) == 0:
        raise ValueError("ranking_metrics needs at least one relevant item")
    hits = np.isin(ranked, relevant)
    top = hits[:k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(k, len(relevant))].sum()
    first = np.flatnonzero(hits)
    return {
        "recall": float(top.sum() / min(k, len(relevant))),
        "ndcg": float((top * discounts[: len(top)]).sum() / ideal),
        "hr": float(top.any()),
        "mrr": float(1.0 / (first[0] + 1)) if len(first) else 0.0,
    }
