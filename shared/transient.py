"""Which errors are passing outages of Redis, S3 or the broker: worth retrying, never a reason
to fail a job."""

import redis
import urllib3.exceptions
from kombu.exceptions import OperationalError
from minio.error import InvalidResponseError, S3Error, ServerError

# S3 error codes that say "try again": throttling and the server's own trouble.
_RETRYABLE_S3_CODES = frozenset({
    "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "OperationAborted",
    "XMinioServerNotInitialized", "XMinioReadQuorum", "XMinioWriteQuorum",
})
# Builtin ConnectionError and TimeoutError cover resets, refusals, broken pipes and socket
# timeouts; kombu's OperationalError is a publish that found no broker.
_TRANSIENT_TYPES = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
                    urllib3.exceptions.MaxRetryError, urllib3.exceptions.ProtocolError,
                    urllib3.exceptions.TimeoutError, urllib3.exceptions.ResponseError,
                    ConnectionError, TimeoutError, OperationalError)


def is_transient(error: BaseException) -> bool:
    """True when error, or an error it was raised from or while handling, is an outage of
    Redis (connection, timeout, loading, read-only replica), S3 (connection, timeout, 5xx,
    SlowDown) or the broker, rather than a problem of the job itself."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_itself(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _transient_itself(error: BaseException) -> bool:
    if isinstance(error, ServerError):
        return error.status_code >= 500
    if isinstance(error, S3Error):
        return error.code in _RETRYABLE_S3_CODES or error.response.status >= 500
    if isinstance(error, InvalidResponseError):
        # A proxy or load balancer in front of S3 answering 502/503 with an HTML page (minio
        # keeps the status only in this private field).
        return int(getattr(error, "_code", 0)) >= 500
    return isinstance(error, _TRANSIENT_TYPES)
