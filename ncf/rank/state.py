"""What ranking reads besides the model: the state (histories, products) and how its indices map
to the model's embedding rows.

The state comes from a DATA directory or from a model directory's copy of its training DATA
(``MODEL/state``). Its vocabularies may be newer than the model's tables: households and
products the tables never saw (or first seen after the model's labels ended) use the unknown
row 0, while their own purchases still drive their features and candidates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Dict, List, Optional, Tuple

import numpy as np

from ncf.data import layout
from ncf.data.examples import check_features_version
from ncf.data.features import Catalog
from ncf.data.product_stats import ProductStats
from ncf.data.user_state import UserStates
from ncf.data.vocab import FIRST_TS, UNKNOWN_INDEX, Vocabularies, Vocabulary
from ncf.errors import InputError
from ncf.model.directory import ModelDir, read_config
from ncf.model.integrity import ModelIntegrityError, files_digest, verify_data_state, verify_model_dir
from ncf.moments import SECONDS_PER_DAY, run_date_of


@dataclass
class RankingState:
    """Vocabularies, every household's purchases and the products' stats at ``end``."""

    vocabs: Vocabularies
    states: UserStates
    stats: ProductStats
    end: int  # the last moment the state knows (its data's end)

    @staticmethod
    def load(directory: str) -> "RankingState":
        """From a DATA directory or a model directory's ``state/``."""
        stats = ProductStats.load(layout.product_stats_dir(directory))
        return RankingState(
            Vocabularies.load(layout.vocab_dir(directory)),
            UserStates.load(layout.user_state_dir(directory)),
            stats,
            int(stats.cutoff) - 1,
        )

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog.of(self.vocabs.products)

    @cached_property
    def first_purchase(self) -> Optional[int]:
        """The moment of the earliest purchase the state holds (None: no purchases): the earliest
        of the households' first purchases (a vocabulary column, one value a household), else
        a pass over every purchase's moment."""
        users = self.vocabs.users
        if FIRST_TS in users.extra and len(users) > 1:
            return int(np.min(users.extra[FIRST_TS].to_numpy(zero_copy_only=False)))
        moments = self.states.timestamps
        return int(moments.min()) if len(moments) else None

    @property
    def num_products(self) -> int:
        return len(self.vocabs.products)

    def as_of(self, cutoff: int, stats: Optional[ProductStats] = None) -> "RankingState":
        """The same households and products with the products' stats at ``cutoff`` (evaluation
        ranks a period from what was known at its start): ``stats`` when given (computed once
        elsewhere, e.g. by the nightly job's driver for all its actors), else computed here, a
        pass over every purchase."""
        if stats is None:
            stats = ProductStats.compute(self.states, self.catalog.category, cutoff)
        elif stats.cutoff != cutoff or stats.num_products != self.num_products:
            raise ValueError(
                f"product stats at {stats.cutoff} for {stats.num_products} products, "
                f"not at {cutoff} for {self.num_products}"
            )
        return RankingState(self.vocabs, self.states, stats, cutoff - 1)


def check_catalog(model_sizes: Dict[str, int], data_sizes: Optional[Dict[str, int]], data: str) -> None:
    """Refuses (InputError) a DATA preprocessed without a product catalog (every product's
    department and category unknown) for a model whose tables were trained with one: its
    category features and category candidates would all read one unknown category. Sizes as
    :meth:`Vocabularies.sizes` (a model's ``config.json``, a DATA's ``stats.json``) give them;
    ``data_sizes`` None (a stats.json without them) checks nothing."""
    if data_sizes is None:
        return
    if model_sizes["num_departments"] > 1 and data_sizes["num_departments"] <= 1 and data_sizes["num_products"] > 1:
        raise InputError(
            f"{data}: no product has a department or category (preprocessed without --products), "
            f"but the model was trained with a catalog of {model_sizes['num_departments'] - 1} departments: "
            "preprocess it again with --products CATALOG"
        )


def check_data_products(handle: ModelDir, data: str) -> None:
    """Refuses (InputError) a DATA none of whose products has a trained row in the model
    directory, from the two product vocabularies alone (the jobs before Ray starts, the load
    before the ranker is built): ids are matched by value, so ids written otherwise than the
    model's vocabulary (``000123`` against ``123``) or another catalog's map every product to the
    unknown row, and the model would rank without its product tables, the MF first stage empty,
    without a word."""
    products = Vocabulary.load(os.path.join(layout.vocab_dir(data), "products.parquet"))
    tables = Vocabulary.load(os.path.join(layout.vocab_dir(handle.state_dir), "products.parquet"))
    trained = handle.trained_rows
    rows = _rows(tables, products, handle.rows_trained_before, trained and trained[1])
    if len(rows) > 1 and not (rows[1:] != UNKNOWN_INDEX).any():
        raise InputError(
            f"{data}: none of its {len(rows) - 1:,} products has a trained row in the model: its product "
            "ids are not those the model was trained on (written otherwise, such as 000123 for 123, or another "
            "catalog's); preprocess it from logs with the model's ids"
        )


def check_model_and_data(model_dir: str, data: Optional[str]) -> None:
    """The checks a rollout makes before a model ranks from a DATA (``jobs.deploy``, ``jobs.verify``):
    the DATA of this code's features version, the model directory whole and consistent, the DATA's
    state too, a catalog where the model was trained with one, and product ids the model knows.
    Raises InputError, in one line."""
    if data:
        # First: one file read, and a DATA of an older version lacks files the state check reads.
        check_features_version(data)
    # The directory verified (a blue/green link's target, resolved once) is the one read below.
    model_dir = verify_model_dir(model_dir)
    if data:
        verify_data_state(data)
        check_catalog(read_config(model_dir)["model"], layout.DataStats(data).vocab_sizes, data)
        check_data_products(ModelDir(model_dir), data)  # reads the verified vocabularies


def histories_against_model(model_config: Dict, boundaries: Dict[str, int]) -> List[str]:
    """What a user should hear about a DATA a model ranks from, against the DATA the model was
    trained on (``config.json``'s ``data.boundaries``): one that ends earlier holds histories
    older than the model's own; one that starts later was built from part of the log (a refresh
    given only recent logs), so the households' earlier purchases are missing from their
    histories. ``boundaries``: the DATA's (``stats.json``). Empty when neither applies."""
    trained_on = (model_config.get("data") or {}).get("boundaries") or {}
    notes = []
    if "end" in trained_on and boundaries["end"] < trained_on["end"]:
        notes.append(
            f"DATA's purchases end {run_date_of(boundaries['end'])}, before those the model was trained on "
            f"({run_date_of(trained_on['end'])}): its histories are older than the model's own state"
        )
    if "start" in trained_on and boundaries["start"] > trained_on["start"] + SECONDS_PER_DAY:
        notes.append(
            f"DATA's purchases start {run_date_of(boundaries['start'])}, after those the model was trained on "
            f"({run_date_of(trained_on['start'])}): households' earlier purchases are not in their histories "
            "(expected where the logs keep a rolling window; otherwise a --state-only refresh given only the "
            "recent logs: it reads the whole log)"
        )
    return notes


@dataclass(frozen=True)
class EmbeddingRows:
    """State index -> model embedding row, for households, products, departments, categories."""

    user: np.ndarray
    product: np.ndarray
    department: np.ndarray
    category: np.ndarray

    @staticmethod
    def between(
        tables: Vocabularies,
        state: Vocabularies,
        rows_trained_before: int,
        trained: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    ) -> "EmbeddingRows":
        """Rows of ``state``'s ids in the model's ``tables``; 0 for ids the tables lack, first
        saw at or after ``rows_trained_before``, or (``trained``: the (users, products) masks of
        :attr:`ncf.model.directory.ModelDir.trained_rows`) that no training list held: their
        rows were never trained."""
        users, products = trained if trained is not None else (None, None)
        return EmbeddingRows(
            _rows(tables.users, state.users, rows_trained_before, users),
            _rows(tables.products, state.products, rows_trained_before, products),
            _rows(tables.departments, state.departments, None),
            _rows(tables.categories, state.categories, None),
        )

    @staticmethod
    def of_model(handle: ModelDir, state: Vocabularies) -> "EmbeddingRows":
        """Rows of ``state``'s ids in a model directory's tables (what :meth:`between` needs of it).
        When ``state`` was loaded from files equal to the model's own vocabularies (the model's
        state, or the DATA it was trained on), they are the tables: not loaded again (at 10M
        households a second copy is 0.65 GB and 2 s)."""
        tables = state if _same_vocabularies(state, handle) else handle.table_vocabularies()
        return EmbeddingRows.between(tables, state, handle.rows_trained_before, handle.trained_rows)


def _same_vocabularies(state: Vocabularies, handle: ModelDir) -> bool:
    """Whether ``state`` was loaded from the model's own vocabulary files, or from files whose digest
    is the one the model recorded of them (``config.json``'s ``data.vocab_sha256``)."""
    if state.source is None:
        return False
    if os.path.realpath(state.source) == os.path.realpath(layout.vocab_dir(handle.state_dir)):
        return True
    recorded = (handle.config.get("data") or {}).get("vocab_sha256")
    try:
        return recorded is not None and files_digest(state.source) == recorded
    except (OSError, ModelIntegrityError):  # moved, replaced or holding a folder: the tables are loaded instead
        return False


def _rows(
    tables: Vocabulary, state: Vocabulary, trained_before: Optional[int], listed: Optional[np.ndarray] = None
) -> np.ndarray:
    same = tables.ids.equals(state.ids)
    rows = (
        np.arange(len(state), dtype=np.int64) if same else np.concatenate([[UNKNOWN_INDEX], tables.index_of(state.ids)])
    )
    if trained_before is not None and FIRST_TS in tables.extra:
        first_seen = tables.column(FIRST_TS)
        rows = np.where(first_seen[rows] < trained_before, rows, UNKNOWN_INDEX)
    if listed is not None:
        rows = np.where(listed[rows], rows, UNKNOWN_INDEX)
    return rows
