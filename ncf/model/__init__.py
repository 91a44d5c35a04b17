"""The AdvancedNCF model: its config, input batch, seed modules and the composed model."""

from ncf.model.advanced_ncf import AdvancedNCF, example_batch
from ncf.model.batch import Batch
from ncf.model.config import ModelConfig
from ncf.model.modules import CategoryHierarchy, MultiHeadAttention, TemporalEncoding

__all__ = [
    "AdvancedNCF",
    "Batch",
    "CategoryHierarchy",
    "ModelConfig",
    "MultiHeadAttention",
    "TemporalEncoding",
    "example_batch",
]
