"""AdvancedNCF on Ray: the recommender and everything it needs (see README.md)."""

__version__ = "0.1.0"  # pyproject.toml's [project] version (a test keeps them equal)
