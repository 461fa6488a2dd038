"""``turnout simulate --scenario conversations``: sticky routing against routing every turn afresh.

Users hold multi-turn chats on the scenario's topics (2 to ``max_turns`` turns, interleaved in
time). A later turn is either another question on the chat's topic or a short topic-free
follow-up ("Can you make it shorter?") whose quality is the chat's topic's; with probability
``topic_switch`` a chat moves to another topic halfway. A turn's prompt is the whole chat so far
(its earlier questions and answers, then the new message), so prompts grow with the chat; the
model that answered the turn before bills that prefix at its cached-input price
(``1 - cache_discount`` of its input price: Anthropic's cache reads cost a tenth, OpenAI's a half).

Three arms route the same chats with Turnout's router and learner (an offline deployment):

- ``afresh``: every turn on its own message, as without conversations;
- ``context``: on the decayed mix of the chat's user turns (``learner.conversation``), afresh;
- ``sticky``: in context, and kept on the model of the turn before unless switching gains more
  than ``switch_margin`` after the lost discount: the service's own rule (``switch_gain``,
  ``kept_choice``) on the deployment's view, its prices and the configured cached price.

Each runs with the cache discount and without one (cached input at full price: stickiness then
saves nothing and only its margin holds a chat). Quality is the expected quality of the model
that answered (the users' draws drive the feedback the learner sees); cost is the bill per turn;
switches are changes of model between consecutive turns of a chat. Intervals over seeds.

Two comparisons. **Learning**: each arm learns from nothing on its own traffic, so an arm's cost
is mostly where its learner happened to settle. **Frozen**: one deployment first learns on other
chats of the same seed (routed in context), then every arm routes the same evaluation chats on
that one snapshot, learning nothing, with the same uniform draw per turn: the arms then differ
only by how they route a turn, which is the effect of stickiness itself (a paired comparison).
"""

from __future__ import annotations

from typing import Callable

import msgspec
import numpy as np

from learner.clusters import assign
from learner.conversation import kept_choice, routed_on, switch_gain
from learner.costs import estimate_tokens
from learner.embedding import Embedder
from learner.routing import Prices, decide
from simulations.environment import Scenario, Users
from simulations.pool import answer, make_prompt
from simulations.replay import Deployment, OfflineDeployment
from simulations.simulate import Stat, stat

__all__ = ["ARMS", "ConversationArm", "ConversationReport", "Chats", "chats", "markdown", "simulate_conversations"]

ARMS = ("afresh", "context", "sticky")
FOLLOW_UPS = ("Can you make it shorter?", "Explain that step by step.", "Give me another example.",
              "Why is that?", "And now the same, but simpler.", "What would you change?",
              "Can you say more about the second point?", "Is there a cheaper way?")  # fmt: skip


class Chats(msgspec.Struct, frozen=True):
    """Turns of every chat of one seed, in arrival order. Arrays are (T,)."""

    texts: tuple[str, ...]
    chat: np.ndarray  # which chat a turn belongs to
    topic: np.ndarray  # the topic whose quality the turn is judged by (index into the scenario's topics)
    happy_u: np.ndarray  # the answer pleases when happy_u < quality
    feedback_u: np.ndarray  # (T, 3): thumbs, noise, re-ask
    n_chats: int


def chats(sc: Scenario, n_chats: int, rng: np.random.Generator, max_turns: int = 8, follow_up: float = 0.4,
          topic_switch: float = 0.15) -> Chats:  # fmt: skip
    """Draw ``n_chats`` chats of the scenario's first phase, their turns interleaved in time."""
    phase = sc.phases[0]
    names = list(phase.topics)
    w = np.array([phase.topics[n] for n in names], dtype=np.float64)
    by_name = {t.name: t for t in sc.topics}
    topic_names = [t.name for t in sc.topics]
    rows: list[tuple[float, str, int, int]] = []  # (time, text, chat, topic)
    for c in range(n_chats):
        turns = int(rng.integers(2, max_turns + 1))
        topic = names[int(rng.choice(len(names), p=w / w.sum()))]
        switch_at = turns // 2 if turns >= 4 and rng.random() < topic_switch else -1
        start, gap = rng.random() * n_chats, 1.0 + 2.0 * rng.random()
        for i in range(turns):
            if i == switch_at:
                topic = names[int(rng.choice(len(names), p=w / w.sum()))]
            if i > 0 and i != switch_at and rng.random() < follow_up:
                text = FOLLOW_UPS[int(rng.integers(len(FOLLOW_UPS)))]
            else:
                text = make_prompt(by_name[topic], rng)
            rows.append((start + i * gap, text, c, topic_names.index(topic)))
    rows.sort(key=lambda r: r[0])
    n = len(rows)
    return Chats(texts=tuple(r[1] for r in rows), chat=np.array([r[2] for r in rows]),
                 topic=np.array([r[3] for r in rows]), happy_u=rng.random(n), feedback_u=rng.random((n, 3)),
                 n_chats=n_chats)  # fmt: skip


class ConversationArm(msgspec.Struct, frozen=True):
    name: str
    discount: float  # the cache discount the run was priced with
    quality: Stat  # mean expected quality of the answering model
    cost_usd: Stat  # mean bill per turn
    switches: Stat  # changes of model per chat
    kept: Stat  # share of later turns kept on their model (sticky only)
    cost_by_seed: tuple[float, ...] = ()  # mean bill per turn of each seed (USD)
    quality_by_seed: tuple[float, ...] = ()
    utility: Stat | None = None  # quality - cost_weight x cost per turn: what the router maximises


class ConversationReport(msgspec.Struct, frozen=True):
    scenario: str
    chats: int
    seeds: int
    cache_discount: float
    switch_margin: float
    context_decay: float
    arms: tuple[ConversationArm, ...]
    cost_saved: Stat  # sticky against afresh, with the discount: 1 - cost / cost
    quality_change: Stat  # sticky - afresh, with the discount
    cost_weight: float = 0.0  # quality points one US dollar is worth (the deployment's)
    frozen: tuple[ConversationArm, ...] = ()  # the same arms on one learned snapshot, learning off
    frozen_cost_saved: Stat | None = None
    frozen_quality_change: Stat | None = None


def _feedback(users: Users, happy: bool, u: np.ndarray) -> float | None:
    if u[0] < users.feedback_rate:
        return 1.0 if happy != (u[1] < users.noise) else 0.0
    return 0.0 if not happy and u[2] < users.reask_rate else None


def _deployment(sc: Scenario, deployment: Deployment, dim: int) -> OfflineDeployment:
    pool = sc.phases[0].pool
    models = tuple(m.name for m in pool)
    prices = Prices(models, tuple(m.price_in_per_mtok for m in pool), tuple(m.price_out_per_mtok for m in pool))
    return OfflineDeployment(models, dim, deployment, prices)


def _run(ch: Chats, emb: np.ndarray, sc: Scenario, deployment: Deployment, arm: str, discount: float, decay: float,
         margin: float, learn_every: int, sim: OfflineDeployment | None = None, learn: bool = True,
         ) -> dict[str, float]:  # fmt: skip
    """One arm over the chats on ``sim`` (a new deployment by default), learning as it goes; or,
    with ``learn`` off, on ``sim``'s snapshot as it stands, with one row draw per turn that is the
    same for every arm."""
    pool = sc.phases[0].pool
    sim = _deployment(sc, deployment, emb.shape[1]) if sim is None else sim
    price_in = np.array(sim.prices.price_in_per_mtok) / 1e6
    price_out = np.array(sim.prices.price_out_per_mtok) / 1e6
    rows = np.random.default_rng([deployment.routing.seed, 31]).integers(1 << 30, size=len(ch.texts))
    contexts: list[np.ndarray | None] = [None] * ch.n_chats
    previous = np.full(ch.n_chats, -1)
    prefix = np.zeros(ch.n_chats, dtype=np.int64)  # tokens of the chat so far
    quality = cost = switches = kept = later = 0.0
    for t, text in enumerate(ch.texts):
        c = int(ch.chat[t])
        summed, at = routed_on(contexts[c], emb[t], decay if arm != "afresh" else 0.0)
        tokens = int(prefix[c]) + estimate_tokens(text) + 4
        view = sim.view
        choice, prev = None, int(previous[c])
        if arm == "sticky" and prev >= 0:  # the service's rule, on what the deployment knows
            cluster, cmargin = assign(at, view.centroids)
            costs = view.costs(cluster, tokens)
            saved = prefix[c] * price_in[prev] * discount  # as its configured cached price says
            if switch_gain(view, cluster, costs, sim.current_weight, deployment.latency_weight, None, prev,
                           saved) <= margin:  # fmt: skip
                choice = kept_choice(view, cluster, cmargin, costs, sim.current_weight, deployment.latency_weight,
                                     None, prev, saved)  # fmt: skip
        kept += choice is not None
        if choice is None and not learn:
            choice = decide(view, at, tokens, sim.current_weight, deployment.latency_weight, None, int(rows[t]))
        elif choice is None:
            choice = sim.route(at, tokens, None)
        j = choice.arm
        model = pool[j]
        _, completion = answer(model, text)
        full = tokens * price_in[j] + completion * price_out[j]
        bill = full - (prefix[c] * price_in[j] * discount if j == prev else 0.0)
        q = model.quality_on(sc.topics[int(ch.topic[t])].name)
        reward = _feedback(sc.users, bool(ch.happy_u[t] < q), ch.feedback_u[t])
        if learn:  # the learner is told the undiscounted bill: it infers the completion tokens from it
            sim.record(choice, at, tokens, reward, full)
            if sim.routed % learn_every == 0:
                sim.learn()
        quality += q
        cost += bill
        later += prev >= 0
        switches += prev >= 0 and j != prev
        previous[c], contexts[c] = j, summed
        prefix[c] = tokens + completion + 4
    n = len(ch.texts)
    return {"q": quality / n, "c": cost / n, "s": switches / ch.n_chats, "k": kept / max(later, 1.0)}


def simulate_conversations(
    sc: Scenario, embedder: Embedder, deployment: Deployment, *, n_chats: int = 400, seeds: int = 5,
    base_seed: int = 0, learn_every: int = 10, cache_discount: float = 0.9, switch_margin: float = 0.02,
    context_decay: float = 0.5, progress: Callable[[int], None] | None = None,
) -> ConversationReport:  # fmt: skip
    """Each arm, with the cache discount and without, on ``seeds`` draws of ``n_chats`` chats."""
    runs = [(a, d) for d in (cache_discount, 0.0) for a in ARMS]
    out: dict[tuple[str, float], dict[str, list[float]]] = {r: {k: [] for k in "qcsk"} for r in runs}
    held: dict[tuple[str, float], dict[str, list[float]]] = {r: {k: [] for k in "qcsk"} for r in runs}

    def embedded(ch: Chats) -> np.ndarray:
        unique = list(dict.fromkeys(ch.texts))
        table = dict(zip(unique, embedder.embed(unique)))
        return np.stack([table[p] for p in ch.texts])

    for seed in range(seeds):
        ch = chats(sc, n_chats, np.random.default_rng([base_seed, seed, 12]))
        emb = embedded(ch)
        dep = msgspec.structs.replace(deployment, routing=msgspec.structs.replace(deployment.routing, seed=seed))
        for arm, d in runs:
            got = _run(ch, emb, sc, dep, arm, d, context_decay, switch_margin, learn_every)
            for k, v in got.items():
                out[arm, d][k].append(v)
            if progress is not None:
                progress(len(ch.texts))
        # frozen: learn once on other chats of this seed, then every arm on that one snapshot
        warm = chats(sc, n_chats, np.random.default_rng([base_seed, seed, 13]))
        learned = _deployment(sc, dep, emb.shape[1])
        _run(warm, embedded(warm), sc, dep, "context", cache_discount, context_decay, switch_margin, learn_every,
             learned)  # fmt: skip
        for arm, d in runs:
            got = _run(ch, emb, sc, dep, arm, d, context_decay, switch_margin, learn_every, learned, learn=False)
            for k, v in got.items():
                held[arm, d][k].append(v)
        if progress is not None:
            progress(len(warm.texts))

    w = deployment.cost_weight

    def table(got: dict[tuple[str, float], dict[str, list[float]]]) -> tuple[ConversationArm, ...]:
        return tuple(ConversationArm(a, d, stat(got[a, d]["q"]), stat(got[a, d]["c"]), stat(got[a, d]["s"]),
                                     stat(got[a, d]["k"]), tuple(map(float, got[a, d]["c"])),
                                     tuple(map(float, got[a, d]["q"])),
                                     stat([q - w * c for q, c in zip(got[a, d]["q"], got[a, d]["c"])]))
                     for a, d in runs)  # fmt: skip

    def saved(got: dict[tuple[str, float], dict[str, list[float]]]) -> tuple[Stat, Stat]:
        fresh, sticky = got["afresh", cache_discount], got["sticky", cache_discount]
        return (stat([1 - b / a for a, b in zip(fresh["c"], sticky["c"])]),
                stat([b - a for a, b in zip(fresh["q"], sticky["q"])]))  # fmt: skip

    (cost_saved, quality_change), (frozen_saved, frozen_change) = saved(out), saved(held)
    return ConversationReport(
        scenario=sc.name, chats=n_chats, seeds=seeds, cache_discount=cache_discount, switch_margin=switch_margin,
        context_decay=context_decay, arms=table(out), cost_weight=w, cost_saved=cost_saved, quality_change=quality_change,
        frozen=table(held), frozen_cost_saved=frozen_saved, frozen_quality_change=frozen_change,
    )  # fmt: skip


def markdown(r: ConversationReport) -> str:
    fmt = lambda s, k=1.0, d=3: s.show(k, d)  # noqa: E731
    head = ["| arm | cache discount | quality | mean cost (mUSD/turn) | utility | switches per chat | later turns kept |",
            "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip

    def rows(arms: tuple[ConversationArm, ...]) -> list[str]:
        return [f"| {a.name} | {a.discount:.0%} | {fmt(a.quality)} | {fmt(a.cost_usd, 1000, 4)} | "
                f"{fmt(a.utility) if a.utility is not None else '-'} | {fmt(a.switches, 1, 2)} | "
                f"{fmt(a.kept, 100, 1)}% |" for a in arms]  # fmt: skip

    lines = [
        f"scenario {r.scenario}: {r.chats} chats x {r.seeds} seeds; cached input at {1 - r.cache_discount:.0%} of the "
        f"input price, or at full price; switch margin {r.switch_margin:g}, context decay {r.context_decay:g}; "
        f"utility = quality - {r.cost_weight:g} x cost in USD (the cost weight routed with); 95% intervals over seeds",
        "",
        "learning (each arm learns from nothing on its own traffic):",
        "",
        *head, *rows(r.arms),
        "",
        f"sticky against afresh, with the discount: cost saved {fmt(r.cost_saved, 100, 1)}%, change in "
        f"quality {fmt(r.quality_change)}",
    ]  # fmt: skip
    if r.frozen and r.frozen_cost_saved is not None and r.frozen_quality_change is not None:
        lines += ["", "frozen (one snapshot learned on other chats of the seed; every arm on it, the same draws):", "",
                  *head, *rows(r.frozen), "",
                  f"sticky against afresh, with the discount: cost saved {fmt(r.frozen_cost_saved, 100, 1)}%, "
                  f"change in quality {fmt(r.frozen_quality_change)}"]  # fmt: skip
    return "\n".join(lines)
