"""What a request leaves behind: its decision, the records of its failed attempts, implicit feedback.

A request travels as one ``Turn`` (what was asked, by whom, what routing decided, under which
decision id); every record of it is built from that.

Every record goes to the event sink's in-memory buffer (no I/O here) and decisions also to the
recent-decision index the feedback API reads. A failed attempt is its own ``DecisionMade``
(policy ``failover``, status ``error``, ``parent_decision_id`` = the request's decision) carrying
an ``upstream_error`` reward of 0, so the failure counts against the model that failed while the
policy's arm and propensity stay on the request's decision alone.
"""

from __future__ import annotations

import time
from typing import Sequence

import msgspec
import numpy as np

from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.ports import EventSink
from learner.embedding import prompt_hash
from learner.ports import DecisionRef
from service.conversations import Thread
from service.decisions import DecisionIndex
from service.failover import Attempt
from service.metrics import Registry
from service.routing import RouteChoice
from service.schemas import ChatRequest
from service.tenants import Caller

__all__ = ["Recorder", "Routed", "Turn"]


class Routed(msgspec.Struct, frozen=True):
    """What routing decided for one request, under which snapshot."""

    choice: RouteChoice
    embedding: np.ndarray  # (d,) float32, unit norm: the last user message's own embedding
    text: str  # the last user message
    prompt_tokens: int
    policy: str  # a policy name, "passthrough" (model asked by name) or "pinned" (a rule)
    candidates: tuple[str, ...]  # models to try, in order
    snapshot_version: int
    clustering: int
    arm: str  # the model the policy chose (candidates[0])
    safety_class: str = ""
    costs: np.ndarray | None = None  # (m,) expected USD of each model under the routed snapshot
    # (d,) unit norm: what it was routed on and is recorded, when not ``embedding`` alone (the
    # conversation's context, the language step: service/conversations.py, learner/language.py)
    context: np.ndarray | None = None
    thread: Thread | None = None  # its place in its conversation (service/conversations.py)
    language: str = ""  # ISO 639-1 code of the last user message, "" unknown (learner/language.py)
    # what the policy's draw chose among, kept so that another view can decide the same request
    # again (``RequestRouter.decide_again``: a shadow's candidate snapshot)
    screened: np.ndarray | None = None  # (m,) bool: the models the rules left; None: every model
    row: int = -1  # the uniform draw of the decision; -1: not the policy's (pinned, sticky)


class Turn(msgspec.Struct, frozen=True):
    """One request after routing: everything its records and its answer are made of."""

    req: ChatRequest
    caller: Caller
    routed: Routed
    decision_id: str
    emb: bytes  # what it was routed on (routed.context, else routed.embedding) as little-endian float32
    started: float  # time.perf_counter() when the request arrived
    asker: str = ""  # who would re-ask: the request's user, else its session header ("" unknown)


class Recorder:
    def __init__(self, sink: EventSink, decisions: DecisionIndex, metrics: Registry, store_prompts: bool) -> None:
        self.sink = sink
        self.decisions = decisions
        self.metrics = metrics
        self.store_prompts = store_prompts

    def decision(self, turn: Turn, decision_id: str, **fields) -> DecisionMade:
        """A decision record of ``turn`` under ``decision_id``; ``fields`` are the outcome (model, status, usage...)."""
        req, caller, routed = turn.req, turn.caller, turn.routed
        keep = self.store_prompts or caller.tenant.store_prompts
        return DecisionMade(
            event_id=uuid7(),
            decision_id=decision_id,
            ts_ms=int(time.time() * 1000),
            tenant=caller.tenant.name,
            user=req.user or "",
            requested_model=req.model,
            snapshot_version=routed.snapshot_version,
            clustering=routed.clustering,
            cluster=routed.choice.cluster,
            margin=routed.choice.margin,
            language=routed.language,
            prompt_hash=prompt_hash(routed.text),
            stream=req.stream,
            embedding=turn.emb,
            prompt_text=routed.text if keep else "",
            conversation_id="" if routed.thread is None else routed.thread.conversation_id,
            turn=0 if routed.thread is None else routed.thread.turn,
            sticky=routed.thread is not None and routed.thread.sticky,
            **fields,
        )

    def outcome(self, turn: Turn, **fields) -> None:
        """Emit the request's own decision: the policy's arm and propensity, and ``fields``."""
        routed = turn.routed
        self.emit(self.decision(turn, turn.decision_id, policy=routed.policy, arm=routed.arm,
                                propensity=routed.choice.propensity, **fields))  # fmt: skip

    def emit(self, decision: DecisionMade) -> None:
        self.sink.publish(decision)
        self.decisions.remember(
            DecisionRef(decision.decision_id, decision.tenant, decision.cluster, decision.model, decision.snapshot_version),
            decision.user,
        )  # fmt: skip

    def attempts(self, turn: Turn, attempts: Sequence[Attempt]) -> None:
        """Each failed attempt: its own decision record and an ``upstream_error`` reward of 0."""
        for i, a in enumerate(attempts):
            attempt_id = uuid7()
            self.emit(self.decision(
                turn, attempt_id, policy="failover", arm=a.model, propensity=1.0, model=a.model,
                status="error", fallbacks=i, errors=(f"{a.model}: {a.error}",), latency_ms=a.latency_ms,
                parent_decision_id=turn.decision_id,
            ))  # fmt: skip
            self.negative(attempt_id, turn, "upstream_error")
            self.metrics.upstream_errors.inc(a.model)

    def negative(self, decision_id: str, turn: Turn, kind: str) -> None:
        """Implicit feedback of reward 0 (``upstream_error``, ``re_request``) on a decision of ``turn``'s caller."""
        self.sink.publish(FeedbackGiven(event_id=uuid7(), decision_id=decision_id, ts_ms=int(time.time() * 1000),
                                        reward=0.0, kind=kind, tenant=turn.caller.tenant.name,
                                        user=turn.req.user or ""))  # fmt: skip
        self.metrics.feedback.inc(kind)
