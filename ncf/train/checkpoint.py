"""Checkpoints of a training run, and the export of the best one as a model directory.

A checkpoint holds the full (unsharded) weights, the optimizer state of the dense layers and of
the tables' fused optimizer (gathered like the weights), and the run's state (epochs done,
best validation NDCG@10, per-epoch history). ``jobs.train`` and ``tune`` export through
:func:`export_model_dir`, the one way from a checkpoint to a model directory.
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ncf.data.examples import lists_digest
from ncf.data.features import FEATURES_VERSION
from ncf.errors import InputError, cannot_access
from ncf.jsonio import read_json, write_json
from ncf.model.config import ModelConfig
from ncf.model.directory import WEIGHTS, save_model_dir
from ncf.model.files import (
    DIVERGED_SCORE,
    TRAINED_PRODUCTS,
    TRAINED_USERS,
    VAL_METRIC,
    load_trained_rows,
    read_trained_rows,
    save_trained_rows,
)
from ncf.model.integrity import sha256_of
from ncf.staging import fsync_parent, fsync_tree

OPTIMIZER = "optimizer.pt"
TRAIN_STATE = "train_state.json"
# train_state.json's record of the files written beside it: {name: sha256}. A page lost to a crash
# before writeback leaves an archive that still loads (zeros in a tensor); only its digest tells.
CHECKSUMS = "sha256"
NEW_RUN = "give this training a new --name or remove that run's folder"
# The files a checkpoint's state may record: a name from the file itself is never a path to follow.
CHECKSUMMED = frozenset({WEIGHTS, OPTIMIZER, TRAINED_USERS, TRAINED_PRODUCTS})


def write_checkpoint(
    directory: str,
    weights: Dict[str, torch.Tensor],
    optimizer_state: Optional[Dict],
    state: Dict,
    trained_rows: Optional[Tuple[np.ndarray, np.ndarray]] = None,
) -> None:
    """``trained_rows``: (users, products) masks of the rows the batches of a capped run, or of one
    of several workers, held (an uncapped run of one worker trains every row its lists hold, which
    the model directory reads from DATA).
    ``train_state.json``, written last, records each file's sha256 (:data:`CHECKSUMS`)."""
    written = [WEIGHTS]
    torch.save(weights, os.path.join(directory, WEIGHTS))
    if optimizer_state is not None:
        torch.save(optimizer_state, os.path.join(directory, OPTIMIZER))
        written.append(OPTIMIZER)
    if trained_rows is not None:
        save_trained_rows(directory, trained_rows)
        written += [TRAINED_USERS, TRAINED_PRODUCTS]
    checksums = {name: sha256_of(os.path.join(directory, name)) for name in written}
    write_json(os.path.join(directory, TRAIN_STATE), {**state, CHECKSUMS: checksums})


def persist_durably(checkpoint, name: str):
    """Ray Train's copy of a reported checkpoint into the run's storage (its
    ``checkpoint_upload_fn``), flushed to disk there where the storage is local. Ray copies without
    an fsync and, keeping one checkpoint (a refit), deletes the previous one as soon as it takes
    this one: a power cut within the kernel's writeback delay (about 30 s, an epoch here) left a
    damaged checkpoint and no other. A remote store (``s3://``) holds what it acknowledged."""
    import pyarrow.fs
    import ray.train

    persisted = ray.train.get_context().get_storage().persist_current_checkpoint(checkpoint, name)
    if isinstance(persisted.filesystem, pyarrow.fs.LocalFileSystem):
        fsync_tree(persisted.path)
        fsync_parent(persisted.path)
    return persisted


def read_train_state(directory: str) -> Dict:
    return read_json(os.path.join(directory, TRAIN_STATE))


def read_checkpoint(
    directory: str, remedy: str = NEW_RUN, mmap: bool = False, state: Optional[Dict] = None
) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """(weights, train state) of a checkpoint directory (weights_only: nothing is unpickled), its
    files checked against their recorded checksums first (:func:`check_checksums`; ``state``: its
    ``train_state.json`` already read, default: read here). ``mmap``: the
    tensors map the file (each worker of a resumed group then holds only the part it copies into
    its model), only for a checkpoint on a local filesystem: one downloaded from remote storage
    sits in a folder the node's workers share, which a later worker's download rewrites in place
    (a mapped page cut short is a SIGBUS)."""
    state = read_train_state(directory) if state is None else state
    check_checksums(directory, state, remedy)
    weights = torch.load(os.path.join(directory, WEIGHTS), weights_only=True, map_location="cpu", mmap=mmap)
    return weights, state


def check_checksums(directory: str, state: Dict, remedy: str = NEW_RUN) -> None:
    """Raises InputError (one line) when a file a checkpoint's state records differs from its
    sha256, or is gone; a checkpoint written before the checksums (none recorded) passes."""
    for name, expected in sorted((state.get(CHECKSUMS) or {}).items()):
        if name not in CHECKSUMMED:  # "/dev/zero" or "../x" would be read (and hang, or read elsewhere)
            raise _damaged(directory, f"{TRAIN_STATE} records a checksum of {name!r}, no file of a checkpoint", remedy)
        path = os.path.join(directory, name)
        try:
            found = sha256_of(path)
        except OSError as e:
            raise (_access_error(path, e) or _damaged(directory, f"{name} is gone", remedy)) from None
        if found != expected:
            raise _damaged(directory, f"{name}'s sha256 is not the one written with it", remedy)


def _damaged(directory: str, what: str, remedy: str) -> InputError:
    return InputError(f"the checkpoint {directory} is damaged ({what}: a crash before the disk wrote it?); {remedy}")


def check_same_model(run_folder: str, saved: Optional[Dict], current: Dict) -> None:
    """Raises InputError when a checkpoint of ``run_folder`` was written by another model
    configuration than ``current`` (a run name reused for another model: resuming would load
    tables of other shapes)."""
    current = json.loads(json.dumps(current))  # tuples as lists, as the saved JSON has them
    if saved is None or saved == current:
        return
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    difference = ", ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} here" for k in keys[:3])
    raise InputError(
        f"the checkpoint in {run_folder} was written by another model configuration ({difference}); "
        "give this training a new --name or remove that run's folder"
    )


# What a run's checkpoints were trained under besides the model: resuming with other values would
# make one model of two trainings under one version. Not here: ``epochs`` (a run may be given more),
# ``patience`` (when to stop), ``torch_threads`` (speed) and ``data`` (a path; its vocabularies and
# features version are checked by their digests).
RESUMED_SETTINGS = (
    "run",
    "batch_size",
    "learning_rate",
    "val_users",
    "unknown_share",
    "shuffle_buffer",
    "max_steps_per_epoch",
    "seed",
    "cutoffs",
)


def training_settings(config: Dict) -> Dict:
    """The :data:`RESUMED_SETTINGS` of a :class:`ncf.train.config.TrainConfig` as a dict, as a
    checkpoint's JSON holds them."""
    return json.loads(json.dumps({k: config[k] for k in RESUMED_SETTINGS}))


def check_same_training(run_folder: str, saved: Optional[Dict], current: Dict) -> None:
    """Raises InputError when a checkpoint of ``run_folder`` was trained with other
    :data:`RESUMED_SETTINGS` than ``current`` (:func:`training_settings`); None: a checkpoint
    written before they were recorded."""
    if saved is None or saved == current:
        return
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    difference = ", ".join(f"{k}: {_shown(saved.get(k))} there, {_shown(current.get(k))} here" for k in keys[:3])
    raise InputError(
        f"the checkpoint in {run_folder} was trained with other settings ({difference}); resume it with "
        "the same ones, or give this training a new --name"
    )


def hardware(workers: int, use_gpu: bool) -> Dict:
    """What a run trains on: not refused on resume (a run may move to GPUs that came free), but
    said, since the later epochs then shard the lists otherwise (workers) or train in bf16 (GPU)."""
    return {"workers": int(workers), "gpu": bool(use_gpu)}


def hardware_changed(saved: Optional[Dict], current: Dict) -> Optional[str]:
    """A line saying how ``current`` (:func:`hardware`) differs from the run's ``saved`` one
    (None: the same, or a checkpoint written before it was recorded)."""
    if saved is None or saved == current:
        return None

    def shown(h: Dict) -> str:
        return f"{h.get('workers')} worker(s) on {'GPU' if h.get('gpu') else 'CPU'}"

    return (
        f"trained on {shown(saved)} so far and resumes on {shown(current)}: its later epochs shard the lists "
        "or round (bf16 on GPU) otherwise, so the model is not the one either would train alone"
    )


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_same_vocabularies(run_folder: str, saved: Optional[str], current: str) -> None:
    """Raises InputError when a checkpoint of ``run_folder`` was trained on other vocabularies
    (:func:`ncf.model.integrity.vocab_digest`) than DATA holds now: preprocessed again since, its
    tables' rows would name other households and products."""
    _check_same_data(run_folder, saved, current, "vocabularies", "preprocessed again since?")


def check_same_lists(run_folder: str, saved: Optional[str], current: str, remedy: Optional[str] = None) -> None:
    """Raises InputError when a checkpoint of ``run_folder`` was trained on other training lists
    (:func:`ncf.data.examples.lists_digest`) than DATA holds now: DATA preprocessed again with
    other list settings keeps its vocabularies."""
    _check_same_data(run_folder, saved, current, "training lists", "preprocessed again with other settings?", remedy)


def _check_same_data(
    run_folder: str, saved: Optional[str], current: str, what: str, why: str, remedy: Optional[str] = None
) -> None:
    """Refuses a checkpoint whose digest of DATA's ``what`` is not ``current`` (None: written
    before checkpoints recorded it)."""
    if saved is not None and saved != current:
        raise InputError(
            f"the checkpoint in {run_folder} was trained on other {what} than --data holds now ({why}); "
            f"{remedy or NEW_RUN}"
        )


def check_same_features(run_folder: str, saved: Optional[int], remedy: str = NEW_RUN) -> None:
    """Raises InputError when a checkpoint of ``run_folder`` was trained on lists of another
    features version (None: written before checkpoints recorded it, version 1)."""
    version = 1 if saved is None else int(saved)
    if version != FEATURES_VERSION:
        raise InputError(
            f"the checkpoint in {run_folder} was trained on features version {version}, this code computes "
            f"version {FEATURES_VERSION}; {remedy}"
        )


def check_features_of_runs(root: str, remedy: str) -> None:
    """:func:`check_same_features` for every checkpoint of every run folder under ``root`` (a
    sweep's trials), before anything resumes from one."""
    for run_folder in sorted(glob.glob(os.path.join(glob.escape(root), "*", ""))):
        run_folder = run_folder.rstrip(os.sep)
        # One trial's damage costs that trial's epochs, not the sweep's.
        # Tune runs a finished trial's folder no more: without it, its results stand but cannot be exported.
        damaged = (
            f"remove {run_folder} and resume if that trial had not finished (it trains again from its first "
            "epoch); if it had, start the sweep again with a new --output"
        )
        for directory, _ in kept_checkpoints(run_folder, damaged):
            check_same_features(run_folder, _train_state_of(directory, damaged).get("features_version"), remedy)


# Ray Train's index of a run's checkpoints: what it resumes from. A checkpoint folder it does not
# list is none (a run killed while Ray copied the folder in leaves it, part-written), and folder
# names (local times) need not sort in the order they were written.
RAY_INDEX = "checkpoint_manager_snapshot.json"


def kept_checkpoints(run_folder: str, remedy: str = NEW_RUN) -> List[Tuple[str, Dict]]:
    """(folder, the metrics reported with it) of each checkpoint Ray Train's index lists for a
    run, the latest last ([] without an index: Ray Train starts such a run afresh)."""
    path = os.path.join(run_folder, RAY_INDEX)
    if not os.path.exists(path):
        return []
    try:
        index = read_json(path)
        kept = [(r["checkpoint_dir_name"], r.get("metrics") or {}) for r in index["checkpoint_results"]]
        latest_result = index.get("latest_checkpoint_result") or {}
        latest = latest_result.get("checkpoint_dir_name")
    except OSError as e:  # no permission, a failing disk: the index may be whole
        raise (_access_error(path, e) or InputError(f"{path} is gone since it was listed; {remedy}")) from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(
            f"{path} is damaged (the run killed while Ray Train wrote it?), so Ray Train cannot resume "
            f"{run_folder}; {remedy}"
        ) from None
    ordered = [k for k in kept if k[0] != latest] + ([(latest, latest_result.get("metrics") or {})] if latest else [])
    return [(os.path.join(run_folder, name), metrics) for name, metrics in ordered]


def _train_state_of(directory: str, remedy: str = NEW_RUN) -> Dict:
    try:
        return read_train_state(directory)
    except (OSError, ValueError) as e:
        raise (
            _access_error(os.path.join(directory, TRAIN_STATE), e)
            or InputError(f"the checkpoint {directory} has no readable {TRAIN_STATE}; {remedy}")
        ) from None


def _access_error(path: str, error: Exception) -> Optional[InputError]:
    """The one-line error for a checkpoint file the OS will not read (no permission, a failing
    disk): the file may be whole, so no advice to remove the run; None for a missing or damaged
    one (cut short, it fails in the unzipping or JSON parsing, not with an OSError)."""
    if not isinstance(error, OSError) or isinstance(error, FileNotFoundError):
        return None
    return InputError(cannot_access(f"read {path}", error))


def resumed_checkpoint(run_folder: str) -> Optional[Tuple[str, Dict]]:
    """(folder, train state) of the checkpoint Ray Train would resume a run from (its model
    configuration, the digests of its data), or None when it would start afresh."""
    kept = kept_checkpoints(run_folder)
    return (kept[-1][0], _train_state_of(kept[-1][0])) if kept else None


def check_readable(directory: str, state: Optional[Dict] = None) -> None:
    """Refuses (InputError, one line) a checkpoint whose weights, optimizer state or masks of
    trained rows cannot be opened (cut short, damaged on disk), or that holds one mask without the
    other: Ray Train would load it on every worker and fail each of its tries with a traceback (a
    lost mask read as none had every row exported as trained). The archives are memory-mapped, so
    only their index is read; the masks (a byte per row) are read whole. Files whose sha256 the
    checkpoint's ``state`` (default: its ``train_state.json``, if any) records are read whole and
    checked against it (:func:`check_checksums`)."""
    if state is None and os.path.lexists(os.path.join(directory, TRAIN_STATE)):
        state = _train_state_of(directory)
    check_checksums(directory, state or {})
    for name in (WEIGHTS, OPTIMIZER):
        path = os.path.join(directory, name)
        if name == OPTIMIZER and not os.path.exists(path):
            continue  # written before checkpoints held it: the optimizer starts afresh
        try:
            torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        except Exception as e:
            raise _unreadable(directory, path, name, e) from None
    try:
        load_trained_rows(directory)
    except (OSError, ValueError) as e:
        raise _unreadable(directory, getattr(e, "filename", None) or directory, "trained rows", e) from None


def _unreadable(directory: str, path: str, name: str, error: Exception) -> InputError:
    reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]}"
    return _access_error(path, error) or InputError(
        f"the checkpoint {directory} cannot be read ({name}: {reason}) and Ray Train resumes from it; {NEW_RUN}"
    )


def read_optimizer_state(directory: str, mmap: bool = False) -> Optional[Dict]:
    """``optimizer.pt`` (None before checkpoints held it); ``mmap`` as :func:`read_checkpoint`."""
    path = os.path.join(directory, OPTIMIZER)
    return torch.load(path, weights_only=True, map_location="cpu", mmap=mmap) if os.path.exists(path) else None


class TrainingDiverged(InputError):
    """Every kept epoch's validation scored NaN: nothing to export (the job's one line, exit 2)."""


def best_checkpoint(result):
    """The checkpoint with the best validation NDCG@10 (validated runs), else the latest (refit).
    An epoch whose validation scored NaN (weights that diverged) is never the best: its score is
    DIVERGED_SCORE (NaN in runs of 2026-12-07, which Ray lists first and ``max`` keeps)."""
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if VAL_METRIC in m]
    finite = [(c, m) for c, m in scored if is_a_score(m[VAL_METRIC])]
    if finite:
        return max(finite, key=lambda cm: cm[1][VAL_METRIC])
    if scored:
        raise TrainingDiverged(
            "every kept epoch's validation scored NaN: the training diverged (its weights are not numbers; its "
            "checkpoints are kept); train again with a lower --lr"
        )
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error or 'no epochs ran'}")
    return result.checkpoint, result.metrics or {}


def is_a_score(value) -> bool:
    """Whether a validation metric is a score: not a diverged epoch's (DIVERGED_SCORE, or NaN and
    None, NaN through JSON, as code of 2026-12-07 reported it)."""
    return value is not None and math.isfinite(float(value)) and float(value) > DIVERGED_SCORE


def run_history(result) -> list:
    """Every epoch's metrics of a run, from its latest checkpoint (older ones may be deleted)."""
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as d:
        return read_train_state(d).get("history", [])


def export_model_dir(
    checkpoint, output: str, data: str, metrics: Dict, version: Optional[str] = None, overwrite: bool = False
) -> str:
    """Writes ``checkpoint`` (a ``ray.train.Checkpoint``) as a model directory at ``output``
    (``overwrite``: see :func:`ncf.model.directory.save_model_dir`)."""
    with checkpoint.as_directory() as d:
        # The one way from a checkpoint to a model directory: weights learnt on another feature
        # definition never get this code's format.
        where, state = getattr(checkpoint, "path", d), read_train_state(d)
        check_same_features(where, state.get("features_version"), "train again")
        cutoffs = (state.get("training") or {}).get("cutoffs")
        if cutoffs:  # an uncapped run's trained rows are read from DATA's lists of these cutoffs
            check_same_lists(where, state.get("lists_sha256"), lists_digest(data, cutoffs), "train again")
        weights, _ = read_checkpoint(d, "train again", state=state)
        trained_rows = read_trained_rows(d)
    return save_model_dir(
        output,
        weights,
        ModelConfig.from_dict(state["model_config"]),
        data,
        trained_through=state["trained_through"],
        rows_trained_before=state.get("rows_trained_before"),
        vocab_sha256=state.get("vocab_sha256"),
        trained_rows=trained_rows,
        run=state["run"],
        metrics=metrics,
        version=version,
        overwrite=overwrite,
    )
