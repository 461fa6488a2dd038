"""How much sooner judge feedback notices a model that got worse: a seeded simulation.

Scenario ``detection`` (``simulations.environment``): the pool of ``turnout simulate`` (four
models, four topics). sim-coder answers code best for its price, until at 3/8 of the run its
quality on code (one topic, one cluster) falls from 0.90 to 0.30; nothing else changes.
Turnout as it ships (the offline deployment: the service's decision,
records and learning cycle, one every ``learn_every`` prompts) routes the same stream in two
arms. Until the change both learn alike, from thumbs on the scenario's 2% of answers (5% of
them flipped, no re-asks) and a judge (``simulations.judge``, noise ``judge_noise``) grading
``judge_rate`` (20%) of answers, drawn independently, as feedback of kind ``judge`` with the
deployment's weight (``[learner.feedback_weights] judge``, 0.5 by default): so both hold the
same snapshot when the model degrades (with thumbs alone from the start, the router had not even
learned that sim-coder is the model for code by then: its share of code was 6-10% in four seeds
of five). From the change on:

- ``thumbs``: the thumbs alone;
- ``thumbs+judge``: the thumbs and the judge.

Detection: the degraded model's share of the code prompts (the topic is known to the simulation,
never to the router), over a trailing window of ``window`` code prompts, falls below half of its
share over the ``window`` code prompts before the degradation. The delay is counted in requests
(all topics) from the change; a run that does not detect within the horizon is censored at
the horizon (reported as such).
"""

from __future__ import annotations

from typing import Callable

import msgspec
import numpy as np

from learner.embedding import Embedder
from learner.routing import Prices
from simulations.environment import Scenario, Users, stream
from simulations.judge import SimulatedJudge
from simulations.replay import Deployment, OfflineDeployment

__all__ = ["DetectionReport", "markdown", "simulate_detection"]

DEGRADED = "sim-coder"
TOPIC = "code"


class DetectionReport(msgspec.Struct, frozen=True):
    steps_before: int  # requests before the degradation
    horizon: int  # requests after it
    thumbs_rate: float
    judge_rate: float
    judge_noise: float
    judge_weight: float
    window: int
    seeds: tuple[int, ...]
    share_before: dict[str, list[float]]  # arm -> per seed, the degraded model's share of code before
    delay: dict[str, list[int]]  # arm -> per seed, requests until detection (the horizon if censored)
    detected: dict[str, list[bool]]

    def ratio(self) -> list[float]:
        """Per seed: the delay with thumbs alone over the delay with the judge (a lower bound where censored)."""
        return [t / max(j, 1) for t, j in zip(self.delay["thumbs"], self.delay["thumbs+judge"])]


def _delay(code_steps: np.ndarray, on_model: np.ndarray, degrade_at: int, window: int,
           horizon: int) -> tuple[int, float, bool]:  # fmt: skip
    """code_steps: (n,) the steps of the code prompts, ascending; on_model: (n,) bool, routed to the
    degraded model. Returns (delay in requests, share before, detected)."""
    before = on_model[code_steps < degrade_at][-window:]
    share = float(before.mean()) if len(before) else 0.0
    after = np.flatnonzero(code_steps >= degrade_at)
    for n in range(window, len(after) + 1):  # the trailing window of code prompts, all after the change
        idx = after[n - window : n]
        if on_model[idx].mean() < share / 2:
            return int(code_steps[idx[-1]] - degrade_at + 1), share, True
    return horizon, share, False


def _run(st, emb, dep: Deployment, users: Users, judge: SimulatedJudge, judge_until: int, judge_rate: float,
         z: np.ndarray, u_judge: np.ndarray, learn_every: int) -> np.ndarray:  # fmt: skip
    prices = Prices(st.models, tuple(float(x) * 1e6 for x in st.price_per_token[0]),
                    tuple(float(x) * 1e6 for x in st.price_out_per_token[0]))  # fmt: skip
    sim = OfflineDeployment(st.models, emb.shape[1], dep, prices)
    arms = np.zeros(len(st.prompts), dtype=np.int64)
    for t in range(len(st.prompts)):
        tokens = int(st.tokens[t]) + 4
        choice = sim.route(emb[t], tokens, None)
        a = arms[t] = choice.arm
        good = st.happy_u[t] < st.quality[t, a]
        u_thumbs, u_noise, _ = st.feedback_u[t]
        thumbs = float(good != (u_noise < users.noise)) if u_thumbs < users.feedback_rate else None
        graded = float(judge.apply(float(good), z[t])) if t < judge_until and u_judge[t] < judge_rate else None
        sim.record(choice, emb[t], tokens, thumbs, float(st.cost_usd[t, a]), judge=graded)
        if sim.routed % learn_every == 0:
            sim.learn()
    return arms


def simulate_detection(
    sc: Scenario, embedder: Embedder, deployment: Deployment, *, steps: int = 16000,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4), judge_rate: float = 0.2, judge_noise: float = 0.3, window: int = 50,
    learn_every: int = 10, change_at: int | None = None, progress: Callable[[int], None] | None = None,
) -> DetectionReport:  # fmt: skip
    """Both arms of the module's docstring on one stream per seed of scenario ``detection``:
    ``steps`` requests, the model degrading after ``change_at`` (default: at the scenario's
    second phase)."""
    total = steps
    steps_before = int(round(sc.phases[1].start * steps)) if change_at is None else change_at
    if not 0 < steps_before < total:
        raise ValueError(f"the change must come after the first request and before the last ({steps_before} of {total})")
    sc = msgspec.structs.replace(sc, phases=(sc.phases[0], msgspec.structs.replace(sc.phases[1], start=steps_before / total)))
    horizon = total - steps_before
    users = sc.users
    thumbs_rate = users.feedback_rate
    judge = SimulatedJudge(judge_noise)
    share: dict[str, list[float]] = {"thumbs": [], "thumbs+judge": []}
    delay: dict[str, list[int]] = {"thumbs": [], "thumbs+judge": []}
    found: dict[str, list[bool]] = {"thumbs": [], "thumbs+judge": []}
    cache: dict[str, np.ndarray] = {}
    for seed in seeds:
        st = stream(sc, total, np.random.default_rng([seed, 51]))
        new = [p for p in dict.fromkeys(st.prompts) if p not in cache]
        if new:
            cache.update(zip(new, embedder.embed(new)))
        emb = np.stack([cache[p] for p in st.prompts])
        rng = np.random.default_rng([seed, 52])
        z, u_judge = rng.standard_normal(total), rng.random(total)
        dep = msgspec.structs.replace(deployment, routing=msgspec.structs.replace(deployment.routing, seed=seed))
        code = np.flatnonzero(st.topics == st.topic_names.index(TOPIC))
        j = st.models.index(DEGRADED)
        for arm, until in (("thumbs", steps_before), ("thumbs+judge", total)):
            arms = _run(st, emb, dep, users, judge, until, judge_rate, z, u_judge, learn_every)
            d, s, ok = _delay(code, arms[code] == j, steps_before, window, horizon)
            share[arm].append(s)
            delay[arm].append(d)
            found[arm].append(ok)
            if progress is not None:
                progress(total)
    return DetectionReport(steps_before, horizon, thumbs_rate, judge_rate, judge_noise,
                           deployment.learner.rewards.judge, window, tuple(seeds), share, delay, found)  # fmt: skip


def markdown(r: DetectionReport) -> str:
    lines = [
        f"{DEGRADED}'s quality on {TOPIC} falls from 0.90 to 0.30 after {r.steps_before} requests; thumbs on "
        f"{r.thumbs_rate:.0%} of answers, the judge (noise {r.judge_noise:g}, weight {r.judge_weight:g}) on "
        f"{r.judge_rate:.0%}; detected: its share of {TOPIC} prompts over the last {r.window} falls below half of "
        f"its share before; delay in requests after the change (horizon {r.horizon})",
        "",
        "| seed | share before (thumbs / +judge) | delay, thumbs alone | delay, thumbs + judge | ratio |",
        "|---:|---|---:|---:|---:|",
    ]  # fmt: skip
    for i, seed in enumerate(r.seeds):
        cell = lambda arm: f"{r.delay[arm][i]}" + ("" if r.detected[arm][i] else " (not detected)")  # noqa: E731
        lines.append(f"| {seed} | {r.share_before['thumbs'][i]:.2f} / {r.share_before['thumbs+judge'][i]:.2f} | "
                     f"{cell('thumbs')} | {cell('thumbs+judge')} | {r.ratio()[i]:.1f}x |")  # fmt: skip
    t, j = np.median(r.delay["thumbs"]), np.median(r.delay["thumbs+judge"])
    lines += ["", f"median delay: thumbs alone {t:.0f} requests, with the judge {j:.0f} ({t / max(j, 1):.1f}x sooner)"]
    return "\n".join(lines)
