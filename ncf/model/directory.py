"""The model directory: everything serving and scoring need, as plain data.

::

    MODEL/
      config.json        model config, vocab sizes, version, data boundaries, ranking settings
      model.pt           state_dict, loaded with torch.load(weights_only=True)
      vocab/             users, products (with hierarchy and counts), departments, categories
      user_state/        users' purchase sequences (the histories ranking reads)
      metrics.json       training and evaluation metrics
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Dict, Optional

import torch

from ncf.data import layout
from ncf.data.vocab import Vocabularies
from ncf.jsonio import write_json
from ncf.model.advanced_ncf import AdvancedNCF, ModelConfig

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.pt"
METRICS = "metrics.json"


def save_model_dir(
    output: str,
    weights: Dict[str, torch.Tensor],
    model_config: ModelConfig,
    data: str,
    metrics: Optional[Dict] = None,
    version: Optional[str] = None,
    ranking: Optional[Dict] = None,
) -> str:
    """Writes a complete model directory next to ``output`` and renames it into place."""
    with open(layout.stats_path(data)) as f:
        boundaries = json.load(f)["boundaries"]
    tmp = output.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch.save(weights, os.path.join(tmp, WEIGHTS))
    shutil.copytree(layout.vocab_dir(data), os.path.join(tmp, "vocab"))
    shutil.copytree(layout.user_state_dir(data), os.path.join(tmp, "user_state"))
    write_json(
        os.path.join(tmp, CONFIG),
        {
            "format_version": FORMAT_VERSION,
            "version": version or time.strftime("%Y%m%d-%H%M%S"),
            "model": dataclasses.asdict(model_config),
            "data": {"path": os.path.abspath(data), "boundaries": boundaries},
            "ranking": ranking or {},
        },
    )
    write_json(os.path.join(tmp, METRICS), metrics or {})
    shutil.rmtree(output, ignore_errors=True)
    os.replace(tmp, output)
    return output


def save_untrained_model_dir(output: str, data: str, version: str, seed: int = 0, **model_options) -> str:
    """A model directory on ``data``'s vocabularies with seeded, untrained weights: for tests and
    benchmarks of serving and scoring, whose cost and mechanics do not depend on the weights.
    ``model_options`` override :class:`ModelConfig`'s defaults (sizes, switches)."""
    torch.manual_seed(seed)
    config = ModelConfig(**Vocabularies.load(layout.vocab_dir(data)).sizes(), **model_options)
    return save_model_dir(output, AdvancedNCF(config).state_dict(), config, data, version=version)


def read_config(model_dir: str) -> Dict:
    path = os.path.join(model_dir, CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{model_dir}: not a model directory (no {CONFIG})")
    with open(path) as f:
        config = json.load(f)
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{model_dir}: unsupported model directory format {config.get('format_version')}")
    return config


def read_metrics(model_dir: str) -> Dict:
    """``metrics.json``: training metrics and, for models trained since it was added, the
    per-epoch ``history``."""
    path = os.path.join(model_dir, METRICS)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_model(model_dir: str, device: Optional[torch.device] = None) -> AdvancedNCF:
    """The model with its weights; refuses files that need unpickling (weights_only=True)."""
    config = read_config(model_dir)
    model = AdvancedNCF(ModelConfig.from_dict(config["model"]))
    state = torch.load(os.path.join(model_dir, WEIGHTS), weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    return model.to(device or torch.device("cpu")).eval()
