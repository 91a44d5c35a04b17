"""Moments: every conversion between the forms a time takes here, defined once.

A moment is an int of epoch seconds (UTC). Users give ISO-8601 strings (a time zone, or UTC
when none is given) or epoch seconds; jobs also take the words ``now`` and ``data-end``.

Example::

    to_epoch_seconds("2017-11-27T04:01:21Z")  # 1511755281
    time_parts_of(np.array([1511755281]))["hour"]  # array([4])
    run_date_of(1511755281)  # "2017-11-27"
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Dict, Optional

import numpy as np
import pandas as pd

from ncf.errors import InputError

HOUR, DAY_OF_WEEK, DAY_OF_YEAR, MONTH = "hour", "day_of_week", "day_of_year", "month"
TIME_PARTS = (HOUR, DAY_OF_WEEK, DAY_OF_YEAR, MONTH)
SECONDS_PER_DAY = 86_400.0
NOW, DATA_END = "now", "data-end"


def to_epoch_seconds(at) -> int:
    """ISO-8601 string, datetime, pandas Timestamp or epoch seconds -> int epoch seconds (UTC)."""
    if isinstance(at, (int, np.integer, float, np.floating)) and not isinstance(at, bool):
        return int(at)
    stamp = pd.Timestamp(at)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.timestamp())


def resolve_at(at, data_end: int, now: Optional[float] = None) -> int:
    """A job's ``--at`` -> epoch seconds: ``now``, ``data-end`` or an ISO date or datetime.

    Example::

        resolve_at("2017-11-27", data_end=0)  # 1511740800 (midnight UTC)
        resolve_at("data-end", data_end=1511755281)  # 1511755281
    """
    if at is None or at == NOW:
        return int(time.time() if now is None else now)
    if at == DATA_END:
        return int(data_end)
    try:
        return to_epoch_seconds(at)
    except (ValueError, TypeError) as e:
        raise InputError(f"--at {at!r}: not an ISO date or datetime, 'now' or 'data-end' ({e})") from None


def run_date_of(at: int) -> str:
    """The date (UTC) of a moment: ``run_date_of(1511755281) == "2017-11-27"``."""
    return pd.Timestamp(at, unit="s", tz="UTC").strftime("%Y-%m-%d")


def as_datetime(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)


def time_parts_of(epoch_seconds: np.ndarray) -> Dict[str, np.ndarray]:
    """Hour (0-23), day of week (0 = Monday), day of year (0-365) and month (1-12), in UTC."""
    ts = np.asarray(epoch_seconds, dtype="int64").astype("datetime64[s]")
    days = ts.astype("datetime64[D]")
    years = ts.astype("datetime64[Y]")
    months = ts.astype("datetime64[M]")
    return {
        HOUR: ((ts - days).astype("int64") // 3600).astype("int64"),
        DAY_OF_WEEK: ((days.astype("int64") + 3) % 7).astype("int64"),  # 1970-01-01 was a Thursday
        DAY_OF_YEAR: (days - years.astype("datetime64[D]")).astype("int64"),
        MONTH: (months - years.astype("datetime64[M]")).astype("int64") + 1,
    }
