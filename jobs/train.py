"""python -m jobs.train --data DATA --output MODEL [--epochs N] [--workers N] [--gpu auto]"""

from __future__ import annotations

import argparse
import json
import os

from jobs.cli import init_ray, one_line_errors
from ncf.device import use_gpu
from ncf.model.advanced_ncf import ModelConfig
from ncf.model.directory import save_model_dir
from ncf.train.loop import TrainConfig, best_checkpoint_weights, fit, run_history
from ncf.train.tensorboard import write_history


def parse_args(argv=None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description="Train AdvancedNCF with Ray Train (TorchTrainer).")
    p.add_argument("--data", required=True, help="output of jobs.preprocess")
    p.add_argument("--output", required=True, help="model directory to write")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers; >1 shards the embedding tables")
    p.add_argument("--gpu", default="auto", help="auto (use CUDA when present), yes or no")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--val-users", type=int, default=d.val_users)
    p.add_argument("--max-steps-per-epoch", type=int, default=0)
    p.add_argument("--model", default="{}", help='ModelConfig overrides as JSON, e.g. {"mf_embedding_dim": 64}')
    p.add_argument("--storage", default="artifacts/ray_results", help="where Ray Train keeps checkpoints")
    p.add_argument("--name", default=None, help="run name (reuse it to resume an interrupted run)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    with one_line_errors():
        model_overrides = json.loads(args.model)
        ModelConfig(num_users=1, num_products=1, num_departments=1, num_categories=1, **model_overrides)  # fail fast
        init_ray()
        config = TrainConfig(
            data=os.path.abspath(args.data),
            model=model_overrides,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            patience=args.patience,
            val_users=args.val_users,
            max_steps_per_epoch=args.max_steps_per_epoch,
            seed=args.seed,
        )
        result = fit(
            config, num_workers=args.workers, use_gpu=use_gpu(args.gpu), storage_path=args.storage, name=args.name
        )
        weights, state, metrics = best_checkpoint_weights(result)
        history = run_history(result)
        path = save_model_dir(
            args.output,
            weights,
            ModelConfig.from_dict(state["model_config"]),
            args.data,
            metrics={"training": metrics, "history": history},
        )
        logdir = write_history(history, os.path.join(result.path, "tensorboard"))
        print(
            f"[train] best epoch {state.get('best_epoch')} with val_ndcg@10 "
            f"{metrics['val_ndcg@10']:.4f}; model directory: {path}; TensorBoard: {logdir}",
            flush=True,
        )
        return path


if __name__ == "__main__":
    main()
