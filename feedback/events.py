"""The facts that cross process boundaries: decisions made and feedback given.

Every event is a frozen msgspec Struct in a tagged union, with a UUIDv7 ``event_id`` and a
schema version. New fields get defaults so that old payloads still decode.
"""

from __future__ import annotations

import os
import time
from typing import Literal, TypeAlias

import msgspec

__all__ = [
    "SCHEMA_VERSION",
    "ArmId",
    "ClusterId",
    "DecisionMade",
    "Event",
    "FeedbackGiven",
    "Purpose",
    "decode_event",
    "encode_event",
    "uuid7",
]

SCHEMA_VERSION = 1

ArmId: TypeAlias = str
ClusterId: TypeAlias = int
FeedbackKind: TypeAlias = Literal["explicit", "re_request", "upstream_error", "judge"]
# what a decision record is: routed traffic (""), a shadow call to a reference model, or a judge
# call (service/shadow.py, service/judge.py). Only routed traffic is learned from or evaluated.
Purpose: TypeAlias = Literal["", "shadow", "judge"]


def uuid7(now_ms: int | None = None, random_bytes: bytes | None = None) -> str:
    """A UUIDv7 string: 48 bits of Unix milliseconds then random bits, so ids sort by time.

    ``random_bytes`` (10 bytes) replaces ``os.urandom`` where a run must be reproducible
    (seeded simulations and tests).
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10) if random_bytes is None else random_bytes[:10].rjust(10, b"\0"), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class DecisionMade(msgspec.Struct, frozen=True, tag="decision", kw_only=True):
    """A request was routed and answered (or failed) under a snapshot.

    ``arm`` is what the policy chose with ``propensity`` (the probability of choosing it under
    the snapshot); ``model`` is the model that finally answered (differs after a failover).
    ``embedding`` is the prompt embedding, float32 little-endian bytes of length 4 * dim.
    """

    event_id: str
    decision_id: str
    ts_ms: int
    schema_version: int = SCHEMA_VERSION
    tenant: str = "default"
    user: str = ""
    policy: str = "auto"
    requested_model: str = "auto"
    snapshot_version: int = 0
    clustering: int = 0
    cluster: ClusterId = 0
    margin: float = 0.0
    arm: ArmId = ""
    propensity: float = 1.0
    model: ArmId = ""
    status: Literal["ok", "error"] = "ok"
    fallbacks: int = 0
    errors: tuple[str, ...] = ()
    prompt_hash: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    stream: bool = False
    embedding: bytes = b""
    prompt_text: str = ""
    # set on the record of one failed attempt (policy "failover", status "error"): the decision it
    # was an attempt of. Its own decision_id carries the "upstream_error" feedback of that model,
    # so the policy's arm and propensity stay on the parent alone.
    parent_decision_id: str = ""
    # set on a response-cache hit (policy, arm and model "cache", cost 0): the decision whose
    # stored answer was served, so feedback on the hit can be traced to the answer it judges
    source_decision_id: str = ""
    # the last user message's language, ISO 639-1 ("en", "zh"), "" when not detected
    # ([language] detector "none", or too little text); what rules matched and the dashboard counts
    language: str = ""
    # a turn of a conversation (service/conversations.py): its id, its number (1 for the first; 0
    # outside any conversation), and whether it was kept on the model of the turn before: then
    # ``propensity`` is 1, a consequence of the conversation's state, and off-policy evaluation
    # leaves it out as it does a rule's decision (``policy`` stays the policy's, for its budget)
    conversation_id: str = ""
    turn: int = 0
    sticky: bool = False
    # a cascade (learner/cascade.py): on the request's record (``model`` the cascade's name, the
    # bill of both attempts), whether the gate rejected the cheap answer and the strong model
    # answered; on each attempt's own record (policy "cascade", ``parent_decision_id`` set) and on
    # the request's, the gate's verdict on the cheap answer: "pass" or why it was rejected
    # ("empty", "refusal", "json", "logprob", "judge")
    escalated: bool = False
    gate: str = ""
    # "shadow" or "judge": not a routed request but a call made off the request path about the
    # decision ``parent_decision_id`` (a reference model's answer to the same prompt, or a grade
    # of an answer). The learner, its usage means, budgets and off-policy evaluation leave these
    # records out; the leakage and calibration reports read them (feedback/clickhouse_judge.py).
    purpose: Purpose = ""


class FeedbackGiven(msgspec.Struct, frozen=True, tag="feedback", kw_only=True):
    """Feedback on one decision: explicit (thumbs, score) or implicit (re-request, error).

    ``reward`` is in [0, 1]. Each piece of feedback is its own event; nothing is overwritten.
    """

    event_id: str
    decision_id: str
    ts_ms: int
    reward: float
    schema_version: int = SCHEMA_VERSION
    kind: FeedbackKind = "explicit"
    tenant: str = "default"
    user: str = ""
    rating: str = ""
    comment: str = ""


Event: TypeAlias = DecisionMade | FeedbackGiven

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """Encode one event as msgpack (the wire format on Kafka)."""
    return _encoder.encode(event)


def decode_event(payload: bytes) -> Event:
    """Decode one event; raises ``msgspec.DecodeError``/``ValidationError`` on bad bytes."""
    return _decoder.decode(payload)
