"""Forward+backward examples/s of AdvancedNCF on this machine's CPU (or GPU), as JSON.

python -m bench.model_throughput [--batch-size 4096] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ncf.device import default_device
from ncf.model.advanced_ncf import AdvancedNCF, ModelConfig, example_batch

# Complete Journey's vocabulary sizes, so the tables are the real ones.
SIZES = dict(num_users=2464, num_products=64964, num_departments=32, num_categories=304)


def measure(config: ModelConfig, batch_size: int, steps: int, device: torch.device) -> dict:
    model = AdvancedNCF(config, device=device).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = example_batch(config, batch_size).to(device)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        loss = loss_fn(model(batch, return_logits=True), batch.label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        started = time.perf_counter()
        for _ in range(steps):
            model(batch)
        inference = steps * batch_size / (time.perf_counter() - started)
    return {"train_examples_per_s": round(steps * batch_size / elapsed), "inference_examples_per_s": round(inference)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    device = default_device()
    result = {
        "benchmark": "model_throughput",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
    }
    result["default"] = measure(ModelConfig(**SIZES), args.batch_size, args.steps, device)
    for switch in ("use_attention", "use_hierarchy", "use_temporal"):
        result[f"without_{switch[4:]}"] = measure(
            ModelConfig(**SIZES, **{switch: False}), args.batch_size, args.steps, device
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
