"""Sweeps: the search space, resume settings, and a sweep interrupted on a laptop and resumed with
`ray job submit` on a cluster started with `ray start --head`."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest
import requests
from helpers import REPO, free_ports

from ncf import registry
from ncf.data import layout
from ncf.errors import InputError
from ncf.jsonio import read_json, write_json
from ncf.model.directory import read_config
from ncf.rank.recommender import Recommender
from tune.search_space import SEARCHED, data_limits, default_point, mlp_tower, search_space
from tune.settings import SweepSettings

HEAD_START_TRIES = 3


@contextlib.contextmanager
def head_node():
    """`ray start --head --block` on 127.0.0.1 with its own ports and temp dir; SIGTERM to the
    blocking process stops exactly this cluster (`ray stop` would stop every Ray on the machine).
    Yields the job API's address and the environment to submit with."""
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths have a length limit
    log = open(os.path.join(temp_dir, "ray_start.log"), "w")
    process = None
    try:
        # The ports are free when chosen, but another process may take one before Ray binds it
        # (they are released for Ray to take): a head that exits before its dashboard answers is
        # started again on other ports.
        for _ in range(HEAD_START_TRIES):
            process, address = _start_head(temp_dir, env, log)
            if _dashboard_answers(process, address, deadline=time.time() + 90):
                break
            if process.poll() is None:
                pytest.fail("the head node's dashboard did not come up in 90 s")
            _kill_group(process)  # what a head that exited may have left of its cluster
            # Said, so that a head that crashes for another reason and then starts is seen.
            print(f"[head_node] the head exited before its dashboard answered:\n{_tail(log.name)}", file=sys.stderr)
        else:
            pytest.fail(f"the head node exited {HEAD_START_TRIES} times: " + _tail(log.name))
        yield address, env
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                process.wait(timeout=30)
        elif process is not None:
            _kill_group(process)  # the head exited during the test: what it left of its cluster
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _tail(path: str, size: int = 3000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-size:]


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start_head(temp_dir: str, env: dict, log) -> tuple:
    """The blocking `ray start --head` process on ports of its own, and its job API's address."""
    # Every port of its own: the session's cluster (and any other Ray on the machine) already
    # holds the defaults, and a dashboard agent that cannot bind leaves no agent to take jobs.
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics = free_ports(7)
    command = [
        os.path.join(os.path.dirname(sys.executable), "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--num-cpus",
        "2",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(runtime_env),
        "--metrics-export-port",
        str(metrics),
        "--temp-dir",
        temp_dir,
        "--disable-usage-stats",
    ]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{dashboard}"


def _dashboard_answers(process: subprocess.Popen, address: str, deadline: float) -> bool:
    """Whether the job API answers before ``deadline``; False at once when the head exits."""
    while time.time() < deadline and process.poll() is None:
        try:
            if requests.get(f"{address}/api/version", timeout=2).status_code < 500:
                return True
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(1)
    return False


@pytest.mark.faults
def test_a_moved_sweep_exports_its_winner_from_where_it_is_now(tmp_path):
    """Tune records each epoch's checkpoint by its absolute path then: a sweep moved and resumed
    exported SWEEP/best from where it had been (gone: every --resume failed; or an old copy)."""
    from tune.results import checkpoint_in

    recorded = "/old/place/sweep/train/trial_00001/checkpoint_000002"
    here = str(tmp_path / "moved" / "train")
    assert checkpoint_in(here, recorded) == os.path.join(here, "trial_00001", "checkpoint_000002")
    assert checkpoint_in(here, recorded + "/") == os.path.join(here, "trial_00001", "checkpoint_000002")


def test_search_space_points_are_valid_models():
    from ray.tune.search.sample import Categorical

    from ncf.model.advanced_ncf import ModelConfig

    limits = {"history_length": 8}
    space = search_space(limits)
    assert set(space) == set(SEARCHED)
    assert max(space["history_length"].categories) == 8  # never more than the examples hold
    # Lists stored longer than every choice add their length as a choice (documented in README).
    assert search_space({"history_length": 50})["history_length"].categories == [5, 10, 20, 50]
    dims = [c for name in ("mf_embedding_dim", "mlp_embedding_dim") for c in space[name].categories]
    for heads in space["num_heads"].categories:
        for dim in dims:  # every combination builds
            ModelConfig(
                num_users=2, num_products=2, num_departments=2, num_categories=2, mlp_embedding_dim=dim, num_heads=heads
            )
    default = default_point(limits)
    for name, domain in space.items():
        if isinstance(domain, Categorical):
            assert default[name] in domain.categories, name
    assert mlp_tower(3, 64) == [64, 32, 16]


@pytest.mark.faults
def test_a_sweep_resumed_with_other_settings_is_refused_in_one_line(small_data, tmp_path):
    # Tune restores the trial count it was started with: resumed with another --trials, every
    # resume ended "interrupted" and the sweep never wrote its results.
    data = str(tmp_path / "data")
    shutil.copytree(small_data[0], data)
    started = SweepSettings(data=data, output=str(tmp_path / "sweep"), trials=4)
    SweepSettings(data=started.data, output=started.output, trials=8).check_resumes()  # nothing recorded yet
    started.record()
    started.check_resumes()
    SweepSettings(data=started.data, output=started.output, trials=4, concurrent=3).check_resumes()  # Tune's: below
    with pytest.raises(InputError) as refused:
        SweepSettings(data=started.data, output=started.output, trials=8, epochs=3).check_resumes()
    message = str(refused.value)
    assert (
        "\n" not in message
        and "--trials 4 there, --trials 8 here" in message
        and "--epochs 2 there, --epochs 3 here" in message
    )
    with pytest.raises(InputError, match="--gpu no there, --gpu yes here"):
        SweepSettings(data=started.data, output=started.output, trials=4, use_gpu=True).check_resumes()
    # Without --refit a resumed sweep would register its validated winner as deployable.
    refitting = SweepSettings(data=started.data, output=str(tmp_path / "refit-sweep"), trials=4, refit=True)
    refitting.record()
    with pytest.raises(InputError, match="--refit there, no --refit here"):
        SweepSettings(data=started.data, output=refitting.output, trials=4).check_resumes()
    # DATA preprocessed again in place with other list settings keeps its path and vocabularies:
    # the finished trials would share a table with trials of the new lists (a review, 2026-12-05).
    stats = read_json(layout.stats_path(data))
    stats["config"]["examples"]["seed"] = stats["config"]["examples"].get("seed", 0) + 1
    write_json(layout.stats_path(data), stats)
    with pytest.raises(InputError, match=r"preprocessed again since .*sweep started \(its training lists differ\)"):
        started.check_resumes()
    # While the sweep ran (a nightly preprocessing into the DATA a sweep of hours reads): each
    # trial read DATA afresh, so later trials trained on the new lists beside the earlier ones'
    # (a review of tune/, 2026-12-08). A trial refuses before it trains; so do the results.
    from tune.trial import train_trial

    with pytest.raises(InputError, match=r"preprocessed again while the sweep ran \(its training lists differ\)"):
        train_trial({}, started, 1.0, 1)
    # A sweep an older version started recorded no digests: resumed as before.
    from tune.settings import DATA_DIGESTS

    write_json(started.settings_path, {k: v for k, v in read_json(started.settings_path).items() if k != DATA_DIGESTS})
    started.check_resumes()
    # Code that changed the search space (Tune samples a resumed sweep's new trials from the space
    # it pickled: a new dimension failed each of them, then the table; a review, 2026-12-07).
    import tune.search_space as space

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(space, "MLP_WIDTHS", [*space.MLP_WIDTHS, 512])
        with pytest.raises(InputError, match="started by code with another search space.*new --output"):
            started.check_resumes()
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(space, "mlp_tower", lambda depth, width: [width] * depth)  # another tower rule
        with pytest.raises(InputError, match="another search space"):
            started.check_resumes()
    from tune.settings import SPACE

    write_json(started.settings_path, {k: v for k, v in read_json(started.settings_path).items() if k != SPACE})
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(space, "MLP_WIDTHS", [*space.MLP_WIDTHS, 512])
        started.check_resumes()  # a sweep an older version started recorded none: resumed as before


@pytest.mark.faults
def test_asha_halves_on_epochs_and_never_stops_a_trial_at_its_last_epoch():
    from ray.tune.schedulers import TrialScheduler

    from tune.scheduler import EpochASHA
    from tune.search_space import default_point

    class Trial:  # ASHA reads a trial's id, the baseline's check its config
        def __init__(self, trial_id, config):
            self.trial_id, self.config = trial_id, config

    def reports(last_epoch, results, baseline=None):
        scheduler = EpochASHA(last_epoch, baseline)
        scheduler.set_search_properties("score", "max")
        trials = {}
        actions = []
        for trial_id, epoch, score in results:
            if trial_id not in trials:
                trials[trial_id] = Trial(trial_id, points.get(trial_id, {}))
                scheduler.on_trial_add(None, trials[trial_id])
            # Tune's own count restarts at 1 for a trial resumed from its checkpoint: not the clock.
            result = {"epoch": epoch, "score": score, "training_iteration": 1}
            actions.append(scheduler.on_trial_result(None, trials[trial_id], result))
        return actions

    points = {}
    stop, go = TrialScheduler.STOP, TrialScheduler.CONTINUE
    # 2 epochs (the default) is a rung: below its cutoff at the last epoch, b still ends by itself.
    assert reports(2, [("a", 1, 0.5), ("a", 2, 0.6), ("b", 1, 0.55), ("b", 2, 0.3)]) == [go, go, go, go]
    # Before the last epoch, a trial below the rung's cutoff stops.
    assert reports(4, [("a", 1, 0.5), ("a", 2, 0.6), ("b", 1, 0.55), ("b", 2, 0.3)]) == [go, go, go, stop]
    # A trial resumed at epoch 3 is compared at the rungs it reaches by its epochs.
    assert reports(4, [("a", 1, 0.5), ("a", 2, 0.6), ("b", 3, 0.2)]) == [go, go, stop]
    # The defaults' trial, below a rung's cutoff, runs on: the sweep's gain is measured against it,
    # which stopped after one epoch gave a winner of four a one-epoch baseline (a review, 2026-12-07).
    default = default_point({"history_length": 50})
    points = {"d": default, "e": {**default, "learning_rate": default["learning_rate"] * 3}}
    below = [("a", 1, 0.5), ("a", 2, 0.6), ("d", 1, 0.3), ("d", 2, 0.31), ("e", 1, 0.3)]
    assert reports(4, below, baseline=default) == [go, go, go, go, stop]
    assert reports(4, below) == [go, go, stop, stop, stop]  # without it, as any trial
    # Past the rung that would have stopped it, its scores do not lower the next rungs' cutoffs:
    # f's 0.5 at epoch 2 is below a's 0.6 there, as it would be without the defaults' 0.31.
    points["f"] = {**default, "dropout": 0.25}
    later = [("a", 1, 0.5), ("a", 2, 0.6), ("d", 1, 0.3), ("d", 2, 0.31), ("f", 1, 0.55), ("f", 2, 0.5)]
    assert reports(4, later, baseline=default) == [go, go, go, go, go, stop]


@pytest.mark.faults
def test_a_sweep_whose_trials_would_starve_ray_data_is_refused(tmp_path, capsys):
    from tune.sweep import concurrency, trial_cpus, trial_threads

    assert trial_cpus(1, 2.0, resume=False) == 0.98  # the rest, one CPU, reads the lists
    assert trial_cpus(3, 2.0, resume=False) == 0.31
    # 4 trials of 0.25 CPU each (and 0.02 beside: the Tune actor's and a margin) leave 0.96, under the
    # CPU kept for Ray Data.
    with pytest.raises(InputError, match="2 CPUs cannot hold 4 trials at once .*pass --concurrent 3 or fewer"):
        trial_cpus(4, 2.0, resume=False)
    with pytest.raises(InputError, match="up to the count it started with: resume it on 2.08 CPUs or more"):
        trial_cpus(4, 2.0, resume=True)
    with pytest.raises(InputError, match="^1 CPU cannot hold 1 trial at once .*a sweep needs a cluster of 1.27 CPUs"):
        trial_cpus(1, 1.0, resume=False)
    # A read runs on one node: what the trials leave is kept at a read's share for every node.
    assert trial_cpus(2, 16.0, resume=False, nodes=8) == 6.98  # 8 nodes of 2 CPUs: 2 kept, a quarter each
    with pytest.raises(InputError, match="Ray Data's readers keep 2 CPUs"):
        trial_cpus(8, 4.0, resume=False, nodes=8)
    # 13 trials of 0.27 fit 3.51 CPUs exactly; float division had offered 12.
    assert trial_cpus(13, 4.51, resume=False) == 0.25
    with pytest.raises(InputError, match="pass --concurrent 13 or fewer"):
        trial_cpus(14, 4.51, resume=False)
    # A head of no CPUs (an autoscaler adds the workers): the least share, and a line saying so.
    assert trial_cpus(2, 0.0, resume=False) == 0.25
    assert "waiting for the cluster to reach 1.54 CPUs" in capsys.readouterr().out
    settings = SweepSettings(data=str(tmp_path / "data"), output=str(tmp_path / "sweep"), workers=2, trials=3)
    assert trial_threads(settings, 4, 16.0) == 2 and trial_threads(settings, 1, 2.0) == 1
    # Sized from the whole cluster, a trial's threads are capped by each worker at its machine's share.
    from ncf.train.config import TrainConfig
    from ncf.train.loop import usable_cpus, worker_threads

    cores = usable_cpus()
    assert worker_threads(TrainConfig(torch_threads=10 * cores), 1) == cores
    assert worker_threads(TrainConfig(torch_threads=1), 1) == 1 and worker_threads(TrainConfig(), 1) == cores
    assert concurrency(settings, {"CPU": 64.0}) == 3  # never more at once than the trials
    settings.concurrent = 5
    assert concurrency(settings, {"CPU": 2.0}) == 3


@pytest.mark.faults
def test_a_sweep_sizes_its_trials_from_the_cpus_others_leave_free(ray_session, tmp_path, monkeypatch):
    """Sized from all of the cluster's CPUs, a sweep beside two Serve replicas of 0.5 CPU each gave
    its trial's worker 0.98 of 2: 0.01 was left where each Ray Data read asks 0.25, and the trial
    hung (a review, 2026-12-06). The CPUs are held here as replicas and Ray Train hold them: actors
    and a placement group of the shared cluster."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from tune import sweep as sweep_module

    @ray_session.remote(num_cpus=0.5)
    class Replica:
        def ready(self) -> bool:
            return True

    # Bounded without the check too: a sweep past it would start a trial that hangs.
    monkeypatch.setattr(sweep_module, "_tuner", lambda *args: pytest.fail("the sweep started a trial"))
    monkeypatch.setattr(SweepSettings, "record", lambda self: None)  # it reads DATA's fingerprints
    settings = SweepSettings(data=str(tmp_path / "data"), output=str(tmp_path / "sweep"), trials=2)
    _wait_for_free_cpus(ray_session, 2.0)  # what earlier tests held is given back
    replicas = [Replica.remote() for _ in range(2)]
    group = None
    try:
        ray_session.get([replica.ready.remote() for replica in replicas], timeout=120)
        _wait_for_free_cpus(ray_session, 1.0)
        with pytest.raises(InputError) as refused:
            sweep_module.run_sweep(settings)
        message = str(refused.value)
        assert "\n" not in message and message.startswith(
            "1 free CPU (1 of the cluster's 2 held by other actors or jobs, Serve's replicas or a training: "
            "`ray list actors --detail` names them) cannot hold 1 trial at once"
        ), message
        assert message.endswith("a sweep needs 1.27 free CPUs at least; stop what holds the others, or add nodes")

        # A placement group (Ray Train's, another job's) in the replicas' place: the trial takes what it leaves.
        for replica in replicas:
            ray_session.kill(replica)
        group = placement_group([{"CPU": 0.5}], name="placeholder")
        ray_session.get(group.ready(), timeout=120)
        _wait_for_free_cpus(ray_session, 1.5)
        free, held = sweep_module.free_resources()
        assert held.startswith("0.5 of the cluster's 2 held by")
        assert sweep_module.trial_cpus(1, free["CPU"], False, 1, held) == 0.48  # 0.98 from the cluster's 2
    finally:
        for replica in replicas:
            ray_session.kill(replica)
        if group is not None:
            remove_placement_group(group)


def _wait_for_free_cpus(ray, cpus: float, wait_s: float = 60.0) -> None:
    """Until the shared cluster has ``cpus`` CPUs free: Ray's count follows actors and groups by
    moments."""
    deadline = time.time() + wait_s
    while abs(ray.available_resources().get("CPU", 0.0) - cpus) > 1e-6:
        if time.time() > deadline:
            pytest.fail(f"{cpus:g} CPUs not free after {wait_s:g} s: {ray.available_resources()}")
        time.sleep(0.2)


@pytest.mark.faults
def test_a_resume_with_other_settings_is_refused_before_ray_starts(small_data, tmp_path, monkeypatch, capsys):
    """Before, the job started Ray and waited out --gpu-wait before comparing the settings."""
    from jobs import tune_sweep

    data, _ = small_data
    SweepSettings(data=data, output=str(tmp_path / "sweep"), trials=4).record()
    os.makedirs(tmp_path / "sweep" / "tune" / "sweep")
    (tmp_path / "sweep" / "tune" / "sweep" / "experiment_state-2026-12-05_10-00-00.json").write_text(
        WHOLE_TUNE_STATE
    )  # Tune saved its state
    monkeypatch.setattr(tune_sweep, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(SystemExit) as exit_info:
        tune_sweep.main(["--data", data, "--output", str(tmp_path / "sweep"), "--trials", "8", "--resume"])
    assert exit_info.value.code == 2
    assert "--trials 4 there, --trials 8 here" in capsys.readouterr().err


@pytest.mark.faults
def test_a_sweep_started_on_cpus_resumes_with_gpu_auto_where_there_are_gpus(small_data, tmp_path, monkeypatch, capsys):
    """--gpu auto (the default) resolved afresh on a resume: a sweep started on a laptop's CPUs
    and resumed with the same command on a cluster with GPUs was refused, "--gpu no there, --gpu
    yes here; resume it with the same ones" (a review of tune/, 2026-12-07). auto goes on as the
    trials trained; an explicit --gpu is still compared."""
    from jobs import tune_sweep

    class Started(Exception):
        pass

    data, _ = small_data
    SweepSettings(data=data, output=str(tmp_path / "sweep"), trials=4, use_gpu=False).record()
    os.makedirs(tmp_path / "sweep" / "tune" / "sweep")
    (tmp_path / "sweep" / "tune" / "sweep" / "experiment_state-2026-12-05_10-00-00.json").write_text(WHOLE_TUNE_STATE)
    monkeypatch.setattr(tune_sweep, "init_ray", lambda *a, **k: (_ for _ in ()).throw(Started()))
    with pytest.raises(Started):
        tune_sweep.main(["--data", data, "--output", str(tmp_path / "sweep"), "--trials", "4", "--resume"])
    assert "--gpu auto: the sweep's trials trained on CPUs; the trials resumed do too" in capsys.readouterr().err
    assert SweepSettings(data=data, output=str(tmp_path / "sweep")).recorded("use_gpu") is False
    assert [tune_sweep.resumed_gpu("auto", on) for on in (False, True, None)] == ["no", "auto", "auto"]
    assert tune_sweep.resumed_gpu("yes", False) == "yes"  # given: compared once Ray is up, and refused
    # Trained on GPUs, too few found with --gpu auto: where to resume it, not "started with other
    # settings ... the same ones" (the same flags); after --gpu-wait on an autoscaling cluster, later.
    from types import SimpleNamespace

    from ncf import device
    from ncf.errors import TryLater

    gone = SimpleNamespace(output="SWEEP", gpu_wait=0.0)
    monkeypatch.setattr(device, "gpu_build_missing", lambda training=False: None)  # as on a CUDA build
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(
        InputError, match="SWEEP's trials trained on GPUs and this Ray cluster has too few: resume it where GPUs are$"
    ):
        tune_sweep.refuse_gpus_missing(gone)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    with pytest.raises(InputError, match=r"where GPUs are \(--gpu-wait S waits for an autoscaler"):
        tune_sweep.refuse_gpus_missing(gone)
    gone.gpu_wait = 600.0
    with pytest.raises(TryLater, match="too few came within --gpu-wait 600; try later"):
        tune_sweep.refuse_gpus_missing(gone)
    monkeypatch.setattr(device, "gpu_build_missing", lambda training=False: "fbgemm is installed as its CPU build")
    with pytest.raises(InputError, match="and fbgemm is installed as its CPU build: install the CUDA builds") as built:
        tune_sweep.refuse_gpus_missing(gone)  # no wait mends it: not try later
    assert not isinstance(built.value, TryLater)


@pytest.mark.faults
def test_a_resume_keeps_the_trials_at_once_tune_restores(tmp_path):
    from ray import tune

    from tune.sweep import check_sweep_directory, resumed_concurrency

    settings = SweepSettings(data=str(tmp_path / "data"), output=str(tmp_path / "sweep"), trials=4)
    with pytest.raises(InputError, match="--resume: no sweep to resume at"):  # said once, before Ray starts
        check_sweep_directory(settings.output, settings.data, resume=True)
    # Past that check, a tuner.pkl missing is one lost from a sweep Tune saved: not "no sweep to
    # resume", as the second check of it said (a review, 2026-12-06).
    os.makedirs(settings.experiment_dir)
    (tmp_path / "sweep" / "tune" / "sweep" / "experiment_state-2026-12-07_10-00-00.json").write_text(WHOLE_TUNE_STATE)
    with pytest.raises(InputError, match="tuner.pkl does not load \\(FileNotFoundError.*start the sweep again"):
        resumed_concurrency(settings, {"CPU": 2.0})
    # What Tune pickles when a sweep starts (sweeps of older code recorded 0 in settings.json).
    tune.Tuner(
        lambda config: None,
        tune_config=tune.TuneConfig(max_concurrent_trials=3, num_samples=4),
        run_config=tune.RunConfig(name="sweep", storage_path=settings.tune_dir),
    )
    assert resumed_concurrency(settings, {"CPU": 2.0}) == 3
    settings.concurrent = 3
    assert resumed_concurrency(settings, {"CPU": 2.0}) == 3
    settings.concurrent = 2
    with pytest.raises(InputError, match="runs 3 trials at once .* or with --concurrent 3"):
        resumed_concurrency(settings, {"CPU": 2.0})
    settings.concurrent, settings.trials = 0, 2  # never more at once than the trials
    assert resumed_concurrency(settings, {"CPU": 2.0}) == 2
    with open(os.path.join(settings.tune_dir, "sweep", "tuner.pkl"), "wb") as f:
        f.write(b"\x80")  # truncated
    with pytest.raises(InputError, match="tuner.pkl does not load .*start the sweep again with a new --output"):
        resumed_concurrency(settings, {"CPU": 2.0})
    # A module the pickle names that this Python cannot import (the sweep's code run from elsewhere,
    # a package missing from a job's environment), or a file the OS will not read: the sweep is
    # whole, and the advice to start it again was wrong (a review of tune/, 2026-12-07).
    import pickle

    with open(os.path.join(settings.tune_dir, "sweep", "tuner.pkl"), "wb") as f:
        f.write(pickle.dumps(0).replace(b"K\x00", b"cno_such_sweep_module\nthing\n"))
    with pytest.raises(InputError, match="needs the module 'no_such_sweep_module'.*where the sweep's code") as error:
        resumed_concurrency(settings, {"CPU": 2.0})
    assert "start the sweep again" not in str(error.value)
    os.chmod(os.path.join(settings.tune_dir, "sweep", "tuner.pkl"), 0)
    try:
        if os.geteuid() != 0:  # root reads it anyway
            with pytest.raises(InputError, match="cannot read .*tuner.pkl") as error:
                resumed_concurrency(settings, {"CPU": 2.0})
            assert "start the sweep again" not in str(error.value)
    finally:
        os.chmod(os.path.join(settings.tune_dir, "sweep", "tuner.pkl"), 0o644)


@pytest.mark.faults
def test_a_resume_does_not_run_failed_trials_again_beside_the_others(ray_session, tmp_path, capsys):
    """Restored with ``resume_errored``, a failed trial ran again outside Tune's trials-at-once
    limit (its limiter no longer counts it), in a CPU share sized for that limit: two trials of
    0.98 CPU on 2 CPUs left Ray Data's readers no room (a review, 2026-12-05)."""
    from ray import tune

    from tune.sweep import _tuner, saved_trials

    settings = SweepSettings(data=str(tmp_path / "data"), output=str(tmp_path / "sweep"), trials=2)
    runs = tmp_path / "runs"
    runs.mkdir()

    def trial(config):
        (runs / f"{config['x']}-{time.time_ns()}").touch()
        if config["x"] == 0:
            raise RuntimeError("this trial fails")
        tune.report({"best_val_ndcg@10": 0.5})

    tune.Tuner(
        tune.with_resources(trial, {"cpu": 0.01}),
        param_space={"x": tune.grid_search([0, 1])},
        run_config=tune.RunConfig(name="sweep", storage_path=settings.tune_dir),
    ).fit()
    assert saved_trials(settings.experiment_dir, "ERROR") == 1 and len(os.listdir(runs)) == 2
    grid = _tuner(settings, tune.with_resources(trial, {"cpu": 0.01}), resume=True).fit()
    assert len(os.listdir(runs)) == 2  # neither ran again: one had finished, the other failed
    assert sorted(r.error is not None for r in grid) == [False, True]
    assert "[sweep] 1 failed trial not run again" in capsys.readouterr().out


@pytest.mark.faults
def test_the_sweep_puts_back_the_ctrl_c_handler_tune_leaves_installed():
    """Tune's SIGINT handler stayed after ``fit``: the first Ctrl-C of the export, registration
    or refit after it only printed "ending Ray Tune run" (a review, 2026-12-05)."""
    from tune.sweep import tunes_signals

    before, usr1 = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    with tunes_signals():
        signal.signal(signal.SIGINT, lambda *args: None)  # what Tune's fit installs
        signal.signal(signal.SIGUSR1, lambda *args: None)  # and for SIGUSR1, unconditionally
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.getsignal(signal.SIGUSR1) is usr1  # a scheduler's SIGUSR1 no longer swallowed after it


@pytest.mark.faults
def test_sigterm_in_tunes_loop_stops_it_as_ctrl_c_and_a_second_one_exits():
    """The job's SIGTERM handler raised SystemExit inside Tune's loop, skipping Tune's cleanup
    (a review, 2026-12-06): SIGTERM goes to the SIGINT handler Tune installs for its loop (it puts
    back the one of before once it fires), and to the job's own before that loop and after it."""
    from tune.sweep import tunes_signals

    calls = []
    sigint_before = signal.getsignal(signal.SIGINT)

    def tunes(signum, frame):  # what Tune's handler does: stop the loop, hand Ctrl-C back
        calls.append(("tune", signum))
        signal.signal(signal.SIGINT, sigint_before)

    jobs = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(("job", signum)))
    try:
        with tunes_signals() as sigterm:
            signal.raise_signal(signal.SIGTERM)  # before Tune's loop: the job's handler
            assert calls == [("job", signal.SIGTERM)] and not sigterm.received
            signal.signal(signal.SIGINT, tunes)  # Tune's fit starts its loop
            signal.raise_signal(signal.SIGTERM)
            assert calls[1:] == [("tune", signal.SIGINT)] and sigterm.received
            signal.raise_signal(signal.SIGTERM)  # a second one: Tune's "send SIGTERM to skip"
            assert calls[2:] == [("job", signal.SIGTERM)]
        signal.raise_signal(signal.SIGTERM)
        assert calls[3:] == [("job", signal.SIGTERM)] and signal.getsignal(signal.SIGINT) is sigint_before
    finally:
        signal.signal(signal.SIGTERM, jobs)
        signal.signal(signal.SIGINT, sigint_before)


def test_a_sweep_waits_for_the_gpus_of_its_trials_at_once(tmp_path):
    """--gpu-wait asked an autoscaling cluster for one trial's GPUs, so the trials-at-once count,
    read from the GPUs up at the start, was one trial for the whole sweep (a review, 2026-12-05)."""
    from jobs.tune_sweep import gpus_at_once, parse_args

    common = ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "sweep"), "--workers", "2"]
    assert gpus_at_once(parse_args([*common, "--trials", "16", "--concurrent", "2"])) == 4
    assert gpus_at_once(parse_args([*common, "--trials", "1", "--concurrent", "2"])) == 2  # never more than the trials
    assert gpus_at_once(parse_args([*common, "--trials", "16"])) == 2  # without --concurrent: one trial's
    # A resume takes the count Tune keeps, and refuses another before the wait asks for GPU nodes.
    from ray import tune

    tune.Tuner(
        lambda config: None,
        tune_config=tune.TuneConfig(max_concurrent_trials=3, num_samples=16),
        run_config=tune.RunConfig(name="sweep", storage_path=str(tmp_path / "sweep" / "tune")),
    )
    assert gpus_at_once(parse_args([*common, "--trials", "16", "--resume"])) == 6
    with pytest.raises(InputError, match="runs 3 trials at once"):
        gpus_at_once(parse_args([*common, "--trials", "16", "--resume", "--concurrent", "2"]))
    # At most the trials left (a second read, 2026-12-07: a resume to finish the refit, which runs
    # no trial, was refused on a cluster with fewer GPUs than the sweep had started with).
    from tune import sweep as sweep_module

    for finished, gpus in ((15, 2), (16, 2), (14, 4)):
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(sweep_module, "saved_trials", lambda *args, n=finished: n)
            assert gpus_at_once(parse_args([*common, "--trials", "16", "--resume"])) == gpus, finished


@pytest.mark.faults
def test_a_resumed_cpu_sweep_is_sized_for_the_trials_it_has_left(tmp_path, monkeypatch):
    """A sweep started 16 trials at once, resumed to finish its export (the disk had filled) on a
    cluster of 4 CPUs, was refused ("resume it on 5.32 CPUs or more"), and one with a trial left
    gave it a sixteenth of the CPUs: CPU trials were sized for the count Tune started with, where
    GPU ones were already sized for the trials left (a review of tune/, 2026-12-07)."""
    from tune import sweep as sweep_module

    settings = SweepSettings(data=str(tmp_path / "data"), output=str(tmp_path / "sweep"), trials=16)
    with pytest.raises(InputError, match="resume it on 5.32 CPUs or more"):
        sweep_module.trial_sizes(settings, 16, 4.0, resume=True)
    assert sweep_module.trial_sizes(settings, 0, 4.0, resume=True) == (sweep_module.MIN_TRIAL_CPUS, 1)
    assert sweep_module.trial_sizes(settings, 1, 4.0, resume=True) == (2.98, 4)
    # On a cluster of no CPU yet (the shipped cluster.yaml's head before its first worker) one trial
    # took one torch thread for its whole life on the 16-CPU worker it landed on: 0, the node's own.
    assert sweep_module.trial_sizes(settings, 1, 0.0, resume=False) == (sweep_module.MIN_TRIAL_CPUS, 0)
    assert sweep_module.trial_sizes(settings, 2, 0.0, resume=False) == (sweep_module.MIN_TRIAL_CPUS, 1)

    sized = []

    class Stop(Exception):
        pass

    def trainable(settings, at_once, *args):
        sized.append(at_once)
        raise Stop

    monkeypatch.setattr(SweepSettings, "check_resumes", lambda self: None)
    for name, value in {
        "check_sweep_directory": lambda *args: None,
        "check_features_of_runs": lambda *args: None,
        "free_resources": lambda: ({"CPU": 4.0}, ""),
        "cpu_nodes": lambda: 1,
        "started_concurrency": lambda settings: 16,
        "_trainable": trainable,
    }.items():
        monkeypatch.setattr(sweep_module, name, value)
    for finished, at_once in ((16, 0), (15, 1), (3, 13), (0, 16)):
        monkeypatch.setattr(sweep_module, "saved_trials", lambda *args, n=finished: n)
        with pytest.raises(Stop):
            sweep_module.run_sweep(settings, resume=True)
        assert sized[-1] == at_once, finished
        assert settings.concurrent == 16  # what Tune keeps, unchanged


@pytest.mark.faults
def test_a_set_count_of_trials_at_once_without_their_gpus_is_refused(tmp_path, monkeypatch, capsys):
    """--concurrent 3 on a cluster of 2 GPUs passed (one trial's GPU was checked): the third
    trial waited for ever while the others ran on the CPU share sized for three (a review of
    tune/, 2026-12-07)."""
    from jobs import tune_sweep
    from ncf import device

    _swept_two_trials(monkeypatch, training_on_gpu=lambda *args, **kwargs: True, track_sweep_model=lambda *a, **k: "7")
    monkeypatch.setattr(device, "cluster_gpus", lambda: 2)
    common = ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "sweep"), "--trials", "4", "--gpu", "yes"]
    with pytest.raises(SystemExit) as exit_info:
        tune_sweep.main([*common, "--concurrent", "3"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2, line
    assert line == (
        "error: --concurrent 3: 3 GPUs for the trials at once (1 workers each) and the Ray cluster has 2; pass "
        "--concurrent 2 or fewer, or --gpu no"
    )
    # Try later only where --gpu-wait waited: on a cluster the job joined, not its own local one.
    for address, status in (("", 2), ("127.0.0.1:6379", 75)):
        monkeypatch.setenv("RAY_ADDRESS", address)
        with pytest.raises(SystemExit) as exit_info:
            tune_sweep.main([*common, "--concurrent", "3", "--gpu-wait", "1"])
        assert exit_info.value.code == status, (address, capsys.readouterr().err)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(tune_sweep, "report", lambda table, settings, args: "reported")
    assert tune_sweep.main([*common, "--concurrent", "2"]) == "reported"  # they fit: the sweep runs
    # --gpu auto, the default, is never refused for the GPUs it finds: it trains on CPUs, said
    # (a review of tune/, 2026-12-08: a command that ran on a CPU cluster was refused on one with 2 GPUs).
    swept = []
    monkeypatch.setattr(tune_sweep, "run_sweep", lambda settings, resume: swept.append(settings) or _sweep_table([]))
    capsys.readouterr()
    assert tune_sweep.main([*common[:-2], "--concurrent", "3"]) == "reported" and swept[-1].use_gpu is False
    assert "[gpu] --gpu auto: --concurrent 3 needs 3 GPUs (1 workers a trial) and the Ray cluster has 2: the " in (
        capsys.readouterr().err
    )


@pytest.mark.faults
@pytest.mark.parametrize("gpu", ["auto", "no"])
def test_a_finished_gpu_sweep_resumed_to_export_looks_for_no_gpu(small_data, tmp_path, monkeypatch, gpu):
    """A GPU sweep stopped after Tune's loop, during its export: the resume trains nothing, but it
    looked for GPUs all the same, and once the autoscaler had removed the idle GPU nodes every way
    was closed (auto: "resume it where GPUs are"; no: "started with other settings"; a review of
    tune/, 2026-12-08)."""
    from jobs import tune_sweep
    from tune import sweep as sweep_module

    data, _ = small_data
    output = str(tmp_path / "sweep")
    SweepSettings(data=data, output=output, trials=2, use_gpu=True).record()
    from ray import tune

    tune.Tuner(  # Tune's own tuner.pkl, which a resume reads its trials-at-once count from
        lambda config: None,
        tune_config=tune.TuneConfig(max_concurrent_trials=2, num_samples=2),
        run_config=tune.RunConfig(name="sweep", storage_path=os.path.join(output, "tune")),
    )
    swept = []
    _swept_two_trials(
        monkeypatch,
        run_sweep=lambda settings, resume: swept.append(settings) or _sweep_table(["done", "done"]),
        report=lambda table, settings, args: "reported",
    )
    monkeypatch.setattr(sweep_module, "saved_trials", lambda *args: 2)  # both trials ended
    argv = ["--data", data, "--output", output, "--trials", "2", "--resume", "--gpu", gpu]
    assert tune_sweep.main(argv) == "reported"
    assert swept[-1].use_gpu is True  # as the trials trained: the sweep's own check of its settings passes


@pytest.mark.faults
def test_a_full_disk_after_tunes_loop_says_resume_not_the_same_command(tmp_path, monkeypatch, capsys):
    """A disk full while the sweep wrote its results said "run the same command again", which a
    sweep directory holding Tune's state refuses ("pass --resume"; a second read, 2026-12-07)."""
    import errno

    from jobs import tune_sweep

    _swept_two_trials(monkeypatch, tune_state_saved=lambda path: True)
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "sweep" / "results.parquet"))
    monkeypatch.setattr(tune_sweep, "report", lambda *args: (_ for _ in ()).throw(full))
    argv = ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "sweep"), "--trials", "2"]
    with pytest.raises(SystemExit) as exit_info:
        tune_sweep.main(argv)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and line.startswith(f"error: {full.filename}: ENOSPC: No space left"), line
    assert "the same command with --resume writes the results" in line
    # Tune's folder made, its state not saved (a full disk at tuner.pkl): both commands would be
    # refused, so the line says what runs (a third read, 2026-12-07).
    monkeypatch.setattr(tune_sweep, "tune_state_saved", lambda path: False)
    monkeypatch.setattr(tune_sweep, "report", lambda *args: (_ for _ in ()).throw(full))
    os.makedirs(tmp_path / "sweep" / "tune" / "sweep")
    with pytest.raises(SystemExit):
        tune_sweep.main(argv)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "start the sweep again with a new --output, or remove" in line and "(Tune had not saved its state)" in line
    # Its state saved, holding no trial (stopped in Tune's start-up): a --resume is refused, so not advised.
    monkeypatch.setattr(tune_sweep, "tune_state_saved", lambda path: True)
    monkeypatch.setattr(tune_sweep, "report", lambda *args: (_ for _ in ()).throw(full))
    state = tmp_path / "sweep" / "tune" / "sweep" / "experiment_state-2026-12-07_10-00-00.json"
    state.write_text(NO_TRIAL_TUNE_STATE)
    with pytest.raises(SystemExit):
        tune_sweep.main(argv)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "start the sweep again with a new --output, or remove" in line and "holds no trial" in line, line
    assert "--resume" not in line, line
    monkeypatch.setattr(tune_sweep, "report", lambda *args: (_ for _ in ()).throw(FileNotFoundError("bug")))
    with pytest.raises(FileNotFoundError):  # a bug's: its traceback
        tune_sweep.main(argv)


@pytest.mark.faults
def test_the_winner_is_the_best_trial_with_a_checkpoint():
    from tune.results import BEST, CHECKPOINT_PATH, NoTrialFinished, winner
    from tune.sweep import summary

    table = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c"],
            BEST: [0.5, 0.4, float("nan")],
            CHECKPOINT_PATH: [None, "/ckpt/b", None],
            "is_default": [False, True, False],
        }
    )
    assert winner(table)["trial_id"] == "b"
    assert summary(table) == {"best_trial": "b", "best": 0.4, "default": 0.4, "gain": 0.0}
    # A defaults trial that failed after its first epoch is no baseline for the gain.
    table["status"] = ["done", "done", "error"]
    assert summary(table)["default"] == 0.4
    table["status"] = ["done", "error", "done"]
    assert summary(table) == {"best_trial": "b", "best": 0.4}
    # Every trial failed (out of memory, a GPU it could not use): the job ends with this one line,
    # exit 1, where RuntimeError's traceback ended it.
    with pytest.raises(NoTrialFinished, match=r"none of the sweep's 2 trials reported a checkpoint .*error\.txt"):
        winner(table.iloc[[0, 2]])
    # Trials that trained and validated to NaN only are said to have diverged: they have no error.txt.
    table["epochs"] = [0, 0, 2]
    with pytest.raises(NoTrialFinished, match=r"trials .*: 1 validated to NaN only \(diverged: .*\), 1 failed \("):
        winner(table.iloc[[0, 2]])


def test_the_winner_is_refit_through_the_datas_end_with_its_point_and_epochs(ray_session, small_data, tmp_path):
    """SWEEP/refit: the winner's point trained on the refit lists for its chosen epochs, exported
    with its trial named (and its curves written beside the run)."""
    from ncf.model.directory import ModelDir
    from tune.results import BEST, CHECKPOINT_PATH
    from tune.sweep import refit_best

    data, _ = small_data
    settings = SweepSettings(data=data, output=str(tmp_path / "sweep"), trials=1, max_steps_per_epoch=2, val_users=10)
    point = {
        **default_point(data_limits(data)),
        "mf_embedding_dim": 8,
        "mlp_embedding_dim": 8,
        "mlp_depth": 1,
        "mlp_width": 16,
        "temporal_dim": 4,
        "num_heads": 2,
        "history_length": 4,
    }
    table = pd.DataFrame([{**point, "trial_id": "t1", BEST: 0.2, CHECKPOINT_PATH: "/ckpt/t1", "best_epoch": 1}])
    path = refit_best(table, settings)
    assert os.path.realpath(path) == os.path.realpath(settings.refit_dir)
    model = ModelDir(path)
    assert model.version == "sweep-t1-refit"
    assert model.config["model"]["mlp_hidden_dims"] == [16] and model.config["model"]["history_length"] == 4
    assert model.metrics()["validated"] == {"trial_id": "t1"} and len(model.metrics()["history"]) == 1
    assert os.listdir(os.path.join(settings.train_dir, "t1-refit", "tensorboard"))


# One at a time (on 4 cores or more the default would run both at once, and the drill needs one finished).
SWEEP = [
    *["--trials", "2", "--concurrent", "1", "--epochs", "1", "--max-steps-per-epoch", "3"],
    *["--val-users", "20", "--batch-size", "256"],
]


def _sweep_on_a_laptop(data: str, output: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "jobs.tune_sweep", "--data", data, "--output", output, *SWEEP]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}  # the log is read as it grows
    env.pop("RAY_ADDRESS", None)  # its own local cluster, as a user's laptop run
    log = open(output + ".log", "w")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _started_trials(output: str) -> int:
    """Trials Tune has started, from the sweep's console log. Not the trial directories: those
    appear in the storage path only when a trial's first result is synced, which for a
    one-epoch trial is moments before it ends."""
    with open(output + ".log") as log:
        return len(re.findall(r"^Trial train_trial_\w+ started with configuration", log.read(), flags=re.M))


def _reported_trials(output: str) -> set:
    experiment = os.path.join(output, "tune", "sweep")
    dirs = [d for d in os.listdir(experiment) if d.startswith("train_trial_")] if os.path.isdir(experiment) else []
    results = {d.split("_")[2]: os.path.join(experiment, d, "result.json") for d in dirs}
    return {trial for trial, path in results.items() if os.path.exists(path) and os.path.getsize(path) > 0}


def _interrupt_after_one_trial(data: str, output: str) -> set:
    """A laptop run of a 2-trial sweep, Ctrl-C in its second trial: the trials it finished."""
    first = _sweep_on_a_laptop(data, output)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and first.poll() is None and _started_trials(output) < 2:
            time.sleep(1)
        # Trials run one at a time here: the second has started, so the first has finished.
        assert first.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(2)  # into the second trial, which trains for tens of seconds
        first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its experiment state and exits
        assert first.wait(timeout=120) == 130, open(output + ".log").read()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert not os.path.exists(os.path.join(output, "results.parquet"))
    assert "sweep interrupted with 1 of 2 trials finished" in open(output + ".log").read()
    return _reported_trials(output)


def submit_job(address: str, env: dict, job: list, options: tuple = ()) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir REPO OPTIONS -- JOB` to :func:`head_node`'s cluster."""
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    submit = [ray, "job", "submit", "--address", address, "--working-dir", REPO, *options, "--", *job]
    for _ in range(12):  # the dashboard answers before the node's job agent registers
        done = subprocess.run(
            submit, env={**env, "RAY_AUTH_MODE": "token"}, cwd=REPO, capture_output=True, text=True, timeout=600
        )
        if "No available agent" not in done.stderr + done.stdout:
            return done
        time.sleep(5)
    return done


@pytest.mark.faults
@pytest.mark.slow
def test_a_sweep_interrupted_on_a_laptop_resumes_with_ray_job_submit_losing_and_repeating_no_trial(
    small_data, tmp_path
):
    """Ctrl-C after one trial reported and the next started, then ``--resume`` submitted with
    `ray job submit` to a cluster started with `ray start --head` (one sweep drill for both: each
    sweep costs minutes here)."""
    data, _ = small_data
    sweep = tmp_path / "sweep"
    finished_before = _interrupt_after_one_trial(data, str(sweep))
    assert len(finished_before) == 1

    with head_node() as (address, env):
        resume = ["python", "-m", "jobs.tune_sweep", "--data", data, "--output", str(sweep), *SWEEP, "--resume"]
        done = submit_job(address, env, resume)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "succeeded" in done.stdout

    table = pd.read_parquet(sweep / "results.parquet")
    assert len(table) == 2 and table["trial_id"].is_unique  # none lost, none repeated
    import ray.cloudpickle

    with open(sweep / "tune" / "sweep" / "tuner.pkl", "rb") as f:  # Optuna and ASHA told what the table ranks by
        assert ray.cloudpickle.load(f)["_tune_config"].metric == "best_val_ndcg@10"
    assert finished_before <= set(table["trial_id"])
    assert table["best_val_ndcg@10"].notna().all()
    assert (sweep / "results.csv").exists() and (sweep / "sweep.png").stat().st_size > 10_000
    assert table["is_default"].sum() == 1  # the defaults are evaluated first, as the baseline
    assert table.loc[0, "best_val_ndcg@10"] >= table.loc[1, "best_val_ndcg@10"]
    assert any(table.loc[0, k] != table.loc[1, k] for k in SEARCHED)

    config = read_config(sweep / "best")
    best = table.iloc[0]
    # The job's last line is its outcome as bare JSON (ray job submit prints its own lines after it).
    (outcome,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"best_trial"')]
    assert outcome["best_trial"] == best["trial_id"] and outcome["best_model"] == str(sweep / "best")
    assert outcome["registered_version"] is not None and "deployment_model" not in outcome
    assert config["version"] == f"sweep-{best['trial_id']}"
    assert config["model"]["mf_embedding_dim"] == best["mf_embedding_dim"]
    assert config["model"]["mlp_hidden_dims"] == mlp_tower(best["mlp_depth"], best["mlp_width"])
    recommender = Recommender.load(str(sweep / "best"))
    user = recommender.vocabs.users.raw_of([int(recommender.state.states.users()[0])])[0]
    assert len(recommender.recommend([user], k=5)[0]) == 5
    assert data_limits(data)["history_length"] >= config["model"]["history_length"]

    # MLflow (the session's store, inherited by both clusters): each trial one run with its point
    # and its epoch's metrics (the interrupted trial's resumed attempt logs into its first run);
    # SWEEP/best a registered version linked to its trial's run.
    store = registry.Registry()
    runs = store.client.search_runs(
        [store.experiment_id(registry.SWEEP_EXPERIMENT)], filter_string=f"tags.sweep = '{sweep}'"
    )
    trained = {}
    for run in runs:
        steps = [m.step for m in store.client.get_metric_history(run.info.run_id, "val_ndcg_at_10")]
        assert steps == [1] and "mf_embedding_dim" in run.data.params, run.data.tags["trial_id"]
        trained.setdefault(run.data.tags["trial_id"], []).append(run)
    assert sorted(trained) == sorted(table["trial_id"]) and all(len(r) == 1 for r in trained.values())
    assert all(run.info.status == "FINISHED" for run in runs)
    (version,) = [v for v in store.versions() if v.get("sweep") == str(sweep)]
    assert version["trial_id"] == best["trial_id"] and version["model_dir"] == str(sweep / "best")
    assert version["run_id"] == trained[best["trial_id"]][0].info.run_id

    # Moved, the sweep exports its winner from its own checkpoints: the table holds the paths Tune
    # recorded before the move, which exist no more.
    from tune.results import CHECKPOINT_PATH, export_best

    moved = tmp_path / "moved"
    os.rename(sweep, moved)
    assert not os.path.exists(table.loc[0, CHECKPOINT_PATH])
    exported = export_best(table, SweepSettings(data=data, output=str(moved)))
    assert read_config(exported)["version"] == f"sweep-{best['trial_id']}" and exported.startswith(str(moved))


@pytest.mark.faults
@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_ends_its_trials_runs_killed_saves_its_state_and_exits_143(small_data, tmp_path):
    """`ray job stop` (SIGTERM) mid-sweep: the job's handler raised SystemExit inside Tune's loop,
    which Tune cleans up after only on an Exception, so the trials' MLflow runs stayed RUNNING and
    Tune's last state was not saved (a review, 2026-12-06). Tune now stops as on Ctrl-C."""
    from tune.sweep import saved_trials, tune_state_saved

    data, _ = small_data
    output, store = str(tmp_path / "sweep"), registry.Registry()
    sweep = _sweep_on_a_laptop(data, output)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and sweep.poll() is None and "RUNNING" not in _run_statuses(store, output):
            time.sleep(1)
        assert sweep.poll() is None, "the sweep ended before a trial's run started"
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(timeout=120) == 143, open(output + ".log").read()[-3000:]  # README's table: stopped
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    log = open(output + ".log").read()
    assert re.search(
        r"^\[sweep\] sweep stopped \(SIGTERM\) with [01] of 2 trials finished; continue it with --resume$",
        log,
        flags=re.M,
    ), log[-3000:]
    statuses = _run_statuses(store, output)
    assert "KILLED" in statuses and "RUNNING" not in statuses, statuses
    experiment = os.path.join(output, "tune", "sweep")
    # Its interrupted trial saved as Tune saves one it stopped (read back PENDING): what --resume runs again.
    assert tune_state_saved(experiment) and saved_trials(experiment, "PENDING") >= 1


def _run_statuses(store: registry.Registry, sweep: str) -> list:
    """The MLflow statuses of the runs of ``sweep``'s trials in ``store`` (the session's, which jobs inherit)."""
    runs = store.client.search_runs(
        [store.experiment_id(registry.SWEEP_EXPERIMENT)], filter_string=f"tags.sweep = '{sweep}'"
    )
    return sorted(run.info.status for run in runs)


@pytest.mark.faults
def test_a_resumed_sweep_refuses_a_tracking_store_that_does_not_open_before_tune_restores(tmp_path, monkeypatch):
    """README: a sweep opens the store before its first trial. Only a new sweep did: a resumed one
    restored Tune's pickled logger and ran its trials with their MLflow runs lost."""
    from tune import sweep as sweep_module

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    restored = []
    monkeypatch.setattr("ray.tune.Tuner.restore", lambda *args, **kwargs: restored.append(args))
    settings = SweepSettings(data=str(tmp_path / "data"), output=str(tmp_path / "sweep"))
    with pytest.raises(registry.StoreUnavailable, match="no server answers there"):
        sweep_module._tuner(settings, trainable=None, resume=True)
    assert not restored


@pytest.mark.faults
def test_a_restored_trial_logger_records_into_the_store_the_sweep_checked(tmp_path, monkeypatch):
    """Tune restores the callback from tuner.pkl with its first run's store, another working
    directory's artifacts/mlflow.db under `ray job submit --working-dir`: the resumed trials'
    runs went there while the sweep had checked the store it runs with."""
    from tune.tracking import TrialLogger

    checked = f"sqlite:///{tmp_path / 'now.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", checked)
    old = f"sqlite:///{tmp_path / 'first-run' / 'mlflow.db'}"
    logger = TrialLogger(tracking_uri=old, registry_uri=old, experiment_name=registry.SWEEP_EXPERIMENT)
    logger.setup()
    assert logger.tracking_uri == logger.registry_uri == checked
    assert not (tmp_path / "first-run").exists()


@pytest.mark.faults
def test_the_best_of_tied_epochs_is_the_last_whose_checkpoint_ray_keeps():
    """Ray Train keeps the later of equally scored checkpoints and deletes the earliest first: the
    first of tied epochs (pandas' idxmax) could name a checkpoint already deleted (a review)."""
    from types import SimpleNamespace

    from tune.results import BEST, CHECKPOINT_PATH, VAL_METRIC, _trial_row

    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            VAL_METRIC: [0.30, 0.41, 0.41, 0.39],
            "train_loss": [0.5, 0.4, 0.3, 0.3],
            "examples_per_s": [1.0] * 4,
            CHECKPOINT_PATH: [f"runs/t/checkpoint_{e}" for e in range(1, 5)],
        }
    )
    point = {name: 1 for name in SEARCHED}
    result = SimpleNamespace(config=point, metrics={"trial_id": "t"}, path="runs/t", error=None)
    result.metrics_dataframe = history
    row = _trial_row(result, point)
    assert row[BEST] == 0.41 and row["best_epoch"] == 3 and row[CHECKPOINT_PATH] == "runs/t/checkpoint_3"


@pytest.mark.faults
def test_a_trials_best_epoch_is_what_its_ray_train_run_kept_not_only_what_tune_logged(tmp_path):
    """Ray Train saves an epoch's checkpoint before Tune logs its metrics, and Ctrl-C stops Tune
    between the two: a resumed trial continues after that epoch, which Tune's log never has. Its
    best epoch (and the refit's epoch count, and SWEEP/best) came from Tune's log alone (a review,
    2026-12-05); Ray Train's index of the run decides now."""
    from types import SimpleNamespace

    from ncf.train.checkpoint import RAY_INDEX
    from tune.results import BEST, CHECKPOINT_PATH, VAL_METRIC, _trial_row

    train_dir, scores = tmp_path / "train", {1: 0.30, 2: 0.45, 3: 0.41, 4: 0.39}
    results = []
    for epoch in (2, 3, 4):  # Ray keeps the best three and the latest, each with the metrics reported
        name = f"checkpoint_{epoch}"
        (train_dir / "t" / name).mkdir(parents=True)
        reported = {"epoch": epoch, VAL_METRIC: scores[epoch], "val_recall@10": scores[epoch] / 2}
        results.append({"checkpoint_dir_name": name, "metrics": reported})
    write_json(
        str(train_dir / "t" / RAY_INDEX), {"checkpoint_results": results, "latest_checkpoint_result": results[-1]}
    )
    logged = [1, 3, 4]  # epoch 2's report was lost to Ctrl-C
    history = pd.DataFrame(
        {
            "epoch": logged,
            VAL_METRIC: [scores[e] for e in logged],
            "train_loss": [0.5, 0.3, 0.3],
            "examples_per_s": [1.0] * 3,
            CHECKPOINT_PATH: [str(train_dir / "t" / f"checkpoint_{e}") for e in logged],
        }
    )
    point = {name: 1 for name in SEARCHED}
    result = SimpleNamespace(config=point, metrics={"trial_id": "t"}, path="tune/t", error=None)
    result.metrics_dataframe = history
    assert _trial_row(result, point)["best_epoch"] == 3  # Tune's log alone
    row = _trial_row(result, point, str(train_dir))
    assert (row[BEST], row["best_epoch"], row["epochs"], row["val_recall@10"]) == (0.45, 2, 4, 0.225)
    # A diverged epoch kept (NaN, JSON's null) is never the trial's best (a second read, 2026-12-07).
    diverged = [
        {"checkpoint_dir_name": "checkpoint_6", "metrics": {"epoch": 6, VAL_METRIC: float("nan")}},
        *results,
        {"checkpoint_dir_name": "checkpoint_5", "metrics": {"epoch": 5, VAL_METRIC: None}},
    ]
    write_json(
        str(train_dir / "t" / RAY_INDEX), {"checkpoint_results": diverged, "latest_checkpoint_result": diverged[-1]}
    )
    row = _trial_row(result, point, str(train_dir))
    assert (row[BEST], row["best_epoch"], row["epochs"]) == (0.45, 2, 6)
    assert row[CHECKPOINT_PATH] == str(train_dir / "t" / "checkpoint_2")
    # An index a kill damaged costs that trial its Ray Train record, not the sweep its table.
    (train_dir / "t" / RAY_INDEX).write_text('{"checkpoint_results": [')
    assert _trial_row(result, point, str(train_dir))["best_epoch"] == 3
    from ncf.train.checkpoint import check_features_of_runs

    with pytest.raises(InputError, match=r"damaged.*remove .*train/t and resume if that trial had not finished"):
        check_features_of_runs(str(train_dir), "start the sweep again with a new --output")

    # Stopped before its first report (Tune has no metrics, so no trial id), after its first
    # checkpoint: Tune's folder names the run, which was not found under the folder's name.
    (train_dir / "t" / RAY_INDEX).write_text(json.dumps({"checkpoint_results": results[:1]}))
    (train_dir / "t-refit").mkdir()
    silent = SimpleNamespace(config=point, metrics={}, path="tune/trial_fn_t_0_mf=8_2026-12-05_10-00-00", error=None)
    silent.metrics_dataframe = None
    row = _trial_row(silent, point, str(train_dir))
    assert (row["trial_id"], row[BEST], row["best_epoch"]) == ("t", 0.45, 2), row


@pytest.mark.faults
def test_a_sweep_stopped_before_tune_saved_its_state_is_refused_on_resume_in_one_line(tmp_path, monkeypatch, capsys):
    """Old code: Ctrl-C after Tune wrote tuner.pkl and before its first experiment state left a
    sweep that --resume ended in a traceback (Tuner.restore raised nothing; its fit started over
    with no search space: OptunaSearch's RuntimeError), and a run without --resume refused."""
    from ray import tune

    from jobs import tune_sweep
    from tune.sweep import check_sweep_directory

    sweep, data = tmp_path / "sweep", str(tmp_path / "data")
    sweep.mkdir()
    write_json(str(sweep / "settings.json"), {"trials": 2})
    tune.Tuner(  # writes tuner.pkl, as a sweep does before Tune's first step
        lambda config: None,
        tune_config=tune.TuneConfig(num_samples=2),
        run_config=tune.RunConfig(name="sweep", storage_path=str(sweep / "tune")),
    )
    assert (sweep / "tune" / "sweep" / "tuner.pkl").exists()
    monkeypatch.setattr(tune_sweep, "check_data", lambda *a, **k: None)
    monkeypatch.setattr(tune_sweep, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(SystemExit) as exit_info:
        tune_sweep.main(["--data", data, "--output", str(sweep), "--trials", "2", "--resume"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        f"--resume: {sweep} holds a sweep stopped before Tune saved its state: it cannot be resumed; "
        f"start it again with a new --output, or remove {sweep} first"
    ), lines
    # Without --resume the same words: "pass --resume to continue it" led to the refusal above
    # (a review of tune/, 2026-12-07).
    with pytest.raises(InputError, match="^" + re.escape(f"{sweep} holds a sweep stopped before Tune saved its state")):
        check_sweep_directory(str(sweep), data, resume=False)
    # Once Tune has saved its state the sweep resumes.
    (sweep / "tune" / "sweep" / "experiment_state-2026-12-05_10-00-00.json").write_text(WHOLE_TUNE_STATE)
    check_sweep_directory(str(sweep), data, resume=True)


# An experiment state as Tune writes it, one trial's entry of its fields empty: what a resume's check reads.
WHOLE_TUNE_STATE = json.dumps({"trial_data": [["{}", "{}"]], "runner_data": {"_iteration": 3}, "stats": {}})
# Tune's state saved by a stop in its start-up, before the first trial (Tune's restore fails on it).
NO_TRIAL_TUNE_STATE = json.dumps({"trial_data": [], "runner_data": {"_iteration": 0}, "stats": {"start_time": 0.0}})


@pytest.mark.faults
def test_a_resume_whose_newest_tune_state_is_cut_short_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """Tune writes its experiment state in place: a kill or a full disk mid-write leaves it cut
    short. Old code: --resume went on, Tune's restore failed, it logged "Restarting experiment"
    and started over without the search space (OptunaSearch's RuntimeError after Ray's start)."""
    from jobs import tune_sweep
    from tune.sweep import check_sweep_directory

    sweep, data = tmp_path / "sweep", str(tmp_path / "data")
    experiment = sweep / "tune" / "sweep"
    experiment.mkdir(parents=True)
    write_json(str(sweep / "settings.json"), {"trials": 2})
    whole = WHOLE_TUNE_STATE
    (experiment / "experiment_state-2026-12-05_10-00-00.json").write_text(whole)
    newest = experiment / "experiment_state-2026-12-05_11-00-00.json"  # the one Tune restores
    monkeypatch.setattr(tune_sweep, "check_data", lambda *a, **k: None)
    monkeypatch.setattr(tune_sweep, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    cases = [
        (whole[: len(whole) // 2], "does not read (JSONDecodeError"),
        ("[]", "lacks trial_data and"),
        # Stopped in Tune's start-up (a review of tune/, session 67): --resume passed this check, Tune's
        # restore failed on the empty list and started over without the search space, every time.
        (NO_TRIAL_TUNE_STATE, "holds no trial (the sweep was stopped before its first one)"),
    ]
    for damaged, why in cases:
        newest.write_text(damaged)
        for resume in (["--resume"], []):  # without --resume too: not "pass --resume", then this
            with pytest.raises(SystemExit) as exit_info:
                tune_sweep.main(["--data", data, "--output", str(sweep), "--trials", "2", *resume])
            assert exit_info.value.code == 2
            lines = capsys.readouterr().err.strip().splitlines()
            said = f"{'--resume: ' if resume else ''}Tune's state {newest} {why}"
            assert len(lines) == 1 and said in lines[0], lines
            assert lines[0].endswith(
                f"it cannot be resumed: start it again with a new --output, or remove {sweep} first"
            )
    # What the stopped sweep said: not "continue it with --resume".
    from types import SimpleNamespace

    from tune.sweep import stopped_words

    settings = SimpleNamespace(output=str(sweep), trials=2)
    grid = SimpleNamespace(experiment_path=str(experiment), filesystem=None)
    assert stopped_words(grid, settings, "sweep interrupted") == (
        "sweep interrupted: stopped before its first trial: there is nothing to resume; start it again with a "
        f"new --output, or remove {sweep} first"
    )
    newest.write_text(whole)
    check_sweep_directory(str(sweep), data, resume=True)
    real_open = open

    def denied(path, *args, **kwargs):  # as chmod 000 would, for a test that may run as root
        if str(path) == str(newest):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(InputError, match=r"cannot read Tune's state .* \(EACCES: Permission denied\): check"):
        check_sweep_directory(str(sweep), data, resume=True)


@pytest.mark.faults
def test_a_failed_write_of_the_results_leaves_the_previous_ones_whole(tmp_path, monkeypatch):
    """Old code: results.parquet, results.csv and sweep.png were written in place, so a write that
    failed midway (a full disk, a kill) left a truncated file where a resumed sweep's last was."""
    from tune.results import BEST, plot_sweep, write_results

    first = pd.DataFrame({"trial_id": ["a", "b"], BEST: [0.5, 0.4]})
    write_results(first, str(tmp_path))
    before = (tmp_path / "results.csv").read_bytes()

    def dies_midway(self, path, **kwargs):
        with open(path, "w") as f:
            f.write("trial_id,")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_midway)
    with pytest.raises(OSError, match="No space left"):
        write_results(pd.DataFrame({"trial_id": ["c"], BEST: [0.6]}), str(tmp_path))
    assert (tmp_path / "results.csv").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["results.csv", "results.parquet"]  # no temporary left
    # The plot is written through a temporary name too, still as a PNG.
    table = pd.DataFrame({**{name: [1.0] for name in SEARCHED}, BEST: [0.5], "is_default": [True]})
    plot_sweep(table, str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["results.csv", "results.parquet", "sweep.png"]


@pytest.mark.faults
def test_trials_at_once_on_gpus_are_what_the_cpus_hold(tmp_path):
    """Old code: with GPUs the trials at once were one per workers' GPUs whatever the CPUs: 8 GPUs
    and 3 CPUs made 8 trials, which trial_cpus then refused, telling the user to pass a
    --concurrent they never gave."""
    from tune.sweep import concurrency, trial_cpus

    settings = SweepSettings(data=str(tmp_path / "data"), output=str(tmp_path / "sweep"), trials=16, use_gpu=True)
    at_once = concurrency(settings, {"GPU": 8, "CPU": 3.0})
    assert at_once == 7  # (3 - 1 kept for Ray Data) / 0.27
    assert trial_cpus(at_once, 3.0, resume=False) >= 0.25  # accepted
    assert concurrency(settings, {"GPU": 8, "CPU": 3.0}, nodes=8) == 3  # 2 CPUs kept over 8 nodes
    assert concurrency(settings, {"GPU": 4, "CPU": 64.0}) == 4  # the GPUs decide when the CPUs hold more
    assert concurrency(settings, {"GPU": 8, "CPU": 0.0}) == 8  # no CPUs yet: trial_cpus waits for them
    settings.workers = 2
    assert concurrency(settings, {"GPU": 8, "CPU": 64.0}) == 4


@pytest.mark.faults
def test_optuna_is_told_a_resumed_trials_scores_at_their_epochs():
    """Old code: Ray's OptunaSearch reported at Tune's training_iteration, which starts again at 1
    for a trial restarted by --resume; Optuna ignored those steps as already reported, so the
    resumed epochs' scores never reached it."""
    from optuna.distributions import FloatDistribution

    from tune.results import BEST
    from tune.scheduler import EpochOptunaSearch

    searcher = EpochOptunaSearch(space={"x": FloatDistribution(0, 1)}, metric=BEST, mode="max", seed=0)
    assert searcher.suggest("t") is not None
    for iteration, epoch, score in [(1, 1, 0.3), (2, 2, 0.4), (1, 3, 0.5)]:  # restarted after epoch 2
        searcher.on_trial_result("t", {BEST: score, "epoch": epoch, "training_iteration": iteration})
    (trial,) = searcher._ot_study.trials
    assert trial.intermediate_values == {1: 0.3, 2: 0.4, 3: 0.5}


@pytest.mark.faults
def test_a_failed_refit_is_one_line_and_its_refusal_the_refusal(tmp_path, monkeypatch, capsys):
    """A refit whose worker failed (out of memory, CUDA) or refused (a damaged checkpoint) ended
    the sweep in Ray Train's traceback, where jobs.train says the same failure in one line (a
    review of jobs/, 2026-12-06): now the train job's lines, naming what the sweep has kept."""
    from ray.train.v2.api.exceptions import WorkerGroupError

    from jobs import tune_sweep

    _swept_two_trials(monkeypatch, track_sweep_model=lambda *args, **kwargs: "7")
    argv = ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "sweep"), "--trials", "2", "--refit"]
    for error, status, says in [
        (WorkerGroupError("...", {0: InputError("the checkpoint c1 is damaged")}), 2, "error: the checkpoint c1"),
        (WorkerGroupError("...", {1: MemoryError("out of memory")}), 1, "error: training failed on worker 1"),
    ]:
        monkeypatch.setattr(tune_sweep, "refit_best", lambda *args, error=error: (_ for _ in ()).throw(error))
        with pytest.raises(SystemExit) as exit_info:
            tune_sweep.main(argv)
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == status and line.startswith(says), line
    assert (
        "(MemoryError: out of memory) after Ray Train's retries; SWEEP/best is exported (registered as version 7)"
        in line
    )
    assert line.endswith("the same command with --resume finishes the refit from them")
    monkeypatch.setattr(tune_sweep, "refit_best", lambda *args: (_ for _ in ()).throw(KeyError("this code's own")))
    with pytest.raises(KeyError):  # this code's own bug: its traceback stays
        tune_sweep.main(argv)

    # A Ctrl-C during the swap of SWEEP/refit said only "interrupted", and another run holding
    # SWEEP/refit's lock not that the refit's checkpoints are kept (a review of tune/, 2026-12-07).
    from ncf.errors import Interrupted
    from ncf.staging import Busy

    for error, status, says in [
        (Interrupted("SWEEP/refit is the new directory (...)"), 130, "interrupted (Ctrl-C); SWEEP/refit is the new"),
        (Busy("SWEEP/refit: another run writes it"), 75, "error: SWEEP/refit: another run writes it; SWEEP"),
    ]:
        monkeypatch.setattr(tune_sweep, "refit_best", lambda *args, error=error: (_ for _ in ()).throw(error))
        with pytest.raises(SystemExit) as exit_info:
            tune_sweep.main(argv)
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == status and says in line, line
    assert "SWEEP/best is exported (registered as version 7); the refit's checkpoints are kept under" in line


def _swept_two_trials(monkeypatch, **stubs) -> None:
    """jobs.tune_sweep's steps before and around the sweep stubbed (no DATA, Ray or slot): its
    sweep returns two finished trials; ``stubs`` replace more of its names."""
    from jobs import tune_sweep

    steps = {
        "check_data": lambda *args, **kwargs: None,
        "check_sweep_directory": lambda *args: None,
        "init_ray": lambda: None,
        "training_slot": lambda what: contextlib.nullcontext(),
        "training_on_gpu": lambda *args, **kwargs: False,
        "run_sweep": lambda *args, **kwargs: _sweep_table(["done", "done"]),
    }
    for name, value in {**steps, **stubs}.items():
        monkeypatch.setattr(tune_sweep, name, value)


def _sweep_table(statuses) -> pd.DataFrame:
    """A results table (:func:`tune.results.results_table`'s columns the job reads) of trials
    ``t0, t1, ...`` with ``statuses``; the failed ones without scores or checkpoints."""
    from tune.results import BEST, CHECKPOINT_PATH

    rows = []
    for i, status in enumerate(statuses):
        done = status == "done"
        rows.append(
            {
                "trial_id": f"t{i}",
                "status": status,
                BEST: 0.5 - i / 100 if done else float("nan"),
                "best_epoch": 1 if done else float("nan"),
                "epochs": 1 if done else 0,
                CHECKPOINT_PATH: f"/ckpt/t{i}" if done else None,
                "is_default": i == 0,
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.faults
def test_a_sweep_with_failed_trials_says_which_in_its_table_a_line_and_its_json(tmp_path, monkeypatch, capsys):
    """A sweep some of whose trials failed reported plain success: the table left out the status
    (failed trials were rows of NaN) and the last line had no count (a review, 2026-12-06). Exit 0
    stays: the winner is exported while one trial reported a checkpoint."""
    from jobs import tune_sweep
    from tune.sweep import failed_trials, failures_line

    table = _sweep_table(["done", "error", "done", "error", "error"])
    assert failed_trials(table) == ["t1", "t3", "t4"]
    assert failed_trials(_sweep_table(["done", "done"])) == [] and failures_line(_sweep_table(["done"]), "x") is None
    assert failed_trials(table.drop(columns="status")) == []  # a table of before the status column

    sweep = tmp_path / "sweep"
    args = tune_sweep.parse_args(["--data", str(tmp_path / "data"), "--output", str(sweep), "--trials", "5"])
    settings = tune_sweep.sweep_settings(args, use_gpu=False)
    monkeypatch.setattr(tune_sweep, "track_sweep_model", lambda *args, **kwargs: "7")
    assert tune_sweep.report(table, settings, args) is table
    out = capsys.readouterr().out.splitlines()
    header = next(line for line in out if line.split()[:2] == ["trial_id", "status"])
    assert header and sum(" error " in line for line in out) == 3
    assert (
        f"[sweep] 3 of 5 trials failed: t1, t3, t4 (each one's error: {sweep}/tune/sweep/*<trial id>*/error.txt)" in out
    )
    outcome = json.loads(out[-1])
    assert outcome["failed_trials"] == ["t1", "t3", "t4"] and outcome["best_trial"] == "t0"
    assert outcome["registered_version"] == "7"

    tune_sweep.report(_sweep_table(["done", "done"]), settings, args)
    out = capsys.readouterr().out
    assert "failed:" not in out and json.loads(out.splitlines()[-1])["failed_trials"] == []


@pytest.mark.faults
def test_ctrl_c_after_tunes_loop_is_one_line_exit_130_with_a_resume_hint(tmp_path, monkeypatch, capsys):
    """Ctrl-C once Tune's loop had ended (the results, the plot, SWEEP/best's export, its
    registration) was a KeyboardInterrupt traceback: only the refit was handled (a review,
    2026-12-06). A resume of a sweep whose every trial finished writes, exports and registers
    again: Tune restores them all and runs none (run_sweep goes on to _write_sweep at once)."""
    from jobs import tune_sweep
    from tune import sweep as sweep_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # In run_sweep, after fit: SweepInterrupted, the job's line and exit 130.
    class Grid:
        def fit(self):
            return self

    monkeypatch.setattr(SweepSettings, "record", lambda self: None)  # it reads DATA's fingerprints
    for name, value in {
        "check_sweep_directory": lambda *args: None,
        "free_resources": lambda: ({"CPU": 2.0}, ""),
        "cpu_nodes": lambda: 1,
        "_trainable": lambda *args: None,
        "_tuner": lambda *args: Grid(),
        "finished_trials": lambda grid: 2,
        "results_table": lambda *args: _sweep_table(["done", "done"]),
        "write_results": lambda *args: None,
        "plot_sweep": interrupted,
    }.items():
        monkeypatch.setattr(sweep_module, name, value)
    settings = SweepSettings(data=str(tmp_path / "data"), output=str(tmp_path / "sweep"), trials=2)
    with pytest.raises(sweep_module.SweepInterrupted, match=r"after Tune's loop ended.*same command with --resume"):
        _not_a_traceback(sweep_module.run_sweep, settings)

    # In the job, after run_sweep: registering SWEEP/best.
    _swept_two_trials(monkeypatch, track_sweep_model=interrupted)
    argv = ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "sweep"), "--trials", "2"]
    with pytest.raises(SystemExit) as exit:
        _not_a_traceback(tune_sweep.main, argv)
    assert exit.value.code == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("[sweep] interrupted (Ctrl-C) after every trial finished") and "--resume" in line

    # And a second Ctrl-C inside Tune's loop (Tune's handler takes only the first): the hint is
    # what check_sweep_directory will accept of the folder it leaves (a second reading).
    monkeypatch.setattr(tune_sweep, "run_sweep", interrupted)
    experiment = tmp_path / "sweep" / "tune" / "sweep"
    state = "experiment_state-2026-12-06_04-00-00.json"
    for made, content, says in [
        (None, None, "before Tune started; run the same command again"),
        ("tuner.pkl", "{}", "before Tune saved its state: it cannot be resumed; start it again with a new --output"),
        (state, WHOLE_TUNE_STATE, "continue it with --resume"),
        # Stopped before the first trial (session 67): a resume is refused, so it is not advised.
        (state, NO_TRIAL_TUNE_STATE, "holds no trial (the sweep was stopped before its first one): it cannot be"),
    ]:
        if made:
            experiment.mkdir(parents=True, exist_ok=True)
            (experiment / made).write_text(content)
        with pytest.raises(SystemExit) as exit:
            _not_a_traceback(tune_sweep.main, argv)
        assert exit.value.code == 130
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("[sweep] sweep interrupted (Ctrl-C)") and says in line, line


def _not_a_traceback(call, *args):
    """``call(*args)``; a KeyboardInterrupt out of it fails the test (raised, it would stop pytest)."""
    try:
        return call(*args)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended in a KeyboardInterrupt traceback")


class _Trial:
    """What TrialLogger reads of a Tune trial; TERMINATED, as Tune's cleanup after Ctrl-C marks
    the trials it stops."""

    status = "TERMINATED"

    def __init__(self, trial_id: str):
        self.trial_id, self.config = trial_id, {"learning_rate": 0.01}

    def __str__(self):
        return f"train_trial_{self.trial_id}"


@pytest.mark.faults
def test_the_runs_of_trials_stopped_by_ctrl_c_end_killed_and_a_resume_finishes_them(tmp_path, monkeypatch):
    """Tune's cleanup after Ctrl-C stops the running trials without on_trial_complete or
    on_trial_error: their MLflow runs stayed RUNNING for good (a review, 2026-12-06)."""
    from tune.tracking import trial_logger

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    sweep = str(tmp_path / "sweep")
    logger = trial_logger(sweep)
    logger.setup()
    done, failed, stopped = _Trial("aaaa0001"), _Trial("aaaa0002"), _Trial("aaaa0003")
    for trial in (done, failed, stopped):
        logger.log_trial_start(trial)
    logger.log_trial_end(done)
    logger.log_trial_end(failed, failed=True)
    logger.on_experiment_end(trials=[done, failed, stopped])

    store = registry.Registry()

    def statuses():
        runs = store.client.search_runs(
            [store.experiment_id(registry.SWEEP_EXPERIMENT)], filter_string=f"tags.sweep = '{sweep}'"
        )
        return {run.data.tags["trial_id"]: (run.info.run_id, run.info.status) for run in runs}

    before = statuses()
    assert {trial: status for trial, (_, status) in before.items()} == {
        "aaaa0001": "FINISHED",
        "aaaa0002": "FAILED",
        "aaaa0003": "KILLED",
    }

    # --resume: Tune restores the callback and restarts the stopped trial (a new Trial object).
    resumed = trial_logger(sweep)
    resumed.setup()
    again = _Trial("aaaa0003")
    resumed.log_trial_start(again)
    assert statuses()["aaaa0003"] == (before["aaaa0003"][0], "RUNNING")  # its own run, running again
    resumed.log_trial_end(again)
    resumed.on_experiment_end(trials=[again])
    after = statuses()
    assert after["aaaa0003"] == (before["aaaa0003"][0], "FINISHED") and len(after) == 3
    assert after["aaaa0001"] == before["aaaa0001"]
