"""``turnout replay --cascade CHEAP,STRONG``: where a cascade beats plain routing on real outcomes.

The same shuffled prompts are replayed twice through the offline deployment (``simulations.replay``):
plain routing over the pool, and routing with the cascade as one more arm (``learner.cascade``).
When the router chooses the cascade, the cheap model answers, the gate reads *only the cheap
model's outcome* through the simulated judge (``simulations.judge``: its score plus noise and
bias, against the threshold), and on a rejection the strong model answers too and both bills
are paid. Three fixed policies set the scale: always the cheap model, always the strong one,
and always the cascade (the same judge draws).

Per ``task`` (the outcome file's label, read here for the report only; routing never sees it)
and overall: quality, cost, utility at the run's cost weight, the share of prompts the router
sent to the cascade and its escalation rate there, the break-even escalation rate (where the
cascade costs what the strong model does), and whether the cascade arm won or lost against
plain routing.
"""

from __future__ import annotations

import msgspec
import numpy as np

from learner.cascade import Cascade, break_even
from simulations.judge import SimulatedJudge
from simulations.outcomes import Outcomes
from simulations.replay import Deployment, ReplayConfig, ReplayRun, replay

__all__ = ["CascadeReplay", "TaskRow", "cascade_replay", "markdown"]


class TaskRow(msgspec.Struct, frozen=True):
    task: str
    prompts: int
    plain: tuple[float, float]  # routing: mean quality, mean cost (USD)
    cascade_arm: tuple[float, float]  # routing with the cascade arm
    to_cascade: float  # share of prompts routed to the cascade
    escalated: float  # escalation rate among them
    cheap: tuple[float, float]
    strong: tuple[float, float]
    always_cascade: tuple[float, float, float]  # quality, cost, escalation rate
    break_even: float
    gain: float  # utility with the cascade arm - utility of plain routing


class CascadeReplay(msgspec.Struct, frozen=True):
    cascade: Cascade
    judge_noise: float
    judge_bias: float
    cost_weight: float
    seed: int
    rows: tuple[TaskRow, ...]  # per task, then "all"


def _fixed(outcomes: Outcomes, c_cheap: int, c_strong: int, cascade: Cascade, judge: SimulatedJudge,
           seed: int) -> tuple[np.ndarray, ...]:  # fmt: skip
    s, c = np.nan_to_num(outcomes.scores), np.nan_to_num(outcomes.costs)
    grade = np.asarray(judge.grade(s[:, c_cheap], np.random.default_rng([seed, 17])))
    esc = grade < cascade.threshold
    q = np.where(esc, s[:, c_strong], s[:, c_cheap])
    return s[:, c_cheap], c[:, c_cheap], s[:, c_strong], c[:, c_strong], q, c[:, c_cheap] + esc * c[:, c_strong], esc


def cascade_replay(outcomes: Outcomes, embeddings: np.ndarray, deployment: Deployment, config: ReplayConfig,
                   cascade: Cascade) -> tuple[CascadeReplay, ReplayRun, ReplayRun]:  # fmt: skip
    """Plain routing and routing with ``cascade`` on the same shuffle; the report and both runs."""
    for role, name in (("cheap", cascade.cheap), ("strong", cascade.strong)):
        if name not in outcomes.models:
            raise ValueError(f"--cascade: the {role} model {name!r} is not in the files ({', '.join(outcomes.models)})")
    both = outcomes.available[:, [outcomes.models.index(cascade.cheap), outcomes.models.index(cascade.strong)]]
    if not both.all(axis=1).any():
        raise ValueError(f"--cascade: no prompt has outcomes of both {cascade.cheap} and {cascade.strong}")
    plain_dep = msgspec.structs.replace(deployment, cascades=())
    with_dep = msgspec.structs.replace(deployment, cascades=(cascade,))
    plain = replay(outcomes, embeddings, plain_dep, config)
    arm = replay(outcomes, embeddings, with_dep, config)
    w = deployment.cost_weight if config.cost_weight is None else config.cost_weight
    judge = SimulatedJudge(config.judge_noise, config.judge_bias)
    cheap_q, cheap_c, strong_q, strong_c, casc_q, casc_c, casc_e = _fixed(
        outcomes, outcomes.models.index(cascade.cheap), outcomes.models.index(cascade.strong), cascade, judge,
        config.seed)  # fmt: skip
    tasks = np.array(outcomes.tasks)
    rows = []
    labels = sorted(set(outcomes.tasks)) if len(set(outcomes.tasks)) > 1 else []
    for label in [*labels, "all"]:
        in_file = np.ones(len(outcomes), dtype=bool) if label == "all" else tasks == label
        fixed = in_file & both.all(axis=1)  # the fixed policies: prompts both models answered
        p, a = in_file[plain.rows], in_file[arm.rows]
        sent = arm.cheap[a] >= 0
        u_plain = plain.rewards[p].mean() - w * plain.costs[p].mean()
        u_arm = arm.rewards[a].mean() - w * arm.costs[a].mean()
        rows.append(TaskRow(
            task=label, prompts=int(in_file.sum()),
            plain=(float(plain.rewards[p].mean()), float(plain.costs[p].mean())),
            cascade_arm=(float(arm.rewards[a].mean()), float(arm.costs[a].mean())),
            to_cascade=float(sent.mean()), escalated=float(arm.escalated[a][sent].mean()) if sent.any() else 0.0,
            cheap=(float(cheap_q[fixed].mean()), float(cheap_c[fixed].mean())),
            strong=(float(strong_q[fixed].mean()), float(strong_c[fixed].mean())),
            always_cascade=(float(casc_q[fixed].mean()), float(casc_c[fixed].mean()), float(casc_e[fixed].mean())),
            break_even=break_even(float(cheap_c[fixed].mean()), float(strong_c[fixed].mean())),
            gain=float(u_arm - u_plain),
        ))  # fmt: skip
    return CascadeReplay(cascade, config.judge_noise, config.judge_bias, float(w), config.seed, tuple(rows)), plain, arm


def markdown(r: CascadeReplay) -> str:
    c = r.cascade
    lines = [
        f"cascade {c.cheap} -> {c.strong}, gate: simulated judge (noise {r.judge_noise:g}, bias {r.judge_bias:g}) "
        f"grade >= {c.threshold:g}; cost weight {r.cost_weight:g}; seed {r.seed}; quality / cost in mUSD per prompt",
        "",
        "| task | prompts | routing | routing + cascade arm | to the cascade | its escalation | always cheap | "
        "always strong | always cascade (escalation) | break-even escalation | utility gain | cascade |",
        "|---|---:|---|---|---:|---:|---|---|---|---:|---:|---|",
    ]  # fmt: skip
    qc = lambda p: f"{p[0]:.3f} / {p[1] * 1000:.3f}"  # noqa: E731
    for t in r.rows:
        lines.append(f"| {t.task} | {t.prompts} | {qc(t.plain)} | {qc(t.cascade_arm)} | {t.to_cascade:.1%} | "
                     f"{t.escalated:.1%} | {qc(t.cheap)} | {qc(t.strong)} | {qc(t.always_cascade)} "
                     f"({t.always_cascade[2]:.1%}) | {t.break_even:.1%} | {t.gain:+.4f} | "
                     f"{'wins' if t.gain > 0 else 'loses'} |")  # fmt: skip
    return "\n".join(lines)
