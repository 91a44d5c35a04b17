"""One job of a kind at a time on a Ray cluster: a named slot that a job holds while it runs.

A slot is a named actor of no resources, which Ray removes when the job's driver exits, however
it exits (its owner gone), so a dead job never holds it. A second job is refused in one line
naming the first (:class:`ncf.staging.Busy`: exit status 75, try later). ``jobs.train`` and
``jobs.tune_sweep`` hold the training slot (:func:`ncf.train.slot.training_slot`), ``jobs.deploy``
the deploy slot (``serve.deploy_slot``).

Example::

    with cluster_slot("ncf-training-slot", "jobs.train train-20261204-101500", lambda first: f"busy: {first}"):
        fit(config)
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from ncf.errors import TryLater, one_line
from ncf.staging import Busy

SLOT_NAMESPACE = "ncf"  # drivers get anonymous namespaces; the slot must be seen by every job
SLOT_START_S = 120.0  # the slot's actor process started (seconds on a loaded node)


class SlotHeld:
    """What :func:`cluster_slot` yields: ``interrupted_at_release`` tells, after the block, that a
    Ctrl-C came while the slot was given back. The release does not raise it over the block's
    outcome; a job that would go on for long after (a foreground deploy's serving) stops instead."""

    interrupted_at_release = False


@contextmanager
def cluster_slot(name: str, holder: str, busy: Callable[[str], str]) -> Iterator[SlotHeld]:
    """Holds the cluster's slot ``name`` for the block (Ray must be up); ``holder`` names this
    job in the refusal another job gets, ``busy(the holder's name)`` (:class:`Busy`)."""
    import ray

    @ray.remote(num_cpus=0)
    class ClusterSlot:
        def __init__(self, holder: str) -> None:
            self.holder = holder

        def held_by(self) -> str:
            return self.holder

    try:
        slot = ClusterSlot.options(name=name, namespace=SLOT_NAMESPACE).remote(holder)
        # Through Ray Client (ray://) a taken name surfaces only when the actor is used: asked
        # once here, so that it does before any work (a second or two for the actor's process).
        ray.get(slot.held_by.remote(), timeout=SLOT_START_S)
    except ValueError:  # the name is taken: another job's slot
        raise Busy(busy(_holder(name))) from None
    except ray.exceptions.GetTimeoutError:
        _release(slot, name)
        raise TryLater(
            f"the cluster did not start the actor of the slot {name} (it asks for no resources) within "
            f"{SLOT_START_S:.0f} s; see `ray status` and the raylet's logs"
        ) from None
    except (ray.exceptions.RayActorError, ray.exceptions.RuntimeEnvSetupError) as e:
        # Its process died or never started (a node lost, out of memory, a runtime_env that
        # failed): nothing wrong with the command, and nothing done yet.
        _release(slot, name)
        raise TryLater(
            f"the actor of the slot {name} died before it answered ({one_line(e)}); "
            "see `ray status` and the raylet's logs, then run the job again"
        ) from None
    held = SlotHeld()
    try:
        yield held
    finally:
        held.interrupted_at_release = _release(slot, name)


def _release(slot, name: str) -> bool:
    """Kills the slot's actor and waits until its name is free; a failure here is said, never
    raised over the block's own result or error (the slot goes with the driver anyway). Returns
    whether a Ctrl-C came meanwhile."""
    import ray

    try:
        ray.kill(slot)
        _wait_released(name)
    except (Exception, KeyboardInterrupt) as e:  # Ctrl-C here: after the block's outcome, which stands
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        print(
            f"[slot] the slot {name} was not released ({reason}); it goes when this job ends",
            file=sys.stderr,
            flush=True,
        )
        return isinstance(e, KeyboardInterrupt)
    return False


def _wait_released(name: str, timeout_s: float = 30.0) -> None:
    """Returns once the slot's name is free again (ray.kill returns before the cluster has let
    it go), so that a job run right after this one (bench.runs' trainings, one after another)
    is not refused; after ``timeout_s`` returns anyway, the next job's refusal then saying so."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=SLOT_NAMESPACE)
        except ValueError:
            return
        time.sleep(0.05)


def _holder(name: str) -> str:
    import ray

    try:
        return ray.get(ray.get_actor(name, namespace=SLOT_NAMESPACE).held_by.remote(), timeout=30)
    except Exception:  # ended meanwhile, or not answering: the refusal still stands
        return "its name could not be read"
