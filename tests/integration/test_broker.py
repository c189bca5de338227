"""The broker transport against a real Redis: a worker survives losing its connection."""

import uuid
from typing import Any

import kombu
from kombu.common import ignore_errors

from shared.celery_factory import ResilientRedisTransport, create_celery_app
from shared.settings import BaseServiceSettings


def test_closing_a_channel_after_its_connection_was_dropped_is_a_connection_error(
        redis_url: str) -> None:
    # The state Celery's consumer leaves after a broker restart: it collected the connection
    # (the transport lost its client), the channel's first close failed on the broken socket
    # after dropping its pools, and the channel still holds an unacknowledged task.
    api: Any = kombu  # kombu's public names are untyped
    connection = api.Connection(redis_url, transport=ResilientRedisTransport)
    queue = api.Queue(f"broker-test-{uuid.uuid4().hex[:8]}")
    with connection.Producer() as producer:
        producer.publish({"task": 1}, routing_key=queue.name, declare=[queue])
    received = []
    consumer = connection.Consumer(queue, callbacks=[lambda _, message: received.append(message)],
                                   accept=["json"])
    consumer.qos(prefetch_count=1)
    consumer.consume()
    connection.drain_events(timeout=5)
    assert len(received) == 1
    channel = connection.default_channel
    channel._disconnect_pools()
    connection.transport.client = None

    # Celery closes it inside ignore_errors, which only swallows connection errors; kombu's
    # own channel raised AttributeError ('NoneType' object has no attribute 'hostname') here
    # and the worker exited.
    ignore_errors(connection, channel.close)  # type: ignore[no-untyped-call]


def test_workers_reconnect_for_as_long_as_redis_is_away() -> None:
    conf = create_celery_app("t", BaseServiceSettings()).conf
    assert conf.broker_connection_retry and conf.broker_connection_retry_on_startup
    assert conf.broker_connection_max_retries is None
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    options = conf.broker_transport_options
    assert options["socket_timeout"] > 1 and options["health_check_interval"] > 0

