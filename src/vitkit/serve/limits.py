"""A request body limit as ASGI middleware: a declared Content-Length over the limit is refused before reading,
and a body sent without one (chunked) is cut off as soon as it passes the limit. Either way the answer is a 413
with a JSON message, and the oversized body is never held in memory."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _refusal(self) -> JSONResponse:
        limit = f"{self.max_bytes / 2**20:.1f} MiB"
        return JSONResponse({"error": f"the request body is over the server's limit of {limit}."}, status_code=413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await JSONResponse({"error": "Content-Length is not a number."}, status_code=400)(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await self._refusal()(scope, receive, send)
                return
        received, too_large, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True  # the app sees the client go away and stops reading
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's answer to a cut-off body is replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._refusal()(scope, receive, send)
