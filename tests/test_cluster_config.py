"""cluster.yaml: what `ray up` accepts and what the issue asks of it, checked without a cloud.

Ray's own launcher code fills in the AWS defaults and validates the result against the
launcher's JSON schema (``ray/autoscaler/ray-schema.json``), exactly as ``ray up`` does before
it contacts AWS. The setup commands are compared with what ``make setup ACCEL=cuda`` runs
(``make -n``), so the cluster installs the same pinned stack as a CUDA machine.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
from typing import Dict, List

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_YAML = os.path.join(REPO, "cluster.yaml")
DASHBOARD_PORT = 8265
SERVE_PORT = 8000


@pytest.fixture(scope="module")
def config() -> Dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def prepared(config) -> Dict:
    """The config as ``ray up`` sees it: defaults merged, schema and consistency checked."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


def _project_dir(config: Dict) -> str:
    """The node path the repository (".") is synced to."""
    synced = [remote for remote, local in config["file_mounts"].items() if local.rstrip("/") == "."]
    assert len(synced) == 1, config["file_mounts"]
    return synced[0]


def _setup_commands_per_node_type(prepared: Dict) -> Dict[str, List[str]]:
    """The setup commands each node type runs (a type's own ``worker_setup_commands`` replace
    the global setup and worker setup lists, as in Ray's autoscaler)."""
    commands = {}
    for name, node_type in prepared["available_node_types"].items():
        if name == prepared["head_node_type"]:
            commands[name] = prepared["head_setup_commands"]
        else:
            commands[name] = node_type.get("worker_setup_commands", prepared["worker_setup_commands"])
    return commands


def _make_invocations(commands: List[str]) -> List[Dict]:
    """``cd DIR && make TARGET VAR=VALUE ...`` commands, as {"dir", "target", "vars"}."""
    found = []
    for command in commands:
        directory = None
        for part in re.split(r"&&|;", command):
            words = shlex.split(part)
            if words[:1] == ["cd"]:
                directory = words[1]
            elif words[:1] == ["make"]:
                variables = dict(w.split("=", 1) for w in words[1:] if "=" in w)
                targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
                found.append({"dir": directory, "target": targets, "vars": variables})
    return found


def _pip_installs(commands: List[str]) -> List[List[str]]:
    """The arguments of every ``pip install`` in the commands, in order."""
    installs = []
    for command in commands:
        for part in re.split(r"&&|;|\n", command):
            words = shlex.split(part)
            if "pip" in words and "install" in words[words.index("pip") :]:
                installs.append(words[words.index("install", words.index("pip")) + 1 :])
    return installs


def _package_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _makefile_setup(accel: str, python: str) -> List[str]:
    """What ``make setup`` runs for that ACCEL, printed by ``make -n`` (nothing runs)."""
    out = subprocess.run(
        ["make", "-n", "-B", "-C", REPO, "--no-print-directory", "setup", f"ACCEL={accel}", f"PYTHON={python}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def _locked_packages() -> set:
    with open(os.path.join(REPO, "requirements", "lock.txt")) as f:
        return {_package_name(line) for line in f if line.strip() and not line.startswith("#")}


def test_ray_up_accepts_the_config(prepared):
    assert prepared["cluster_name"] and prepared["provider"]["type"] == "aws"
    assert prepared["auth"]["ssh_user"]
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_a_cpu_head_cpu_workers_and_gpu_workers_within_bounds(prepared):
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("CPU", 0) > 0 and head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    cpu_types = [t for t in workers.values() if t["resources"].get("CPU", 0) > 0 and not t["resources"].get("GPU")]
    gpu_types = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert cpu_types and gpu_types
    for node_type in workers.values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= prepared["max_workers"]
    assert (
        sum(t["max_workers"] for t in cpu_types) >= 1 and sum(t["max_workers"] for t in gpu_types) >= 2
    )  # 2 GPUs shard


def test_every_node_type_installs_the_project_with_make_setup_accel_cuda(config, prepared):
    project = _project_dir(config)
    for name, commands in _setup_commands_per_node_type(prepared).items():
        setups = [m for m in _make_invocations(commands) if m["target"] == ["setup"]]
        assert len(setups) == 1, (name, commands)
        assert setups[0]["dir"] == project and setups[0]["vars"].get("ACCEL") == "cuda", (name, setups)


def test_make_setup_accel_cuda_installs_the_cuda_stack_in_torchrecs_order(config, prepared):
    python = _make_invocations(prepared["setup_commands"])[0]["vars"].get("PYTHON", "python3")
    installs = _pip_installs(_makefile_setup("cuda", python))
    assert installs == [
        ["-q", "torch==2.13.0"],
        ["-q", "fbgemm-gpu==1.8.0"],
        ["-q", "--no-deps", "torchrec==1.8.0"],
        ["-q", "-r", "requirements/lock.txt"],
    ]
    # The venv is made with the interpreter the nodes install (python3.11 from apt).
    venv = [line for line in _makefile_setup("cuda", python) if " -m venv " in line]
    assert venv and f"{python} -m venv" in venv[0]
    assert any(python in command and "apt-get" in command for command in prepared["setup_commands"])


def test_no_command_installs_a_package_the_makefile_or_the_lock_pins(prepared):
    pinned = _locked_packages() | {
        _package_name(arg)
        for args in _pip_installs(_makefile_setup("cuda", "python3"))
        for arg in args
        if not arg.startswith("-") and "/" not in arg
    }
    every_command = [c for key, value in prepared.items() if key.endswith("_commands") for c in value]
    every_command += [c for t in prepared["available_node_types"].values() for c in t.get("worker_setup_commands", [])]
    extra = {_package_name(arg) for args in _pip_installs(every_command) for arg in args if not arg.startswith("-")}
    assert extra and not extra & pinned, extra & pinned  # boto3 only: the autoscaler's AWS client


@pytest.mark.faults
def test_dashboard_on_localhost(prepared):
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "ray start --head" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start and f"--dashboard-port={DASHBOARD_PORT}" in head_start


# -- network and credentials (issue 19): deploy/aws/cluster-prerequisites.json ----------------------

PREREQUISITES = os.path.join(REPO, "deploy", "aws", "cluster-prerequisites.json")


@pytest.fixture(scope="module")
def template() -> Dict:
    with open(PREREQUISITES) as f:
        return json.load(f)


def _resources(template: Dict, kind: str) -> List[Dict]:
    return [r["Properties"] for r in template["Resources"].values() if r["Type"] == kind]


def test_every_node_names_the_prerequisites_security_group(config):
    """With SecurityGroupIds on every node type, Ray's launcher creates no group of its own (its
    own group always gets SSH from 0.0.0.0/0, whatever provider.security_group says)."""
    assert "security_group" not in config["provider"]
    groups = {tuple(t["node_config"].get("SecurityGroupIds") or ()) for t in config["available_node_types"].values()}
    assert len(groups) == 1 and all(groups), groups


@pytest.mark.faults
def test_ssh_only_from_a_configurable_cidr_serve_only_from_a_private_one(template):
    (group,) = _resources(template, "AWS::EC2::SecurityGroup")
    rules = {(r["FromPort"], r["ToPort"]): r for r in group["SecurityGroupIngress"]}
    assert set(rules) == {(22, 22), (SERVE_PORT, SERVE_PORT)}, "nothing else open, the dashboard least"
    assert rules[(22, 22)]["CidrIp"] == {"Ref": "SshCidr"} and "Default" not in template["Parameters"]["SshCidr"]
    assert rules[(SERVE_PORT, SERVE_PORT)]["CidrIp"] == {"Ref": "ServeCidr"}
    # Asked for, like SshCidr: a default range (10.0.0.0/16, until 2026-12-04) missed the VPC that
    # `ray up` uses in practice (a default VPC is 172.31.0.0/16), so no load balancer reached Serve.
    assert "Default" not in template["Parameters"]["ServeCidr"]
    assert "0.0.0.0/0" not in json.dumps(group)
    refused = [a["Assert"]["Fn::Not"][0]["Fn::Equals"] for r in template["Rules"].values() for a in r["Assertions"]]
    assert [{"Ref": "SshCidr"}, "0.0.0.0/0"] in refused and [{"Ref": "ServeCidr"}, "0.0.0.0/0"] in refused
    (between,) = _resources(template, "AWS::EC2::SecurityGroupIngress")
    assert between["SourceSecurityGroupId"] == between["GroupId"]  # all traffic, between nodes only


def test_every_node_requires_imdsv2_and_encrypts_its_volumes(config):
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        assert node["MetadataOptions"]["HttpTokens"] == "required", name
        assert node["MetadataOptions"]["HttpPutResponseHopLimit"] == 1, name
        volumes = [m["Ebs"] for m in node["BlockDeviceMappings"]]
        assert volumes and all(v["Encrypted"] is True for v in volumes), name


def test_the_head_runs_as_a_least_privilege_profile_workers_as_none(config, template):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["node_config"]
    (profile,) = _resources(template, "AWS::IAM::InstanceProfile")
    assert head["IamInstanceProfile"] == {"Name": profile["InstanceProfileName"]} == {"Name": "advanced-ncf-head"}
    assert not any("IamInstanceProfile" in t["node_config"] for n, t in types.items() if n != config["head_node_type"])
    (role,) = _resources(template, "AWS::IAM::Role")
    assert "ManagedPolicyArns" not in role  # not Ray's default: AmazonEC2FullAccess + AmazonS3FullAccess
    assert template["Parameters"]["ClusterName"]["Default"] == config["cluster_name"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    actions = {a for s in statements for a in s["Action"]}
    assert all(a.startswith("ec2:") and "*" not in a for a in actions), actions
    for s in statements:
        mutating = [a for a in s["Action"] if not a.startswith("ec2:Describe")]
        if s["Resource"] == "*":
            assert not mutating, s  # only describes on every resource
        if {"ec2:TerminateInstances", "ec2:StopInstances"} & set(mutating):
            assert s["Condition"] == {"StringEquals": {"ec2:ResourceTag/ray-cluster-name": {"Ref": "ClusterName"}}}


def test_every_node_starts_ray_with_the_synced_auth_token(config, prepared):
    assert any(remote.endswith(".ray/auth_token") for remote in config["file_mounts"])
    starts = [
        c for c in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"] if "ray start" in c
    ]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "--address=$RAY_HEAD_IP:6379" in prepared["worker_start_ray_commands"][-1]
