"""The retry policy as pure decisions: Retry-After parsing, backoff, the caps."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from imgserve_client.retry import RetryPolicy, parse_retry_after

from .fakes import NOW


def http_date(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),  # not RFC 9110's integer, but its meaning is plain
        (http_date(NOW + 7), 7.0),
        (http_date(NOW - 30), 0.0),  # a date in the past: go now
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-3", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_in_seconds_or_as_an_http_date(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_an_http_date_without_a_zone_is_read_as_gmt() -> None:
    date = http_date(NOW + 42).replace("GMT", "-0000")
    assert parse_retry_after(date, NOW) == 42.0


def test_retry_after_is_honoured_never_shortened_and_jittered_upwards() -> None:
    policy = RetryPolicy(retry_after_jitter=0.5)
    assert policy.wait_before(1, 2.0, waited=0.0, random=0.0) == 2.0
    assert policy.wait_before(1, 2.0, waited=0.0, random=0.999) == pytest.approx(2.999)


def test_without_retry_after_exponential_backoff_with_full_jitter() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=30.0, max_retries=20, max_total_wait=1e9)
    ceilings = [policy.wait_before(retry, None, 0.0, random=1.0) for retry in range(1, 10)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert policy.wait_before(4, None, 0.0, random=0.25) == 1.0  # a quarter of the 4 s ceiling
    assert policy.wait_before(4, None, 0.0, random=0.0) == 0.0


def test_never_waits_past_max_total_wait() -> None:
    policy = RetryPolicy(max_total_wait=5.0, retry_after_jitter=0.5)
    assert policy.wait_before(1, 4.0, waited=0.0, random=0.999) == 5.0  # jitter cut to what is left
    assert policy.wait_before(2, 2.0, waited=4.0, random=0.0) is None  # 2 s asked, 1 s left: give up
    assert policy.wait_before(2, None, waited=4.5, random=1.0) == 0.5  # backoff cut to what is left
    assert policy.wait_before(3, None, waited=5.0, random=1.0) is None


def test_max_retries_counts_retries_after_the_first_attempt() -> None:
    policy = RetryPolicy(max_retries=2)
    assert policy.wait_before(2, 1.0, 0.0, 0.0) == 1.0
    assert policy.wait_before(3, 1.0, 0.0, 0.0) is None
    assert RetryPolicy(max_retries=0).wait_before(1, 1.0, 0.0, 0.0) is None


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_total_wait must be at least 0, got -1"):
        RetryPolicy(max_total_wait=-1)
