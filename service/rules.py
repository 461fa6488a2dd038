"""Rules before the bandit: which models may serve a request, and whether one is pinned.

Evaluated before the prompt is embedded, in this order, each narrowing the candidates:

1. the tenant's models (``[[tenants]] models``);
2. safety classes: a prompt matching a class's pattern may only go to that class's models;
3. languages: a prompt in a rule's languages may only go to its models, never to its forbidden
   ones (the language is detected before the rules, ``learner/language.py``);
4. context window: models whose window cannot hold the prompt plus the answer are out;
5. cost cap: models whose expected cost (from prices) exceeds the cap are out;
6. pins: a client asking for a pool model by name, or the first pin rule that matches (tenant,
   header, requested model, regex on the last user message, its language) fixes the model, if it
   is still a candidate. A pin never overrides 2-5.

After embedding, ``escalate`` keeps only models of at least a tier when the cluster margin is low
(the router is unsure which cluster this is, so it should not gamble on a small model).
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

import msgspec
import numpy as np

from service.settings import ConfigError, RulesSettings

__all__ = ["NoCandidate", "Rules", "Screen"]


class Screen(msgspec.Struct, frozen=True):
    """What the rules decided. allowed: (m,) bool; pinned: model index or -1."""

    allowed: np.ndarray
    pinned: int = -1
    rule: str = ""  # which rule pinned it: "requested", "pins[2]"
    safety_class: str = ""


class NoCandidate(Exception):
    """No model may serve this request; ``code`` is OpenAI-style (context_length_exceeded, ...)."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


class _Pin(msgspec.Struct, frozen=True):
    model: int
    tenant: str
    header: str
    header_value: str
    requested_model: str
    pattern: re.Pattern | None
    language: str = ""


class Rules:
    """Compiled once from ``[rules]`` against the pool's order of models."""

    def __init__(self, models: Sequence[str], tiers: Sequence[float], context_windows: Sequence[int],
                 settings: RulesSettings = RulesSettings()) -> None:  # fmt: skip
        index = {m: i for i, m in enumerate(models)}

        def model(key: str, name: str) -> int:
            if name not in index:
                raise ConfigError(f"config error: {key} names model '{name}', not in the pool ({', '.join(models)})")
            return index[name]

        self.models = tuple(models)
        self.tiers = np.asarray(tiers, dtype=np.float64)
        self.windows = np.asarray(context_windows, dtype=np.int64)
        self.smallest_window = int(self.windows.min()) if len(self.windows) else 0
        self.all = np.ones(len(models), dtype=bool)
        self.all.setflags(write=False)
        self.pins = tuple(
            _Pin(model(f"rules.pins[{i}].model", p.model), p.tenant, p.header.lower(), p.header_value,
                 p.requested_model, re.compile(p.pattern) if p.pattern else None, p.language)
            for i, p in enumerate(settings.pins)
        )  # fmt: skip
        self.safety: tuple[tuple[str, re.Pattern, np.ndarray], ...] = ()
        for i, c in enumerate(settings.safety):
            mask = np.zeros(len(models), dtype=bool)
            for name in c.models:
                mask[model(f"rules.safety[{i}].models", name)] = True
            self.safety += ((c.name, re.compile(c.pattern), mask),)
        # language -> (m,) bool: the models its rules leave (every rule naming it, combined)
        self.by_language: dict[str, np.ndarray] = {}
        for i, lr in enumerate(settings.languages):
            mask = np.ones(len(models), dtype=bool)
            if lr.models:
                mask[:] = False
                for name in lr.models:
                    mask[model(f"rules.languages[{i}].models", name)] = True
            for name in lr.forbid:
                mask[model(f"rules.languages[{i}].forbid", name)] = False
            for lang in lr.languages:
                self.by_language[lang] = self.by_language.get(lang, self.all) & mask
        self.aliases = frozenset(p.requested_model for p in self.pins if p.requested_model)
        self.max_cost_usd = settings.max_cost_usd
        self.answer_reserve_tokens = settings.answer_reserve_tokens
        self.escalation_margin = settings.escalation_margin
        self.escalation_min_tier = settings.escalation_min_tier

    def screen(self, *, text: str, prompt_tokens: int, max_tokens: int | None, costs: Callable[[], np.ndarray],
               requested: str = "", tenant: str = "default", tenant_models: np.ndarray | None = None,
               max_cost_usd: float = 0.0, headers: Mapping[str, str] | None = None,
               language: str = "") -> Screen:  # fmt: skip
        """The candidates of one request. costs() -> (m,) expected USD (called only under a cost
        cap); tenant_models: (m,) bool or None. Raises ``NoCandidate`` when nothing is left.

        With no rule in play this is a handful of comparisons: ``allowed`` stays ``self.all``.
        """
        allowed = self.all if tenant_models is None else tenant_models
        klass = ""
        for name, pattern, mask in self.safety:
            if pattern.search(text):
                allowed = allowed & mask
                klass = klass or name
        if allowed is not self.all and not allowed.any():
            raise NoCandidate("no model may serve this request under the safety rules"
                              + (f" (class '{klass}')" if klass else ""), "content_policy")  # fmt: skip
        if self.by_language:
            mask = self.by_language.get(language)
            if mask is not None:
                allowed = allowed & mask
                if not allowed.any():
                    raise NoCandidate(f"no model may serve a request in language '{language or 'unknown'}' "
                                      "under the language rules", "language_not_served")  # fmt: skip
        need = prompt_tokens + (max_tokens or self.answer_reserve_tokens)
        fits = allowed
        if need > self.smallest_window:
            fits = allowed & (self.windows >= need)
            if not fits.any():
                # the answer's reserve alone may be what does not fit: then max_tokens is the field to change
                blame = "max_tokens" if max_tokens and max_tokens > int(self.windows[allowed].max()) else "messages"
                raise NoCandidate(f"the request (about {need} tokens with the answer) exceeds the context "
                                  f"window of every model it may go to", "context_length_exceeded", blame)  # fmt: skip
        caps = [c for c in (self.max_cost_usd, max_cost_usd) if c > 0]
        if caps:
            cap = min(caps)
            cheap = fits & (costs() <= cap)
            if not cheap.any():
                raise NoCandidate(f"every model it may go to is expected to cost more than the cap of "
                                  f"{cap:g} USD for this request", "cost_cap_exceeded")  # fmt: skip
            fits = cheap
        if requested in self.models:
            arm = self.models.index(requested)
            if not fits[arm]:
                raise NoCandidate(f"model '{requested}' may not serve this request (tenant, safety, context "
                                  f"window or cost rules)", "model_not_allowed", "model")  # fmt: skip
            return Screen(fits, arm, "requested", klass)
        for i, pin in enumerate(self.pins):
            if fits[pin.model] and self._matches(pin, text, requested, tenant, headers, language):
                return Screen(fits, pin.model, f"pins[{i}]", klass)
        return Screen(fits, -1, "", klass)

    @staticmethod
    def _matches(pin: _Pin, text: str, requested: str, tenant: str, headers: Mapping[str, str] | None,
                 language: str = "") -> bool:  # fmt: skip
        if pin.tenant and pin.tenant != tenant:
            return False
        if pin.language and pin.language != language:
            return False
        if pin.requested_model and pin.requested_model != requested:
            return False
        if pin.header and (headers is None or headers.get(pin.header) != pin.header_value):
            return False
        return pin.pattern is None or pin.pattern.search(text) is not None

    def escalate(self, allowed: np.ndarray, margin: float) -> np.ndarray:
        """allowed (m,) bool narrowed to strong models when the cluster margin is below threshold."""
        if margin >= self.escalation_margin or self.escalation_min_tier <= 0:
            return allowed
        strong = allowed & (self.tiers >= self.escalation_min_tier)
        return strong if strong.any() else allowed
