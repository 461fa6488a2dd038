"""The client's latency with shadow routing and the judge, against without them, in one run.

    python -m bench.shadow [--rate 50] [--duration-s 10] [--rounds 2] [--judge-delay-ms 200]
    python -m bench.shadow --modes off,idle,off          # a control: two identical plain processes

1. A zero-latency OpenAI-compatible upstream (``bench.upstream``) for the pool, and a slow judge
   endpoint (this module, ``--serve-judge``: answers "Score: 7" after ``--judge-delay-ms``).
2. Three ``turnout up`` processes on the same pool (three models on the upstream), the same
   settings but for:
   - ``off``: no ``[judge]``, no ``[shadow]``;
   - ``idle``: both enabled and configured (judge endpoint, reference ``m0``, budgets), but
     selecting nothing (``sample = 0``, ``share = 0``): the plain routed path with the hooks;
   - ``shadow``: every answered request shadowed to ``m0`` (``share = 1``) and, when it was not
     routed to ``m0`` itself, both answers graded by the slow judge: three background calls per
     request, two of them ``--judge-delay-ms`` long.
3. Rounds of the same open-loop load (``bench.loadgen``) go to the upstream directly, then to each
   process in turn. Reported: client p50/p99 and overhead over direct per process, and the ratios
   to ``off`` (a client that waited for the judge would see p50 grow by twice the judge's delay).
   The background jobs each process ran are read from its ``/metrics``.

The machine may be shared: run twice, compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench.gateway import BENCH_KEY, Target, _free_port, _metric, _start_turnout, _start_upstream, _stop, _wait_http

_JUDGE_REPLY = (b'{"id":"j","object":"chat.completion","created":0,"model":"judge","choices":[{"index":0,'
                b'"message":{"role":"assistant","content":"Score: 7"},"finish_reason":"stop"}],'
                b'"usage":{"prompt_tokens":120,"completion_tokens":3,"total_tokens":123}}')  # fmt: skip


async def _judge_server(port: int, delay_s: float) -> None:
    """A slow judge: each POST answered after ``delay_s`` (HTTP/1.1, keep-alive, one at a time per connection)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                await asyncio.sleep(delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(_JUDGE_REPLY)).encode() + b"\r\n\r\n" + _JUDGE_REPLY)  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def _hooks(mode: str, judge: int) -> str:
    """The ``[judge]`` and ``[shadow]`` of a mode, on ``bench.gateway``'s pool and tenant."""
    if mode == "off":
        return ""
    share = 0.0 if mode == "idle" else 1.0
    return (f'[judge]\nenabled = true\nbase_url = "http://127.0.0.1:{judge}/v1"\nupstream_model = "judge"\n'
            f"sample = 0.0\nbudget_usd_per_day = 1000.0\ntimeout_s = 10.0\nqueue_size = 100000\n"
            f"workers = 64\n\n[shadow]\nenabled = true\nreference = \"m0\"\nshare = {share}\n"
            f"budget_usd_per_day = 1000.0\n\n")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--judge-delay-ms", type=float, default=200.0)
    p.add_argument("--serve-judge", type=int, help=argparse.SUPPRESS)  # run the slow judge on this port
    p.add_argument("--modes", default="off,idle,shadow",
                   help="the processes, in order (a control: off,idle,off; a repeated mode is named off-2)")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args(argv)
    if args.serve_judge:
        try:
            asyncio.run(_judge_server(args.serve_judge, args.judge_delay_ms / 1000.0))
        except KeyboardInterrupt:
            pass
        return 0
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as d:
        tmp = Path(d)
        try:
            up, judge = _free_port(), _free_port()
            procs.append(_start_upstream(up))
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.shadow", "--serve-judge", str(judge),
                                           "--judge-delay-ms", str(args.judge_delay_ms)]))  # fmt: skip
            body = msgspec.json.encode({"model": "__MODEL__", "messages": [{"role": "user", "content": "__PROMPT__"}]})
            auth = {"authorization": f"Bearer {BENCH_KEY}"}
            targets = []
            names: list[tuple[str, str]] = []
            for mode in args.modes.split(","):
                seen = sum(1 for _, m in names if m == mode)
                names.append((mode if not seen else f"{mode}-{seen + 1}", mode))
            for name, mode in names:
                port = _free_port()
                (tmp / name).mkdir()
                proc = _start_turnout(port, up, tmp / name, "up", extra=_hooks(mode, judge))[0]
                procs.append(proc)
                targets.append(Target(name, port, "/v1/chat/completions", body.replace(b"__MODEL__", b"auto"), auth, proc))
            _wait_http(up, "/v1/models")
            for t in targets:
                try:
                    _wait_http(t.port, "/healthz", proc=t.proc)
                except RuntimeError:
                    print((tmp / t.name / "turnout.log").read_text()[-3000:], file=sys.stderr)
                    raise
            direct = Target("direct", up, "/v1/chat/completions", body.replace(b"__MODEL__", b"bench"), {})
            for t in targets:  # warm up (not reported)
                t.run(20.0, 3.0, 0.0)
            lat: dict[str, list[float]] = {t.name: [] for t in [direct, *targets]}
            per_round: dict[str, list[tuple[float, float]]] = {t.name: [] for t in [direct, *targets]}
            errors = {t.name: 0 for t in targets}
            for r in range(args.rounds):
                shift = r % len(targets)  # each round in another order: drift on a shared machine spreads evenly
                for t in [direct, *targets[shift:], *targets[:shift]]:
                    res = t.run(args.rate, args.duration_s, args.warmup_s)
                    lat[t.name] += list(res.latencies_s)
                    per_round[t.name].append((res.pct_ms(50), res.pct_ms(99)))
                    if t.name in errors:
                        errors[t.name] += res.errors
                    print(f"  round {r + 1} {t.name}: p50 {res.pct_ms(50):.2f} ms, p99 {res.pct_ms(99):.2f} ms, "
                          f"errors {res.errors}", flush=True)  # fmt: skip
                    time.sleep(1.0)
            import numpy as np

            pct = {n: {q: float(np.percentile(np.asarray(v), q) * 1000.0) for q in (50, 99)} for n, v in lat.items()}
            summary: dict = {"rate": args.rate, "duration_s": args.duration_s, "rounds": args.rounds,
                             "judge_delay_ms": args.judge_delay_ms, "targets": {}}  # fmt: skip
            print(f"\n{'target':<8} {'p50 ms':>8} {'p99 ms':>8} {'ovh p50':>8} {'ovh p99':>8} {'errors':>6}  background jobs")
            for name, q in pct.items():
                ovh = {k: q[k] - pct["direct"][k] for k in (50, 99)}
                jobs = ""
                if name != "direct":
                    port = next(t.port for t in targets if t.name == name)
                    done = {k: _metric(port, f'turnout_offpath_jobs{{kind="{k}",outcome="done"}}') for k in ("shadow", "judge")}
                    skipped = _metric(port, 'turnout_offpath_jobs{kind="shadow",outcome="skipped_full"}')
                    grades = _metric(port, 'turnout_feedback_total{kind="judge"}')
                    jobs = f"shadow done {done['shadow']:g}, judge grades {grades:g}, skipped {skipped:g}"
                    summary["targets"][name] = {"p50_ms": round(q[50], 3), "p99_ms": round(q[99], 3),
                                                "overhead_p50_ms": round(ovh[50], 3), "overhead_p99_ms": round(ovh[99], 3),
                                                "errors": errors[name], "shadow_jobs_done": done["shadow"],
                                                "judge_grades": grades}  # fmt: skip
                print(f"{name:<8} {q[50]:8.2f} {q[99]:8.2f} {ovh[50] if name != 'direct' else 0:8.2f} "
                      f"{ovh[99] if name != 'direct' else 0:8.2f} {errors.get(name, 0):6d}  {jobs}")  # fmt: skip
            for name in [n for n, _ in names if n != "off"]:
                ratio = {k: pct[name][k] / pct["off"][k] for k in (50, 99)}
                summary[f"{name}_over_off"] = {f"p{k}": round(v, 3) for k, v in ratio.items()}
                print(f"{name} / off: client p50 x{ratio[50]:.2f}, p99 x{ratio[99]:.2f}")
            # a round spoilt by the machine (another job's burst) moves pooled percentiles: the
            # median over rounds of each round's own percentile is steadier
            med = {n: (float(np.median([r[0] for r in v])), float(np.median([r[1] for r in v]))) for n, v in per_round.items()}
            summary["median_of_rounds_ms"] = {n: {"p50": round(a, 3), "p99": round(b, 3)} for n, (a, b) in med.items()}
            print("median over rounds: " + ", ".join(f"{n} p50 {a:.2f} / p99 {b:.2f} ms" for n, (a, b) in med.items()))
            for name in [n for n, _ in names if n != "off"]:
                print(f"  {name} / off (median of rounds): p50 x{med[name][0] / med['off'][0]:.2f}, "
                      f"p99 x{med[name][1] / med['off'][1]:.2f}")  # fmt: skip
            if args.json:
                Path(args.json).write_text(json.dumps(summary, indent=2))
        finally:
            for proc in reversed(procs):
                _stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
