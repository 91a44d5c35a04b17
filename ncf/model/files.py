"""What a model directory's files are called, and its two JSON files read with clear errors.

The layout itself is described in :mod:`ncf.model.directory`; these names live apart so that
:mod:`ncf.model.integrity`, which the directory's save calls, reads them without importing it.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from ncf.data.features import FEATURES_VERSION
from ncf.errors import InputError, one_line
from ncf.jsonio import read_small_json
from ncf.staging import present

# 3: weights trained on features version 2 (ncf.data.features.FEATURES_VERSION); a directory of
# format 2 learnt on other numbers for the same feature names, so it is refused, not served.
# 4: features version 3 (the co-purchase neighbour score; state/product_stats/neighbours.npz).
FORMAT_VERSION = 4
# The features version of every format-4 directory written before config.json named it.
FEATURES_OF_FORMAT_4 = 3
CONFIG = "config.json"
WEIGHTS = "model.pt"
METRICS = "metrics.json"
STATE = "state"
# metrics.json's validation figure of each epoch, and the best of them (a sweep ranks its trials
# by it: tune.results.BEST; the registry tags a version with it).
VAL_METRIC = "val_ndcg@10"
BEST_VAL_METRIC = "best_" + VAL_METRIC
# VAL_METRIC of an epoch whose validation scored NaN (weights that diverged): below any NDCG and a
# number, since Ray Train's checkpoint index writes NaN as null and then fails ordering it (every
# later report of a resumed run raised TypeError); VAL_DIVERGED 1.0 says so beside it.
DIVERGED_SCORE = -1.0
VAL_DIVERGED = "val_diverged"


def without_diverged_score(metrics: Dict) -> Dict:
    """An epoch's ``metrics`` without a diverged epoch's placeholder score, nor the placeholder
    best (every epoch so far diverged), for what draws or records them as figures (curves,
    MLflow, TensorBoard), where -1 would read as a score."""
    placeholders = {VAL_METRIC} if metrics.get(VAL_DIVERGED) else set()
    best = metrics.get(BEST_VAL_METRIC)
    if isinstance(best, (int, float)) and best <= DIVERGED_SCORE:
        placeholders.add(BEST_VAL_METRIC)
    return {k: v for k, v in metrics.items() if k not in placeholders} if placeholders else metrics


# Boolean masks over the tables' rows: which households and products the run's lists held.
TRAINED_USERS, TRAINED_PRODUCTS = "trained_users.npy", "trained_products.npy"


def save_trained_rows(directory: str, rows: Tuple[np.ndarray, np.ndarray]) -> None:
    """The (users, products) masks into a model directory, or a checkpoint (the same files)."""
    np.save(os.path.join(directory, TRAINED_USERS), rows[0])
    np.save(os.path.join(directory, TRAINED_PRODUCTS), rows[1])


def read_trained_rows(directory: str, named: Optional[str] = None) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The masks :func:`save_trained_rows` wrote, or None where there are none. Raises InputError
    (one line naming ``named``, default ``directory``) where only one of the two is there or one
    does not load: read as None, a lost mask had every row rank as trained."""
    try:
        return load_trained_rows(directory)
    except (OSError, ValueError) as e:
        raise InputError(f"{named or directory}: {one_line(e)}; restore the file or train again") from None


def load_trained_rows(directory: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """:func:`read_trained_rows` raising ValueError (a mask without the other, cut short, not a
    ``.npy`` file, pickled objects: ``allow_pickle=False``) or the OSError of the read, for callers
    that say it in their own words (a checkpoint, the directory's verification)."""
    names = (TRAINED_USERS, TRAINED_PRODUCTS)
    there = [os.path.lexists(os.path.join(directory, name)) for name in names]
    if not any(there):
        return None  # an untrained directory, or one written before the masks existed
    if not all(there):
        have, lost = (names[0], names[1]) if there[0] else (names[1], names[0])
        raise ValueError(f"{have} without {lost}: which rows were trained is unknown")
    users, products = (_load_mask(directory, name) for name in names)
    return users, products


def _load_mask(directory: str, name: str) -> np.ndarray:
    try:
        return np.load(os.path.join(directory, name), allow_pickle=False)
    except OSError:
        raise
    except Exception as e:  # cut short, not a .npy file, pickled objects (numpy raises several kinds)
        raise ValueError(f"{name} does not load ({type(e).__name__}: {one_line(e)})") from None


class OtherFormat(InputError):
    """A model directory of another format or features version than this code reads: a model
    still (``held`` and ``reads``: the two versions), which this code does not read."""

    def __init__(self, message: str, held, reads: int) -> None:
        super().__init__(message)
        self.held, self.reads = held, reads

    @property
    def newer(self) -> bool:
        """Written by a newer checkout (rather than an older one)."""
        return isinstance(self.held, int) and not isinstance(self.held, bool) and self.held > self.reads


def read_config(model_dir: str, named: Optional[str] = None) -> Dict:
    """``config.json``, checked: a clear error for a path that is not a model directory.
    ``named``: the path errors name, where ``model_dir`` is what it resolved to (a blue/green
    link's target, read once: a second read through the link could find the next model)."""
    path, named = os.path.join(model_dir, CONFIG), named or model_dir
    if not (present(model_dir) and os.path.lexists(path)):
        raise InputError(f"{named}: not a model directory (no {CONFIG}); run python -m jobs.train first")
    try:
        config = read_small_json(path)
    except (OSError, ValueError) as e:  # empty, truncated, not JSON, unreadable, a FIFO, oversized
        raise InputError(f"{named}: unreadable {CONFIG} ({type(e).__name__}: {one_line(e)})") from None
    if not isinstance(config, dict):
        raise InputError(f"{named}: {CONFIG} holds {type(config).__name__}, not an object")
    if config.get("format_version") != FORMAT_VERSION:
        raise OtherFormat(
            f"{named}: model directory format {config.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}: retrain it with python -m jobs.train",
            config.get("format_version"),
            FORMAT_VERSION,
        )
    trained_on = config.get("features_version", FEATURES_OF_FORMAT_4)
    if trained_on != FEATURES_VERSION:  # weights learnt on other numbers for the same feature names
        raise OtherFormat(
            f"{named}: trained on features version {trained_on}, this code computes version "
            f"{FEATURES_VERSION}: retrain it with python -m jobs.train",
            trained_on,
            FEATURES_VERSION,
        )
    _check_fields(named, config)
    return config


# What a reader takes from config.json before the directory's checksums are read (every byte:
# last); a file cut or edited without them would fail there with a KeyError, not in one line.
SIZE_FIELDS = ("num_users", "num_products", "num_departments", "num_categories")


def _check_fields(model_dir: str, config: Dict) -> None:
    model, ranking = config.get("model"), config.get("ranking", {})
    problems = []
    if not isinstance(model, dict):
        problems.append("no model settings")
    else:
        problems += [f"model.{f} is not a count" for f in SIZE_FIELDS if not _is_count(model.get(f))]
    if not isinstance(ranking, dict):
        problems.append("ranking is not an object")
    if not isinstance(config.get("version"), str):
        problems.append("no version")
    if problems:
        raise InputError(f"{model_dir}: bad {CONFIG} ({'; '.join(problems)}): restore the directory or retrain it")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def read_metrics(
    model_dir: str, named: Optional[str] = None, check_version: bool = True, version: Optional[str] = None
) -> Dict:
    """``metrics.json``: training metrics, the per-epoch ``history``, held-out figures ({} where
    there is none). Raises InputError naming the file (in ``named``, default ``model_dir``) when
    it does not read as a JSON object, or names another model version than ``config.json``: it is
    outside the checksums (rewritten after saving), so its damage is met here, not by the manifest.
    Files written before ``model_version`` existed are read unchecked; ``check_version=False``
    (verification: the model serves without its figures) reads any version; ``version``: the one
    to compare with instead of ``config.json``'s (a handle's, resolved earlier). Resolved once: a
    link repointed between the two files' reads must not compare two models."""
    named = named or model_dir
    model_dir = os.path.realpath(model_dir)
    path = os.path.join(model_dir, METRICS)
    if not os.path.lexists(path):
        _check_still(model_dir, named, version)
        return {}
    try:
        metrics = read_small_json(path)
    except (OSError, ValueError) as e:  # cut short, not JSON, not UTF-8, unreadable, a FIFO, oversized
        raise InputError(f"{named}: unreadable {METRICS} ({type(e).__name__}: {one_line(e)}); restore it") from None
    if not isinstance(metrics, dict):
        raise InputError(f"{named}: {METRICS} holds {type(metrics).__name__}, not an object; restore it")
    if check_version:
        _check_metrics_version(model_dir, named, metrics, version)
    return metrics


# The model version (config.json's) that save_model_dir writes into metrics.json: figures copied
# from another model, or of the directory this one replaced, become that model's registry tags.
METRICS_VERSION = "model_version"


def _check_still(model_dir: str, named: str, version: Optional[str]) -> Optional[str]:
    """config.json's version, refused (InputError) where it is not ``version`` (a handle's, or a
    training's, resolved earlier): the directory was saved over since."""
    on_disk = _config_version(model_dir)
    if version is not None and on_disk is not None and on_disk != version:
        raise InputError(
            f"{named}: holds model {on_disk!r} now, not the {version!r} read before: the directory was saved over since"
        )
    return on_disk


def _check_metrics_version(model_dir: str, named: str, metrics: Dict, version: Optional[str] = None) -> None:
    on_disk = _check_still(model_dir, named, version)
    if METRICS_VERSION not in metrics:
        return  # written before the field existed: nothing more to compare
    version = version if version is not None else on_disk
    if version is not None and metrics[METRICS_VERSION] != version:
        raise InputError(
            f"{named}: {METRICS} holds the figures of model {metrics[METRICS_VERSION]!r}, {CONFIG} is model "
            f"{version!r}: its figures are not this model's; restore this model's {METRICS}, or remove it (it is "
            "outside the checksums, and the model serves without it)"
        )


def _config_version(model_dir: str) -> Optional[str]:
    """config.json's version, or None where it does not read (:func:`read_config` says why)."""
    try:
        config = read_small_json(os.path.join(model_dir, CONFIG))
    except (OSError, ValueError):
        return None
    return config.get("version") if isinstance(config, dict) else None
