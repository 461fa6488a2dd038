"""A tenant's budget: the service routes that tenant with the weight the learner keeps for it
(``tenant:NAME`` in the snapshot's budgets), and everyone else as before."""

from __future__ import annotations

import collections

import msgspec
import numpy as np

from feedback.memory import MemoryRowStore, MemorySnapshotStore
from learner.snapshot import BudgetState
from service.runtime import Runtime
from service.schemas import ChatRequest, Message
from service.settings import load_settings
from service.tenants import Caller, Tenant
from simulations.pool import DEFAULT_TOPICS, make_prompt


def test_a_tenant_with_a_budget_routes_by_its_learned_weight(tmp_path, embedder):
    settings = load_settings(None, {"TURNOUT_STORAGE__DATA_DIR": str(tmp_path)})
    rt = Runtime(settings, embedder=embedder, rows=MemoryRowStore(), snapshots=MemorySnapshotStore(), learner=False)
    try:
        snap = rt.router.view.snapshot
        # the learner found the tenant far over its budget: a huge weight on cost
        rt.router.swap(msgspec.structs.replace(snap, version=snap.version + 1,
                                               budgets=(BudgetState("tenant:frugal", 1e6, 1e-6),)))  # fmt: skip
        frugal = Caller(Tenant(name="frugal", budget_usd=1e-6))
        other = Caller(Tenant(name="other"))
        rng = np.random.default_rng(0)
        prompts = [make_prompt(DEFAULT_TOPICS[i % len(DEFAULT_TOPICS)], rng) for i in range(80)]
        picks = {name: collections.Counter() for name in ("frugal", "other")}
        for p in prompts:
            req = ChatRequest(model="auto", messages=[Message(role="user", content=p)])
            picks["frugal"][rt.chat.route(req, frugal).arm] += 1
            picks["other"][rt.chat.route(req, other).arm] += 1
        pricing = rt.router.pricing
        prices = dict(zip(pricing.models, pricing.price_out_per_mtok))
        cheapest = min(prices, key=prices.get)
        assert picks["frugal"] == {cheapest: 80}, picks
        assert picks["other"][cheapest] < 80 and len(picks["other"]) > 1, picks  # no budget: the usual trade-off
    finally:
        rt.stop()
