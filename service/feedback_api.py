"""The feedback API: a thumb or a score on a past decision becomes its own ``FeedbackGiven`` event.

Feedback never overwrites: each is an event, published like the decisions (no I/O on the
request path). A decision of another tenant is "unknown" (404), so ids cannot be probed; one
user's feedback is admitted up to the cap per window (``service.tenants.FeedbackCap``).
"""

from __future__ import annotations

import time
from typing import Callable

import msgspec

from feedback.events import FeedbackGiven, uuid7
from feedback.ports import EventSink
from learner.ports import DecisionRef
from learner.reward import reward_from_rating, reward_from_score
from service.decisions import DecisionIndex
from service.bodies import decode_body
from service.errors import ApiError
from service.metrics import Registry
from service.schemas import FeedbackAccepted, FeedbackRequest
from service.tenants import ANONYMOUS, Caller, FeedbackCap

__all__ = ["FeedbackDesk", "parse_feedback"]

_decoder = msgspec.json.Decoder(FeedbackRequest)


def parse_feedback(raw: bytes) -> FeedbackRequest:
    """The request body, or a 422 naming what is wrong with it."""
    body = decode_body(_decoder, raw, "feedback body")
    if (body.rating is None) == (body.score is None):
        raise ApiError(422, "give exactly one of 'rating' ('up' or 'down') or 'score' (0..1)",
                       param="rating", code="invalid_value")  # fmt: skip
    return body


class FeedbackDesk:
    def __init__(self, sink: EventSink, decisions: DecisionIndex, metrics: Registry,
                 cap: FeedbackCap | None = None,
                 on_feedback: Callable[[str, str, float], None] | None = None) -> None:  # fmt: skip
        self.sink = sink
        self.decisions = decisions
        self.metrics = metrics
        self.cap = cap
        self.on_feedback = on_feedback  # (tenant, decision id, reward) of each accepted: the response cache

    def accept(self, body: FeedbackRequest, ref: DecisionRef | None, caller: Caller = ANONYMOUS) -> FeedbackAccepted:
        """Accept feedback on a decision of the caller's own tenant (any other id is 'unknown')."""
        if ref is None or ref.tenant != caller.tenant.name:
            raise ApiError(404, f"unknown decision_id '{body.decision_id}'", param="decision_id",
                           code="decision_not_found")  # fmt: skip
        reward = reward_from_rating(body.rating) if body.rating else reward_from_score(float(body.score or 0.0))
        user = self.decisions.user(body.decision_id)
        if user and self.cap is not None and not self.cap.admit(ref.tenant, user):
            self.metrics.feedback.inc("capped")
            return FeedbackAccepted("", body.decision_id, reward, status="capped")
        event = FeedbackGiven(
            event_id=uuid7(),
            decision_id=body.decision_id,
            ts_ms=int(time.time() * 1000),
            reward=reward,
            kind="explicit",
            tenant=ref.tenant,
            user=user,
            rating=body.rating or "",
            comment=body.comment or "",
        )
        self.sink.publish(event)
        self.metrics.feedback.inc("explicit")
        if self.on_feedback is not None:
            self.on_feedback(ref.tenant, body.decision_id, reward)
        return FeedbackAccepted(event.event_id, body.decision_id, reward)
