"""Ranking metrics for one user; averaged over users by :mod:`ncf.evaluate.protocol`."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np


def ranking_metrics(
    ranked: np.ndarray, relevant: np.ndarray, k: int = 10, bought_before: Optional[np.ndarray] = None
) -> Dict[str, float]:
    """Metrics of one ranked list against the set of relevant items.

    * ``recall``: hits in the top k / min(k, |relevant|), so a perfect top-k scores 1 even for
      users with more than k relevant items (this project's headline figure);
    * ``recall_lit``: hits / |relevant|, the recall of the next-basket literature (TIFU-KNN,
      the TOIS 2023 reality check), for comparison with published figures;
    * ``ndcg``: binary gains, ideal = min(k, |relevant|) hits at the top; ``hr``: any hit;
      ``mrr_at_k``: reciprocal rank of the first relevant item in the top k (0 if none there);
      ``mrr``: the same over the whole ``ranked`` list (the evaluation ranks 100 deep).

    With ``bought_before`` (the products the user bought before the moment ranked), the
    repeat/explore split: relevant items are repeats (bought before) or explores (new to the
    user). ``repeat_hits`` / ``explore_hits`` count the hits of each kind in the top k,
    ``repeat_recall`` / ``explore_recall`` divide them by the number of relevant items of
    that kind (NaN when the user has none: averages skip them), and ``repeat_share`` is the
    share of the top k that the user bought before, relevant or not.

    Example::

        ranking_metrics(np.array([3, 1, 2]), np.array([1, 2]), k=2, bought_before=np.array([3, 1]))
        # recall 0.5, recall_lit 0.5, ndcg 0.38..., hr 1, mrr_at_k 0.5, mrr 0.5,
        # repeat_hits 1 (product 1), explore_hits 0, repeat_recall 1.0, explore_recall 0.0,
        # repeat_share 1.0 (3 and 1 were both bought before)
    """
    if len(relevant) == 0:
        raise ValueError("ranking_metrics needs at least one relevant item")
    if len(np.unique(ranked[:k])) < len(ranked[:k]):  # a product counted twice would lift recall past 1
        raise ValueError(f"ranking_metrics: the top {k} names a product twice: {ranked[:k].tolist()}")
    hits = np.isin(ranked, relevant)
    top = hits[:k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(k, len(relevant))].sum()
    first = np.flatnonzero(hits)
    reciprocal_rank = float(1.0 / (first[0] + 1)) if len(first) else 0.0
    metrics = {
        "recall": float(top.sum() / min(k, len(relevant))),
        "recall_lit": float(top.sum() / len(relevant)),
        "ndcg": float((top * discounts[: len(top)]).sum() / ideal),
        "hr": float(top.any()),
        "mrr_at_k": reciprocal_rank if len(first) and first[0] < k else 0.0,
        "mrr": reciprocal_rank,
    }
    if bought_before is not None:
        metrics.update(repeat_explore(ranked[:k], relevant, bought_before))
    return metrics


def repeat_explore(top: np.ndarray, relevant: np.ndarray, bought_before: np.ndarray) -> Dict[str, float]:
    """The repeat/explore split of one top-k list (see :func:`ranking_metrics`)."""
    repeat_relevant = relevant[np.isin(relevant, bought_before)]
    explore_relevant = relevant[~np.isin(relevant, bought_before)]
    repeat_hits = int(np.isin(top, repeat_relevant).sum())
    explore_hits = int(np.isin(top, explore_relevant).sum())
    return {
        "repeat_hits": float(repeat_hits),
        "explore_hits": float(explore_hits),
        "repeat_recall": repeat_hits / len(repeat_relevant) if len(repeat_relevant) else float("nan"),
        "explore_recall": explore_hits / len(explore_relevant) if len(explore_relevant) else float("nan"),
        "repeat_share": float(np.isin(top, bought_before).mean()) if len(top) else float("nan"),
    }


def paired_difference(values: np.ndarray, reference: np.ndarray) -> Tuple[float, float]:
    """The mean of ``values - reference`` (one metric of two scorers on the same households, in
    the same order) and its standard error, the differences' sd / sqrt(households): whether a
    lead is measurable on this many households, which the seeds' spread does not say."""
    difference = np.asarray(values, np.float64) - np.asarray(reference, np.float64)
    if len(difference) < 2:
        return float(difference.mean()) if len(difference) else float("nan"), float("nan")
    return float(difference.mean()), float(difference.std(ddof=1) / np.sqrt(len(difference)))
