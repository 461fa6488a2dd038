"""Logged decisions for off-policy evaluation, read from ClickHouse, and a candidate's probabilities.

``read_decisions`` is a read-only query of the ``decisions`` and ``feedback`` tables (one row
per decision the policy made that received feedback: the arm it chose, its logged propensity,
the mean of its counted rewards; decisions a rule made are counted, not read). ``candidate_target``
is what a candidate snapshot at a cost weight would have done with each of those prompts: the
service's own decision (``learner.routing``), so its probabilities are exact, not estimated.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from learner.routing import Prices, RoutingParams, View, decide
from learner.snapshot import Snapshot
from simulations.ope import Logged

__all__ = ["LoggedDecisions", "candidate_target", "read_decisions", "to_logged"]


class LoggedDecisions(msgspec.Struct, frozen=True):
    """Decisions with feedback, oldest first. Arrays are (n,), embeddings (n, d).

    ``skipped_pinned``: decisions with feedback in the range that a rule made, not the policy
    (policy ``pinned`` or ``passthrough``, propensity 1), or that a conversation kept on its
    model (``sticky``, propensity 1), left out.
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
    SELECT decision_id AS did, any(policy) IN {rules:Array(String)} OR any(sticky) AS l_rule, any(arm) AS l_arm,
           any(propensity) AS l_propensity, any(cluster) AS l_cluster,
           any(prompt_tokens) AS l_tokens, any(cost_usd) AS l_cost, any(embedding) AS l_embedding,
           min(toUnixTimestamp64Milli(ts)) AS l_ts
    FROM decisions
    WHERE toUnixTimestamp64Milli(ts) >= {lo:Int64} AND toUnixTimestamp64Milli(ts) < {hi:Int64}
      AND policy NOT IN ('failover', 'cascade') AND arm != '' AND purpose = '' {tenant_filter}
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
    the policy's; read as the policy's, it would say the policy was certain. So are turns a
    conversation kept on its model (``sticky``): deterministic given the conversation, they give
    no support to any other model (the learner still learns their quality). Records of failed
    attempts (policy ``failover``) and a cascade's attempts (policy ``cascade``) are not requests
    and are left out uncounted, and so are shadow and judge calls (``purpose``,
    070_judge_shadow.sql). Decisions of every
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
    prices: Prices,
    routing: RoutingParams,
    cost_weight: float,
    latency_weight: float = 0.0,
    *,
    exclude: tuple[str, ...] = (),
    cascades: tuple = (),
) -> np.ndarray:
    """The candidate's probability of each of ``snapshot.models`` for each logged prompt: (n, m).

    The service's own decision (``learner.routing``) on the candidate snapshot with the
    deployment's prices and router settings, so the probabilities are exact, not estimated;
    ``exclude`` removes models from the candidate's pool.
    """
    if logs.embeddings.shape[1] != snapshot.dim:
        raise ValueError(f"logged embeddings have dim {logs.embeddings.shape[1]}, the snapshot {snapshot.dim}")
    unknown = [name for name in exclude if name not in snapshot.models]
    if unknown:
        raise ValueError(f"excluded model {', '.join(unknown)} is not in the snapshot's pool ({', '.join(snapshot.models)})")
    allowed = np.array([name not in exclude for name in snapshot.models])
    if not allowed.any():
        raise ValueError("the candidate excludes every model")
    from learner.cascade import cascade_arms

    arms = cascade_arms(snapshot.models, [c for c in cascades if c.name in snapshot.models])
    view = View(snapshot, prices, routing, arms)
    mask = None if allowed.all() else allowed
    out = np.zeros((len(logs.arms), len(snapshot.models)))
    for i in range(len(out)):
        choice = decide(view, logs.embeddings[i], float(logs.prompt_tokens[i]), cost_weight, latency_weight, mask, 0)
        out[i] = choice.propensities
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
