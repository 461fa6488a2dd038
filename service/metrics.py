"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

The request path only adds to counters and histogram buckets held in dicts (a few hundred
nanoseconds); the text is rendered when ``/metrics`` is scraped, with gauges (posterior means,
circuit states, event backlog) read at that moment from the objects that own them.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable

__all__ = ["Counter", "Gauge", "Histogram", "Registry"]

Labels = tuple[str, ...]

OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Labels = ()) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[Labels, float] = {}

    def inc(self, *values: str, by: float = 1.0) -> None:
        self.values[values] = self.values.get(values, 0.0) + by

    def known(self, *values: str) -> None:
        """Show this label set at 0 before it first counts (an alert on rate() needs the series)."""
        self.values.setdefault(values, 0.0)

    def state(self) -> list:
        return [[list(k), v] for k, v in list(self.values.items())]  # list(): one step under the GIL

    def render(self, others: Iterable[list] = ()) -> Iterable[str]:
        values = dict(self.values)
        for state in others:  # other workers' counts (``Registry.peers``): summed
            for k, v in state:
                values[tuple(k)] = values.get(tuple(k), 0.0) + v
        for values_, v in sorted(values.items()):
            yield f"{self.name}{_labels(self.labels, values_)} {_num(v)}"


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...], labels: Labels = ()) -> None:
        self.name, self.help, self.labels, self.buckets = name, help, labels, buckets
        self.series: dict[Labels, list[float]] = {}  # per label set: bucket counts..., overflow, sum, count

    def observe(self, value: float, *values: str) -> None:
        s = self.series.get(values)
        if s is None:
            s = self.series[values] = [0.0] * (len(self.buckets) + 3)
        s[bisect.bisect_left(self.buckets, value)] += 1  # the first bucket with bound >= value
        s[-2] += value
        s[-1] += 1

    def state(self) -> list:
        return [[list(k), list(s)] for k, s in list(self.series.items())]

    def render(self, others: Iterable[list] = ()) -> Iterable[str]:
        series = {k: list(s) for k, s in self.series.items()}
        for state in others:  # other workers' buckets, sums and counts (``Registry.peers``): summed
            for k, theirs in state:
                mine = series.setdefault(tuple(k), [0.0] * len(theirs))
                if len(mine) == len(theirs):
                    series[tuple(k)] = [a + b for a, b in zip(mine, theirs)]
        for values, s in sorted(series.items()):
            cumulative = 0.0
            for bound, n in zip(self.buckets, s):
                cumulative += n
                le = 'le="' + _num(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.labels, values, le)} {_num(cumulative)}"
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.labels, values, inf)} {_num(s[-1])}"
            yield f"{self.name}_sum{_labels(self.labels, values)} {_num(s[-2])}"
            yield f"{self.name}_count{_labels(self.labels, values)} {_num(s[-1])}"


class Gauge:
    """A gauge read when scraped: ``read()`` returns (label values, value) pairs."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Labels, read: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        self.name, self.help, self.labels, self.read = name, help, labels, read

    def render(self, others: Iterable[list] = ()) -> Iterable[str]:
        for values, v in self.read():
            yield f"{self.name}{_labels(self.labels, values)} {_num(v)}"


class Registry:
    """The service's metrics. Counters and histograms are fed by the request path.

    With several serving processes (``turnout up --workers N``), ``peers`` returns the other
    workers' ``state()`` (``service.metrics_exchange``): their counters and histograms are added
    to this one's when ``/metrics`` is scraped, so any worker answers for all. Gauges are read here
    (the posterior means are the same in every worker; breakers and backlogs are this worker's).
    """

    def __init__(self) -> None:
        self.peers: Callable[[], list[dict[str, list]]] | None = None
        self.requests = Counter("turnout_requests_total", "Chat completions answered, by policy, model and status.",
                                ("policy", "model", "status"))  # fmt: skip
        self.overhead = Histogram("turnout_routing_overhead_seconds",
                                  "Time from request body to upstream call: auth, parse, rules, embed, route.",
                                  OVERHEAD_BUCKETS_S)  # fmt: skip
        self.upstream = Histogram("turnout_upstream_latency_seconds", "Upstream call duration, by model.",
                                  LATENCY_BUCKETS_S, ("model",))  # fmt: skip
        self.upstream_errors = Counter("turnout_upstream_errors_total", "Failed upstream attempts, by model.",
                                       ("model",))  # fmt: skip
        self.fallbacks = Counter("turnout_fallbacks_total", "Requests answered by a fallback model.", ("model",))
        self.rejected = Counter("turnout_rejected_total", "Requests refused before routing, by reason.", ("reason",))
        self.feedback = Counter("turnout_feedback_total", "Feedback events emitted, by kind.", ("kind",))
        self.languages = Counter("turnout_request_languages_total", "Requests routed, by the language detected in "
                                 "the last user message (ISO 639-1; empty: not detected).", ("language",))  # fmt: skip
        # the response cache (service/caching.py): hit rate, money not spent, what entered and what left
        self.cache_lookups = Counter("turnout_cache_lookups_total",
                                     "Response cache lookups, by result: hit_exact, hit_semantic, miss.", ("result",))  # fmt: skip
        self.cache_saved = Counter("turnout_cache_saved_usd_total",
                                   "USD not spent: at each cache hit, what its answer cost when it was made.")  # fmt: skip
        self.cache_admissions = Counter("turnout_cache_admissions_total", "Answers offered to the response cache, "
                                        "by outcome: stored, below_quality, unfinished, present.", ("outcome",))  # fmt: skip
        self.cache_evictions = Counter("turnout_cache_evictions_total", "Response cache entries evicted, by reason: "
                                       "expired, capacity, feedback, re_request, judge, quality.", ("reason",))  # fmt: skip
        self._metrics: list = [self.requests, self.overhead, self.upstream, self.upstream_errors, self.fallbacks,
                               self.rejected, self.feedback, self.languages, self.cache_lookups, self.cache_saved,
                               self.cache_admissions, self.cache_evictions]  # fmt: skip

    def for_pool(self, models: Iterable[str]) -> "Registry":
        """Every series whose labels are known in advance, at 0: per pool model, and the reasons."""
        for m in models:
            self.upstream_errors.known(m)
            self.fallbacks.known(m)
        for reason in ("unauthorized", "rate_limited", "content_policy", "context_length_exceeded", "cost_cap_exceeded",
                       "model_not_allowed", "language_not_served"):
            self.rejected.known(reason)
        return self

    def add_gauge(self, name: str, help: str, labels: Labels, read: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        self._metrics.append(Gauge(name, help, labels, read))

    def state(self) -> dict[str, list]:
        """This process's counters and histograms, as plain lists (what a worker shares)."""
        return {m.name: m.state() for m in self._metrics if m.kind != "gauge"}

    def render(self) -> str:
        others = self.peers() if self.peers is not None else []
        lines: list[str] = []
        for m in self._metrics:
            lines.append(f"# HELP {m.name} {m.help}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            lines.extend(m.render([o[m.name] for o in others if m.name in o]))
        return "\n".join(lines) + "\n"
