"""Evidence beyond thumbs, gathered after the answer: judge grades and shadow comparisons.

``ChatService`` calls ``Evaluation.answered`` once a fresh answer is settled (a non-streamed
answer before it is sent, a stream after its last chunk). That call only draws: is this answer
graded (``[judge] sample``, the tenant allowed), is the request shadowed (``[shadow]``)? Chosen
work goes to the bounded background queue (``service/offpath.py``) and ``answered`` returns; it
never raises, never waits, and a full queue skips the work (counted).

In the background:

- **a grade**: the judge grades the answer; the call is recorded as a decision of purpose
  ``judge`` (cost, latency, failure; about the graded decision, ``parent_decision_id``), and a
  score becomes ``FeedbackGiven(kind="judge", reward=score)`` on the graded decision. A low score
  also evicts the answer from the response cache (``ResponseCache.judge``).
- **a shadow**: the reference model answers the same request; its call is recorded as a decision
  of purpose ``shadow`` (about the routed decision). When the judge may see the tenant's prompts,
  both answers are graded: the routed answer's grade is judge feedback on the routed decision
  as above, the reference's is judge feedback on the shadow record (never learned from: the
  learner reads routed traffic only). Leakage is the share of pairs where the routed answer was
  graded below the reference (``feedback/clickhouse_judge.py``).
- **a candidate's shadow**: the candidate snapshot decides the request again (the routing step's
  own decision on its view). Its decision is a record of purpose ``shadow`` and policy
  ``candidate`` with its model, its propensity and its snapshot version. The same model as the one that answered: agreement, no
  call (cost 0). Another model: that model is asked (within the shadow's budget; refused, the
  record has status ``error``) and the pair compared exactly as with a reference.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import msgspec
import numpy as np

from feedback.events import FeedbackGiven, uuid7
from service.caching import ResponseCache
from service.judge import Grade, Judge
from service.offpath import OffPath
from service.records import Recorder, Turn
from service.shadow import DecideAgain, Shadow, ShadowAnswer
from service.tenants import Tenant

__all__ = ["Evaluation", "JudgeScope"]

log = logging.getLogger("turnout.evaluation")


class JudgeScope(msgspec.Struct, frozen=True):
    """Which tenants' answers the judge may see."""

    pool_model: str  # the judge's pool model, "" for a dedicated endpoint
    tenants: frozenset[str] = frozenset()  # empty: every tenant ...
    private: frozenset[str] = frozenset()  # ... but these

    def allows(self, tenant: Tenant) -> bool:
        """Never a private tenant, nor one outside ``tenants`` when given. A tenant held to some
        models (``[[tenants]] models``) only by a pool judge among them, or by a dedicated
        endpoint when it is named in ``tenants`` (its explicit opt-in)."""
        if tenant.name in self.private or (self.tenants and tenant.name not in self.tenants):
            return False
        if tenant.models:
            return self.pool_model in tenant.models if self.pool_model else tenant.name in self.tenants
        return True


class Evaluation:
    def __init__(self, *, offpath: OffPath, records: Recorder, rng: np.random.Generator, judge: Judge | None = None,
                 scope: JudgeScope | None = None, sample: float = 0.0, shadow: Shadow | None = None,
                 cache: ResponseCache | None = None, closers: tuple[Any, ...] = ()) -> None:  # fmt: skip
        self.offpath = offpath
        self.records = records
        self.rng = rng
        self.judge = judge
        self.scope = scope or JudgeScope("")
        self.sample = sample
        self.shadow = shadow
        self.cache = cache
        self.closers = closers  # upstreams of its own (a dedicated judge endpoint), closed at shutdown
        self.counts: Counter[str] = Counter()
        self._allowed: dict[str, bool] = {}
        self._quiet_until = 0.0  # a failed grade is logged at most once a minute

    def _judged(self, tenant: Tenant) -> bool:
        ok = self._allowed.get(tenant.name)
        if ok is None:
            ok = self._allowed[tenant.name] = self.judge is not None and self.scope.allows(tenant)
        return ok

    # -- on the request path: draws only ---------------------------------------------------

    def answered(self, turn: Turn, model: str, text: str, cost_usd: float) -> None:
        """A fresh answer of ``model`` to ``turn``: queue its grade or its shadow, if drawn. Never raises."""
        try:
            if self.shadow is not None and self.shadow.picks(turn, model):
                self.offpath.submit("shadow", lambda: self._shadow(turn, model, text, cost_usd))
            elif self.sample > 0.0 and self._judged(turn.caller.tenant) and self.rng.random() < self.sample:
                self.offpath.submit("judge", lambda: self._grade(turn, turn.decision_id, text))
        except Exception:  # the request must not fail for what only gathers evidence
            self.counts["hook_error"] += 1
            log.warning("evaluation hook failed", exc_info=True)

    # -- in the background -------------------------------------------------------------------

    async def grade(self, turn: Turn, answer: str) -> float | None:
        """A cascade's judge gate (``service.cascade.JudgePort``), on the request path: the grade of
        the cheap ``answer`` to ``turn``, or None (no judge for this tenant, over budget, failed).
        The call is recorded like any judge call; the cascade itself turns the verdict into evidence."""
        if not self._judged(turn.caller.tenant):
            return None
        grade = await self._call(turn, turn.decision_id, answer)
        return None if grade is None else grade.score

    async def _call(self, turn: Turn, decision_id: str, answer: str) -> Grade | None:
        """One judge call on ``answer`` (the one of ``decision_id``), recorded as a decision of purpose "judge"."""
        assert self.judge is not None
        grade = await self.judge.grade(turn.routed.text, answer)
        if grade is None:
            self.counts["judge_over_budget"] += 1
            return None
        self.counts["judge_graded" if grade.score is not None else "judge_failed"] += 1
        if grade.score is None and time.monotonic() >= self._quiet_until:  # said, at most once a minute
            self._quiet_until = time.monotonic() + 60.0
            log.warning("a judge call gave no grade (%d so far): %s", self.counts["judge_failed"], grade.error)
        record = self.records.decision(
            turn, uuid7(), policy="judge", arm=self.judge.name, propensity=1.0, model=self.judge.name,
            status="ok" if grade.score is not None else "error", errors=(grade.error,) if grade.error else (),
            prompt_tokens=grade.prompt_tokens, completion_tokens=grade.completion_tokens, cost_usd=grade.cost_usd,
            latency_ms=grade.latency_ms, parent_decision_id=decision_id, purpose="judge",
        )  # fmt: skip
        self.records.sink.publish(msgspec.structs.replace(record, embedding=b"", prompt_text=""))
        return grade

    async def _grade(self, turn: Turn, decision_id: str, answer: str) -> Grade | None:
        """Grade ``answer`` (the one of ``decision_id``), record the call and what the grade teaches."""
        grade = await self._call(turn, decision_id, answer)
        if grade is not None and grade.score is not None:
            assert self.judge is not None
            self.records.sink.publish(FeedbackGiven(
                event_id=uuid7(), decision_id=decision_id, ts_ms=int(time.time() * 1000), reward=grade.score,
                kind="judge", tenant=turn.caller.tenant.name, user=turn.req.user or "", rating=f"{grade.score:.3f}",
                comment=f"judge {self.judge.name}",
            ))  # fmt: skip
            self.records.metrics.feedback.inc("judge")
            if self.cache is not None and decision_id == turn.decision_id:  # a routed answer graded low leaves
                self.cache.judge(turn.caller.tenant.name, decision_id, grade.score)
        return grade

    async def _shadow(self, turn: Turn, model: str, text: str, cost_usd: float) -> None:
        assert self.shadow is not None
        if self.shadow.candidate is not None:
            return await self._candidate(turn, model, text)
        got: ShadowAnswer = await self.shadow.ask(turn, self.shadow.reference)
        await self._compare(turn, text, self.shadow.reference, got)

    async def _candidate(self, turn: Turn, model: str, text: str) -> None:
        """The candidate decides ``turn`` again; another model than the one that answered (``model``)
        is asked and compared, the same one is agreement. Either way its decision is recorded."""
        shadow = self.shadow
        assert shadow is not None and shadow.candidate is not None
        decided = shadow.candidate.choice_for(turn, shadow.rng)
        if decided is None:
            shadow.counts["not_routed"] += 1
            return
        chosen, choice = decided
        fields = {"arm": chosen, "propensity": choice.propensity, "version": shadow.candidate.version}
        if chosen == model:
            shadow.counts["agreed"] += 1
            self._record_shadow(turn, chosen, ShadowAnswer("", 0, 0, 0.0, 0.0), **fields)
            return
        shadow.counts["disagreed"] += 1
        if chosen not in shadow.targets:  # a cascade: not a model one call can ask
            shadow.counts["not_asked"] += 1
            self._record_shadow(turn, chosen, ShadowAnswer("", 0, 0, 0.0, 0.0, f"{chosen}: a cascade, not asked"),
                                **fields)  # fmt: skip
            return
        if not shadow.affords(turn, chosen):
            self._record_shadow(turn, chosen, ShadowAnswer("", 0, 0, 0.0, 0.0, "shadow budget spent for the day"),
                                **fields)  # fmt: skip
            return
        await self._compare(turn, text, chosen, await shadow.ask(turn, chosen), **fields)

    async def _compare(self, turn: Turn, text: str, model: str, got: ShadowAnswer, **fields: Any) -> None:
        """Record the shadow call of ``model``; when it answered and the judge may see the tenant,
        grade the routed answer (``text``) and then, if that was graded, the shadow's."""
        shadow_id = self._record_shadow(turn, model, got, **fields)
        if got.error or self.judge is None or not self._judged(turn.caller.tenant):
            return
        routed = await self._grade(turn, turn.decision_id, text)
        if routed is not None and routed.score is not None:
            await self._grade(turn, shadow_id, got.text)

    def _record_shadow(self, turn: Turn, model: str, got: ShadowAnswer, *, arm: str = "", propensity: float = 1.0,
                       version: int | None = None) -> str:  # fmt: skip
        """A decision of purpose "shadow" about the routed one: ``model``'s call (or a candidate's
        choice, under the candidate's snapshot ``version``); returns its decision id."""
        shadow_id = uuid7()
        record = self.records.decision(
            turn, shadow_id, policy="shadow" if version is None else "candidate", arm=arm or model,
            propensity=propensity, model=model, status="error" if got.error else "ok", errors=(got.error,) if got.error else (),
            prompt_tokens=got.prompt_tokens, completion_tokens=got.completion_tokens, cost_usd=got.cost_usd,
            latency_ms=got.latency_ms, parent_decision_id=turn.decision_id, purpose="shadow",
        )  # fmt: skip
        record = msgspec.structs.replace(record, embedding=b"", prompt_text="")
        if version is not None:
            record = msgspec.structs.replace(record, snapshot_version=version)
        self.records.sink.publish(record)
        return shadow_id

    def use_router(self, decide_again: DecideAgain) -> None:
        """Wire the routing step's decision into a candidate shadow (the composition root, once the
        routing step exists); nothing to do without one."""
        if self.shadow is not None and self.shadow.candidate is not None:
            self.shadow.candidate.use_router(decide_again)

    # -- reports and shutdown ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What ``GET /v1/admin/judge`` and ``/metrics`` show of the background work."""
        out: dict[str, Any] = {
            "queue": {"pending": self.offpath.pending(), "size": self.offpath.size,
                      "jobs": {f"{k}.{o}": n for (k, o), n in sorted(self.offpath.counts.items())}},
            "counts": dict(sorted(self.counts.items())),
        }  # fmt: skip
        if self.judge is not None:
            b = self.judge.budget
            out["judge"] = {"model": self.judge.name, "sample": self.sample, "spent_today_usd": b.spent_today(),
                            "budget_usd_per_day": b.usd_per_day, "refused_by_budget": b.refused}  # fmt: skip
        if self.shadow is not None:
            b = self.shadow.budget
            candidate = self.shadow.candidate
            out["shadow"] = {"reference": self.shadow.reference, "candidate": None if candidate is None else candidate.version,
                             "share": self.shadow.share,
                             "tenant_share": self.shadow.tenant_share, "spent_today_usd": b.spent_today(),
                             "budget_usd_per_day": b.usd_per_day, "counts": dict(sorted(self.shadow.counts.items()))}  # fmt: skip
        return out

    async def drain(self) -> None:
        await self.offpath.drain()

    async def aclose(self) -> None:
        await self.offpath.aclose()
        for upstream in self.closers:
            try:
                await upstream.aclose()
            except Exception:
                log.warning("closing the judge's endpoint failed", exc_info=True)
