"""[learner] in the TOML file reaches the learning cycle as plain parameters; bad budgets stop the start."""

from __future__ import annotations

import pytest

from service.runtime import learner_params
from service.settings import ConfigError, load_settings

TOML = """
[router]
cost_weight = 30.0

[[policies]]
name = "cheap"
cost_weight = 80.0

[learner]
half_life_s = 3600
half_life_feedback = 5000
explore_min_evidence = 50
budget_step = 0.25

[learner.feedback_weights]
re_request = 0.3

[learner.drift]
tolerance = 0.2
reward_reset = 0.0

[learner.recluster]
max_clusters = 12

[[learner.budgets]]
policy = "auto"
target_cost_usd = 0.002

[[learner.budgets]]
policy = "cheap"
target_cost_usd = 0.0005
"""


def test_learner_settings_become_cycle_parameters(tmp_path):
    path = tmp_path / "turnout.toml"
    path.write_text(TOML)
    p = learner_params(load_settings(path, {"TURNOUT_LEARNER__GRACE_S": "0.5"}))
    assert (p.half_life_ms, p.half_life_rewards, p.grace_ms) == (3_600_000.0, 5000.0, 500)
    assert p.rewards.re_request == 0.3 and p.rewards.explicit == 1.0
    assert p.drift is not None and p.drift.tolerance == 0.2 and p.reward_reset == 0.0
    assert p.recluster.max_clusters == 12 and p.budget.step == 0.25 and p.explore_min_evidence == 50
    assert [(b.policy, b.target_cost_usd, b.cost_weight) for b in p.budgets] == [("auto", 0.002, 30.0),
                                                                               ("cheap", 0.0005, 80.0)]  # fmt: skip


def test_drift_can_be_switched_off():
    assert learner_params(load_settings(None, {"TURNOUT_LEARNER__DRIFT__ENABLED": "false"})).drift is None


@pytest.mark.parametrize("budget,needle", [
    ('policy = "nope"\ntarget_cost_usd = 0.001', "is not a policy"),
    ('policy = "auto"\ntarget_cost_usd = 0', "target_cost_usd must be > 0"),
    ('policy = "auto"\ntarget_usd = 0.001', "target_usd"),
])  # fmt: skip
def test_a_wrong_budget_names_the_key(tmp_path, budget, needle):
    path = tmp_path / "turnout.toml"
    path.write_text(f"[[learner.budgets]]\n{budget}\n")
    with pytest.raises(ConfigError, match=needle):
        load_settings(path, {})


def test_a_tenant_budget_becomes_a_budget_keyed_by_the_tenant(tmp_path):
    path = tmp_path / "turnout.toml"
    path.write_text("""
[[policies]]
name = "cheap"
cost_weight = 80.0

[[tenants]]
name = "acme"
policy = "cheap"
budget_usd = 0.001

[[tenants]]
name = "globex"
cost_weight = 7.0
budget_usd = 0.003

[[tenants]]
name = "initech"
""")
    p = learner_params(load_settings(path, {}))
    # the learned weight starts from the tenant's own weight, else its policy's
    assert [(b.policy, b.target_cost_usd, b.cost_weight) for b in p.budgets] == [("tenant:acme", 0.001, 80.0),
                                                                               ("tenant:globex", 0.003, 7.0)]  # fmt: skip


@pytest.mark.parametrize("value", ["-0.001", "nan"])
def test_a_wrong_tenant_budget_names_the_key(tmp_path, value):
    path = tmp_path / "turnout.toml"
    path.write_text(f'[[tenants]]\nname = "acme"\nbudget_usd = {value}\n')
    with pytest.raises(ConfigError, match=r"tenants\[0\]\.budget_usd"):
        load_settings(path, {})
