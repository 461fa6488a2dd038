"""A zero-latency OpenAI-compatible upstream for benchmarks: raw asyncio, canned answers.

It parses just enough HTTP/1.1 (request line, Content-Length, keep-alive) to answer
``POST .../chat/completions`` as fast as the loop allows, so that what a gateway adds on top of
it is what the benchmark measures. ``"stream": true`` gets a short SSE answer.

    python -m bench.upstream --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import time

__all__ = ["serve"]

_ANSWER = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":%d,"model":"bench",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Sure: sorted(xs) returns a new list."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}'
)
_CHUNK = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench","choices":[%s]%s}'
_MODELS = b'{"object":"list","data":[{"id":"bench","object":"model","created":0,"owned_by":"bench"}]}'


def _sse() -> bytes:
    parts = [b'{"index":0,"delta":{"role":"assistant","content":""}}']
    parts += [b'{"index":0,"delta":{"content":"%s"}}' % w for w in (b"Sure:", b" sorted(xs)", b" works.")]
    parts.append(b'{"index":0,"delta":{},"finish_reason":"stop"}')
    out = b"".join(b"data: " + _CHUNK % (p, b"") + b"\n\n" for p in parts)
    usage = b',"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}'
    return out + b"data: " + _CHUNK % (b"", usage) + b"\n\ndata: [DONE]\n\n"


_SSE = _sse()


def _response(status: bytes, ctype: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: keep-alive\r\n\r\n" + body)  # fmt: skip


class _Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                eol = head.find(b"\r\n", at)
                length = int(head[at + 15 : eol if eol >= 0 else len(head)])
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            body = self.buf[head_end + 4 : end]
            self.buf = self.buf[end:]
            self.transport.write(self._answer(head, body))  # type: ignore[union-attr]

    @staticmethod
    def _answer(head: bytes, body: bytes) -> bytes:
        if head.startswith(b"get") and b"/models" in head[:80]:
            return _response(b"200 OK", b"application/json", _MODELS)
        if not head.startswith(b"post"):
            return _response(b"404 Not Found", b"application/json", b'{"error":{"message":"not found"}}')
        if b'"stream":true' in body.replace(b" ", b""):
            return _response(b"200 OK", b"text/event-stream", _SSE)
        return _response(b"200 OK", b"application/json", _ANSWER % int(time.time()))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    args = p.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(args.host, args.port))
    except KeyboardInterrupt:  # the benchmark stops it with SIGINT: that is the normal end
        pass


if __name__ == "__main__":
    main()
