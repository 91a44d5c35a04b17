"""The evaluation report renders in headless Chromium; explanations are the model's attention."""

import inspect
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from ncf.data.examples import Catalog, example_columns
from ncf.data.features import Batch
from ncf.evaluate.evaluation import evaluate_all
from ncf.evaluate.report import write_report
from ncf.rank.recommender import Recommender

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: `make test` installs it (make browser)"
    return path


@pytest.fixture(scope="module")
def recommender(small_model_dir):
    return Recommender.load(small_model_dir)


def test_report_renders_without_broken_images(recommender, small_data, tmp_path):
    data, _ = small_data
    rows = evaluate_all(recommender, data, max_users=15, with_als=False)
    history = [
        {"epoch": 1, "train_loss": 0.9, "val_ndcg@10": 0.1, "val_recall@10": 0.08},
        {"epoch": 2, "train_loss": 0.7, "val_ndcg@10": 0.12, "val_recall@10": 0.1},
    ]
    ablations = [{**rows[0], "model": "advanced_ncf without mf"}]
    path = write_report(
        str(tmp_path / "report"),
        recommender,
        data,
        rows,
        history=history,
        ablations=ablations,
        ablations_source="runs/<ablations>.jsonl",
        score_users=10,
        households=2,
    )
    page = open(path).read()
    assert "own_frequency" in page and "without mf" in page and "because:" in page
    assert "runs/&lt;ablations&gt;.jsonl" in page  # where the ablation rows came from, escaped

    common = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=5000", "--dump-dom", f"file://{path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-broken-images="0"' in dom.stdout
    assert 'data-images="3"' in dom.stdout  # metrics, training curves, score distribution
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, "--window-size=1200,3000", f"--screenshot={shot}", f"file://{path}"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one


def test_explanations_are_past_purchases_weighted_by_the_models_attention(recommender):
    model = recommender.model
    user = int(recommender.states.users()[2])
    at = recommender.data_end
    items = recommender.recommend_items(recommender.vocabs.users.raw_of([user])[0], k=5, explain=True)["items"]
    timeline = recommender.states.timeline(user)
    bought = set(recommender.vocabs.products.raw_of(timeline.products[timeline.timestamps < at]))

    # The attention weights of the model's own forward pass, on examples built by preprocessing's code.
    captured = []

    def keep_weights(module, args, kwargs, output):
        call = inspect.signature(module.forward).bind(*args, **kwargs)
        if not call.arguments.get("need_weights"):  # the scoring path, not the explaining one
            call.arguments["need_weights"] = True
            captured.append(module.forward(*call.args, **call.kwargs)[1])

    products = recommender.vocabs.products
    catalog = Catalog.build(
        products.column("department_index"), products.column("category_index"), np.ones(len(products)), "uniform"
    )
    indices = products.index_of([item["product_id"] for item in items])
    batch = Batch.from_columns(
        example_columns(timeline, user, indices, np.full(len(indices), at), catalog, model.config.history_length)
    )
    handle = model.history_attention.register_forward_hook(keep_weights, with_kwargs=True)
    try:
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
    weights = captured[0].numpy()
    history = batch.history.numpy()

    for row, item in enumerate(items):
        assert item["because"], "every known user with a history gets reasons"
        for reason in item["because"]:
            assert reason["product_id"] in bought  # a real past purchase of this user
            positions = np.flatnonzero(history[row] == products.index_of([reason["product_id"]])[0])
            assert np.isclose(weights[row, positions], reason["weight"], atol=1e-5).any()
        top = np.sort(weights[row][history[row] > 0])[::-1][: len(item["because"])]
        assert [r["weight"] for r in item["because"]] == pytest.approx(top.tolist(), abs=1e-5)


def test_training_history_becomes_tensorboard_scalars(tmp_path):
    from ncf.train.tensorboard import write_history

    logdir = write_history(
        [
            {"epoch": 1, "train_loss": 0.9, "val_ndcg@10": 0.3, "note": "x"},
            {"epoch": 2, "train_loss": 0.7, "val_ndcg@10": 0.35},
        ],
        str(tmp_path / "tb"),
    )
    (events,) = os.listdir(logdir)
    payload = open(os.path.join(logdir, events), "rb").read()
    assert events.startswith("events.out.tfevents")
    assert (
        payload.count(b"train/train_loss") == 2 and payload.count(b"train/val_ndcg_10") == 2
    )  # TensorBoard tags cannot hold "@"
    assert b"train/note" not in payload  # only numbers are scalars
