"""The pinned stack loads: TorchRec with fbgemm runs an EmbeddingBagCollection on CPU."""

import torch
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
