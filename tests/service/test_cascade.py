"""The cascade on the request path (service/cascade.py), through HTTP to local fake providers.

The fleet's models a (strong), b, c (cheap); the cascade "cb" is c then a. With a tight prior on a
cascade of tier 0.999 the router chooses the cascade for every non-streamed request.
"""

from __future__ import annotations

import time

import httpx
import pytest

from feedback.events import DecisionMade
from service.cascade import structural, wants_json
from service.settings import load_settings
from tests.servers import serve
from tests.service.fleet import Fleet
from tests.service.providers import FakeProvider

PROMPT = "Write a Python function that sorts a list."


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as f:
        yield f


@pytest.fixture
def base():
    return load_settings(None, {})


@pytest.fixture(autouse=True)
def answers(fleet):
    yield
    for name, p in fleet.providers.items():
        p.answer, p.logprobs = f"answer from {name}", None


def _gateway(fleet, base, embedder, gate: str = "structural", threshold: float = 0.5):
    cascade = {"name": "cb", "cheap": "c", "strong": "a", "gate": gate, "threshold": threshold, "tier": 0.999}
    return fleet.gateway(base, embedder, cascades=[cascade], router={"prior_strength": 1000.0})


def _chat(url: str, **body) -> httpx.Response:
    payload = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], **body}
    return httpx.post(url + "/v1/chat/completions", json=payload, timeout=10)


def _records(gw, decision_id: str) -> tuple[DecisionMade, list[DecisionMade]]:
    ds = gw.decisions()
    parent = next(d for d in ds if d.decision_id == decision_id)
    return parent, sorted((d for d in ds if d.parent_decision_id == decision_id), key=lambda d: d.event_id)


def test_a_good_cheap_answer_is_served_and_billed_alone(fleet, base, embedder):
    with _gateway(fleet, base, embedder) as gw:
        r = _chat(gw.url)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "answer from c"
        assert r.headers["x-turnout-cascade"] == "cb" and r.headers["x-turnout-gate"] == "pass"
        assert fleet.providers["a"].requests == 0
        parent, attempts = _records(gw, r.headers["x-turnout-decision-id"])
        assert (parent.arm, parent.model, parent.escalated, parent.gate) == ("cb", "cb", False, "pass")
        assert [(a.policy, a.model, a.gate) for a in attempts] == [("cascade", "c", "pass")]
        assert parent.cost_usd == pytest.approx(attempts[0].cost_usd) and parent.cost_usd > 0
        assert not [f for f in gw.feedback() if f.kind == "judge"]  # a structural pass is no evidence


@pytest.mark.parametrize("answer, reason", [("", "empty"), ("  ", "empty"),
                                            ("I'm sorry, but I can't help with that.", "refusal")])
def test_a_rejected_cheap_answer_escalates_one_answer_both_billed(fleet, base, embedder, answer, reason):
    fleet.providers["c"].answer = answer
    with _gateway(fleet, base, embedder) as gw:
        fleet.providers["c"].answer = answer
        r = _chat(gw.url)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "answer from a"
        assert r.headers["x-turnout-gate"] == reason and r.headers["x-turnout-model"] == "a"
        assert fleet.providers["c"].requests == 1 and fleet.providers["a"].requests == 1
        parent, attempts = _records(gw, r.headers["x-turnout-decision-id"])
        assert parent.escalated and parent.gate == reason and parent.model == "cb"
        # both attempts, each once (two records of one millisecond: their ids do not order them)
        assert sorted((a.model, a.gate) for a in attempts) == [("a", reason), ("c", reason)]
        assert parent.cost_usd == pytest.approx(sum(a.cost_usd for a in attempts))
        assert all(a.cost_usd > 0 for a in attempts)
        cheap_id = next(a.decision_id for a in attempts if a.model == "c")
        assert [(f.decision_id, f.kind, f.reward) for f in gw.feedback()] == [(cheap_id, "judge", 0.0)]


def test_json_asked_and_not_given_escalates(fleet, base, embedder):
    with _gateway(fleet, base, embedder) as gw:
        fleet.providers["c"].answer = "here you go: {a: 1"
        r = _chat(gw.url, response_format={"type": "json_object"})
        assert r.headers["x-turnout-gate"] == "json" and r.headers["x-turnout-model"] == "a"
        fleet.providers["c"].answer = '{"a": 1}'
        r = _chat(gw.url, response_format={"type": "json_object"})
        assert r.headers["x-turnout-gate"] == "pass" and r.headers["x-turnout-model"] == "c"
        fleet.providers["c"].answer = "not json, and none was asked for"
        assert _chat(gw.url).headers["x-turnout-gate"] == "pass"


def test_the_logprob_gate_reads_the_providers_log_probabilities(fleet, base, embedder):
    with _gateway(fleet, base, embedder, gate="logprob", threshold=-1.0) as gw:
        fleet.providers["c"].logprobs = [-3.0, -2.5]
        assert _chat(gw.url).headers["x-turnout-gate"] == "logprob"
        fleet.providers["c"].logprobs = [-0.1, -0.3]
        assert _chat(gw.url).headers["x-turnout-gate"] == "pass"
        fleet.providers["c"].logprobs = None  # none returned: this part of the gate passes
        assert _chat(gw.url).headers["x-turnout-gate"] == "pass"


class _Judge:
    def __init__(self, grade: float | None = None, fail: bool = False) -> None:
        self.grade_, self.fail, self.seen = grade, fail, []

    async def grade(self, turn, answer: str) -> float | None:
        self.seen.append(answer)
        if self.fail:
            raise RuntimeError("judge down")
        return self.grade_


def test_the_judge_gate_escalates_on_a_low_grade_and_a_failing_judge_fails_nothing(fleet, base, embedder):
    with _gateway(fleet, base, embedder, gate="judge", threshold=0.6) as gw:
        gate = gw.runtime.chat.cascades.gates["cb"]
        gate.judge = _Judge(0.2)
        r = _chat(gw.url)
        assert r.headers["x-turnout-gate"] == "judge" and r.headers["x-turnout-model"] == "a"
        assert gate.judge.seen == ["answer from c"]
        gate.judge = _Judge(0.9)
        r = _chat(gw.url)
        assert r.headers["x-turnout-gate"] == "pass" and r.headers["x-turnout-model"] == "c"
        # a judge's acceptance is a grade of 1 on the cheap attempt
        _, attempts = _records(gw, r.headers["x-turnout-decision-id"])
        assert [(f.kind, f.reward) for f in gw.feedback() if f.decision_id == attempts[0].decision_id] == [("judge", 1.0)]
        gate.judge = _Judge(fail=True)
        r = _chat(gw.url)
        assert r.status_code == 200 and r.headers["x-turnout-gate"] == "pass" and gate.judge_failures == 1


def test_a_failing_cheap_model_escalates(fleet, base, embedder):
    with _gateway(fleet, base, embedder) as gw:
        fleet.providers["c"].mode = "500"
        r = _chat(gw.url)
        assert r.status_code == 200 and r.headers["x-turnout-model"] == "a" and r.headers["x-turnout-gate"] == "error"
        parent, attempts = _records(gw, r.headers["x-turnout-decision-id"])
        assert parent.escalated and {a.policy for a in attempts} == {"failover", "cascade"}


def test_a_streamed_request_is_never_routed_to_a_cascade(fleet, base, embedder):
    with _gateway(fleet, base, embedder) as gw:
        payload = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
        for _ in range(5):
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=payload, timeout=10) as r:
                assert r.status_code == 200 and "x-turnout-cascade" not in r.headers
                assert r.headers["x-turnout-model"] in ("a", "b", "c")
                list(r.iter_lines())
        streamed = [d for d in gw.decisions() if d.stream and not d.parent_decision_id]
        assert len(streamed) == 5 and all(d.arm != "cb" for d in streamed)
        assert _chat(gw.url).headers["x-turnout-cascade"] == "cb"  # the same prompt, not streamed


def test_structural_checks_and_json_detection():
    assert structural("fine", False) == "" and structural("", False) == "empty"
    assert structural("As an AI, I cannot do that", False) == "refusal"
    assert structural("Sorry, I can't.", False) == "refusal" and structural("Sorry for the wait: 42", False) == ""
    assert structural('```json\n{"x": [1]}\n```', True) == "" and structural("{x}", True) == "json"
    assert wants_json(b'{"response_format": {"type": "json_schema"}}')
    assert not wants_json(b'{"response_format": {"type": "text"}}') and not wants_json(b"{}")


def test_the_learner_folds_the_cascades_records_into_its_escalation_rate_and_the_cheap_models_evidence(
        fleet, base, embedder):  # fmt: skip
    with fleet.gateway(base, embedder, cascades=[{"name": "cb", "cheap": "c", "strong": "a", "tier": 0.999}],
                       router={"prior_strength": 1000.0}, learner={"grace_s": 0.0}) as gw:  # fmt: skip
        for i in range(6):
            fleet.providers["c"].answer = "" if i % 3 else "fine"  # two of three rejected
            assert _chat(gw.url).headers["x-turnout-cascade"] == "cb"
        assert len(gw.decisions()) == 6 + 6 + 4  # flushed: the requests, the cheap attempts, the escalations
        time.sleep(0.02)  # the learner's window ends before "now" (exclusive, in ms): let the clock pass the rows
        snap = gw.runtime.learn_now()
        col = snap.models.index("cb")
        assert snap.models == ("a", "b", "c", "cb")
        assert sum(r[col] for r in snap.calls) == 6 and sum(r[col] for r in snap.escalations) == 4
        # the attempts are not traffic; the rejections are judge evidence of 0 on the cheap model
        assert sum(r[snap.models.index("c")] for r in snap.calls) == 0
        c = snap.models.index("c")
        assert sum(r[c] for r in snap.n) == pytest.approx(4 * 0.5) and sum(r[c] for r in snap.reward_sum) == 0.0
        view = gw.runtime.router.view
        assert view.escalation[0, 0] > 0.5  # learned from the cascade's own records
        state = httpx.get(gw.url + "/v1/router/state").json()  # what the dashboard shows per cluster
        shown = [k for c in state["clusters"] for k in c["cascades"]]
        assert {(k["name"], k["cheap"], k["strong"]) for k in shown} == {("cb", "c", "a")}
        assert sum(k["calls"] for k in shown) == 6 and sum(k["escalated"] for k in shown) == 4
        assert [k["escalation_rate"] for k in state["clusters"][0]["cascades"]] == [round(view.escalation[0, 0], 4)]


def test_a_conversations_turns_route_with_cascades_configured(fleet, base, embedder):
    with fleet.gateway(base, embedder, cascades=[{"name": "cb", "cheap": "c", "strong": "a", "tier": 0.999}],
                       router={"prior_strength": 1000.0}, conversations={"enabled": True}) as gw:  # fmt: skip
        first = _chat(gw.url)
        assert first.status_code == 200 and first.headers["x-turnout-cascade"] == "cb"
        said = first.json()["choices"][0]["message"]["content"]
        messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": said},
                    {"role": "user", "content": "Can you make it shorter?"}]  # fmt: skip
        for stream in (False, True):
            r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "auto", "messages": messages,
                                                                  "stream": stream}, timeout=10)  # fmt: skip
            assert r.status_code == 200 and r.headers["x-turnout-model"] in ("a", "b", "c")
        turns = [d for d in gw.decisions() if d.conversation_id and not d.parent_decision_id]
        assert len(turns) == 3 and len({d.conversation_id for d in turns}) == 1


def test_the_judge_gate_grades_through_the_configured_judge_and_its_calls_are_recorded(fleet, base, embedder):
    """``[judge]`` configured: a cascade's judge gate grades through it (on the request path, the
    cheap answer), each gate call is a record of purpose "judge", and a low grade escalates."""
    grader = FakeProvider("grader", answer="Score: 2")
    with serve(grader) as url:
        judge = {"enabled": True, "base_url": url + "/v1", "upstream_model": "grader", "price_in_per_mtok": 1.0,
                 "price_out_per_mtok": 1.0, "sample": 0.0, "timeout_s": 2.0}  # fmt: skip
        cascade = {"name": "cb", "cheap": "c", "strong": "a", "gate": "judge", "threshold": 0.5, "tier": 0.999}
        with fleet.gateway(base, embedder, cascades=[cascade], router={"prior_strength": 1000.0}, judge=judge) as gw:
            low = _chat(gw.url)
            assert low.status_code == 200 and low.headers["x-turnout-gate"] == "judge"
            assert low.json()["choices"][0]["message"]["content"] == "answer from a"
            grader.answer = "Score: 5"
            high = _chat(gw.url)
            assert high.headers["x-turnout-gate"] == "pass" and high.headers["x-turnout-model"] == "c"
            assert grader.requests == 2 and "answer from c" in grader.bodies[0]["messages"][0]["content"]
            calls = [d for d in gw.decisions() if d.purpose == "judge"]
            ids = {low.headers["x-turnout-decision-id"], high.headers["x-turnout-decision-id"]}
            assert {d.parent_decision_id for d in calls} == ids and all(d.cost_usd > 0 for d in calls)
