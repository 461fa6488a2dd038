"""The floor for HTTP figures: an ASGI app that answers a fixed OpenAI-shaped body at once.

Driven by the same load generator as Turnout, it measures what the machine, the loopback, the
generator and the HTTP server cost a request on their own, so a benchmark can print Turnout's
round trip beside it, in the same run. Two servers: Turnout's own (``service.http_server``, what
``turnout up`` serves with) and uvicorn with httptools and uvloop (what it served with before,
the reference).

    python -m bench.floor_app --port PORT                 # Turnout's server
    python -m uvicorn bench.floor_app:app --port PORT     # uvicorn
"""

from __future__ import annotations

import argparse
import threading
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


def main() -> None:
    from feedback.stop import StopSignal
    from service.serving import bind, serve

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args()
    stop = StopSignal().install()
    serve(app, bind(args.host, args.port), stop=stop.event, draining=threading.Event(), delay_s=0.0, grace_s=1.0)


if __name__ == "__main__":
    main()
