"""python -m jobs.preprocess (--input LOGS [--products CATALOG] | --dataset NAME) --output DATA"""

from __future__ import annotations

import argparse
import os

from jobs.cli import init_ray, one_line_errors
from ncf.data import datasets, schema
from ncf.data.examples import SAMPLING_MODES, ExampleConfig
from ncf.data.preprocess import PreprocessConfig, preprocess


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Validate purchase logs, build vocabularies and features with Ray Data.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="purchase log: Parquet/CSV file, directory or glob")
    source.add_argument("--dataset", choices=datasets.DATASETS, help="a built-in dataset")
    p.add_argument("--products", help="product catalog (product_id, department, category)")
    p.add_argument("--output", required=True, help="output directory (replaced)")
    p.add_argument("--val-weeks", type=int, default=4)
    p.add_argument("--test-weeks", type=int, default=5)
    p.add_argument(
        "--train-weeks",
        type=int,
        default=PreprocessConfig.train_weeks,
        help="weeks of training purchases that yield examples (0 = all)",
    )
    p.add_argument("--history-length", type=int, default=ExampleConfig.history_length)
    p.add_argument(
        "--negatives", type=int, default=ExampleConfig.negatives_per_positive, help="negatives per training purchase"
    )
    p.add_argument("--negative-sampling", choices=SAMPLING_MODES, default=ExampleConfig.negative_sampling)
    p.add_argument("--own-negative-share", type=float, default=ExampleConfig.own_negative_share)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic-users", type=int, default=datasets.SyntheticSpec.num_users)
    p.add_argument("--synthetic-products", type=int, default=datasets.SyntheticSpec.num_products)
    p.add_argument("--cache", default="artifacts/datasets", help="where built-in datasets are written as files")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with one_line_errors():
        # Check user input before starting Ray: a bad file fails in a second, not after start-up.
        if args.input:
            logs = schema.resolve_files(args.input)
            schema.check_columns(logs, schema.LOG_REQUIRED, "purchase log")
            catalog = schema.resolve_files(args.products) if args.products else None
            if catalog:
                schema.check_columns(catalog, schema.CATALOG_REQUIRED, "product catalog")
        init_ray()
        if args.dataset == "completejourney":
            paths = datasets.write_completejourney(os.path.join(args.cache, "completejourney"))
        elif args.dataset == "synthetic":
            spec = datasets.SyntheticSpec(
                num_users=args.synthetic_users, num_products=args.synthetic_products, seed=args.seed
            )
            name = f"synthetic-u{spec.num_users}-p{spec.num_products}-s{spec.seed}"
            paths = datasets.write_synthetic(os.path.join(args.cache, name), spec)
        if args.dataset:
            logs, catalog = schema.resolve_files(paths[0]), schema.resolve_files(paths[1])
        config = PreprocessConfig(
            examples=ExampleConfig(
                history_length=args.history_length,
                negatives_per_positive=args.negatives,
                negative_sampling=args.negative_sampling,
                own_negative_share=args.own_negative_share,
                seed=args.seed,
            ),
            val_weeks=args.val_weeks,
            test_weeks=args.test_weeks,
            train_weeks=args.train_weeks,
        )
        return preprocess(logs, catalog, args.output, config)


if __name__ == "__main__":
    main()
