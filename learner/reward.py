"""Reward from feedback: what one piece of feedback says about the quality of an answer."""

from __future__ import annotations

__all__ = ["reward_from_rating", "reward_from_score", "IMPLICIT_REWARD"]

# Implicit signals: a re-request of the same question and an upstream error both say the
# answer was not good enough.
IMPLICIT_REWARD = {"re_request": 0.0, "upstream_error": 0.0}


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
