"""Outcome matrices: every model's score and cost on every prompt, read from JSONL.

The format is described in ``data/README.md``: one JSON object per line with ``id``,
``prompt``, ``scores`` and ``costs`` (each a model -> value mapping) and an optional ``task``
that is for reports only and must never be used to route. A model missing from a row's scores
or costs is unavailable for that prompt (``available`` is False there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import msgspec
import numpy as np

__all__ = ["OutcomeRow", "Outcomes", "concat", "hide_unchosen", "load_outcomes", "parse_outcomes"]


class OutcomeRow(msgspec.Struct, frozen=True):
    """One line of an outcome file."""

    id: str
    prompt: str
    scores: dict[str, float]
    costs: dict[str, float]
    task: str = ""
    # optional price sheet, USD per million tokens: {"model": {"in": 0.5, "out": 1.5}}, as a
    # deployment's [[models]] would configure it; a router may read it (it is configuration)
    prices: dict[str, dict[str, float]] = {}


class Outcomes(msgspec.Struct, frozen=True):
    """A dense view of outcome rows.

    scores, costs: (n, m) float64, NaN where ``available`` (n, m) bool is False.
    ``models`` is sorted, so the same files always give the same model axis.
    """

    ids: tuple[str, ...]
    tasks: tuple[str, ...]
    prompts: tuple[str, ...]
    models: tuple[str, ...]
    scores: np.ndarray
    costs: np.ndarray
    available: np.ndarray
    prices: dict[str, tuple[float, float]] = {}  # model -> (in, out) USD per million tokens

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> "Outcomes":
        """The rows at ``index`` (n',) int, in that order."""
        idx = np.asarray(index, dtype=np.int64)
        return Outcomes(
            ids=tuple(self.ids[i] for i in idx),
            tasks=tuple(self.tasks[i] for i in idx),
            prompts=tuple(self.prompts[i] for i in idx),
            models=self.models,
            scores=self.scores[idx],
            costs=self.costs[idx],
            available=self.available[idx],
            prices=self.prices,
        )

    def select_models(self, models: Sequence[str]) -> "Outcomes":
        """The same rows restricted to ``models`` (in that order); rows left with none are dropped."""
        col = [self.models.index(m) for m in models]
        avail = self.available[:, col]
        keep = np.flatnonzero(avail.any(axis=1))
        return Outcomes(
            ids=tuple(self.ids[i] for i in keep),
            tasks=tuple(self.tasks[i] for i in keep),
            prompts=tuple(self.prompts[i] for i in keep),
            models=tuple(models),
            scores=self.scores[np.ix_(keep, col)],
            costs=self.costs[np.ix_(keep, col)],
            available=avail[keep],
            prices={m: p for m, p in self.prices.items() if m in models},
        )


_line = msgspec.json.Decoder(OutcomeRow)


def parse_outcomes(rows: Sequence[OutcomeRow]) -> Outcomes:
    """Dense matrices from rows; raises ``ValueError`` naming the first bad row."""
    if not rows:
        raise ValueError("no outcome rows")
    models = tuple(sorted({m for r in rows for m in r.scores} | {m for r in rows for m in r.costs}))
    col = {m: j for j, m in enumerate(models)}
    n, m = len(rows), len(models)
    scores = np.full((n, m), np.nan)
    costs = np.full((n, m), np.nan)
    for i, r in enumerate(rows):
        for name, v in r.scores.items():
            scores[i, col[name]] = v
        for name, v in r.costs.items():
            costs[i, col[name]] = v
    available = ~np.isnan(scores) & ~np.isnan(costs)
    bad = np.flatnonzero(~available.any(axis=1))
    if len(bad):
        raise ValueError(f"row {rows[bad[0]].id!r}: no model has both a score and a cost")
    if ((scores[available] < 0) | (scores[available] > 1)).any():
        i = int(np.flatnonzero(((scores < 0) | (scores > 1)).any(axis=1))[0])
        raise ValueError(f"row {rows[i].id!r}: scores must be in [0, 1]")
    if (costs[available] < 0).any():
        i = int(np.flatnonzero((costs < 0).any(axis=1))[0])
        raise ValueError(f"row {rows[i].id!r}: costs must be non-negative")
    scores[~available] = np.nan
    costs[~available] = np.nan
    prices: dict[str, tuple[float, float]] = {}
    for r in rows:
        for name, sheet in r.prices.items():
            unknown = set(sheet) - {"in", "out"}
            price = (sheet.get("in", 0.0), sheet.get("out", 0.0))
            if unknown or not all(np.isfinite(x) and x >= 0 for x in price):
                raise ValueError(f"row {r.id!r}: prices[{name!r}] needs finite non-negative 'in' and 'out'"
                                 f" (USD per million tokens)")  # fmt: skip
            if name not in col:
                raise ValueError(f"row {r.id!r}: prices names {name!r}, which has no scores")
            if prices.setdefault(name, price) != price:
                raise ValueError(f"row {r.id!r}: prices[{name!r}] differs from an earlier row's")
    return Outcomes(
        ids=tuple(r.id for r in rows),
        tasks=tuple(r.task for r in rows),
        prompts=tuple(r.prompt for r in rows),
        models=models,
        scores=scores,
        costs=costs,
        available=available,
        prices=prices,
    )


def load_outcomes(paths: Sequence[str | Path]) -> Outcomes:
    """Read and concatenate outcome files (JSONL). Errors name the file and line."""
    rows: list[OutcomeRow] = []
    for path in paths:
        with open(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(_line.decode(line))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise ValueError(f"{path}:{lineno}: not an outcome row: {exc}") from None
    if not rows:
        raise ValueError(f"no outcome rows in {', '.join(str(p) for p in paths)}")
    return parse_outcomes(rows)


def concat(parts: Sequence[Outcomes]) -> Outcomes:
    """Rows of several outcome sets, on the union of their models."""
    models = tuple(sorted({m for p in parts for m in p.models}))
    col = {m: j for j, m in enumerate(models)}

    def widen(p: Outcomes, arr: np.ndarray, fill: float | bool) -> np.ndarray:
        out = np.full((len(p), len(models)), fill, dtype=arr.dtype)
        out[:, [col[m] for m in p.models]] = arr
        return out

    return Outcomes(
        ids=tuple(i for p in parts for i in p.ids),
        tasks=tuple(t for p in parts for t in p.tasks),
        prompts=tuple(t for p in parts for t in p.prompts),
        models=models,
        scores=np.concatenate([widen(p, p.scores, np.nan) for p in parts]),
        costs=np.concatenate([widen(p, p.costs, np.nan) for p in parts]),
        available=np.concatenate([widen(p, p.available, False) for p in parts]),
        prices={m: v for p in parts for m, v in p.prices.items()},
    )


def hide_unchosen(outcomes: Outcomes, rows: np.ndarray, arms: np.ndarray, rng: np.random.Generator) -> Outcomes:
    """The same outcomes with everything a router was not shown changed: every score and cost
    of a (prompt, model) that was not chosen (rows, arms: (T,) what was), and every task label.

    The metamorphic check of "no peeking": routing the result must give the same decisions.
    """
    shown = np.zeros(outcomes.scores.shape, dtype=bool)
    shown[np.asarray(rows), np.asarray(arms)] = True
    flip = outcomes.available & ~shown
    scores = np.where(flip, 1.0 - np.nan_to_num(outcomes.scores), outcomes.scores)
    costs = np.where(flip, np.nan_to_num(outcomes.costs) * rng.uniform(0.1, 10.0, flip.shape), outcomes.costs)
    tasks = tuple(f"task-{int(i)}" for i in rng.integers(0, 1 << 30, len(outcomes)))
    return msgspec.structs.replace(outcomes, scores=scores, costs=costs, tasks=tasks)
