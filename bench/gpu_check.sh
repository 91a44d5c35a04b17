#!/usr/bin/env bash
# The GPU path end to end on a CUDA machine, as one short script: a 1-worker and a 2-worker
# training run (`--gpu yes`: NCCL sharding of the tables, bf16 autocast), the nightly job on
# GPU scoring actors, and `bench.gpu_model` on the trained model (the ranking path on the GPU
# against the CPU, in one process), on a synthetic log.
#
# Stdout is JSON lines only: the pre-check's, one per step (its exit status, seconds and log
# files: each step's own output goes to WORKDIR/logs/STEP.out and .err), then a summary line.
# A training run's figures are its epoch's (`examples_per_s` counts candidates, as training does):
# `whole_epoch_examples_per_s` includes the start-up (input pipeline, first step's allocations;
# in a 1-epoch run a large share), `steady_examples_per_s` the steps after the first,
# `first_step_seconds` the start-up itself.
#
# Exit status: 0 where there is no GPU at all (nothing run: no GPU listed by nvidia-smi, no
# /dev/nvidiaN, none seen by torch) or where every step passed; 2 where a GPU is present but this
# environment cannot use it for training (torch's or fbgemm's CPU build, `ncf.device.
# gpu_build_missing(training=True)`; nvidia-smi failing; torch's CUDA build seeing no device):
# said in the pre-check's line before anything runs; a failed step's own status otherwise.
#
# It needs the project's environment with CUDA builds (`make setup ACCEL=cuda` on a GPU machine
# with PyPI: Ray, TorchRec, the CUDA fbgemm-gpu). A machine that cannot install them (the lent
# device machine: no Ray, 64 MiB a carried path) runs `bench.gpu_model` alone (BENCHMARKS.md, "GPU").
# Each step is stopped after STEP_TIMEOUT_S seconds (default 1800; a stopped step's status is 124).
#
#   bench/gpu_check.sh [WORKDIR]        (default artifacts/gpu_check; USERS / PRODUCTS override sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${1:-artifacts/gpu_check}
USERS=${USERS:-20000}
PRODUCTS=${PRODUCTS:-20000}
STEP_TIMEOUT_S=${STEP_TIMEOUT_S:-1800}

# Whether there is a GPU, from the hardware's side as well as torch's: torch's CPU build sees no
# CUDA device on a GPU machine, which is no reason to report success.
set +e
$PY - <<'PY'
import glob
import json
import shutil
import subprocess
import sys

import torch

from ncf.device import gpu_build_missing

out = {"benchmark": "gpu_check", "step": "precheck", "torch": torch.__version__}
smi, listed, smi_error = shutil.which("nvidia-smi"), 0, None
if smi:
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            listed = sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))
        else:
            smi_error = f"exit status {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as failed:
        smi_error = repr(failed)
device_files = len(glob.glob("/dev/nvidia[0-9]*"))
torch_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
out.update(
    nvidia_smi=smi, nvidia_smi_gpus=listed, dev_nvidia_files=device_files, torch_cuda_gpus=torch_gpus
)
if not (listed or device_files or torch_gpus or smi_error):
    out.update(cuda=False, gpu=False, note="no GPU here: nothing run")
    print(json.dumps(out), flush=True)
    sys.exit(3)
missing = gpu_build_missing(training=True)
known = bool(listed or device_files or torch_gpus)
if smi_error and not known:  # a GPU whose driver does not answer, or none: no success to report either way
    reason = f"nvidia-smi -L failed ({smi_error}): a GPU may be here that its driver does not answer"
    reason += f"; and {missing}" if missing else ""
elif missing:
    reason = f"a GPU is present but {missing}: install the CUDA builds (make setup ACCEL=cuda)"
elif not torch_gpus:
    reason = "a GPU is present but torch's CUDA build sees none (torch.cuda.is_available() is False: the driver?)"
else:
    reason = None
if reason:
    out.update(cuda=False, gpu=True if known else None, error=reason)
    print(json.dumps(out), flush=True)
    sys.exit(2)
out.update(cuda=True, gpu=True, gpus=torch_gpus)
print(json.dumps(out), flush=True)
PY
rc=$?
set -e
case $rc in
    0) ;;
    3) exit 0 ;;  # no GPU at all: nothing to check
    *) exit "$rc" ;;
esac
gpus=$($PY -c "import torch; print(torch.cuda.device_count())")
mkdir -p "$WORK/logs"
: >"$WORK/logs/steps.jsonl"  # this run's step lines, which the summary reads

# step NAME COMMAND...: runs COMMAND with its output in $WORK/logs/NAME.{out,err} and prints one
# JSON line; a failed step ends the script with its status, after the end of its stderr.
step() {
    local name=$1
    shift
    local started rc
    started=$(date +%s.%N)
    set +e
    timeout -k 10 "$STEP_TIMEOUT_S" "$@" >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err"
    rc=$?
    set -e
    $PY -c 'import json, sys, time
name, rc, started, logs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print(json.dumps({"benchmark": "gpu_check", "step": name, "rc": rc, "seconds": round(time.time() - started, 1),
                  "logs": f"{logs}/{name}.out, .err"}), flush=True)' "$name" "$rc" "$started" "$WORK/logs" |
        tee -a "$WORK/logs/steps.jsonl"
    if [ "$rc" -ne 0 ]; then
        tail -n 30 "$WORK/logs/$name.err" >&2
        exit "$rc"
    fi
}

step preprocess $PY -m jobs.preprocess --dataset synthetic --synthetic-users "$USERS" \
    --synthetic-products "$PRODUCTS" --output "$WORK/data" --overwrite
for workers in 1 2; do
    if [ "$workers" -gt "$gpus" ]; then
        echo "{\"benchmark\": \"gpu_check\", \"step\": \"train_w$workers\", \"skipped\": \"$gpus GPU(s)\"}"
        continue
    fi
    step "train_w$workers" $PY -m jobs.train --data "$WORK/data" --output "$WORK/model-w$workers" \
        --workers "$workers" --gpu yes --epochs 1 --name "gpu-check-w$workers-$(date +%s)" --overwrite
done
step batch_score $PY -m jobs.batch_score --model "$WORK/model-w1" --data "$WORK/data" --output "$WORK/scores" \
    --gpu yes
step gpu_model $PY -m bench.gpu_model --model "$WORK/model-w1" --data "$WORK/data" --users 5000 --no-compile
$PY - "$WORK" "$gpus" <<'PY'
import json
import os
import sys

work, gpus = sys.argv[1], int(sys.argv[2])
logs = os.path.join(work, "logs")
steps = {}
for line in open(os.path.join(logs, "steps.jsonl")):
    record = json.loads(line)
    steps[record["step"]] = record


def last_line(name):
    lines = open(os.path.join(logs, f"{name}.out")).read().strip().splitlines()
    return json.loads(lines[-1])


out = {"benchmark": "gpu_check", "cuda": True, "gpus": gpus}
out["step_seconds"] = {name: record["seconds"] for name, record in steps.items()}
out["batch_job_seconds"] = steps["batch_score"]["seconds"]  # the job's process, start-up included
for workers in (1, 2):
    if f"train_w{workers}" not in steps:  # skipped in this run (a model of an earlier run may be there)
        continue
    path = os.path.join(work, f"model-w{workers}", "metrics.json")
    history = json.load(open(path)).get("history", [])
    epoch = history[-1] if history else {}
    out[f"train_w{workers}"] = {
        "whole_epoch_examples_per_s": epoch.get("examples_per_s"),  # start-up included
        "steady_examples_per_s": epoch.get("steady_examples_per_s"),  # after the first step
        "first_step_seconds": epoch.get("first_step_seconds"),
        "steps": epoch.get("steps"),
        "epoch_seconds": epoch.get("epoch_seconds"),
    }
out["batch"] = last_line("batch_score")
out["gpu_model"] = last_line("gpu_model")
print(json.dumps(out))
PY
