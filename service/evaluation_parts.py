"""``[judge]`` and ``[shadow]`` built into an ``Evaluation`` (service/evaluation.py), or None when both are off.

Called by the composition root (``service.runtime``). A pool judge uses the pool model's adapter;
a dedicated endpoint gets an adapter of its own, closed with the evaluation. A shadow's candidate
snapshot is read from the snapshot store and compiled into a view here, once: a version the store
does not hold, or one that cannot route this pool, stops the start.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from learner.fold import PoolPrior, align
from learner.ports import SnapshotStore
from learner.routing import View
from learner.snapshot import SnapshotError, decode_snapshot, validate
from service.caching import ResponseCache
from service.daily_budget import DailyBudget
from service.evaluation import Evaluation, JudgeScope
from service.judge import Judge
from service.metrics import Registry
from service.offpath import OffPath
from service.records import Recorder
from service.routing import Router
from service.settings import ConfigError, ModelSettings, Settings
from service.shadow import Candidate, Shadow, Target
from service.upstream import Upstream

log = logging.getLogger("turnout.evaluation")

__all__ = ["build_evaluation", "candidate_view"]


def build_evaluation(settings: Settings, pool: tuple, upstreams: Mapping[str, Upstream], records: Recorder,
                     metrics: Registry, rng: np.random.Generator, cache: ResponseCache | None = None,
                     judge_upstream: Upstream | None = None, snapshots: SnapshotStore | None = None,
                     router: Router | None = None, prior: PoolPrior | None = None) -> Evaluation | None:  # fmt: skip
    """The evaluation of ``settings`` over ``pool`` (PoolModels) and its ``upstreams``.

    ``judge_upstream`` replaces the adapter of a dedicated judge endpoint (tests); ``snapshots``,
    ``router`` (the live one: prices, routing parameters, cascades) and ``prior`` (the pool's, to
    align a stored snapshot) are what a candidate shadow is read and compiled with."""
    j, sh = settings.judge, settings.shadow
    if not j.enabled and not sh.enabled:
        return None
    by_name = {m.name: (i, m) for i, m in enumerate(pool)}
    share = settings.processes.workers  # --workers N: each serving process holds 1/N of each day's budget
    judge, closers = None, ()
    if j.enabled:
        if j.model:
            if j.model not in by_name:
                raise ConfigError(f"config error: judge.model '{j.model}' is not in the pool ({', '.join(by_name)})")
            m = by_name[j.model][1]
            if getattr(upstreams[j.model], "simulated", False):
                raise ConfigError(f"config error: judge.model '{j.model}' is a simulated model: its answers hold no "
                                  "score, so every grade would fail; name a [[models]] entry or judge.base_url")
            upstream, upstream_model, prices = upstreams[j.model], m.upstream_model, (m.price_in_per_mtok, m.price_out_per_mtok)
        else:
            if not j.base_url and judge_upstream is None:
                raise ConfigError("config error: judge.model or judge.base_url must name the judge")
            if judge_upstream is None:
                from service.gateway import openai_upstream

                judge_upstream = openai_upstream(ModelSettings(name="judge", base_url=j.base_url, api_key_env=j.api_key_env,
                                                               timeout_s=j.timeout_s, ttft_timeout_s=j.timeout_s))  # fmt: skip
                closers = (judge_upstream,)
            upstream, upstream_model, prices = judge_upstream, j.upstream_model or "judge", (j.price_in_per_mtok, j.price_out_per_mtok)
        judge = Judge(name=j.model or "judge", upstream=upstream, upstream_model=upstream_model,
                      price_in_per_mtok=prices[0], price_out_per_mtok=prices[1], template=j.prompt,
                      score_pattern=j.score_pattern, score_max=j.score_max, max_tokens=j.max_tokens,
                      timeout_s=j.timeout_s, budget=DailyBudget(j.budget_usd_per_day / share))  # fmt: skip
    shadow = None
    if sh.enabled:
        timeouts = {x.name: x.timeout_s for x in settings.models}
        targets = {m.name: Target(i, upstreams[m.name], m.upstream_model, (m.price_in_per_mtok, m.price_out_per_mtok),
                                  timeouts.get(m.name, 60.0)) for i, m in enumerate(pool)}  # fmt: skip
        candidate = None
        if sh.candidate is not None:
            candidate = Candidate(candidate_view(sh.candidate, snapshots, router, prior))
        elif sh.reference not in by_name:
            raise ConfigError(f"config error: shadow.reference '{sh.reference}' is not in the pool ({', '.join(by_name)})")
        else:
            targets = {sh.reference: targets[sh.reference]}
        if sh.share <= 0 and not any(v > 0 for v in sh.tenant_share.values()):
            log.warning("shadow routing is enabled with share 0 (and no tenant_share above 0): nothing is shadowed")
        if judge is None:
            log.warning("shadow routing without the judge ([judge] enabled = false): shadows are recorded and "
                        "billed, but no answer is graded, so no leakage is measured")
        shadow = Shadow(reference=sh.reference if candidate is None else "", targets=targets, share=sh.share,
                        tenant_share=sh.tenant_share, tenants=sh.tenants, budget=DailyBudget(sh.budget_usd_per_day / share),
                        rng=np.random.default_rng(rng.integers(1 << 62)), candidate=candidate)  # fmt: skip
    evaluation = Evaluation(
        offpath=OffPath(j.queue_size, j.workers), records=records, rng=rng, judge=judge,
        scope=JudgeScope(j.model, frozenset(j.tenants), frozenset(j.private_tenants)), sample=j.sample,
        shadow=shadow, cache=cache, closers=closers,
    )  # fmt: skip
    _gauges(metrics, evaluation)
    return evaluation


def candidate_view(version: int, snapshots: SnapshotStore | None, router: Router | None,
                   prior: PoolPrior | None) -> View:  # fmt: skip
    """The stored snapshot ``version``, aligned to the pool and compiled as the live router compiles
    its own (its prices, routing parameters and cascades; every draw made now, none later)."""
    blob = None if snapshots is None or router is None or prior is None else snapshots.get(version)
    if blob is None:
        raise ConfigError(f"config error: shadow.candidate: snapshot version {version} is not in the snapshot store")
    snap = align(decode_snapshot(blob), prior)
    live = router.view.snapshot
    if snap.dim != live.dim:
        raise ConfigError(f"config error: shadow.candidate: snapshot v{version} has embeddings of dimension "
                          f"{snap.dim}, the embedder {live.dim}")  # fmt: skip
    try:
        validate(snap)
        view = View(snap, router.pricing, router.params, router.cascades)
        view.draw_all()
    except (SnapshotError, ValueError) as exc:
        raise ConfigError(f"config error: shadow.candidate: snapshot v{version} cannot route this pool: {exc}") from None
    return view


def _gauges(metrics: Registry, ev: Evaluation) -> None:
    def jobs() -> Any:
        for (kind, outcome), n in sorted(ev.offpath.counts.items()):
            yield (kind, outcome), float(n)

    metrics.add_gauge("turnout_offpath_jobs", "Background judge and shadow jobs since start, by kind and outcome "
                      "(queued, done, failed, skipped_full).", ("kind", "outcome"), jobs)  # fmt: skip

    def spent() -> Any:
        if ev.judge is not None:
            yield ("judge",), ev.judge.budget.spent_today()
        if ev.shadow is not None:
            yield ("shadow",), ev.shadow.budget.spent_today()

    metrics.add_gauge("turnout_offpath_spent_usd", "USD spent today (UTC) by the judge and by shadow calls.",
                      ("kind",), spent)  # fmt: skip
