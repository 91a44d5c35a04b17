"""Held-out quality of one validated model at several first-stage sizes (Serve's ``candidates``), as
JSON lines.

python -m bench.first_stage_size --model MODEL-validated --data DATA [--sizes 300,200,150,100]
    [--own 250] [--splits val,test] [--exclude-purchased]

Each size re-ranks that many candidates (the household's own products first, then the MF path's,
its categories' best sellers and the popular ones; :mod:`ncf.rank.candidates`) through the
evaluation code of ``jobs.evaluate``. ``--own N`` adds, for each size, a row with the household's
own products capped at N, leaving the other sources room (not with ``--exclude-purchased``,
whose first stage has no own products). ``--exclude-purchased`` ranks and scores as a Serve
``exclude_purchased`` request does (products new to each household): a size for those requests
is chosen on ``--splits val``, the test weeks only reported beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Dict, List

from ncf.data import layout
from ncf.evaluate.evaluation import check_held_out, evaluate_all, point_in_time_period
from ncf.evaluate.protocol import period_start
from ncf.model.directory import ModelDir
from ncf.rank.candidates import RankingSettings
from ncf.rank.ranker import Ranker
from ncf.rank.state import RankingState
from ncf.splits import TEST, VAL


def _sizes(text: str) -> List[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, not {text!r}")
    return sizes


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a validated model directory (held-out weeks never seen)")
    p.add_argument("--data", required=True, help="the DATA it was trained on")
    p.add_argument("--sizes", type=_sizes, default=[300, 200, 150, 100], help="first-stage sizes, comma-separated")
    p.add_argument("--own", type=int, default=None, help="also each size with own_candidates capped here")
    p.add_argument("--splits", default=f"{VAL},{TEST}", help="held-out periods, comma-separated")
    p.add_argument(
        "--exclude-purchased", action="store_true", help="rank only products new to each household (and score so)"
    )
    args = p.parse_args(argv)
    if args.own is not None and args.exclude_purchased:
        p.error("--own caps the household's own products, which --exclude-purchased leaves out of the first stage")
    handle = ModelDir(args.model)
    model = handle.load_model()
    boundaries = layout.DataStats(args.data).boundaries
    default = RankingSettings.of_model(handle.ranking, handle.path)
    variants = [{"candidates": n} for n in args.sizes]
    if args.own is not None:
        variants += [{"candidates": n, "own_candidates": min(args.own, n)} for n in args.sizes]
    rows = []
    for split in args.splits.split(","):
        start = period_start(split, boundaries)
        check_held_out(handle, split, start)
        # The state as of the period's start (a pass over every purchase) and the period, once a split.
        base = Ranker.of_model_dir(handle, RankingState.load(args.data).as_of(start), default, model=model)
        _, period = point_in_time_period(base.state, split, boundaries, exclude_purchased=args.exclude_purchased)
        for changes in variants:
            settings = dataclasses.replace(default, **changes)
            started = time.perf_counter()
            ranker = Ranker(base.model, base.state, base.rows, settings, base.mf_index)
            figures = evaluate_all(
                args.model,
                args.data,
                split,
                baselines=(),
                on_period=(ranker, period),
                exclude_purchased=args.exclude_purchased,
            )[0]
            row = {
                "benchmark": "first_stage_size",
                "split": split,
                "candidates": settings.candidates,
                "own_candidates": settings.own_candidates,
                "exclude_purchased": args.exclude_purchased,
                **{m: round(figures[m], 4) for m in ("recall@10", "ndcg@10", "repeat_share@10")},
                "households": figures.get("users"),
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
