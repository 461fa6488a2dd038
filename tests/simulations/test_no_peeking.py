"""No peeking: the replay knows only what a deployment knows.

On the shipped defaults and on a ``--config`` with a price sheet, changing every unchosen
model's score and cost on every prompt, and every ``task`` label, leaves every decision and
every logged propensity identical (seeded). This failed before issue 10: the replay read a price
sheet off every model's bills over the whole file (314 of 500 decisions changed).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from service.runtime import deployment
from service.settings import load_settings
from simulations.outcomes import hide_unchosen
from simulations.replay import ReplayConfig, replay

PRICED = """
[[models]]
name = "sim-mini"
base_url = "http://127.0.0.1:9/v1"
price_in_per_mtok = 0.15
price_out_per_mtok = 0.6
tier = 0.55

[[models]]
name = "sim-frontier"
base_url = "http://127.0.0.1:9/v1"
price_in_per_mtok = 5.0
price_out_per_mtok = 15.0
tier = 0.8
"""


@pytest.mark.parametrize("config", ["defaults", "priced"])
def test_unchosen_outcomes_and_tasks_do_not_change_any_decision(synthetic, tmp_path: Path, config):
    o, x = synthetic
    path = None
    if config == "priced":
        path = tmp_path / "turnout.toml"
        path.write_text(PRICED)
    dep = deployment(load_settings(path, {}))
    if config == "priced":
        assert dep.models and dep.models[0].price_in_per_mtok == 0.15
    cfg = ReplayConfig(seed=2, cost_weight=300.0, learn_every=5)
    first = replay(o, x, dep, cfg)
    changed = hide_unchosen(o, first.rows, first.arms, np.random.default_rng(1))
    assert (changed.scores != o.scores).sum() > 1000 and (changed.costs != o.costs).sum() > 1000
    again = replay(changed, x, dep, cfg)
    assert np.array_equal(first.arms, again.arms)
    assert np.array_equal(first.propensities, again.propensities)
    assert len(set(first.arms.tolist())) >= 2  # it did route: the check is not vacuous


def test_a_changed_chosen_outcome_does_change_decisions(synthetic):
    # the control: the same check must notice when what was shown changes
    o, x = synthetic
    dep = deployment(load_settings(None, {}))
    cfg = ReplayConfig(seed=2, cost_weight=300.0, learn_every=5)
    first = replay(o, x, dep, cfg)
    flipped = msgspec.structs.replace(o, scores=np.where(o.available, 1.0 - np.nan_to_num(o.scores), o.scores))
    assert not np.array_equal(first.arms, replay(flipped, x, dep, cfg).arms)
