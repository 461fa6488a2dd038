"""The judge and shadow routing through the real app, in front of local OpenAI-speaking providers
and a fake judge server (a ``FakeProvider`` whose answer is a grade).

Grades become judge feedback on the graded decision and judge calls are records of their own; a
failing or stalled judge never fails a request; the client's answer never waits for a grade or a
shadow; shadow calls are capped by their budget, marked, and compared by the judge.
"""

from __future__ import annotations

import time

import httpx
import pytest

from feedback.events import DecisionMade, FeedbackGiven
from service.settings import load_settings
from service.tenants import hash_key
from tests.servers import serve
from tests.service.fleet import Fleet
from tests.service.providers import FakeProvider

KEYS = {"acme": "sk-acme-judge-1111", "vault": "sk-vault-judge-2222"}
ADMIN = "sk-admin-judge-0000"
SERVER = {"admin_key_sha256": [hash_key(ADMIN)]}
TENANTS = [
    {"name": "acme", "api_key_sha256": [hash_key(KEYS["acme"])]},
    {"name": "vault", "api_key_sha256": [hash_key(KEYS["vault"])]},  # its prompts may not leave its providers
]  # fmt: skip


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as f:
        yield f


@pytest.fixture(scope="module")
def grader():
    judge = FakeProvider("grader", answer="Score: 3")
    with serve(judge) as url:
        judge.url = url
        yield judge


@pytest.fixture(autouse=True)
def _heal(grader):
    grader.mode, grader.remaining, grader.delay_s, grader.answer = "ok", None, 5.0, "Score: 3"
    grader.requests, grader.bodies[:] = 0, []


def judge_section(grader, **over) -> dict:
    return {"enabled": True, "base_url": grader.url + "/v1", "upstream_model": "grader", "price_in_per_mtok": 1.0,
            "price_out_per_mtok": 1.0, "sample": 1.0, "timeout_s": 2.0, "private_tenants": ["vault"], **over}  # fmt: skip


def chat(gw, tenant: str = "acme", model: str = "a", content: str = "Explain recursion briefly.", **body) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    return httpx.post(gw.url + "/v1/chat/completions", json=payload,
                      headers={"authorization": f"Bearer {KEYS[tenant]}"}, timeout=10)  # fmt: skip


def settle(gw, jobs: int) -> None:
    """Wait (up to 20 s) until ``jobs`` background jobs have finished, done or failed."""
    counts = gw.runtime.evaluation.offpath.counts
    deadline = time.monotonic() + 20
    while sum(n for (_, outcome), n in counts.items() if outcome in ("done", "failed")) < jobs:
        assert time.monotonic() < deadline, dict(counts)
        time.sleep(0.02)


def routed(gw) -> list[DecisionMade]:
    return [d for d in gw.decisions() if not d.purpose]


def test_graded_answers_become_judge_feedback_on_their_decision_and_judge_calls_are_marked_records(fleet, grader, embedder):
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS, server=SERVER, judge=judge_section(grader)) as gw:
        ids = [chat(gw).headers["x-turnout-decision-id"] for _ in range(4)]
        stream = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEYS['acme']}"},
                            json={"model": "a", "stream": True, "messages": [{"role": "user", "content": "Hi there"}]},
                            timeout=10)  # fmt: skip
        assert stream.status_code == 200 and stream.text.endswith("data: [DONE]\n\n")
        ids.append(stream.headers["x-turnout-decision-id"])
        settle(gw, 5)
        fb = [f for f in gw.feedback() if f.kind == "judge"]
        assert sorted(f.decision_id for f in fb) == sorted(ids) and {f.reward for f in fb} == {0.3}
        calls = [d for d in gw.decisions() if d.purpose == "judge"]
        assert sorted(d.parent_decision_id for d in calls) == sorted(ids)
        assert all(d.model == "judge" and d.status == "ok" and d.cost_usd > 0 and not d.embedding for d in calls)
        assert grader.requests == 5 and "Explain recursion briefly." in grader.bodies[0]["messages"][0]["content"]
        assert grader.bodies[0]["model"] == "grader" and grader.bodies[0]["temperature"] == 0
        # a private tenant's answers are never sent to the judge
        chat(gw, "vault")
        assert gw.runtime.evaluation.offpath.counts["judge", "queued"] == 5
        report = httpx.get(gw.url + "/v1/admin/judge", headers={"authorization": f"Bearer {ADMIN}"}).json()
        assert report["judge"]["spent_today_usd"] > 0 and report["counts"]["judge_graded"] == 5
        assert report["calibration"] is None  # the memory store: the report is ClickHouse SQL


@pytest.mark.parametrize("mode", ["500", "timeout", "garbage"])
def test_a_failing_or_stalled_judge_never_fails_a_request(fleet, grader, embedder, mode):
    grader.mode, grader.delay_s = ("ok" if mode == "garbage" else mode), 5.0
    grader.answer = "I cannot grade this." if mode == "garbage" else grader.answer
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS, server=SERVER,
                       judge=judge_section(grader, timeout_s=0.3)) as gw:  # fmt: skip
        answers = [chat(gw) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200]
        settle(gw, 3)
        assert not [f for f in gw.feedback() if f.kind == "judge"]
        calls = [d for d in gw.decisions() if d.purpose == "judge"]
        assert len(calls) == 3 and {d.status for d in calls} == {"error"} and all(d.errors for d in calls)
        assert len(routed(gw)) == 3 and {d.status for d in routed(gw)} == {"ok"}


def test_the_client_does_not_wait_for_the_judge_or_the_shadow(fleet, grader, embedder):
    """Causal, not timed: the answers arrive while the judge and the reference are still stalled."""
    grader.mode, grader.delay_s = "timeout", 30.0
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS, server=SERVER, judge=judge_section(grader, timeout_s=25.0),
                       shadow={"enabled": True, "reference": "b", "share": 0.5}) as gw:  # fmt: skip
        fleet.providers["b"].mode, fleet.providers["b"].delay_s = "timeout", 30.0
        answers = [chat(gw, content=f"Question number {i} about sorting.") for i in range(8)]
        assert [r.status_code for r in answers] == [200] * 8
        counts = gw.runtime.evaluation.offpath.counts
        assert counts["shadow", "queued"] >= 1 and counts["judge", "queued"] >= 1
        assert counts["shadow", "done"] == 0 and counts["judge", "done"] == 0  # all still pending
        assert not [d for d in gw.decisions() if d.purpose]  # nothing recorded yet: nothing was awaited
        deadline = time.monotonic() + 10
        while grader.requests == 0 or fleet.providers["b"].requests == 0:  # the stalled calls are in flight
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_shadow_calls_are_marked_compared_by_the_judge_and_capped_by_their_budget(fleet, grader, embedder):
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS, server=SERVER, judge=judge_section(grader, sample=0.0),
                       shadow={"enabled": True, "reference": "b", "share": 1.0}) as gw:  # fmt: skip
        ids = [chat(gw, content=f"Tell me about topic {i}.").headers["x-turnout-decision-id"] for i in range(3)]
        chat(gw, model="b")  # routed to the reference itself: nothing to compare
        chat(gw, "vault")  # shadowed (the reference is its provider too) but never judged
        settle(gw, 4)
        shadows = [d for d in gw.decisions() if d.purpose == "shadow"]
        assert len(shadows) == 4 and all(d.model == "b" and d.policy == "shadow" and d.cost_usd > 0 for d in shadows)
        assert set(ids) <= {d.parent_decision_id for d in shadows}
        judged = {f.decision_id for f in gw.feedback() if f.kind == "judge"}
        mine = [d for d in shadows if d.tenant == "acme"]
        assert judged == set(ids) | {d.decision_id for d in mine}  # both answers of each acme pair graded
        assert gw.runtime.evaluation.shadow.counts["same_model"] == 1
        assert fleet.providers["b"].bodies[0]["stream"] is False
        report = httpx.get(gw.url + "/v1/admin/shadow", headers={"authorization": f"Bearer {ADMIN}"}).json()
        assert report["shadow"]["reference"] == "b" and report["shadow"]["spent_today_usd"] > 0
    # no budget: no shadow call at all, each refusal counted
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS, server=SERVER,
                       shadow={"enabled": True, "reference": "b", "share": 1.0, "budget_usd_per_day": 0.0}) as gw:
        assert [chat(gw).status_code for _ in range(3)] == [200] * 3
        assert fleet.providers["b"].requests == 0 and not [d for d in gw.decisions() if d.purpose]
        assert gw.runtime.evaluation.shadow.counts["over_budget"] == 3


def test_a_low_grade_evicts_the_answer_from_the_response_cache(fleet, grader, embedder):
    grader.answer = "Score: 1"
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS, server=SERVER, judge=judge_section(grader),
                       cache={"enabled": True, "min_quality": 0.0}) as gw:  # fmt: skip
        first = chat(gw, temperature=0)
        assert "x-turnout-cache" not in first.headers
        settle(gw, 1)
        before = fleet.providers["a"].requests
        again = chat(gw, temperature=0)
        assert "x-turnout-cache" not in again.headers and fleet.providers["a"].requests == before + 1
        settle(gw, 2)  # the second answer, graded low too, leaves as well
        text = httpx.get(gw.url + "/metrics").text
        assert 'turnout_cache_evictions_total{reason="judge"} 2' in text and "turnout_cache_entries 0" in text


def test_a_pool_model_as_judge_bills_at_its_prices_and_its_calls_are_not_traffic(fleet, embedder):
    judge = fleet.providers["c"]
    tenants = [*TENANTS, {"name": "bound", "api_key_sha256": [hash_key("sk-bound-judge-3333")], "models": ["a"]}]
    KEYS["bound"] = "sk-bound-judge-3333"
    try:
        judge.answer = "Score: 9"
        with fleet.gateway(load_settings(None, {}), embedder, tenants=tenants, server=SERVER,
                           judge={"enabled": True, "model": "c", "sample": 1.0}) as gw:  # fmt: skip
            ids = [chat(gw).headers["x-turnout-decision-id"] for _ in range(3)]
            chat(gw, "bound")  # held to model a: its prompts may not go to the judge c
            settle(gw, 3)
            calls = [d for d in gw.decisions() if d.purpose == "judge"]
            assert sorted(d.parent_decision_id for d in calls) == sorted(ids)
            assert all(d.model == "c" and d.cost_usd == pytest.approx((11 * 1.0 + 7 * 2.0) / 1e6) for d in calls)
            assert judge.requests == 3 and judge.bodies[0]["model"] == "up-c"
            assert {f.reward for f in gw.feedback() if f.kind == "judge"} == {0.9}
            stats = gw.rows.decision_stats(0, 2**62)  # what the learner reads: routed traffic only
            assert {s.model for s in stats} == {"a"} and sum(s.decisions for s in stats) == 4
    finally:
        judge.answer = "answer from c"
        del KEYS["bound"]
