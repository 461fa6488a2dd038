"""The learner's configuration sections: ``[learner]`` and the tables inside it.

Part of the one settings tree (``service/settings.py`` loads and validates it).
"""

from __future__ import annotations

from service.settings_check import Section

__all__ = ["BudgetSettings", "DriftSettings", "FeedbackWeights", "LearnerSettings", "ReclusterSettings"]


class FeedbackWeights(Section):
    """[learner.feedback_weights]: evidence one piece of feedback of each kind is worth."""

    explicit: float = 1.0
    re_request: float = 0.5
    upstream_error: float = 1.0
    judge: float = 0.5  # a grade from a judge model


class DriftSettings(Section):
    """[learner.drift]: Page-Hinkley on cluster margins (re-cluster) and model rewards (fade)."""

    enabled: bool = True
    block: int = 100  # decisions per margin block
    window: int = 64  # blocks kept
    baseline: int = 8  # oldest blocks forming the margin baseline
    tolerance: float = 0.1  # relative margin decay never called drift
    threshold: float = 0.5  # cumulative relative decay that is drift
    reward_block: float = 50.0  # feedback (evidence weight) per reward block
    reward_tolerance: float = 0.05
    reward_threshold: float = 0.6
    reward_reset: float = 0.1  # old evidence kept where a model's reward fell


class ReclusterSettings(Section):
    """[learner.recluster]: what a re-clustering reads and when it splits or merges clusters."""

    sample: int = 4096  # recent embeddings read
    max_clusters: int = 16
    min_size: int = 32
    split_gain: float = 0.25
    split_cos: float = 0.5
    growth: float = 3.0
    merge_cos: float = 0.9
    carry: float = 0.5  # share of the old clusters' evidence carried to the new ones


class BudgetSettings(Section):
    """[[learner.budgets]]: a target mean cost per request; the learner steers the cost weight."""

    policy: str = "auto"
    target_cost_usd: float = 0.0


class LearnerSettings(Section):
    interval_s: float = 30.0
    grace_s: float = 2.0
    discount: float = 1.0
    cold_start_min: int = 64  # decisions before the traffic is first clustered
    recluster_growth: float = 2.0  # cluster the traffic again each time it grows by this factor (0: never)
    recluster_until: int = 4096  # ... until this many decisions were routed
    snapshot_poll_s: float = 5.0
    half_life_s: float = 7 * 24 * 3600.0  # evidence halves every week of traffic; 0 = never
    half_life_feedback: float = 0.0  # ... and every this much new feedback in its cluster; 0 = never
    feedback_weights: FeedbackWeights = FeedbackWeights()
    drift: DriftSettings = DriftSettings()
    recluster: ReclusterSettings = ReclusterSettings()
    budgets: tuple[BudgetSettings, ...] = ()
    budget_step: float = 0.5  # change of log cost weight per unit of relative overspend, per cycle
    explore_min_evidence: float = 20.0  # a model with less evidence than this ...
    explore_share: float = 0.1  # ... may win at most this share of the posterior samples
