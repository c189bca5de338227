"""Redis clients whose commands fail within a bound instead of hanging on a frozen server."""

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry


def bounded_redis(url: str, *, timeout_seconds: float, block_seconds: float = 0.0) -> redis.Redis:
    """A client (str answers) that gives up on a command unanswered for timeout_seconds, plus
    block_seconds for the blocking commands (XREAD BLOCK) it is meant to carry.

    redis-py's defaults (a 5 s socket timeout, 10 retries) cut any block longer than 5 s and
    hold a command for a minute against a frozen server; one retry still survives a
    connection that Redis closed (a restart, an idle timeout).
    """
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=timeout_seconds,
        socket_timeout=timeout_seconds + block_seconds,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1))
