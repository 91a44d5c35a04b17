"""The products' stats at several cutoffs: one driver pass after another against preprocessing's
Ray tasks (:func:`ncf.data.preprocess.stats_at`), on one DATA in one run, as JSON.

python -m bench.product_stats [--data artifacts/scale/u1000000-p100000-l20/data] [--cutoffs 9]
    [--cpus 2]

The cutoffs are the data's end and the weeks before it, as many as ``--cutoffs`` (Complete
Journey's preprocessing uses 9: the end and 8 training cutoffs). Both ways must give the same
arrays (checked); the figures are wall seconds and the growth of the driver's peak memory above
its start (anonymous plus shared: the tasks' results arrive in Ray's shared-memory object store),
sampled every 20 ms. The tasks run first and again last, so that neither way alone reads the
state's files cold.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np

WEEK = 7 * 86_400
FIELDS = ("lines", "recent_lines", "buyers", "rebuy_rate", "cycle_days", "by_hour")
NEIGHBOUR_FIELDS = ("indptr", "indices", "weights")  # the co-purchase neighbours' CSR rows


class MemoryPeak:
    """The peak of this process's anonymous and shared resident memory while the block runs."""

    def __enter__(self) -> "MemoryPeak":
        self.base = self.peak = _held_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _held_bytes())
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _held_bytes())

    @property
    def growth_mib(self) -> int:
        return round((self.peak - self.base) / 2**20)


def _held_bytes() -> int:
    """RssAnon + RssShmem of this process."""
    held = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("RssAnon:", "RssShmem:")):
                held += int(line.split()[1]) * 1024
    return held


def read_every_array(stats: dict) -> None:
    """Sums every array of each cutoff's stats: the tasks' results are views into Ray's object
    store, whose pages count in the driver's memory only once read, as the job reads them."""
    for at_cutoff in stats.values():
        for field in FIELDS:
            np.sum(getattr(at_cutoff, field))
        for field in NEIGHBOUR_FIELDS:
            np.sum(getattr(at_cutoff.neighbours, field))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="artifacts/scale/u1000000-p100000-l20/data")
    p.add_argument("--cutoffs", type=int, default=9)
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from jobs.cli import init_ray
    from ncf.data import layout
    from ncf.data.preprocess import stats_at
    from ncf.data.product_stats import ProductStats
    from ncf.data.user_state import UserStates
    from ncf.data.vocab import Vocabularies

    states = UserStates.load(layout.user_state_dir(args.data))
    category = Vocabularies.load(layout.vocab_dir(args.data)).products.column("category_index")
    end = layout.DataStats(args.data).end
    cutoffs = [end + 1 - week * WEEK for week in range(args.cutoffs)]
    init_ray(num_cpus=args.cpus)

    def by_tasks() -> tuple:
        with MemoryPeak() as memory:
            started = time.perf_counter()
            stats = stats_at(args.data, category, cutoffs)
            seconds = time.perf_counter() - started
            read_every_array(stats)
        return stats, seconds, memory

    first, first_s, tasks_memory = by_tasks()  # the memory figure: this run's, before any other
    with MemoryPeak() as driver_memory:
        started = time.perf_counter()
        in_driver = {c: ProductStats.compute(states, category, c) for c in cutoffs}
        driver_s = time.perf_counter() - started
    last, last_s, _ = by_tasks()
    tasks_s = (first_s + last_s) / 2
    same = all(
        np.array_equal(getattr(in_driver[c], f), getattr(got[c], f), equal_nan=True)
        for got in (first, last)
        for c in cutoffs
        for f in FIELDS
    ) and all(
        np.array_equal(getattr(in_driver[c].neighbours, f), getattr(got[c].neighbours, f))
        for got in (first, last)
        for c in cutoffs
        for f in NEIGHBOUR_FIELDS
    )
    result = {
        "benchmark": "product_stats",
        "data": args.data,
        "purchases": len(states.products),
        "products": len(category) - 1,
        "cutoffs": len(cutoffs),
        "cpus": args.cpus,
        "driver_one_after_another_s": round(driver_s, 1),
        "ray_tasks_s": round(tasks_s, 1),
        "ray_tasks_s_first_and_last": [round(first_s, 1), round(last_s, 1)],
        "speedup": round(driver_s / tasks_s, 2),
        "driver_memory_growth_mib": {
            "one_after_another": driver_memory.growth_mib,
            "ray_tasks": tasks_memory.growth_mib,
        },
        "same_arrays": same,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
