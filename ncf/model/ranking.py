"""A model directory's first-stage sizes (its ``config.json``'s ``ranking``): read by the ranking
(:mod:`ncf.rank.candidates`), checked with the directory (:func:`ncf.model.integrity.verify_model_dir`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ncf.errors import InputError
from ncf.model import ann


@dataclass
class RankingSettings:
    """First-stage sizes (a model directory's ``ranking`` overrides them)."""

    candidates: int = 300  # re-ranked by the full model
    own_candidates: int = 250  # the household's own products (as many as the training lists hold)
    neighbour_candidates: int = 100  # nearest to its products by co-purchase (as the training lists)
    mf_candidates: int = ann.MF_CANDIDATES  # from the MF path's dot products
    category_candidates: int = 100  # the most bought products of the household's own categories
    popular_candidates: int = 50

    @staticmethod
    def of_model(ranking: dict, where: str) -> "RankingSettings":
        """A model directory's ``ranking`` overrides (``where``: the directory, for the refusal):
        unknown names and sizes that are not counts are refused in one line (InputError), not
        a TypeError at load."""
        known = {f.name for f in dataclasses.fields(RankingSettings)}
        unknown = sorted(set(ranking) - known)
        counts = {k: v for k, v in ranking.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}
        bad = sorted(k for k in ranking if k in known and k not in counts)
        if unknown or bad:
            problem = f"unknown settings {unknown}" if unknown else f"sizes that are not counts {bad}"
            raise InputError(
                f"{where}: config.json's ranking holds {problem}; expected counts for some of {sorted(known)}"
            )
        return RankingSettings(**ranking)
