"""A simulated judge: a grade of an answer from its true quality, with noise and bias.

A judge model reads an answer and returns a score in [0, 1]; a cheap one is often wrong. The
simulated judge sees the answer's true score (0/1 correctness, or a graded score) and returns
``clip(score + bias + noise * N(0, 1), 0, 1)``: ``noise`` is the spread of its mistakes,
``bias`` its leaning (positive: too lenient, negative: too harsh). A gate with threshold 0.5
on a 0/1 score then rejects a good answer with probability ``Phi((-0.5 - bias) / noise)`` and
accepts a bad one with ``Phi((bias - 0.5) / noise)`` (``error_rates``).

Pure: the caller passes the ``numpy.random.Generator`` (seeded), so runs are reproducible.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

__all__ = ["SimulatedJudge", "error_rates"]


class SimulatedJudge(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A judge that grades with Gaussian noise of spread ``noise`` and a shift ``bias``."""

    noise: float = 0.3
    bias: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"judge noise must be finite and >= 0, got {self.noise!r}")
        if not math.isfinite(self.bias):
            raise ValueError(f"judge bias must be finite, got {self.bias!r}")

    def grade(self, score: float | np.ndarray, rng: np.random.Generator) -> float | np.ndarray:
        """The judge's grade of answers whose true score is ``score`` (scalar or array), in [0, 1].

        Draws one standard normal per answer from ``rng`` (also when ``noise`` is 0, so the
        stream of draws does not depend on the noise level: common random numbers)."""
        s = np.asarray(score, dtype=np.float64)
        return self.apply(s, rng.standard_normal(s.shape))

    def apply(self, score: float | np.ndarray, z: float | np.ndarray) -> float | np.ndarray:
        """The grade given standard normal draws ``z`` (drawn ahead, one per answer, so that runs
        with different judges face the same draws)."""
        g = np.clip(np.asarray(score, dtype=np.float64) + self.bias + self.noise * np.asarray(z), 0.0, 1.0)
        return float(g) if g.ndim == 0 else g


def error_rates(judge: SimulatedJudge, threshold: float = 0.5) -> tuple[float, float]:
    """(false rejection, false acceptance) of a gate ``grade >= threshold`` on 0/1 scores."""
    if judge.noise == 0:
        return float(1.0 + judge.bias < threshold), float(judge.bias >= threshold)
    phi = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
    return phi((threshold - 1.0 - judge.bias) / judge.noise), 1.0 - phi((threshold - judge.bias) / judge.noise)
