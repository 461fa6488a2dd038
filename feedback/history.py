"""Read-only history of routing for operators: traffic, cost and margins per time bucket.

The dashboard asks "what did the router do over the last hour": which model each cluster's
traffic went to, what it cost against always sending everything to the most expensive model,
how well prompts fitted their clusters (margins). ``HistoryStore.traffic`` answers from the
decisions table, one row per (time bucket, clustering, cluster, chosen model);
``HistoryStore.prompts`` returns the newest stored prompts (only decisions made where prompt
storage was on keep their text), which describe what clusters are about. The in-memory
adapter (here) and the ClickHouse one (``clickhouse_history.py``) are held to one contract
suite in ``tests/feedback/test_history.py``.

The counterfactual cost of a decision is the price of its own tokens (prompt and completion)
at the pool's most expensive rate for those tokens: max over models j of
``prompt_tokens * price_in[j] + completion_tokens * price_out[j]``, per million tokens.
"""

from __future__ import annotations

import threading
from typing import Iterable, Protocol, Sequence

import msgspec

from feedback.events import DecisionMade, Event

__all__ = [
    "ATTEMPT_POLICIES", "CASCADE_POLICY", "FAILOVER_POLICY", "HistoryStore", "MemoryHistory", "Prices", "StoredPrompt", "TrafficBucket", "bucket_traffic",
    "counterfactual_cost_usd", "stored_prompts",
]  # fmt: skip


FAILOVER_POLICY = "failover"  # the policy of a failed attempt's own record (see service/chat.py)
CASCADE_POLICY = "cascade"  # the policy of an attempt's own record inside a cascade (service/cascade.py)
ATTEMPT_POLICIES = (FAILOVER_POLICY, CASCADE_POLICY)  # records of attempts, not of requests


class Prices(msgspec.Struct, frozen=True):
    """The pool's prices, USD per million tokens, one entry per model (any order)."""

    price_in_per_mtok: tuple[float, ...]
    price_out_per_mtok: tuple[float, ...]


class TrafficBucket(msgspec.Struct, frozen=True):
    """Decisions of one (bucket, clustering, cluster, chosen model, prompt language).

    ``model`` is what the policy chose (the arm); ``answered`` counts those that got an answer
    from some model (status ok, after failovers). Costs and the counterfactual are summed over
    answered decisions; ``margin_sum`` over all of them. Records of single failed attempts
    (policy ``failover``) and a cascade's attempts (policy ``cascade``) are not requests and are left out.
    """

    bucket_ms: int  # start of the bucket, a multiple of the bucket width
    clustering: int
    cluster: int
    model: str
    decisions: int
    answered: int
    cost_usd: float
    max_cost_usd: float  # the same tokens at the pool's most expensive rate
    margin_sum: float
    language: str = ""  # ISO 639-1 code of the prompts, "" not detected


class StoredPrompt(msgspec.Struct, frozen=True):
    """The prompt of a decision that kept its text, with its embedding."""

    ts_ms: int
    tenant: str
    text: str
    embedding: bytes  # (dim,) float32 little-endian


class HistoryStore(Protocol):
    """Decisions aggregated over time, read-only."""

    def traffic(self, since_ms: int, until_ms: int, bucket_ms: int, prices: Prices) -> list[TrafficBucket]:
        """Decisions with ``since_ms <= ts < until_ms``, bucketed by ``ts // bucket_ms``,
        each decision counted once however often it was delivered. Sorted by
        (bucket_ms, clustering, cluster, model, language)."""
        ...

    def prompts(self, since_ms: int, until_ms: int, limit: int,
                tenants: Sequence[str] | None = None) -> list[StoredPrompt]:  # fmt: skip
        """The newest ``limit`` decisions with ``since_ms <= ts < until_ms`` that kept their prompt
        text and embedding, newest (highest UUIDv7 decision id) first, each once; of ``tenants``
        only, when given. Records of
        single failed attempts are left out (their request has its own decision)."""
        ...


def counterfactual_cost_usd(prompt_tokens: int, completion_tokens: int, prices: Prices) -> float:
    """What the same tokens cost at the pool's most expensive rate for them."""
    if not prices.price_in_per_mtok:
        return 0.0
    return max(
        (prompt_tokens * pin + completion_tokens * pout) / 1e6
        for pin, pout in zip(prices.price_in_per_mtok, prices.price_out_per_mtok)
    )


def bucket_traffic(
    decisions: Iterable[DecisionMade], since_ms: int, until_ms: int, bucket_ms: int, prices: Prices
) -> list[TrafficBucket]:
    """The pure aggregation behind ``HistoryStore.traffic`` (decisions already deduplicated)."""
    if bucket_ms <= 0:
        raise ValueError("bucket_ms must be positive")
    acc: dict[tuple[int, int, int, str, str], list[float]] = {}
    for d in decisions:
        if not since_ms <= d.ts_ms < until_ms or d.policy in ATTEMPT_POLICIES or d.purpose:  # not traffic
            continue
        key = ((d.ts_ms // bucket_ms) * bucket_ms, d.clustering, d.cluster, d.arm or d.model, d.language)
        row = acc.setdefault(key, [0, 0, 0.0, 0.0, 0.0])
        row[0] += 1
        row[4] += d.margin
        if d.model and d.status == "ok":
            row[1] += 1
            row[2] += d.cost_usd
            row[3] += counterfactual_cost_usd(d.prompt_tokens, d.completion_tokens, prices)
    return [
        TrafficBucket(b, c, k, m, int(v[0]), int(v[1]), v[2], v[3], v[4], lang)
        for (b, c, k, m, lang), v in sorted(acc.items())
    ]


def stored_prompts(decisions: Iterable[DecisionMade], since_ms: int, until_ms: int, limit: int,
                   tenants: Sequence[str] | None = None) -> list[StoredPrompt]:  # fmt: skip
    """The pure selection behind ``HistoryStore.prompts`` (decisions already deduplicated)."""
    kept = [d for d in decisions if since_ms <= d.ts_ms < until_ms and d.prompt_text and d.embedding
            and d.policy not in ATTEMPT_POLICIES and not d.purpose and (tenants is None or d.tenant in tenants)]  # fmt: skip
    kept.sort(key=lambda d: d.decision_id, reverse=True)
    return [StoredPrompt(d.ts_ms, d.tenant, d.prompt_text, d.embedding) for d in kept[: max(0, limit)]]


class MemoryHistory:
    """In-memory adapter: give it the events the row store gets (``insert``), then query.

    Idempotent by ``decision_id``, like the row stores.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: dict[str, DecisionMade] = {}

    def insert(self, events: Sequence[Event]) -> None:
        with self._lock:
            for ev in events:
                if isinstance(ev, DecisionMade):
                    self._decisions.setdefault(ev.decision_id, ev)

    def traffic(self, since_ms: int, until_ms: int, bucket_ms: int, prices: Prices) -> list[TrafficBucket]:
        with self._lock:
            decisions = list(self._decisions.values())
        return bucket_traffic(decisions, since_ms, until_ms, bucket_ms, prices)

    def prompts(self, since_ms: int, until_ms: int, limit: int,
                tenants: Sequence[str] | None = None) -> list[StoredPrompt]:  # fmt: skip
        with self._lock:
            decisions = list(self._decisions.values())
        return stored_prompts(decisions, since_ms, until_ms, limit, tenants)
