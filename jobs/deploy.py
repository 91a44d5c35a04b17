"""python -m jobs.deploy --model MODEL [--host 127.0.0.1] [--port 8000]: the Serve app on a model.

Runs until interrupted (Ctrl-C or SIGTERM), or with --detach returns once the app answers;
--detach needs a running cluster (RAY_ADDRESS=HOST:6379, or `ray job submit`), which keeps
serving after the job ends, and is refused without one. Run it again on that cluster with
another --model to roll that model out in place, without downtime (or with the same paths once
a new model or DATA is written there: their fingerprints changed). Where Serve already runs on
the cluster a deploy needs --detach and Serve's own port (and host, unless Serve listens on every
address; refused in one line otherwise: a foreground deploy shuts Serve down when it stops, and
Serve keeps the address it started with).

A rollout the replicas refuse (they keep serving the previous model, /healthz names the error)
exits 2 with one line, after deploying the previous model's settings again, so that Serve's
target is a model that loads (serve.rollout): a replica Serve starts later serves it too; where
that restore leaves the replicas on different models (or one refusing it), or fails, it exits 1.
A rollout whose new replicas fail to start (new code, or replicas started from zero, which have no
model to keep) exits 1 with one line, after deploying the previous settings again the same way
where a replica served them when the job started; so does one whose app is not running within
--start-timeout-s (replicas no node can place, say), a first deploy's app deleted then (where no
other deploy changed it since). Every running replica must answer its health
(REPLICA_ANSWER_TIMEOUT_S): fewer answers exit 1 too, and so does a Serve whose app's served
settings cannot be read before the rollout, or differ between its replicas (nothing is deployed
then; 75 while the app deploys or is unhealthy). One deploy at a time on a cluster
(serve.deploy_slot): a second is refused in one line,
exit 75. Stopped (Ctrl-C: 130, SIGTERM: 143) after its rollout went to a running app, a deploy
says in one line that the rollout is unverified and how to check or undo it (a restore stopped
too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from typing import Dict, NamedTuple, NoReturn, Optional, Tuple

from jobs import started
from jobs.cli import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    bind_host,
    check_data,
    check_model,
    exit_status,
    fail,
    init_ray,
    job_parser,
    non_negative_int,
    positive_float,
    positive_int,
    positive_seconds,
    tcp_port,
)
from ncf.cluster import joins_a_cluster
from ncf.errors import EXIT_TRY_LATER, InputError, TryLater
from ncf.moments import DATA_END, NOW
from ncf.rank.ranker import MAX_K
from serve.app import app_of, replica_memory_bytes, serve_settings
from serve.deploy_slot import deploy_slot
from serve.launch import (
    APP_NAME,
    COLD_LOAD_TIMEOUT_S,
    HEALTHY_TIMEOUT_S,
    REPLICA_ANSWER_TIMEOUT_S,
    START_TIMEOUT_S,
    DeployStalled,
    every_replica_health,
    running_address,
    running_replicas,
    serve_until_stopped,
    shutdown_serve,
    start,
    start_failure_reason,
    wait_until_healthy,
)
from serve.limits import REQUEST_TIMEOUT_S
from serve.rollout import (
    Restored,
    ServingUnknown,
    check_can_deploy,
    check_proxy_takes_name,
    delete_unstarted,
    dropped_data_note,
    kept_runtime_env,
    refused_rollout,
    restore_previous,
    serving_before,
    serving_other_settings,
    target_asks,
)
from serve.service import PASS_WAIT_S, ServeSettings

MEMORY_NOTE_BYTES = 2 << 30  # a replica needing this much or more: the job says so where no memory is asked
# Ray's default temp dir, on each node that ran a replica (cluster.yaml's replicas run on workers).
REPLICA_LOGS = "/tmp/ray/session_latest/logs/serve/ on each node running a replica (`ray logs` lists them)"


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser("deploy", "Serve a model directory over HTTP with Ray Serve (autoscaling).", uses_ray=True)
    p.add_argument(
        "--model",
        required=True,
        help="model directory (jobs.train output or SWEEP/best), or current (the registry's, resolved now: "
        "deploying current again after jobs.models rollback rolls out the version current before it, which "
        "is the one served before only where every promote was deployed)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="DATA directory whose histories the model ranks from (jobs.preprocess, or --state-only for a "
        "cheap refresh); default: the state the model was trained with",
    )
    p.add_argument("--host", type=bind_host, default="127.0.0.1", help="address to bind (127.0.0.1: local only)")
    p.add_argument("--port", type=tcp_port, default=8000, help="HTTP port")
    p.add_argument(
        "--candidates",
        type=positive_int,
        default=None,
        help=f"first-stage candidates re-ranked, at least {MAX_K} (the largest k a request may ask for; "
        "default: the model's)",
    )
    p.add_argument(
        "--default-at",
        choices=(NOW, DATA_END),
        default=NOW,
        help="moment of requests without 'at' (now: the clock, never before data-end; data-end: the first moment "
        "after the data, the midnight after its last day in a log of dates)",
    )
    p.add_argument(
        "--request-timeout-s",
        type=request_timeout,
        default=REQUEST_TIMEOUT_S,
        help="a request not answered within this gets 504 (applies when this command starts Serve; the explorer "
        "page gives up on a call after 45 s whatever this says)",
    )
    p.add_argument(
        "--start-timeout-s",
        type=positive_seconds,
        default=START_TIMEOUT_S,
        help="how long the app may take to be running (its replicas placed and loaded) before the deploy ends "
        "in one line, a rollout undone, a first deploy's app deleted (a restore waits as long again); default "
        "1800: on an autoscaling cluster a new node's launch, then a model's cold load at scale",
    )
    p.add_argument(
        "--replica-memory-gb",
        type=positive_float,
        default=None,
        help="memory each replica asks Ray for, GiB, so that Ray places replicas by memory too (default: none, "
        "by CPUs only; the job prints what the model needs, about 5 GiB at 10M x 1M and a second copy of the "
        "weights during a rollout). Keep it the same across rollouts: a change restarts the replicas",
    )
    p.add_argument("--min-replicas", type=non_negative_int, default=1, help="replicas kept when idle (autoscaling)")
    p.add_argument("--max-replicas", type=positive_int, default=2, help="replicas at most under load (autoscaling)")
    p.add_argument("--detach", action="store_true", help="return once deployed (on a running cluster)")
    p.add_argument(
        "--ui",
        action="store_true",
        help="also serve the explorer page at /ui (off by default; reachable where Serve binds, see --host)",
    )
    return p.parse_args(argv)


def _ray_started_here() -> bool:
    """Whether this process is already on a cluster (a caller that ran ray.init and outlives the job)."""
    import ray

    return ray.is_initialized()


def main(argv=None) -> dict:
    args = parse_args(argv)
    app_args = {
        "model": args.model,
        "data": args.data,
        "candidates": args.candidates,
        "default_at": args.default_at,
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "ui": args.ui,
        "memory_gb": args.replica_memory_gb,
    }
    with ExitStack() as turn:
        try:
            settings = _checked(args, app_args)
            init_ray()
            # Held from reading what Serve serves until the rollout is checked or undone: two
            # deploys at once undid each other's rollouts (serve.deploy_slot).
            slot = turn.enter_context(deploy_slot(f"jobs.deploy --model {app_args['model']}"))
            _check_still_named(args, app_args["model"])
            before = _before_rollout(args)
        except (InputError, ValueError) as e:
            fail(str(e), exit_status(e))
        except ServingUnknown as e:  # before anything changed: a refused rollout could not be undone
            fail(str(e), EXIT_TRY_LATER if e.retry else EXIT_FAILED)
        except KeyboardInterrupt:  # the slot's start, waking a replica: minutes, before any change
            fail("interrupted before anything was deployed", EXIT_INTERRUPTED)
        if before.serving is None:
            # A first deploy starts with a replica (an app of --min-replicas 0 too, so that its
            # health is heard); a rollout leaves initial_replicas unset, so that Serve keeps the
            # replicas the autoscaler runs (serve.app._application).
            app_args["initial_replicas"] = max(args.min_replicas, 1)
        outcome = _rolled_out(args, app_args, settings, before)
    if not args.detach:
        if slot.interrupted_at_release:  # the Ctrl-C that ends serving came first: stopped as serving is
            _stop_owned(True)
        else:
            serve_until_stopped()
    return outcome


def _check_still_named(args: argparse.Namespace, resolved: str) -> None:
    """Refuses (TryLater) a registry reference (``current``) that names another model now than
    when the job started: another deploy may have rolled that one out while this one waited for
    the cluster and the slot (minutes on a loaded head), and this one would have rolled the older
    model back out over it, both exiting 0."""
    from ncf.registry import is_registry_ref

    if not is_registry_ref(args.model):
        return
    now = check_model(args.model, verify=False)
    if os.path.realpath(now) != os.path.realpath(resolved):
        raise TryLater(
            f"--model {args.model} named {resolved} when this deploy started and names {now} now (a promote or "
            "rollback meanwhile): nothing deployed; deploy again to roll out what it names now"
        )


def _checked(args: argparse.Namespace, app_args: dict) -> ServeSettings:
    """The deploy's input checked before Ray starts (InputError, ValueError): the settings the
    replicas will load; ``app_args``' model resolved in place."""
    if args.detach and not joins_a_cluster() and not _ray_started_here():
        raise InputError(
            "--detach needs a running cluster to leave the app on: set RAY_ADDRESS to its head "
            "(HOST:6379, from `ray start --head`) or submit the job with `ray job submit`; without "
            "RAY_ADDRESS (or with RAY_ADDRESS=local) the job's own cluster stops when it exits"
        )
    # current: the registry's current version, now; build_app verifies the directory.
    app_args["model"] = check_model(args.model, verify=False)
    if args.data is not None:  # an empty one (a script's unset variable) is refused, not dropped
        check_data(args.data)
    settings = serve_settings(app_args)  # checks the settings before Ray starts
    if args.replica_memory_gb is None:
        need = replica_memory_bytes(os.path.realpath(app_args["model"]), args.data)
        if need >= MEMORY_NOTE_BYTES:
            print(
                f"[deploy] note: each replica holds about {need / 2**30:.1f} GiB (rollouts included) and asks "
                f"Ray for CPUs only: --replica-memory-gb {need / 2**30:.1f} places replicas by memory too",
                file=sys.stderr,
                flush=True,
            )
    return settings


class _Before(NamedTuple):
    """Serve before the rollout: where it listens (None: not running), the settings the app's
    replicas serve (None: nothing served, a first deploy) and what each of them asked Ray for
    (None: not known, :func:`serve.rollout.target_asks`), and the runtime environment a rollout of
    the same code keeps (None: the job's own, :func:`serve.rollout.kept_runtime_env`)."""

    running: Optional[Tuple[str, int]]
    serving: Optional[Dict]
    asks: Optional[Dict]
    runtime_env: Optional[Dict] = None


# A request for a past day not kept waits up to PASS_WAIT_S for its pass, then gets 503 with
# Retry-After (the explorer asks again): Serve's timeout must leave it that, and its answer's time.
MIN_REQUEST_TIMEOUT_S = PASS_WAIT_S + 5.0


def request_timeout(text: str) -> float:
    """argparse type of --request-timeout-s: above :data:`MIN_REQUEST_TIMEOUT_S`, ``inf`` for none."""
    value = positive_seconds(text)
    if value < MIN_REQUEST_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_REQUEST_TIMEOUT_S:.0f} s, not {text}: a request for a past day not kept waits up "
            f"to {PASS_WAIT_S:.0f} s for its pass before a 503 with Retry-After, which a shorter timeout turns into a "
            "504 without one"
        )
    return value


def _before_rollout(args: argparse.Namespace) -> _Before:
    """Serve as it is before the rollout; refuses a deploy it would not do as asked (InputError)
    or whose failure could not be undone (ServingUnknown)."""
    running = running_address()
    check_can_deploy(running, args.host, args.port, args.detach)
    check_proxy_takes_name(running, args.host, args.port)
    serving = serving_before(running)
    note = dropped_data_note(args.data, serving)
    if note:
        print(f"[deploy] note: {note}", file=sys.stderr, flush=True)
    if serving is None:
        return _Before(running, None, None)
    return _Before(running, serving, target_asks(serving), kept_runtime_env())


def _rolled_out(args: argparse.Namespace, app_args: dict, settings: ServeSettings, before: _Before) -> dict:
    """The app deployed and every replica heard serving it (the outcome the job prints), or the
    job ended in one line, a failed rollout undone where the settings served before are known."""
    deployed = settings.user_config()

    def restore() -> Restored:
        """Serve's target put back on the settings served before (serve.rollout), in words."""
        try:
            return restore_previous(
                app_args,
                args.host,
                args.port,
                args.request_timeout_s,
                before.serving,
                before.asks,
                deployed,
                start_timeout_s=args.start_timeout_s,
                runtime_env=before.runtime_env,
            )
        except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C or SIGTERM: the restore's outcome unknown
            fail(_unverified(before.serving), _stopped_status(stop))

    # A foreground deploy that starts Serve owns it: stopped before the job ends without serving
    # (a failure, Ctrl-C or SIGTERM while the model loads), not left holding the port on a cluster.
    owns_serve = before.running is None and not args.detach

    def give_up(message: str, status: int = EXIT_FAILED) -> NoReturn:
        _stop_owned(owns_serve)
        fail(message, status)

    def undone() -> Optional[Restored]:
        """The settings served before deployed again, where they are known."""
        return restore() if before.serving is not None else None

    def undone_words(restored: Optional[Restored]) -> str:
        return f"; the settings served before: {restored.words}" if restored is not None else ""

    handed_off = []  # set once Serve took the app: a failure after it leaves the rollout Serve's target
    try:
        url, health, replicas, heard = _started(app_of(app_args, settings, before.runtime_env), args, handed_off)
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C, or SIGTERM (SystemExit 143, jobs.cli)
        _interrupted(stop, before.serving, owns_serve)
    except InputError as e:  # the address answers, but will not take the app's questions
        restored = undone() if handed_off else None
        # Bad input once what served before serves again; a restore that did not agree is a failure.
        give_up(f"{e}{undone_words(restored)}", exit_status(e) if restored is None or restored.agreed else EXIT_FAILED)
    except TimeoutError as e:  # the replicas did not come up (their logs say why), or Ray's proxies
        # A rollout whose replicas never answer (a model that loads for longer than the wait, or
        # one a replica woken from zero fails on) would stay Serve's target: undone where known.
        # restore_previous deploys nothing where Serve's target is not this rollout's.
        give_up(f"{e}{undone_words(undone())}; the replicas' logs: {REPLICA_LOGS}")
    except RuntimeError as e:  # replicas failed to start (DEPLOY_FAILED) or to run in time, or the proxy to bind
        # New replicas (new code, or any replica with no model yet to keep: one started from zero)
        # raise in reconfigure, and replicas no node can place wait for good; Serve's target
        # would stay those settings, which every replica Serve starts later would fail on too.
        # Undone where the served ones are known.
        reason = start_failure_reason(e)  # before a restore replaces the failed status
        if before.serving is not None:
            words = undone_words(undone())
        elif isinstance(e, DeployStalled) and not owns_serve:
            try:
                words = f"; {delete_unstarted(deployed)}"
            except KeyboardInterrupt:  # serve.delete waits for the app to go
                fail(f"Serve could not start the app ({reason}); interrupted while deleting it", EXIT_INTERRUPTED)
        else:
            words = ""
        give_up(f"Serve could not start the app ({reason}){words}; the replicas' logs: {REPLICA_LOGS}")
    except BaseException:
        _stop_owned(owns_serve)
        raise
    refused = refused_rollout(heard.answers)
    if refused:
        # The replicas refused the model and keep the previous one: bad input, as a refused model
        # is, once every replica is heard serving the previous one again; otherwise the run failed.
        restored = restore()
        give_up(f"{refused} ({restored.words})", EXIT_BAD_INPUT if restored.agreed else EXIT_FAILED)
    # A replica not heard may serve anything: a success would vouch for it.
    unverified = f"the rollout is Serve's target, unverified on the others; the replicas' logs: {REPLICA_LOGS}"
    if heard.unheard:
        give_up(f"{heard.words()} answered their health within {REPLICA_ANSWER_TIMEOUT_S:.0f} s: {unverified}")
    try:
        elsewhere = serving_other_settings(deployed, max(replicas, 1), REPLICA_ANSWER_TIMEOUT_S)
    except (KeyboardInterrupt, SystemExit) as stop:
        _interrupted(stop, before.serving, owns_serve, answered=True)
    except TimeoutError as e:  # as in the health round
        give_up(f"{e}: {unverified}")
    if elsewhere:  # the replicas serve two models: all of them put back on the one served before
        give_up(f"{elsewhere} ({restore().words})")
    pages = {"openapi": f"{url}/openapi.json", **({"ui": f"{url}/ui"} if args.ui else {})}
    outcome = {**health, "replicas_checked": len(heard.answers)}
    print(json.dumps({"url": url, **pages, **outcome}), flush=True)
    return outcome


def _started(app, args: argparse.Namespace, handed_off: list) -> tuple:
    """Serve started (or the app rolled out) and answering: (url, /healthz's answer, the replicas
    running, each running one's health, :class:`serve.launch.Heard`). ``handed_off`` gets an
    entry once Serve runs the app."""
    url = start(
        app,
        host=args.host,
        port=args.port,
        request_timeout_s=args.request_timeout_s,
        start_timeout_s=args.start_timeout_s,
    )
    handed_off.append(url)
    # An app scaled to zero is RUNNING without a replica: /healthz wakes one, which loads the model.
    health = wait_until_healthy(url, COLD_LOAD_TIMEOUT_S if running_replicas() == 0 else HEALTHY_TIMEOUT_S)
    replicas = running_replicas()
    # The HTTP answer is one replica's too (by its tag): the handle's questions add the others.
    heard = every_replica_health(replicas, timeout_s=REPLICA_ANSWER_TIMEOUT_S, first=health)
    return url, health, replicas, heard


def _interrupted(stop: BaseException, serving: Optional[Dict], owns_serve: bool, answered: bool = False) -> NoReturn:
    """Ends a job stopped (``stop``: Ctrl-C's KeyboardInterrupt, SIGTERM's SystemExit) while its
    app started: in one line, the rollout unverified, where an app served before (``serving``);
    a first deploy's Serve this job owns stopped. A first deploy into a Serve it did not start
    (``--detach``, or one already running) stays Serve's target: Serve goes on starting it, for good where no node can
    place its replicas, and the next deploy waits on it (exit 75) until it is deleted.
    ``answered``: stopped after every replica answered its health, while asked what it serves."""
    if serving is not None:  # the running app's target may be the new settings by now
        fail(_unverified(serving), _stopped_status(stop))
    _stop_owned(owns_serve)
    if isinstance(stop, KeyboardInterrupt):
        if owns_serve:
            left = ""
        elif answered:
            left = (
                f"; the app runs as Serve's target, its replicas' settings not compared: "
                f"serve.delete('{APP_NAME}') removes it"
            )
        else:
            left = (
                f"; where Serve took the app, it stays Serve's target, still starting: `serve status` says "
                f"how it goes, serve.delete('{APP_NAME}') removes it"
            )
        stage = "while the replicas were asked what they serve" if answered else "before the app answered"
        fail(f"interrupted {stage}{left}", EXIT_INTERRUPTED)
    raise SystemExit(_stopped_status(stop)) from None  # SIGTERM's line is the shell's own


def _stopped_status(stop: BaseException) -> int:
    """The exit status of a job ``stop`` ended: 130 for Ctrl-C, SIGTERM's 143 (jobs.cli), and 1
    for a SystemExit without a failing status (``sys.exit()`` would say success)."""
    if isinstance(stop, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    code = getattr(stop, "code", None)
    return code if isinstance(code, int) and code != 0 else EXIT_FAILED


def _unverified(serving: Dict) -> str:
    """The line of a job stopped after its rollout went to a running app: Serve's target may be
    the new settings, which no one checks now (replicas that refuse them keep the old model, and
    every replica Serve starts later fails on them); how to check it, or undo it. The undo names
    what was served, not a command: the options that served it (host, port, candidates...) are
    the earlier deploy's."""
    data = f" with DATA {serving['data']}" if serving.get("data") else ""
    return (
        "interrupted after the rollout went to Serve: it may be Serve's target, unverified on the replicas; "
        "run the same command again to check every replica (a rollout every replica refused is undone then; "
        "replicas left serving different models refuse every deploy until the app is deleted), or undo "
        f"it: model {serving.get('model_dir')}{data} was served before, deploy it again with the options of "
        "the deploy that served it"
    )


def _stop_owned(owns_serve: bool) -> None:
    """Shuts down the Serve this job started in the foreground, before the job ends without serving."""
    if owns_serve:
        shutdown_serve()


if __name__ == "__main__":
    started()  # Ctrl-C from here on is the deploy's to answer (jobs/__init__.py)
    main()
