"""The dashboard's data: the pure shaping of history, and the endpoints through a real server."""

from __future__ import annotations

import hashlib

import httpx
import msgspec
import numpy as np
import pytest

from feedback.history import TrafficBucket
from learner.ports import DriftEvent, SnapshotInfo
from service.dashboard import _window, router_history
from service.errors import ApiError
from tests.service.learning import drive

B = 60_000


def test_router_history_shares_costs_margins_and_marks():
    rows = [
        TrafficBucket(0, 1, 0, "a", 3, 3, 0.003, 0.030, 1.5),
        TrafficBucket(0, 1, 0, "b", 1, 1, 0.001, 0.010, 0.5),
        TrafficBucket(0, 1, 1, "b", 2, 1, 0.002, 0.020, 0.2),
        TrafficBucket(2 * B, 0, 0, "gone", 4, 4, 0.004, 0.008, 2.0),  # an older clustering, a removed model
        TrafficBucket(9 * B, 1, 0, "a", 5, 5, 0.1, 0.1, 0.0),  # outside the window: ignored
    ]
    snaps = [SnapshotInfo(3, 2, B + 5, "scheduled"), SnapshotInfo(2, 1, 10 * B, "drift")]
    drift = [DriftEvent(3, B + 1, 0, "margin", (0, 1), "", 0.6, 0.3, "recluster", 1)]
    h = router_history(rows, models=("a", "b"), clustering=1, since_ms=0, until_ms=3 * B, bucket_ms=B,
                       snapshots=snaps, drift=drift, breakers={"a": "open"})  # fmt: skip
    assert h.buckets == [0, B, 2 * B]
    assert h.models == ["a", "b", "gone"]
    assert h.decisions == 10
    assert [c.cluster for c in h.clusters] == [0, 1]  # clusters of the live clustering only
    c0 = h.clusters[0]
    assert c0.decisions == [4, 0, 0]
    assert c0.share == {"a": [0.75, 0.0, 0.0], "b": [0.25, 0.0, 0.0], "gone": [0.0, 0.0, 0.0]}
    assert c0.margin == [0.5, None, None]
    assert h.overall.decisions == [6, 0, 4]
    assert h.overall.share["gone"] == [0.0, 0.0, 1.0]
    assert h.cost.answered == [5, 0, 4]
    assert h.cost.cost_per_request_usd == [pytest.approx(0.006 / 5), None, pytest.approx(0.001)]
    assert h.cost.counterfactual_per_request_usd == [pytest.approx(0.06 / 5), None, pytest.approx(0.002)]
    assert h.cost.saving == pytest.approx(1 - 0.010 / 0.068)
    assert [(s.version, s.reason) for s in h.snapshots] == [(3, "scheduled")]
    assert h.drift is not None and [(d.kind, d.clusters, d.action) for d in h.drift] == [("margin", [0, 1], "recluster")]
    assert h.breakers == {"a": "open"}
    empty = router_history([], models=("a",), clustering=0, since_ms=0, until_ms=B, bucket_ms=B)
    assert empty.drift is None and empty.breakers is None and empty.cost.saving is None
    assert empty.clusters == [] and empty.overall.margin == [None]


def test_router_history_counts_decisions_per_language_and_the_models_that_served_them():
    rows = [
        TrafficBucket(0, 1, 0, "a", 3, 3, 0.0, 0.0, 0.0, "zh"),
        TrafficBucket(0, 1, 1, "b", 1, 1, 0.0, 0.0, 0.0, "zh"),
        TrafficBucket(B, 1, 0, "b", 4, 4, 0.0, 0.0, 0.0, "en"),
        TrafficBucket(B, 1, 0, "a", 2, 2, 0.0, 0.0, 0.0, ""),
    ]
    h = router_history(rows, models=("a", "b"), clustering=1, since_ms=0, until_ms=2 * B, bucket_ms=B)
    assert [(t.language, t.decisions, t.share) for t in h.languages] == [("en", 4, 0.4), ("zh", 4, 0.4), ("", 2, 0.2)]
    assert h.languages[1].models == {"a": 0.75, "b": 0.25}
    assert router_history([], models=("a",), clustering=0, since_ms=0, until_ms=B, bucket_ms=B).languages == []


def test_window_is_whole_buckets_ending_with_the_current_one():
    since, until, width = _window(now_ms=3_600_000 + 1234, window_s=3600, buckets=60)
    assert width == 60_000 and until == 3_660_000 and since == 60_000
    with pytest.raises(ApiError):
        _window(0, window_s=0, buckets=10)
    with pytest.raises(ApiError):
        _window(0, window_s=60, buckets=10_000)


def test_history_endpoint_over_http(live, runtime):
    with httpx.Client(base_url=live, timeout=30) as client:
        drive(client, np.random.default_rng(7), per_topic=10)
        runtime.sink.flush()
        runtime.cycle.run()
        drive(client, np.random.default_rng(8), per_topic=5, feedback=False)
        runtime.sink.flush()
        r = client.get("/v1/router/history", params={"window_s": 600, "buckets": 20})
        bad = client.get("/v1/router/history", params={"buckets": 0})
        page = client.get("/dashboard")
        js = client.get("/dashboard/dashboard.js")
        missing = client.get("/dashboard/secrets.txt")
    assert r.status_code == 200, r.text
    h = r.json()
    assert len(h["buckets"]) == 20 and h["bucket_ms"] == 30_000
    assert h["decisions"] == 30
    assert h["models"][: len(runtime.prior.models)] == list(runtime.prior.models)
    shares = [sum(h["overall"]["share"][m][i] for m in h["models"]) for i, n in enumerate(h["overall"]["decisions"]) if n]
    assert shares and all(s == pytest.approx(1.0) for s in shares)
    assert sum(h["cost"]["answered"]) == 30
    assert 0 < h["cost"]["total_usd"] <= h["cost"]["counterfactual_total_usd"]
    versions = [s["version"] for s in h["snapshots"]]
    assert runtime.router.view.snapshot.version in versions
    assert h["clustering"] == runtime.router.view.snapshot.clustering
    assert h["breakers"] == {m: "closed" for m in runtime.prior.models}
    assert h["drift"] == []  # the learner log is wired and had nothing to report
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "buckets"
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/dashboard/dashboard.js">' in page.text and "http" not in page.text.split("<body")[1]
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert missing.status_code == 404
    # what the clusters are about: the simulated topics' examples (prompt storage is off)
    snap = runtime.router.view.snapshot
    assert [a["cluster"] for a in h["about"]] == list(range(len(snap.centroids) // (4 * snap.dim)))
    assert all(a["prompts"] is None and 1 <= len(a["examples"]) <= 3 for a in h["about"])
    from simulations.pool import topic_examples

    distinct = len(set(topic_examples()))
    assert sum(a["examples_assigned"] for a in h["about"]) == h["about"][0]["examples_total"] == distinct


def test_history_needs_a_key_when_keys_are_configured(settings, embedder):
    from service.runtime import Runtime
    from service.settings import TenantSettings
    from tests.servers import serve

    key = "sk-operator"
    tenant = TenantSettings(name="ops", api_key_sha256=(hashlib.sha256(key.encode()).hexdigest(),))
    rt = Runtime(msgspec.structs.replace(settings, tenants=(tenant,)), embedder=embedder, sim_latency_scale=0.0)
    try:
        with serve(rt.app) as url:
            anonymous = httpx.get(url + "/v1/router/history", timeout=30)
            keyed = httpx.get(url + "/v1/router/history", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            page = httpx.get(url + "/dashboard", timeout=30)
    finally:
        rt.stop()
    assert anonymous.status_code == 401
    assert keyed.status_code == 200 and keyed.json()["decisions"] == 0
    assert page.status_code == 200  # the page is static; it asks for the key when the data says 401


def _snapshot(centroids: np.ndarray):
    from learner.snapshot import initial_snapshot

    return initial_snapshot(models=("a", "b"), centroids=centroids, prior_mean=(0.5, 0.5), completion_tokens=(1.0, 1.0),
                            latency_s=(1.0, 1.0), prior_strength=1.0, shrink_strength=1.0, created_at_ms=0)  # fmt: skip


def test_cluster_texts_examples_and_prompts_within_the_configured_scope():
    from feedback.events import DecisionMade, uuid7
    from feedback.history import MemoryHistory
    from learner.embedding import HashingEmbedder
    from service.clusters_about import ClusterTexts, PromptScope

    emb = HashingEmbedder(64)
    examples = ["bake bread with yeast", "bake a cake with flour", "book a flight to rome", "book a hotel in rome"]
    vectors = emb.embed(examples)
    snap = _snapshot(np.stack([vectors[:2].mean(0), vectors[2:].mean(0)]))
    history = MemoryHistory()
    t = 1_750_000_000_000
    stored = [("acme", "bake bread with yeast tonight"), ("globex", "book a flight to rome please"),
              ("acme", "x" * 400)]  # fmt: skip
    history.insert([DecisionMade(event_id=uuid7(t + i), decision_id=uuid7(t + i), ts_ms=t + i, tenant=tenant,
                                 prompt_text=text, embedding=emb.embed([text])[0].tobytes())
                    for i, (tenant, text) in enumerate(stored)])  # fmt: skip

    off = ClusterTexts(examples, emb.embed, history, PromptScope()).about(snap, t, t + 10)
    assert [a.prompts for a in off] == [None, None]  # storage off: no prompt is read
    assert [[n.text for n in a.examples] for a in off] == [  # its own two first, then the nearest other
        ["bake bread with yeast", "bake a cake with flour", "book a hotel in rome"],
        ["book a flight to rome", "book a hotel in rome", "bake a cake with flour"],
    ]
    assert [a.examples_assigned for a in off] == [2, 2] and {a.examples_total for a in off} == {4}
    assert off[0].examples[0].assigned and not off[0].examples[2].assigned

    acme = ClusterTexts(examples, emb.embed, history, PromptScope(tenants=("acme",)), clip=50).about(snap, t, t + 10)
    seen = {n.text for a in acme for n in (a.prompts or [])}
    assert "bake bread with yeast tonight" in seen and "book a flight to rome please" not in seen  # globex: not opted in
    assert "x" * 49 + "\u2026" in seen  # clipped to 50 characters
    assert acme[0].prompts_total == 2

    everyone = ClusterTexts(examples, emb.embed, history, PromptScope(everyone=True)).about(snap, t, t + 10)
    assert "book a flight to rome please" in {n.text for n in everyone[1].prompts or []}
    none = ClusterTexts((), None).about(snap, t, t + 10)
    assert [(a.examples, a.examples_total, a.prompts) for a in none] == [([], 0, None), ([], 0, None)]


def test_a_cache_hit_is_traffic_of_model_cache_never_a_pool_model(settings, embedder):
    """A response-cache hit is a decision of model "cache", cost 0. The learner folds past it (no
    posterior for "cache", the snapshot validates), and the dashboard's data shows it as a share of
    the traffic and a saving against the most expensive model, never as a pool model: no
    posterior, no breaker, no price."""
    from learner.snapshot import validate
    from service.runtime import Runtime
    from service.settings import CacheSettings
    from tests.servers import serve

    rt = Runtime(msgspec.structs.replace(settings, cache=CacheSettings(enabled=True, min_quality=0.0)),
                 embedder=embedder, sim_latency_scale=0.0)  # fmt: skip
    try:
        with serve(rt.app) as url, httpx.Client(base_url=url, timeout=30) as client:
            ask = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "How do I boil an egg?"}]}
            first, hit = client.post("/v1/chat/completions", json=ask), client.post("/v1/chat/completions", json=ask)
            assert hit.headers["x-turnout-model"] == "cache" and hit.headers["x-turnout-cache"] == "hit-exact"
            for r, rating in ((hit, "down"), (first, "up")):  # feedback on the hit reaches no posterior
                fb = client.post("/v1/feedback", json={"decision_id": r.headers["x-turnout-decision-id"], "rating": rating})
                assert fb.status_code == 202, fb.text
            rt.sink.flush()
            snap = rt.cycle.run()
            state = client.get("/v1/router/state").json()
            h = client.get("/v1/router/history", params={"window_s": 600, "buckets": 10}).json()
            metrics = client.get("/metrics").text
    finally:
        rt.stop()
    pool = list(rt.prior.models)
    validate(snap)
    assert list(snap.models) == pool and sum(map(sum, snap.n)) == 1.0  # only the thumbs-up on the pool's answer
    assert state["models"] == pool and all(list(c["models"]) == pool for c in state["clusters"])
    assert h["models"] == pool + ["cache"]  # after the pool, as traffic
    assert h["decisions"] == 2 and sum(h["overall"]["share"]["cache"]) == pytest.approx(0.5)
    assert h["breakers"] == {m: "closed" for m in pool}
    cost = float(first.headers["x-turnout-cost-usd"])
    assert sum(h["cost"]["answered"]) == 2 and h["cost"]["total_usd"] == pytest.approx(cost)  # the hit cost nothing
    assert h["cost"]["counterfactual_total_usd"] >= 2 * cost * (1 - 1e-9) and h["cost"]["saving"] >= 0.5 - 1e-9
    assert 'turnout_requests_total{policy="cache",model="cache",status="ok"} 1' in metrics
    assert 'model="cache"' not in "\n".join(line for line in metrics.splitlines()
                                            if line.startswith(("turnout_posterior_mean", "turnout_circuit_")))  # fmt: skip
