"""The scoring API of ``shared/DESIGN.md``: ``ncf.scoring.Recommender`` (load, recommend, score).

The ranking code lives in :mod:`ncf.rank`; this module is its stable public name.
"""

from ncf.rank.candidates import RankingSettings
from ncf.rank.recommender import Recommender

__all__ = ["RankingSettings", "Recommender"]
