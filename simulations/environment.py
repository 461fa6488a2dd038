"""Simulated environments: topics of text prompts, a model pool that may change, users who judge.

A scenario is a list of phases; each phase has topic weights and a pool (a model's quality or
prices may differ between phases, a model may appear). ``stream`` draws one seeded sequence of
prompts and of user randomness that every policy then faces, so policies are compared on the
same traffic (common random numbers).

Users: an answer pleases with the model's quality on the prompt's topic. A user leaves thumbs
with probability ``feedback_rate`` (flipped with probability ``noise``); an unhappy user who
leaves none re-asks with probability ``reask_rate``, which the service turns into an implicit
reward of 0 (``learner.reward.IMPLICIT_REWARD``); otherwise there is no feedback.
"""

from __future__ import annotations

import msgspec
import numpy as np

from learner.costs import estimate_tokens
from learner.reward import IMPLICIT_REWARD
from simulations.pool import DEFAULT_POOL, DEFAULT_TOPICS, SimModel, Topic, answer, make_prompt

__all__ = ["SCENARIOS", "Phase", "Scenario", "Stream", "Users", "feedback", "outcome_rows", "scenario", "stream"]


class Users(msgspec.Struct, frozen=True):
    feedback_rate: float = 0.7
    noise: float = 0.05
    reask_rate: float = 0.5


class Phase(msgspec.Struct, frozen=True):
    start: float  # share of the steps at which the phase begins
    topics: dict[str, float]  # topic weights
    pool: tuple[SimModel, ...]


class Scenario(msgspec.Struct, frozen=True):
    name: str
    description: str
    phases: tuple[Phase, ...]
    topics: tuple[Topic, ...] = DEFAULT_TOPICS
    users: Users = Users()

    @property
    def models(self) -> tuple[str, ...]:
        """Every model that is ever in the pool, in order of first appearance."""
        return tuple(dict.fromkeys(m.name for p in self.phases for m in p.pool))


class Stream(msgspec.Struct, frozen=True):
    """One seeded run of traffic. Arrays are (T,) unless noted; (T, m) on the scenario's models.

    quality: expected quality of each model on the prompt (its topic's quality, this phase);
    cost_usd: what each model would bill; available: in the pool at that step.
    """

    prompts: tuple[str, ...]
    topics: np.ndarray  # index into topic_names
    topic_names: tuple[str, ...]
    models: tuple[str, ...]
    tokens: np.ndarray
    quality: np.ndarray
    cost_usd: np.ndarray
    available: np.ndarray
    price_per_token: np.ndarray  # (T, m) USD per prompt token (the price sheet in force)
    price_out_per_token: np.ndarray  # (T, m) USD per completion token (the same sheet)
    happy_u: np.ndarray  # uniform draws: the answer pleases when happy_u < quality
    feedback_u: np.ndarray  # (T, 3) uniform draws for thumbs, noise, re-ask


_LEGAL = Topic("legal", (
    "Is it legal to {} without a written contract?",
    "What are my rights if my landlord wants to {}?",
    "Draft a short clause that lets a company {}.",
    "Explain the liability if someone decides to {}.",
), (
    "sublet an apartment", "terminate an employee", "record a phone call", "use a copyrighted photo",
    "break a lease early", "keep a security deposit", "share customer data", "cancel a gym membership",
))  # fmt: skip


def _with(model: SimModel, **changes: object) -> SimModel:
    return msgspec.structs.replace(model, **changes)


def _scenarios() -> dict[str, Scenario]:
    pool = DEFAULT_POOL
    even = {t.name: 1.0 for t in DEFAULT_TOPICS}
    frontier, coder, chat, mini = pool
    degraded = _with(coder, quality={**coder.quality, "code": 0.45, "math": 0.4})
    legal_q = {"sim-frontier": 0.88, "sim-coder": 0.3, "sim-chat": 0.8, "sim-mini": 0.45}
    with_legal = tuple(_with(m, quality={**m.quality, "legal": legal_q[m.name]}) for m in pool)
    cheaper = _with(frontier, price_in_per_mtok=0.5, price_out_per_mtok=1.5)
    newcomer = SimModel(name="sim-newcomer", price_in_per_mtok=0.1, price_out_per_mtok=0.4, tier=0.6,
                        quality={"code": 0.93, "cooking": 0.6, "travel": 0.6, "math": 0.95},
                        latency_s=0.01, completion_tokens=250)  # fmt: skip
    return {
        "stationary": Scenario("stationary", "four topics, four models, nothing changes", (Phase(0.0, even, pool),)),
        "model-degrades": Scenario(
            "model-degrades", "halfway, sim-coder's quality on code and math drops (a provider regression)",
            (Phase(0.0, even, pool), Phase(0.5, even, (frontier, degraded, chat, mini)))),
        "new-topic": Scenario(
            "new-topic", "halfway, a legal topic appears and takes a third of the traffic",
            (Phase(0.0, even, with_legal), Phase(0.5, {**even, "legal": 2.0}, with_legal)),
            topics=DEFAULT_TOPICS + (_LEGAL,)),
        "price-change": Scenario(
            "price-change", "halfway, sim-frontier's prices fall tenfold",
            (Phase(0.0, even, pool), Phase(0.5, even, (cheaper, coder, chat, mini)))),
        "new-model-added": Scenario(
            "new-model-added", "at 40% of the run a cheap model that is best at code and math joins the pool",
            (Phase(0.0, even, pool), Phase(0.4, even, pool + (newcomer,)))),
        "cascade": Scenario(
            "cascade", "a cheap model good at cooking and travel, weak at code and math, and a strong one; "
            "a cascade (cheap first, the strong model when a simulated judge rejects) against routing, "
            "always-cheap and always-strong, over judge noise levels (simulations/cascade_sim.py)",
            (Phase(0.0, even, (chat, frontier)),)),
        "detection": Scenario(
            "detection", "at 3/8 of the run sim-coder's quality on code alone falls from 0.90 to 0.30; users leave "
            "thumbs on 2% of answers, a judge grades 20%: how much sooner it is noticed (simulations/detection.py)",
            (Phase(0.0, even, pool), Phase(0.375, even, (frontier, _with(coder, quality={**coder.quality, "code": 0.3}),
                                                         chat, mini))),
            users=Users(feedback_rate=0.02, noise=0.05, reask_rate=0.0)),
        "conversations": Scenario(
            "conversations", "multi-turn chats on the four topics, short follow-ups, some chats change topic; "
            "sticky routing against every turn afresh, with and without prompt-cache discounts "
            "(simulations/conversation_sim.py)", (Phase(0.0, even, pool),)),
    }  # fmt: skip


SCENARIOS: dict[str, Scenario] = _scenarios()


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}") from None


def stream(sc: Scenario, steps: int, rng: np.random.Generator) -> Stream:
    """Draw ``steps`` prompts and the users' randomness for scenario ``sc``."""
    models = sc.models
    col = {m: j for j, m in enumerate(models)}
    topic_names = tuple(t.name for t in sc.topics)
    by_name = {t.name: t for t in sc.topics}
    starts = np.array([int(round(p.start * steps)) for p in sc.phases])
    m = len(models)
    prompts: list[str] = []
    topics = np.zeros(steps, dtype=np.int64)
    quality = np.zeros((steps, m))
    cost = np.zeros((steps, m))
    avail = np.zeros((steps, m), dtype=bool)
    price = np.zeros((steps, m))
    price_out = np.zeros((steps, m))
    tokens = np.zeros(steps)
    for t in range(steps):
        phase = sc.phases[int(np.searchsorted(starts, t, side="right")) - 1]
        names = list(phase.topics)
        w = np.array([phase.topics[n] for n in names], dtype=np.float64)
        name = names[int(rng.choice(len(names), p=w / w.sum()))]
        text = make_prompt(by_name[name], rng)
        prompts.append(text)
        topics[t] = topic_names.index(name)
        tokens[t] = estimate_tokens(text)
        for model in phase.pool:
            j = col[model.name]
            _, out_tokens = answer(model, text)
            quality[t, j] = model.quality_on(name)
            cost[t, j] = (tokens[t] * model.price_in_per_mtok + out_tokens * model.price_out_per_mtok) / 1e6
            price[t, j] = model.price_in_per_mtok / 1e6
            price_out[t, j] = model.price_out_per_mtok / 1e6
            avail[t, j] = True
    return Stream(
        prompts=tuple(prompts), topics=topics, topic_names=topic_names, models=models, tokens=tokens,
        quality=quality, cost_usd=cost, available=avail, price_per_token=price, price_out_per_token=price_out,
        happy_u=rng.random(steps), feedback_u=rng.random((steps, 3)),
    )  # fmt: skip


def feedback(st: Stream, users: Users, t: int, arm: int) -> float | None:
    """The reward the learner gets for step t's answer by ``arm``: thumbs, a re-ask (0), or nothing."""
    happy = st.happy_u[t] < st.quality[t, arm]
    u_thumbs, u_noise, u_reask = st.feedback_u[t]
    if u_thumbs < users.feedback_rate:
        up = happy != (u_noise < users.noise)
        return 1.0 if up else 0.0
    if not happy and u_reask < users.reask_rate:
        return IMPLICIT_REWARD["re_request"]
    return None


def outcome_rows(sc: Scenario, n: int, rng: np.random.Generator) -> list:
    """``n`` prompts of the scenario's first phase as outcome-matrix rows (every model's score and cost).

    The score is the user's judgement (1 if pleased, with the model's quality on the topic),
    the cost what the model billed; ``task`` is the topic. For replays without real data.
    """
    from simulations.outcomes import OutcomeRow

    st = stream(msgspec.structs.replace(sc, phases=sc.phases[:1]), n, rng)
    happy = rng.random((n, len(st.models))) < st.quality
    return [
        OutcomeRow(id=f"{sc.name}-{t}", prompt=st.prompts[t], task=st.topic_names[st.topics[t]],
                   scores={m: float(happy[t, j]) for j, m in enumerate(st.models) if st.available[t, j]},
                   costs={m: float(st.cost_usd[t, j]) for j, m in enumerate(st.models) if st.available[t, j]})
        for t in range(n)
    ]  # fmt: skip
