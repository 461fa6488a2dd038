"""The cost-quality plane: hulls, AIQ, gap share, APGR and CPT on hand-checked numbers."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.frontier import aiq, apgr, cpt, gap_share, hull, hull_at


def test_hull_is_upper_non_decreasing_and_stops_at_the_best_point():
    pts = np.array([[1.0, 0.5], [2.0, 0.55], [3.0, 0.9], [4.0, 0.7], [5.0, 0.9], [2.0, 0.4], [0.5, 0.2]])
    h = hull(pts)
    # (2, 0.55) lies under the chord from (1, 0.5) to (3, 0.9); beyond (3, 0.9) nothing is better
    assert h.tolist() == [[0.5, 0.2], [1.0, 0.5], [3.0, 0.9]]
    assert hull_at(h, np.array([2.0, 10.0, 0.1])).tolist() == pytest.approx([0.7, 0.9, 0.2])


def test_hull_keeps_the_best_of_equal_costs_and_a_single_point():
    assert hull(np.array([[1.0, 0.3], [1.0, 0.6]])).tolist() == [[1.0, 0.6]]
    assert hull(np.array([[2.0, 0.5]])).tolist() == [[2.0, 0.5]]
    with pytest.raises(ValueError):
        hull(np.zeros((0, 2)))


def test_aiq_is_the_exact_mean_height_over_the_range():
    h = hull(np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert aiq(h, 0.0, 1.0) == pytest.approx(0.5)
    assert aiq(h, 0.0, 2.0) == pytest.approx(0.75)  # flat at 1 beyond the last vertex
    assert aiq(h, 0.5, 0.5) == pytest.approx(0.5)


def test_gap_share():
    assert gap_share(0.8, 0.7, 0.9) == pytest.approx(0.5)
    assert gap_share(0.65, 0.7, 0.9) == pytest.approx(-0.25)
    assert gap_share(0.7, 0.7, 0.7) == 0.0


def test_apgr_and_cpt_of_a_router_that_recovers_the_gap_early():
    # weak 0.5, strong 0.9; a router reaching 0.8 (PGR 0.75) with 30% strong calls
    share, q = np.array([0.3]), np.array([0.8])
    # PGR hull: (0,0) -> (0.3,0.75) -> (1,1): area = 0.3*0.375 + 0.7*(0.875)
    assert apgr(share, q, 0.5, 0.9) == pytest.approx(0.3 * 0.375 + 0.7 * 0.875)
    assert cpt(share, q, 0.5, 0.9, 0.5) == pytest.approx(0.2)
    assert cpt(share, q, 0.5, 0.9, 0.8) == pytest.approx(0.3 + 0.7 * (0.05 / 0.25))
    # a random router (no points above the diagonal) has APGR 0.5 and CPT(50%) 0.5
    assert apgr(np.array([0.5]), np.array([0.7]), 0.5, 0.9) == pytest.approx(0.5)
    assert cpt(np.array([0.5]), np.array([0.7]), 0.5, 0.9, 0.5) == pytest.approx(0.5)
