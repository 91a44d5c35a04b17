"""``ncf.moments.parse_at``: the strict rule for moments given by clients of the HTTP API;
``moment_of``: the Python API's, a job's ``--at`` rule."""

import os
import subprocess
import sys
import textwrap
from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ncf.errors import InputError
from ncf.moments import AT_FORMS, moment_of, parse_at

MOMENT = 1511755281  # 2017-11-27T04:01:21Z


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2017-11-27T04:01:21Z", MOMENT),
        ("2017-11-27T05:01:21+01:00", MOMENT),
        ("2017-11-26T23:01:21-0500", MOMENT),
        ("2017-11-27T05:01:21+01", MOMENT),  # ISO-8601's hour-only offset (a contract review, 2026-12-05)
        ("2017-11-27t04:01:21.999z", MOMENT),
        ("2017-11-27 04:01:21Z", MOMENT),
        ("2017-11-27T04:01Z", MOMENT - 21),
        ("2017-11-27", 1511740800),  # midnight UTC
        (MOMENT, MOMENT),
        (np.int64(MOMENT), MOMENT),
        (MOMENT + 0.9, MOMENT),
        (datetime(2017, 11, 27, 5, 1, 21, tzinfo=timezone(timedelta(hours=1))), MOMENT),
    ],
)
def test_accepted_forms(value, expected):
    assert parse_at(value) == expected


@pytest.mark.parametrize(
    "value, hint",
    [
        ("20200101", "digits in a string are ambiguous"),  # a date to a person, 1970-08-22 as epoch seconds
        ("1511755281", "digits in a string are ambiguous"),
        ("2017-11-27T04:01:21", "no time zone"),
        ("2017-11-27 04:01", "no time zone"),
        (datetime(2017, 11, 27, 4, 1, 21), "without a time zone"),
        ("2017-W48", ""),
        ("27/11/2017", ""),
        ("now", ""),
        ("", ""),
        (True, "boolean"),
        (None, "NoneType"),
        ([MOMENT], "list"),
        (float("nan"), "nan"),
    ],
)
def test_ambiguous_forms_are_refused_naming_what_is_accepted(value, hint):
    with pytest.raises(ValueError) as error:
        parse_at(value)
    assert AT_FORMS in str(error.value) and hint in str(error.value)


@pytest.mark.parametrize("value", ["2017-13-01", "2017-02-30", "2017-11-27T25:00:00Z", "2017-11-27T04:01:21+25:00"])
def test_impossible_dates_and_times_are_refused(value):
    with pytest.raises(ValueError, match=value[:10]):
        parse_at(value)


@pytest.mark.parametrize(
    "value, expected",
    [
        (MOMENT, MOMENT),
        (np.int64(MOMENT), MOMENT),
        (MOMENT + 0.9, MOMENT),
        ("2017-11-27T04:01:21Z", MOMENT),
        ("2017-11-27T04:01:21", MOMENT),  # no zone: UTC, as a job's --at
        ("2017-11-27", 1511740800),
        ("data-end", 42),
        (datetime(2017, 11, 27, 5, 1, 21, tzinfo=timezone(timedelta(hours=1))), MOMENT),
        (pd.Timestamp("2017-11-27T04:01:21Z"), MOMENT),
        (date(2017, 11, 27), 1511740800),  # a date has no hour to take for local: midnight UTC
    ],
)
def test_the_python_apis_moments_are_read_as_a_jobs_at(value, expected):
    assert moment_of(value, data_end=42) == expected


@pytest.mark.parametrize(
    "value, says",
    [
        ("today", "'today': not a moment"),
        (datetime(2017, 11, 27, 4, 1, 21), "has no time zone"),
        (pd.Timestamp("2017-11-27T04:01:21"), "has no time zone"),
        (True, "True: not a moment"),
        (float("nan"), "nan: not a moment"),
        ("11/12/2017", "not an ISO date"),
        (object(), "not a moment"),
    ],
)
def test_the_python_api_refuses_a_moment_it_would_guess_in_one_line(value, says):
    with pytest.raises(InputError, match=says) as error:
        moment_of(value, data_end=42)
    assert "\n" not in str(error.value) and str(error.value).startswith("at ")


@pytest.mark.faults
def test_a_moment_given_to_the_python_api_does_not_depend_on_the_machines_time_zone():
    """Old code: ``Recommender.moment`` read ``"now"``, ``"today"`` and a naive ``datetime.now()``
    as UTC wall-clock times, so on a machine in New York each was 18,000 s off ``time.time()`` (a
    review, 2026-12-06): ``now`` is the clock, the other two are refused in one line."""
    script = textwrap.dedent(
        """
        import time
        from datetime import datetime, timezone
        from types import SimpleNamespace

        from ncf.errors import InputError
        from ncf.rank.recommender import Recommender

        assert time.localtime().tm_gmtoff != 0, "the zone did not take"
        rec = SimpleNamespace(default_at=1511755282)  # what Recommender.moment reads of its state
        before = time.time()
        now = Recommender.moment(rec, "now")
        assert before - 1 <= now <= time.time(), (now, before)
        assert abs(Recommender.moment(rec, datetime.now(timezone.utc)) - time.time()) <= 1
        assert Recommender.moment(rec, None) == Recommender.moment(rec, "data-end") == 1511755282
        assert Recommender.moment(rec, "2017-11-27T04:01:21") == 1511755281  # no zone: UTC
        for guess in ("today", datetime.now()):
            try:
                Recommender.moment(rec, guess)
            except InputError as refused:
                print(refused)
            else:
                raise AssertionError(f"{guess!r} was read as a moment")
        """
    )
    env = {**os.environ, "TZ": "America/New_York"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    refusals = done.stdout.splitlines()
    assert len(refusals) == 2 and "'today': not a moment" in refusals[0] and "has no time zone" in refusals[1]


@pytest.mark.faults
@pytest.mark.parametrize(
    "text", ["0217-11-27", "0999-01-01", "99991231", "19691231", "1969-12-31T23:59:59Z", "2300-01-01"]
)
def test_a_jobs_at_of_an_implausible_year_is_refused_in_one_line(text):
    """Old code refused epoch seconds from 2**33 on but read "0217-11-27" (2017 mistyped) and
    "99991231" ("no end") as moments: a batch run of year 217, a --max-timestamp past pandas'
    range (a review, 2026-12-07)."""
    from ncf.moments import resolve_at

    with pytest.raises(InputError) as error:
        resolve_at(text, data_end=0)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--at {text!r}: out of range")
    assert "1970-01-01 to 2242-03-16" in message


def test_a_jobs_at_at_either_end_of_the_range_is_a_moment():
    from ncf.moments import resolve_at

    assert resolve_at("1970-01-01", data_end=0) == 0
    assert resolve_at("2242-03-16T12:56:31Z", data_end=0) == 2**33 - 1
    with pytest.raises(InputError, match="out of range"):
        resolve_at("2242-03-16T12:56:32Z", data_end=0)


@pytest.mark.faults
@pytest.mark.parametrize(
    "value, hint",
    [
        ("0217-11-27", "a mistyped year?"),
        ("1969-12-31T23:59:59Z", "a mistyped year?"),
        ("2300-01-01T00:00:00+01:00", "a mistyped year?"),
        (-1, "a mistyped year?"),
        (MOMENT * 1000, "milliseconds? divide by 1000"),
        (float(2**33), "milliseconds? divide by 1000"),
        (datetime(1960, 1, 1, tzinfo=timezone.utc), "a mistyped year?"),
    ],
)
def test_a_clients_at_of_an_implausible_year_is_refused(value, hint):
    with pytest.raises(ValueError) as error:
        parse_at(value)
    assert "out of range; a moment is from 1970-01-01 to 2242-03-16 UTC" in str(error.value)
    assert hint in str(error.value)


def test_the_python_api_refuses_a_string_of_an_implausible_year():
    with pytest.raises(InputError, match=r"^at '0217-11-27': out of range"):
        moment_of("0217-11-27", data_end=42)


def test_preprocessings_default_bounds_are_moments_a_job_may_name():
    """--min/--max-timestamp are read by resolve_at: their defaults must fall in its range."""
    from ncf.data import schema
    from ncf.moments import EARLIEST, LATEST, resolve_at

    for bound in (schema.DEFAULT_MIN_TS, schema.DEFAULT_MAX_TS):
        assert EARLIEST <= bound < LATEST
        assert resolve_at(str(bound), data_end=0) == bound


@pytest.mark.faults
@pytest.mark.parametrize(
    "value, hint",
    [
        (1511755281000, "milliseconds"),  # epoch milliseconds: ranked as year 49,800 before
        (-86400, "a mistyped year"),
        (datetime(217, 11, 27, tzinfo=timezone.utc), "a mistyped year"),
    ],
)
def test_a_python_api_moment_out_of_range_is_refused_whatever_its_form(value, hint):
    with pytest.raises(InputError, match=f"out of range.*{hint}"):
        moment_of(value, data_end=0)
    assert moment_of(0, data_end=0) == 0 and moment_of(1511755281, data_end=0) == 1511755281


@pytest.mark.faults
@pytest.mark.parametrize("bucket_s, dates_only", [(86_400, True), (3_600, False)])
def test_data_end_of_a_log_of_dates_is_the_midnight_after_its_last_day(tmp_path, bucket_s, dates_only):
    """A log of dates stamps a day's purchases 00:00; its training moments are midnights (a list's
    moment is the household's first purchase after the cutoff, not the cutoff), where each
    purchase is at least a day old. ``data-end`` was the second after the last purchase, so the
    last day's purchases ranked as a second old (reviews of ncf/data, 2026-12-06 and 12-07; the
    fix was reverted in between on the cutoffs' reading). A log is one of dates when all its
    purchases are at midnight, not its last alone: times bucketed by the hour, refreshed at 00:30,
    end at a midnight too (a second read, 2026-12-07)."""
    from ncf.batch.scoring import after_the_data as used_by_the_nightly_job
    from ncf.data.product_stats import ProductStats
    from ncf.data.user_state import UserStates
    from ncf.moments import after_the_data, resolve_at
    from ncf.rank.recommender import Recommender

    midnight = 1511740800  # 2017-11-27T00:00:00Z, the last purchase
    stamps = midnight - np.arange(0, 30 * 86_400, bucket_s)[::-1]
    users = np.arange(len(stamps)) % 3 + 1
    states = UserStates.from_purchases(users, np.arange(len(stamps)) % 5 + 1, stamps, 4)
    stats = ProductStats.compute(states, np.zeros(6, np.int64), cutoff=midnight + 1)
    assert stats.dates_only is dates_only
    stats.save(str(tmp_path))
    assert ProductStats.load(str(tmp_path)).dates_only is dates_only
    assert ProductStats.dates_only_in(str(tmp_path)) is dates_only
    assert ProductStats.dates_only_in(str(tmp_path / "missing")) is None  # the state's checks say it
    data_end = after_the_data(midnight, stats.dates_only)
    assert data_end == (midnight + 86_400 if dates_only else midnight + 1)
    assert used_by_the_nightly_job is after_the_data
    assert resolve_at("data-end", data_end) == data_end
    state = SimpleNamespace(end=midnight, stats=stats)
    Rec = type("Rec", (), {"state": state, "default_at": Recommender.default_at})
    assert Recommender.moment(Rec(), None) == Recommender.moment(Rec(), "data-end") == data_end
    # Stats saved before the count: the last purchase's time alone, as before.
    assert after_the_data(midnight) == midnight + 86_400 and after_the_data(MOMENT) == MOMENT + 1


def test_a_moment_of_sub_seconds_is_the_same_second_for_the_jobs_and_the_http_api():
    """The jobs' and the Python API's moments went through a float that rounded 21.9999999 s up
    to 22, where the HTTP ``at`` and ingest take 21: one moment ranked a second apart (a review of
    the feature path, 2026-12-08)."""
    from ncf.moments import to_epoch_seconds

    text = "2017-11-27T04:01:21.9999999Z"
    assert to_epoch_seconds(text) == parse_at(text) == 1511755281
    assert to_epoch_seconds("2017-11-27T04:01:21") == 1511755281
    assert to_epoch_seconds(pd.Timestamp("1969-12-31T23:59:59.5Z")) == -1  # down, not towards zero
