"""The semantic index of the answer cache: the nearest stored prompt of one bucket, read fast.

``learner/cache.py`` keeps one ``CellIndex`` per bucket (a namespace's context and cluster). It
holds the prompts' embeddings, unit float32 rows, in cells, and the cells in groups:

- a *cell* holds at most ``cell_rows`` rows in one contiguous (capacity, d) matrix, grown by
  doubling; a row leaves by the last row moving into its place (nothing is rebuilt);
- a *group* holds the centres of at most ``group_cells`` cells the same way, and the index the
  centres of its groups. A centre is the mean direction of the rows under it, kept as rows come
  and go (renormalised every ``_RECENTRE`` of them). A cell or a group that grows past its bound
  is cut in two by 2-means (one whose members do not part is let grow to twice its size first).

A search reads the centres of the groups, then the cell centres of the ``probe`` nearest groups,
then the rows of the ``probe`` nearest of those cells, each with one matrix-vector product, and
returns the best row: at most ``groups + probe * group_cells + probe * cell_rows`` rows of d
floats, however many the bucket holds (with one group, the common case: ``cells + probe *
cell_rows``). A row is stored in the cell that a search for it reads first. Precision is exact
(the cosine returned is the prompt's with that row); recall is approximate: a neighbour in a cell
not read is missed, a miss, never a wrong answer.

The search path is written for few numpy calls (``dot`` on cached views, argmax twice for the
top two): on a shared machine, with the cache's memory cold after routing ran, each call costs
microseconds whatever its size.

References: Jegou, Douze & Schmid, Product quantization for nearest neighbor search (2011), the
inverted file of cells; Nister & Stewenius, Scalable recognition with a vocabulary tree (2006),
centres of centres searched top-down.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["CellIndex"]

_SPLIT_ROUNDS = 6  # 2-means iterations when a cell or a group is cut in two
_RECENTRE = 8  # a cell's and its group's centres are renormalised every this many rows in or out


class _Rows:
    """One node: a (capacity, d) float32 matrix whose first ``len(keys)`` rows are in use
    (``view``), ``keys[i]`` naming row i: an entry's id in a cell, a cell in a group, a group in
    the index. ``total`` is the sum of the embeddings under the node (its centre's direction)."""

    __slots__ = ("m", "view", "keys", "split_at", "up", "total")

    def __init__(self, dim: int, split_at: int, up: "_Rows | None" = None, capacity: int = 8) -> None:
        self.m = np.empty((capacity, dim), dtype=np.float32)
        self.view = self.m[:0]
        self.keys: list[Any] = []
        self.split_at = split_at
        self.up = up  # the group of a cell
        self.total = np.zeros(dim, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: Any, row: np.ndarray) -> None:
        n = len(self.keys)
        if n == len(self.m):
            grown = np.empty((2 * n, self.m.shape[1]), dtype=np.float32)
            grown[:n] = self.m
            self.m = grown
        self.m[n] = row
        self.keys.append(key)
        self.view = self.m[: n + 1]

    def remove(self, key: Any) -> None:
        i = self.keys.index(key)
        last = len(self.keys) - 1
        self.m[i] = self.m[last]
        self.keys[i] = self.keys[last]
        self.keys.pop()
        self.view = self.m[:last]

    def take(self, mask: np.ndarray, split_at: int, up: "_Rows | None") -> "_Rows":
        """A new node of the rows (and keys) where ``mask`` is true; its ``total`` is left to the caller."""
        sel = self.view[mask]
        out = _Rows(self.m.shape[1], split_at, up, max(8, 1 << len(sel).bit_length()))
        out.m[: len(sel)] = sel
        out.view = out.m[: len(sel)]
        out.keys = [k for k, s in zip(self.keys, mask.tolist()) if s]
        return out


def _top(sims: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest of ``sims``, largest first and, among equal ones, the first;
    ``sims`` is a temporary (overwritten). k is small: argmax k times costs fewer and cheaper calls
    than a partition or a sort (of 128 floats, warm: 4-6 us for either, 0.3 us an argmax)."""
    if len(sims) <= k:
        return list(range(len(sims)))
    out = []
    for _ in range(k):
        i = int(sims.argmax())
        out.append(i)
        sims[i] = -np.inf
    return out


def _halve(rows: np.ndarray) -> np.ndarray | None:
    """2-means of ``rows`` (n, d), seeded by far rows (deterministic): the side (n,) bool of each
    row, or None when the rows do not part."""
    a = rows[int(np.argmin(rows @ rows.mean(axis=0)))]
    b = rows[int(np.argmin(rows @ a))]
    for _ in range(_SPLIT_ROUNDS):
        side = rows @ b > rows @ a
        if side.all() or not side.any():
            return None
        a, b = _unit(rows[~side].sum(axis=0)), _unit(rows[side].sum(axis=0))  # spherical: unit centres
    return side


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.sqrt(v.dot(v))), 1e-12)).astype(np.float32)


class CellIndex:
    """Unit rows (d,) float32 by id, searched for the nearest to a prompt. Not thread-safe."""

    __slots__ = ("cell_rows", "group_cells", "_groups", "_cell_of")

    def __init__(self, dim: int, cell_rows: int, group_cells: int) -> None:
        self.cell_rows, self.group_cells = cell_rows, group_cells
        self._groups = _Rows(dim, 0)
        group = _Rows(dim, group_cells)
        group.add(_Rows(dim, cell_rows, group), np.zeros(dim, dtype=np.float32))
        self._groups.add(group, np.zeros(dim, dtype=np.float32))
        self._cell_of: dict[str, _Rows] = {}

    def __len__(self) -> int:
        return len(self._cell_of)

    def shape(self) -> tuple[int, int]:
        """(groups, cells): how the rows are cut."""
        return len(self._groups), sum(len(g) for g in self._groups.keys)

    def nearest(self, emb: np.ndarray, probe: int) -> tuple[str, float] | None:
        """The id of the row nearest ``emb`` (d,) float32 in the cells read, and its cosine. Among
        equal cosines, the row of the cell read first (nearest centre first, see ``_cells``), then
        the first row of its cell."""
        best, best_cos = None, -math.inf
        for cell in self._cells(emb, probe, probe):
            keys = cell.keys
            if keys:
                sims = cell.view.dot(emb)
                j = int(sims.argmax())
                cos = float(sims[j])  # float32 to float is exact: the order, ties included, is kept
                if cos > best_cos:
                    best, best_cos = keys[j], cos
        return None if best is None else (best, best_cos)

    def add(self, key: str, emb: np.ndarray, probe: int) -> None:
        """Keep row ``emb`` (d,) float32 as ``key``, in the cell a search for it reads first."""
        cell = self._cells(emb, probe, 1)[0]
        group, groups = cell.up, self._groups
        assert group is not None
        cell.add(key, emb)
        self._cell_of[key] = cell
        self._moved(cell, emb, 1.0)
        if len(cell) > cell.split_at and self._split(group, cell) and len(group) > group.split_at:
            self._split(groups, group)

    def remove(self, key: str) -> None:
        cell = self._cell_of.pop(key)
        group = cell.up
        assert group is not None
        emb = cell.m[cell.keys.index(key)].copy()
        cell.remove(key)
        self._moved(cell, emb, -1.0)
        if not cell.keys and len(group) > 1:
            group.remove(cell)
        elif not cell.keys and len(self._groups) > 1:  # the group's last cell: the group goes
            self._groups.remove(group)

    def _cells(self, emb: np.ndarray, probe: int, k: int) -> list[_Rows]:
        """The ``k`` cells whose centres are nearest ``emb`` among the cells of the ``probe``
        groups whose centres are, nearest first (equal centres: the group read first, then the
        first of its cells); all of them, in their order, when there are no more than ``k``."""
        groups = self._groups
        if len(groups.keys) == 1:
            group = groups.keys[0]
            return group.keys if len(group.keys) <= k else [group.keys[i] for i in _top(group.view.dot(emb), k)]
        picked = [groups.keys[i] for i in _top(groups.view.dot(emb), probe)]
        sims = np.concatenate([g.view.dot(emb) for g in picked])  # at most probe * group_cells
        out = []
        for i in _top(sims, k):  # position i of the concatenation: the cell of the group it falls in
            for g in picked:
                if i < len(g.keys):
                    out.append(g.keys[i])
                    break
                i -= len(g.keys)
        return out

    def _moved(self, cell: _Rows, emb: np.ndarray, sign: float) -> None:
        """A row entered (sign 1) or left (-1) ``cell``: the sums under the cell and its group
        follow, and their centres every ``_RECENTRE`` rows of the cell (a centre moves little
        with one row; renormalising both at every store doubled its cost)."""
        group = cell.up
        assert group is not None
        for node in (cell, group):
            if sign > 0:
                node.total += emb
            else:
                node.total -= emb
        if len(cell) % _RECENTRE == 0:
            for node, parent in ((cell, group), (group, self._groups)):
                total = node.total
                np.multiply(total, 1.0 / max(math.sqrt(total.dot(total)), 1e-12), out=parent.m[parent.keys.index(node)])

    def _split(self, parent: _Rows, node: _Rows) -> bool:
        """Cut ``node`` (a cell of the group ``parent``, or a group of the index) in two; False
        (and the node may grow to twice its size first) when its rows do not part."""
        side = _halve(node.view)
        if side is None:
            node.split_at = 2 * len(node)
            return False
        is_cell = parent is not self._groups
        bound, up = (self.cell_rows, parent) if is_cell else (self.group_cells, None)
        halves = node.take(~side, bound, up), node.take(side, bound, up)
        for half in halves:
            if is_cell:
                half.total = half.view.sum(axis=0, dtype=np.float64)
                self._cell_of.update(dict.fromkeys(half.keys, half))
            else:
                for cell in half.keys:
                    cell.up = half
                    half.total += cell.total
        i = parent.keys.index(node)
        parent.keys[i] = halves[0]
        parent.m[i] = _unit(halves[0].total)
        parent.add(halves[1], _unit(halves[1].total))
        return True
