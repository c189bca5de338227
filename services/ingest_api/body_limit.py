"""Refuses request bodies over the limit before they are read, or as soon as they pass it."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ErrorCode, TesseraError
from shared.http_api import problem


class BodyLimit:
    """ASGI middleware: 413 from Content-Length up front; other bodies are counted as they are
    read and cut at the limit, and the app's answer to a cut body is replaced by the 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with a receive that stops reading past the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await problem(self._too_large(int(length)))(scope, receive, send)
            return
        seen, exceeded, answered = 0, False, False

        async def counted() -> Message:
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # End the body here; whatever the app answers to the cut body is replaced.
                exceeded = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message: Message) -> None:
            nonlocal answered
            if not exceeded:
                await send(message)
            elif not answered:
                answered = True
                await problem(self._too_large(seen))(scope, receive, send)

        await self.app(scope, counted, guarded)

    def _too_large(self, size: int) -> TesseraError:
        return TesseraError(ErrorCode.media_too_large,
                            f"The request is over {size // 2**20} MiB; the limit is "
                            f"{self.max_bytes // 2**20} MiB. Send fewer or smaller files, or "
                            "upload large ones with POST /v1/uploads.")
