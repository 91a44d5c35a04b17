"""Beyond repeats: on a log where households never buy a product twice, ranked with
``exclude_purchased``, the trained model must at least match ALS (the `implicit` baseline) in the
same evaluation code. The households' tastes are latent product groups that no category names,
so what it can use there is what similar households bought (the co-purchase neighbours), not
what it rebought nor its categories (issue 18; the full-size figures are in BENCHMARKS.md)."""

from __future__ import annotations

from conftest import SMALL_MODEL

from ncf.data import datasets, schema
from ncf.data.examples import ExampleConfig
from ncf.data.preprocess import PreprocessConfig, preprocess
from ncf.evaluate.evaluation import evaluate_all
from ncf.splits import TEST
from ncf.train.checkpoint import best_checkpoint, export_model_dir
from ncf.train.config import TrainConfig
from ncf.train.trainer import fit

NO_REBUYS = datasets.SyntheticSpec(
    num_users=500,
    num_products=800,
    num_departments=5,
    categories_per_department=8,
    baskets_per_user=25.0,
    basket_size=5.0,
    staple_share=0.0,
    taste_categories=4,
    taste_share=0.8,
    taste_groups=40,
    rebuys=False,
    seed=3,
)


def test_the_model_matches_als_on_a_log_without_rebuys(ray_session, tmp_path):
    logs, catalog = datasets.write_synthetic(str(tmp_path / "raw"), NO_REBUYS)
    examples = ExampleConfig(history_length=8, horizon_days=21, cutoffs=3, sampled_negatives=10, uniform_negatives=20)
    data = str(tmp_path / "data")
    preprocess(
        schema.resolve_files(logs),
        schema.resolve_files(catalog),
        data,
        PreprocessConfig(examples=examples, val_weeks=3, test_weeks=3),
    )
    config = TrainConfig(data=data, model=SMALL_MODEL, epochs=3, batch_size=16, learning_rate=5e-3, val_users=200)
    result = fit(config, storage_path=str(tmp_path / "runs"), name="no-rebuys")
    assert result.error is None, result.error
    checkpoint, metrics = best_checkpoint(result)
    model = export_model_dir(checkpoint, str(tmp_path / "model"), data, {"training": metrics})

    rows = {
        r["model"]: r for r in evaluate_all(model, data, TEST, baselines=("popularity", "als"), exclude_purchased=True)
    }
    ours, als, popular = rows["advanced_ncf"], rows["als"], rows["popularity"]
    assert ours["repeat_share@10"] == 0.0  # nothing it bought comes back
    assert ours["recall@10"] >= als["recall@10"] and ours["recall@10"] > popular["recall@10"]
