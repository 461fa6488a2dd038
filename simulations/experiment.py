"""A replay experiment end to end: embed once, replay at one or several cost weights, report.

Shared by ``turnout replay``, ``bench/replay.py`` and the tables in ``docs/simulations.md``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import msgspec
import numpy as np

from learner.embedding import Embedder
from learner.language import LanguageDetector, NoDetector, routing_context
from simulations.outcomes import Outcomes
from simulations.progress import Progress
from simulations.replay import Deployment, ReplayConfig, ReplayRun, replay
from simulations.report import ReplayReport, evaluate

__all__ = ["decisions_path", "embed_outcomes", "run_replays", "write_decisions"]


def embed_outcomes(outcomes: Outcomes, embedder: Embedder, detector: LanguageDetector = NoDetector(),
                   language_weight: float = 0.0) -> np.ndarray:  # fmt: skip
    """Routing contexts of every prompt, (n, d): each distinct text embedded alone, as the service
    embeds one request (a batch call can differ in the last bit, and decisions must not), with
    its language when ``language_weight`` > 0 (``learner.language.routing_context``)."""
    texts = list(dict.fromkeys(outcomes.prompts))
    vectors = (np.stack([routing_context(t, embedder, detector, language_weight)[2] for t in texts]) if texts
               else np.zeros((0, embedder.dim)))  # fmt: skip
    where = {t: i for i, t in enumerate(texts)}
    return np.ascontiguousarray(vectors[[where[p] for p in outcomes.prompts]], dtype=np.float32)


def run_replays(
    outcomes: Outcomes,
    embeddings: np.ndarray,
    deployment: Deployment,
    config: ReplayConfig,
    weights: Sequence[float] | None = None,
    warm: tuple[Outcomes, np.ndarray] | None = None,
    show_progress: bool | None = None,
) -> tuple[ReplayReport, list[tuple[float, ReplayRun]]]:
    """One replay per cost weight (``None``: the config's own, or its budget), then the report."""
    base = deployment.cost_weight if config.cost_weight is None else config.cost_weight
    points = [base] if weights is None else [float(w) for w in weights]
    total = len(points) * len(outcomes) * max(1, config.passes)
    runs: list[tuple[float, ReplayRun]] = []
    start = time.perf_counter()
    with Progress(total, "replay", enabled=show_progress) as bar:
        for w in points:
            cfg = msgspec.structs.replace(config, cost_weight=w)
            runs.append((w, replay(outcomes, embeddings, deployment, cfg, warm, bar.advance)))
    report = evaluate(outcomes, runs, time.perf_counter() - start)
    shown = {**deployment.settings, "replay": msgspec.to_builtins(config), "warm_start_prompts": len(warm[0]) if warm else 0}
    return msgspec.structs.replace(report, settings=shown), runs


def decisions_path(path: str | Path, weight: float, several: bool) -> Path:
    """``FILE`` itself for one run; ``FILE`` with a ``.w<weight>`` suffix per point of a sweep."""
    p = Path(path)
    if not several:
        return p
    return p.with_name(f"{p.stem}.w{weight:g}{p.suffix or '.jsonl'}")


def write_decisions(path: Path, outcomes: Outcomes, run: ReplayRun) -> Path:
    """One JSON line per routed prompt: ``{"id", "model", "propensity", "cluster"}``."""
    enc = msgspec.json.Encoder()
    with open(path, "wb") as fh:
        for row, arm, p, c in zip(run.rows, run.arms, run.propensities, run.clusters):
            fh.write(enc.encode({"id": outcomes.ids[row], "model": outcomes.models[arm],
                                 "propensity": float(p), "cluster": int(c)}))  # fmt: skip
            fh.write(b"\n")
    return path
