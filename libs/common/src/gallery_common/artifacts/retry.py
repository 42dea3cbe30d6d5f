"""Retrying S3 calls that fail for reasons that pass: dropped connections, 5xx answers, throttling."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
import urllib3.exceptions
from minio.error import InvalidResponseError, S3Error, ServerError

from gallery_common.errors import GalleryError

T = TypeVar("T")

log = structlog.get_logger(__name__)

TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "OperationAborted",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
    }
)


def _transient_status(status: object) -> bool:
    # 501 Not Implemented will not change on a second try.
    return isinstance(status, int) and (status == 429 or (status >= 500 and status != 501))


def is_transient_s3_error(exc: BaseException) -> bool:
    """Whether trying the same S3 call again may succeed.

    Missing objects, refused access, bad requests and integrity failures are final.
    """
    if isinstance(exc, GalleryError):
        return False
    if isinstance(exc, S3Error):
        return exc.code in TRANSIENT_S3_CODES or _transient_status(getattr(exc.response, "status", None))
    if isinstance(exc, ServerError):
        return _transient_status(exc.status_code)
    if isinstance(exc, InvalidResponseError):
        return True  # a non-XML answer comes from a proxy or load balancer in trouble, not from S3
    if isinstance(exc, urllib3.exceptions.LocationValueError):
        return False  # a malformed endpoint
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return True
    return isinstance(exc, ConnectionError | TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter over a few attempts, for errors `is_transient` accepts."""

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0
    is_transient: Callable[[BaseException], bool] = is_transient_s3_error
    sleep: Callable[[float], None] = time.sleep

    def delay(self, failures: int) -> float:
        """Seconds to wait after the n-th failure; jittered so many clients do not retry in lockstep."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)

    def should_retry(self, failures: int, exc: BaseException) -> bool:
        """Whether to try again after the n-th failure, which raised `exc`."""
        return failures < self.attempts and self.is_transient(exc)

    def wait(self, failures: int, exc: BaseException, operation: str = "") -> None:
        """Sleep before the next attempt, logging why."""
        seconds = self.delay(failures)
        log.warning(
            "artifact_store_retry",
            operation=operation,
            attempt=failures,
            of=self.attempts,
            wait_seconds=round(seconds, 3),
            error=f"{type(exc).__name__}: {exc}",
        )
        self.sleep(seconds)

    def call(
        self,
        operation: Callable[[], T],
        *,
        name: str = "",
        retryable: bool = True,
        before_retry: Callable[[], object] | None = None,
    ) -> T:
        """Run `operation`, again after a transient failure, until it succeeds or attempts run out.

        `retryable=False` runs it once (a stream that cannot be read twice); `before_retry` runs
        before each new attempt (to rewind a source). The last error propagates unchanged.
        """
        failures = 0
        while True:
            try:
                return operation()
            except Exception as exc:
                failures += 1
                if not retryable or not self.should_retry(failures, exc):
                    raise
                self.wait(failures, exc, name)
            if before_retry is not None:
                before_retry()
