"""The rules before the bandit: pins, safety classes, context window, cost cap, escalation."""

from __future__ import annotations

import numpy as np
import pytest

from service.rules import NoCandidate, Rules
from service.settings import ConfigError, PinRule, RulesSettings, SafetyClass

MODELS = ("big", "mid", "small")
TIERS = (0.9, 0.7, 0.5)
WINDOWS = (200_000, 32_000, 4_000)
COSTS = np.array([0.02, 0.004, 0.0005])


def rules(**kw) -> Rules:
    return Rules(MODELS, TIERS, WINDOWS, RulesSettings(**kw))


def screen(r: Rules, text="hello", prompt_tokens=100, max_tokens=None, **kw):
    return r.screen(text=text, prompt_tokens=prompt_tokens, max_tokens=max_tokens, costs=lambda: COSTS, **kw)


def allowed(s) -> list[str]:
    return [m for m, ok in zip(MODELS, s.allowed) if ok]


def test_no_rules_allow_everything_and_pin_nothing():
    s = screen(rules())
    assert allowed(s) == list(MODELS) and s.pinned == -1


def test_pins_by_tenant_header_requested_model_and_regex():
    r = rules(pins=(
        PinRule(model="big", tenant="acme"),
        PinRule(model="mid", header="x-team", header_value="legal"),
        PinRule(model="small", requested_model="gpt-4o-mini"),
        PinRule(model="mid", pattern=r"(?i)\btranslate\b"),
    ))  # fmt: skip
    assert screen(r, tenant="acme").pinned == 0
    assert screen(r, headers={"x-team": "legal"}).pinned == 1
    assert screen(r, headers={"x-team": "sales"}).pinned == -1
    assert screen(r, requested="gpt-4o-mini").pinned == 2
    assert screen(r, text="Please TRANSLATE this").pinned == 1
    assert screen(r, text="translated").pinned == -1
    assert "gpt-4o-mini" in r.aliases


def test_a_client_asking_for_a_model_by_name_is_a_pin():
    s = screen(rules(), requested="mid")
    assert s.pinned == 1 and s.rule == "requested"


def test_safety_class_restricts_candidates_and_overrides_pins():
    r = rules(safety=(SafetyClass(name="medical", pattern=r"(?i)diagnos", models=("big",)),),
              pins=(PinRule(model="small", pattern="diagnos"),))  # fmt: skip
    s = screen(r, text="can you diagnose this rash")
    assert allowed(s) == ["big"] and s.safety_class == "medical" and s.pinned == -1
    with pytest.raises(NoCandidate) as info:
        screen(r, text="diagnose me", requested="small")
    assert info.value.code == "model_not_allowed"


def test_context_window_fit_uses_max_tokens_or_the_answer_reserve():
    r = rules(answer_reserve_tokens=1000)
    assert allowed(screen(r, prompt_tokens=3500)) == ["big", "mid"]  # 3500 + 1000 > 4000
    assert allowed(screen(r, prompt_tokens=3500, max_tokens=100)) == list(MODELS)
    with pytest.raises(NoCandidate) as info:
        screen(r, prompt_tokens=250_000)
    assert info.value.code == "context_length_exceeded" and info.value.param == "messages"
    with pytest.raises(NoCandidate) as info:  # the prompt is short: the answer asked for is what does not fit
        screen(r, prompt_tokens=10, max_tokens=10**12)
    assert info.value.code == "context_length_exceeded" and info.value.param == "max_tokens"


def test_cost_cap_from_rules_and_tenant_the_lower_wins():
    assert allowed(screen(rules(max_cost_usd=0.01))) == ["mid", "small"]
    assert allowed(screen(rules(max_cost_usd=0.01), max_cost_usd=0.001)) == ["small"]
    with pytest.raises(NoCandidate) as info:
        screen(rules(max_cost_usd=0.0001))
    assert info.value.code == "cost_cap_exceeded"


def test_tenant_models_narrow_candidates():
    s = screen(rules(), tenant_models=np.array([False, True, True]))
    assert allowed(s) == ["mid", "small"]


def test_low_margin_escalates_to_a_minimum_tier_unless_nothing_is_left():
    r = rules(escalation_margin=0.1, escalation_min_tier=0.7)
    base = np.ones(3, dtype=bool)
    assert list(r.escalate(base, 0.05)) == [True, True, False]
    assert r.escalate(base, 0.5) is base
    only_small = np.array([False, False, True])
    assert r.escalate(only_small, 0.0) is only_small


def test_a_rule_naming_an_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="rules.pins\\[0\\].model"):
        rules(pins=(PinRule(model="gpt-17", tenant="x"),))


def test_language_rules_restrict_and_forbid_models_and_pins_match_a_language():
    from service.settings import LanguageRule

    r = rules(languages=(LanguageRule(languages=("zh", "ja"), models=("big", "mid")),
                         LanguageRule(languages=("zh",), forbid=("mid",)),
                         LanguageRule(languages=("",), forbid=("small",))),
              pins=(PinRule(model="mid", language="ja"), PinRule(model="small", language="fr")))  # fmt: skip
    assert allowed(screen(r, language="zh")) == ["big"]  # every rule naming the language holds
    assert allowed(screen(r, language="ja")) == ["big", "mid"] and screen(r, language="ja").pinned == 1
    assert allowed(screen(r, language="")) == ["big", "mid"]  # "" names prompts of no detected language
    assert allowed(screen(r, language="en")) == list(MODELS) and screen(r, language="en").pinned == -1
    assert screen(r, language="fr").pinned == 2
    assert screen(r).pinned == -1 and allowed(screen(r)) == ["big", "mid"]  # no language given: ""


def test_a_language_no_model_may_serve_is_refused():
    from service.settings import LanguageRule

    r = rules(languages=(LanguageRule(languages=("ko",), models=("small",), forbid=("small",)),))
    with pytest.raises(NoCandidate) as err:
        screen(r, language="ko")
    assert err.value.code == "language_not_served"


def test_a_language_rule_naming_an_unknown_model_stops_the_start():
    from service.settings import LanguageRule

    with pytest.raises(ConfigError, match=r"rules.languages\[0\].forbid names model 'huge'"):
        rules(languages=(LanguageRule(languages=("zh",), forbid=("huge",)),))
