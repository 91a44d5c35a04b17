"""jobs.train's settings checked before hours of training: GPUs for every worker, a history the
training lists hold, and numbers that mean something; each refused in one line, exit status 2."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, readline_within

from jobs.cli import exit_status
from ncf.data.features import FEATURES_VERSION
from ncf.device import gpus_within, resolve_gpu
from ncf.errors import InputError, TryLater
from ncf.jsonio import read_json, write_json

ON_AUTOSCALING = " (on a cluster that adds GPU nodes on demand, --gpu-wait SECONDS waits for them)"


def fake_data(root: str, history_length: int = 8) -> str:
    """What jobs.train checks before Ray starts: stats.json and the validated run's list folders."""
    os.makedirs(os.path.join(root, "examples", "cutoff=1"))
    write_json(
        os.path.join(root, "stats.json"),
        {
            "cutoffs": {"validated": [1]},
            "boundaries": {},
            "config": {"examples": {"history_length": history_length}},
            "features_version": FEATURES_VERSION,
        },
    )
    return root


@pytest.mark.faults
def test_gpu_yes_with_more_workers_than_gpus_is_refused():
    # Ray Train asks for a GPU per worker: short of them it waited and retried forever.
    with pytest.raises(InputError) as refused:
        resolve_gpu("yes", 1, workers=2)
    assert str(refused.value) == (
        "--gpu yes: 2 workers need a GPU each and the Ray cluster has 1; use --workers 1 or fewer, or --gpu no"
        + ON_AUTOSCALING
    )
    with pytest.raises(InputError, match="has no GPU") as refused:
        resolve_gpu("yes", 0, workers=1)
    assert exit_status(refused.value) == 2  # nothing asked the cluster for GPUs: fix the command
    # After --gpu-wait the autoscaler's GPUs may still come: exit 75, try later.
    with pytest.raises(TryLater, match=r"has no GPU; use --gpu no \(after waiting 60 s for them\)"):
        resolve_gpu("yes", 0, workers=1, waited_s=60)
    assert resolve_gpu("yes", 2, workers=2)


def test_gpu_auto_trains_on_cpu_when_the_gpus_are_too_few_and_says_why(capsys):
    assert not resolve_gpu("auto", 1, workers=2)
    assert capsys.readouterr().err.strip() == (
        "[gpu] --gpu auto: 2 workers need a GPU each and the Ray cluster has 1; running on CPU"
    )
    assert resolve_gpu("auto", 2, workers=2) and not resolve_gpu("auto", 0, workers=2)
    assert capsys.readouterr().err == ""  # no GPU at all is the ordinary CPU run
    assert not resolve_gpu("no", 4, workers=1)


@pytest.mark.faults
def test_gpus_without_the_cuda_builds_run_on_cpu_or_are_refused(monkeypatch, capsys):
    """A CUDA machine set up with a plain `make setup` has fbgemm-gpu-cpu (and, where pip finds it,
    torch's CPU build): Ray counts its GPUs, and --gpu auto trained there, every worker failing on
    its first step (a helper's review); batch scoring's GPU actors failed alike."""
    import torch

    from ncf import device
    from ncf.device import fbgemm_cuda_build, gpu_build_missing, gpus_usable, torch_cuda_build

    assert isinstance(fbgemm_cuda_build(), bool) and isinstance(torch_cuda_build(), bool)  # what `make setup` installed
    monkeypatch.setattr(torch.version, "cuda", None)  # torch's CPU build
    assert gpu_build_missing(training=False).startswith("torch is installed as its CPU build")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(device, "fbgemm_cuda_build", lambda: False)
    assert gpu_build_missing(training=False) is None  # scoring needs no fbgemm kernels
    assert gpu_build_missing(training=True).startswith("fbgemm is installed as its CPU build")
    monkeypatch.setattr(device, "fbgemm_cuda_build", lambda: True)
    assert gpu_build_missing(training=True) is None
    assert gpus_usable("auto", None, 1) and not gpus_usable("no", None, 1)
    fbgemm = "fbgemm is installed as its CPU build (fbgemm-gpu-cpu), without the CUDA kernels"
    assert not gpus_usable("auto", fbgemm, 0)
    assert capsys.readouterr().err == ""  # a CPU cluster: the ordinary run, nothing to say
    assert not gpus_usable("auto", fbgemm, 2)
    said = capsys.readouterr().err.strip()
    assert said.startswith("[gpu] --gpu auto: fbgemm is installed as its CPU build") and "running on CPU" in said
    with pytest.raises(InputError, match=r"--gpu yes: fbgemm is installed as its CPU build .*make setup ACCEL=cuda"):
        gpus_usable("yes", fbgemm, 2)


@pytest.mark.faults
def test_a_training_worker_given_a_gpu_torch_cannot_use_is_one_line(monkeypatch):
    """A node whose NVIDIA driver is older than torch's CUDA: Ray counts its GPU and Train asks for
    NCCL, while its device fell back to the CPU; the run failed at its first collective with a
    traceback, retried twice (a review of the GPU paths, 2026-12-07). Scoring refused it already."""
    import inspect

    import torch

    from ncf import device
    from ncf.device import check_gpu_usable
    from ncf.train import loop

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(device, "fbgemm_cuda_build", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"was given a GPU but torch cannot use one .*driver.*train with --gpu no"):
        check_gpu_usable("train with --gpu no", training=True)
    source = inspect.getsource(loop.setup_worker)
    assert source.index("check_gpu_usable(") < source.index("get_device()")  # asked before the device is used
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # A GPU node set up with the CPU builds (cluster.yaml installs them on CPU nodes: the driver on
    # the head no longer judges the GPU nodes' builds by its own).
    monkeypatch.setattr(device, "fbgemm_cuda_build", lambda: False)
    with pytest.raises(
        InputError, match=r"fbgemm is installed as its CPU build .*make setup ACCEL=cuda, or train with --gpu no"
    ):
        check_gpu_usable("train with --gpu no", training=True)
    check_gpu_usable("score with --gpu no")  # scoring needs torch's CUDA alone
    monkeypatch.setattr(device, "fbgemm_cuda_build", lambda: True)
    check_gpu_usable("train with --gpu no", training=True)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(InputError, match=r"torch is installed as its CPU build .*make setup ACCEL=cuda"):
        check_gpu_usable("score with --gpu no")


@pytest.mark.faults
def test_a_driver_on_a_node_without_gpus_leaves_the_gpu_builds_to_the_gpu_nodes(ray_session, monkeypatch):
    """cluster.yaml installs the CPU builds on its CPU head and workers (the CUDA fbgemm-gpu cannot
    load without an NVIDIA driver: every TorchRec import there failed). A job's driver on the head
    judged the GPU nodes by its own builds: --gpu auto would never train on them, --gpu yes was
    refused. Joined to a cluster from a node without GPUs, it leaves them to each GPU worker."""
    from ncf import device

    monkeypatch.setattr(device, "torch_cuda_build", lambda: False)
    assert not device.gpus_on_other_nodes()  # a laptop's own cluster: its builds are the workers'
    assert device.gpu_build_missing(training=True) == "torch is installed as its CPU build (torch.version.cuda is None)"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a cluster joined; this node holds no GPU
    assert device.gpus_on_other_nodes() and device.gpu_build_missing(training=True) is None


@pytest.mark.faults
def test_a_build_without_cuda_is_refused_before_gpu_wait_and_a_local_cluster_is_not_waited_for(
    ray_session, monkeypatch, capsys
):
    """--gpu yes --gpu-wait 900 with fbgemm's CPU build asked the autoscaler for GPU nodes, waited,
    then exited 75 (try later) for what no retry mends; on the job's own local cluster, which has
    no autoscaler, it waited the whole 900 s (a review, 2026-12-05)."""
    import argparse

    from jobs.cli import training_on_gpu
    from ncf import device

    def no_wait(*args, **kwargs):
        raise AssertionError("waited for GPUs")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(device, "gpus_within", no_wait)
    monkeypatch.setattr(device, "gpu_build_missing", lambda training: "torch is installed as its CPU build")
    with pytest.raises(InputError, match="--gpu yes: torch is installed as its CPU build"):
        training_on_gpu(argparse.Namespace(gpu="yes", gpu_wait=900.0), workers=1)
    assert not training_on_gpu(argparse.Namespace(gpu="auto", gpu_wait=900.0), workers=1)

    monkeypatch.undo()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(device, "gpu_build_missing", lambda training: None)  # as on a CUDA machine
    monkeypatch.setattr(device, "cluster_gpus", lambda: 0)  # a machine with GPUs counts them in the session's cluster
    started = time.monotonic()
    with pytest.raises(InputError, match="--gpu yes: the Ray cluster has no GPU; use --gpu no$"):
        training_on_gpu(argparse.Namespace(gpu="yes", gpu_wait=900.0), workers=1)  # no advice to --gpu-wait
    assert time.monotonic() - started < 30
    assert "this job's own local cluster has no autoscaler to add GPUs; not waiting" in capsys.readouterr().err


# A local Ray cluster that declares one (logical) GPU: Ray counts it without CUDA.
ONE_GPU_CLUSTER = """
import sys
import ray
ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, configure_logging=False)
from ncf import device
device.gpu_build_missing = lambda training: None  # as on a CUDA machine: the GPUs' count is what is checked
from jobs import train
train.main(sys.argv[1:])
"""


@pytest.mark.faults
def test_train_with_more_workers_than_the_clusters_gpus_ends_in_one_line(tmp_path):
    data = fake_data(str(tmp_path / "data"), history_length=20)
    argv = ["--data", data, "--output", str(tmp_path / "model"), "--workers", "2", "--gpu", "yes"]
    done = subprocess.run(
        [sys.executable, "-c", ONE_GPU_CLUSTER, *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --gpu yes: 2 workers need a GPU each and the Ray cluster has 1; use --workers 1 or fewer, or --gpu no"
        + ON_AUTOSCALING
    )
    assert "[gpu] waiting" not in done.stderr  # --gpu-wait 0, the default: the GPUs already up


@pytest.mark.faults
def test_a_gpu_worker_with_torchs_cpu_build_ends_in_one_line(small_data, tmp_path):
    """A GPU node set up with torch's CPU build (cluster.yaml's CPU nodes have it, and the driver on
    the head leaves the GPU nodes' builds to them): Ray Train starts NCCL for GPU workers before
    the training function, and its node check, run; this CPU torch has no NCCL, as such a node's."""
    data = small_data[0]
    argv = ["--data", data, "--output", str(tmp_path / "model"), "--workers", "1", "--gpu", "yes", "--epochs", "1"]
    argv += ["--model-config", '{"history_length": 8}', "--storage", str(tmp_path / "runs")]
    done = subprocess.run(
        [sys.executable, "-c", ONE_GPU_CLUSTER, *argv], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    # Ray forwards its actors' last log lines after the job's own line, from a thread of its own
    # (a forwarded line cut short may precede it on the same line): the job's line, wherever it is.
    said = [line[line.index("error: ") :] for line in done.stderr.splitlines() if "error: training failed" in line]
    assert done.returncode == 2 and len(said) == 1, (done.returncode, done.stderr[-3000:])
    (last,) = said
    assert last.startswith("error: training failed") and "torch's CPU build on a GPU node" in last, last
    assert "make setup ACCEL=cuda, or train with --gpu no" in last, last
    assert not (tmp_path / "model").exists()


@pytest.mark.faults
def test_gpu_wait_asks_the_autoscaler_and_withdraws_the_request(ray_session):
    # A cluster.yaml cluster starts with no GPU node: counting at once refused --gpu yes there.
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    lines = []
    started = time.monotonic()
    assert gpus_within(2, wait_s=0.5, log=lines.append, poll_s=0.1) == 0  # this cluster never gets one
    assert 0.5 <= time.monotonic() - started < 10
    assert lines == [
        "[gpu] waiting up to 0.5 s for 2 GPUs (the cluster has 0): asked the autoscaler",
        "[gpu] the cluster has 0 GPUs",
    ]
    # Withdrawn: a standing request would keep idle GPU nodes up after the job. (Autoscaler v2
    # takes requests over GCS RPC, not this channel.)
    if not is_autoscaler_v2():
        assert json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)) == []
    assert gpus_within(2, wait_s=0, log=lines.append) == 0 and len(lines) == 2


# gpus_within in a process of its own, with the cluster's GPU count and the autoscaler's request
# recorded instead of reached: what is tested is the process's signal handling.
WAITING_FOR_GPUS = """
import sys
import ray.autoscaler.sdk
from ncf import device
device.cluster_gpus = lambda: 0
ray.autoscaler.sdk.request_resources = lambda bundles: print("request", len(bundles), flush=True)
device.gpus_within(2, wait_s=60, poll_s=0.2)
"""


@pytest.mark.faults
def test_a_job_stopped_while_waiting_for_gpus_withdraws_its_request():
    # `ray job stop` sends SIGTERM, whose default handling skipped the finally that withdraws it:
    # the autoscaler kept the GPU nodes up.
    waiting = subprocess.Popen(
        [sys.executable, "-c", WAITING_FOR_GPUS], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert readline_within(waiting.stdout).startswith("[gpu] waiting up to 60 s for 2 GPUs")
        assert readline_within(waiting.stdout).strip() == "request 2"
        waiting.send_signal(signal.SIGTERM)
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert out.strip().splitlines() == ["request 0"], (out, err)
    assert waiting.returncode == 128 + signal.SIGTERM, err


def _one_line_exit(argv, monkeypatch, capsys) -> str:
    """jobs.train's error line for ``argv``, after checking it exits 2 before Ray starts."""
    from jobs import train

    monkeypatch.setattr(train, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.faults
def test_a_longer_history_than_the_lists_hold_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys):
    # Every worker's first batch raised, and Ray Train retried them, a traceback at the end.
    data = fake_data(str(tmp_path / "data"), history_length=8)
    argv = ["--data", data, "--output", str(tmp_path / "model")]
    line = _one_line_exit([*argv, "--model", '{"history_length": 12}'], monkeypatch, capsys)
    assert line == (
        f"error: {data}: history_length 12 (--model-config) is more than the 8 history purchases its training lists "
        "hold; pass --model-config '{\"history_length\": 8}' or preprocess with --history-length 12"
    )
    assert "history_length 20 (the model's default)" in _one_line_exit(argv, monkeypatch, capsys)


@pytest.mark.faults
@pytest.mark.parametrize(
    "job, option, value, message",
    [
        ("train", "--workers", "0", "must be 1 or more, not 0"),  # divided by zero sharing the CPUs
        ("train", "--workers", "-2", "must be 1 or more, not -2"),
        ("train", "--epochs", "0", "must be 1 or more, not 0"),  # no epoch, so no checkpoint to export
        ("train", "--patience", "0", "must be 1 or more, not 0"),
        ("train", "--batch-size", "0", "must be 1 or more, not 0"),
        ("train", "--val-users", "-5", "must be 0 or more, not -5"),
        ("train", "--max-steps-per-epoch", "-1", "must be 0 or more, not -1"),
        ("train", "--seed", "-1", "must be 0 or more, not -1"),  # numpy's generators take no negative seed
        ("train", "--workers", "two", "'two' is not a whole number"),
        ("tune_sweep", "--trials", "0", "must be 1 or more, not 0"),
        ("tune_sweep", "--workers", "0", "must be 1 or more, not 0"),
        ("tune_sweep", "--concurrent", "-1", "must be 0 or more, not -1"),
        ("tune_sweep", "--gpu-wait", "-1", "must be 0 or more, not -1"),
        ("tune_sweep", "--gpu-wait", "nan", "must be 0 or more, not nan"),
        ("train", "--gpu-wait", "inf", "must be a number of seconds, not inf"),  # waits for a bound
        ("tune_sweep", "--epochs", "0", "must be 1 or more, not 0"),
        ("tune_sweep", "--batch-size", "0", "must be 1 or more, not 0"),
        ("tune_sweep", "--val-users", "-5", "must be 0 or more, not -5"),
        ("tune_sweep", "--seed", "-1", "must be 0 or more, not -1"),
    ],
)
def test_counts_that_mean_nothing_are_refused_by_the_parser(job, option, value, message, capsys):
    module = importlib.import_module(f"jobs.{job}")
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--data", "d", "--output", "o", option, value])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m jobs.{job}: error: argument {option}: {message}"
    )


def test_zero_keeps_its_meaning_where_it_has_one():
    from jobs import train

    args = train.parse_args(["--data", "d", "--output", "o", "--val-users", "0", "--max-steps-per-epoch", "0"])
    assert args.val_users == 0 and args.max_steps_per_epoch == 0  # every household; the whole split


@pytest.mark.faults
def test_lists_and_checkpoints_of_another_features_version_are_refused_by_every_trainer(tmp_path):
    """jobs.evaluate fitted the boosted ranker on lists of any version, and a reused --name
    resumed weights learnt on the previous feature definitions: both now one line."""
    from ncf.data.examples import check_features_version
    from ncf.evaluate.baselines.boosted import training_lists
    from ncf.train.checkpoint import check_same_features
    from ncf.train.config import TrainConfig
    from ncf.train.trainer import fit

    old = fake_data(str(tmp_path / "old"))
    stats = os.path.join(old, "stats.json")
    write_json(stats, {k: v for k, v in read_json(stats).items() if k != "features_version"})
    message = f"features version 1, this code computes version {FEATURES_VERSION}; run python -m jobs.preprocess"
    for refused in (
        lambda: check_features_version(old),
        lambda: training_lists(old, [1]),  # the boosted ranker's and bench.feature_mlp's lists
        lambda: fit(TrainConfig(data=old)),  # before Ray starts
    ):
        with pytest.raises(InputError, match=message):
            refused()
    check_features_version(fake_data(str(tmp_path / "new")))
    check_same_features("RUN", FEATURES_VERSION)
    for saved in (None, 1):  # None: a checkpoint written before they recorded it
        with pytest.raises(InputError, match="checkpoint in RUN was trained on features version 1.*new --name"):
            check_same_features("RUN", saved)

    # A sweep's trials, checked before a resume; and the export of any checkpoint.
    from ray.train import Checkpoint

    from ncf.train.checkpoint import RAY_INDEX, TRAIN_STATE, check_features_of_runs, export_model_dir

    trials = tmp_path / "sweep" / "train"
    for trial, version in (("trial-a", FEATURES_VERSION), ("trial-b", None)):
        (trials / trial / "checkpoint_000001").mkdir(parents=True)
        state = {"epoch": 1} if version is None else {"epoch": 1, "features_version": version}
        write_json(str(trials / trial / "checkpoint_000001" / TRAIN_STATE), state)
        listed = {"checkpoint_dir_name": "checkpoint_000001", "metrics": {}}
        write_json(
            str(trials / trial / RAY_INDEX), {"checkpoint_results": [listed], "latest_checkpoint_result": listed}
        )
    with pytest.raises(InputError, match=r"checkpoint in .*trial-b was trained on features version 1.*new --output"):
        check_features_of_runs(str(trials), "start the sweep again with a new --output")
    with pytest.raises(InputError, match="trained on features version 1.*train again"):
        export_model_dir(Checkpoint(str(trials / "trial-b" / "checkpoint_000001")), str(tmp_path / "m"), old, {})
    assert not (tmp_path / "m").exists()


@pytest.mark.faults
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_while_training_is_one_line_and_exit_130(ray_session, small_data, tmp_path, stop):
    """Ray Train's own Ctrl-C handler aborted the run and exited 0, what a scheduler reads as
    success, and stayed installed, so that Ctrl-C while the test weeks were ranked did nothing twice
    (a helper's review): now one line naming the run to resume, exit 130, no model written. The run
    is aborted from the main thread: a thread left in ``ray.get`` crashed the job at exit (CI).
    SIGTERM (`ray job stop`) during the training ended it with status 1 and not a word (Ray turns
    a SystemExit raised inside its wait into one of status 1; a review of the jobs, 2026-12-08)."""
    data, _ = small_data
    output, log = tmp_path / "model", tmp_path / "train.log"
    command = [sys.executable, "-m", "jobs.train", "--data", data, "--output", str(output), "--epochs", "3"]
    command += ["--name", "interrupted", "--storage", str(tmp_path / "runs"), "--model-config", '{"history_length": 8}']
    address = ray_session.get_runtime_context().gcs_address  # the session's cluster: no second one on 2 cores
    env = {**os.environ, "RAY_ADDRESS": address, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        job = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and job.poll() is None and "[train] starting run" not in log.read_text():
            time.sleep(0.5)
        assert job.poll() is None, log.read_text()[-3000:]
        # Into Ray Train's fit, its controller handed over: a worker has built its model (a fixed
        # sleep could signal before, on a loaded machine, and the job said another line).
        while time.time() < deadline and job.poll() is None and "embedding tables on fused" not in log.read_text():
            time.sleep(0.5)
        assert job.poll() is None, log.read_text()[-3000:]
        job.send_signal(getattr(signal, stop))
        assert job.wait(timeout=120) == (130 if stop == "SIGINT" else 143), log.read_text()[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
    said = (
        "training interrupted (Ctrl-C); its checkpoints are kept"
        if stop == "SIGINT"
        else "stopped (SIGTERM); the checkpoints are kept"
    )
    assert (
        f"error: {said}: run the same command with --name interrupted to resume from them"
    ) in log.read_text().splitlines(), log.read_text()[-3000:]
    if stop == "SIGINT":  # Ray may still forward a line of the stopped run's controller after the job's own
        assert "[train] Ctrl-C: aborting the run (up to 60 s)" in log.read_text(), "the run's controller was not kept"
    assert not output.exists()


@pytest.mark.faults
def test_a_storage_uri_is_left_to_ray_and_a_path_made_absolute():
    from ncf.train.trainer import storage_location

    assert storage_location("s3://bucket/ray_results") == "s3://bucket/ray_results"  # was <cwd>/s3:/bucket/...
    assert storage_location("runs") == os.path.abspath("runs") and storage_location(None) is None


@pytest.mark.faults
def test_training_lists_are_found_under_a_data_path_with_glob_characters(ray_session, small_data, tmp_path):
    """A DATA at `d [2017]` was preprocessed, then training found no lists in it: the path was a
    glob pattern (a review, 2026-12-05)."""
    import shutil

    from ncf.data import layout
    from ncf.train.trainer import training_lists

    data = str(tmp_path / "d [2017]")
    shutil.copytree(small_data[0], data)
    cutoffs = layout.DataStats(data).cutoffs("validated")
    lists = training_lists([layout.examples_dir(data, c) for c in cutoffs], seed=0)
    assert lists.count() > 0


@pytest.mark.faults
def test_ray_trains_sigint_hook_is_where_ctrl_c_handling_replaces_it():
    """jobs.train replaces Ray Train's SIGINT-handler hook (Ray's handler aborts, then exits 0):
    a Ray release that moves it would bring that handler back (the job says so, and trains)."""
    from ray.train.torch import TorchTrainer

    from ncf.train.trainer import SIGINT_HOOK

    assert callable(getattr(TorchTrainer, SIGINT_HOOK, None))


@pytest.mark.faults
def test_a_workers_failure_is_one_line_and_its_refusal_the_refusal():
    """Ray Train wraps what its workers raise in a ``WorkerGroupError`` after its retries, and
    ``jobs.train`` ended in that traceback (exit 1): a worker's refusal of a resumed checkpoint
    (another run's under a URI --storage the driver cannot read, a damaged one) among them, whose
    one line and exit 2 README promises (the training review, 2026-12-06)."""
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from ncf.train.trainer import TrainingFailed, training_failure

    refusal = InputError("the checkpoint s3://b/run/checkpoint_1 is damaged; give this training a new --name")
    wrapped = WorkerGroupError("rank 1 failed:\nTraceback ...", {0: ValueError("other\nlines"), 1: refusal})
    assert training_failure(wrapped) is refusal and exit_status(training_failure(wrapped)) == 2
    crashed = training_failure(WorkerGroupError("...", {1: RuntimeError("CUDA out of memory.\nTried to allocate")}))
    assert isinstance(crashed, TrainingFailed) and "\n" not in str(crashed)
    assert str(crashed) == "training failed on worker 1 (RuntimeError: CUDA out of memory.) after Ray Train's retries"
    controller = training_failure(ControllerError(OSError("storage unreachable")))
    assert isinstance(controller, TrainingFailed) and "(OSError: storage unreachable)" in str(controller)
    assert training_failure(KeyError("this code's own bug")) is None  # its traceback stays
    # A GPU node set up with torch's CPU build: Ray Train starts NCCL before the worker's own build
    # check runs (cluster.yaml's CPU nodes have that build; a review, 2026-12-07).
    try:
        try:
            raise RuntimeError("Distributed package doesn't have NCCL built in")
        except RuntimeError as e:
            raise ControllerError(RuntimeError("worker group failed to start")) from e
    except ControllerError as started:
        no_nccl = training_failure(started)
    assert isinstance(no_nccl, InputError) and exit_status(no_nccl) == 2
    assert "torch's CPU build on a GPU node" in str(no_nccl) and "make setup ACCEL=cuda" in str(no_nccl)


@pytest.mark.faults
def test_the_train_job_says_a_workers_failure_in_one_line(tmp_path, monkeypatch, capsys):
    """The job's wiring of :func:`training_failure` (a second reading: its helper's test passed
    with the job's handler removed): a refusal exits 2, a worker's crash 1, each one line."""
    import contextlib

    from ray.train.v2.api.exceptions import WorkerGroupError

    from jobs import train

    for name, value in {
        "check_store_outlives_the_job": lambda: None,
        "check_target": lambda *args: None,
        "check_data": lambda *args, **kwargs: None,
        "check_history_length": lambda *args: None,
        "init_ray": lambda *args, **kwargs: None,
        "training_slot": lambda what: contextlib.nullcontext(),
        "training_on_gpu": lambda *args, **kwargs: False,
    }.items():
        monkeypatch.setattr(train, name, value)
    argv = ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "model"), "--name", "r1"]
    for error, status, says in [
        (WorkerGroupError("...", {0: InputError("the checkpoint c1 is damaged")}), 2, "the checkpoint c1 is damaged"),
        (WorkerGroupError("...", {0: MemoryError("out of memory")}), 1, "training failed on worker 0 (MemoryError"),
    ]:
        monkeypatch.setattr(train, "train_evaluate_register", lambda plan, error=error: (_ for _ in ()).throw(error))
        with pytest.raises(SystemExit) as exit_info:
            train.main(argv)
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == status and line.startswith(f"error: {says}"), line
    # A full disk at the export, after the training (a review, 2026-12-07): one line naming the
    # file and how the kept checkpoints export without training again; a bug's OSError keeps its traceback.
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model" / "model.pt"))
    monkeypatch.setattr(train, "train_evaluate_register", lambda plan: (_ for _ in ()).throw(full))
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and line.startswith(f"error: {tmp_path}/model/model.pt: ENOSPC: No space left"), (
        line
    )
    assert "checkpoints are kept under" in line and line.endswith(
        "--name r1 resumes from them (a finished training is exported without training again)"
    )
    monkeypatch.setattr(train, "train_evaluate_register", lambda plan: (_ for _ in ()).throw(FileNotFoundError("x")))
    with pytest.raises(FileNotFoundError):
        train.main(argv)
