"""How much collaborative signal a log holds for products new to each household: two references
outside the model, ranked by the evaluation's own code with ``exclude_purchased``.

python -m bench.collaborative_reference --data DATA [--l2 10,30,100,300,1000] [--k 5,10,20,50]
    [--dims 32] [--max-epochs 8] [--seed 0]

* **EASE** (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): an
  item-item weight matrix in closed form, ``B = I - P diag(1 / diag(P))`` with
  ``P = (X'X + l2 I)^-1`` over the binary household x product matrix ``X`` of the purchases
  before the period; a household's scores are its row of ``X`` (purchases strictly before the
  moment) times ``B``. The Gram matrix is dense, so the log may hold at most ``MAX_PRODUCTS``.
* **Co-purchase neighbours** (:mod:`ncf.data.neighbours`, the model's neighbour score and
  first-stage source alone): each product's ``k`` nearest products by cosine, a household's
  score the sum of its products' rows; scales to a million products where EASE cannot.
* **FISM every purchase** (Kabbur et al., KDD 2013, with a softmax over the catalog as in
  sampled-softmax retrieval): a household vector folded in from its purchases (the sum of their
  rows of one table over the square root of their count; each purchase predicted from the
  others while training, so no household has a row to train and fresh histories need no
  refit), a softmax over every product, Adam; the household's own other products are not
  negatives (on a log without rebuys they are never bought again).

Each is fitted on the purchases before the validation weeks, ``l2``, ``k`` and the epochs chosen by
validation NDCG@10 (``exclude_purchased``), then fitted again on the purchases before the test
weeks with the chosen setting and read once on test. One JSON line per method.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Dict, List

import numpy as np
import scipy.sparse as sp
import torch

from jobs.cli import positive_int
from ncf.data import layout
from ncf.data.neighbours import ProductNeighbours
from ncf.evaluate.baselines.als import purchase_counts
from ncf.evaluate.baselines.base import PointInTime
from ncf.evaluate.evaluation import point_in_time_period
from ncf.evaluate.protocol import Period, excluding_purchased, full_ranking
from ncf.rank.state import RankingState
from ncf.splits import TEST, VAL

MAX_PRODUCTS = 20_000  # EASE's Gram matrix is P x P float64: 3.2 GB at this size
STEP_ROWS = 1024
LEARNING_RATE = 5e-3
REPORTED = ("recall@10", "ndcg@10", "hr@10", "recall_lit@10")

ScoreFn = Callable[[int, np.ndarray], np.ndarray]  # (household, its products before the moment) -> P scores


def bought_matrix(context: PointInTime) -> sp.csr_matrix:
    """Households x products, 1 where the household bought the product before the period."""
    counts = purchase_counts(context)
    counts.data[:] = 1.0
    return counts


def ease_weights(bought: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE's item-item weights (P x P, zero diagonal) for one ``l2``."""
    gram = (bought.T @ bought).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def fit_ease(bought: sp.csr_matrix, l2: float) -> ScoreFn:
    weights = ease_weights(bought, l2)
    return lambda user, before: weights[np.unique(before)].sum(axis=0)


def fit_neighbours(bought: sp.csr_matrix, k: int) -> ScoreFn:
    coo = bought.tocoo()
    neighbours = ProductNeighbours.fit(coo.row.astype(np.int64), coo.col.astype(np.int64), bought.shape[1], k)
    every = np.arange(bought.shape[1])
    return lambda user, before: neighbours.scores(before, every)


def fit_fism(bought: sp.csr_matrix, dims: int, epochs: int, seed: int, each_epoch=None) -> ScoreFn:
    """FISM on every (household, product) pair of ``bought``; ``each_epoch(epoch, score)`` after each."""
    torch.manual_seed(seed)
    num_products = bought.shape[1]
    table = torch.nn.Embedding(num_products, dims)
    torch.nn.init.normal_(table.weight, std=0.05)
    bias = torch.nn.Parameter(torch.zeros(num_products))
    optimizer = torch.optim.Adam([table.weight, bias], lr=LEARNING_RATE)
    coo = bought.tocoo()
    users, products = torch.as_tensor(coo.row, dtype=torch.long), torch.as_tensor(coo.col, dtype=torch.long)
    sizes = torch.as_tensor(np.asarray(bought.sum(axis=1)).ravel(), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)

    def score(user: int, before: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            own = torch.as_tensor(np.unique(before), dtype=torch.long)
            household = table.weight[own].sum(0) / max(len(own), 1) ** 0.5
            return (table.weight @ household + bias).numpy()

    for epoch in range(epochs):
        order = torch.randperm(len(users), generator=generator)
        for start in range(0, len(order), STEP_ROWS):
            step = order[start : start + STEP_ROWS]
            user, target = users[step], products[step]
            rows = torch.as_tensor(bought[user.numpy()].toarray())  # B x P
            rows[torch.arange(len(step)), target] = 0.0  # each purchase predicted from the others
            household = (rows @ table.weight) / (sizes[user] - 1).clamp(min=1).sqrt().unsqueeze(1)
            logits = (household @ table.weight.T + bias).masked_fill(rows > 0, -torch.inf)
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if each_epoch is not None:
            each_epoch(epoch + 1, score)
    return score


def evaluate(score: ScoreFn, period: Period, context: PointInTime) -> Dict[str, float]:
    """Full ranking of the period with ``exclude_purchased``, ranked as the tuned baselines are
    (:meth:`PointInTime.rank` wrapped in :func:`excluding_purchased`)."""
    states = context.states

    def rank(user: int, at: int, depth: int) -> np.ndarray:
        return context.rank(score(user, states.timeline(user).products_before(at)), depth)

    metrics = full_ranking(excluding_purchased(rank, states), period, period.users)
    return {k: round(float(metrics[k]), 4) for k in REPORTED}


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="output of jobs.preprocess")
    p.add_argument("--l2", default="10,30,100,300,1000", help="EASE's l2 values, chosen on validation")
    p.add_argument("--k", default="5,10,20,50", help="neighbours kept per product, chosen on validation")
    p.add_argument("--dims", type=positive_int, default=32, help="FISM's table width")
    p.add_argument("--max-epochs", type=positive_int, default=8, help="FISM's epochs at most, chosen on validation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    boundaries = layout.DataStats(args.data).boundaries
    state = RankingState.load(args.data)
    periods = {
        split: point_in_time_period(
            state.as_of(boundaries[f"{split}_start"]), split, boundaries, exclude_purchased=True
        )
        for split in (VAL, TEST)
    }
    bought = {split: bought_matrix(context) for split, (context, _) in periods.items()}
    if bought[TEST].shape[1] > MAX_PRODUCTS:
        raise SystemExit(f"{args.data}: {bought[TEST].shape[1]:,} products; EASE here takes at most {MAX_PRODUCTS:,}")
    rows = []

    def on(split: str, score: ScoreFn) -> Dict[str, float]:
        return evaluate(score, periods[split][1], periods[split][0])

    def report(row: Dict, started: float) -> None:
        rows.append(row | {"seconds": round(time.time() - started, 1)})
        print(json.dumps({"benchmark": "collaborative_reference", **rows[-1]}), flush=True)

    def tuned(method: str, setting: str, values: List[float], fit: Callable) -> None:
        """``fit(bought, value)`` for each value on validation, then the best one on test."""
        started = time.time()
        val = {value: on(VAL, fit(bought[VAL], value))["ndcg@10"] for value in values}
        best = max(val, key=lambda value: (val[value], -value))
        report({"method": method, setting: best, "val_ndcg@10": val, **on(TEST, fit(bought[TEST], best))}, started)

    tuned("ease", "l2", [float(l2) for l2 in args.l2.split(",")], fit_ease)
    tuned("neighbours", "k", [int(k) for k in args.k.split(",")], fit_neighbours)

    started, val = time.time(), {}

    def validated(epoch: int, score: ScoreFn) -> None:
        val[epoch] = on(VAL, score)["ndcg@10"]

    fit_fism(bought[VAL], args.dims, args.max_epochs, args.seed, validated)
    best_epochs = max(val, key=lambda epoch: (val[epoch], -epoch))
    test = on(TEST, fit_fism(bought[TEST], args.dims, best_epochs, args.seed))
    report(
        {"method": "fism_every_purchase", "dims": args.dims, "epochs": best_epochs, "val_ndcg@10": val, **test}, started
    )
    return rows


if __name__ == "__main__":
    main()
