"""The pinned stack loads: TorchRec with fbgemm runs an EmbeddingBagCollection on CPU."""

import os

import torch
from helpers import REPO
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def test_embedding_bag_collection_runs_on_cpu():
    ebc = EmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10, feature_names=["f"])],
        device=torch.device("cpu"),
    )
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["f"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 0, 1])
    )
    pooled = ebc(kjt)["f"]
    weight = ebc.embedding_bags["t"].weight
    assert pooled.shape == (3, 4)
    torch.testing.assert_close(pooled[0], weight[1] + weight[2])  # sum pooling
    torch.testing.assert_close(pooled[1], torch.zeros(4))  # empty bag
    torch.testing.assert_close(pooled[2], weight[3])


def test_fbgemm_operators_load():
    import fbgemm_gpu  # noqa: F401  (registers the fbgemm ops TorchRec's fused kernels use)

    assert hasattr(torch.ops.fbgemm, "asynchronous_complete_cumsum")
    out = torch.ops.fbgemm.asynchronous_complete_cumsum(torch.tensor([1, 2, 3]))
    assert out.tolist() == [0, 1, 3, 6]


def test_ray_cluster_runs_a_task(ray_session):
    ray = ray_session

    @ray.remote
    def square(x):
        return x * x

    assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    assert ray.cluster_resources()["CPU"] <= 2


def _pins(name: str) -> dict:
    with open(os.path.join(REPO, "requirements", name)) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return dict(line.split("==", 1) for line in lines)


def test_the_mlflow_ui_environment_is_pinned_whole_at_the_platforms_mlflow():
    """`make mlflow-ui` installs requirements/mlflow-ui.txt: every package pinned (it used to pin
    MLflow alone, its dependencies whatever pip resolved that day), and MLflow at the version the
    platform records with (the store's schema is MLflow's)."""
    ui = _pins("mlflow-ui.txt")
    assert all(version for version in ui.values()) and "mlflow" in ui
    assert ui["mlflow"] == ui["mlflow-skinny"] == _pins("lock.txt")["mlflow-skinny"]
