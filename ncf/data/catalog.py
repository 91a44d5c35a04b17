"""What was known at a moment: the catalog, the households and product popularity before it.

A held-out period starting at ``start`` is ranked as if it were ``start``: only products that
had been bought before it can be ranked or count as relevant, only households with purchases
before it are ranked, and popularity counts purchases before it. The vocabularies may cover
the whole data (through its end), so none of this can be read off them directly.

Example::

    catalog = catalog_before(vocabs, start)  # bool per product index, False for index 0
    counts = popularity_before(states, start, len(vocabs.products))  # purchases before start
    users = households_before(states, start)  # user indices with a purchase before start
"""

from __future__ import annotations

import numpy as np

from ncf.data.user_state import UserStates
from ncf.data.vocab import FIRST_TS, UNKNOWN_INDEX, Vocabularies


def catalog_before(vocabs: Vocabularies, start: int) -> np.ndarray:
    """Products that can be ranked at ``start``: first bought strictly before it.

    Without a ``first_ts`` column (vocabularies built from the purchases before the test
    period only), every known product is in the catalog. Index 0 (unknown) never is.
    """
    products = vocabs.products
    if FIRST_TS in products.extra:
        mask = products.column(FIRST_TS) < int(start)
    else:
        mask = np.ones(len(products), dtype=bool)
    mask[UNKNOWN_INDEX] = False
    return mask


def popularity_before(states: UserStates, start: int, num_products: int) -> np.ndarray:
    """Purchase count of every product index over all households, strictly before ``start``."""
    counts = np.zeros(num_products)
    for _, products, _ in states.chunks(before=int(start)):
        found = np.bincount(products, minlength=num_products)
        if len(found) > num_products:  # a product index past the catalog: another DATA's state
            raise ValueError(f"user state: product index {len(found) - 1} past the {num_products} products")
        counts += found
    counts[UNKNOWN_INDEX] = 0.0
    return counts


def households_before(states: UserStates, start: int) -> np.ndarray:
    """User indices (sorted) with at least one purchase strictly before ``start``."""
    users = states.users()
    # A household's purchases are in time order: its first one decides.
    known = users[np.asarray(states.timestamps)[states.offsets[users]] < int(start)]
    return known[known != UNKNOWN_INDEX]
