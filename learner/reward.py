"""Reward from feedback: what one piece of feedback says about the quality of an answer."""

from __future__ import annotations

import msgspec

__all__ = ["IMPLICIT_REWARD", "RewardWeights", "reward_from_rating", "reward_from_score"]

# Implicit signals: a re-request of the same question and an upstream error both say the
# answer was not good enough.
IMPLICIT_REWARD = {"re_request": 0.0, "upstream_error": 0.0}


class RewardWeights(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How much evidence one piece of feedback of each kind is worth, relative to a rating.

    Implicit signals are noisier than a thumbs-down (a user re-asks for many reasons), so they
    weigh less by default, and so does a judge model's grade (a cheap judge is often wrong, and
    it grades far more answers than users rate). An upstream error is charged to the model the policy chose (``arm``),
    every other kind to the model that answered.
    """

    explicit: float = 1.0
    re_request: float = 0.5
    upstream_error: float = 1.0
    judge: float = 0.5

    def of(self, kind: str) -> float:
        """The weight of ``kind``; unknown kinds weigh like explicit feedback."""
        return float(getattr(self, kind)) if kind in _KINDS else self.explicit


_KINDS = frozenset(RewardWeights.__struct_fields__)


def reward_from_rating(rating: str) -> float:
    """``up`` is 1, ``down`` is 0."""
    if rating == "up":
        return 1.0
    if rating == "down":
        return 0.0
    raise ValueError(f"rating must be 'up' or 'down', got {rating!r}")


def reward_from_score(score: float) -> float:
    """A score in [0, 1] is the reward as given."""
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be in [0, 1], got {score!r}")
    return float(score)
