"""A webhook receiver for tests: verifies signatures with the `standardwebhooks` package."""

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from scripts.localstack import free_port


@dataclass(frozen=True)
class Delivery:
    """One verified delivery."""

    message_id: str
    payload: dict[str, Any]


class WebhookReceiver:
    """Collects verified deliveries; `fail_next` makes it answer errors to the next requests."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.deliveries: list[Delivery] = []
        self.rejected: list[str] = []
        self.failures_left: dict[str, int] = {}
        # Seconds each request is held before it is answered (a slow receiver), and how many
        # are being held now.
        self.delay_seconds = 0.0
        self.held = 0
        self.lock = threading.Lock()
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())

    def url(self, path: str = "hook") -> str:
        """A URL on this receiver; failures can be planned per path."""
        return f"http://127.0.0.1:{self.port}/{path}"

    def fail_next(self, path: str, count: int) -> None:
        """Answer 503 to the next count requests on path."""
        with self.lock:
            self.failures_left[path] = count

    def for_job(self, job_id: str) -> list[Delivery]:
        """Deliveries about one job."""
        with self.lock:
            return [d for d in self.deliveries if d.payload["data"]["id"] == job_id]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60) -> None:
        """Block until predicate holds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the expected webhook did not arrive")
            time.sleep(0.1)

    def __enter__(self) -> "WebhookReceiver":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.held += 1
                time.sleep(receiver.delay_seconds)
                with receiver.lock:
                    receiver.held -= 1
                path = self.path.strip("/")
                with receiver.lock:
                    failures = receiver.failures_left.get(path, 0)
                    receiver.failures_left[path] = max(0, failures - 1)
                if failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    receiver.verifier.verify(body, dict(self.headers.items()))
                except Exception as error:  # the test asserts nothing lands here
                    with receiver.lock:
                        receiver.rejected.append(str(error))
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.deliveries.append(
                        Delivery(self.headers["webhook-id"], json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        return Handler
