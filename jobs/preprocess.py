"""python -m jobs.preprocess (--input LOGS [--products CATALOG] | --dataset NAME) --output DATA"""

from __future__ import annotations

import argparse
import os
import re
import time
from typing import Callable, Tuple

from jobs.cli import (
    init_ray,
    job_parser,
    non_negative_float,
    non_negative_int,
    one_line_errors,
    positive_int,
    refuse_empty_paths,
    refuse_unpacked_outputs,
    run_main,
)
from ncf.data import datasets, layout, schema
from ncf.data.examples import ExampleConfig
from ncf.data.preprocess import PreprocessConfig, check_inputs, preprocess
from ncf.errors import InputError
from ncf.moments import as_datetime, resolve_at
from ncf.staging import check_parent, check_target

DEFAULT_CACHE = "artifacts/datasets"
PATH_OPTIONS = ("--input", "--products", "--output", "--cache")
SYNTHETIC_OPTIONS = (
    "--synthetic-users",
    "--synthetic-products",
    "--synthetic-tastes",
    "--synthetic-taste-groups",
    "--synthetic-no-rebuys",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(
        "preprocess", "Validate purchase logs, build vocabularies and features with Ray Data.", uses_ray=True
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="purchase log: Parquet/CSV file, directory or glob")
    source.add_argument("--dataset", choices=datasets.DATASETS, help="a built-in dataset")
    p.add_argument(
        "--products",
        help="product catalog (product_id, department, category), with --input (a built-in dataset brings its "
        "own); without one every product ranks with the unknown department and category",
    )
    p.add_argument(
        "--output",
        required=True,
        help="output directory: built beside it and swapped in at the end (a symlink is repointed to a new directory)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output even when it is not an output of this job (never when it contains the inputs)",
    )
    p.add_argument("--val-weeks", type=positive_int, default=4, help="weeks of the validation period")
    p.add_argument(
        "--test-weeks", type=positive_int, default=5, help="weeks of the test period (the last weeks of the data)"
    )
    d = ExampleConfig()
    p.add_argument("--history-length", type=positive_int, default=d.history_length, help="past purchases per history")
    p.add_argument(
        "--horizon-days", type=positive_int, default=d.horizon_days, help="label window: bought within H days"
    )
    p.add_argument(
        "--cutoffs", type=positive_int, default=d.cutoffs, help="cutoffs (training moments) per training run"
    )
    p.add_argument(
        "--cutoff-step-days",
        type=positive_int,
        default=None,
        help="days between cutoffs (default: the horizon, so that no purchase labels two lists)",
    )
    p.add_argument(
        "--own-candidates", type=non_negative_int, default=d.own_candidates, help="own past products per list"
    )
    p.add_argument(
        "--neighbour-candidates",
        type=non_negative_int,
        default=d.neighbour_candidates,
        help="products nearest to the household's by co-purchase per list",
    )
    p.add_argument(
        "--popular-candidates", type=non_negative_int, default=d.popular_candidates, help="popular products per list"
    )
    p.add_argument(
        "--sampled-negatives",
        type=non_negative_int,
        default=d.sampled_negatives,
        help="products drawn by popularity per list",
    )
    p.add_argument(
        "--uniform-negatives",
        type=non_negative_int,
        default=d.uniform_negatives,
        help="products drawn uniformly per list",
    )
    p.add_argument(
        "--own-negative-rate", type=float, default=d.own_negative_rate, help="share of own-product negatives kept"
    )
    p.add_argument(
        "--list-households",
        type=positive_int,
        default=d.list_households,
        help="most households with training lists (the same sample at every cutoff; the others rank from the "
        "trained unknown household row)",
    )
    p.add_argument(
        "--future-gap-days",
        type=non_negative_float,
        default=PreprocessConfig.future_gap_days,
        help="quarantine timestamps after a gap of more than this many days past the bulk of the data",
    )
    p.add_argument(
        "--min-timestamp",
        type=moment,
        default=None,
        help="quarantine purchases before this moment as timestamp_out_of_range (an ISO date or datetime, UTC "
        "unless it names a zone, or epoch seconds; default 1990-01-01)",
    )
    p.add_argument(
        "--max-timestamp",
        type=moment,
        default=None,
        help="quarantine purchases at this moment or after as timestamp_out_of_range (as --min-timestamp; default "
        "2100-01-01): a placeholder date on many rows (2099-12-31), which --future-gap-days cannot cut",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of every draw (and of the synthetic dataset)")
    p.add_argument(
        "--state-only",
        action="store_true",
        help="write only the state (vocabularies, purchases, product stats): refreshes the histories a "
        "deployed model ranks from (jobs.batch_score/jobs.deploy --data), no training lists",
    )
    # The synthetic options and --cache default to None: given with a source they do not shape,
    # they are refused (as --products with --dataset is), not ignored.
    p.add_argument(
        "--synthetic-users",
        type=positive_int,
        default=None,
        help=f"synthetic: households (default: {datasets.SyntheticSpec.num_users})",
    )
    p.add_argument(
        "--synthetic-products",
        type=positive_int,
        default=None,
        help=f"synthetic: products (default: {datasets.SyntheticSpec.num_products})",
    )
    p.add_argument(
        "--synthetic-tastes",
        type=non_negative_int,
        default=None,
        help="synthetic: each household favours this many categories (80%% of its purchases; 0: none) (default: 0)",
    )
    p.add_argument(
        "--synthetic-taste-groups",
        type=non_negative_int,
        default=None,
        help="synthetic: the favoured sets are this many latent product groups drawn across the categories, "
        "not the categories (0: categories) (default: 0)",
    )
    p.add_argument(
        "--synthetic-no-rebuys",
        action="store_true",
        default=None,
        help="synthetic: a household buys a product at most once (no staples): a log for collaborative filtering",
    )
    p.add_argument(
        "--cache", default=None, help=f"where built-in datasets are written as files (default: {DEFAULT_CACHE})"
    )
    return p.parse_args(argv)


def moment(text: str) -> int:
    """argparse type: a moment as epoch seconds, from an ISO date or datetime (UTC unless it names a
    zone) or epoch seconds; words (``now``) are refused, so that a run's bounds do not move with
    the clock."""
    if re.fullmatch(r"\s*[A-Za-z-]*\s*", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a moment: give an ISO date (2099-12-31), datetime or epoch seconds"
        )
    try:
        return resolve_at(text, data_end=0)
    except InputError as e:
        # Milliseconds taken for seconds: resolve_at's hint; else its words name --at's own forms.
        reason = str(e).split(": ", 1)[-1] if "out of range" in str(e) else "not a moment"
        raise argparse.ArgumentTypeError(
            f"{text!r}: {reason}; give an ISO date (2099-12-31), datetime (2099-12-31T00:00:00Z) or epoch seconds "
            "(9 digits or more)"
        ) from None


def preprocess_config(args: argparse.Namespace) -> PreprocessConfig:
    """The run's settings, checked before Ray starts (a bad value is one line, exit 2)."""
    # None: not given (the help says the defaults as dates, where argparse would print epoch seconds).
    min_timestamp = PreprocessConfig.min_timestamp if args.min_timestamp is None else args.min_timestamp
    max_timestamp = PreprocessConfig.max_timestamp if args.max_timestamp is None else args.max_timestamp
    if min_timestamp >= max_timestamp:
        raise InputError(
            f"--min-timestamp {as_datetime(min_timestamp).isoformat()} is not before --max-timestamp "
            f"{as_datetime(max_timestamp).isoformat()}: every purchase would be timestamp_out_of_range"
        )
    try:
        return PreprocessConfig(
            examples=ExampleConfig(
                history_length=args.history_length,
                horizon_days=args.horizon_days,
                cutoffs=args.cutoffs,
                cutoff_step_days=args.cutoff_step_days,
                own_candidates=args.own_candidates,
                neighbour_candidates=args.neighbour_candidates,
                popular_candidates=args.popular_candidates,
                sampled_negatives=args.sampled_negatives,
                uniform_negatives=args.uniform_negatives,
                own_negative_rate=args.own_negative_rate,
                list_households=args.list_households,
                seed=args.seed,
            ),
            val_weeks=args.val_weeks,
            test_weeks=args.test_weeks,
            min_timestamp=min_timestamp,
            max_timestamp=max_timestamp,
            future_gap_days=args.future_gap_days,
        )
    except ValueError as e:
        raise InputError(f"training-list settings: {e}") from None


def _attribute(option: str) -> str:
    return option[2:].replace("-", "_")


def check_options(args: argparse.Namespace) -> None:
    """Refuses (InputError, one line naming the option) an empty path, and an option the chosen
    source does not use: either would be read as something else without a word."""
    # An unset variable in a script (--input "$LOGS"): "" read as not given built the synthetic
    # dataset (and could replace DATA with it), read no catalog, or named the working directory
    # as the output, which --overwrite replaces.
    refuse_empty_paths(args, PATH_OPTIONS)
    refuse_unpacked_outputs(args, ("--output",))
    source = "--input" if args.input is not None else f"--dataset {args.dataset}"
    if args.products is not None and args.input is None:
        raise InputError("--products goes with --input: a built-in dataset brings its own catalog")
    if args.cache is not None and args.input is not None:
        raise InputError("--cache goes with --dataset: --input is read where it is")
    if args.dataset != "synthetic":
        for option in SYNTHETIC_OPTIONS:
            if getattr(args, _attribute(option)) is not None:
                raise InputError(f"{option} goes with --dataset synthetic, not {source}: it shapes the generated log")


def cache_dir(args: argparse.Namespace) -> str:
    """``--cache``, absolute: Ray's tasks read the dataset written there (see resolve_files)."""
    return os.path.abspath(DEFAULT_CACHE if args.cache is None else args.cache)


def built_in(args: argparse.Namespace) -> Tuple[str, Callable[[], tuple]]:
    """The built-in dataset's directory under ``--cache``, and what writes it there (when absent)."""
    cache = cache_dir(args)
    if args.dataset == "completejourney":
        directory = os.path.join(cache, "completejourney")
        return directory, lambda: datasets.write_completejourney(directory)

    def given(value, default):
        return default if value is None else value

    tastes, no_rebuys = given(args.synthetic_tastes, 0), bool(args.synthetic_no_rebuys)
    spec = datasets.SyntheticSpec(
        num_users=given(args.synthetic_users, datasets.SyntheticSpec.num_users),
        num_products=given(args.synthetic_products, datasets.SyntheticSpec.num_products),
        seed=args.seed,
        taste_categories=tastes,
        taste_share=0.8 if tastes else 0.0,
        taste_groups=given(args.synthetic_taste_groups, 0),
        rebuys=not no_rebuys,
        staple_share=0.0 if no_rebuys else datasets.SyntheticSpec.staple_share,
    )
    directory = os.path.join(cache, spec.cache_name)
    return directory, lambda: datasets.write_synthetic(directory, spec)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with one_line_errors():
        # Check user input before starting Ray: a bad file fails in a second, not after start-up.
        check_options(args)
        if args.input is not None:
            logs = schema.resolve_files(args.input)
            catalog = schema.resolve_files(args.products) if args.products is not None else None
            check_inputs(logs, catalog)
            inputs = logs.paths + (catalog.paths if catalog else [])
        else:
            directory, write_dataset = built_in(args)
            cache = cache_dir(args)
            if os.path.lexists(cache) and not os.path.isdir(cache):
                raise InputError(f"--cache {cache}: exists and is not a directory")
            check_parent(directory)  # written after Ray starts: a file on its path fails now
            inputs = [directory]
        check_target(args.output, layout.STATS, "preprocessing output", inputs, args.overwrite)
        config = preprocess_config(args)
        init_ray()
        if args.dataset is not None:
            # Minutes at millions of households (1,022 s at 10M), before preprocessing's own lines.
            print(f"[preprocess] the {args.dataset} log: {directory} (written the first time, then reused)", flush=True)
            started = time.time()
            paths = write_dataset()
            print(f"[preprocess] the {args.dataset} log is ready ({time.time() - started:.0f} s)", flush=True)
            logs, catalog = schema.resolve_files(paths[0]), schema.resolve_files(paths[1])
        return preprocess(
            logs,
            catalog,
            args.output,
            config,
            state_only=args.state_only,
            overwrite=args.overwrite,
            inputs_checked=args.input is not None,  # checked above, before Ray started
        )


if __name__ == "__main__":
    run_main(
        main,
        "the output is as it was (a run writes a staging directory beside it and swaps it in at its end): "
        "run the same command again",
    )
