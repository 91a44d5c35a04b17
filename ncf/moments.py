"""Moments: every conversion between the forms a time takes here, defined once.

A moment is an int of epoch seconds (UTC). Jobs take ISO-8601 strings (a time zone, or UTC when
none is given), epoch seconds and the words ``now`` and ``data-end``; the Python API the same,
and datetimes with a time zone (:func:`moment_of`). Clients of the HTTP API are held to a
stricter rule (:func:`parse_at`): nothing ambiguous is guessed.

Example::

    to_epoch_seconds("2017-11-27T04:01:21Z")  # 1511755281
    time_parts_of(np.array([1511755281]))["hour"]  # array([4])
    run_date_of(1511755281)  # "2017-11-27"
"""

from __future__ import annotations

import math
import re
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
# A log whose last purchase is more than this past the clock is said to be ahead of it (local
# times east of UTC read as UTC?); less is a live refresh's skew.
AHEAD_OF_THE_CLOCK_S = 3600


def to_epoch_seconds(at) -> int:
    """ISO-8601 string, datetime, pandas Timestamp or epoch seconds -> int epoch seconds (UTC)."""
    if isinstance(at, (int, np.integer, float, np.floating)) and not isinstance(at, bool):
        return int(at)
    stamp = pd.Timestamp(at)
    if stamp is pd.NaT:
        raise ValueError("NaT is not a moment")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    # Whole seconds down, as ingest and the HTTP at do: timestamp()'s float rounded 21.9999999 up
    # to the next second, so a job and Serve ranked one moment a second apart.
    return int(stamp.asm8.astype("datetime64[s]").astype(np.int64))  # numpy floors, in any unit


# The moments a job or a client may name: [1970-01-01, 2**33 seconds, in 2242). Outside them is a
# slip (0217 for 2017, 99991231 for "no end", milliseconds for seconds), never a purchase: every
# moment here is of this era, and the temporal features' date arithmetic (pandas' nanosecond
# timestamps end in 2262) needs no more.
EARLIEST, LATEST = 0, 2**33
_EPOCH_SECONDS = r"\s*[0-9]{9,}\s*"  # a job's epoch seconds as text (8 digits would be a YYYYMMDD date)


def _in_range(seconds: int, name: str, given) -> int:
    """``seconds`` where in [:data:`EARLIEST`, :data:`LATEST`), else an InputError naming ``given``."""
    if EARLIEST <= seconds < LATEST:
        return seconds
    number = (isinstance(given, (int, float, np.number)) and not isinstance(given, bool)) or (
        isinstance(given, str) and re.fullmatch(_EPOCH_SECONDS, given) is not None
    )
    hint = "milliseconds? divide by 1000" if number and seconds >= LATEST else "a mistyped year?"
    raise InputError(f"{name} {given!r:.40}: out of range; a moment is from 1970-01-01 to 2242-03-16 UTC ({hint})")


# ISO-8601 pieces, shared by a job's --at (resolve_at) and a client's at (parse_at).
_DATE = r"\d{4}-\d{2}-\d{2}"
_TIME = r"[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?"
_ZONE = r"[Zz]|[+-]\d{2}(?::?\d{2})?"  # ISO-8601's hour-only offset (+01) too
# A job's --at as text: YYYYMMDD, an ISO date, or an ISO datetime whose zone may be missing (UTC)
# or written " UTC" / " GMT", as BigQuery and Go print it.
_AT_TEXT = re.compile(rf"\s*(?:{_DATE}(?:{_TIME}(?:{_ZONE}|\s+(?:UTC|GMT))?)?|\d{{8}})\s*")


def resolve_at(at, data_end: int, now: Optional[float] = None, name: str = "--at") -> int:
    """A job's ``--at`` -> epoch seconds: ``now`` (the clock, or ``data_end`` where the data's
    purchases reach past the clock), ``data-end`` or an ISO date or datetime.
    ``name``: what the errors call it (``at`` for the Python API, :func:`moment_of`).

    Example::

        resolve_at("2017-11-27", data_end=0)  # 1511740800 (midnight UTC)
        resolve_at("data-end", data_end=1511755281)  # 1511755281
        resolve_at("1511755281", data_end=0)  # 1511755281 (epoch seconds)
    """
    if at is None or at == NOW:
        # Every purchase the log holds is known by now: a log stamped ahead of the clock (local
        # times read as UTC) ranked "now" as a replay of the clock's day, its newest purchases cut.
        return max(int(time.time() if now is None else now), int(data_end))
    if at == DATA_END:
        return int(data_end)
    if isinstance(at, str) and re.fullmatch(_EPOCH_SECONDS, at):
        return _in_range(int(at), name, at)  # epoch seconds (8 digits would be a YYYYMMDD date)
    if isinstance(at, str) and re.fullmatch(r"\s*[A-Za-z]+\s*", at):
        # pandas reads "today" as the local wall clock taken for UTC: hours off, maybe another date.
        raise InputError(
            f"{name} {at!r}: not a moment; use an ISO date or datetime, epoch seconds, 'now' or 'data-end'"
        )
    if isinstance(at, str) and not _AT_TEXT.fullmatch(at):
        # pandas guesses: "11/12/2017" is November 12th, "2017" its first day, "GMT-5" five hours
        # east of Greenwich (POSIX), "4pm" an hour of its own reading.
        raise InputError(
            f"{name} {at!r}: not an ISO date (YYYY-MM-DD) or datetime (YYYY-MM-DDTHH:MM[:SS], then Z, an offset "
            "+HH:MM, ' UTC' or ' GMT'; none is UTC), epoch seconds, 'now' or 'data-end'"
        )
    try:
        seconds = to_epoch_seconds(at)
    except (ValueError, TypeError) as e:
        raise InputError(f"{name} {at!r}: not an ISO date or datetime, 'now' or 'data-end' ({e})") from None
    return _in_range(seconds, name, at)


def moment_of(at, data_end: int, now: Optional[float] = None) -> int:
    """A moment given to the Python API (``Recommender``'s ``at``) -> epoch seconds, read as a
    job's ``--at`` is, so that no form means one moment here and another there.

    Epoch seconds (a number) as they are; a string by :func:`resolve_at`'s rules (``now``: the
    clock, or ``data_end`` where the data reaches past it, ``data-end``: ``data_end``, an ISO
    datetime without a zone: UTC, a word such as ``today``: refused); a datetime or pandas
    Timestamp with a time zone. A datetime without one is refused (:class:`InputError`, one
    line): ``datetime.now()`` is local time and ``datetime.utcnow()`` UTC, and reading either as
    the other is the zone's hours off.

    Example::

        moment_of("2017-11-27T04:01:21Z", data_end=0)  # 1511755281
        moment_of(datetime(2017, 11, 27, 4, 1, 21, tzinfo=timezone.utc), data_end=0)  # 1511755281
        moment_of(datetime.now(), data_end=0)  # InputError: ... has no time zone ...
    """
    if isinstance(at, bool) or (isinstance(at, (float, np.floating)) and not math.isfinite(at)):
        raise InputError(f"at {at!r}: not a moment; use epoch seconds, a datetime with a time zone or an ISO string")
    if isinstance(at, (int, np.integer, float, np.floating)):
        return _in_range(to_epoch_seconds(at), "at", at)  # epoch milliseconds were ranked as year 49,800
    if isinstance(at, str):
        return resolve_at(at, data_end, now=now, name="at")
    if isinstance(at, datetime) and (at.tzinfo is None or at.utcoffset() is None):
        raise InputError(
            f"at {at!r} has no time zone (datetime.now() is local time, datetime.utcnow() UTC): give it one, "
            "datetime.now(timezone.utc), or epoch seconds"
        )
    try:
        seconds = to_epoch_seconds(at)  # an aware datetime; a date or numpy datetime64: UTC
    except (ValueError, TypeError) as e:
        raise InputError(f"at {at!r}: not a moment ({e})") from None
    return _in_range(seconds, "at", at)


# What parse_at accepts, said in its errors (and the API's docs).
AT_FORMS = (
    "an ISO-8601 time with a time zone (2017-11-27T04:01:21Z, 2017-11-27T05:01:21+01:00), "
    "a date YYYY-MM-DD (midnight UTC) or epoch seconds as a JSON number"
)
_ISO_DATE = re.compile(_DATE)
_ISO_TIME_WITH_ZONE = re.compile(f"{_DATE}{_TIME}(?:{_ZONE})")


def parse_at(value) -> int:
    """A moment given by a client (the HTTP API's ``at``) -> epoch seconds, refusing every form
    whose meaning would be a guess.

    Accepted: an ISO-8601 time with a time zone (``Z`` or an offset); a date ``YYYY-MM-DD``,
    read as midnight UTC; epoch seconds as a number (int or float, not a string); a
    timezone-aware ``datetime``. Refused with a ``ValueError`` naming the accepted forms: digit
    strings (``"20200101"`` is a date to a person and 1970-08-22 as epoch seconds), times
    without a time zone (whose zone would be a guess), booleans, anything else; and any moment
    before 1970-01-01 or from 2**33 seconds (2242) on, a mistyped year or milliseconds.

    Example::

        parse_at("2017-11-27T04:01:21Z")  # 1511755281
        parse_at("2017-11-27")  # 1511740800
        parse_at(1511755281)  # 1511755281
        parse_at("2017-11-27T04:01:21")  # ValueError: ... must be an ISO-8601 time with a time zone ...
    """
    seconds = _parse_at(value)
    try:
        return _in_range(seconds, "at", value)
    except InputError as e:  # this rule's refusals are ValueErrors (Serve's 422s), not a job's
        raise ValueError(str(e)) from None


def _parse_at(value) -> int:
    """:func:`parse_at`'s forms, not yet held to their range."""
    if isinstance(value, bool):
        raise ValueError(f"at must be {AT_FORMS}; got a boolean")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"at must be {AT_FORMS}; got {value}")
        return int(math.floor(value))
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"at must be {AT_FORMS}; got a datetime without a time zone")
        return int(math.floor(value.timestamp()))
    if not isinstance(value, str):
        raise ValueError(f"at must be {AT_FORMS}; got a {type(value).__name__}")
    text = value.strip()
    try:
        if _ISO_DATE.fullmatch(text):
            return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())
        if _ISO_TIME_WITH_ZONE.fullmatch(text):
            normalized = (text[:10] + "T" + text[11:]).upper()  # RFC 3339 allows ' ', 't' and 'z'
            return int(math.floor(datetime.fromisoformat(normalized).timestamp()))
    except ValueError as e:  # the right shape, an impossible value (month 13, hour 25)
        raise ValueError(f"at {value[:40]!r}: {e}") from None
    hint = " (digits in a string are ambiguous; send epoch seconds as a number)" if text.isdigit() else ""
    hint = hint or (" (no time zone: add Z or an offset)" if _looks_naive(text) else "")
    raise ValueError(f"at must be {AT_FORMS}; got {value[:40]!r}{hint}")


def _looks_naive(text: str) -> bool:
    if ":" not in text:
        return False
    try:
        return datetime.fromisoformat(text).tzinfo is None
    except ValueError:
        return False


def run_date_of(at: int) -> str:
    """The date (UTC) of a moment: ``run_date_of(1511755281) == "2017-11-27"``."""
    return pd.Timestamp(at, unit="s", tz="UTC").strftime("%Y-%m-%d")


def as_datetime(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)


def day_of(at: int) -> int:
    """The start (UTC) of the day of a moment: a past moment is ranked from the products' stats
    then (``Recommender.as_of``)."""
    return int(at) - int(at) % 86_400


def after_the_data(end: int, dates_only: Optional[bool] = None) -> int:
    """``data-end``: the first moment after the data's last purchase ``end``, when every purchase
    is history. ``end + 1``, or the midnight after its day in a log of dates (``dates_only``,
    :attr:`ncf.data.product_stats.ProductStats.dates_only`: every purchase stamped 00:00 UTC):
    such a day's purchases were made during it, and the training moments of such a log are
    midnights (a list's moment is its household's first purchase after the cutoff), where each
    purchase is at least a day old; a second-old one at ``end + 1`` was a duration training never
    saw. ``dates_only`` None (stats saved before it was counted): read from ``end`` alone, a last
    purchase at 00:00:00 UTC taken for a log of dates.

    Example::

        after_the_data(1511755281)  # 1511755282
        after_the_data(1511740800, dates_only=True)  # 1511827200 (2017-11-27 00:00 UTC: the 28th's midnight)
        after_the_data(1511740800, dates_only=False)  # 1511740801 (times bucketed by the hour, say)
    """
    if dates_only is None:
        dates_only = int(end) % 86_400 == 0
    return int(end) + (86_400 if dates_only else 1)


def first_rankable(first_purchase: int) -> int:
    """The first moment a past ranking can be asked for, given the data's first purchase: the end
    of that purchase's UTC day. A past moment ranks from the products' stats at the start of its
    day (``Recommender.as_of``), and until the first day ends no product was known then."""
    return day_of(first_purchase) + 86_400


def hours_of(epoch_seconds: np.ndarray) -> np.ndarray:
    """Hour of the day (0-23, UTC) of each moment: ``time_parts_of(...)[HOUR]`` without the
    other parts (a product-stats pass asks it of every purchase)."""
    return np.asarray(epoch_seconds, dtype="int64") // 3600 % 24


def time_parts_of(epoch_seconds: np.ndarray) -> Dict[str, np.ndarray]:
    """Hour (0-23), day of week (0 = Monday), day of year (0-365) and month (1-12), in UTC."""
    ts = np.asarray(epoch_seconds, dtype="int64").astype("datetime64[s]")
    days = ts.astype("datetime64[D]")
    years = ts.astype("datetime64[Y]")
    months = ts.astype("datetime64[M]")
    return {
        HOUR: hours_of(epoch_seconds),
        DAY_OF_WEEK: ((days.astype("int64") + 3) % 7).astype("int64"),  # 1970-01-01 was a Thursday
        DAY_OF_YEAR: (days - years.astype("datetime64[D]")).astype("int64"),
        MONTH: (months - years.astype("datetime64[M]")).astype("int64") + 1,
    }
