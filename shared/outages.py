"""Which exceptions mean a backing service (Redis, S3, the broker) is down, and the 503 they
become: an outage is the client's cue to retry later, never a bug report."""

import kombu.exceptions
import redis
import urllib3.exceptions
from minio.error import InvalidResponseError, S3Error, ServerError

from shared.errors import ErrorCode, TesseraError

# Seconds a client is asked to wait before retrying during an outage.
RETRY_AFTER_SECONDS = 5
# S3 error codes that say the server, not the request, is the problem.
_S3_OUTAGE_CODES = frozenset({"ServiceUnavailable", "SlowDown", "InternalError",
                              "XMinioServerNotInitialized", "XMinioStorageFull"})

# Redis: refused, reset or unanswered connections, a replica that took over read-only, a server
# still loading its data. S3: connections refused or timed out (urllib3), 5xx answers, and
# answers that are not S3's XML (a proxy's error page).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
    urllib3.exceptions.HTTPError, ServerError, InvalidResponseError, S3Error,
    kombu.exceptions.OperationalError,
)


def outage(error: Exception) -> TesseraError | None:
    """The 503 service_unavailable an exception stands for, or None when it is no outage."""
    if not isinstance(error, OUTAGE_ERRORS):
        return None
    if isinstance(error, S3Error) and error.code not in _S3_OUTAGE_CODES:
        return None
    service = ("redis" if isinstance(error, redis.RedisError)
               else "broker" if isinstance(error, kombu.exceptions.KombuError) else "s3")
    return TesseraError(ErrorCode.service_unavailable,
                        f"The service's {_NAMES[service]} is not answering "
                        f"({type(error).__name__}); retry in {RETRY_AFTER_SECONDS} seconds.",
                        unavailable=service, retry_after_seconds=RETRY_AFTER_SECONDS)


_NAMES = {"redis": "job store (Redis)", "s3": "object store (S3)",
          "broker": "task queue (Redis broker)"}
