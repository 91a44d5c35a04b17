"""``ncf.moments.parse_at``: the strict rule for moments given by clients of the HTTP API."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from ncf.moments import AT_FORMS, parse_at

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
