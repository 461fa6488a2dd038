"""One contract for the history port: in-memory and ClickHouse (chDB)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from feedback.clickhouse import ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.clickhouse_history import ClickHouseHistory, uuid7_floor
from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.history import MemoryHistory, Prices, TrafficBucket, counterfactual_cost_usd

T0 = 1_750_000_000_000  # a fixed instant; buckets of 60 s start at multiples of 60_000
PRICES = Prices(price_in_per_mtok=(5.0, 0.15, 1.0), price_out_per_mtok=(15.0, 0.6, 20.0))


@pytest.fixture(params=["memory", "clickhouse"])
def store(request, chdb_dir, ch_database):
    """(insert, history): insert events the way the service's row store gets them."""
    if request.param == "memory":
        mem = MemoryHistory()
        return mem.insert, mem
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    return ClickHouseRowStore(client).insert, ClickHouseHistory(client)


def _d(ts_ms: int, *, cluster=0, arm="a", model=None, clustering=1, cost=0.001, margin=0.5, p=100, c=200,
       status="ok", policy="auto", language=""):
    return DecisionMade(event_id=uuid7(ts_ms), decision_id=uuid7(ts_ms), ts_ms=ts_ms, clustering=clustering,
                        cluster=cluster, arm=arm, model=arm if model is None else model, cost_usd=cost,
                        margin=margin, prompt_tokens=p, completion_tokens=c, status=status,
                        policy=policy, language=language)  # fmt: skip


def test_counterfactual_is_the_most_expensive_rate_for_the_same_tokens():
    # 1000 prompt tokens: model 0 costs 0.005 + 0.0015 = 0.0065; model 2 costs 0.001 + 0.002 = 0.003
    assert counterfactual_cost_usd(1000, 100, PRICES) == pytest.approx(0.0065)
    # 1000 completion tokens: model 2 (20 $/Mtok out) is the dearest now
    assert counterfactual_cost_usd(0, 1000, PRICES) == pytest.approx(0.02)
    assert counterfactual_cost_usd(10, 10, Prices((), ())) == 0.0


def test_traffic_buckets_per_cluster_and_chosen_model(store):
    insert, history = store
    a = _d(T0 + 1_000, cluster=0, arm="a", cost=0.001, margin=0.25)
    b = _d(T0 + 2_000, cluster=0, arm="a", cost=0.003, margin=0.75)
    c = _d(T0 + 3_000, cluster=1, arm="b", model="a", cost=0.002)  # failed over from b to a
    e = _d(T0 + 61_000, cluster=0, arm="b", model="", cost=0.0, status="error")  # no model answered
    f = _d(T0 + 62_000, cluster=0, arm="a", clustering=2)  # a newer clustering
    attempt = _d(T0 + 3_000, cluster=1, arm="b", status="error", policy="failover")  # c's failed attempt
    insert([a, b, c, e, f, attempt, FeedbackGiven(event_id=uuid7(), decision_id=a.decision_id, ts_ms=T0 + 5, reward=1.0)])
    insert([a, c])  # redelivered: counted once
    cf = counterfactual_cost_usd(100, 200, PRICES)
    got = history.traffic(T0, T0 + 120_000, 60_000, PRICES)
    base = T0 - T0 % 60_000
    want = [
        TrafficBucket(base, 1, 0, "a", 2, 2, 0.004, 2 * cf, 1.0),
        TrafficBucket(base, 1, 1, "b", 1, 1, 0.002, cf, 0.5),
        TrafficBucket(base + 60_000, 1, 0, "b", 1, 0, 0.0, 0.0, 0.5),
        TrafficBucket(base + 60_000, 2, 0, "a", 1, 1, 0.001, cf, 0.5),
    ]
    assert [(g.bucket_ms, g.clustering, g.cluster, g.model, g.decisions, g.answered) for g in got] == [
        (w.bucket_ms, w.clustering, w.cluster, w.model, w.decisions, w.answered) for w in want
    ]
    for g, w in zip(got, want):
        assert g.cost_usd == pytest.approx(w.cost_usd)
        assert g.max_cost_usd == pytest.approx(w.max_cost_usd)
        assert g.margin_sum == pytest.approx(w.margin_sum)


def test_traffic_is_split_by_prompt_language(store):
    insert, history = store
    insert([_d(T0 + 1, language="zh"), _d(T0 + 2, language="zh"), _d(T0 + 3, language="en"), _d(T0 + 4)])
    got = history.traffic(T0, T0 + 60_000, 60_000, PRICES)
    assert [(g.model, g.language, g.decisions) for g in got] == [("a", "", 1), ("a", "en", 1), ("a", "zh", 2)]


def test_traffic_reads_only_the_window(store):
    insert, history = store
    insert([_d(T0 - 1), _d(T0), _d(T0 + 59_999), _d(T0 + 60_000)])
    got = history.traffic(T0, T0 + 60_000, 10_000, PRICES)
    assert sum(g.decisions for g in got) == 2
    assert history.traffic(T0 + 10 * 60_000, T0 + 20 * 60_000, 60_000, PRICES) == []


def test_uuid7_floor_orders_like_the_ids_of_that_millisecond():
    for ms in (0, T0, T0 + 1):
        assert uuid7_floor(ms) <= uuid7(ms) < uuid7_floor(ms + 1)


def test_prompts_are_the_newest_stored_ones_of_the_window_and_tenants(store):
    insert, history = store

    def with_prompt(ts_ms: int, text: str, tenant: str = "acme", **kw) -> DecisionMade:
        d = _d(ts_ms, **kw)
        emb = np.asarray([ts_ms % 7, 1.0], dtype="<f4").tobytes()
        return msgspec.structs.replace(d, prompt_text=text, tenant=tenant, embedding=emb)

    kept = [with_prompt(T0 + i * 1000, f"prompt {i}") for i in range(5)]
    other = with_prompt(T0 + 5_500, "globex's", tenant="globex")
    insert([*kept, other, _d(T0 + 6_000),  # no text kept
            with_prompt(T0 + 6_500, "a failed attempt", policy="failover"),
            with_prompt(T0 - 1, "before the window"), with_prompt(T0 + 60_000, "after it")])  # fmt: skip
    insert(kept[:2])  # redelivered: once
    got = history.prompts(T0, T0 + 60_000, 4)
    assert [p.text for p in got] == ["globex's", "prompt 4", "prompt 3", "prompt 2"]
    assert got[1].tenant == "acme" and got[1].ts_ms == T0 + 4000
    assert np.frombuffer(got[1].embedding, dtype="<f4").tolist() == [(T0 + 4000) % 7, 1.0]
    assert [p.text for p in history.prompts(T0, T0 + 60_000, 10, tenants=["acme"])] == [
        f"prompt {i}" for i in (4, 3, 2, 1, 0)]  # fmt: skip
    assert history.prompts(T0, T0 + 60_000, 10, tenants=[]) == []
    assert history.prompts(T0, T0 + 60_000, 0) == []


def test_a_cascades_attempts_are_not_traffic(store):
    insert, history = store
    request = _d(T0 + 1_000, cluster=0, arm="cb", cost=0.004)  # the request's record: the cascade, both bills
    cheap = _d(T0 + 1_001, cluster=0, arm="cb", model="c", cost=0.001, policy="cascade")
    strong = _d(T0 + 1_002, cluster=0, arm="cb", model="a", cost=0.003, policy="cascade")
    insert([request, cheap, strong])
    got = history.traffic(T0, T0 + 60_000, 60_000, PRICES)
    assert [(b.model, b.decisions, b.cost_usd) for b in got] == [("cb", 1, pytest.approx(0.004))]
