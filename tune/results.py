"""What a sweep leaves behind: the trial table, its plot and the winner as a model directory.

::

    SWEEP/
      results.parquet, results.csv   one row per trial: the point, its best validation
                                     NDCG@10 and epoch, epochs run, status, checkpoint
      sweep.png                      the metric against each searched dimension
      best/                          the winning checkpoint as a model directory
      tune/sweep/                    Ray Tune's experiment (resume state, TensorBoard logs)
      train/<trial id>/              each trial's Ray Train run and checkpoints
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from ncf.errors import InputError
from ncf.jsonio import write_atomically
from ncf.model.files import BEST_VAL_METRIC, VAL_METRIC
from ncf.train.checkpoint import (
    export_model_dir,
    is_a_score,
    kept_checkpoints,
    read_train_state,
    resumed_checkpoint,
)
from tune.search_space import SEARCHED, data_limits, default_point, is_point, mlp_tower
from tune.settings import SweepSettings

BEST = BEST_VAL_METRIC  # what trials report (Tune's and Optuna's objective), and the table's column of it
CHECKPOINT_PATH = "checkpoint_path"  # what Tune's TuneReportCallback adds to the metrics


def _trial_row(result, default: Dict, train_dir: Optional[str] = None) -> Dict:
    point = {k: result.config.get(k) for k in SEARCHED}
    row = {"trial_id": _trial_id(result, train_dir), **point}
    row["mlp_hidden_dims"] = str(mlp_tower(int(point["mlp_depth"]), int(point["mlp_width"])))
    row["is_default"] = is_point(point, default)
    row["status"] = "error" if result.error else "done"
    history = result.metrics_dataframe
    kept = _kept_best(train_dir, row["trial_id"]) if train_dir else None
    # NaN where an epoch diverged (its DIVERGED_SCORE is no score).
    scores = (
        None
        if history is None or VAL_METRIC not in history
        else history[VAL_METRIC].where(history[VAL_METRIC].map(is_a_score))
    )
    if scores is None or scores.isna().all():
        # Epochs that validated to no score still count as trained (winner says they diverged).
        trained = int(history["epoch"].max()) if scores is not None and "epoch" in history else 0
        row.update({BEST: np.nan, "best_epoch": np.nan, "epochs": trained, CHECKPOINT_PATH: None, **(kept or {})})
        return row
    # The last of tied epochs: Ray Train keeps the later of equally scored checkpoints (it deletes
    # the earliest first), so the first of them may be gone by the end of the trial.
    best = history.loc[history.index[scores == scores.max()][-1]]
    row.update(
        {
            BEST: float(best[VAL_METRIC]),
            "best_epoch": int(best["epoch"]),
            "val_recall@10": float(best.get("val_recall@10", np.nan)),
            "epochs": int(history["epoch"].max()),
            "train_loss": float(history["train_loss"].iloc[-1]),
            "examples_per_s": float(history["examples_per_s"].mean()),
            # Summed per report: Tune's time_total_s starts again for a trial restarted by --resume.
            "seconds": float(history["time_this_iter_s"].sum()) if "time_this_iter_s" in history else np.nan,
            CHECKPOINT_PATH: best.get(CHECKPOINT_PATH),
        }
    )
    row.update(kept or {})
    return row


def _trial_id(result, train_dir: Optional[str]) -> str:
    """The trial's id: what it reported, else (stopped before its first report, maybe after its
    first checkpoint) the Ray Train run of ``train_dir`` its Tune folder names. Tune names that
    folder ``{trainable}_{trial id}_{index}_{point}_{date}``; the run is named by the trial id."""
    reported = (result.metrics or {}).get("trial_id")
    if reported:
        return str(reported)
    folder = os.path.basename(os.path.normpath(result.path))
    try:
        runs = [name for name in os.listdir(train_dir) if f"_{name}_" in folder] if train_dir else []
    except OSError:
        runs = []
    return runs[0] if len(runs) == 1 else folder


def _kept_best(train_dir: str, trial_id: str) -> Optional[Dict]:
    """A trial's best checkpoint as its Ray Train run keeps it (None: no index, a remote store, or
    one a kill damaged: Tune's log decides then, as it did before).

    Ray Train saves an epoch's checkpoint before Tune logs its metrics, and Ctrl-C stops Tune
    between the two: that epoch is in the run, which a resume continues after, and not in Tune's
    log. Ray keeps the best checkpoints, so the best is among those its index lists, each with
    the metrics reported with it."""
    try:
        kept = kept_checkpoints(os.path.join(train_dir, trial_id))
        validated = [(m[VAL_METRIC], int(m["epoch"]), d, m) for d, m in kept if VAL_METRIC in m]
        # A diverged epoch is never the best (nor a NaN of older runs: max keeps a NaN it starts from).
        scored = [(float(v), epoch, d, m) for v, epoch, d, m in validated if is_a_score(v)]
    except (InputError, ValueError, KeyError, TypeError):
        return None
    if not validated:
        return None
    if not scored:  # every kept epoch diverged: how many it trained, no best
        return {"epochs": max(v[1] for v in validated)}
    value, epoch, directory, metrics = max(scored, key=lambda s: (s[0], s[1]))  # ties: the last epoch
    return {
        BEST: value,
        "best_epoch": epoch,
        "val_recall@10": float(metrics.get("val_recall@10", np.nan)),
        "epochs": max(v[1] for v in validated),
        CHECKPOINT_PATH: directory,
    }


def results_table(grid, data: str, train_dir: Optional[str] = None) -> pd.DataFrame:
    """One row per trial, best first; ``train_dir``: the sweep's Ray Train runs, whose indexes
    decide each trial's best checkpoint (see :func:`_kept_best`)."""
    default = default_point(data_limits(data))
    rows = [_trial_row(result, default, train_dir) for result in grid]
    table = pd.DataFrame(rows)
    return table.sort_values(BEST, ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def write_results(table: pd.DataFrame, output: str) -> List[str]:
    os.makedirs(output, exist_ok=True)
    paths = [os.path.join(output, "results.parquet"), os.path.join(output, "results.csv")]
    write_atomically(paths[0], lambda tmp: table.to_parquet(tmp, index=False))
    write_atomically(paths[1], lambda tmp: table.to_csv(tmp, index=False))
    return paths


class NoTrialFinished(RuntimeError):
    """No trial of a sweep reported a checkpoint with its validation metric: every one failed."""


def winner(table: pd.DataFrame) -> pd.Series:
    """The sweep's winner (:func:`results_table`'s order): the best trial with a checkpoint, which
    ``SWEEP/best`` holds and ``SWEEP/refit`` refits.

    Raises:
        NoTrialFinished: none has one (every trial failed: out of memory, a GPU it could not use).
    """
    done = table.dropna(subset=[BEST])
    done = done[done[CHECKPOINT_PATH].notna()]
    if done.empty:
        # Trials that trained and validated to NaN only (no error of theirs): a range that diverges.
        trained = table.get("epochs", pd.Series(0, index=table.index)).fillna(0) > 0
        diverged = int((trained & (table.get("status", pd.Series("", index=table.index)) == "done")).sum())
        where = "error.txt of its folder under SWEEP/tune/sweep/"
        raise NoTrialFinished(
            f"none of the sweep's {len(table)} trials reported a checkpoint with {VAL_METRIC}: "
            + (
                f"{diverged} validated to NaN only (diverged: a learning rate too high for them), "
                f"{len(table) - diverged} failed (a failed trial's error is in {where})"
                if diverged
                else f"each failed; its error is in {where}"
            )
        )
    return done.iloc[0]


def export_best(table: pd.DataFrame, settings: SweepSettings) -> str:
    """Writes the best trial's best checkpoint as ``SWEEP/best`` (a model directory), its
    ``metrics.json`` holding the trial's row, its epochs' metrics and the epoch kept, as
    ``jobs.train``'s export does (the report draws the curves and marks that epoch)."""
    from ray.train import Checkpoint

    best = winner(table)
    checkpoint = checkpoint_in(settings.train_dir, best[CHECKPOINT_PATH])
    if not os.path.isdir(checkpoint):  # its trial's folder removed after it finished: Tune keeps its row
        raise InputError(
            f"the best trial {best['trial_id']}'s checkpoint {checkpoint} is missing (its folder removed?); its "
            "results are in the table, its model cannot be exported: start the sweep again with a new --output"
        )
    # Every epoch's metrics from the trial's latest checkpoint, as run_history reads a training's
    # (the best one's state stops at its own epoch); from the best one where Ray's index is damaged.
    try:
        latest = resumed_checkpoint(os.path.dirname(checkpoint))
    except InputError:
        latest = None
    metrics = {
        "sweep": {k: (v.item() if hasattr(v, "item") else v) for k, v in best.items()},
        "history": (latest[1] if latest else read_train_state(checkpoint)).get("history", []),
        "best_epoch": int(best["best_epoch"]),
    }
    return export_model_dir(
        Checkpoint(checkpoint), settings.best_dir, settings.data, metrics, version=f"sweep-{best['trial_id']}"
    )


def checkpoint_in(train_dir: str, recorded: str) -> str:
    """A trial's checkpoint (``TRIAL/checkpoint_N``, as Tune recorded it) under this sweep's
    ``train_dir``: Tune keeps the absolute path of when it was reported, so a sweep moved and
    resumed would export from where it was before (gone, or an old copy)."""
    trial_folder, checkpoint = os.path.split(os.path.normpath(recorded))
    return os.path.join(train_dir, os.path.basename(trial_folder), checkpoint)


def plot_sweep(table: pd.DataFrame, path: str) -> str:
    """Validation NDCG@10 against each searched dimension; the default point and the winner marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = table.dropna(subset=[BEST])
    # The star is SWEEP/best's trial (results_table's order: the best score with a checkpoint), not
    # merely the top score; a table without checkpoints (one built by hand) stars its top score.
    best = done[done[CHECKPOINT_PATH].notna()].iloc[:1] if CHECKPOINT_PATH in done else done.nlargest(1, BEST)
    fig, axes = plt.subplots(2, (len(SEARCHED) + 1) // 2, figsize=(18, 6.5), sharey=True)
    for ax, name in zip(axes.flat, SEARCHED):
        ax.scatter(done[name], done[BEST], color="tab:blue", alpha=0.7, label="trial")
        default = done[done["is_default"]]
        if not best.empty:
            ax.scatter(best[name], best[BEST], color="tab:red", marker="*", s=200, label="best")
        # A ring, so that it stays visible when the defaults are also the best.
        ax.scatter(
            default[name],
            default[BEST],
            facecolors="none",
            edgecolors="tab:orange",
            linewidths=2,
            s=260,
            label="defaults",
            zorder=3,
        )
        if name == "learning_rate":
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(VAL_METRIC)
    axes.flat[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Sweep: {len(done)} trials, best {VAL_METRIC} per trial")
    fig.tight_layout()
    try:  # the format named: the temporary name's extension is not the plot's
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=90, format=os.path.splitext(path)[1][1:] or "png"))
    finally:
        plt.close(fig)
    return path
