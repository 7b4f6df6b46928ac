"""When to retry and how long to wait: pure decisions, written once for both clients.

:class:`RetryPolicy` holds the numbers; :class:`Attempts` is one call's state (attempts made,
seconds waited) and turns each response or connection error into "done", "wait this long,
then retry" or the final error. Neither sleeps nor reads a clock of its own: the clients pass
their ``clock`` and do the sleeping, so tests drive both with a fake clock.

The rules: 503 and 429 are retried, and so are connection errors and timeouts (a prediction
is a pure function, so sending the POST again is safe); no other status is. A ``Retry-After``
header, in seconds or as an HTTP-date, is honoured: the client never comes back earlier,
and adds up to ``retry_after_jitter`` of it at random so that clients refused at the same
moment do not all return at the same moment. Without it the wait is exponential backoff with
full jitter. The waits of one call never add up to more than ``max_total_wait``: a wait the
server asks for that does not fit what is left ends the call at once, with the error.
"""

from __future__ import annotations

import email.utils
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC

import httpx

from imgserve_client.errors import ConnectionFailedError, error_for_status

RETRY_STATUSES = frozenset({429, 503})
# Failures after which the request may simply be sent again (not a bad URL or a client bug).
RETRYABLE_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date (``now`` is
    the wall clock, seconds since the epoch). ``None`` when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": RFC 5322's "UTC, zone unknown"; HTTP-dates are GMT
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait; every time in seconds.

    ``max_retries``: retries after the first attempt. ``max_total_wait``: the most one call
    waits in all. Backoff without ``Retry-After``: uniform in [0, min(``backoff_max``,
    ``backoff_base`` x 2^(retry - 1))) ("full jitter").
    """

    max_retries: int = 10
    max_total_wait: float = 120.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_jitter: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_retries", "max_total_wait", "backoff_base", "backoff_max", "retry_after_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")

    def wait_before(
        self, retry: int, retry_after: float | None, waited: float, random: float
    ) -> float | None:
        """Seconds to wait before retry number ``retry`` (1 is the first), or ``None``: give up.

        ``waited``: seconds this call has already waited; ``random``: a number in [0, 1).
        """
        if retry > self.max_retries:
            return None
        left = self.max_total_wait - waited
        if retry_after is not None:
            if retry_after > left:
                return None  # coming back earlier than asked would not honour it
            return min(retry_after * (1 + self.retry_after_jitter * random), left)
        if left <= 0:
            return None
        return min(random * min(self.backoff_max, self.backoff_base * 2.0 ** (retry - 1)), left)


class RetryStats:
    """Retries made by one client, by reason ("503", "429", "connection"), and seconds waited.

    Shared by the threads of a sync client, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries: Counter[str] = Counter()
        self.waited_s = 0.0

    def record(self, reason: str, wait_s: float) -> None:
        with self._lock:
            self.retries[reason] += 1
            self.waited_s += wait_s

    @property
    def total(self) -> int:
        return sum(self.retries.values())


class Attempts:
    """One call's retry state. After each try, ``after_response`` / ``after_error`` return
    ``None`` (done: a success) or the seconds to wait before the next try, or raise the final error.
    """

    def __init__(
        self, policy: RetryPolicy, clock: Callable[[], float], random: Callable[[], float], stats: RetryStats
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._random = random
        self._stats = stats
        self.made = 0
        self.waited = 0.0

    def after_response(self, response: httpx.Response) -> float | None:
        self.made += 1
        if response.is_success:
            return None
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock())
        if status in RETRY_STATUSES:
            wait = self._next_wait(retry_after, str(status))
            if wait is not None:
                return wait
        raise error_for_status(
            status,
            response.content,
            response.headers.get("content-type", ""),
            retry_after=retry_after,
            attempts=self.made,
        )

    def after_error(self, error: httpx.TransportError) -> float:
        self.made += 1
        if isinstance(error, RETRYABLE_TRANSPORT_ERRORS):
            wait = self._next_wait(None, "connection")
            if wait is not None:
                return wait
        where = error.request.url if _has_request(error) else "the server"
        raise ConnectionFailedError(
            f"{type(error).__name__} on {where}: {error or 'no details'}", self.made
        ) from error

    def _next_wait(self, retry_after: float | None, reason: str) -> float | None:
        wait = self._policy.wait_before(self.made, retry_after, self.waited, self._random())
        if wait is not None:
            self.waited += wait
            self._stats.record(reason, wait)
        return wait


def _has_request(error: httpx.TransportError) -> bool:
    try:
        error.request  # noqa: B018  (httpx raises RuntimeError when the error has no request)
    except RuntimeError:
        return False
    return True
