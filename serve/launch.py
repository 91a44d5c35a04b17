"""Starting the application on a Ray cluster and waiting until it answers (deploy job, tests,
benchmarks): one way to do it, so they all see the same server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Tuple

from ncf.errors import InputError, raised_within
from serve.limits import REQUEST_TIMEOUT_S, proxy_env

APP_NAME = "ncf"
# How long a deploy waits for its app to be RUNNING (jobs.deploy's --start-timeout-s): on an
# autoscaling cluster a node's launch (minutes, for a head of CPU 0 and workers scaled to zero)
# and then a model's cold load at the largest scale (a few minutes), with room to spare.
START_TIMEOUT_S = 1800.0
# Hosts that bind every address: a server there answers on 127.0.0.1 too (and on whichever host
# a redeploy names).
WILDCARD_HOSTS = ("0.0.0.0", "::")


def start(
    app,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_name: str = APP_NAME,
    request_timeout_s: Optional[float] = REQUEST_TIMEOUT_S,
    route_prefix: str = "/",
    start_timeout_s: float = START_TIMEOUT_S,
) -> str:
    """Deploys ``app`` (:func:`serve.app.build_app`'s result) behind HTTP on ``host:port`` and
    returns the base URL. Binds to 127.0.0.1 unless told otherwise. Called again with the same
    ``app_name`` it rolls the new app out (in place when only the model or options changed).

    The first call starts Serve: its HTTP proxy answers a request not done within
    ``request_timeout_s`` with 504, and runs :class:`serve.limits.EdgeLimits` (body size, body
    read deadline) before a request reaches a replica. Those options belong to the Serve
    instance: later calls (rollouts, other apps) keep the ones it started with.

    Returns once the app is RUNNING; raises as :func:`wait_until_running` does where Serve fails
    it or it is not RUNNING within ``start_timeout_s`` (RuntimeError, both).

    One HTTP proxy, on the head node (as ``serve/config.yaml`` says): the head is the cluster's
    ingress (``cluster.yaml``), and Ray's default, a proxy on every node with a replica bound to
    ``host``, would open the port on workers no reverse proxy stands in front of."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s},
        controller_options={"runtime_env": {"env_vars": proxy_env(host)}},
    )
    running = running_address()
    if running is not None and running[1] != port:  # Serve keeps its port: the app would not be at ours
        raise InputError(f"Serve already runs on this cluster at {base_url(*running)} and keeps that port, not {port}")
    # Not serve.run's own wait, which has no end: replicas Ray cannot place (a memory ask beyond
    # every node, say) stay STARTING for good, and the deploy hung with them.
    try:
        serve.run_many(
            [serve.RunTarget(target=app, name=app_name, route_prefix=route_prefix)],
            wait_for_applications_running=False,
        )
    except RayServeException as e:  # ray.get's RayTaskError(RayServeException) is one too
        taken = _ROUTE_TAKEN.search(str(e))
        if taken is None:
            raise
        other = taken.group(2)
        raise InputError(
            f"Serve's route {taken.group(1)} is taken by another application, {other} (`serve run`'s is "
            f"named default): nothing was deployed; remove it first (serve.delete({other!r}), or serve shutdown "
            "where nothing else is served)"
        ) from None
    wait_until_running(app_name, start_timeout_s)
    return base_url(host, port)


# Serve's refusal of an app whose route another app holds (ApplicationStateManager.deploy_apps).
_ROUTE_TAKEN = re.compile(r'Prefix (\S+) is being used by application "([^"]*)"')


class DeployStalled(RuntimeError):
    """The app was not RUNNING within the wait's timeout: replicas Ray cannot place (resources no
    node has, or a node that never comes), replicas that keep failing beside one that runs (Serve
    then never fails the deployment), or a load that does not end. A RuntimeError, as Serve's own
    DEPLOY_FAILED is: the jobs take both for an app that did not start."""


STATUS_POLL_S = 0.5  # between two readings of the app's status while it deploys
# Once the app runs: how long no replica is being started, reconfigured or stopped (a replica
# waiting for a node aside: an upscale's, not the rollout's) before the wait for every replica
# to have the rollout ends.
SETTLE_GRACE_S = 30.0
# Serve's words in a deployment's message (deployment_state.py): replicas no node has room for
# yet (SLOW_STARTUP_WARNING_S), and a replica's constructor failing, retried without end beside
# running replicas (a first deploy's; no rollout's end to wait for).
_WAITING_FOR_A_NODE = re.compile(r"has (\d+) replicas that have taken more than \d+s to be scheduled")
_CONSTRUCTOR_RETRIED = "A replica failed to start with exception. Retrying"


def wait_until_running(app_name: str = APP_NAME, timeout_s: float = START_TIMEOUT_S) -> None:
    """Returns once the app is RUNNING and its deployment HEALTHY (every replica on the new
    settings). Raises RuntimeError at once where Serve failed it (DEPLOY_FAILED, as
    ``serve.run`` did) or it is unhealthy because its replicas fail to start, and
    :class:`DeployStalled` where it is not RUNNING within ``timeout_s``, naming the replicas'
    states and Serve's message for the deployment (the resources a replica asks for and the
    cluster's, once Serve has waited 30 s to place one).

    One deadline, not a wait for progress: on an autoscaling cluster replicas stay STARTING,
    unchanged, for the minutes a new node takes to come up, and a crash loop beside one running
    replica changes state at each retry without end.

    RUNNING alone is not the rollout's end: an autoscaling decision during a rollout turns the
    deployment's UPDATING into UPSCALING or DOWNSCALING, which Serve reports as a RUNNING app while
    replicas still run, or are being given, the previous settings; heard then, a good rollout read
    as two models served (and was undone), or a replica still loading went unheard. Once the app
    has run, the wait returns, for the replicas' own answers to tell the rollout, where no replica
    was started, reconfigured or stopped for :data:`SETTLE_GRACE_S` (one waiting for a node aside:
    an upscale's), at the deadline, and where Serve then fails the deployment (new replicas
    refusing a model they have no earlier one to keep beside: the running ones' refusals say it;
    Serve's reason is said on stderr)."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    ran_at = moved_at = None  # once the app runs: when, and when a replica was last rolled
    while True:
        app = serve.status().applications.get(app_name)
        now = time.monotonic()
        if app is None:
            raise RuntimeError(f"the application {app_name} is gone from Serve while it deployed")
        if ran_at is not None and (app.status != ApplicationStatus.RUNNING or _rolling(app)):
            moved_at = now
        if app.status == ApplicationStatus.RUNNING:
            if _rolled_out(app):
                return
            if ran_at is None:
                ran_at = now
                print(
                    f"[deploy] {app_name} runs; waiting for Serve to finish the rollout on every replica "
                    f"(an autoscaling decision came during it; at most {timeout_s:.0f} s in all)",
                    file=sys.stderr,
                    flush=True,
                )
            if now - (moved_at or ran_at) >= SETTLE_GRACE_S or now >= deadline:
                return
        elif ran_at is not None and (app.status == ApplicationStatus.DEPLOY_FAILED or _startups_fail(app)):
            reason = " ".join((app.message or failed_replicas_reason(app_name) or "").split())[:300]
            print(
                f"[deploy] Serve failed {app_name}'s deployment after it ran ({reason or 'no reason given'}); "
                "asking its replicas what they serve",
                file=sys.stderr,
                flush=True,
            )
            return
        elif app.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"Deploying application {app_name} failed: {app.message}")
        elif _startups_fail(app):
            raise RuntimeError(f"the application {app_name} is unhealthy: its replicas fail to start")
        elif now >= deadline:
            if ran_at is not None:
                return
            raise DeployStalled(_stalled_words(app, timeout_s))
        time.sleep(STATUS_POLL_S)


def _rolling(app) -> bool:
    """Whether a replica of the app's deployment is being started, reconfigured or stopped (a
    rollout under way), but for replicas Serve says wait for a node (an upscale's) and those whose
    constructor fails again and again."""
    deployment = _deployment_in(app)
    states = {} if deployment is None else deployment.replica_states
    counts = {getattr(state, "value", state): n for state, n in states.items()}
    if counts.get("UPDATING") or counts.get("STOPPING"):
        return True
    message = _deployment_message(deployment)
    if _CONSTRUCTOR_RETRIED in message:
        return False
    waiting = _WAITING_FOR_A_NODE.search(message)
    return counts.get("STARTING", 0) > (int(waiting.group(1)) if waiting else 0)


def _deployment_in(app):
    """The app's deployment in a status of Serve's (``app``: its application's), or None (no app,
    or no deployment yet)."""
    from serve.app import DEPLOYMENT_NAME

    return None if app is None else app.deployments.get(DEPLOYMENT_NAME)


def _rolled_out(app) -> bool:
    """Whether Serve says the app's deployment has every replica running its target settings."""
    from ray.serve._private.common import DeploymentStatus

    deployment = _deployment_in(app)
    return deployment is None or deployment.status == DeploymentStatus.HEALTHY


def _stalled_words(app, timeout_s: float) -> str:
    """Why the app is not up, in one line: the replicas' states and the deployment's message."""
    deployment = _deployment_in(app)
    states = {} if deployment is None else deployment.replica_states
    counts = ", ".join(f"{n} {getattr(s, 'value', s)}" for s, n in sorted(states.items())) or "none"
    message = " ".join(_deployment_message(deployment).split())[:500]
    return (
        f"the app was not running within the start timeout, {timeout_s:.0f} s "
        f"(app {getattr(app.status, 'value', app.status)}; replicas: {counts}): "
        + (message or "resources no node has free (see `ray status`), or a load that does not end")
    )


def failure_line(error: Exception) -> str:
    """What went wrong in Serve, in one line: the error raised inside its actor (a replica's
    constructor, the proxy's bind) rather than Ray's wrapping, whose first line names the actor
    (in terminal colours)."""
    inner = raised_within(error, Exception) or error
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return lines[0] if lines else type(inner).__name__


_TERMINAL_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def _deployment_message(deployment) -> str:
    """The message Serve keeps in a deployment's status (a replica constructor's traceback),
    without the terminal colours Ray writes it in; "" for no deployment."""
    return _TERMINAL_COLOURS.sub("", deployment.message if deployment else "")


def failed_replicas_reason(app_name: str = APP_NAME) -> Optional[str]:
    """Why the app's replicas failed to start, in one line (the last of the error Serve keeps in
    the deployment's status: a replica constructor's exception), or None. Serve's own
    DEPLOY_FAILED error names only the deployment."""
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception:  # noqa: BLE001 (the controller gone: the job's line goes without it)
        return None
    lines = [line.strip() for line in _deployment_message(_deployment_in(app)).splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


def start_failure_reason(error: Exception, app_name: str = APP_NAME) -> str:
    """Why Serve could not start the app, in one line: its error's (:func:`failure_line`) and the
    replicas' own reason where that error does not hold it (:func:`failed_replicas_reason`)."""
    reason = failure_line(error)
    replicas_reason = failed_replicas_reason(app_name)
    return f"{reason} {replicas_reason}" if replicas_reason and replicas_reason not in reason else reason


# Ray's default temp dir: where Serve logs when no Ray session of this process says otherwise.
DEFAULT_SERVE_LOGS = "/tmp/ray/session_latest/logs/serve"


def serve_logs_dir() -> str:
    """Serve's log directory in this process's Ray session (its controller's and proxy's, on the
    node this process runs on: the head, for a job), read from the session itself: ``ray.init``
    may have been given another temp dir than Ray's default. Ray keeps no public accessor."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return DEFAULT_SERVE_LOGS if node is None else os.path.join(node.get_logs_dir_path(), "serve")


def base_url(host: str, port: int) -> str:
    """``http://HOST:PORT``, an IPv6 host in brackets (``--host ::1``)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_port_free(host: str, port: int, instead: str) -> None:
    """Refuses (InputError, one line) a ``port`` something already listens on at ``host``
    (127.0.0.1 for a wildcard host): a Serve left running by jobs.deploy, say, which would answer
    the health check and the queries meant for the one about to start. ``instead``: what to do,
    in words."""
    probe_host = "127.0.0.1" if not host or host in WILDCARD_HOSTS else host.strip("[]")
    try:
        with socket.create_connection((probe_host, port), timeout=1):
            pass
    except OSError:
        return
    raise InputError(
        f"--port {port}: something already listens on {probe_host}:{port} (a Serve from jobs.deploy?); {instead}"
    )


def running_address() -> Optional[Tuple[str, int]]:
    """(host, port) where the Serve instance already running on the cluster Ray is connected to
    listens; None when none runs. A later :func:`start` keeps them whatever it asks for (Serve
    only logs that the new HTTP options are ignored)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else (client.http_config.host, int(client.http_config.port))


# How long a question to the app's replicas may wait: an app scaled to zero (--min-replicas 0)
# starts a replica for it, which loads its model first (seconds on Complete Journey, a minute or
# two for a 10M x 1M state; serve.limits.STARTING_RETRY_AFTER_S).
COLD_LOAD_TIMEOUT_S = 300.0
SERVING_ANSWER_TIMEOUT_S = 60.0  # any other app: a running replica answers in milliseconds


class ReplicasDiffer(RuntimeError):
    """The app's running replicas serve different settings: no one of them is what the app serves."""


def serving_user_config(app_name: str = APP_NAME, timeout_s: float = COLD_LOAD_TIMEOUT_S) -> Optional[Dict]:
    """The user_config of the model the replicas of ``app_name`` serve (None: none loaded yet, or
    an app failed, or unhealthy because its replicas fail to start, with no replica running),
    asked through a deployment handle: /healthz does not tell a client the server's paths. Waits
    up to ``timeout_s`` for an answer from an app scaled to zero (it first starts a replica, which
    loads its model), 60 s from any other.

    Every running replica is asked: after a restore that left them on different models one answer
    said nothing of the others. Raises :class:`ReplicasDiffer` where they serve different
    settings, TimeoutError where some did not answer."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from serve.app import DEPLOYMENT_NAME

    # One reading of the app's state: two could disagree (a replica started between them).
    app = serve.status().applications.get(app_name)
    running = _running_in(app)
    if app is not None and running == 0 and (app.status == ApplicationStatus.DEPLOY_FAILED or _startups_fail(app)):
        # No replica would answer: the question would only wait out its timeout. Replicas that ran
        # once and now fail to start (files replaced under the served paths) leave the app
        # UNHEALTHY for good, and a deploy that would mend it was refused as unsettled; one whose
        # replica died and is being replaced (a health check, a lost node) is only settling.
        return None
    if running or app is None or app.status != ApplicationStatus.RUNNING:
        # A replica that runs answers at once; one deploying or crash-looping is not a cold load.
        timeout_s = min(timeout_s, SERVING_ANSWER_TIMEOUT_S)
    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name)
    if not running:  # one question, which wakes a replica of an app scaled to zero
        return handle.serving_user_config.remote().result(timeout_s=timeout_s)
    return _served_by_every_replica(handle, running, app_name, timeout_s)


def _served_by_every_replica(handle, running: int, app_name: str, timeout_s: float) -> Optional[Dict]:
    """The settings that the ``running`` replicas all serve, each asked its
    :meth:`~serve.app.RecommenderDeployment.served_settings`. Replicas of the code before that
    method (an upgrade's first rollout reads them) are asked once, as that code did."""
    started = time.monotonic()
    try:  # one question first: old code refuses it at once, where the rounds would wait out their timeout
        first = handle.served_settings.remote().result(timeout_s=timeout_s)
    except Exception as e:
        if not no_such_method(e, "served_settings"):
            raise
        return handle.serving_user_config.remote().result(timeout_s=timeout_s)
    # One timeout for both: the rounds after a slow first answer waited a whole one more.
    answers = every_replica_served(running, app_name, timeout_s, first, spent_s=time.monotonic() - started)
    served = Counter(settings_key(answer["user_config"]) for answer in answers.values())
    if len(served) > 1:
        raise ReplicasDiffer(_settings_words(served))
    return next(iter(answers.values()))["user_config"]  # as the replica said it, not through JSON


def every_replica_served(
    replicas: int, app_name: str, timeout_s: float, first: Optional[Dict] = None, spent_s: float = 0.0
) -> Dict[str, Dict]:
    """Each replica's :meth:`~serve.app.RecommenderDeployment.served_settings` (by its tag), from
    every replica Serve runs (:func:`every_replica_answer`; ``replicas``: how many ran when
    counted; ``first``: one answer already had, ``spent_s`` of ``timeout_s`` spent on it).

    Raises:
        TimeoutError: some running replica did not answer within ``timeout_s``.
    """
    heard = every_replica_answer("served_settings", replicas, app_name, max(0.0, timeout_s - spent_s), first)
    if heard.unheard:
        raise TimeoutError(f"{heard.words()} said what they serve within {timeout_s:.0f} s")
    return heard.answers


def settings_key(user_config: Optional[Dict]) -> str:
    """A user_config as one comparable string (replicas' answers are compared by it)."""
    return json.dumps(user_config, sort_keys=True)


def no_such_method(error: Exception, method: str) -> bool:
    """Whether ``error`` is a replica's refusal of a ``method`` its deployment's code lacks."""
    return f"Tried to call a method '{method}' that does not exist" in str(error)


def _settings_words(served: Counter) -> str:
    """The settings the replicas serve, in words (``served``: replicas by settings, as JSON): each
    one's model directory and the start of its fingerprint (the model's version first)."""
    words = []
    for config, count in served.most_common():
        settings = json.loads(config) or {}
        words.append(f"{settings.get('model_dir')} ({str(settings.get('model_fingerprint'))[:20]}) on {count}")
    return f"{sum(served.values())} replicas serve {len(served)} different settings: " + ", ".join(words)


# The jobs' own requests to the Serve they started: never through an http_proxy of the
# environment (urlopen's default), which would answer for 127.0.0.1 itself, or not at all.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# What /healthz may answer while an app comes up: not routed yet (404), not ready (503), a
# replica restarting (5xx). Any other refusal (421 for a host name the proxy does not take, say)
# will not change by waiting.
PASSING_STATUSES = (404, 408, 429)


HEALTHY_TIMEOUT_S = 60.0  # for a running replica's /healthz to answer 200


def wait_until_healthy(base_url: str, timeout_s: float = HEALTHY_TIMEOUT_S) -> Dict:
    """Polls ``/healthz`` until it answers 200 (returns its JSON) or ``timeout_s`` passes
    (TimeoutError); an answer that waiting will not change is refused at once (InputError)."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        try:
            with LOCAL.open(f"{base_url}/healthz", timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code not in PASSING_STATUSES:
                raise InputError(f"{base_url}/healthz answered {e.code}: {_error_text(e)}") from None
            last_error = f"HTTP {e.code}: {_error_text(e)}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last_error = str(e)
        time.sleep(0.25)
    raise TimeoutError(f"{base_url}/healthz not healthy after {timeout_s:.0f} s: {last_error}")


def _error_text(error: urllib.error.HTTPError) -> str:
    """The ``error`` of a JSON error answer, else its reason."""
    try:
        return str(json.loads(error.read(MAX_ERROR_READ))["error"])
    except Exception:  # noqa: BLE001 (not our JSON: Serve's plain text, a body cut short)
        return str(error.reason)


MAX_ERROR_READ = 4096
ANSWER_PAUSE_S = 0.1  # between two rounds of every_replica_health's questions
# How long jobs.deploy asks the replicas for their health: a replica answers /healthz beside
# requests in flight (a past day's pass of minutes included), so only a hung one takes this long.
REPLICA_ANSWER_TIMEOUT_S = 30.0


class Heard(NamedTuple):
    """The answers of the replicas Serve runs, by tag, and how many running ones did not answer."""

    answers: Dict[str, Dict]
    unheard: int

    def words(self) -> str:
        return f"only {len(self.answers)} of {len(self.answers) + self.unheard} replica(s)"


def every_replica_health(
    replicas: int, app_name: str = APP_NAME, timeout_s: float = REPLICA_ANSWER_TIMEOUT_S, first: Optional[Dict] = None
) -> Heard:
    """The health of each replica of the app (``/healthz``'s answer, by its ``replica`` tag),
    asked through a deployment handle (:func:`every_replica_answer`). One answer says nothing of
    the others: a rollout that failed on one replica of two (out of memory there, DATA replaced
    between their loads) passed a single probe, and answers alternated between two models. Not
    over HTTP: Serve's proxy prefers its own node's replicas, so a probe from the head never met
    another node's."""
    return every_replica_answer("healthz", replicas, app_name, timeout_s, first)


def every_replica_answer(
    method: str, replicas: int, app_name: str, timeout_s: float, first: Optional[Dict] = None
) -> Heard:
    """Each running replica's answer to the deployment's ``method`` (one whose answer, a dict,
    names its ``replica``), by tag, asked until every replica Serve runs has answered or
    ``timeout_s`` passes; ``replicas``: how many ran when counted (the rounds' size); ``first``:
    an answer already had, not asked for again.

    The replicas are known by their ids, read again after each round that left one unheard: one
    the autoscaler stopped meanwhile (a deploy just after a busy spell) is not waited for, and
    its answer no longer speaks for the app; one started meanwhile is asked too. A count would
    not do: a stopped replica's answer stood for a running one that never answered."""
    from ray import serve

    from serve.app import DEPLOYMENT_NAME

    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name)
    answers: Dict[str, Dict] = {} if first is None else {str(first.get("replica")): first}
    deadline = time.monotonic() + timeout_s
    running = running_replica_ids(app_name)
    while not _all_heard(answers, running) and time.monotonic() < deadline:
        for answer in _round(getattr(handle, method), 2 * max(replicas, len(running), 1), deadline):
            answers[str(answer.get("replica"))] = answer
        running = running_replica_ids(app_name)
        if not _all_heard(answers, running):
            time.sleep(ANSWER_PAUSE_S)  # not a busy loop of questions while waiting for another replica
    if not running:  # a replica answers only once Serve runs it: these were stopped since
        return Heard({}, 1)
    return Heard({tag: a for tag, a in answers.items() if tag in running}, len(running - answers.keys()))


def _all_heard(answers: Dict[str, Dict], running: set) -> bool:
    return bool(running) and running <= answers.keys()


def running_replica_ids(app_name: str = APP_NAME) -> set:
    """The ids of the app's replicas Serve runs now (a replica's tag is its id), those on a node
    being drained included (Serve still routes to them, :data:`SERVING_STATES`); none where no
    Serve controller was started in this session."""
    from ray.serve.context import _get_global_client

    from serve.app import DEPLOYMENT_NAME

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return set()
    details = client.get_serve_details()
    deployment = ((details.get("applications") or {}).get(app_name) or {}).get("deployments", {}).get(DEPLOYMENT_NAME)
    replicas = (deployment or {}).get("replicas") or []
    return {str(r.get("replica_id")) for r in replicas if r.get("state") in SERVING_STATES}


def _round(method, questions: int, deadline: float) -> List:
    """The answers to ``questions`` questions of ``method`` (a handle's) sent at once. At once:
    the handle sends each to the replica with the fewest requests in flight, so questions one at
    a time never reached a replica busy with a long request (a past day's pass), while a round of
    twice as many as there are replicas fills the idle ones' counts past the busy one's."""
    responses = [method.remote() for _ in range(questions)]
    answers = []
    for response in responses:
        try:
            answers.append(response.result(timeout_s=max(0.5, deadline - time.monotonic())))
        except Exception:  # noqa: BLE001 (a replica stopping, or without a model yet: the next round asks again)
            response.cancel()  # not left queued at a hung replica
    return answers


def _startups_fail(app) -> bool:
    """Whether the app's deployment is unhealthy because its replicas fail to start."""
    from ray.serve._private.common import DeploymentStatusTrigger
    from ray.serve.schema import ApplicationStatus

    deployment = _deployment_in(app)
    return (
        app.status == ApplicationStatus.UNHEALTHY
        and deployment is not None
        and deployment.status_trigger == DeploymentStatusTrigger.REPLICA_STARTUP_FAILED
    )


# Replica states Serve routes requests to: running, and running on a node being drained.
SERVING_STATES = ("RUNNING", "PENDING_MIGRATION")


def running_replicas(app_name: str = APP_NAME) -> int:
    """How many replicas of the app's deployment Serve runs now (0: no such app)."""
    from ray import serve

    return _running_in(serve.status().applications.get(app_name))


def _running_in(app) -> int:
    """How many replicas of the deployment run in ``app`` (a status of Serve's; None: no app)."""
    deployment = _deployment_in(app)
    states = {} if deployment is None else deployment.replica_states
    return sum(count for state, count in states.items() if state in SERVING_STATES)


def serve_until_stopped() -> None:
    """Blocks until Ctrl-C or SIGTERM (what `ray job stop` and process managers send), then
    shuts Serve down so that the replicas drain rather than die mid-request."""

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        shutdown_serve()


def shutdown_serve() -> None:
    """Shuts Serve down (the replicas drain: up to 30 s), a second Ctrl-C meanwhile ignored: the
    shutdown was asked already and goes on, so it would only end the job in a traceback."""
    from ray import serve

    print("[serve] shutting Serve down (its replicas finish their requests)", file=sys.stderr, flush=True)
    in_main = threading.current_thread() is threading.main_thread()  # signal.signal's own rule
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        serve.shutdown()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
