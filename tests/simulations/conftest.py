"""Small synthetic outcome sets (the simulated pool's topics) and their embeddings, per session."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.environment import outcome_rows, scenario
from simulations.experiment import embed_outcomes
from simulations.outcomes import Outcomes, parse_outcomes


@pytest.fixture(scope="session")
def synthetic(embedder) -> tuple[Outcomes, np.ndarray]:
    """600 prompts of four topics, four models with different strengths, and their embeddings."""
    o = parse_outcomes(outcome_rows(scenario("stationary"), 600, np.random.default_rng(0)))
    return o, embed_outcomes(o, embedder)
