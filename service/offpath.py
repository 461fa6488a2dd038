"""A bounded background queue for work that must never touch the request path (judge, shadow).

``submit`` never blocks and never raises: when the queue is full the job is skipped and counted.
A few worker tasks, started on the serving event loop at the first submit, run the jobs; a job
that raises is logged and counted, and the workers go on. ``aclose`` cancels what is left (at
shutdown: a grade or a shadow answer is never worth delaying a stop).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Awaitable, Callable

__all__ = ["OffPath"]

log = logging.getLogger("turnout.offpath")

Job = Callable[[], Awaitable[None]]


class OffPath:
    def __init__(self, size: int, workers: int) -> None:
        self.size = size
        self.n_workers = workers
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, outcome) -> jobs
        self._queue: asyncio.Queue[tuple[str, Job]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []

    def _ensure(self) -> asyncio.Queue[tuple[str, Job]]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:  # first use, or a new loop (tests)
            self._loop, self._queue = loop, asyncio.Queue(self.size)
            self._tasks = [loop.create_task(self._work(self._queue), name=f"turnout-offpath-{i}")
                           for i in range(self.n_workers)]  # fmt: skip
        return self._queue

    def submit(self, kind: str, job: Job) -> bool:
        """Queue ``job`` (called on the event loop); False when the queue is full (skipped, counted)."""
        try:
            self._ensure().put_nowait((kind, job))
        except asyncio.QueueFull:
            self.counts[kind, "skipped_full"] += 1
            return False
        except RuntimeError:  # no running loop: nothing can run it
            self.counts[kind, "skipped_no_loop"] += 1
            return False
        self.counts[kind, "queued"] += 1
        return True

    def pending(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def _work(self, queue: asyncio.Queue[tuple[str, Job]]) -> None:
        while True:
            kind, job = await queue.get()
            try:
                await job()
                self.counts[kind, "done"] += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counts[kind, "failed"] += 1
                log.warning("background %s job failed", kind, exc_info=True)
            finally:
                queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued job ran (tests, benchmarks)."""
        if self._queue is not None:
            await self._queue.join()

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        if tasks and self._loop is asyncio.get_running_loop():
            await asyncio.gather(*tasks, return_exceptions=True)
        self._queue = None
