"""Off-policy evaluation: the value of a candidate policy, estimated from another policy's logs.

Each logged round holds the action taken, its reward, the logging policy's propensity for it
(Turnout logs the exact one, see ``learner.policy.choose``) and the candidate's probability of
every action in that round. Three estimators, each with a normal-approximation interval:

- IPS: mean of w * r with importance weights w = target(a) / propensity (capped at ``clip``).
- SNIPS: sum(w * r) / sum(w); delta-method interval.
- DR: a reward model q(context, action) (per-context means shrunk to per-action means, fitted
  on the other half of the rounds: cross-fitting) plus the weighted residual of the taken action.

The effective sample size (Kish) of the raw weights says how much of the log the candidate
really uses; below ``min_ess`` the report carries a warning.

Deficient support: where the candidate takes a model the logging policy never takes there
(logging probability 0), no estimator sees its reward. When the logging policy's whole
distribution is known (``Logged.logging``: the OPE check knows it; a file may give it), that
mass ``unsupported`` is measured and every interval is widened to hold whatever rewards in [0, 1]
the unseen choices would earn: IPS and DR count them at 0 and q, so their upper (and DR's lower)
ends move by the mass; SNIPS estimates the supported part's mean, so its interval becomes
[(1 - d) lo, (1 - d) hi + d]. The point estimates stay; the report says how much was unseen.

References: Horvitz & Thompson (1952); Swaminathan & Joachims, The Self-Normalized Estimator
for Counterfactual Learning (NeurIPS 2015); Dudik, Langford & Li, Doubly Robust Policy
Evaluation and Learning (ICML 2011); Kish, Survey Sampling (1965); Sachdeva, Su & Joachims,
Off-policy Bandits with Deficient Support (KDD 2020).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import msgspec
import numpy as np
from scipy import stats

__all__ = ["Interval", "Logged", "LoggedRound", "OpeReport", "estimate", "from_rounds", "read_rounds"]


class LoggedRound(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of an OPE input file."""

    action: str
    reward: float
    propensity: float
    target: dict[str, float]
    context: str = ""  # optional (e.g. the cluster): lets the DR reward model condition on it
    logging: dict[str, float] | None = None  # optional: the logging policy's probability of every action


class Logged(msgspec.Struct, frozen=True):
    """Rounds as arrays. actions, contexts: (n,) int; rewards, propensities: (n,); target: (n, A).

    ``skipped_pinned``: logged decisions that are not rounds because a rule, not the logging
    policy, chose them (propensity 1 by rule; see ``simulations.logs``), reported as such.
    ``logging``: (n, A) the logging policy's whole distribution per round, when known.
    """

    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    target: np.ndarray
    contexts: np.ndarray
    action_names: tuple[str, ...]
    skipped_pinned: int = 0
    logging: np.ndarray | None = None


class Interval(msgspec.Struct, frozen=True):
    estimate: float
    ci_low: float
    ci_high: float


class OpeReport(msgspec.Struct, frozen=True):
    ips: Interval
    snips: Interval
    dr: Interval
    ess: float
    n: int
    level: float
    clip: float | None
    clipped: int  # rounds whose weight was capped
    logged_reward: float  # mean reward of the logging policy, for comparison
    warning: str | None = None
    skipped_pinned: int = 0  # logged decisions left out: a rule chose them, not the logging policy
    unsupported: float | None = None  # the candidate's mass where the logging policy has none (None: not known)


_round = msgspec.json.Decoder(LoggedRound)


def read_rounds(path: str | Path) -> list[LoggedRound]:
    """Read a JSONL file of logged rounds; errors name the line."""
    rounds = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rounds.append(_round.decode(line))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise ValueError(f"{path}:{lineno}: not a logged round: {exc}") from None
    return rounds


def from_rounds(rounds: Sequence[LoggedRound]) -> Logged:
    """Arrays from rounds. Raises ``ValueError`` on a propensity outside (0, 1] or a bad target."""
    if not rounds:
        raise ValueError("no logged rounds")
    names = tuple(sorted({r.action for r in rounds} | {a for r in rounds for a in r.target}))
    col = {a: j for j, a in enumerate(names)}
    contexts = {c: i for i, c in enumerate(sorted({r.context for r in rounds}))}
    target = np.zeros((len(rounds), len(names)))
    logging = np.zeros_like(target) if all(r.logging is not None for r in rounds) else None
    for i, r in enumerate(rounds):
        if not 0.0 < r.propensity <= 1.0:
            raise ValueError(f"round {i + 1}: propensity must be in (0, 1], got {r.propensity}")
        if not np.isfinite(r.reward):
            raise ValueError(f"round {i + 1}: reward must be finite")
        for a, p in r.target.items():
            if p < 0:
                raise ValueError(f"round {i + 1}: target probability of {a!r} is negative")
            target[i, col[a]] = p
        total = target[i].sum()
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"round {i + 1}: target probabilities sum to {total:.4f}, not 1")
        target[i] /= total
        if logging is not None:
            for a, p in r.logging.items():  # type: ignore[union-attr]
                if a not in col or p < 0:
                    raise ValueError(f"round {i + 1}: logging probability of {a!r} is negative or of an unknown action")
                logging[i, col[a]] = p
            if logging[i, col[r.action]] <= 0:
                raise ValueError(f"round {i + 1}: the logging policy gives its own action {r.action!r} probability 0")
    return Logged(
        actions=np.array([col[r.action] for r in rounds], dtype=np.int64),
        rewards=np.array([r.reward for r in rounds], dtype=np.float64),
        propensities=np.array([r.propensity for r in rounds], dtype=np.float64),
        target=target,
        contexts=np.array([contexts[r.context] for r in rounds], dtype=np.int64),
        action_names=names,
        logging=logging,
    )


def _reward_model(ctx: np.ndarray, act: np.ndarray, rew: np.ndarray, n_ctx: int, n_act: int,
                  pseudo: float = 2.0) -> np.ndarray:  # fmt: skip
    """q (n_ctx, n_act): per-(context, action) mean reward, shrunk to the action's, shrunk to the global mean."""
    glob = rew.mean() if len(rew) else 0.5
    cnt_a = np.bincount(act, minlength=n_act).astype(float)
    sum_a = np.bincount(act, weights=rew, minlength=n_act)
    q_a = (sum_a + pseudo * glob) / (cnt_a + pseudo)
    cnt = np.zeros((n_ctx, n_act))
    tot = np.zeros((n_ctx, n_act))
    np.add.at(cnt, (ctx, act), 1.0)
    np.add.at(tot, (ctx, act), rew)
    return (tot + pseudo * q_a[None, :]) / (cnt + pseudo)


def _interval(mean: float, se: float, z: float) -> Interval:
    return Interval(float(mean), float(mean - z * se), float(mean + z * se))


def estimate(logged: Logged, *, clip: float | None = None, level: float = 0.95, min_ess: float = 100.0) -> OpeReport:
    """IPS, SNIPS and DR estimates of the target's mean reward, with ``level`` intervals."""
    n = len(logged.actions)
    rows = np.arange(n)
    raw = logged.target[rows, logged.actions] / logged.propensities
    w = raw if clip is None else np.minimum(raw, clip)
    clipped = 0 if clip is None else int((raw > clip).sum())
    r = logged.rewards
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    se = (lambda x: float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf"))

    ips_terms = w * r
    ips = _interval(ips_terms.mean(), se(ips_terms), z)

    wsum = w.sum()
    v_sn = float(ips_terms.sum() / wsum) if wsum > 0 else 0.0
    se_sn = float(np.sqrt(np.sum((w * (r - v_sn)) ** 2)) / wsum) if wsum > 0 else float("inf")
    snips = _interval(v_sn, se_sn, z)

    n_ctx = int(logged.contexts.max()) + 1
    n_act = logged.target.shape[1]
    fold = rows % 2
    dr_terms = np.zeros(n)
    for f in (0, 1):
        fit, use = fold != f, fold == f
        q = _reward_model(logged.contexts[fit], logged.actions[fit], r[fit], n_ctx, n_act)
        q_rows = q[logged.contexts[use]]  # (n_use, A)
        taken = q_rows[np.arange(use.sum()), logged.actions[use]]
        dr_terms[use] = (logged.target[use] * q_rows).sum(axis=1) + w[use] * (r[use] - taken)
    dr = _interval(dr_terms.mean(), se(dr_terms), z)

    unsupported = None
    if logged.logging is not None:
        blind = logged.logging <= 0
        unsupported = float((logged.target * blind).sum(axis=1).mean())
        if unsupported > 0:  # what the unseen choices earn is anywhere in [0, 1]
            q_blind = np.zeros(n)
            for f in (0, 1):
                use = fold == f
                q = _reward_model(logged.contexts[fold != f], logged.actions[fold != f], r[fold != f], n_ctx, n_act)
                q_blind[use] = (logged.target[use] * blind[use] * q[logged.contexts[use]]).sum(axis=1)
            qb = float(q_blind.mean())
            ips = Interval(ips.estimate, ips.ci_low, ips.ci_high + unsupported)
            d = unsupported
            snips = Interval(snips.estimate, (1 - d) * snips.ci_low, (1 - d) * snips.ci_high + d)
            dr = Interval(dr.estimate, dr.ci_low - qb, dr.ci_high + unsupported - qb)

    ess = float(raw.sum() ** 2 / np.sum(raw**2)) if np.sum(raw**2) > 0 else 0.0
    warning = None
    if ess < min_ess:
        warning = (f"effective sample size {ess:.1f} of {n} rounds is below {min_ess:g}: the candidate "
                   f"chooses what the logging policy rarely did, so these estimates are not to be trusted")  # fmt: skip
    if unsupported:
        warning = ((warning + "; ") if warning else "") + (
            f"{unsupported:.1%} of the candidate's choices go where the logging policy never chose: "
            f"no estimator sees them, the intervals are widened to hold any reward there")  # fmt: skip
    return OpeReport(ips=ips, snips=snips, dr=dr, ess=ess, n=n, level=level, clip=clip, clipped=clipped,
                     logged_reward=float(r.mean()), warning=warning, skipped_pinned=logged.skipped_pinned,
                     unsupported=unsupported)  # fmt: skip
