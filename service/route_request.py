"""The request's routing step: parse the body, then language, embedding, conversation context,
rules and one Thompson decision on the live snapshot (``learner.routing.decide`` on the one view
it read), with the tenant's exploration cap and a conversation kept on its model when switching
does not pay. ``ChatService`` (``service/chat.py``) calls it first and dispatches what it chose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import msgspec
import numpy as np

from learner.budget import tenant_budget_key
from learner.clusters import assign
from learner.costs import request_tokens
from learner.embedding import Embedder
from learner.language import in_language
from learner.routing import RouteChoice, View, decide
from service.bodies import decode_body
from service.conversations import Conversations, Thread
from service.errors import ApiError
from service.metrics import Registry
from service.records import Routed
from service.routing import Router
from service.rules import NoCandidate
from service.schemas import ChatRequest, message_text
from service.tenants import ANONYMOUS, Caller, Tenant

if TYPE_CHECKING:
    from service.chat import ChatParts

__all__ = ["PolicyWeights", "PoolModel", "RequestRouter"]

_chat_decoder = msgspec.json.Decoder(ChatRequest)
_NO_HEADERS: Mapping[str, str] = {}


class PoolModel(msgspec.Struct, frozen=True):
    name: str
    upstream_model: str
    price_in_per_mtok: float
    price_out_per_mtok: float
    tier: float = 0.6
    context_window: int = 128_000
    price_cached_in_per_mtok: float | None = None  # a cached prompt prefix's price; None: no discount


class PolicyWeights(msgspec.Struct, frozen=True):
    cost_weight: float
    latency_weight: float = 0.0


class RequestRouter:
    """Parse and route one request (``parse``, ``route``); the dispatch is ``ChatService``'s."""

    def __init__(self, *, embedder: Embedder, router: Router, pool: tuple[PoolModel, ...],
                 policies: Mapping[str, PolicyWeights], parts: ChatParts, metrics: Registry,
                 rng: np.random.Generator) -> None:  # fmt: skip
        self.embedder = embedder
        self.router = router
        self.pool = pool
        self.by_name = {m.name: i for i, m in enumerate(pool)}
        self.policies = policies
        self.failover = parts.failover
        self.rules = parts.rules
        self.session_header = parts.session_header
        self.language = parts.language
        self.language_weight = parts.language_weight
        self.conversations = parts.conversations
        self.cascades = parts.cascades
        self.metrics = metrics
        self.rng = rng
        self._tenant_masks: dict[tuple[str, ...], np.ndarray] = {}

    def parse(self, raw: bytes) -> ChatRequest:
        req = decode_body(_chat_decoder, raw, "request body")
        if req.model not in self.policies and req.model not in self.by_name and req.model not in self.rules.aliases:
            known = ", ".join(sorted(self.policies) + sorted(self.by_name))
            raise ApiError(404, f"unknown model '{req.model}'; known models and policies: {known}",
                           param="model", code="model_not_found")  # fmt: skip
        if not any(m.role == "user" and message_text(m).strip() for m in req.messages):
            users = [i for i, m in enumerate(req.messages) if m.role == "user"]  # the last one's empty content, if any
            raise ApiError(422, "messages must contain a user message with non-empty content",
                           param=f"$.messages[{users[-1]}].content" if users else "$.messages", code="invalid_value")
        return req

    def route(self, req: ChatRequest, caller: Caller = ANONYMOUS, headers: Mapping[str, str] = _NO_HEADERS) -> Routed:
        """Language, embedding and rules, then one Thompson decision among the models the rules allow."""
        tenant = caller.tenant
        text = next(message_text(m) for m in reversed(req.messages) if m.role == "user")
        prompt_tokens = request_tokens([message_text(m) for m in req.messages])
        view = self.router.view  # read once: a swap meanwhile cannot mix two snapshots
        policy = req.model if req.model in self.policies else tenant.policy
        weights = self.policies[policy]
        cost_weight = _cost_weight(view, policy, weights, tenant)
        language = self.language.detect(text)
        embedding = self.embedder.embed([text])[0]
        thread, context = None, None
        if self.conversations is not None:  # routed in its conversation's context
            thread, context = self.conversations.thread(req.messages, tenant.name, req.user or "",
                                                        headers.get(self.session_header, ""), embedding,
                                                        prompt_tokens)  # fmt: skip
        at = in_language(embedding if context is None else context, language, self.language_weight)
        context = None if at is embedding else at
        cluster, margin = assign(at, view.centroids)
        costs = view.costs(cluster, prompt_tokens)
        pool_costs = costs if self.cascades is None else costs[: len(self.pool)]  # the rules screen models
        try:
            screen = self.rules.screen(
                text=text, prompt_tokens=prompt_tokens, max_tokens=req.max_completion_tokens or req.max_tokens,
                costs=lambda: pool_costs, requested=req.model, tenant=tenant.name,
                tenant_models=self._tenant_mask(tenant.models), max_cost_usd=tenant.max_cost_usd, headers=headers,
                language=language,
            )  # fmt: skip
        except NoCandidate as exc:
            self.metrics.rejected.inc(exc.code)
            raise ApiError(400, str(exc), param=exc.param, code=exc.code) from None
        placed = (cluster, margin)
        if screen.pinned >= 0:  # logged with propensity 1
            only = np.zeros(len(view.models), dtype=bool)
            only[screen.pinned] = True
            choice = decide(view, at, prompt_tokens, 0.0, 0.0, only, 0, placed)
            policy = "passthrough" if screen.rule == "requested" else "pinned"
            name = self.pool[screen.pinned].name
            return Routed(choice, embedding, text, prompt_tokens, policy, (name,), view.snapshot.version,
                          view.snapshot.clustering, name, screen.safety_class, costs, context, thread, language)  # fmt: skip
        if thread is not None and thread.previous_model and self.conversations is not None:
            kept = self._keep(self.conversations, thread, view, placed, costs, cost_weight, weights.latency_weight,
                              screen.allowed, req.stream)  # fmt: skip
            if kept is not None:  # stays on the model of the turn before: propensity 1, logged ``sticky``
                names = self._names(view, kept)
                return Routed(kept, embedding, text, prompt_tokens, policy, names, view.snapshot.version,
                              view.snapshot.clustering, names[0], screen.safety_class, costs, context,
                              msgspec.structs.replace(thread, sticky=True), language)  # fmt: skip
        row = int(self.rng.integers(1 << 30))
        choice = self.choose(view, at, prompt_tokens, cost_weight, weights.latency_weight, screen.allowed,
                             req.stream, row, tenant.exploration_cap, self.rng, placed)  # fmt: skip
        names = self._names(view, choice)
        return Routed(choice, embedding, text, prompt_tokens, policy, names, view.snapshot.version,
                      view.snapshot.clustering, names[0], screen.safety_class, costs, context, thread, language,
                      screened=None if screen.allowed is self.rules.all else screen.allowed, row=row)  # fmt: skip

    def choose(self, view: View, at: np.ndarray, prompt_tokens: int, cost_weight: float, latency_weight: float,
               screened: np.ndarray, stream: bool, row: int, exploration_cap: float, rng: np.random.Generator,
               placed: tuple[int, float] | None = None) -> RouteChoice:  # fmt: skip
        """The policy's decision on ``view`` among the models the rules left (``screened``): one
        Thompson draw (``row``), again among the strong models when unsure of the cluster, then the
        tenant's exploration cap (its draw from ``rng``). The routing step and a shadow's candidate
        (``decide_again``) both decide here."""
        allowed = None if screened is self.rules.all else screened
        if self.cascades is not None:  # the routing axis: the models, then the cascades (not for streams)
            allowed = self.cascades.widen(allowed, stream)
        choice = decide(view, at, prompt_tokens, cost_weight, latency_weight, allowed, row, placed)
        escalated = self.rules.escalate(screened, choice.margin)
        if escalated is not screened:  # unsure of the cluster: decide again among strong models
            allowed = escalated if self.cascades is None else self.cascades.widen(escalated, stream)
            choice = decide(view, at, prompt_tokens, cost_weight, latency_weight, allowed, row, placed)
        if exploration_cap < 1.0:
            choice = self._cap_exploration(view, choice, view.costs(choice.cluster, prompt_tokens), cost_weight,
                                           latency_weight, allowed, exploration_cap, rng)  # fmt: skip
        return choice

    def decide_again(self, view: View, routed: Routed, tenant: Tenant, stream: bool,
                     rng: np.random.Generator) -> RouteChoice | None:  # fmt: skip
        """What the policy would have chosen for a routed request on another ``view`` (a candidate
        snapshot), or None when the policy did not choose it (pinned by a rule, asked by name, kept
        on its conversation's model). The same routed-on vector, prompt, policy, tenant, models the
        rules left and uniform draw; the view's own clusters, posteriors, costs and budget weights."""
        if routed.row < 0 or routed.policy not in self.policies:
            return None
        weights = self.policies[routed.policy]
        at = routed.embedding if routed.context is None else routed.context
        screened = self.rules.all if routed.screened is None else routed.screened
        return self.choose(view, at, routed.prompt_tokens, _cost_weight(view, routed.policy, weights, tenant),
                           weights.latency_weight, screened, stream, routed.row, tenant.exploration_cap, rng)  # fmt: skip

    def _names(self, view: View, choice: RouteChoice) -> tuple[str, ...]:
        """The candidates to try: the chosen arm (a model, or a cascade), then the fallbacks that are models."""
        names = tuple(view.models[i] for i in (choice.arm, *choice.fallback_order))
        if self.cascades is not None:
            names = names[:1] + tuple(n for n in names[1:] if n in self.by_name)
        return names

    def _keep(self, convs: Conversations, thread: Thread, view: View, placed: tuple[int, float], costs: np.ndarray,
              cost_weight: float, latency_weight: float, allowed: np.ndarray,
              stream: bool = False) -> RouteChoice | None:  # fmt: skip
        """A turn kept on its conversation's model, or None: the rules (escalation included) and the
        model's breaker may move it, and so may economics (``Conversations.keep``)."""
        allowed = self.rules.escalate(allowed, placed[1])
        if self.cascades is not None:
            allowed = self.cascades.widen(None if allowed is self.rules.all else allowed, stream)
            allowed = self.rules.all if allowed is None else allowed
        breaker = self.failover.breakers.get(thread.previous_model)
        available = breaker is None or (breaker.state == "closed" and breaker.retry_in_s() == 0.0)
        return convs.keep(thread, view, placed[0], placed[1], costs, cost_weight, latency_weight,
                          None if allowed is self.rules.all else allowed, available)  # fmt: skip

    def _tenant_mask(self, models: tuple[str, ...]) -> np.ndarray | None:
        if not models:
            return None
        mask = self._tenant_masks.get(models)
        if mask is None:
            mask = np.array([m.name in models for m in self.pool], dtype=bool)
            mask.setflags(write=False)
            self._tenant_masks[models] = mask
        return mask

    def _cap_exploration(self, view: View, choice: RouteChoice, costs: np.ndarray, cost_weight: float,
                         latency_weight: float, allowed: np.ndarray | None, cap: float,
                         rng: np.random.Generator) -> RouteChoice:  # fmt: skip
        """Mix the Thompson policy with the greedy one: with probability 1 - cap take the model of
        best posterior mean utility. Exploration (any other model) then takes at most ``cap`` of the
        traffic, and the logged propensity is the mixture's, exact: cap * p_ts + (1 - cap) * [greedy]."""
        utility = view.mean[choice.cluster] - (cost_weight * costs + latency_weight * view.latency_s)
        if allowed is not None:
            utility = np.where(allowed, utility, -np.inf)
        greedy = int(np.argmax(utility))
        props = cap * np.asarray(choice.propensities)
        props[greedy] += 1.0 - cap
        arm = choice.arm if rng.random() < cap else greedy
        order = tuple(int(j) for j in np.argsort(-utility) if j != arm and np.isfinite(utility[j]))
        return msgspec.structs.replace(choice, arm=arm, propensity=float(props[arm]),
                                       propensities=tuple(float(p) for p in props), fallback_order=order,
                                       expected_cost_usd=float(costs[arm]))  # fmt: skip


def _cost_weight(view: View, policy: str, weights: PolicyWeights, tenant: Tenant) -> float:
    """The cost weight a decision on ``view`` uses: the tenant's or the policy's, or the weight the
    learner keeps in the snapshot for the tenant's own budget, else for the policy's budget."""
    cost_weight = weights.cost_weight if tenant.cost_weight is None else tenant.cost_weight
    if tenant.budget_usd > 0:  # the tenant's own budget: the weight the learner keeps for it
        return view.cost_weight(tenant_budget_key(tenant.name), cost_weight)
    if tenant.cost_weight is None:  # a policy's budget: the snapshot's weight for this policy
        return view.cost_weight(policy, cost_weight)
    return cost_weight
