"""AdvancedNCF on Ray: the recommender and everything it needs (see README.md)."""

import os

# MLflow 3 sends usage events from every process that imports it (a config fetch at import, then
# one event per registry call): this platform's runs and registry stay on this machine. Set here,
# before any of the package's modules imports mlflow, in drivers, trials and Serve replicas alike.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# And its "View run ... at: URL" line after each run, written to stdout past its loggers: a
# tracking server's URL may hold its user and password.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# A tracking server that accepts connections and never answers (wedged, or a load balancer with
# no backend) held each registry call about 20 minutes with MLflow's defaults (120 s a try, read
# timeouts retried 7 times with backoff): every deploy of current, nightly run and training's
# registration. 60 s a try and 3 retries: about 4 minutes, then the store's one line (exit 75).
# Not shorter: a read timeout is retried whatever the method, so a create_run or
# create_model_version the server took but answered late would be sent again (a second run or
# version).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")

__version__ = "0.1.0"  # pyproject.toml's [project] version (a test keeps them equal)
