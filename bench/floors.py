"""The HTTP floor on each server: what a bare answer costs a process, in alternating rounds.

    python -m bench.floors [--rates 200,500] [--rounds 3] [--duration-s 8]
    python -m bench.floors --in-process [--rounds 3]

Three servers answer the same fixed OpenAI-shaped body, each in its own process, under the same
open-loop generator (``bench.loadgen``): ``bench.floor_app`` (a bare ASGI app) on Turnout's own
server (``service.http_server``, what ``turnout up`` serves with) and on uvicorn with httptools
and uvloop (what it served with before), and ``bench.upstream`` (a raw asyncio protocol, no ASGI:
the floor under the floors). Each round measures each server at each rate in turn, so a noisy
minute of a shared machine falls on all of them; compare them within a round. Printed: CPU per
request of the server's process (from /proc) and p50/p99 latency.

``--in-process``: the Python a request costs each HTTP protocol, without the loop's system calls:
Turnout's connection and uvicorn's ``HttpToolsProtocol`` fed the same request on a transport that
only counts writes, the app run to its answer, in CPU time of the thread (the loop's own turns
measured empty and subtracted).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any, Callable

from bench.gateway import _cpu_s, _free_port, _wait_http
from bench.loadgen import open_loop

_BODY = b'{"model":"auto","messages":[{"role":"user","content":"Plan a three day trip to Lisbon."}]}'
_WARMUP_S = 1.0
_REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer sk-bench\r\ncontent-length: %d\r\n\r\n%s" % (len(_BODY), _BODY))  # fmt: skip


def _servers() -> dict[str, list[str]]:
    py = sys.executable
    return {
        "turnout": [py, "-m", "bench.floor_app", "--port"],
        "uvicorn": [py, "-m", "uvicorn", "bench.floor_app:app", "--log-level", "warning", "--no-access-log", "--port"],
        "raw": [py, "-m", "bench.upstream", "--port"],
    }


def _measure(port: int, pid: int, rate: float, duration_s: float) -> tuple[float, float, float, int]:
    """CPU ms a request of ``pid``, p50 and p99 ms, errors."""
    cpu0 = sum(_cpu_s(pid))
    res = open_loop(f"http://127.0.0.1:{port}", "/v1/chat/completions", lambda i: _BODY, rate=rate,
                    duration_s=duration_s, warmup_s=_WARMUP_S)  # fmt: skip
    cpu_ms = (sum(_cpu_s(pid)) - cpu0) * 1000.0 / (res.sent + int(rate * _WARMUP_S))
    return cpu_ms, res.pct_ms(50), res.pct_ms(99), res.errors


class _Counting(asyncio.Transport):
    """A transport that only counts what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes, self.closed = 0, False

    def write(self, data: Any) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


async def _us_a_request(make: Callable[[], asyncio.Protocol], n: int) -> float:
    async def turns(k: int) -> None:
        for _ in range(k):
            for _ in range(3):  # the app's Task runs, answers, returns
                await asyncio.sleep(0)

    proto, transport = make(), _Counting()
    proto.connection_made(transport)
    for _ in range(200):
        proto.data_received(_REQUEST)  # type: ignore[attr-defined]
        await turns(1)
    assert transport.writes >= 200 and not transport.closed, "the protocol did not answer"
    t0 = time.thread_time()
    for _ in range(n):
        proto.data_received(_REQUEST)  # type: ignore[attr-defined]
        await turns(1)
    spent = time.thread_time() - t0
    t0 = time.thread_time()
    await turns(n)
    return (spent - (time.thread_time() - t0)) / n * 1e6


def _in_process(rounds: int) -> None:
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from bench.floor_app import app
    from service.http_server import HttpServer

    def turnout() -> asyncio.Protocol:
        return HttpServer(app, 1_000_000).connection()

    def reference() -> asyncio.Protocol:
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        config.load()
        return HttpToolsProtocol(config, ServerState(), app_state={})

    async def run() -> None:
        for r in range(rounds):
            for name, make in (("turnout", turnout), ("uvicorn", reference)):
                print(f"round {r} {name:<8} {await _us_a_request(make, 20000):6.1f} us a request", flush=True)

    import uvloop

    uvloop.run(run())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="200,500")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration-s", type=float, default=8.0)
    p.add_argument("--in-process", action="store_true", help="the Python a request costs each protocol (see above)")
    args = p.parse_args(argv)
    if args.in_process:
        _in_process(args.rounds)
        return 0
    rates = [float(r) for r in args.rates.split(",")]
    procs: dict[str, tuple[int, subprocess.Popen]] = {}
    try:
        for name, cmd in _servers().items():
            port = _free_port()
            procs[name] = (port, subprocess.Popen([*cmd, str(port)]))
        for name, (port, proc) in procs.items():
            _wait_http(port, "/v1/models", proc=proc)
            open_loop(f"http://127.0.0.1:{port}", "/v1/chat/completions", lambda i: _BODY, rate=100, duration_s=2)
        print(f"{'round':>5} {'rate/s':>7} {'server':<8} {'cpu ms/req':>10} {'p50 ms':>7} {'p99 ms':>7} {'err':>4}")
        for r in range(args.rounds):
            for rate in rates:
                for name, (port, proc) in procs.items():
                    cpu, p50, p99, errors = _measure(port, proc.pid, rate, args.duration_s)
                    print(f"{r:5d} {rate:7g} {name:<8} {cpu:10.3f} {p50:7.2f} {p99:7.2f} {errors:4d}", flush=True)
    finally:
        for _, proc in procs.values():
            proc.terminate()
            proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
