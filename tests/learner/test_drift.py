"""Drift detectors: margins and rewards pooled into blocks, Page-Hinkley replayed over a window."""

from __future__ import annotations

import numpy as np

from learner.drift import DriftParams, observe, page_hinkley_fires

P = DriftParams()


def _feed(states, rng, cycles, margin_mean, reward_p, k=2, m=2, per_cycle=150, start_ms=0):
    """Feed ``cycles`` windows of ``per_cycle`` decisions per cluster; return states and all alarms."""
    alarms = []
    for i in range(cycles):
        margins = rng.normal(margin_mean, 0.12, size=(k, per_cycle)).clip(0, None)
        n = np.full((k, m), per_cycle / m)
        s = rng.binomial(per_cycle // m, reward_p, size=(k, m)).astype(float)
        states, new = observe(states, np.full(k, per_cycle), margins.sum(axis=1), n, s, start_ms + i, P)
        alarms += new
    return states, alarms


def test_stable_streams_raise_no_alarm_over_a_long_run():
    states, alarms = _feed((), np.random.default_rng(0), 600, 0.3, np.array([[0.9, 0.5], [0.5, 0.2]]))
    assert alarms == []
    assert all(len(s.margin_blocks) == P.window for s in states)  # the window rolls, bounded


def test_a_margin_decay_is_detected_within_a_few_blocks():
    rng = np.random.default_rng(1)
    states, alarms = _feed((), rng, 20, 0.3, 0.8, start_ms=0)
    assert alarms == []
    states, alarms = _feed(states, rng, 5, 0.2, 0.8, start_ms=1000)  # a third lower
    (alarm,) = [a for a in alarms if a.cluster == 0]
    assert alarm.model == -1 and alarm.old_value > 0.28 and alarm.new_value < 0.22
    assert alarm.normal_until_ms == 0  # the oldest block of the window ended before the change
    assert max(states[0].margin_blocks) < 0.22  # restarted: the new level is the next baseline


def test_a_reward_fall_names_the_model():
    rng = np.random.default_rng(2)
    p = np.array([[0.9, 0.6], [0.9, 0.6]])
    states, _ = _feed((), rng, 12, 0.3, p)
    fallen = p.copy()
    fallen[1, 0] = 0.3
    _, alarms = _feed(states, rng, 4, 0.3, fallen)
    assert [(a.cluster, a.model) for a in alarms] == [(1, 0)]
    assert alarms[0].old_value - alarms[0].new_value > 0.4


def test_thin_windows_are_pooled_into_blocks():
    k, m = 1, 1
    states = ()
    for _ in range(3):  # 40 decisions a window: a block every third window
        states, _ = observe(states, np.array([40]), np.array([12.0]), np.zeros((k, m)), np.zeros((k, m)), 0, P)
    assert states[0].margin_blocks == (0.3,) and states[0].margin_pending == (0.0, 0.0)
    states, _ = observe(states, np.array([40]), np.array([8.0]), np.zeros((k, m)), np.zeros((k, m)), 0, P)
    assert states[0].margin_pending == (40.0, 8.0)


def test_the_detector_is_a_pure_function_of_its_window():
    x = np.r_[np.ones(10), np.full(4, 0.6)]
    assert page_hinkley_fires(x, delta=0.1, threshold=0.5, min_instances=8)
    assert not page_hinkley_fires(x[:11], delta=0.1, threshold=0.5, min_instances=8)
    assert not page_hinkley_fires(np.r_[np.ones(10), np.full(4, 1.5)], delta=0.1, threshold=0.5, min_instances=8)
