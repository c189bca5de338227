"""Guards request bodies before the app reads them: a size limit per path and a minimum rate."""

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ErrorCode, TesseraError, format_size
from shared.http_api import problem

# The largest JSON body of a control call (upload creation and completion with 1000 parts,
# cancel, retry, secret rotation): everything but media.
SMALL_BODY_BYTES = 1024 * 1024
_END_OF_BODY: Message = {"type": "http.request", "body": b"", "more_body": False}
# The least time given to the next piece of a body that is behind the minimum rate.
_LEAST_WAIT_SECONDS = 1.0


class BodyLimit:
    """ASGI middleware. Size: 413 from Content-Length up front; other bodies are counted as
    they are read and cut at the limit. Rate: after grace_seconds, a body must have arrived at
    min_bytes_per_second on average, or it is cut and answered 408 (slow clients would
    otherwise hold connections and threads for as long as they like). The app's answer to a
    cut body is replaced by the 413 or 408."""

    def __init__(self, app: ASGIApp, *, max_bytes_for: Callable[[str], int],
                 min_bytes_per_second: float, grace_seconds: float) -> None:
        self.app = app
        self.max_bytes_for = max_bytes_for
        self.min_bytes_per_second = min_bytes_per_second
        self.grace_seconds = grace_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with a receive that stops reading past the limits."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await problem(self._too_large(scope, f"is {format_size(int(length))}", limit))(
                scope, receive, send)
            return
        started: float | None = None
        seen = 0
        body_done = False
        refusal: TesseraError | None = None
        response_started = answered = False

        async def guarded_receive() -> Message:
            nonlocal started, seen, body_done, refusal
            if body_done:
                # The app waits for a disconnect (or reads on after a cut): no rate applies.
                return await receive()
            # Time runs from the app's first read: a body the app is slow to read is not late.
            started = time.monotonic() if started is None else started
            # The whole body so far must have come at the minimum rate, after the grace. A
            # message already waiting is always taken (asyncio.wait_for with no time left
            # would not even look).
            allowed = started + self.grace_seconds + seen / self.min_bytes_per_second
            try:
                message = await asyncio.wait_for(
                    receive(), max(allowed - time.monotonic(), _LEAST_WAIT_SECONDS))
            except TimeoutError:
                refusal, body_done = self._too_slow(seen, time.monotonic() - started), True
                return _END_OF_BODY
            body_done = message["type"] != "http.request" or not message.get("more_body")
            seen += len(message.get("body", b""))
            if seen > limit:
                refusal, body_done = self._too_large(
                    scope, f"is over {format_size(limit)} (it was cut there)", limit), True
                return _END_OF_BODY
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started, answered
            if refusal is None or response_started:
                response_started = response_started or message["type"] == "http.response.start"
                await send(message)
            elif not answered:
                answered = True
                await problem(refusal)(scope, receive, send)

        await self.app(scope, guarded_receive, guarded_send)

    def _too_large(self, scope: Scope, size: str, limit: int) -> TesseraError:
        return TesseraError(ErrorCode.media_too_large,
                            f"The request body {size}; {scope['method']} {scope['path']} "
                            f"accepts at most {format_size(limit)}. Send fewer or smaller files, "
                            "or upload large ones with POST /v1/uploads.", limit_bytes=limit)

    def _too_slow(self, seen: int, seconds: float) -> TesseraError:
        return TesseraError(ErrorCode.request_timeout,
                            f"The request body arrived too slowly: {format_size(seen)} in "
                            f"{seconds:.0f} s, where at least "
                            f"{format_size(int(self.min_bytes_per_second))} a second are needed "
                            f"after the first {self.grace_seconds:g} s. Send it again on a "
                            "faster connection, or upload large files with POST /v1/uploads.")
