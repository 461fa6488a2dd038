"""Drift: is the traffic leaving the centroids, or is a model getting worse somewhere?

Two streams are watched per cluster, both with river's Page-Hinkley test for a fall in mean:

- the **margin** of each decision (top-1 minus top-2 centroid similarity). Prompts of a topic
  the clusters were not built for sit between centroids, so a cluster that receives them sees
  its mean margin decay: the cue to re-cluster.
- the **reward** of each model. A model whose answers got worse in a cluster should lose its
  old evidence there at once, rather than wait for discounting to fade it.

A learning cycle hands over sums per window (the store aggregates). Windows are pooled into
blocks of at least ``block`` decisions (or ``reward_block`` evidence), so the noise of a block
mean is bounded however thin the traffic; the last blocks form a rolling window. Margins are
divided by a rolling baseline (the mean of the window's oldest blocks), so the tolerance and
threshold are relative decays, the same for any embedder and cluster count. The detector is a
pure function of the window: it is rebuilt and replayed each cycle, so its whole state lives in
the snapshot (``ClusterDrift``) and a crashed cycle leaves it as it was.

References: Page, Continuous Inspection Schemes (1954); Gama et al., A Survey on Concept Drift
Adaptation (2014); Montiel et al., River (JMLR 2021).
"""

from __future__ import annotations

import msgspec
import numpy as np
from river.drift import PageHinkley

from learner.snapshot import ClusterDrift

__all__ = ["Alarm", "DriftParams", "observe", "page_hinkley_fires"]


class DriftParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    block: int = 100  # decisions per margin block (pooled across cycles when traffic is thin)
    window: int = 64  # blocks kept per stream
    baseline: int = 8  # oldest blocks of the window whose mean is the margin baseline
    tolerance: float = 0.1  # relative margin decay that is never drift (Page-Hinkley delta)
    threshold: float = 0.5  # cumulative relative decay beyond tolerance that is drift (lambda)
    reward_block: float = 50.0  # evidence weight per reward block
    reward_window: int = 32
    reward_min_blocks: int = 4  # blocks seen before a model's reward can drift
    reward_tolerance: float = 0.05  # absolute fall in mean reward that is never drift
    reward_threshold: float = 0.6


class Alarm(msgspec.Struct, frozen=True):
    """A detected fall: ``model`` is -1 for the margin stream. Values are block means.

    ``normal_until_ms``: the end of the oldest block in the window, when traffic was last known
    normal (the change can have begun anywhere after it, even inside the baseline).
    """

    cluster: int
    model: int
    old_value: float
    new_value: float
    normal_until_ms: int = 0


def page_hinkley_fires(values: np.ndarray, *, delta: float, threshold: float, min_instances: int) -> bool:
    """Replay Page-Hinkley (mode "down") over ``values`` (n,); True if it fires anywhere.

    A window that fired is cleared by the caller, so a firing seen here was not acted on before
    (it may sit before the newest value: the baseline it is judged against can have changed).
    """
    ph = PageHinkley(min_instances=min_instances, delta=delta, threshold=threshold, alpha=1.0, mode="down")
    for v in values:
        ph.update(float(v))
        if ph.drift_detected:
            return True
    return False


def _pool(pending: tuple[float, float], count: float, total: float, size: float) -> tuple[tuple[float, float], float | None]:
    """Add a window's (count, sum) to the pending block; return (pending, block mean or None)."""
    c, s = pending[0] + count, pending[1] + total
    if c >= size:
        return (0.0, 0.0), s / c
    return (c, s), None


def _margin(state: ClusterDrift, count: float, total: float, until_ms: int, p: DriftParams,
            cluster: int) -> tuple[ClusterDrift, Alarm | None]:  # fmt: skip
    pending, block = _pool(state.margin_pending, count, total, p.block)
    if block is None:
        return msgspec.structs.replace(state, margin_pending=pending), None
    blocks = (*state.margin_blocks, block)[-p.window :]
    ends = (*state.margin_until_ms, until_ms)[-p.window :]
    alarm = None
    base = float(np.mean(blocks[: p.baseline]))
    if len(blocks) > p.baseline and base > 1e-9:
        x = np.array(blocks) / base
        if page_hinkley_fires(x, delta=p.tolerance, threshold=p.threshold, min_instances=p.baseline):
            alarm = Alarm(cluster, -1, base, block, ends[0])
            blocks, ends = (), ()  # the new level becomes the baseline, whatever is done about it
    return msgspec.structs.replace(state, margin_blocks=blocks, margin_until_ms=ends, margin_pending=pending), alarm


def _rewards(state: ClusterDrift, n: np.ndarray, s: np.ndarray, p: DriftParams, cluster: int) -> tuple[ClusterDrift, list[Alarm]]:
    m = len(n)
    blocks = list(state.reward_blocks) or [()] * m
    pending = list(state.reward_pending) or [(0.0, 0.0)] * m
    alarms = []
    for j in range(m):
        pending[j], block = _pool(pending[j], float(n[j]), float(s[j]), p.reward_block)
        if block is None:
            continue
        blocks[j] = (*blocks[j], block)[-p.reward_window :]
        x = np.array(blocks[j])
        if len(x) >= p.reward_min_blocks and page_hinkley_fires(
            x, delta=p.reward_tolerance, threshold=p.reward_threshold, min_instances=p.reward_min_blocks
        ):
            alarms.append(Alarm(cluster, j, float(x[:-1].mean()), block))
            blocks[j] = ()
    return msgspec.structs.replace(state, reward_blocks=tuple(blocks), reward_pending=tuple(pending)), alarms


def observe(
    states: tuple[ClusterDrift, ...],
    decisions: np.ndarray,
    margin_sum: np.ndarray,
    reward_n: np.ndarray,
    reward_s: np.ndarray,
    until_ms: int,
    params: DriftParams,
) -> tuple[tuple[ClusterDrift, ...], list[Alarm]]:
    """Feed one window into every cluster's detectors.

    states: (k,) or empty (fresh detectors); decisions, margin_sum: (k,) decisions routed and
    the sum of their margins; reward_n, reward_s: (k, m) feedback evidence weight and reward sum;
    until_ms: the end of the window.
    Returns the new states and the alarms raised (margin alarms first).
    """
    k, m = reward_n.shape
    states = states or tuple(ClusterDrift() for _ in range(k))
    out, margin_alarms, reward_alarms = [], [], []
    for c in range(k):
        st, alarm = _margin(states[c], float(decisions[c]), float(margin_sum[c]), until_ms, params, c)
        st, alarms = _rewards(st, reward_n[c], reward_s[c], params, c)
        out.append(st)
        margin_alarms += [alarm] if alarm else []
        reward_alarms += alarms
    return tuple(out), margin_alarms + reward_alarms
