"""Logged decisions for off-policy evaluation, read from ClickHouse, and a candidate's probabilities.

``read_decisions`` is a read-only query of the ``decisions`` and ``feedback`` tables (one row
per decision the policy made that received feedback: the arm it chose, its logged propensity,
the mean of its counted rewards; decisions a rule made are counted, not read). ``candidate_target`` is
what a candidate snapshot at a cost weight would have done with each of those prompts: the same
computation as the service's router (nearest centroid, the snapshot's posterior sample matrix
seeded by (seed, version), ``choose``) so its probabilities are exact, not estimated.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from learner.budget import cap_exploration
from learner.clusters import assign_many
from learner.costs import completion_cost, price_per_token
from learner.policy import choose, draw_samples, posterior
from learner.snapshot import Snapshot, centroid_array
from simulations.ope import Logged

__all__ = ["LoggedDecisions", "candidate_target", "read_decisions", "to_logged"]


class LoggedDecisions(msgspec.Struct, frozen=True):
    """Decisions with feedback, oldest first. Arrays are (n,), embeddings (n, d).

    ``skipped_pinned``: decisions with feedback in the range that a rule made, not the policy
    (policy ``pinned`` or ``passthrough``, propensity 1), left out.
    """

    decision_ids: tuple[str, ...]
    arms: tuple[str, ...]
    propensities: np.ndarray
    rewards: np.ndarray
    clusters: np.ndarray
    prompt_tokens: np.ndarray
    cost_usd: np.ndarray
    embeddings: np.ndarray
    skipped_pinned: int = 0


# the ``policy`` of a decision that a rule made: a pin rule, or a model asked for by name
_RULE_POLICIES = ("pinned", "passthrough")

_SQL = """
SELECT d.did, d.l_rule, d.l_arm, d.l_propensity, f.l_reward, d.l_cluster, d.l_tokens, d.l_cost,
       if(d.l_rule, [], d.l_embedding)
FROM (
    SELECT decision_id AS did, any(policy) IN {rules:Array(String)} AS l_rule, any(arm) AS l_arm,
           any(propensity) AS l_propensity, any(cluster) AS l_cluster,
           any(prompt_tokens) AS l_tokens, any(cost_usd) AS l_cost, any(embedding) AS l_embedding,
           min(toUnixTimestamp64Milli(ts)) AS l_ts
    FROM decisions
    WHERE toUnixTimestamp64Milli(ts) >= {lo:Int64} AND toUnixTimestamp64Milli(ts) < {hi:Int64}
      AND policy != 'failover' AND arm != '' {tenant_filter}
    GROUP BY decision_id
) AS d
INNER JOIN (
    -- the mean of what the learner counts: the first rating (feedback.clickhouse) and each implicit signal
    -- (argMinIf is 0 for a decision without a rating)
    SELECT fid, (sumIf(r, k != 'explicit') + argMinIf(r, (fi, event_id), k = 'explicit'))
                / (countIf(k != 'explicit') + (countIf(k = 'explicit') > 0)) AS l_reward
    FROM (SELECT event_id, any(decision_id) AS fid, any(reward) AS r, any(kind) AS k, min(ingested_ms) AS fi
          FROM feedback GROUP BY event_id)
    GROUP BY fid
) AS f ON d.did = f.fid
ORDER BY d.l_ts, d.did
"""


def read_decisions(client: Any, since_ms: int, until_ms: int, tenant: str = "") -> LoggedDecisions:
    """Decisions the policy made in [since_ms, until_ms) that have feedback (read-only).

    Decisions a rule made (policy ``pinned``: a pin rule; ``passthrough``: a model asked for by
    name) are left out and counted in ``skipped_pinned``: their propensity 1 is the rule's, not
    the policy's; read as the policy's, it would say the policy was certain. Records of failed
    attempts (policy ``failover``) are not requests and are left out uncounted. Decisions of every
    policy name are read, also one asked for by name (``model="cheap"``): their propensity is the
    policy's. A decision's reward is the mean of the feedback the learner counts: its first
    rating (kind ``explicit``; later ones do not count, see ``feedback.clickhouse``) and each
    implicit signal.
    """
    params: dict[str, Any] = {"lo": since_ms, "hi": until_ms, "rules": list(_RULE_POLICIES)}
    sql = _SQL.replace("{tenant_filter}", "AND tenant = {tenant:String}" if tenant else "")
    if tenant:
        params["tenant"] = tenant
    found = client.query(sql, parameters=params).result_rows
    rows = [r[:1] + r[2:] for r in found if not r[1]]
    dim = max((len(r[7]) for r in rows), default=0)
    emb = np.zeros((len(rows), dim), dtype=np.float32)
    for i, r in enumerate(rows):
        if len(r[7]) == dim:
            emb[i] = r[7]
    return LoggedDecisions(
        decision_ids=tuple(r[0] for r in rows),
        arms=tuple(r[1] for r in rows),
        propensities=np.array([float(r[2]) for r in rows]),
        rewards=np.array([float(r[3]) for r in rows]),
        clusters=np.array([int(r[4]) for r in rows], dtype=np.int64),
        prompt_tokens=np.array([float(r[5]) for r in rows]),
        cost_usd=np.array([float(r[6]) for r in rows]),
        embeddings=emb,
        skipped_pinned=len(found) - len(rows),
    )


def candidate_target(
    logs: LoggedDecisions,
    snapshot: Snapshot,
    cost_weight: float,
    *,
    seed: int = 0,
    n_samples: int = 1024,
    exclude: tuple[str, ...] = (),
) -> np.ndarray:
    """The candidate's probability of each of ``snapshot.models`` for each logged prompt: (n, m).

    Costs are estimated per token from the logged bills (``learner.costs``), as the replay
    does; ``exclude`` removes models from the candidate's pool.
    """
    models = snapshot.models
    col = {m: j for j, m in enumerate(models)}
    n, m = len(logs.arms), len(models)
    if logs.embeddings.shape[1] != snapshot.dim:
        raise ValueError(f"logged embeddings have dim {logs.embeddings.shape[1]}, the snapshot {snapshot.dim}")
    billed = np.full((n, m), np.nan)
    arms = np.array([col.get(a, -1) for a in logs.arms])
    known = arms >= 0
    billed[np.flatnonzero(known), arms[known]] = logs.cost_usd[known]
    per_token = price_per_token(logs.prompt_tokens, billed)
    resid = np.zeros((1, m))
    count = np.zeros((1, m))
    np.add.at(resid, (0, arms[known]), logs.cost_usd[known] - logs.prompt_tokens[known] * per_token[arms[known]])
    np.add.at(count, (0, arms[known]), 1.0)
    completion = completion_cost(per_token, resid, count)[0]
    alpha, beta = posterior(np.array(snapshot.n), np.array(snapshot.reward_sum), np.array(snapshot.prior_mean),
                            snapshot.prior_strength, snapshot.shrink_strength)  # fmt: skip
    # as service.routing.RouterView: the version-seeded matrix under the snapshot's exploration cap
    samples = cap_exploration(draw_samples(alpha, beta, n_samples, np.random.default_rng([seed, snapshot.version])),
                              snapshot.explore_share)  # fmt: skip
    clusters, _ = assign_many(logs.embeddings, np.ascontiguousarray(centroid_array(snapshot)))
    allowed = np.array([name not in exclude for name in models])
    if not allowed.any():
        raise ValueError("the candidate excludes every model")
    out = np.zeros((n, m))
    for i in range(n):
        penalty = cost_weight * (logs.prompt_tokens[i] * per_token + completion)
        _, out[i] = choose(samples[clusters[i]], penalty, allowed, 0)
    return out


def to_logged(logs: LoggedDecisions, models: tuple[str, ...], target: np.ndarray) -> Logged:
    """OPE input: rounds whose arm is one of ``models``, the logged cluster as the context."""
    col = {m: j for j, m in enumerate(models)}
    keep = np.array([a in col for a in logs.arms], dtype=bool)
    if not keep.any():
        raise ValueError("no logged decision chose a model of the candidate's pool")
    clusters = logs.clusters[keep]
    _, ctx = np.unique(clusters, return_inverse=True)
    return Logged(
        actions=np.array([col[a] for a, k in zip(logs.arms, keep) if k], dtype=np.int64),
        rewards=logs.rewards[keep],
        propensities=logs.propensities[keep],
        target=target[keep],
        contexts=ctx.astype(np.int64),
        action_names=models,
        skipped_pinned=logs.skipped_pinned,
    )
