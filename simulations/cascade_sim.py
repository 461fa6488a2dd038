"""``turnout simulate --scenario cascade``: a cascade against routing, always-cheap and always-strong.

A cascade calls the cheap model first and the strong one only when a gate rejects the cheap
answer; here the gate is the simulated judge (``simulations.judge``) grading the cheap answer's
true outcome (pleased or not) with noise. For every seed one stream is drawn and, for each judge
noise level, five policies face it (the same prompts, users and judge draws):

- ``always-cheap``, ``always-strong``: one model for everything;
- ``always-cascade``: the cascade for everything;
- ``routing``: Turnout as it ships over the two models;
- ``routing+cascade``: Turnout with the cascade as a third arm (``learner.cascade``): its
  posterior learns from the users' feedback on the final answer, its cost from its own
  escalations, and a rejection is judge-kind evidence of 0 about the cheap model.

Quality is the share of users pleased (the final answer's true outcome, not the noisy feedback);
cost the mean bill per request (both bills when the cascade escalates). The break-even
escalation rate is where the cascade costs what the strong model alone does,
``1 - cost(cheap) / cost(strong)`` (per topic: the cheap model's answers are shorter on some).
"""

from __future__ import annotations

from typing import Callable

import msgspec
import numpy as np

from learner.cascade import Cascade, break_even
from learner.embedding import Embedder
from learner.routing import Prices
from simulations.environment import Scenario, Stream, feedback, stream
from simulations.judge import SimulatedJudge, error_rates
from simulations.replay import Deployment, OfflineDeployment
from simulations.simulate import Stat, stat

__all__ = ["ArmResult", "CascadeReport", "NoiseLevel", "markdown", "simulate_cascade"]

NOISES = (0.1, 0.3, 0.6, 1.0)
POLICIES = ("always-cheap", "always-strong", "always-cascade", "routing", "routing+cascade")


class ArmResult(msgspec.Struct, frozen=True):
    name: str
    quality: Stat  # share of users pleased
    cost_usd: Stat  # mean cost per request
    escalated: Stat  # share of requests the cascade escalated
    cascade_share: Stat  # share of requests sent to the cascade
    # topic -> (quality, cost, escalated, cascade share), mean over seeds
    by_topic: dict[str, tuple[float, float, float, float]]


class NoiseLevel(msgspec.Struct, frozen=True):
    noise: float
    false_reject: float  # P(the gate rejects a good cheap answer)
    false_accept: float  # P(the gate accepts a bad one)
    arms: tuple[ArmResult, ...]


class CascadeReport(msgspec.Struct, frozen=True):
    scenario: str
    cheap: str
    strong: str
    steps: int
    seeds: int
    cost_weight: float
    threshold: float
    bias: float
    break_even: float  # escalation rate at which the cascade costs what the strong model does
    break_even_by_topic: dict[str, float]
    levels: tuple[NoiseLevel, ...]


def _prices(st: Stream) -> Prices:
    return Prices(st.models, tuple(float(x) * 1e6 for x in st.price_per_token[0]),
                  tuple(float(x) * 1e6 for x in st.price_out_per_token[0]))  # fmt: skip


def _fixed(st: Stream, judge: SimulatedJudge, z: np.ndarray, threshold: float, mode: str) -> dict[str, np.ndarray]:
    """A policy without learning: per step, pleased, cost, escalated, on the cascade."""
    rows = np.arange(len(st.prompts))
    good = st.happy_u[:, None] < st.quality  # (T, 2): would each model's answer please
    if mode in ("always-cheap", "always-strong"):
        j = 0 if mode == "always-cheap" else 1
        return {"q": good[:, j].astype(float), "c": st.cost_usd[rows, j], "e": np.zeros(len(rows)),
                "s": np.zeros(len(rows))}  # fmt: skip
    esc = np.asarray(judge.apply(good[:, 0].astype(float), z)) < threshold
    return {"q": np.where(esc, good[:, 1], good[:, 0]).astype(float),
            "c": st.cost_usd[:, 0] + esc * st.cost_usd[:, 1], "e": esc.astype(float), "s": np.ones(len(rows))}  # fmt: skip


def _routed(st: Stream, emb: np.ndarray, sc: Scenario, deployment: Deployment, cascade: Cascade | None,
            judge: SimulatedJudge, z: np.ndarray, learn_every: int) -> dict[str, np.ndarray]:  # fmt: skip
    """Turnout as it ships, with or without the cascade arm, learning from the users' feedback."""
    dep = msgspec.structs.replace(deployment, cascades=(cascade,) if cascade else ())
    sim = OfflineDeployment(st.models, emb.shape[1], dep, _prices(st))
    n = len(st.prompts)
    out = {k: np.zeros(n) for k in "qces"}
    for t in range(n):
        tokens = int(st.tokens[t]) + 4  # the request's tokens as the service counts them (one message)
        choice = sim.route(emb[t], tokens, None)
        if sim.cascade_of(choice.arm) < 0:
            final = choice.arm
            sim.record(choice, emb[t], tokens, feedback(st, sc.users, t, final), float(st.cost_usd[t, final]))
            cost = st.cost_usd[t, final]
        else:
            arm = sim.cascades[0]
            good = float(st.happy_u[t] < st.quality[t, arm.cheap])
            esc = bool(judge.apply(good, z[t]) < cascade.threshold)  # type: ignore[union-attr]
            attempts = ((arm.cheap, float(st.cost_usd[t, arm.cheap])),)
            if esc:
                attempts += ((arm.strong, float(st.cost_usd[t, arm.strong])),)
            final = attempts[-1][0]
            sim.record_cascade(choice, emb[t], tokens, feedback(st, sc.users, t, final), attempts,
                               "judge" if esc else "pass", "judge")  # fmt: skip
            cost = sum(c for _, c in attempts)
            out["e"][t], out["s"][t] = esc, 1.0
        out["q"][t], out["c"][t] = float(st.happy_u[t] < st.quality[t, final]), cost
        if sim.routed % learn_every == 0:
            sim.learn()
    return out


def simulate_cascade(
    sc: Scenario, embedder: Embedder, deployment: Deployment, *, steps: int = 3000, seeds: int = 5,
    base_seed: int = 0, learn_every: int = 10, noises: tuple[float, ...] = NOISES, bias: float = 0.0,
    threshold: float = 0.5, progress: Callable[[int], None] | None = None,
) -> CascadeReport:  # fmt: skip
    """The five policies of the module's docstring on ``seeds`` streams, at each judge noise level."""
    per: dict[tuple[float, str], list[dict[str, np.ndarray]]] = {}
    topics: list[np.ndarray] = []
    costs: list[np.ndarray] = []
    names: tuple[str, ...] = ()
    for seed in range(seeds):
        st = stream(sc, steps, np.random.default_rng([base_seed, seed]))
        cheap, strong = st.models
        names = st.topic_names
        unique = list(dict.fromkeys(st.prompts))
        table = dict(zip(unique, embedder.embed(unique)))
        emb = np.stack([table[p] for p in st.prompts])
        z = np.random.default_rng([base_seed, seed, 13]).standard_normal(steps)  # the judge's draws
        dep = msgspec.structs.replace(deployment, routing=msgspec.structs.replace(deployment.routing, seed=seed))
        topics.append(st.topics)
        costs.append(st.cost_usd)
        plain = _routed(st, emb, sc, dep, None, SimulatedJudge(), z, learn_every)
        if progress is not None:
            progress(steps)
        for noise in noises:
            judge = SimulatedJudge(noise, bias)
            cascade = Cascade("cascade", cheap, strong, gate="judge", threshold=threshold)
            for name in POLICIES:
                if name == "routing":
                    got = plain
                elif name == "routing+cascade":
                    got = _routed(st, emb, sc, dep, cascade, judge, z, learn_every)
                    if progress is not None:
                        progress(steps)
                else:
                    got = _fixed(st, judge, z, threshold, name)
                per.setdefault((noise, name), []).append(got)
    c_all = np.concatenate(costs)
    t_all = np.concatenate(topics)
    by_topic_be = {n: break_even(float(c_all[t_all == k, 0].mean()), float(c_all[t_all == k, 1].mean()))
                   for k, n in enumerate(names) if (t_all == k).any()}  # fmt: skip
    levels = []
    for noise in noises:
        arms = []
        for name in POLICIES:
            runs = per[(noise, name)]
            over = lambda key: stat([float(r[key].mean()) for r in runs])  # noqa: E731
            by = {}
            for k, topic in enumerate(names):
                vals = [[float(r[key][tp == k].mean()) for r, tp in zip(runs, topics) if (tp == k).any()] for key in "qces"]
                by[topic] = tuple(float(np.mean(v)) for v in vals)
            arms.append(ArmResult(name, over("q"), over("c"), over("e"), over("s"), by))
        fr, fa = error_rates(SimulatedJudge(noise, bias), threshold)
        levels.append(NoiseLevel(noise, fr, fa, tuple(arms)))
    return CascadeReport(
        scenario=sc.name, cheap=st.models[0], strong=st.models[1], steps=steps, seeds=seeds,
        cost_weight=deployment.cost_weight, threshold=threshold, bias=bias,
        break_even=break_even(float(c_all[:, 0].mean()), float(c_all[:, 1].mean())), break_even_by_topic=by_topic_be,
        levels=tuple(levels),
    )  # fmt: skip


def markdown(r: CascadeReport) -> str:
    fmt = lambda s, k=1.0, d=3: s.show(k, d)  # noqa: E731
    lines = [
        f"scenario {r.scenario}: cheap {r.cheap}, strong {r.strong}; {r.steps} steps x {r.seeds} seeds, cost weight "
        f"{r.cost_weight:g}; the gate: judge grade >= {r.threshold:g} (bias {r.bias:g}); 95% intervals over seeds",
        "",
        f"break-even escalation rate (the cascade costs what {r.strong} alone does): {r.break_even:.1%} overall; "
        + ", ".join(f"{t} {v:.1%}" for t, v in r.break_even_by_topic.items()),
        "",
        "| judge noise | false reject / accept | policy | users pleased | mean cost (mUSD) | utility | escalated | "
        "to the cascade |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for lv in r.levels:
        for a in lv.arms:
            u = a.quality.mean - r.cost_weight * a.cost_usd.mean
            lines.append(f"| {lv.noise:g} | {lv.false_reject:.1%} / {lv.false_accept:.1%} | {a.name} | {fmt(a.quality)} | "
                         f"{fmt(a.cost_usd, 1000, 3)} | {u:.3f} | {fmt(a.escalated, 100, 1)}% | "
                         f"{fmt(a.cascade_share, 100, 1)}% |")  # fmt: skip
    topics = list(r.break_even_by_topic)
    lines += ["", "per topic, routing+cascade (mean over seeds): share sent to the cascade / its escalation rate "
              "among them / users pleased; always-cascade's escalation rate", "",
              "| judge noise | " + " | ".join(topics) + " |", "|---:|" + "---|" * len(topics)]  # fmt: skip
    for lv in r.levels:
        rc = next(a for a in lv.arms if a.name == "routing+cascade")
        ac = next(a for a in lv.arms if a.name == "always-cascade")
        cells = []
        for t in topics:
            q, _, e, s = rc.by_topic[t]
            cells.append(f"{s:.0%} / {e / s if s else 0:.0%} / {q:.2f}; {ac.by_topic[t][2]:.0%}")
        lines.append(f"| {lv.noise:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
