"""Request body limits for both services, counted as the bytes arrive.

A `Content-Length` check alone lets a chunked body through: the record once read a 200 MB
chunked login in full (and kept the 600 MB), and the station read a 100 MB upload before its
413. `BodyLimit` is a pure ASGI middleware: it refuses a declared length over the limit before
reading anything, counts every received chunk, and answers 413 as soon as the count passes
the limit. The answer closes the connection, so the client's stream is cut off rather than
read to its end and discarded; the same goes for a body that an endpoint answers without
reading. FastAPI's own `max_body_size` counts too, but answers while the server goes on
draining the rest (a 200 MB stream was read to its last byte), in plain text.

Used by the station and the record alike (neither imports the other), with a small default
for JSON endpoints and larger limits for the routes that carry images.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A login, a review or a station's registration is a few hundred bytes; 64 KiB leaves room.
JSON_BODY_LIMIT = 64 * 1024
CLOSE = (b"connection", b"close")


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes its limit. An HTTPException, so that FastAPI
    passes it on unchanged while it parses a body, and the app's handler answers it."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over the {limit}-byte limit", headers={"Connection": "close"})


class BodyLimit:
    """Answer 413 once a request body passes `routes[path]` (or `default`) bytes."""

    def __init__(self, app: ASGIApp, default: int = JSON_BODY_LIMIT, routes: Mapping[str, int] | None = None):
        self.app = app
        self.default = default
        self.routes = dict(routes or {})

    def limit_for(self, path: str) -> int:
        return self.routes.get(path, self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(limit, scope, receive, send)
            return
        # Read to the end: no body announced, or its last chunk received.
        done = "transfer-encoding" not in headers and declared in (None, "0")
        received, started = 0, False

        async def counting_receive() -> Message:
            nonlocal received, done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                done = done or not message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not done:  # the rest of the body is never drained: the connection closes
                    kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*kept, CLOSE]}
            await send(message)

        try:
            await self.app(scope, counting_receive, closing_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(limit, scope, receive, send)

    @staticmethod
    async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        exc = BodyTooLarge(limit)
        response = JSONResponse({"detail": exc.detail}, status_code=413, headers=exc.headers)
        await response(scope, receive, send)
