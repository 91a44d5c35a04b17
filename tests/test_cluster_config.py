"""cluster.yaml: what `ray up` accepts and what the issue asks of it, checked without a cloud.

Ray's own launcher code fills in the AWS defaults and validates the result against the
launcher's JSON schema (``ray/autoscaler/ray-schema.json``), exactly as ``ray up`` does before
it contacts AWS. The setup commands are compared with what ``make setup ACCEL=cuda`` runs
(``make -n``), so the cluster installs the same pinned stack as a CUDA machine.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import ipaddress
import json
import os
import re
import shlex
import subprocess
from typing import Any, Dict, List

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_YAML = os.path.join(REPO, "cluster.yaml")
DASHBOARD_PORT = 8265
SERVE_PORT = 8000  # Serve's own: on the head's 127.0.0.1 only, behind nginx; never opened to a network
NGINX_CONF = os.path.join(REPO, "deploy", "nginx", "ncf.conf")


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
    """The node path the repository (as `make cluster-files` stages it) is synced to."""
    synced = [remote for remote, local in config["file_mounts"].items() if local.rstrip("/") == ".cluster-files"]
    assert len(synced) == 1, config["file_mounts"]
    return synced[0]


@pytest.mark.faults
def test_ray_up_copies_the_staged_project_not_the_venv_or_artifacts(config, tmp_path):
    """Pointed at ".", the project mount made Ray hash .venv and artifacts/ on every `ray up`
    (gigabytes; a changed hash after any run restarts Ray on the nodes), and run from another
    folder it would have synced that folder. `make cluster-files` stages what git sees."""
    stage = tmp_path / "stage"
    (stage / "stale.txt").parent.mkdir()
    (stage / "stale.txt").write_text("a file deleted from the project since the last staging")
    token = tmp_path / "home" / ".ray" / "auth_token"  # not the token of whoever runs the tests
    make = ["make", "-s", "cluster-files", f"CLUSTER_FILES={stage}", f"AUTH_TOKEN={token}"]
    done = subprocess.run(make, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "readable by others" not in done.stdout, done
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    present = {f for f in listed if f and os.path.exists(os.path.join(REPO, f))}
    staged = {os.path.relpath(os.path.join(d, f), stage) for d, _, files in os.walk(stage) for f in files}
    assert staged == present and {"Makefile", "cluster.yaml", "ncf/__init__.py"} <= staged
    assert not any(f.split("/")[0] in (".venv", "artifacts", ".git") for f in staged)
    assert _project_dir(config) == "/home/ubuntu/advanced-ncf"
    # The auth token ray up copies to every node, mode and all: Ray writes it with the umask (any
    # local ray.init makes one, 0644 here), so others on the launcher read it (the AWS review, session 67).
    token.parent.mkdir(parents=True)
    token.write_text("t" * 64)
    for mode, said in [(0o644, True), (0o600, False)]:
        token.chmod(mode)
        done = subprocess.run(make, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0 and (f"{token} was readable by others: made 0600" in done.stdout) == said, done
        assert token.stat().st_mode & 0o777 == 0o600


@pytest.mark.faults
def test_every_nodes_environment_is_outside_the_synced_project(config, prepared):
    """`make setup` made .venv inside the file mount: the head's autoscaler read all of it (2.3 GB
    in 50,000 files) to hash the mount each time it started, and a changed hash re-ran the
    workers' set-up (a review of the cluster files, 2026-12-07). One environment outside it."""
    project = _project_dir(config).rstrip("/")
    venvs = set()
    for name, commands in _setup_commands_per_node_type(prepared).items():
        for make in _make_invocations(commands):
            if "setup" in make["target"]:
                venv = os.path.normpath(os.path.join(make["dir"], make["vars"].get("VENV", ".venv")))
                assert not (venv + "/").startswith(project + "/"), (name, venv)
                venvs.add(venv)
    (venv,) = venvs  # every node type's
    started = " ".join(prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"])
    assert set(re.findall(r"(/\S+)/bin/ray\b", started)) == {venv}
    assert f"{project}/.venv" not in json.dumps(prepared)


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
        for words in _shell_steps([command]):
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
    for words in _shell_steps(commands):
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
    ).stdout.replace("\\\n", " ")  # a recipe line continued with a backslash is one command
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
    # The head offers Ray nothing: a task, replica or actor there could run the GCS out of memory.
    assert head["resources"].get("CPU", 0) == 0 and head["resources"].get("GPU", 0) == 0
    assert "--num-cpus=0" in " ".join(c for c in prepared["head_start_ray_commands"] if "ray start" in c)
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


@pytest.mark.faults
def test_every_node_type_installs_the_builds_its_hardware_loads(config, prepared):
    """Every node ran `make setup ACCEL=cuda`, but the CUDA fbgemm-gpu cannot load without an
    NVIDIA driver (it links libnvidia-ml.so.1; checked on this CPU machine, 2026-12-07): on the
    CPU head and CPU workers every TorchRec import failed, the job drivers' and Serve's replicas'
    among them. GPU workers install the CUDA builds, the others the CPU ones (torch's CPU wheel
    too: gigabytes of CUDA libraries they never load), each also the apt and PATH steps (a node
    type's own list replaces the global one)."""
    project = _project_dir(config)
    types = prepared["available_node_types"]
    for name, commands in _setup_commands_per_node_type(prepared).items():
        setups = [m for m in _make_invocations(commands) if m["target"] == ["setup"]]
        assert len(setups) == 1, (name, commands)
        wanted = "cuda" if types[name]["resources"].get("GPU", 0) >= 1 else "cpu"
        assert setups[0]["dir"] == project and setups[0]["vars"].get("ACCEL") == wanted, (name, setups)
        if wanted == "cpu":
            assert setups[0]["vars"].get("TORCH_INDEX") == "https://download.pytorch.org/whl/cpu", (name, setups)
        assert any("apt-get update" in c for c in commands) and any(".bashrc" in c for c in commands), name
        apt = next(i for i, c in enumerate(commands) if "python3.11-venv" in c)
        assert apt < commands.index(next(c for c in commands if "make setup" in c)), name  # python3.11 first


def test_make_setup_accel_cuda_installs_the_cuda_stack_in_torchrecs_order(config, prepared):
    gpu_type = next(t for t in prepared["available_node_types"].values() if t["resources"].get("GPU", 0) >= 1)
    python = _make_invocations(gpu_type["worker_setup_commands"])[0]["vars"].get("PYTHON", "python3")
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
    installed = [arg for args in _pip_installs(every_command) for arg in args if not arg.startswith("-")]
    extra = {_package_name(arg) for arg in installed}
    assert extra and not extra & pinned, extra & pinned  # boto3 only: the autoscaler's AWS client
    # Each pinned, its dependencies too: an unpinned boto3 took a botocore that moved python-dateutil
    # off the lock's version on the head (the set-up review of 2026-12-05).
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.]+", arg) for arg in installed), installed
    assert {"boto3", "botocore", "s3transfer", "jmespath"} <= extra


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


def _nginx_listen_port() -> int:
    """The one port deploy/nginx/ncf.conf listens on (its IPv4 and IPv6 listen directives)."""
    with open(NGINX_CONF) as f:
        text = re.sub(r"#[^\n]*", "", f.read())
    listens = re.findall(r"^\s*listen\s+([^;]+);", text, flags=re.MULTILINE)
    ports = {int(re.fullmatch(r"(?:.*:)?(\d+)", listen.split()[0]).group(1)) for listen in listens}
    assert len(ports) == 1, listens
    return ports.pop()


def _every_command(config: Dict) -> List[str]:
    commands = [c for key, value in config.items() if key.endswith("_commands") for c in value]
    return commands + [c for t in config["available_node_types"].values() for c in t.get("worker_setup_commands", [])]


@pytest.mark.faults
def test_ssh_only_from_a_configurable_cidr_serve_only_from_a_private_one(config, prepared, template):
    (group,) = _resources(template, "AWS::EC2::SecurityGroup")
    rules = {(r["FromPort"], r["ToPort"]): r for r in group["SecurityGroupIngress"]}
    # Clients reach the head's nginx (deploy/nginx/ncf.conf: the four API routes, with its limits);
    # Serve's own port stays on the head's 127.0.0.1.
    proxy = _nginx_listen_port()
    assert proxy != SERVE_PORT
    assert set(rules) == {(22, 22), (proxy, proxy)}, "nothing else open: not the dashboard, not Serve itself"
    assert rules[(22, 22)]["CidrIp"] == {"Ref": "SshCidr"} and "Default" not in template["Parameters"]["SshCidr"]
    assert rules[(proxy, proxy)]["CidrIp"] == {"Ref": "ServeCidr"}
    # Serve binds its default, 127.0.0.1: no command passes it another address, and the deploys the
    # config's comments show do not either.
    for command in _every_command(prepared) + _every_command(config):
        assert "0.0.0.0" not in command, command
        for host in re.findall(r"--host[= ]+(\S+)", command):
            assert host in ("127.0.0.1", "localhost"), command
    with open(CLUSTER_YAML) as f:
        deploys = [line for line in f if "jobs.deploy" in line]
    assert deploys and not any("--host" in line and "--host 127.0.0.1" not in line for line in deploys), deploys
    # Asked for, like SshCidr: a default range (10.0.0.0/16, until 2026-12-04) missed the VPC that
    # `ray up` uses in practice (a default VPC is 172.31.0.0/16), so no load balancer reached Serve.
    assert "Default" not in template["Parameters"]["ServeCidr"]
    assert "0.0.0.0/0" not in json.dumps(group)
    refused = [a["Assert"]["Fn::Not"][0]["Fn::Equals"] for r in template["Rules"].values() for a in r["Assertions"]]
    assert [{"Ref": "SshCidr"}, "0.0.0.0/0"] in refused and [{"Ref": "ServeCidr"}, "0.0.0.0/0"] in refused
    (between,) = _resources(template, "AWS::EC2::SecurityGroupIngress")
    assert between["SourceSecurityGroupId"] == between["GroupId"]  # all traffic, between nodes only


# EC2's characters for a group's description and an address range's rule (botocore's model of
# CreateSecurityGroup, IpRange); a rule naming another group has no "&" (UserIdGroupPair).
EC2_DESCRIPTION = re.compile(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{0,255}")
EC2_GROUP_RULE_DESCRIPTION = re.compile(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=;{}!$*]{0,255}")


@pytest.mark.faults
def test_every_security_group_description_is_one_ec2_accepts(template):
    """An apostrophe ("the head's nginx") in the group's and a rule's description: EC2 refuses it
    (InvalidParameterValue), so the stack, and with it the head's instance profile, rolled back
    and `ray up` found no group (the AWS review, session 67)."""
    (group,) = _resources(template, "AWS::EC2::SecurityGroup")
    texts = [(group["GroupDescription"], EC2_DESCRIPTION)]
    texts += [(rule["Description"], EC2_DESCRIPTION) for rule in group["SecurityGroupIngress"]]
    texts += [
        (rule["Description"], EC2_GROUP_RULE_DESCRIPTION)
        for rule in _resources(template, "AWS::EC2::SecurityGroupIngress")
    ]
    assert len(texts) >= 4
    refused = [text for text, allowed in texts if not allowed.fullmatch(text)]
    assert not refused, refused
    assert not EC2_DESCRIPTION.fullmatch("the head's nginx")  # the pattern refuses what EC2 does


RFC_1918 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]


def _cfn_pattern(template: Dict, parameter: str) -> "re.Pattern[str]":
    """A parameter's AllowedPattern as Python's re reads it (the JSON string already decoded:
    CloudFormation's Java regex and Python's agree on the syntax it uses)."""
    return re.compile(template["Parameters"][parameter]["AllowedPattern"])


@pytest.mark.faults
def test_ssh_cidr_refuses_any_range_wider_than_a_slash_8(template):
    """Only the literal 0.0.0.0/0 was refused: 0.0.0.0/1 with 128.0.0.0/1 (the whole internet in
    two rules), or 203.0.113.7/0, passed the pattern (a review, 2026-12-05)."""
    pattern = _cfn_pattern(template, "SshCidr")
    for accepted in ("203.0.113.0/24", "198.51.100.7/32", "10.0.0.0/8", "172.31.0.0/16"):
        assert pattern.fullmatch(accepted), accepted
    for refused in (
        "0.0.0.0/0",
        "0.0.0.0/1",
        "128.0.0.0/1",
        "203.0.113.7/0",
        "8.0.0.0/7",
        "1.2.3.256/24",
        "1.2.3.4/33",
    ):
        assert not pattern.fullmatch(refused), refused


@pytest.mark.faults
def test_serve_cidr_accepts_private_ranges_only(template):
    pattern = _cfn_pattern(template, "ServeCidr")
    for accepted in ("172.31.0.0/16", "10.0.0.0/8", "192.168.1.0/24", "172.16.0.0/12", "10.1.2.3/32"):
        assert pattern.fullmatch(accepted), accepted
    refused = ["0.0.0.0/0", "0.0.0.0/1", "8.0.0.0/5", "128.0.0.0/1", "172.32.0.0/16", "11.0.0.0/8"]
    refused += ["10.0.0.0/7", "172.16.0.0/11", "192.168.0.0/15", "10.0.0.256/8", "10.0.0.0/33", " 10.0.0.0/8"]
    for cidr in refused:
        assert not pattern.fullmatch(cidr), cidr
    # Whatever it accepts is inside RFC 1918 (EC2 keeps a rule's network, host bits cleared).
    for first in range(256):
        for second in (0, 15, 16, 31, 32, 167, 168, 169, 255):
            for prefix in range(33):
                cidr = f"{first}.{second}.0.0/{prefix}"
                if pattern.fullmatch(cidr):
                    network = ipaddress.ip_network(cidr, strict=False)
                    assert any(network.subnet_of(private) for private in RFC_1918), cidr


def _shell_steps(commands: List[str], keep_env: bool = False) -> List[List[str]]:
    """Each ``&&``/``;``-separated step of the commands (outside quotes), as words, a loop's
    keyword, ``sudo`` and ``env NAME=VALUE`` (unless ``keep_env``) dropped, in order; a ``bash -c``
    script's steps follow the step that runs it."""
    steps = []
    for line in (line for command in commands for line in command.splitlines()):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        part: List[str] = []
        for token in [*lexer, ";"]:
            if token not in ("&&", ";"):
                part.append(token)
                continue
            words = part[1:] if part[:1] in (["until"], ["while"], ["do"], ["then"], ["if"]) else part
            words = words[1:] if words[:1] == ["sudo"] else words
            if words[:1] == ["env"] and not keep_env:
                words = words[1:]
                while words and re.fullmatch(r"\w+=.*", words[0]):
                    words = words[1:]
            if words:
                steps.append(words)
            for shell in ("bash", "sh"):
                if [shell, "-c"] in [words[i : i + 2] for i in range(len(words) - 1)]:
                    steps += _shell_steps([words[words.index(shell) + 2]], keep_env)
            part = []
    return steps


@pytest.mark.faults
def test_every_apt_get_on_a_node_runs_unattended(prepared):
    """Ray runs setup commands in an interactive login shell, where Ubuntu 22.04's needrestart
    asks which services to restart: a worker the autoscaler set up waited on a prompt no one
    answers (a review, 2026-12-06). And `apt-get update` does not wait for the lists' lock, which a
    fresh instance's apt-daily often holds (DPkg::Lock::Timeout is dpkg's lock alone): retried, for
    a bounded time (a review, 2026-12-07)."""
    commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands") for c in prepared[key]]
    (update,) = [c for c in prepared["setup_commands"] if " update " in c]
    assert re.match(r"timeout \d+ bash -c 'until [^']*apt-get update -y; do [^']*sleep \d+; done' && ", update), update
    apt = [words for words in _shell_steps(commands, keep_env=True) if "apt-get" in words]
    assert len(apt) >= 3 and any("update" in words for words in apt)
    for words in apt:
        assert words[0] == "env" and {"DEBIAN_FRONTEND=noninteractive", "NEEDRESTART_MODE=a"} <= set(words), words


def _run_makefile_apt_update(tmp_path, answers: List[str]) -> subprocess.CompletedProcess:
    """The Makefile's APT_UPDATE run with an `apt-get` on PATH that gives `answers` in turn
    ("ok", or an error line printed with exit 100), its calls counted in `calls`."""
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir(parents=True)
    script = ["#!/bin/sh", f'n=$(wc -l < "{tmp_path}/calls"); echo call >> "{tmp_path}/calls"']
    for i, answer in enumerate(answers):
        outcome = "exit 0" if answer == "ok" else f"echo {shlex.quote(answer)} >&2; exit 100"
        script.append(f'[ "$n" -eq {i} ] && {{ {outcome}; }}')
    fake.write_text("\n".join(script + ["exit 0"]) + "\n")
    fake.chmod(0o755)
    (tmp_path / "calls").write_text("")
    shown = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", REPO, "--eval", "show-apt-update: ; $(info $(APT_UPDATE))"]
        + ["show-apt-update", "SUDO=", "APT_WAIT_S=0"],
        capture_output=True,
        text=True,
        check=True,
    )
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    return subprocess.run(["sh", "-c", shown.stdout.strip()], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.faults
def test_make_setup_waits_for_apt_dailys_lock_and_stops_on_any_other_apt_error(tmp_path):
    """A fresh machine's apt-daily holds apt's lists lock for minutes: `make setup`'s `apt-get
    update` (python3-venv, libgomp1, chromium, nginx) failed at once (exit 100) where it would have
    worked a minute later. Retried while apt names a lock; any other error stops at once."""
    locked = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)"
    waited = _run_makefile_apt_update(tmp_path / "locked", [locked, locked, "ok"])
    assert waited.returncode == 0, waited.stderr
    assert (tmp_path / "locked" / "calls").read_text().count("call") == 3
    assert waited.stdout.count("waits for another apt") == 2
    offline = "E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease"
    not_root = "E: Could not open lock file /var/lib/apt/lists/lock - open (13: Permission denied)"
    for name, error in (("offline", offline), ("not-root", not_root)):
        failed = _run_makefile_apt_update(tmp_path / name, [error, "ok"])
        assert failed.returncode == 1 and error in failed.stderr, name
        assert (tmp_path / name / "calls").read_text().count("call") == 1, name
    with open(os.path.join(REPO, "Makefile")) as makefile:
        text = "".join(line for line in makefile if not line.lstrip().startswith("#"))
    assert "timeout" not in text.split("APT_UPDATE =")[1].splitlines()[0]  # sudo's prompt stopped under it
    unretried = [line for line in text.splitlines() if "apt-get update" in line and not line.startswith("APT_UPDATE =")]
    # setup's python3-venv and libgomp1, the browser's chromium, nginx's download, the tools' python3-venv.
    assert not unretried and text.count("$(APT_UPDATE) &&") == 5, unretried
    installs = re.findall(r"apt-get [^\n;]*install -y", text)
    assert installs and all("DPkg::Lock::Timeout" in line for line in installs), installs


@pytest.mark.faults
def test_the_head_fronts_serve_with_the_projects_nginx_config(config, prepared):
    """nginx (Debian's package) on the head, with deploy/nginx/ncf.conf in conf.d and the package's
    default site removed (it also claims port 80's default_server: it would take every request,
    and nginx -t refuses two), checked, then (re)loaded, each step only once the one before passed."""
    steps = _shell_steps(prepared["head_setup_commands"])
    conf = os.path.join(_project_dir(config), "deploy", "nginx", "ncf.conf")
    assert os.path.exists(NGINX_CONF)

    def at(matches) -> int:
        (index,) = [i for i, words in enumerate(steps) if matches(words)]
        return index

    install = at(lambda w: w[:1] == ["apt-get"] and "install" in w and "nginx" in w)
    assert "DPkg::Lock::Timeout=600" in steps[install] and "-y" in steps[install]
    copy_conf = at(lambda w: w[:1] == ["cp"] and conf in w)
    assert re.fullmatch(r"/etc/nginx/conf\.d/[\w.-]+\.conf", steps[copy_conf][-1]), steps[copy_conf]
    remove_default = at(lambda w: w[:1] == ["rm"] and "/etc/nginx/sites-enabled/default" in w)
    check = at(lambda w: w == ["nginx", "-t"])
    start = at(lambda w: w[:1] == ["systemctl"] and w[-1] == "nginx" and "reload-or-restart" in w)
    assert install < copy_conf < remove_default < check < start
    # One && chain from the copy to the (re)load: nothing loads a config that nginx -t refused.
    (chain,) = [c for c in prepared["head_setup_commands"] if "nginx -t" in c]
    assert ";" not in chain and all(part in chain for part in (conf, "sites-enabled/default", "systemctl"))
    for name, commands in _setup_commands_per_node_type(prepared).items():
        if name != prepared["head_node_type"]:
            assert not any("nginx" in c for c in commands), name  # the head's only


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
    # Named after the cluster, so each cluster's stack has its own role and profile: IAM names are
    # unique per account, and fixed names let only one stack exist in it.
    named = {"Fn::Sub": "${ClusterName}-head"}
    assert profile["InstanceProfileName"] == named
    assert _resources(template, "AWS::IAM::Role")[0]["RoleName"] == named
    assert head["IamInstanceProfile"] == {"Name": f"{config['cluster_name']}-head"}
    assert not any("IamInstanceProfile" in t["node_config"] for n, t in types.items() if n != config["head_node_type"])
    (role,) = _resources(template, "AWS::IAM::Role")
    assert "ManagedPolicyArns" not in role  # not Ray's default: AmazonEC2FullAccess + AmazonS3FullAccess
    assert template["Parameters"]["ClusterName"]["Default"] == config["cluster_name"]
    statements = _head_statements(template)
    actions = {a for s in statements for a in s["Action"]}
    # EC2 actions, and reading the AMIs' SSM parameters (RunInstances resolves an ImageId of
    # resolve:ssm:... as its caller): nothing else.
    assert {a for a in actions if not a.startswith("ec2:")} == {"ssm:GetParameters"}, actions
    assert all("*" not in a for a in actions), actions
    # cache_stopped_nodes false: Ray terminates nodes, never stops or starts them (least privilege).
    assert config["provider"]["cache_stopped_nodes"] is False
    assert not {"ec2:StartInstances", "ec2:StopInstances"} & actions, actions
    for s in statements:
        assert s["Effect"] == "Allow", s
        mutating = [a for a in s["Action"] if not a.startswith("ec2:Describe")]
        if s["Resource"] == "*":
            assert not mutating, s  # only describes on every resource
        if "ec2:TerminateInstances" in mutating:
            assert s["Condition"] == {"StringEquals": {"ec2:ResourceTag/ray-cluster-name": {"Ref": "ClusterName"}}}
        if "ssm:GetParameters" in s["Action"]:
            assert s["Action"] == ["ssm:GetParameters"] and isinstance(s["Resource"], list), s


def _head_statements(template: Dict) -> List[Dict]:
    (role,) = _resources(template, "AWS::IAM::Role")
    return [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]


def _sub(value: Any) -> str:
    """The string of an ``{"Fn::Sub": ...}`` resource, its ${...} left as they are."""
    assert isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str), value
    return value["Fn::Sub"]


# The public parameters of cluster.yaml's AMIs (Canonical's Ubuntu 22.04, AWS's Deep Learning Base
# AMI with the NVIDIA driver): the head may read these and nothing broader.
AMI_PARAMETER_PREFIXES = (
    "/aws/service/canonical/ubuntu/server/22.04/",
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/",
)
PUBLIC_PARAMETER_ARN = "arn:${AWS::Partition}:ssm:${AWS::Region}::parameter"  # no account: AWS's own


def test_the_head_may_read_the_ami_parameters_its_workers_launch_from(config, template):
    (statement,) = [s for s in _head_statements(template) if "ssm:GetParameters" in s["Action"]]
    assert "Condition" not in statement
    prefixes = []
    for resource in statement["Resource"]:
        arn = _sub(resource)
        assert arn.startswith(PUBLIC_PARAMETER_ARN + "/") and arn.endswith("/*"), arn
        prefix = arn[len(PUBLIC_PARAMETER_ARN) : -1]
        assert "*" not in prefix and any(prefix.startswith(p) for p in AMI_PARAMETER_PREFIXES), arn
        prefixes.append(prefix)
    used = set()
    for name, node_type in config["available_node_types"].items():
        image = node_type["node_config"]["ImageId"]
        if not image.startswith("resolve:ssm:"):
            continue
        parameter = image[len("resolve:ssm:") :]
        covering = [p for p in prefixes if parameter.startswith(p)]
        assert covering, (name, parameter, prefixes)  # else RunInstances is refused: AccessDenied
        used.update(covering)
    assert any(
        t["node_config"]["ImageId"].startswith("resolve:ssm:")
        for n, t in config["available_node_types"].items()
        if n != config["head_node_type"]
    )
    assert used == set(prefixes), "no parameter the head may read that no node type launches from"


def _rays_merge_tag_specs():
    """``AWSNodeProvider._merge_tag_specs`` from the installed Ray's source (its module imports
    boto3, which is not installed here): how a node_config's TagSpecifications join Ray's own."""
    spec = importlib.util.find_spec("ray.autoscaler._private.aws")
    source = os.path.join(os.path.dirname(spec.origin), "node_provider.py")
    with open(source) as f:
        tree = ast.parse(f.read())
    (function,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_merge_tag_specs"]
    function.decorator_list = []
    namespace = {"Any": Any, "Dict": Dict, "List": List}
    exec(compile(ast.Module(body=[function], type_ignores=[]), source, "exec"), namespace)
    return namespace["_merge_tag_specs"]


def _tags_at_launch(node_config: Dict, cluster_name: str) -> Dict[str, Dict[str, str]]:
    """RunInstances' tags per resource type, as ``AWSNodeProvider._create_node`` builds them: the
    instance gets ray-cluster-name (and the node's own tags, irrelevant here) from Ray; every other
    resource type only what node_config's TagSpecifications give it."""
    from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME

    tag_specs = [{"ResourceType": "instance", "Tags": [{"Key": TAG_RAY_CLUSTER_NAME, "Value": cluster_name}]}]
    _rays_merge_tag_specs()(tag_specs, copy.deepcopy(node_config.get("TagSpecifications", [])))
    tags: Dict[str, Dict[str, str]] = {}
    for spec in tag_specs:
        tags.setdefault(spec["ResourceType"], {}).update({t["Key"]: t["Value"] for t in spec["Tags"]})
    return tags


def test_every_resource_a_launch_creates_carries_the_tags_the_policy_requires(config, prepared, template):
    """The head may launch only where the request tags each resource type the statement names
    (instance/*, volume/*) with the cluster's name: Ray tags the instance, node_config's
    TagSpecifications must tag the volumes, or AWS refuses every worker launch."""
    defaults = {name: p.get("Default") for name, p in template["Parameters"].items()}
    conditioned = 0
    for statement in _head_statements(template):
        if "ec2:RunInstances" not in statement["Action"]:
            continue
        required = {}
        for operator, conditions in statement.get("Condition", {}).items():
            for key, value in conditions.items():
                if key.startswith("aws:RequestTag/"):
                    assert operator == "StringEquals", statement  # compared as an exact value below
                    required[key[len("aws:RequestTag/") :]] = value
        if not required:
            continue
        conditioned += 1
        required = {
            key: defaults[value["Ref"]] if isinstance(value, dict) else value for key, value in required.items()
        }
        assert required == {"ray-cluster-name": config["cluster_name"]}, required
        kinds = {_sub(r).rsplit(":", 1)[-1].split("/")[0] for r in statement["Resource"]}
        assert {"instance", "volume"} <= kinds, kinds  # the root volume is created by the launch too
        workers = [n for n in prepared["available_node_types"] if n != prepared["head_node_type"]]
        assert workers
        # The head's own launch (ray up, your credentials) is tagged alike.
        for name, node_type in prepared["available_node_types"].items():
            tags = _tags_at_launch(node_type["node_config"], prepared["cluster_name"])
            for kind in kinds:
                for key, value in required.items():
                    assert tags.get(kind, {}).get(key) == value, (name, kind, tags)
    assert conditioned == 1


def test_every_node_starts_ray_with_the_synced_auth_token(config, prepared):
    assert any(remote.endswith(".ray/auth_token") for remote in config["file_mounts"])
    starts = [
        c for c in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"] if "ray start" in c
    ]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "--address=$RAY_HEAD_IP:6379" in prepared["worker_start_ray_commands"][-1]


@pytest.mark.faults
def test_the_autoscaler_waits_out_a_gpu_workers_worst_case_set_up(prepared):
    """Autoscaler v2 (`ray up`'s default) ends a worker whose set-up and Ray start take more than
    30 minutes; a GPU worker's apt waits alone are bounded at 25 (the AWS review, session 67). The
    head's monitor, started by its `ray start`, is given an hour, under the name Ray reads."""
    import inspect

    from ray.autoscaler.v2.instance_manager import config as v2_config

    name = "RAY_AUTOSCALER_RECONCILE_RAY_INSTALL_STATUS_TIMEOUT_S"
    assert f'"{name}"' in inspect.getsource(v2_config)  # the variable Ray 2.60 reads
    (start,) = [c for c in prepared["head_start_ray_commands"] if "ray start" in c]
    allowed = int(re.search(rf"\b{name}=(\d+) ", start).group(1))
    setup = " ".join(prepared["available_node_types"]["gpu_worker"]["worker_setup_commands"])
    apt_waits = sum(int(s) for s in re.findall(r"timeout (\d+) bash", setup))
    apt_waits += sum(int(s) for s in re.findall(r"DPkg::Lock::Timeout=(\d+)", setup))
    assert apt_waits >= 1500 and allowed >= apt_waits + 1800, (allowed, apt_waits)
