"""The cache's semantic index (learner/cache_index.py) against brute force: the same answer, ties included.

``CellIndex.nearest`` is written for few numpy calls; ``_walk`` below is the search its docstring
describes written plainly (stable sorts, a scan of every row read), and with a probe wide enough
to read every cell the search is a brute-force scan of every row. Seeded, exact comparisons.
"""

from __future__ import annotations

import numpy as np
import pytest

from learner.cache_index import CellIndex


def _walk(index: CellIndex, emb: np.ndarray, probe: int) -> tuple[str, float] | None:
    """The nearest row in the cells a search reads: the ``probe`` groups with the nearest centres,
    then the ``probe`` nearest of their cells (all of them, in order, when there are no more),
    then every row of those; equal cosines go to what is read first."""

    def nearest_first(sims: list[float], k: int) -> list[int]:
        order = list(range(len(sims)))
        return order if len(order) <= k else sorted(order, key=lambda i: -sims[i])[:k]  # stable: ties in order

    top = index._groups
    groups = [top.keys[i] for i in nearest_first(top.view.dot(emb).tolist(), probe)]
    cells = [c for g in groups for c in g.keys]
    centre_sims = [s for g in groups for s in g.view.dot(emb).tolist()]
    best, best_cos = None, -np.inf
    for i in nearest_first(centre_sims, probe):
        cell = cells[i]
        for key, cos in zip(cell.keys, cell.view.dot(emb).tolist()):
            if cos > best_cos:
                best, best_cos = key, cos
    return None if best is None else (best, best_cos)


def _rows(rng: np.random.Generator, n: int, dim: int, grid: bool) -> np.ndarray:
    """Unit rows around a few topics; on a ``grid`` (coordinates in quarters, 16 dimensions) many
    rows and many cosines are exactly equal, whatever order a product sums in."""
    if grid:
        return rng.integers(-2, 3, size=(n, dim)).astype(np.float32) / 4
    topics = rng.standard_normal((12, dim)).astype(np.float32)
    rows = topics[rng.integers(12, size=n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 3, 40, 700, 3000])
@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("probe", [1, 2, 3])
def test_nearest_is_the_plain_search_of_the_cells_it_reads(n, grid, probe):
    rng = np.random.default_rng(n * 10 + probe + 100 * grid)
    dim = 16 if grid else 32
    rows = _rows(rng, n, dim, grid)
    if n:  # duplicates: equal rows under other ids
        rows = np.concatenate([rows, rows[rng.integers(n, size=n // 4 + 1)]])
    index = CellIndex(dim, cell_rows=8, group_cells=4)
    ids = [f"r{i}" for i in range(len(rows))]
    for key, row in zip(ids, rows):
        index.add(key, row, probe)
    gone = set(rng.choice(len(ids), size=len(ids) // 3, replace=False).tolist())  # cells shrink and go
    for i in sorted(gone):
        index.remove(ids[i])
    if n >= 700:
        assert index.shape()[0] > probe and index.shape()[1] > 4 * probe  # both levels cut, more than read
    # the zero prompt is at cosine 0 to every centre and every row: the order of reading alone decides;
    # an axis, at the same cosine to every centre or row with the same coordinate (0 on the grid, often)
    axes = np.concatenate([np.eye(dim, dtype=np.float32), -np.eye(dim, dtype=np.float32)])
    zero = np.zeros((1, dim), np.float32)
    queries = np.concatenate([_rows(rng, 300, dim, grid), rows[: min(len(rows), 100)], zero, axes])
    for q in queries:
        assert index.nearest(q, probe) == _walk(index, q, probe)


@pytest.mark.parametrize("grid", [False, True])
def test_a_probe_that_reads_every_cell_finds_the_brute_force_nearest(grid):
    rng = np.random.default_rng(7 + grid)
    dim = 16 if grid else 32
    rows = _rows(rng, 400, dim, grid)
    rows = np.concatenate([rows, rows[:50]])  # every one of the first 50 twice
    index = CellIndex(dim, cell_rows=8, group_cells=4)
    for i, row in enumerate(rows):
        index.add(f"r{i}", row, 2)
    groups, cells = index.shape()
    assert groups > 2 and cells > 20
    for q in np.concatenate([_rows(rng, 300, dim, grid), rows[:60], np.zeros((1, dim), np.float32)]):
        key, cos = index.nearest(q, probe=cells)
        sims = rows @ q
        assert cos == pytest.approx(float(sims.max()), abs=1e-6)
        assert float(sims[int(key[1:])]) == pytest.approx(float(sims.max()), abs=1e-6)
        if grid:  # exact sums: the cosine is the maximum itself, the row one of those that reach it
            assert cos == float(sims.max()) and int(key[1:]) in np.flatnonzero(sims == sims.max())


def test_an_emptied_index_finds_nothing_and_fills_again():
    rng = np.random.default_rng(3)
    rows = _rows(rng, 200, 32, False)
    index = CellIndex(32, cell_rows=8, group_cells=4)
    assert index.nearest(rows[0], 2) is None
    for i, row in enumerate(rows):
        index.add(f"r{i}", row, 2)
    for i in range(200):
        index.remove(f"r{i}")
    assert len(index) == 0 and index.shape() == (1, 1) and index.nearest(rows[0], 2) is None
    index.add("again", rows[5], 2)
    assert index.nearest(rows[5], 2) == ("again", pytest.approx(1.0, abs=1e-6))
