#!/usr/bin/env bash
# The GPU path end to end on a CUDA machine, as one short script: a 1-worker and a 2-worker
# training run (`--gpu yes`: NCCL sharding of the tables, bf16 autocast), the nightly job on
# GPU scoring actors, and `bench.gpu_model` on the trained model (the ranking path on the GPU
# against the CPU, in one process), on a synthetic log. Prints one JSON line per step and a
# summary line.
# Without CUDA it says so and exits 0 (nothing is run).
#
#   bench/gpu_check.sh [WORKDIR]        (default artifacts/gpu_check; USERS / PRODUCTS override sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${1:-artifacts/gpu_check}
USERS=${USERS:-20000}
PRODUCTS=${PRODUCTS:-20000}

gpus=$($PY -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$gpus" = "0" ]; then
    echo '{"benchmark": "gpu_check", "cuda": false, "note": "no CUDA device here: nothing run"}'
    exit 0
fi

$PY -m jobs.preprocess --dataset synthetic --synthetic-users "$USERS" --synthetic-products "$PRODUCTS" \
    --output "$WORK/data" --overwrite
for workers in 1 2; do
    if [ "$workers" -gt "$gpus" ]; then
        echo "{\"benchmark\": \"gpu_check\", \"step\": \"train\", \"workers\": $workers, \"skipped\": \"$gpus GPU(s)\"}"
        continue
    fi
    $PY -m jobs.train --data "$WORK/data" --output "$WORK/model-w$workers" --workers "$workers" --gpu yes \
        --epochs 1 --name "gpu-check-w$workers-$(date +%s)" --overwrite
done
started=$($PY -c "import time; print(time.time())")
$PY -m jobs.batch_score --model "$WORK/model-w1" --data "$WORK/data" --output "$WORK/scores" --gpu yes \
    | tail -n 1 > "$WORK/batch_summary.json"
batch_seconds=$($PY -c "import time; print(round(time.time() - $started, 1))")
$PY -m bench.gpu_model --model "$WORK/model-w1" --data "$WORK/data" --users 5000 --no-compile \
    | tail -n 1 > "$WORK/gpu_model.json"
$PY - "$WORK" "$batch_seconds" "$gpus" <<'PY'
import json, os, sys

work, batch_seconds, gpus = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
out = {"benchmark": "gpu_check", "cuda": True, "gpus": gpus, "batch_job_seconds": batch_seconds}
for workers in (1, 2):
    path = os.path.join(work, f"model-w{workers}", "metrics.json")
    if os.path.exists(path):
        history = json.load(open(path)).get("history", [])
        out[f"train_w{workers}_candidates_per_s"] = history[-1].get("examples_per_s") if history else None
summary = json.load(open(os.path.join(work, "batch_summary.json")))
out["batch"] = summary
out["gpu_model"] = json.load(open(os.path.join(work, "gpu_model.json")))
print(json.dumps(out))
PY
