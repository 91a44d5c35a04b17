"""The AdvancedNCF model: its config, input batch, seed modules and the composed model."""

from ncf.model.advanced_ncf import AdvancedNCF, example_batch
from ncf.model.batch import Batch
from ncf.model.config import ModelConfig

__all__ = ["AdvancedNCF", "Batch", "ModelConfig", "example_batch"]
