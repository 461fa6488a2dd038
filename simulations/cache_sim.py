"""``turnout simulate --cache``: the response cache against no cache, on traffic that repeats itself.

Users repeat earlier prompts word for word (``repeat``) or in other words (``paraphrase``: a
prefix or a suffix around the same question); the rest is the scenario's fresh traffic. For
every seed one stream is drawn and Turnout (the deployment's router and learner) routes all of
it twice: alone, and with the service's own cache core (``learner.cache``) in front, admitting
an answer only from a model whose posterior mean in the prompt's cluster is at least
``min_quality`` and evicting it on a thumbs-down or a re-ask, as the service does.

Quality is what users saw: a fresh answer pleases as the environment draws it (the same draws
in both runs); a cached answer pleases if the answer it replays pleased its first asker and it
answers the same question (a semantic hit on another question displeases: it is counted as a
wrong hit). A hit teaches the learner nothing (in the service its model is "cache", which the
learner leaves out), so with a cache Turnout learns from fewer answers.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import msgspec
import numpy as np

from learner.cache import AnswerCache, CacheParams, Entry
from learner.embedding import Embedder
from learner.routing import Prices
from simulations.baselines import Turnout
from simulations.environment import Scenario, Stream, feedback, stream
from simulations.replay import Deployment
from simulations.simulate import Stat, stat

__all__ = ["CacheArm", "CacheReport", "markdown", "simulate_cache", "with_repeats"]

_PREFIXES = ("Please, ", "Quick question: ", "Hi! ", "I was wondering: ", "Can you help? ")
_SUFFIXES = (" Thanks!", " Thank you.", " Please.", " (asking again)", "")


class CacheArm(msgspec.Struct, frozen=True):
    name: str
    quality: Stat  # share of answers that pleased
    cost_usd: Stat  # mean cost per request
    hit_rate: Stat
    semantic_hits: Stat  # share of requests answered by a semantic hit
    wrong_hits: Stat  # share of requests answered by a semantic hit on another question
    learned_from: Stat  # share of requests the learner learned from


class CacheReport(msgspec.Struct, frozen=True):
    scenario: str
    steps: int
    seeds: int
    repeat: float
    paraphrase: float
    similarity: float
    min_quality: float
    without: CacheArm
    cached: CacheArm
    cost_saved: Stat  # 1 - cost with the cache / cost without
    quality_change: Stat  # quality with the cache - quality without



def _paraphrase(text: str, rng: np.random.Generator) -> str:
    return _PREFIXES[rng.integers(len(_PREFIXES))] + text + _SUFFIXES[rng.integers(len(_SUFFIXES))]


def with_repeats(st: Stream, rng: np.random.Generator, repeat: float, paraphrase: float) -> tuple[Stream, np.ndarray]:
    """The stream with some steps asking an earlier step's question again (the same words, or
    others); returns it and each step's question id (the first step that asked it in those words)."""
    n = len(st.prompts)
    first: dict[str, int] = {}
    question = np.array([first.setdefault(p, t) for t, p in enumerate(st.prompts)])  # the same words: one question
    prompts = list(st.prompts)
    rows = np.arange(n)  # the step whose topic, tokens, quality and costs a step takes
    u = rng.random(n)
    for t in range(1, n):
        if u[t] < repeat + paraphrase:
            s = int(rng.integers(t))
            question[t], rows[t] = question[s], rows[s]
            base = st.prompts[rows[s]]
            prompts[t] = base if u[t] < repeat else _paraphrase(base, rng)
    return msgspec.structs.replace(
        st, prompts=tuple(prompts), topics=st.topics[rows], tokens=st.tokens[rows], quality=st.quality[rows],
        cost_usd=st.cost_usd[rows],
    ), question  # fmt: skip


def _key(text: str) -> bytes:
    return hashlib.blake2b(" ".join(text.split()).encode(), digest_size=16).digest()


def _run(st: Stream, emb: np.ndarray, question: np.ndarray, sc: Scenario, deployment: Deployment,
         prices: Callable[[int], Prices], learn_every: int, params: CacheParams | None,
         min_quality: float) -> dict[str, float]:  # fmt: skip
    policy = Turnout("turnout", st.models, emb.shape[1], deployment, prices, learn_every)
    cache = AnswerCache(params) if params is not None else None
    space = cache.space("sim") if cache is not None else None
    made: dict[str, tuple[int, bool]] = {}  # source id -> (question, pleased its first asker)
    pleased = cost = hits = semantic = wrong = learned = 0.0
    users = sc.users
    for t in range(len(st.prompts)):
        arm, c = policy.decide(t, emb[t], st.tokens[t], st.available[t], st.price_per_token[t])
        view = policy.sim.view
        hit = None
        if space is not None:
            hit = space.lookup(_key(st.prompts[t]), b"", view.snapshot.clustering, c, emb[t], float(t))
            if hit is not None and view.mean[c, view.models.index(hit.entry.model)] < min_quality:
                space.drop(hit.entry.source_decision_id, "quality")
                hit = None
        if hit is not None:
            q, good = made[hit.entry.source_decision_id]
            ok = good and q == question[t]
            hits += 1
            semantic += hit.kind == "semantic"
            wrong += q != question[t]
            pleased += ok
            u_thumbs, u_noise, u_reask = st.feedback_u[t]
            down = (u_thumbs < users.feedback_rate and ok == (u_noise < users.noise)) or (
                u_thumbs >= users.feedback_rate and not ok and u_reask < users.reask_rate)
            if down:
                cache.verdict("sim", hit.entry.source_decision_id, "feedback")  # type: ignore[union-attr]
            continue
        good = bool(st.happy_u[t] < st.quality[t, arm])
        pleased += good
        cost += st.cost_usd[t, arm]
        reward = feedback(st, users, t, arm)
        learned += 1
        policy.learn(t, emb[t], arm, c, reward, st.cost_usd[t, arm], st.tokens[t])
        if space is not None and view.mean[c, arm] >= min_quality:
            sid = f"d{t}"
            made[sid] = (int(question[t]), good)
            space.store(Entry(source_decision_id=sid, exact_key=_key(st.prompts[t]), context_key=b"",
                              clustering=view.snapshot.clustering, cluster=c, embedding=emb[t],
                              model=st.models[arm], text="", cost_usd=float(st.cost_usd[t, arm]),
                              stored_at_s=float(t)))  # fmt: skip
            if reward is not None and reward < 0.5:  # a thumbs-down or a re-ask of the answer just stored
                cache.verdict("sim", sid, "feedback")  # type: ignore[union-attr]
    n = len(st.prompts)
    return {"q": pleased / n, "c": cost / n, "h": hits / n, "s": semantic / n, "w": wrong / n, "l": learned / n}


def simulate_cache(
    sc: Scenario, embedder: Embedder, deployment: Deployment, params: CacheParams, min_quality: float, *,
    steps: int = 3000, seeds: int = 5, base_seed: int = 0, learn_every: int = 10, repeat: float = 0.3,
    paraphrase: float = 0.2, progress: Callable[[int], None] | None = None,
) -> CacheReport:  # fmt: skip
    """Turnout with and without the response cache on ``seeds`` streams with repeated questions."""
    out: dict[str, dict[str, list[float]]] = {a: {k: [] for k in "qchswl"} for a in ("without", "cached")}
    for seed in range(seeds):
        rng = np.random.default_rng([base_seed, seed, 14])
        st, question = with_repeats(stream(sc, steps, np.random.default_rng([base_seed, seed])), rng, repeat, paraphrase)
        unique = list(dict.fromkeys(st.prompts))
        table = dict(zip(unique, embedder.embed(unique)))
        emb = np.stack([table[p] for p in st.prompts])

        def prices(t: int) -> Prices:
            return Prices(st.models, tuple(float(x) * 1e6 for x in st.price_per_token[t]),
                          tuple(float(x) * 1e6 for x in st.price_out_per_token[t]))  # fmt: skip

        dep = msgspec.structs.replace(deployment, routing=msgspec.structs.replace(deployment.routing, seed=seed))
        for arm, p in (("without", None), ("cached", params)):
            got = _run(st, emb, question, sc, dep, prices, learn_every, p, min_quality)
            for k, v in got.items():
                out[arm][k].append(v)
            if progress is not None:
                progress(steps)

    def arm(name: str) -> CacheArm:
        r = out[name]
        return CacheArm(name, stat(r["q"]), stat(r["c"]), stat(r["h"]), stat(r["s"]), stat(r["w"]), stat(r["l"]))

    w, c = out["without"], out["cached"]
    return CacheReport(
        scenario=sc.name, steps=steps, seeds=seeds, repeat=repeat, paraphrase=paraphrase, similarity=params.similarity,
        min_quality=min_quality, without=arm("without"), cached=arm("cached"),
        cost_saved=stat([1 - b / a for a, b in zip(w["c"], c["c"])]),
        quality_change=stat([b - a for a, b in zip(w["q"], c["q"])]),
    )  # fmt: skip


def markdown(r: CacheReport) -> str:
    fmt = lambda s, k=100.0, d=1: s.show(k, d)  # noqa: E731
    lines = [
        f"scenario {r.scenario} with repeated questions ({r.repeat:.0%} word for word, {r.paraphrase:.0%} in other "
        f"words); {r.steps} steps x {r.seeds} seeds; cache similarity {r.similarity:g}, min_quality {r.min_quality:g}; "
        "95% intervals over seeds",
        "",
        "| run | users pleased | mean cost (mUSD) | hit rate | semantic hits | wrong hits | learned from |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for a in (r.without, r.cached):
        lines.append(f"| {'no cache' if a.name == 'without' else 'cache'} | {fmt(a.quality)}% | "
                     f"{fmt(a.cost_usd, 1000, 4)} | {fmt(a.hit_rate)}% | {fmt(a.semantic_hits)}% | "
                     f"{fmt(a.wrong_hits)}% | {fmt(a.learned_from)}% |")  # fmt: skip
    lines += ["", f"cost saved by the cache: {fmt(r.cost_saved)}%; change in users pleased: "
              f"{fmt(r.quality_change)} points"]  # fmt: skip
    return "\n".join(lines)
