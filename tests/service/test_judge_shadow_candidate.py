"""Shadow routing against a candidate snapshot, through the real app, in front of the local
OpenAI-speaking providers and a fake judge server (``tests/service/test_judge_shadow.py``'s).

The store holds two snapshots whose evidence leaves no doubt: the live one (the newest) routes
every prompt to ``a``; the candidate (an older version) either to ``b`` (it disagrees: ``b`` is
asked and both answers are graded) or to ``a`` as well (it agrees: no call, agreement recorded).
"""

from __future__ import annotations

import time

import httpx
import msgspec
import numpy as np
import pytest

from feedback.events import DecisionMade
from feedback.memory import MemorySnapshotStore
from learner.snapshot import Snapshot, encode_snapshot, initial_snapshot
from service.settings import ConfigError, load_settings
from tests.service.fleet import TIERS
from tests.service.test_judge_shadow import ADMIN, SERVER, TENANTS, chat, judge_section, settle
from tests.service.test_judge_shadow import _heal, fleet, grader  # noqa: F401  (fixtures)

MODELS = tuple(TIERS)  # a, b, c: the fleet's pool
LIVE, CANDIDATE = 2, 1


def snapshot(version: int, best: str, dim: int) -> Snapshot:
    """One cluster; a thousand calls of each model, every one of ``best``'s rewarded, no other's."""
    snap = initial_snapshot(models=MODELS, centroids=np.full((1, dim), dim**-0.5, dtype=np.float32),
                            prior_mean=tuple(TIERS.values()), completion_tokens=(100.0,) * 3, latency_s=(1.0,) * 3,
                            prior_strength=2.0, shrink_strength=10.0, created_at_ms=1)  # fmt: skip
    return msgspec.structs.replace(snap, version=version, parent=version - 1, reason="manual",
                                   n=((1000.0,) * 3,), decisions=((1000,) * 3,),
                                   reward_sum=(tuple(1000.0 if m == best else 0.0 for m in MODELS),))  # fmt: skip


def store(embedder, candidate_best: str) -> MemorySnapshotStore:
    snapshots = MemorySnapshotStore()
    for snap in (snapshot(CANDIDATE, candidate_best, embedder.dim), snapshot(LIVE, "a", embedder.dim)):
        snapshots.save(snap.version, snap.parent, snap.created_at_ms, snap.reason, encode_snapshot(snap))
    return snapshots


def shadows(gw) -> list[DecisionMade]:
    return [d for d in gw.decisions() if d.purpose == "shadow"]


def routed(gw) -> dict[str, DecisionMade]:
    return {d.decision_id: d for d in gw.decisions() if not d.purpose}


def test_a_candidate_that_chooses_another_model_has_it_asked_and_both_answers_graded(fleet, grader, embedder):
    with fleet.gateway(load_settings(None, {}), embedder, snapshots=store(embedder, "b"), tenants=TENANTS,
                       server=SERVER, judge=judge_section(grader, sample=0.0),
                       shadow={"enabled": True, "candidate": CANDIDATE, "share": 1.0}) as gw:  # fmt: skip
        answers = [chat(gw, model="auto", content=f"Tell me about topic {i}.") for i in range(3)]
        assert [r.status_code for r in answers] == [200] * 3
        assert [r.json()["choices"][0]["message"]["content"] for r in answers] == ["answer from a"] * 3
        ids = {r.headers["x-turnout-decision-id"] for r in answers}
        settle(gw, 3)
        live = routed(gw)
        assert {live[i].model for i in ids} == {"a"} and {live[i].snapshot_version for i in ids} == {LIVE}
        got = shadows(gw)
        assert {d.parent_decision_id for d in got} == ids and len(got) == 3
        assert all(d.model == "b" and d.arm == "b" and d.policy == "candidate" and d.status == "ok" and d.cost_usd > 0
                   for d in got)  # fmt: skip
        assert all(d.snapshot_version == CANDIDATE and d.propensity == 1.0 and not d.embedding for d in got)
        assert fleet.providers["b"].requests == 3 and fleet.providers["b"].bodies[0]["stream"] is False
        assert fleet.providers["c"].requests == 0
        judged = {f.decision_id for f in gw.feedback() if f.kind == "judge"}
        assert judged == ids | {d.decision_id for d in got}  # both answers of each pair graded
        assert grader.requests == 6
        counts = gw.runtime.evaluation.shadow.counts
        assert counts["picked"] == 3 and counts["disagreed"] == 3 and counts["answered"] == 3
        report = httpx.get(gw.url + "/v1/admin/shadow", headers={"authorization": f"Bearer {ADMIN}"}).json()
        assert report["shadow"]["candidate"] == CANDIDATE and report["shadow"]["reference"] == ""
        assert report["shadow"]["spent_today_usd"] > 0


def test_a_candidate_that_chooses_the_same_model_records_agreement_and_asks_nobody(fleet, grader, embedder):
    with fleet.gateway(load_settings(None, {}), embedder, snapshots=store(embedder, "a"), tenants=TENANTS,
                       server=SERVER, judge=judge_section(grader, sample=0.0),
                       shadow={"enabled": True, "candidate": CANDIDATE, "share": 1.0}) as gw:  # fmt: skip
        answers = [chat(gw, model="auto", content=f"Tell me about topic {i}.") for i in range(3)]
        assert [r.json()["choices"][0]["message"]["content"] for r in answers] == ["answer from a"] * 3
        ids = {r.headers["x-turnout-decision-id"] for r in answers}
        settle(gw, 3)
        got = shadows(gw)
        assert {d.parent_decision_id for d in got} == ids and len(got) == 3
        assert all(d.model == "a" and d.status == "ok" and d.cost_usd == 0 and d.snapshot_version == CANDIDATE
                   for d in got)  # fmt: skip
        assert fleet.providers["a"].requests == 3  # the client's answers only
        assert fleet.providers["b"].requests == 0 and fleet.providers["c"].requests == 0 and grader.requests == 0
        assert not [f for f in gw.feedback() if f.kind == "judge"]
        counts = gw.runtime.evaluation.shadow.counts
        assert counts["agreed"] == 3 and counts["disagreed"] == 0 and gw.runtime.evaluation.shadow.budget.spent_today() == 0


def test_only_the_policys_decisions_are_decided_again_and_the_budget_caps_the_calls(fleet, grader, embedder):
    with fleet.gateway(load_settings(None, {}), embedder, snapshots=store(embedder, "b"), tenants=TENANTS,
                       server=SERVER, shadow={"enabled": True, "candidate": CANDIDATE, "share": 1.0,
                                              "budget_usd_per_day": 0.0}) as gw:  # fmt: skip
        assert chat(gw, model="a").status_code == 200  # asked by name: not the policy's decision
        answers = [chat(gw, model="auto", content=f"Question {i}") for i in range(2)]
        assert [r.status_code for r in answers] == [200, 200]
        settle(gw, 2)
        counts = gw.runtime.evaluation.shadow.counts
        assert counts["not_routed"] == 1 and counts["over_budget"] == 2 and fleet.providers["b"].requests == 0
        got = shadows(gw)  # the candidate's decisions are recorded all the same (agreement counts them)
        assert len(got) == 2 and all(d.model == "b" and d.status == "error" and d.cost_usd == 0 for d in got)
        assert all("budget" in d.errors[0] for d in got)


def test_the_client_does_not_wait_for_the_candidates_model(fleet, grader, embedder):
    """Causal, not timed: the answers arrive while the candidate's model is still stalled."""
    with fleet.gateway(load_settings(None, {}), embedder, snapshots=store(embedder, "b"), tenants=TENANTS,
                       server=SERVER, shadow={"enabled": True, "candidate": CANDIDATE, "share": 1.0}) as gw:  # fmt: skip
        fleet.providers["b"].mode, fleet.providers["b"].delay_s = "timeout", 30.0
        answers = [chat(gw, model="auto", content=f"Question number {i} about sorting.") for i in range(4)]
        assert [r.status_code for r in answers] == [200] * 4
        assert [r.json()["choices"][0]["message"]["content"] for r in answers] == ["answer from a"] * 4
        assert gw.runtime.evaluation.offpath.counts["shadow", "done"] == 0  # all still pending
        assert not shadows(gw)  # nothing recorded yet: nothing was awaited
        deadline = time.monotonic() + 10
        while fleet.providers["b"].requests == 0:  # the stalled call is in flight
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_a_candidate_version_the_store_does_not_hold_stops_the_start(fleet, embedder):
    with pytest.raises(ConfigError, match="shadow.candidate: snapshot version 7 is not in the snapshot store"):
        with fleet.gateway(load_settings(None, {}), embedder, snapshots=store(embedder, "b"),
                           shadow={"enabled": True, "candidate": 7, "share": 1.0}):  # fmt: skip
            pass

