"""``turnout simulate``: policies side by side on the same simulated traffic, over seeds.

For every seed one stream is drawn (``simulations.environment``) and every policy routes all
of it, learning from the users' feedback. Regret is pseudo-regret in utility
(``quality - cost_weight * cost``, expected values, not the noisy feedback) against three
comparators: the per-prompt oracle, the best fixed model of each cluster (topic) and the best
single model, both in hindsight. Intervals are over seeds (Student t, 95%).

For each topic the late slope of a policy's regret against log t is set beside the
Lai-Robbins constant sum_a gap_a / KL(q_a, q_a + gap_a) (Bernoulli; one clean observation
per call; models that cannot be best at any quality, their cost being known, need no
exploration and add nothing). References: Lai & Robbins, Asymptotically Efficient Adaptive
Allocation Rules (1985).
"""

from __future__ import annotations

from typing import Callable

import msgspec
import numpy as np
from scipy import stats

from learner.embedding import Embedder
from learner.language import build_detector, in_language
from simulations.baselines import Fixed, LinearThompson, Oracle, Policy, RiverPolicy, Turnout, Uniform, project
from simulations.environment import Scenario, Stream, feedback, stream
from learner.routing import Prices
from simulations.replay import Deployment

__all__ = ["POLICIES", "PolicyResult", "SimulateReport", "Stat", "lai_robbins", "stat", "late_slope", "simulate"]

POLICIES = ("turnout", "linear-ts", "linucb", "epsilon-greedy", "ucb", "thompson", "best-single", "cheapest",
            "most-expensive", "uniform", "oracle")  # fmt: skip


class Stat(msgspec.Struct, frozen=True):
    mean: float
    ci: float  # half-width of the 95% interval over seeds (nan with one seed)

    def show(self, k: float = 1.0, d: int = 3) -> str:
        """``mean ± half-width`` scaled by ``k`` to ``d`` decimals; the mean alone with one seed."""
        return f"{self.mean * k:.{d}f}" + ("" if self.ci != self.ci else f" ± {self.ci * k:.{d}f}")


class PolicyResult(msgspec.Struct, frozen=True):
    name: str
    quality: Stat
    cost_usd: Stat
    regret_oracle: Stat
    regret_cluster: Stat
    regret_single: Stat
    cost_saved: Stat  # 1 - cost / cost of always-most-expensive
    quality_kept: Stat  # quality / quality of always-most-expensive
    curve: tuple[float, ...]  # mean cumulative regret against the oracle at ``SimulateReport.checkpoints``
    curve_ci: tuple[float, ...]
    late_slope: dict[str, float]  # per topic: d regret / d log t over the second half


class SimulateReport(msgspec.Struct, frozen=True):
    scenario: str
    description: str
    steps: int
    seeds: int
    cost_weight: float
    checkpoints: tuple[int, ...]
    policies: tuple[PolicyResult, ...]
    lai_robbins: dict[str, float]  # per topic
    seconds: float = 0.0


def stat(values: list[float]) -> Stat:
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return Stat(float(v.mean()), float("nan"))
    return Stat(float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))))


def _kl(p: float, q: float) -> float:
    p, q = min(max(p, 1e-9), 1 - 1e-9), min(max(q, 1e-9), 1 - 1e-9)
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


def lai_robbins(quality: np.ndarray, utility: np.ndarray) -> float:
    """sum over suboptimal models of gap / KL(q, q + gap). quality, utility: (m,) of one topic."""
    best = int(np.argmax(utility))
    total = 0.0
    for a in range(len(utility)):
        gap = utility[best] - utility[a]
        if a == best or not np.isfinite(gap) or gap <= 1e-12 or quality[a] + gap >= 1.0:
            continue
        total += gap / _kl(quality[a], quality[a] + gap)
    return total


def late_slope(regret: np.ndarray) -> float:
    """Least-squares slope of cumulative regret (n,) against log(t) over the second half of t."""
    n = len(regret)
    if n < 8:
        return float("nan")
    t = np.arange(n // 2, n) + 1.0
    return float(np.polyfit(np.log(t), regret[n // 2 :], 1)[0])


def _utility(st: Stream, cost_weight: float) -> np.ndarray:
    return np.where(st.available, st.quality - cost_weight * st.cost_usd, -np.inf)


def _hindsight(u: np.ndarray, mask: np.ndarray) -> int:
    """The model with the highest total utility over the steps in ``mask`` among those always available."""
    sub = u[mask]
    ok = np.isfinite(sub).all(axis=0)
    totals = np.where(ok, np.where(np.isfinite(sub), sub, 0.0).sum(axis=0), -np.inf)
    return int(np.argmax(totals))


def _policies(names: tuple[str, ...], st: Stream, u: np.ndarray, deployment: Deployment, cost_weight: float,
              dim: int, seed: int, learn_every: int) -> list[Policy]:  # fmt: skip
    m = len(st.models)
    proj = project(dim, 16, seed)
    mean_cost = np.nanmean(np.where(st.available, st.cost_usd, np.nan), axis=0)
    single = _hindsight(u, np.ones(len(u), dtype=bool))

    def prices(t: int) -> Prices:  # the price sheet configured at step t
        return Prices(st.models, tuple(float(x) * 1e6 for x in st.price_per_token[t]),
                      tuple(float(x) * 1e6 for x in st.price_out_per_token[t]))  # fmt: skip

    dep = msgspec.structs.replace(deployment, cost_weight=cost_weight,
                                  routing=msgspec.structs.replace(deployment.routing, seed=seed))  # fmt: skip
    out: list[Policy] = []
    for name in names:
        rng = np.random.default_rng([seed, POLICIES.index(name)])
        if name == "turnout":
            out.append(Turnout(name, st.models, dim, dep, prices, learn_every))
        elif name == "thompson":  # the same, one cluster
            one = msgspec.structs.replace(dep, learner=msgspec.structs.replace(dep.learner, n_clusters=1))
            out.append(Turnout(name, st.models, dim, one, prices, learn_every))
        elif name == "linear-ts":
            out.append(LinearThompson(name, m, proj, cost_weight, rng))
        elif name in ("linucb", "epsilon-greedy", "ucb"):
            from river import bandit

            s = int(rng.integers(2**31))
            pol = {"linucb": lambda: bandit.LinUCBDisjoint(alpha=1.0, seed=s),
                   "epsilon-greedy": lambda: bandit.EpsilonGreedy(epsilon=0.1, seed=s),
                   "ucb": lambda: bandit.UCB(delta=1.0, seed=s)}[name]()  # fmt: skip
            out.append(RiverPolicy(name, pol, proj if name == "linucb" else None, cost_weight))
        elif name == "best-single":
            out.append(Fixed(name, np.array([single] + [j for j in range(m) if j != single])))
        elif name == "cheapest":
            out.append(Fixed(name, np.argsort(mean_cost)))
        elif name == "most-expensive":
            out.append(Fixed(name, np.argsort(-mean_cost)))
        elif name == "uniform":
            out.append(Uniform(name, rng))
        elif name == "oracle":
            out.append(Oracle(name, u))
        else:
            raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return out


def _run(policy: Policy, st: Stream, emb: np.ndarray, users) -> np.ndarray:
    arms = np.zeros(len(st.prompts), dtype=np.int64)
    for t in range(len(st.prompts)):
        arm, c = policy.decide(t, emb[t], st.tokens[t], st.available[t], st.price_per_token[t])
        arms[t] = arm
        policy.learn(t, emb[t], arm, c, feedback(st, users, t, arm), st.cost_usd[t, arm], st.tokens[t])
    return arms


def simulate(
    sc: Scenario,
    embedder: Embedder,
    deployment: Deployment,
    cost_weight: float,
    *,
    steps: int = 3000,
    seeds: int = 5,
    policies: tuple[str, ...] = POLICIES,
    checkpoints: int = 60,
    base_seed: int = 0,
    learn_every: int = 10,
    progress: Callable[[int], None] | None = None,
) -> SimulateReport:
    """Every policy on ``seeds`` streams of ``steps`` prompts of scenario ``sc``; Turnout is the
    deployment's router and learner (a learning cycle every ``learn_every`` prompts)."""
    import time

    start = time.perf_counter()
    marks = np.unique(np.linspace(1, steps, checkpoints).astype(int)) - 1
    per: dict[str, dict[str, list]] = {p: {k: [] for k in ("q", "c", "ro", "rc", "rs", "curve", "slope")} for p in policies}
    dearest_q, dearest_c = [], []
    lr_all: dict[str, list[float]] = {}
    cache: dict[str, np.ndarray] = {}
    detector = build_detector(deployment.language_detector)
    for seed in range(seeds):
        st = stream(sc, steps, np.random.default_rng([base_seed, seed]))
        new = [p for p in dict.fromkeys(st.prompts) if p not in cache]
        if new:  # the routing context, with the deployment's language step (learner/language.py)
            cache.update((p, in_language(v, detector.detect(p), deployment.language_weight))
                         for p, v in zip(new, embedder.embed(new)))  # fmt: skip
        emb = np.stack([cache[p] for p in st.prompts])
        u = _utility(st, cost_weight)
        rows = np.arange(steps)
        best_u = u.max(axis=1)
        per_topic = np.zeros(steps, dtype=np.int64)
        for k in range(len(st.topic_names)):
            mask = st.topics == k
            if mask.any():
                per_topic[mask] = _hindsight(u, mask)
        single = _hindsight(u, np.ones(steps, dtype=bool))
        dear = int(np.argmax(np.nanmean(np.where(st.available, st.cost_usd, np.nan), axis=0)))
        dearest_q.append(st.quality[rows, dear].mean())
        dearest_c.append(st.cost_usd[rows, dear].mean())
        for k, name in enumerate(st.topic_names):
            mask = (st.topics == k) & (rows >= steps // 2)
            if mask.sum():
                lr_all.setdefault(name, []).append(lai_robbins(st.quality[mask].mean(axis=0), u[mask].mean(axis=0)))
        for policy in _policies(policies, st, u, deployment, cost_weight, emb.shape[1], seed, learn_every):
            arms = _run(policy, st, emb, sc.users)
            got = u[rows, arms]
            r = per[policy.name]
            r["q"].append(st.quality[rows, arms].mean())
            r["c"].append(st.cost_usd[rows, arms].mean())
            regret = np.cumsum(best_u - got)
            r["ro"].append(regret[-1])
            r["rc"].append(np.sum(u[rows, per_topic] - got))
            r["rs"].append(np.sum(np.where(np.isfinite(u[:, single]), u[:, single], best_u) - got))
            r["curve"].append(regret[marks])
            r["slope"].append({name: late_slope(np.cumsum((best_u - got)[st.topics == k]))
                               for k, name in enumerate(st.topic_names)})  # fmt: skip
            if progress is not None:
                progress(steps)
    results = []
    for name in policies:
        r = per[name]
        curves = np.array(r["curve"])
        ci = (stats.t.ppf(0.975, seeds - 1) * curves.std(axis=0, ddof=1) / np.sqrt(seeds)) if seeds > 1 else np.zeros(len(marks))
        results.append(PolicyResult(
            name=name, quality=stat(r["q"]), cost_usd=stat(r["c"]), regret_oracle=stat(r["ro"]),
            regret_cluster=stat(r["rc"]), regret_single=stat(r["rs"]),
            cost_saved=stat([1 - c / d for c, d in zip(r["c"], dearest_c)]),
            quality_kept=stat([q / d for q, d in zip(r["q"], dearest_q)]),
            curve=tuple(curves.mean(axis=0).tolist()), curve_ci=tuple(np.nan_to_num(ci).tolist()),
            late_slope={k: float(np.nanmean([s[k] for s in r["slope"]])) for k in r["slope"][0]},
        ))  # fmt: skip
    return SimulateReport(
        scenario=sc.name, description=sc.description, steps=steps, seeds=seeds, cost_weight=cost_weight,
        checkpoints=tuple(int(x) + 1 for x in marks), policies=tuple(results),
        lai_robbins={k: float(np.mean(v)) for k, v in lr_all.items()}, seconds=time.perf_counter() - start,
    )  # fmt: skip


def markdown(report: SimulateReport) -> str:
    """The comparison table, then per-topic regret slopes beside the Lai-Robbins constants."""
    lines = [
        f"scenario {report.scenario}: {report.description}; {report.steps} steps x {report.seeds} seeds, "
        f"cost weight {report.cost_weight:g}; 95% intervals over seeds; regret in utility (quality - weight x cost)",
        "",
        "| policy | mean quality | mean cost (mUSD) | regret vs oracle | vs best per cluster | vs best single | "
        "cost saved vs most expensive | quality kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = Stat.show
    for p in report.policies:
        lines.append(f"| {p.name} | {fmt(p.quality)} | {fmt(p.cost_usd, 1000, 4)} | {fmt(p.regret_oracle, d=1)} | "
                     f"{fmt(p.regret_cluster, d=1)} | {fmt(p.regret_single, d=1)} | {fmt(p.cost_saved, 100, 1)}% | "
                     f"{fmt(p.quality_kept, 100, 1)}% |")  # fmt: skip
    topics = list(report.lai_robbins)
    lines += ["", "late slope of regret against log t (second half), per topic, beside the Lai-Robbins constant:", "",
              "| policy | " + " | ".join(topics) + " |", "|---|" + "---:|" * len(topics),
              "| Lai-Robbins | " + " | ".join(f"{report.lai_robbins[t]:.2f}" for t in topics) + " |"]  # fmt: skip
    for p in report.policies:
        if p.name in ("turnout", "thompson", "linear-ts", "linucb", "ucb", "epsilon-greedy"):
            lines.append(f"| {p.name} | " + " | ".join(f"{p.late_slope.get(t, float('nan')):.2f}" for t in topics) + " |")
    return "\n".join(lines)
