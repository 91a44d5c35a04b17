"""Beyond repeats: a log where households never buy a product twice, read with
``exclude_purchased``, where what to recommend is what similar households buy (the collaborative
signal the MF path and the attention over history must carry), against tuned ALS.

python -m bench.beyond_repeats [--users 3000] [--products 5000] [--tastes 4] [--workdir artifacts/beyond]
    [--seed 0] [--model '{"use_mf": false}'] [--taste-groups 200]

A synthetic log (``jobs.preprocess --dataset synthetic --synthetic-no-rebuys --synthetic-tastes``:
each household draws 80% of its purchases from a few favourite categories, by popularity, and
buys each product at most once), the default model trained on it (validated run), then
``jobs.evaluate --exclude-purchased``: one JSON line per model. ``--taste-groups G``: the
favoured sets are G latent product groups drawn across the categories instead of categories,
so that neither the category source of the first stage nor the category cadence names them.
``--model`` (ModelConfig fields as JSON, as ``jobs.train`` takes them) trains a variant, for
ablations on this log; its model directory is named after it, beside the default's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re

from bench.runs import fresh_run_name
from jobs import evaluate, preprocess, train
from jobs.cli import model_overrides, one_line_errors


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=3_000)
    p.add_argument("--products", type=int, default=5_000)
    p.add_argument("--tastes", type=int, default=4, help="favourite categories (or groups) per household")
    p.add_argument(
        "--taste-groups", type=int, default=0, help="tastes over this many latent product groups, not the categories"
    )
    p.add_argument("--seed", type=int, default=0, help="the model's training seed")
    p.add_argument("--workdir", default="artifacts/beyond")
    p.add_argument("--model", default="{}", help="ModelConfig fields as JSON (a variant of the default)")
    p.add_argument("--reuse", action="store_true", help="reuse DATA and the model of a previous run")
    args = p.parse_args(argv)
    with one_line_errors():
        variant = model_overrides(args.model, option="--model")
    data = os.path.join(args.workdir, "data")
    model = os.path.join(args.workdir, f"model{_variant_suffix(variant)}-seed{args.seed}")
    if not (args.reuse and os.path.exists(os.path.join(data, "stats.json"))):
        preprocess.main(
            ["--dataset", "synthetic", "--synthetic-users", str(args.users), "--synthetic-products", str(args.products),
             "--synthetic-tastes", str(args.tastes), "--synthetic-taste-groups", str(args.taste_groups),
             "--synthetic-no-rebuys", "--output", data]
        )  # fmt: skip
    if not (args.reuse and os.path.exists(os.path.join(model, "config.json"))):
        name = fresh_run_name(model)
        train.main(["--data", data, "--output", model, "--seed", str(args.seed), "--name", name, "--model", args.model])
    rows = evaluate.main(["--model", model, "--data", data, "--exclude-purchased"])
    for row in rows:
        print(json.dumps({"benchmark": "beyond_repeats", "variant": variant, **row}), flush=True)
    return rows


def _variant_suffix(variant: dict) -> str:
    """``{"use_mf": False}`` -> ``-use_mf-false``; the default (``{}``) -> ``""``. A value that
    needs other characters gets a hash beside its readable form, so that no two variants share a
    directory (``[128, 64]`` and ``"128,64"`` read the same once cleaned)."""
    text = "".join(f"-{key}-{json.dumps(value)}" for key, value in sorted(variant.items()))
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
    return clean if clean == text else f"{clean}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


if __name__ == "__main__":
    main()
