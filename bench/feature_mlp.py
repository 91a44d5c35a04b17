"""A plain MLP on the boosted ranker's rows and features: is the model's gap to LightGBM the
neural network's, or the model's?

python -m bench.feature_mlp --data DATA [--seeds 3] [--epochs 3] [--rows unsampled|all]
    [--ids none|user|product|both] [--table-optimizer adam|rowwise_adagrad]
    [--min-product-rows N] [--hidden 128,64] [--encoding standard|ple:BINS]

Trains, per seed, an MLP of the same shape as AdvancedNCF's (Linear, ReLU, BatchNorm1d, Dropout
0.1; hidden 128-64) on the candidate features of DATA's validated training lists (all
:data:`ncf.data.features.FEATURES`, standardised), with or without 32-wide household and product
id embeddings. ``--rows unsampled``: only the own, neighbour and popular candidates, plain BCE
(the boosted ranker's rows); ``--rows all``: every candidate, with the logQ correction (the model's rows).
The id tables train with Adam like the rest, or (``--table-optimizer rowwise_adagrad``) as the
model's do: TorchRec's row-wise Adagrad at ``TABLE_LEARNING_RATE_SCALE`` times the dense rate.
``--encoding ple:16`` feeds each feature through a piecewise-linear encoding over 16 quantile
bins of the training rows (:class:`PiecewiseLinear`) instead of standardising it. After each
epoch it ranks the validation and the test weeks exactly as the boosted ranker does
(:class:`ncf.evaluate.baselines.boosted.OwnNeighboursAndPopular`), through the evaluation's own
:func:`ncf.evaluate.protocol.full_ranking`, and prints one JSON line per epoch. The test figures
are read, never used to choose anything: each seed's reported epoch (``"chosen": true``) is the
one with the best validation NDCG@10 (unrounded; the earliest on a tie), and a last line
(``"summary": true``) gives the chosen epochs' test figures, mean and sd over the seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from ncf.data import layout
from ncf.evaluate.baselines.boosted import OwnNeighboursAndPopular, first_stage, own_log_q, training_lists
from ncf.evaluate.evaluation import point_in_time_period
from ncf.evaluate.protocol import full_ranking, period_start
from ncf.rank.state import RankingState
from ncf.splits import TEST, VAL, VALIDATED
from ncf.train.sharding import TABLE_LEARNING_RATE_SCALE

ID_DIM = 32
STEP_ROWS = 2048
SETTINGS = ("rows", "ids", "table_optimizer", "min_product_rows", "hidden", "encoding")
LEARNING_RATE = 1e-3


class PiecewiseLinear(nn.Module):
    """N x F features -> N x (F * T) piecewise-linear encodings over each feature's bins
    (Gorishniy et al., "On Embeddings for Numerical Features in Tabular Deep Learning", NeurIPS
    2022): per bin, how far the value has come through it, 0 to 1; below the first bin and above
    the last the encoding extrapolates. T is the most bins of any feature; the others' spare
    columns stay 0.

    Example::

        encode = PiecewiseLinear([np.array([0.0, 1.0, 3.0]), np.array([0.0, 10.0])])
        encode(torch.tensor([[2.0, 5.0]]))  # [[1.0, 0.5, 0.5, 0.0]]
    """

    def __init__(self, edges: List[np.ndarray]) -> None:
        super().__init__()
        width = max(len(e) for e in edges) - 1
        lo = np.zeros((len(edges), width), np.float32)
        span = np.full((len(edges), width), np.inf, np.float32)
        low = np.zeros((len(edges), width), np.float32)
        high = np.ones((len(edges), width), np.float32)
        for j, e in enumerate(edges):
            bins = len(e) - 1
            lo[j, :bins], span[j, :bins] = e[:-1], np.maximum(np.diff(e), 1e-6)
            low[j, 0], high[j, bins - 1] = -np.inf, np.inf
        for name, value in (("lo", lo), ("span", span), ("low", low), ("high", high)):
            self.register_buffer(name, torch.from_numpy(value), persistent=False)
        self.out_dim = len(edges) * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        through = (x.unsqueeze(2) - self.lo) / self.span  # N x F x T
        return torch.clamp(through, self.low, self.high).nan_to_num(0.0).flatten(1)


def quantile_edges(features: np.ndarray, bins: int) -> List[np.ndarray]:
    """Per feature, the distinct quantiles at ``bins`` + 1 evenly spaced levels."""
    qs = np.quantile(features[:: max(1, len(features) // 200_000)], np.linspace(0, 1, bins + 1), axis=0)
    out = []
    for j in range(features.shape[1]):
        e = np.unique(qs[:, j])
        out.append(e if len(e) > 1 else np.array([e[0], e[0] + 1.0]))
    return out


class FeatureMLP(nn.Module):
    """N x F standardised features (and N household, N product ids) -> N logits.

    Example::

        net = FeatureMLP(30, [128, 64], "both", num_users=100, product_rows=np.arange(500))
        net(torch.randn(8, 30), torch.randint(100, (8,)), torch.randint(500, (8,)))  # 8
    """

    def __init__(
        self,
        num_features: int,
        hidden: List[int],
        ids: str,
        num_users: int,
        product_rows: np.ndarray,
        dropout: float = 0.1,
        encoder: nn.Module = None,
    ) -> None:
        """``product_rows``: the table row of each product index (0, the unknown row, for those
        left out)."""
        super().__init__()
        self.ids = ids
        num_products = len(product_rows)
        self.register_buffer("product_rows", torch.as_tensor(product_rows, dtype=torch.int64), persistent=False)
        self.users = nn.Embedding(num_users, ID_DIM) if ids in ("user", "both") else None
        self.products = nn.Embedding(num_products, ID_DIM) if ids in ("product", "both") else None
        for table in (self.users, self.products):
            if table is not None:
                nn.init.normal_(table.weight, std=0.01)
        self.encoder = encoder
        tables = (self.users is not None) + (self.products is not None)
        width = (encoder.out_dim if encoder is not None else num_features) + ID_DIM * tables
        layers: List[nn.Module] = []
        for out in hidden:
            layers += [nn.Linear(width, out), nn.ReLU(), nn.BatchNorm1d(out), nn.Dropout(dropout)]
            width = out
        self.layers = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, features: torch.Tensor, user: torch.Tensor, product: torch.Tensor) -> torch.Tensor:
        parts = [features if self.encoder is None else self.encoder(features)]
        if self.users is not None:
            parts.append(self.users(user))
        if self.products is not None:
            parts.append(self.products(self.product_rows[product]))
        return self.layers(torch.cat(parts, 1)).squeeze(1)


class FeatureMLPRanker(OwnNeighboursAndPopular):
    """The boosted ranker's candidates, scored by a trained :class:`FeatureMLP`."""

    name = "feature_mlp"

    def __init__(self, context, net: FeatureMLP, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__(context)
        self.net, self.mean, self.std, self.params = net, mean, std, {}

    def score(self, user: int, candidates: np.ndarray, features: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(((features - self.mean) / self.std).astype(np.float32))
        with torch.no_grad():
            return self.net(x, torch.full((len(candidates),), user), torch.from_numpy(candidates)).numpy()


def optimizers(net: FeatureMLP, table_optimizer: str) -> List[torch.optim.Optimizer]:
    """Adam for everything, or Adam for the layers and row-wise Adagrad for the id tables."""
    tables = [p for n, p in net.named_parameters() if n.startswith(("users.", "products."))]
    if table_optimizer == "adam" or not tables:
        return [torch.optim.Adam(net.parameters(), LEARNING_RATE)]
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    dense = [p for n, p in net.named_parameters() if not n.startswith(("users.", "products."))]
    return [
        torch.optim.Adam(dense, LEARNING_RATE),
        RowWiseAdagrad(tables, lr=LEARNING_RATE * TABLE_LEARNING_RATE_SCALE),
    ]


def product_rows(products: np.ndarray, num_products: int, min_rows: int) -> np.ndarray:
    """The table row of each product index: its own, or 0 (the unknown row) when it is in fewer
    than ``min_rows`` of the training rows ``products``."""
    counts = np.bincount(products, minlength=num_products)
    return np.where(counts >= min_rows, np.arange(num_products), 0)


def summary(rows: List[Dict]) -> Dict:
    """Mean and sd over the seeds of the chosen epochs' test figures."""
    chosen = [r for r in rows if r["chosen"]]
    out: Dict = {"summary": True, **{k: chosen[0][k] for k in SETTINGS}, "seeds": len(chosen)}
    for key in ("test_recall@10", "test_ndcg@10"):
        values = np.array([r[key] for r in chosen])
        out[key] = round(float(values.mean()), 4)
        out[f"{key}_sd"] = round(float(values.std(ddof=1)), 4) if len(values) > 1 else None
        out[f"{key}_per_seed"] = values.tolist()
    return out


def train_epoch(
    net: FeatureMLP, steppers: List[torch.optim.Optimizer], rows: Dict[str, torch.Tensor], generator: torch.Generator
) -> float:
    """One shuffled pass in steps of STEP_ROWS rows; returns the mean loss."""
    net.train()
    order = torch.randperm(len(rows["label"]), generator=generator)
    total = 0.0
    for start in range(0, len(order), STEP_ROWS):
        b = order[start : start + STEP_ROWS]
        logits = net(rows["features"][b], rows["user"][b], rows["product"][b])
        loss = nn.functional.binary_cross_entropy_with_logits(logits - rows["log_q"][b], rows["label"][b])
        for optimizer in steppers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in steppers:
            optimizer.step()
        total += float(loss.detach()) * len(b)
    return total / len(order)


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output of jobs.preprocess")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rows", choices=("unsampled", "all"), default="unsampled")
    p.add_argument("--ids", choices=("none", "user", "product", "both"), default="none")
    p.add_argument("--table-optimizer", choices=("adam", "rowwise_adagrad"), default="adam")
    p.add_argument(
        "--min-product-rows", type=int, default=0, help="products in fewer training rows share the unknown row"
    )
    p.add_argument("--hidden", default="128,64", help="hidden widths, comma-separated")
    p.add_argument("--encoding", default="standard", help="standard, or ple:BINS (piecewise linear)")
    args = p.parse_args(argv)
    hidden = [int(h) for h in args.hidden.split(",")]
    if args.encoding != "standard" and not re.fullmatch(r"ple:[1-9][0-9]*", args.encoding):
        p.error(f"--encoding: 'standard' or 'ple:BINS', not {args.encoding!r}")
    torch.set_num_threads(2)

    stats = layout.DataStats(args.data)
    lists = training_lists(args.data, stats.cutoffs(VALIDATED))
    if args.rows == "unsampled":
        keep = first_stage(lists["log_q"], own_log_q(args.data))  # the boosted ranker's rows
        lists = {k: v[keep] for k, v in lists.items()}
    mean, std = lists["features"].mean(0), lists["features"].std(0) + 1e-6
    rows = {k: torch.from_numpy(v) for k, v in lists.items()}
    rows["features"] = torch.from_numpy((lists["features"] - mean) / std)
    print(f"[feature_mlp] {len(lists['label']):,} rows ({args.rows}), ids {args.ids}, hidden {hidden}", flush=True)

    periods = {}
    for split in (VAL, TEST):
        state = RankingState.load(args.data).as_of(period_start(split, stats.boundaries))
        periods[split] = point_in_time_period(state, split, stats.boundaries, args.data)
    sizes = stats.vocab_sizes
    rows_of = product_rows(lists["product"], sizes["num_products"], args.min_product_rows)
    settings = {"rows": args.rows, "ids": args.ids, "table_optimizer": args.table_optimizer}
    settings.update(min_product_rows=args.min_product_rows, hidden=hidden, encoding=args.encoding)
    edges = None
    if args.encoding.startswith("ple:"):
        edges = quantile_edges(rows["features"].numpy(), int(args.encoding.split(":")[1]))
    results = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        encoder = PiecewiseLinear(edges) if edges is not None else None
        net = FeatureMLP(mean.shape[0], hidden, args.ids, sizes["num_users"], rows_of, encoder=encoder)
        steppers = optimizers(net, args.table_optimizer)
        generator = torch.Generator().manual_seed(seed)
        seed_rows, val_ndcg = [], []
        for epoch in range(1, args.epochs + 1):
            started = time.time()
            loss = train_epoch(net, steppers, rows, generator)
            net.eval()
            row = {"seed": seed, "epoch": epoch, **settings, "loss": round(loss, 4)}
            row["train_seconds"] = round(time.time() - started, 1)
            for split, (context, period) in periods.items():
                metrics = full_ranking(FeatureMLPRanker(context, net, mean, std).rank, period, period.users)
                if split == VAL:
                    val_ndcg.append(metrics["ndcg@10"])
                row.update({f"{split}_{k}": round(metrics[k], 4) for k in ("recall@10", "ndcg@10")})
            seed_rows.append(row)
            print(
                f"[feature_mlp] seed {seed} epoch {epoch}: loss {loss:.4f}, val NDCG@10 {val_ndcg[-1]:.4f}", flush=True
            )
        chosen = int(np.argmax(val_ndcg))  # the first of equal maxima
        for epoch, row in enumerate(seed_rows):
            row["chosen"] = epoch == chosen
            print(json.dumps(row), flush=True)
        results.extend(seed_rows)
    print(json.dumps(summary(results)), flush=True)
    return results


if __name__ == "__main__":
    main()
