"""What each cluster of the live snapshot is about, for operators (the dashboard; the admin API).

Two kinds of text describe a cluster (``learner.describe.describe_clusters`` does the math):

- the configured examples nearest its centroid: ``router.cluster_examples``, or the simulated
  topics' examples when the simulated pool is served (``service.runtime.pool_from_settings``);
  embedded once, on first use;
- where prompt storage is on, a few stored prompts nearest it: everyone's with
  ``server.store_prompts``, otherwise only those of the tenants that opted in
  (``[[tenants]] store_prompts``). With storage off no prompt is read, whatever the table holds.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Sequence

import msgspec
import numpy as np

from feedback.history import HistoryStore
from learner.describe import Nearby, describe_clusters
from learner.snapshot import Snapshot, centroid_array

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["ClusterAbout", "ClusterTexts", "PromptScope", "prompt_scope"]


class ClusterAbout(msgspec.Struct, frozen=True):
    cluster: int
    examples: list[Nearby]  # the configured examples nearest the centroid
    examples_assigned: int  # how many of them fall in this cluster
    examples_total: int  # of how many configured examples
    prompts: list[Nearby] | None  # stored prompts nearest it; None: prompt storage is off
    prompts_assigned: int  # how many of the stored prompts read fall in it
    prompts_total: int  # of how many (the newest of the window, at most ``max_prompts``)


class PromptScope(msgspec.Struct, frozen=True):
    """Whose stored prompts may describe clusters: everyone's, or those of some tenants."""

    everyone: bool = False
    tenants: tuple[str, ...] = ()

    @property
    def on(self) -> bool:
        return self.everyone or bool(self.tenants)


def prompt_scope(settings: Settings) -> PromptScope:
    """Prompt storage as configured: ``server.store_prompts``, or the tenants that opted in."""
    return PromptScope(settings.server.store_prompts, tuple(t.name for t in settings.tenants if t.store_prompts))


class ClusterTexts:
    """Describes the clusters of a snapshot by the configured examples and the stored prompts.

    ``embed`` maps texts to embeddings (the service's embedder); ``history`` reads stored prompts
    (None: none are read). ``k`` texts per cluster; the newest ``max_prompts`` stored prompts of
    the window are considered; texts are clipped to ``clip`` characters.
    """

    def __init__(self, examples: Sequence[str], embed: Callable[[list[str]], np.ndarray] | None,
                 history: HistoryStore | None = None, scope: PromptScope = PromptScope(), *, k: int = 3,
                 max_prompts: int = 500, clip: int = 240) -> None:  # fmt: skip
        self._examples = list(dict.fromkeys(examples)) if embed is not None else []
        self._embed = embed
        self._history = history if scope.on else None
        self._scope = scope
        self._k, self._max_prompts, self._clip = k, max_prompts, clip
        self._lock = threading.Lock()
        self._example_emb: np.ndarray | None = None

    def _example_embeddings(self) -> np.ndarray:
        with self._lock:
            if self._example_emb is None:
                self._example_emb = np.asarray(self._embed(self._examples), dtype=np.float32) if self._examples \
                    else np.zeros((0, 1), dtype=np.float32)  # fmt: skip
            return self._example_emb

    def _clipped(self, nearby: list[Nearby]) -> list[Nearby]:
        c = self._clip
        return [n if len(n.text) <= c else msgspec.structs.replace(n, text=n.text[: c - 1] + "…") for n in nearby]

    def about(self, snapshot: Snapshot, since_ms: int, until_ms: int) -> list[ClusterAbout]:
        """One entry per cluster of ``snapshot``; prompts from those stored in [since_ms, until_ms)."""
        cents = centroid_array(snapshot)
        emb, texts = self._example_embeddings(), self._examples
        if emb.shape[1:] != (snapshot.dim,):  # none configured (or another embedder's)
            emb, texts = np.zeros((0, snapshot.dim), np.float32), []
        examples = describe_clusters(cents, emb, texts, self._k)
        prompts, n_prompts = None, 0
        if self._history is not None:
            tenants = None if self._scope.everyone else self._scope.tenants
            stored = [p for p in self._history.prompts(since_ms, until_ms, self._max_prompts, tenants)
                      if len(p.embedding) == 4 * snapshot.dim]  # fmt: skip
            vectors = np.frombuffer(b"".join(p.embedding for p in stored), dtype="<f4").reshape(-1, snapshot.dim)
            prompts = describe_clusters(cents, vectors, [p.text for p in stored], self._k)
            n_prompts = len({p.text for p in stored})
        return [
            ClusterAbout(e.cluster, self._clipped(e.nearest), e.assigned, len(texts),
                         None if prompts is None else self._clipped(prompts[i].nearest),
                         0 if prompts is None else prompts[i].assigned, n_prompts)
            for i, e in enumerate(examples)
        ]  # fmt: skip
