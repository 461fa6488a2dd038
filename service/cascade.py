"""The cascade on the request path: the cheap model first, the strong one if the gate rejects.

When routing chooses a cascade's column (``learner.cascade``: an arm of the bandit like a model),
``ChatService.complete`` hands the request here. The cheap model answers; the gate judges that
answer; on a rejection the strong model answers (failing over, as any request does, to the
routed fallbacks) and the client gets that one answer. Non-streamed requests only: a streamed
request is never routed to a cascade (``Cascades.widen`` leaves the cascades out of the
decision, so its propensity is exact among the models). The gate cannot judge an answer whose
first tokens the client already has, and buffering the stream until the gate has run would
give up what streaming is for: the first token early.

The gate (``Gate.verdict``), in order, each on the cheap answer:

- structural, always: an empty answer (``empty``); a refusal (``refusal``: it opens with an
  apology or an "I can't"); JSON that does not parse when the client asked for JSON
  (``response_format`` ``json_object`` or ``json_schema``: ``json``);
- ``gate = "logprob"``: the mean token log-probability, where the provider returned them, below
  ``threshold`` (``logprob``); without them this part passes;
- ``gate = "judge"``: a grade in [0, 1] from the ``JudgePort`` below ``threshold`` (``judge``).
  The service's ``[judge]`` fills the port (``Evaluation.grade``, which records each call);
  without one, or when it fails or gives no grade, this part passes: a failing judge never
  fails a request.

Records (``service.records``): the request's decision (``model`` the cascade's name, the bill of
every attempt, ``escalated``, ``gate`` the verdict), and each attempt's own record (policy
``cascade``, ``parent_decision_id`` the request's, its own bill and usage); the verdict on the
cheap attempt is judge-kind evidence about the cheap model (``learner.cascade.gate_evidence``).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Protocol, Sequence

import msgspec
import numpy as np

from feedback.events import FeedbackGiven, uuid7
from learner.cascade import CASCADE_POLICY, Cascade, CascadeArm, cascade_arms, gate_evidence
from service.upstream import Completion
from service.records import Turn

__all__ = ["Cascades", "Gate", "JudgePort", "run_cascade", "structural", "wants_json"]

_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i apologi[sz]e|i can(no|')?t|i can not|i'?m (not able|unable)|"
    r"i am (not able|unable)|i won'?t|as an ai\b)", re.IGNORECASE)  # fmt: skip


class _Format(msgspec.Struct):
    type: str = ""


class _Asked(msgspec.Struct):
    response_format: _Format | None = None


_asked = msgspec.json.Decoder(_Asked)


def wants_json(raw: bytes) -> bool:
    """Did the client ask for JSON (``response_format`` of type ``json_object`` or ``json_schema``)?"""
    try:
        fmt = _asked.decode(raw).response_format
    except msgspec.MsgspecError:
        return False
    return fmt is not None and fmt.type in ("json_object", "json_schema")


def structural(text: str, json_asked: bool) -> str:
    """"" when nothing is visibly wrong with the answer, else why: ``empty``, ``refusal``, ``json``."""
    if not text.strip():
        return "empty"
    if _REFUSAL.match(text.strip()):
        return "refusal"
    if json_asked:
        body = text.strip()
        if body.startswith("```"):  # a fenced block: the JSON inside it
            body = body.strip("`").removeprefix("json").strip()
        try:
            json.loads(body)
        except ValueError:
            return "json"
    return ""


class JudgePort(Protocol):
    """A judge of one answer to one request's turn: a grade in [0, 1], or None when it cannot grade
    (the service's judge, ``service.evaluation.Evaluation.grade``, records each call it makes)."""

    async def grade(self, turn: Turn, answer: str) -> float | None: ...


class Gate:
    """The gate of one cascade (see the module docstring)."""

    def __init__(self, spec: Cascade, judge: JudgePort | None = None) -> None:
        self.spec = spec
        self.judge = judge
        self.judge_failures = 0

    async def verdict(self, turn: Turn, raw: bytes, done: Completion) -> str:
        """``pass``, or the reason the cheap answer is rejected."""
        reason = structural(done.text, wants_json(raw))
        if reason:
            return reason
        spec = self.spec
        if spec.gate == "logprob" and done.logprobs:
            if float(np.mean(done.logprobs)) < spec.threshold:
                return "logprob"
        if spec.gate == "judge" and self.judge is not None:
            try:
                grade = await self.judge.grade(turn, done.text)
            except Exception:  # noqa: BLE001 - a failing judge never fails a request: its part passes
                self.judge_failures += 1
                grade = None
            if grade is not None and grade < spec.threshold:
                return "judge"
        return "pass"


class Cascades:
    """The configured cascades on the routing axis (``pool`` models, then the cascades)."""

    def __init__(self, specs: Sequence[Cascade], pool: Sequence[str], judge: JudgePort | None = None) -> None:
        self.specs = tuple(specs)
        self.pool = tuple(pool)
        self.arms: tuple[CascadeArm, ...] = cascade_arms(self.pool + tuple(c.name for c in self.specs), self.specs)
        self.gates = {c.name: Gate(c, judge) for c in self.specs}
        self.by_name = {c.name: (c, a) for c, a in zip(self.specs, self.arms)}

    def use_judge(self, judge: JudgePort) -> None:
        """The judge every judge gate grades through (the service's ``[judge]``, once it is built)."""
        for gate in self.gates.values():
            gate.judge = judge

    def widen(self, allowed: np.ndarray | None, stream: bool) -> np.ndarray | None:
        """A mask over the pool (or None: all) as a mask over the routing axis: a cascade is allowed
        where both its models are, and never for a streamed request."""
        if allowed is None and not stream:
            return None
        base = np.ones(len(self.pool), dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
        extra = [not stream and bool(base[a.cheap] and base[a.strong]) for a in self.arms]
        return np.concatenate([base[: len(self.pool)], np.array(extra, dtype=bool)])

    def get(self, name: str) -> tuple[Cascade, CascadeArm] | None:
        return self.by_name.get(name)

    def attempt(self, records: Any, turn: Any, model: str, cascade: str, verdict: str, done: Completion | None,
                cost_usd: float, latency_ms: float, status: str = "ok", error: str = "") -> str:  # fmt: skip
        """Record one attempt inside a cascade (its own decision id, returned)."""
        attempt_id = uuid7()
        records.emit(records.decision(
            turn, attempt_id, policy=CASCADE_POLICY, arm=cascade, propensity=1.0, model=model, status=status,
            errors=(f"{model}: {error}",) if error else (), prompt_tokens=done.prompt_tokens if done else 0,
            completion_tokens=done.completion_tokens if done else 0, cost_usd=cost_usd, latency_ms=latency_ms,
            parent_decision_id=turn.decision_id, gate=verdict,
        ))  # fmt: skip
        return attempt_id

    @staticmethod
    def evidence(records: Any, turn: Any, attempt_id: str, verdict: str, gate: str) -> None:
        """The gate's verdict as judge-kind feedback on the cheap attempt (none for a structural pass)."""
        reward = gate_evidence(verdict != "pass", gate)
        if reward is None:
            return
        records.sink.publish(FeedbackGiven(event_id=uuid7(), decision_id=attempt_id, ts_ms=int(time.time() * 1000),
                                           reward=reward, kind="judge", tenant=turn.caller.tenant.name,
                                           user=turn.req.user or ""))  # fmt: skip
        records.metrics.feedback.inc("judge")




_enc = msgspec.json.Encoder()


async def run_cascade(cascades: Cascades, chat: Any, turn: Any, raw: bytes, ask: Any,
                      spec: Cascade) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    """Answer ``turn`` through cascade ``spec`` (non-streamed): the body and headers of the one
    answer the client gets. ``chat`` is the ``ChatService`` (its upstreams, failover, billing and
    records). A cheap model that fails outright counts as rejected (verdict ``error``)."""
    from service.failover import AllFailed
    from service.schemas import ChatCompletion, Choice, ChoiceMessage, Usage

    hist = chat.metrics.upstream

    async def call(name: str) -> Completion:
        t = time.perf_counter()
        try:
            return await chat.upstreams[name].complete(chat._call(turn.req, raw, name))
        finally:
            hist.observe(time.perf_counter() - t, name)

    pool = chat.pool
    t0 = time.perf_counter()
    verdict, cost, fallbacks, errors = "error", 0.0, 0, []
    try:
        _, cheap, failed = await chat.failover.run((spec.cheap,), call)
    except AllFailed as exc:
        cheap, failed = None, exc.attempts
    if failed:
        chat.records.attempts(turn, failed)
        fallbacks += len(failed)
        errors += [f"{a.model}: {a.error}" for a in failed]
    if cheap is not None:
        verdict = await cascades.gates[spec.name].verdict(turn, raw, cheap)
        cost = chat._bill(turn, pool[chat.by_name[spec.cheap]], cheap.prompt_tokens, cheap.completion_tokens)
        cheap_id = cascades.attempt(chat.records, turn, spec.cheap, spec.name, verdict, cheap, cost,
                                    (time.perf_counter() - t0) * 1000.0)  # fmt: skip
        cascades.evidence(chat.records, turn, cheap_id, verdict, spec.gate)
    name, done = spec.cheap, cheap
    if verdict != "pass":  # escalate: the strong model, then the routed fallbacks that are models
        rest = tuple(n for n in turn.routed.candidates[1:] if n in chat.by_name and n not in (spec.cheap, spec.strong))
        t1 = time.perf_counter()
        try:
            name, done, failed = await chat.failover.run((spec.strong, *rest), call)
        except AllFailed as exc:
            raise chat._failed(turn, exc) from None
        if failed:
            chat.records.attempts(turn, failed)
            fallbacks += len(failed)
            errors += [f"{a.model}: {a.error}" for a in failed]
        strong_cost = chat._bill(turn, pool[chat.by_name[name]], done.prompt_tokens, done.completion_tokens)
        cascades.attempt(chat.records, turn, name, spec.name, verdict, done, strong_cost,
                         (time.perf_counter() - t1) * 1000.0)  # fmt: skip
        cost += strong_cost
    latency_ms = (time.perf_counter() - turn.started) * 1000.0
    chat.records.outcome(
        turn, model=spec.name, fallbacks=fallbacks, errors=tuple(errors), prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens, cost_usd=cost, latency_ms=latency_ms,
        escalated=verdict != "pass", gate=verdict,
    )  # fmt: skip
    chat.metrics.requests.inc(turn.routed.policy, name, "ok")
    if chat.conversations is not None:
        chat.conversations.answered(turn.routed.thread, name)
    chat._offer(ask, turn, name, done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens, cost)
    body = ChatCompletion(
        id="chatcmpl-" + turn.decision_id.replace("-", ""), created=int(time.time()), model=name,
        choices=[Choice(0, ChoiceMessage("assistant", done.text), done.finish_reason)],
        usage=Usage(done.prompt_tokens, done.completion_tokens, done.prompt_tokens + done.completion_tokens),
    )  # fmt: skip
    headers = chat._headers(turn, name, cost, fallbacks)
    headers["x-turnout-cascade"] = spec.name
    headers["x-turnout-gate"] = verdict
    return _enc.encode(body), headers
