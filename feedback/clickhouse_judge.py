"""What the judge and shadow routing tell, read from ClickHouse (chDB or a server, the same SQL).

- ``calibration``: on decisions that have both a judge grade and an explicit rating (the first,
  as the learner counts it), how often the judge agrees with the thumbs (grade >= ``agree_at``
  exactly when the rating is >= 0.5), with a Wilson interval, the confusion table, Cohen's kappa
  and the correlation of the two.
- ``leakage``: per (clustering, cluster), over shadowed requests whose reference answered: the
  share of routed answers graded below the reference's answer (both graded), with a Wilson
  interval, and the cost saved against the reference (reference USD - routed USD, summed).
  Against a candidate snapshot (shadow records of policy ``candidate``) also the agreement: the
  share of the candidate's decisions that chose the model that answered. An agreeing decision
  is an answered shadow whose cost is the routed answer's (the candidate would have paid the
  same) and is never a judged pair; leakage is over the pairs where the two chose differently.

Both read the records of purpose ``shadow`` (070_judge_shadow.sql) by their ``parent_decision_id``.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

__all__ = ["Calibration", "ClusterLeakage", "calibration", "leakage", "wilson"]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) when n is 0.

    References: Wilson (1927), "Probable inference, the law of succession, and statistical inference".
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class Calibration(msgspec.Struct, frozen=True):
    pairs: int  # decisions with a judge grade and a rating
    agree: int
    agreement: float  # agree / pairs (0 without pairs)
    agreement_low: float  # Wilson 95%
    agreement_high: float
    kappa: float  # Cohen's kappa of pass/fail against up/down (0 without pairs)
    correlation: float  # Pearson, of the grade against the rating (0 when undefined)
    judge_pass_up: int
    judge_pass_down: int
    judge_fail_up: int
    judge_fail_down: int
    agree_at: float


class ClusterLeakage(msgspec.Struct, frozen=True):
    clustering: int
    cluster: int
    shadowed: int  # shadowed requests whose reference answered
    judged: int  # ... of which both answers were graded
    worse: int  # routed graded below the reference
    better: int  # routed graded above
    leakage: float  # worse / judged (0 without pairs)
    leakage_low: float  # Wilson 95%
    leakage_high: float
    routed_cost_usd: float
    reference_cost_usd: float
    saved_usd: float  # reference - routed
    saved_share: float  # saved / reference (0 when the reference cost nothing)
    decided: int = 0  # a candidate's decisions (answered, agreeing, refused or failed alike)
    agreed: int = 0  # ... that chose the model that answered (no call made)
    agreement: float = 0.0  # agreed / decided (0 without a candidate's decision)
    agreement_low: float = 0.0  # Wilson 95%
    agreement_high: float = 1.0
    unanswered: int = 0  # shadows not asked or that failed (the day's budget spent, a cascade, an error): in none of the above


_GRADES = """
    SELECT decision_id AS gid, avg(reward) AS g, count() AS gn
    FROM (SELECT event_id, any(decision_id) AS decision_id, any(reward) AS reward, any(kind) AS kind
          FROM feedback WHERE ts >= fromUnixTimestamp64Milli({lo:Int64}) GROUP BY event_id)
    WHERE kind = 'judge'
    GROUP BY decision_id
"""

_CALIBRATION = f"""
SELECT count(), countIf((g >= {{agree:Float64}}) = (e >= 0.5)),
       countIf(g >= {{agree:Float64}} AND e >= 0.5), countIf(g >= {{agree:Float64}} AND e < 0.5),
       countIf(g < {{agree:Float64}} AND e >= 0.5), countIf(g < {{agree:Float64}} AND e < 0.5),
       if(count() > 1, corr(g, e), nan)
FROM (
    SELECT r.decision_id AS did, argMin(r.reward, (r.fi, r.event_id)) AS e, any(j.g) AS g
    FROM (SELECT event_id, any(decision_id) AS decision_id, any(reward) AS reward, min(ingested_ms) AS fi
          FROM feedback WHERE kind = 'explicit' AND ts >= fromUnixTimestamp64Milli({{lo:Int64}})
          GROUP BY event_id) AS r
    INNER JOIN ({_GRADES}) AS j ON r.decision_id = j.gid
    WHERE r.decision_id IN (SELECT decision_id FROM decisions WHERE purpose = '')
    GROUP BY r.decision_id
)
"""

_OK = "s.status = 'ok'"
_PAIR = f"{_OK} AND gr.gn > 0 AND gs.gn > 0"

_LEAKAGE = f"""
SELECT d.clustering, d.cluster, countIf({_OK}),
       countIf({_PAIR}), countIf({_PAIR} AND gr.g < gs.g), countIf({_PAIR} AND gr.g > gs.g),
       sumIf(d.cost, {_OK}), sumIf(if(s.smodel = d.dmodel, d.cost, s.cost), {_OK}),
       countIf(s.policy = 'candidate'), countIf(s.policy = 'candidate' AND s.smodel = d.dmodel),
       countIf(s.status != 'ok')
FROM (
    SELECT decision_id AS sid, any(parent_decision_id) AS parent, any(cost_usd) AS cost, any(status) AS status,
           any(model) AS smodel, any(policy) AS policy
    FROM decisions
    WHERE purpose = 'shadow' AND ts >= fromUnixTimestamp64Milli({{lo:Int64}})
    GROUP BY decision_id
) AS s
INNER JOIN (
    SELECT decision_id, any(clustering) AS clustering, any(cluster) AS cluster, any(cost_usd) AS cost,
           any(model) AS dmodel
    FROM decisions
    WHERE purpose = '' AND decision_id IN (SELECT parent_decision_id FROM decisions WHERE purpose = 'shadow'
                                           AND ts >= fromUnixTimestamp64Milli({{lo:Int64}}))
    GROUP BY decision_id
) AS d ON s.parent = d.decision_id
LEFT JOIN ({_GRADES}) AS gr ON gr.gid = d.decision_id
LEFT JOIN ({_GRADES}) AS gs ON gs.gid = s.sid
GROUP BY d.clustering, d.cluster
ORDER BY d.clustering, d.cluster
"""


def calibration(client: Any, since_ms: int, agree_at: float = 0.5) -> Calibration:
    """The judge against the thumbs, on decisions since ``since_ms`` that have both."""
    row = client.query(_CALIBRATION, parameters={"lo": since_ms, "agree": agree_at}).result_rows[0]
    n, agree, pu, pd, fu, fd = (int(x) for x in row[:6])
    corr = float(row[6])
    low, high = wilson(agree, n)
    expected = ((pu + pd) * (pu + fu) + (fu + fd) * (pd + fd)) / (n * n) if n else 0.0
    kappa = (agree / n - expected) / (1 - expected) if n and expected < 1 else 0.0
    return Calibration(n, agree, agree / n if n else 0.0, low, high, kappa, corr if math.isfinite(corr) else 0.0,
                       pu, pd, fu, fd, agree_at)  # fmt: skip


def leakage(client: Any, since_ms: int) -> list[ClusterLeakage]:
    """Per cluster: leakage against the reference (or candidate), cost saved, and a candidate's
    agreement, over shadows since ``since_ms``."""
    out = []
    for r in client.query(_LEAKAGE, parameters={"lo": since_ms}).result_rows:
        clustering, cluster, shadowed, judged, worse, better = (int(x) for x in r[:6])
        routed, reference = float(r[6]), float(r[7])
        decided, agreed, unanswered = int(r[8]), int(r[9]), int(r[10])
        low, high = wilson(worse, judged)
        a_low, a_high = wilson(agreed, decided)
        out.append(ClusterLeakage(clustering, cluster, shadowed, judged, worse, better,
                                  worse / judged if judged else 0.0, low, high, routed, reference,
                                  reference - routed, (reference - routed) / reference if reference > 0 else 0.0,
                                  decided, agreed, agreed / decided if decided else 0.0, a_low, a_high,
                                  unanswered))  # fmt: skip
    return out
