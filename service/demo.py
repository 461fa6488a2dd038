"""``turnout up --demo``: simulated users on a few topics, and a live table of what they get.

Users send prompts of the simulated topics to ``model="auto"`` and give thumbs that follow each
simulated model's quality on that topic. Every few seconds a table shows, per cluster, each
model's share of recent traffic and the mean cost against always using the priciest model, and
per topic, each model's share (clusters are the router's view; topics are what users asked).
At the end of every minute one line sums that minute up per topic (requests, then each model's
share of them, largest first):

    demo minute 3: code (412): sim-coder 93%, sim-frontier 7% | cooking (398): sim-chat 95%, ...
"""

from __future__ import annotations

import collections
import threading
import time
from typing import NamedTuple

import httpx
import numpy as np

from service.chat import PoolModel
from simulations.pool import DEFAULT_POOL, DEFAULT_TOPICS, answer, make_prompt

__all__ = ["Answered", "Demo", "DemoUsers", "topic_shares"]


class Answered(NamedTuple):
    """One request of a simulated user, as the demo's tables count it."""

    at_s: float  # time.monotonic() when the answer came
    cluster: int
    topic: str
    model: str
    cost_usd: float
    priciest_cost_usd: float  # what the priciest model would have cost on this prompt
    up: bool


class DemoUsers:
    """The demo's simulated users: a prompt on a random topic, then a thumb that follows the
    answering model's quality on that topic. All randomness comes from ``rng``."""

    def __init__(self, pool: tuple[PoolModel, ...], rng: np.random.Generator) -> None:
        self.prices = {m.name: m for m in pool}
        self.sim = {m.name: m for m in DEFAULT_POOL}
        self.rng = rng

    def ask(self, client: httpx.Client) -> Answered | None:
        """One request and its thumb; None when the service did not answer with a model."""
        topic = DEFAULT_TOPICS[self.rng.integers(len(DEFAULT_TOPICS))]
        prompt = make_prompt(topic, self.rng)
        r = client.post("/v1/chat/completions",
                        json={"model": "auto", "messages": [{"role": "user", "content": prompt}]})  # fmt: skip
        if r.status_code != 200:
            return None
        model = r.headers["x-turnout-model"]
        up = self.rng.random() < self.sim[model].quality_on(topic.name) if model in self.sim else True
        client.post("/v1/feedback", json={"decision_id": r.headers["x-turnout-decision-id"],
                                          "rating": "up" if up else "down"})  # fmt: skip
        ptoks = r.json()["usage"]["prompt_tokens"]
        return Answered(time.monotonic(), int(r.headers["x-turnout-cluster"]), topic.name, model,
                        float(r.headers["x-turnout-cost-usd"]), self._priciest_cost(prompt, ptoks), up)  # fmt: skip

    def _priciest_cost(self, prompt: str, prompt_tokens: int) -> float:
        name = max(self.prices, key=lambda n: self.prices[n].price_out_per_mtok + self.prices[n].price_in_per_mtok)
        price = self.prices[name]
        tokens = answer(self.sim[name], prompt)[1] if name in self.sim else 300
        return (prompt_tokens * price.price_in_per_mtok + tokens * price.price_out_per_mtok) / 1e6


def topic_shares(rows: list[Answered]) -> dict[str, collections.Counter]:
    """Per topic, the requests each model answered."""
    out: dict[str, collections.Counter] = {}
    for r in rows:
        out.setdefault(r.topic, collections.Counter())[r.model] += 1
    return out


class Demo:
    def __init__(self, base_url: str, models: tuple[str, ...], pool: tuple[PoolModel, ...],
                 rate_per_s: float = 25.0, report_every_s: float = 5.0, seed: int = 11) -> None:  # fmt: skip
        self.base_url = base_url
        self.models = models
        self.users = DemoUsers(pool, np.random.default_rng(seed))
        self.rate = rate_per_s
        self.report_every_s = report_every_s
        self._stop = threading.Event()
        self._window: collections.deque[Answered] = collections.deque()
        self._minute: list[Answered] = []
        self._thread = threading.Thread(target=self._run, name="turnout-demo", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        time.sleep(1.5)
        started = last_report = time.monotonic()
        minute = 1
        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            while not self._stop.is_set():
                try:
                    got = self.users.ask(client)
                except httpx.HTTPError:
                    got = None
                if got is not None:
                    self._window.append(got)
                    self._minute.append(got)
                now = time.monotonic()
                while self._window and self._window[0].at_s < now - 20.0:
                    self._window.popleft()
                if now - last_report >= self.report_every_s:
                    last_report = now
                    print(self.table(), flush=True)
                if now - started >= 60.0 * minute:
                    print(self.minute_line(minute, self._minute), flush=True)
                    self._minute = []
                    minute += 1
                self._stop.wait(1.0 / self.rate)

    def minute_line(self, minute: int, rows: list[Answered]) -> str:
        """That minute per topic: each model's share of the topic's requests, largest first."""
        parts = []
        for topic, counts in sorted(topic_shares(rows).items()):
            total = sum(counts.values())
            shares = ", ".join(f"{m} {n / total:.0%}" for m, n in counts.most_common())
            parts.append(f"{topic} ({total}): {shares}")
        return f"demo minute {minute}: " + " | ".join(parts)

    def table(self) -> str:
        rows = list(self._window)
        if not rows:
            return "demo: no traffic yet"
        head = " ".join(f"{m[:12]:>12}" for m in self.models)
        lines = [f"\n-- last 20 s: {len(rows)} requests --",
                 f"{'cluster':>7} {'top topic':>9} {head} {'cost/req':>10} {'vs priciest':>11} {'thumbs up':>9}"]  # fmt: skip
        for c in sorted({r.cluster for r in rows}):
            sub = [r for r in rows if r.cluster == c]
            topic = collections.Counter(r.topic for r in sub).most_common(1)[0][0]
            counts = collections.Counter(r.model for r in sub)
            shares = " ".join(f"{counts.get(m, 0) / len(sub):>12.0%}" for m in self.models)
            cost = sum(r.cost_usd for r in sub) / len(sub)
            ref = sum(r.priciest_cost_usd for r in sub) / len(sub)
            ups = sum(r.up for r in sub) / len(sub)
            lines.append(f"{c:>7} {topic:>9} {shares} {cost * 1000:>8.3f}m$ {cost / ref:>10.0%} {ups:>9.0%}")
        lines.append(f"{'topic':>17} {head}")
        for topic, counts in sorted(topic_shares(rows).items()):
            total = sum(counts.values())
            lines.append(f"{topic:>17} " + " ".join(f"{counts.get(m, 0) / total:>12.0%}" for m in self.models))
        return "\n".join(lines)
