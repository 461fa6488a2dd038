"""OPE from ClickHouse: decisions the service's router logged in chDB, read back read-only, and a
candidate's probabilities computed exactly as the router computes them."""

from __future__ import annotations

import json
import time

import msgspec
import numpy as np
import pytest

from feedback.clickhouse import ClickHouseRowStore, ClickHouseSnapshotStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, FeedbackGiven, uuid7
from learner.clusters import kmeans
from learner.routing import Prices, RoutingParams, decide
from learner.snapshot import encode_snapshot, initial_snapshot
from service.routing import Router
from simulations.environment import scenario
from simulations.logs import candidate_target, read_decisions, to_logged
from simulations.ope import estimate
from simulations.pool import make_prompt

MODELS = ("cheap", "mid", "dear")
PRICES = Prices(MODELS, (0.1, 1.0, 10.0), (0.4, 4.0, 30.0))
ROUTING = RoutingParams(n_samples=256, seed=7)  # the service's satisfice


@pytest.fixture
def config(tmp_path, monkeypatch):
    """The configuration the service ran with: the pool and its prices in the file, the router's
    seed and sample count as TURNOUT_ overrides (``turnout ope`` reads both, as the service does)."""
    monkeypatch.setenv("TURNOUT_ROUTER__SEED", "7")
    monkeypatch.setenv("TURNOUT_ROUTER__THOMPSON_SAMPLES", "256")
    path = tmp_path / "turnout.toml"
    path.write_text("".join(
        f'[[models]]\nname = "{m}"\nbase_url = "http://127.0.0.1:9/v1"\nprice_in_per_mtok = {p_in}\n'
        f"price_out_per_mtok = {p_out}\n\n"
        for m, p_in, p_out in zip(MODELS, PRICES.price_in_per_mtok, PRICES.price_out_per_mtok)
    ))  # fmt: skip
    return str(path)


def _snapshot(embedder, texts):
    cents = kmeans(embedder.embed(texts), 2, np.random.default_rng(0))
    snap = initial_snapshot(models=MODELS, centroids=cents, prior_mean=(0.5, 0.6, 0.7), completion_tokens=(100.0,) * 3,
                            latency_s=(0.1,) * 3, prior_strength=2.0, shrink_strength=5.0, created_at_ms=0)  # fmt: skip
    return msgspec.structs.replace(
        snap, version=3, parent=2, n=((10.0, 4.0, 2.0), (3.0, 8.0, 1.0)), reward_sum=((6.0, 3.0, 2.0), (1.0, 6.0, 1.0)),
        explore_share=(1.0, 1.0, 0.5),
    )  # fmt: skip


def test_logged_decisions_and_an_exact_candidate(embedder, chdb_dir, ch_database, config, capsys):
    rng = np.random.default_rng(0)
    topics = scenario("stationary").topics
    texts = [make_prompt(topics[i % 4], rng) for i in range(80)]
    snap = _snapshot(embedder, texts)
    router = Router(PRICES, ROUTING)
    assert router.swap(snap)
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    rows, snaps = ClickHouseRowStore(client), ClickHouseSnapshotStore(client)
    snaps.save(snap.version, snap.parent, 0, "manual", encode_snapshot(snap))
    now = int(time.time() * 1000)
    events, logged = [], {}
    for i, (text, emb) in enumerate(zip(texts, embedder.embed(texts))):
        choice = decide(router.view, emb, len(text) // 4, 0.0, 0.0, None, int(rng.integers(256)))
        did = uuid7(now)
        events.append(DecisionMade(
            event_id=uuid7(now), decision_id=did, ts_ms=now - 1000 + i, snapshot_version=snap.version,
            cluster=choice.cluster, arm=MODELS[choice.arm], model=MODELS[choice.arm], propensity=choice.propensity,
            prompt_tokens=len(text) // 4, cost_usd=1e-6 * (choice.arm + 1) * (len(text) // 4 + 50),
            embedding=np.ascontiguousarray(emb, dtype="<f4").tobytes(),
        ))  # fmt: skip
        if i % 5 == 4:
            continue  # no feedback: not a round
        events.append(FeedbackGiven(event_id=uuid7(now), decision_id=did, ts_ms=now, reward=float(i % 2)))
        if i % 7 == 0:  # a contradicting second rating (made later: a greater UUIDv7), not counted by the learner
            events.append(FeedbackGiven(event_id=uuid7(now + 1), decision_id=did, ts_ms=now, reward=1.0 - i % 2))
        if i == 7:  # an implicit signal counts beside the first rating
            events.append(FeedbackGiven(event_id=uuid7(now + 1), decision_id=did, ts_ms=now, reward=0.0,
                                        kind="re_request"))  # fmt: skip
        logged[did] = choice
    rows.insert(events)

    logs = read_decisions(client, now - 60_000, now + 60_000)
    assert len(logs.arms) == len(logged) == 64
    assert set(logs.decision_ids) == set(logged)
    reward = dict(zip(logs.decision_ids, logs.rewards))
    assert reward[events[0].decision_id] == 0.0  # decision 0: ratings 0.0, then 1.0
    seventh = [e.decision_id for e in events if isinstance(e, DecisionMade)][7]
    assert reward[seventh] == pytest.approx(0.5)  # ratings 1.0, then 0.0; a re-request 0.0
    assert read_decisions(client, now + 60_000, now + 120_000).arms == ()

    # the candidate is the live snapshot at the logged cost weight: its probabilities are the logged propensities
    target = candidate_target(logs, snap, PRICES, ROUTING, 0.0)
    col = {m: j for j, m in enumerate(MODELS)}
    got = target[np.arange(len(logs.arms)), [col[a] for a in logs.arms]]
    assert np.allclose(got, logs.propensities)
    rep = estimate(to_logged(logs, MODELS, target), min_ess=0)
    assert rep.ess == pytest.approx(len(logs.arms)) and rep.ips.estimate == pytest.approx(logs.rewards.mean())

    # a candidate without the dear model never chooses it
    without = candidate_target(logs, snap, PRICES, ROUTING, 0.0, exclude=("dear",))
    assert np.all(without[:, 2] == 0.0) and np.allclose(without.sum(axis=1), 1.0)

    # the command line reads the same rows (same engine path, this test's database)
    from service.cli import main

    args = ["ope", "--clickhouse-dsn", f"chdb://{chdb_dir}", "--database", ch_database, "--cost-weight", "0",
            "--config", config, "--since", str(now - 60_000), "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 64 and out["ess"] == pytest.approx(64.0)
    assert main(["ope", "--clickhouse-dsn", f"chdb://{chdb_dir}", "--database", ch_database, "--snapshot", "99",
                 "--config", config]) == 2  # fmt: skip
    # without the service's --config the pool is the simulated one: not the snapshot's, and said so
    assert main(["ope", "--clickhouse-dsn", f"chdb://{chdb_dir}", "--database", ch_database, "--cost-weight", "0"]) == 2
    assert "pass the --config the service runs with" in capsys.readouterr().err


def test_decisions_chosen_by_a_rule_are_left_out_and_counted(chdb_dir, ch_database, config, capsys):
    # two clusters on the plane; the router logs its exact propensities for decisions of a policy
    # ("auto", or "cheap" asked for by name), while a rule ("pinned") or a model asked for by name
    # ("passthrough") chose with propensity 1
    cents = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    snap = initial_snapshot(models=MODELS, centroids=cents, prior_mean=(0.5, 0.6, 0.7), completion_tokens=(100.0,) * 3,
                            latency_s=(0.1,) * 3, prior_strength=2.0, shrink_strength=5.0, created_at_ms=0)  # fmt: skip
    snap = msgspec.structs.replace(snap, version=3, parent=2, n=((4.0, 4.0, 4.0), (4.0, 4.0, 4.0)),
                                   reward_sum=((1.0, 2.0, 3.0), (3.0, 2.0, 1.0)))  # fmt: skip
    router = Router(PRICES, ROUTING)
    assert router.swap(snap)
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    ClickHouseSnapshotStore(client).save(snap.version, snap.parent, 0, "manual", encode_snapshot(snap))
    rng = np.random.default_rng(1)
    now = int(time.time() * 1000)
    events, by_policy = [], {"auto": [], "cheap": [], "pinned": [], "passthrough": []}
    for i in range(60):
        emb = np.array([1.0, 0.0] if i % 2 else [0.0, 1.0], dtype="<f4")
        policy = ("auto", "cheap", "pinned", "auto", "passthrough")[i % 5]
        if policy in ("auto", "cheap"):
            choice = decide(router.view, emb, 100, 0.0, 0.0, None, int(rng.integers(256)))
            arm, propensity, cluster = MODELS[choice.arm], choice.propensity, choice.cluster
        else:
            arm, propensity, cluster = "dear", 1.0, i % 2
        did = uuid7(now)
        events.append(DecisionMade(
            event_id=uuid7(now), decision_id=did, ts_ms=now - 1000 + i, policy=policy, snapshot_version=snap.version,
            requested_model={"passthrough": "dear", "cheap": "cheap"}.get(policy, "auto"), cluster=cluster, arm=arm,
            model=arm,
            propensity=propensity, prompt_tokens=100, cost_usd=1e-6 * (MODELS.index(arm) + 1) * 150,
            embedding=emb.tobytes(),
        ))  # fmt: skip
        events.append(FeedbackGiven(event_id=uuid7(now), decision_id=did, ts_ms=now, reward=float(i % 3 == 0)))
        by_policy[policy].append(did)
    ClickHouseRowStore(client).insert(events)

    logs = read_decisions(client, now - 60_000, now + 60_000)
    assert sorted(logs.decision_ids) == sorted(by_policy["auto"] + by_policy["cheap"])  # what a policy chose
    assert logs.skipped_pinned == len(by_policy["pinned"]) + len(by_policy["passthrough"]) == 24
    target = candidate_target(logs, snap, PRICES, ROUTING, 0.0)
    rep = estimate(to_logged(logs, MODELS, target), min_ess=0)
    assert (rep.n, rep.skipped_pinned) == (36, 24)
    # the candidate is the logging policy: on-policy, IPS is the plain mean of the policy's own rounds
    assert rep.ips.estimate == pytest.approx(logs.rewards.mean())

    from service.cli import main

    args = ["ope", "--clickhouse-dsn", f"chdb://{chdb_dir}", "--database", ch_database, "--cost-weight", "0",
            "--config", config, "--since", str(now - 60_000), "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n"], out["skipped_pinned"]) == (36, 24)
