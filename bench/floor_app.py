"""The floor for HTTP figures: an ASGI app that answers a fixed OpenAI-shaped body at once.

Served by the same stack as ``turnout up`` (uvicorn, httptools, uvloop) and driven by the same
load generator, it measures what the machine, the loopback and the generator cost a request on
their own, so a benchmark can print Turnout's round trip beside it, in the same run.

    python -m uvicorn bench.floor_app:app --port PORT
"""

from __future__ import annotations

from typing import Any

_BODY = (b'{"id":"chatcmpl-floor","object":"chat.completion","created":0,"model":"floor","choices":[{"index":0,'
         b'"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
         b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}')  # fmt: skip
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the request body, as any real endpoint does
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
