"""A sweep submitted with `ray job submit` to a cluster started with `ray start --head`."""

import os
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
from ncf.errors import InputError
from ncf.model.directory import read_config
from ncf.rank.recommender import Recommender
from tune.search_space import SEARCHED, data_limits, default_point, mlp_tower, search_space
from tune.settings import SweepSettings


@pytest.fixture
def head_node():
    """`ray start --head --block` on 127.0.0.1 with its own ports and temp dir; SIGTERM to the
    blocking process stops exactly this cluster (`ray stop` would stop every Ray on the machine)."""
    # Every port of its own: the session's cluster (and any other Ray on the machine) already
    # holds the defaults, and a dashboard agent that cannot bind leaves no agent to take jobs.
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics = free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
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
    log = open(os.path.join(temp_dir, "ray_start.log"), "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:  # the job API answers once the dashboard is up
            assert process.poll() is None, open(log.name).read()[-3000:]
            try:
                if requests.get(f"{address}/api/version", timeout=2).status_code < 500:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the head node's dashboard did not come up in 90 s")
        yield address, env
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_search_space_points_are_valid_models():
    from ray.tune.search.sample import Categorical

    from ncf.model.advanced_ncf import ModelConfig

    limits = {"history_length": 8}
    space = search_space(limits)
    assert set(space) == set(SEARCHED)
    assert max(space["history_length"].categories) == 8  # never more than the examples hold
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
def test_a_sweep_resumed_with_other_settings_is_refused_in_one_line(tmp_path):
    # Tune restores the trial count it was started with: resumed with another --trials, every
    # resume ended "interrupted" and the sweep never wrote its results.
    started = SweepSettings(data=str(tmp_path / "data"), output=str(tmp_path / "sweep"), trials=4)
    SweepSettings(data=started.data, output=started.output, trials=8).check_resumes()  # nothing recorded yet
    started.record()
    started.check_resumes()
    SweepSettings(data=started.data, output=started.output, trials=4, concurrent=3).check_resumes()
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


def test_sweep_submitted_with_ray_job_submit(head_node, small_data, tmp_path):
    address, env = head_node
    data, _ = small_data
    sweep = tmp_path / "sweep"
    submit = [
        os.path.join(os.path.dirname(sys.executable), "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        REPO,
        "--",
        "python",
        "-m",
        "jobs.tune_sweep",
        "--data",
        data,
        "--output",
        str(sweep),
        "--trials",
        "2",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "3",
        "--val-users",
        "20",
        "--batch-size",
        "256",
    ]
    for _ in range(12):  # the dashboard answers before the node's job agent registers
        done = subprocess.run(
            submit, env={**env, "RAY_AUTH_MODE": "token"}, cwd=REPO, capture_output=True, text=True, timeout=600
        )
        if "No available agent" not in done.stderr + done.stdout:
            break
        time.sleep(5)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "succeeded" in done.stdout

    table = pd.read_parquet(sweep / "results.parquet")
    assert len(table) == 2 and (sweep / "results.csv").exists() and (sweep / "sweep.png").stat().st_size > 10_000
    assert table["is_default"].sum() == 1  # the defaults are evaluated first, as the baseline
    assert table.loc[0, "best_val_ndcg@10"] >= table.loc[1, "best_val_ndcg@10"]
    assert any(table.loc[0, k] != table.loc[1, k] for k in SEARCHED)

    config = read_config(sweep / "best")
    best = table.iloc[0]
    assert config["version"] == f"sweep-{best['trial_id']}"
    assert config["model"]["mf_embedding_dim"] == best["mf_embedding_dim"]
    assert config["model"]["mlp_hidden_dims"] == mlp_tower(best["mlp_depth"], best["mlp_width"])
    recommender = Recommender.load(str(sweep / "best"))
    user = recommender.vocabs.users.raw_of([int(recommender.state.states.users()[0])])[0]
    assert len(recommender.recommend([user], k=5)[0]) == 5
    assert data_limits(data)["history_length"] >= config["model"]["history_length"]

    # MLflow (the session's store, inherited by the head node): each trial a run with its
    # point and every epoch's metrics; SWEEP/best a registered version linked to its trial's run.
    store = registry.Registry()
    runs = store.client.search_runs(
        [store.experiment_id(registry.SWEEP_EXPERIMENT)], filter_string=f"tags.sweep = '{sweep}'"
    )
    by_trial = {r.data.tags["trial_id"]: r for r in runs}
    assert sorted(by_trial) == sorted(table["trial_id"])
    for trial_id, run in by_trial.items():
        steps = [m.step for m in store.client.get_metric_history(run.info.run_id, "val_ndcg_at_10")]
        assert steps == [1], trial_id
        assert "mf_embedding_dim" in run.data.params
    (version,) = [v for v in store.versions() if v.get("sweep") == str(sweep)]
    assert version["trial_id"] == best["trial_id"] and version["model_dir"] == str(sweep / "best")
    assert version["run_id"] == by_trial[best["trial_id"]].info.run_id
