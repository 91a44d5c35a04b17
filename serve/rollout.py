"""What a deploy onto a cluster checks before it rolls a model out, and undoes after a rollout
that failed (``jobs.deploy``: the replicas refused it, or its replicas did not start or come
up): whether the Serve already running there would do as asked, what the rollout would drop,
and Serve's target put back on the settings that load.

Serve keeps the address it started with, and a foreground deploy shuts Serve down, every app of
it, when it stops: a redeploy onto a running Serve goes with ``--detach`` to the same port (and
host, unless Serve listens on every address).

Example::

    running = running_address()          # after ray.init
    check_can_deploy(running, "127.0.0.1", 8000, detach=True)
"""

from __future__ import annotations

import urllib.error
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Tuple

from ncf.errors import InputError
from serve.launch import (
    APP_NAME,
    LOCAL,
    START_TIMEOUT_S,
    WILDCARD_HOSTS,
    ReplicasDiffer,
    base_url,
    check_port_free,
    every_replica_health,
    every_replica_served,
    failure_line,
    running_replicas,
    serving_user_config,
    settings_key,
    start,
)
from serve.limits import EXTRA_HOSTS_ENV, LOOPBACK_NAMES, ip_address_of
from serve.service import ServeSettings, same_content_on_disk


def check_can_deploy(running: Optional[Tuple[str, int]], host: str, port: int, detach: bool) -> None:
    """Refuses (InputError, one line) a deploy that Serve already running on the cluster would
    not do as asked: one in the foreground (it shuts Serve down, every app of it, when it stops),
    or one on another port, or another host than a Serve bound to one address (the job would
    wait on the wrong one while the rollout went ahead). Without Serve on the cluster, refuses a
    port something else listens on: whatever answers there (a foreground deploy on another
    cluster, say) would pass the deploy's health check. ``running``:
    :func:`serve.launch.running_address`."""
    if running is None:
        check_port_free(host, port, "stop it or deploy on another --port")
        return
    if not detach:
        raise InputError(
            f"Serve already runs on this cluster ({base_url(*running)}): roll out into it with --detach; "
            "a deploy in the foreground shuts Serve down, every app of it, when it stops"
        )
    if not serves_address(running, host, port):
        raise InputError(
            f"Serve already runs on this cluster at {base_url(*running)} and keeps that address: deploy with "
            f"--host {running[0]} --port {running[1]}, or stop it first (serve shutdown)"
        )


def check_proxy_takes_name(running: Optional[Tuple[str, int]], host: str, port: int) -> None:
    """Refuses (InputError, one line) a deploy onto a running Serve whose proxy answers requests
    naming ``host`` with 421: a name that reaches it on a loopback address (``ncf.local``,
    ``localhost4``) and that its proxies did not start with (:data:`serve.limits.EXTRA_HOSTS_ENV`
    is read when Serve starts, from the deploy that started it). The deploy's health probe asks
    by that name: it met the 421 and undid a good rollout, and every client using the name would
    too. One request to the proxy's own ``/-/healthz``; where the name does not reach it, the
    deploy's other checks say so."""
    if running is None or ip_address_of(host) is not None or host.lower() in LOOPBACK_NAMES:
        return  # an address or localhost: the proxy takes them all
    try:
        with LOCAL.open(f"{base_url(host, port)}/-/healthz", timeout=5):
            return
    except urllib.error.HTTPError as e:
        if e.code != 421:
            return
    except OSError:
        return
    address = "127.0.0.1" if running[0] in WILDCARD_HOSTS else running[0]
    raise InputError(
        f"Serve's proxy at {base_url(*running)} refuses requests naming {host} (421: a name for a loopback address "
        f"its proxies did not start with): deploy with --host {address}, or start Serve again with "
        f"{EXTRA_HOSTS_ENV}={host} set for the deploy that starts it"
    )


def serves_address(running: Tuple[str, int], host: str, port: int) -> bool:
    """Whether a Serve listening at ``running`` (host, port) answers on ``host:port``."""
    running_host, running_port = running
    if running_port != port:
        return False
    if running_host == "0.0.0.0":  # every IPv4 address: an IPv6 one (::1) is refused there
        return ":" not in host
    return running_host in WILDCARD_HOSTS or running_host == host


class ServingUnknown(RuntimeError):
    """What the app of ours on the cluster serves could not be read (a question timed out, the
    controller failed), or its replicas serve different settings: a deploy then could not undo a
    rollout the replicas refuse, so it is refused before anything changes (``jobs.deploy``: one
    line, exit 1; 75 where ``retry``: the app is still deploying or unhealthy, which clears once
    Serve settles it)."""

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


def serving_before(running: Optional[Tuple[str, int]]) -> Optional[Dict]:
    """The settings the app's replicas serve before a rollout (None: no app of ours, or no model
    loaded yet): what a rollout that fails on some replica is undone to, and what a rollout
    without DATA would drop. ``running``: :func:`serve.launch.running_address`.

    Raises :class:`ServingUnknown` where the app is there but what it serves cannot be read
    (taken for "no app", a failed rollout was then left as Serve's target without a word), or
    where its replicas serve different settings (one replica's were restored to before)."""
    if running is None:
        return None
    from ray import serve

    status = None
    try:
        applications = serve.status().applications
        if APP_NAME not in applications:
            return None
        status = str(applications[APP_NAME].status)
        return serving_user_config()
    except ReplicasDiffer as e:  # a restore that left them so (exit 1), or a rollout Serve still applies
        settling = _settling(status)
        raise ServingUnknown(
            f"the app's replicas serve different settings ({e}); nothing was deployed: a rollout the replicas "
            "refused could not be undone" + (_settling_words(status) if settling else DELETE_WORDS),
            retry=settling,
        ) from None
    except Exception as e:
        settling = _settling(status)
        failed = status is not None and status.endswith("DEPLOY_FAILED")  # stays so: only a delete clears it
        raise ServingUnknown(
            f"cannot tell what Serve serves ({type(e).__name__}: {failure_line(e)}); nothing was deployed: "
            "a rollout the replicas refused could not be undone"
            + (_settling_words(status) if settling else DELETE_WORDS if failed else ""),
            retry=settling,
        ) from None


DELETE_WORDS = f"; delete the app (serve.delete('{APP_NAME}')) to deploy afresh"
SETTLING = ("NOT_STARTED", "DEPLOYING", "UNHEALTHY", "DELETING")  # statuses Serve moves on from by itself


def _settling(status: Optional[str]) -> bool:
    """Whether the app's status (None: not read) is one Serve moves on from: deploying, unhealthy,
    deleting. Not DEPLOY_FAILED, which stays until the next deploy: a retry would meet it again."""
    return status is not None and status.rsplit(".", 1)[-1] in SETTLING


def _settling_words(status: str) -> str:
    """What to do about an app Serve has not settled (status ``status``), in words."""
    return (
        f"; the app is {status.rsplit('.', 1)[-1]}: retry once Serve settles it, or delete it "
        f"(serve.delete('{APP_NAME}')) to deploy afresh"
    )


def dropped_data_note(data: Optional[str], serving: Optional[Dict]) -> Optional[str]:
    """What a rollout without DATA drops, in words, when Serve ranks from a DATA now
    (``serving``: :func:`serving_before`): the model's own state (its training DATA's histories)
    replaces the fresher ones (a redeploy after ``jobs.models promote`` or ``rollback`` most of
    all). None when nothing is dropped."""
    if data is not None or not (serving and serving.get("data")):
        return None
    return (
        f"Serve ranks from DATA {serving['data']}; without --data this rollout ranks from the model's own "
        f"state (the histories it was trained with): pass --data {serving['data']} to keep it"
    )


def target_asks(serving: Dict, app_name: str = APP_NAME) -> Optional[Dict]:
    """The resources each replica serving ``serving`` (:func:`serving_before`) asked Ray for, as
    :func:`serve.app.build_app`'s args (``num_cpus``, ``memory_gb``): what a restore asks for
    again, so that a rollout whose replicas no node can place (a ``--replica-memory-gb`` beyond
    every node) is undone to asks that placed replicas. Read from Serve's target, so only where
    its user_config is ``serving``; None where it is not (an earlier rollout's, stalled or
    interrupted: its asks may be the ones no node could place), and a restore then asks what the
    deploy's own options ask. Raises :class:`ServingUnknown` where the target cannot be read
    (before anything changed)."""
    try:
        target = _target(app_name)
    except Exception as e:  # the controller failed meanwhile: refused as serving_before's errors are
        raise ServingUnknown(
            f"cannot tell what Serve's replicas ask for ({type(e).__name__}: {failure_line(e)}); nothing was deployed"
        ) from None
    if target.deployment_config.user_config != serving:
        return None
    options = target.replica_config.ray_actor_options or {}
    asks = {"memory_gb": options["memory"] / 2**30 if options.get("memory") else None}
    return {**asks, "num_cpus": options["num_cpus"]} if "num_cpus" in options else asks


def kept_runtime_env(app_name: str = APP_NAME) -> Optional[Dict]:
    """The runtime environment of Serve's target for the app where its code is this job's (the same
    :func:`serve.app.code_version`), for a rollout to keep: Serve gives replicas the deploying
    job's own where the app sets none (``ray job submit --working-dir .``: a package of every file,
    README and tests too, and env_vars such as ``NCF_CODE_COMMIT``), and another one restarts every
    replica, needing room for a surge and failing a refused model as DEPLOY_FAILED, instead of the
    reconfigure in place a model rollout is. None where there is no app, other code, or no reading."""
    from serve.app import code_version

    try:
        target = _target(app_name)
    except Exception:  # noqa: BLE001 (no app, or the controller failed: the job's own environment, as before)
        return None
    if target is None or target.version != code_version():
        return None
    return (target.replica_config.ray_actor_options or {}).get("runtime_env")


def _target(app_name: str = APP_NAME):
    """Serve's target for the app's deployment (a ``DeploymentInfo``): what a replica Serve
    starts next runs (its user_config, its resource asks), whatever the running ones serve."""
    from ray.serve.context import _get_global_client

    from serve.app import DEPLOYMENT_NAME

    info, _ = _get_global_client().get_deployment_info(DEPLOYMENT_NAME, app_name)
    return info


def _refusals(answers: Dict[str, Dict]) -> List[Dict]:
    """The health answers (``/healthz``, :func:`serve.launch.every_replica_health`) of replicas
    that refused the last rollout (they name its ``rollout_error``)."""
    return [health for health in answers.values() if health.get("rollout_error")]


def refused_rollout(answers: Dict[str, Dict]) -> Optional[str]:
    """The job's error line for a rollout some replica refused (``answers``: each replica's
    ``/healthz``, :func:`serve.launch.every_replica_health`); None when none did."""
    refused = _refusals(answers)
    if not refused:
        return None
    first = refused[0]
    return (
        f"the rollout failed on {len(refused)} of {len(answers)} replica(s), which kept serving model "
        f"{first['model_version']}: {first['rollout_error']}"
    )


def serving_other_settings(deployed: Dict, replicas: int, timeout_s: float) -> Optional[str]:
    """Words for the replicas heard serving other settings than ``deployed`` (the rollout's
    user_config) without a rollout error to say so (a reconfigure Serve never called, or one
    undone since), asked each one's :meth:`~serve.app.RecommenderDeployment.served_settings`;
    None where every replica heard serves it. Health alone does not tell: a replica on the
    previous model without an error answers as healthy as one on the rollout's.

    Raises:
        TimeoutError: some running replica did not say what it serves within ``timeout_s``.
    """
    answers = every_replica_served(replicas, APP_NAME, timeout_s)
    other = [a["user_config"] for a in answers.values() if settings_key(a["user_config"]) != settings_key(deployed)]
    if not other:
        return None
    return (
        f"{len(other)} of {len(answers)} replica(s) serve {_what_differs(other[0] or {}, deployed or {})}, not the "
        "rollout's, without a rollout error"
    )


def _what_differs(theirs: Dict, ours: Dict) -> str:
    """A replica's settings beside the rollout's, in words: its model, or (the same model) the
    settings that differ: a rollout of another --data named the rollout's own model as the
    replica's (a review of serve/, 2026-12-07)."""
    if theirs.get("model_dir") != ours.get("model_dir"):
        return f"model {theirs.get('model_dir')}"
    differ = [
        f"{name} {str(theirs.get(name))[:60]}, not {str(ours.get(name))[:60]}"
        for name in sorted(set(theirs) | set(ours))
        if settings_key(theirs.get(name)) != settings_key(ours.get(name))  # as the answers were compared
    ]
    return "other settings (" + "; ".join(differ[:3]) + ")"


class Restored(NamedTuple):
    """What became of Serve's target after :func:`restore_previous`, in words (for the job's
    error line), and whether every replica was heard serving one model without a rollout error."""

    words: str
    agreed: bool


def restore_previous(
    app_args: dict,
    host: str,
    port: int,
    request_timeout_s: Optional[float],
    previous: Optional[Dict] = None,
    asks: Optional[Dict] = None,
    deployed: Optional[Dict] = None,
    start_timeout_s: float = START_TIMEOUT_S,
    runtime_env: Optional[Dict] = None,
) -> Restored:
    """Deploys the settings served before the rollout (``previous``, :func:`serving_before`)
    with ``app_args``' scaling options and the resource asks of the replicas that served them
    (``asks``, :func:`target_asks`), so that Serve's target, and every replica, is a model that
    loads (model, DATA, their fingerprints, candidates, default moment, ui), then asks every
    replica's health: Serve counts a replica whose reconfigure kept its model (our replicas do
    not raise) as on the target all the same, so a replica that took the refused model and cannot
    load the previous one again (its files replaced since) would go on serving the refused one.

    Used after a rollout the running replicas refused (they kept their model), after one whose
    new replicas failed to start (Serve's DEPLOY_FAILED: new code, or a replica started with no
    model to keep) and after one whose app did not run within its wait (replicas not placed,
    say). Without ``previous`` nothing is deployed: what a replica serves after the rollout may
    be the refused model, where some replica took it. Nor where Serve's target is no longer ``deployed`` (the
    user_config this job rolled out): another deploy since, not jobs.deploy's (those take turns,
    :mod:`serve.deploy_slot`), is not undone. The restore waits up to ``start_timeout_s`` for
    its app to run (:func:`serve.launch.start`), as the rollout did, in the runtime environment
    the rollout kept (``runtime_env``, :func:`kept_runtime_env`; None: the job's own)."""
    from serve.app import restore_app

    if previous is None:
        return Restored("Serve's target is still the refused settings: nothing served before the rollout", False)
    moved = None if deployed is None else _target_moved(deployed)
    if moved is not None:
        return Restored(f"not deployed again: {moved}", False)
    try:
        restoring = restore_app({**app_args, **(asks or {})}, previous, runtime_env)
        start(restoring, host=host, port=port, request_timeout_s=request_timeout_s, start_timeout_s=start_timeout_s)
    except Exception as e:  # new code whose replicas fail with any model, say: the job still ends with its line
        return Restored(f"deploying the serving settings again failed too ({failure_line(e)})", False)
    try:
        heard = every_replica_health(running_replicas())
    except Exception as e:  # noqa: BLE001 (Serve's controller gone meanwhile: the job still ends with its line)
        return Restored(f"deployed again, but the replicas could not be asked ({failure_line(e)})", False)
    differ = replicas_differ(heard.answers, len(heard.answers) + heard.unheard)
    words = (
        "deployed again as Serve's target" if differ is None else f"deployed again, but replicas still differ: {differ}"
    )
    # The replicas keep the model they hold; one started later fails (exit 1) where its paths now
    # hold other files (a model retrained into the same path, DATA rebuilt in place: it refuses
    # them) or none it can read (an old blue/green target pruned).
    try:
        changed = None
        if not same_content_on_disk(ServeSettings.from_user_config(previous)):
            changed = "its paths now hold other files, which replicas started later refuse (they fail to start)"
    except (InputError, OSError) as e:
        changed = f"its files cannot be read now ({failure_line(e)}), so replicas started later fail"
    if changed is not None:
        return Restored(f"{words}; {changed}: deploy a model that loads", False)
    return Restored(words, differ is None)


def delete_unstarted(deployed: Dict) -> str:
    """Deletes the app of a first deploy that did not come up within its wait, and says so in
    words: left, replicas no node can place wait for good, and the next deploy waited on them and
    was refused. Not where Serve's target is no longer ``deployed`` (the user_config this job
    deployed): another deploy since owns the app."""
    from ray import serve

    moved = _target_moved(deployed)
    if moved is not None:
        return f"the app is not deleted: {moved}"
    try:
        serve.delete(APP_NAME)
    except Exception as e:  # noqa: BLE001 (the controller failed: the job's line says what to do)
        return f"deleting the app failed too ({failure_line(e)}): delete it (serve.delete('{APP_NAME}'))"
    return "nothing served before: the app is deleted"


def _target_moved(deployed: Dict) -> Optional[str]:
    """Why Serve's target is not the user_config this job deployed (``deployed``), in words: a
    deploy by other means since (``serve deploy``, a script) whose settings a restore would undo;
    None when it still is."""
    try:
        target = _target().deployment_config.user_config
    except Exception as e:  # the app deleted meanwhile, the controller failed: nothing is undone blindly
        return f"Serve's target cannot be read ({type(e).__name__}: {failure_line(e)})"
    if target == deployed:
        return None
    model = target.get("model_dir") if isinstance(target, dict) else None
    return f"Serve's target is no longer this rollout's settings but model_dir {model} (another deploy since)"


def replicas_differ(answers: Dict[str, Dict], replicas: int) -> Optional[str]:
    """Why the replicas are not all heard serving one model without a rollout error, in words
    (``answers``: each replica's ``/healthz``, :func:`serve.launch.every_replica_health`;
    ``replicas``: how many run); None when they are."""
    versions = Counter(str(health.get("model_version")) for health in answers.values())
    errors = [health["rollout_error"] for health in _refusals(answers)]
    if len(answers) >= max(replicas, 1) and len(versions) == 1 and not errors:
        return None
    served = ", ".join(f"model {version} on {count}" for version, count in sorted(versions.items()))
    heard = f"{len(answers)} of {max(replicas, len(answers))} replica(s) answered ({served or 'none'})"
    return f"{heard}; {len(errors)} failed to load it: {errors[0]}" if errors else heard
