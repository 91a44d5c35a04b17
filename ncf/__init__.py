"""AdvancedNCF on Ray: the recommender and everything it needs (see README.md)."""

import os

# MLflow 3 sends usage events from every process that imports it (a config fetch at import, then
# one event per registry call): this platform's runs and registry stay on this machine. Set here,
# before any of the package's modules imports mlflow, in drivers, trials and Serve replicas alike.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# And its "View run ... at: URL" line after each run, written to stdout past its loggers: a
# tracking server's URL may hold its user and password.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

__version__ = "0.1.0"  # pyproject.toml's [project] version (a test keeps them equal)
