"""``turnout up --demo``: simulated users on a few topics, and a live table of what they get.

Users send prompts of the simulated topics to ``model="auto"`` and give thumbs that follow each
simulated model's quality on that topic. Every few seconds a table shows, per cluster, each
model's share of recent traffic and the mean cost against always using the priciest model.
"""

from __future__ import annotations

import collections
import threading
import time

import httpx
import numpy as np

from service.chat import PoolModel
from simulations.pool import DEFAULT_POOL, DEFAULT_TOPICS, answer, make_prompt

__all__ = ["Demo"]


class Demo:
    def __init__(self, base_url: str, models: tuple[str, ...], pool: tuple[PoolModel, ...],
                 rate_per_s: float = 25.0, report_every_s: float = 5.0, seed: int = 11) -> None:  # fmt: skip
        self.base_url = base_url
        self.models = models
        self.prices = {m.name: m for m in pool}
        self.sim = {m.name: m for m in DEFAULT_POOL}
        self.rate = rate_per_s
        self.report_every_s = report_every_s
        self.rng = np.random.default_rng(seed)
        self._stop = threading.Event()
        self._window: collections.deque = collections.deque()
        self._thread = threading.Thread(target=self._run, name="turnout-demo", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _priciest_cost(self, prompt: str, prompt_tokens: int) -> float:
        name = max(self.prices, key=lambda n: self.prices[n].price_out_per_mtok + self.prices[n].price_in_per_mtok)
        price = self.prices[name]
        tokens = answer(self.sim[name], prompt)[1] if name in self.sim else 300
        return (prompt_tokens * price.price_in_per_mtok + tokens * price.price_out_per_mtok) / 1e6

    def _run(self) -> None:
        time.sleep(1.5)
        last_report = time.monotonic()
        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            while not self._stop.is_set():
                topic = DEFAULT_TOPICS[self.rng.integers(len(DEFAULT_TOPICS))]
                prompt = make_prompt(topic, self.rng)
                try:
                    r = client.post("/v1/chat/completions",
                                    json={"model": "auto", "messages": [{"role": "user", "content": prompt}]})  # fmt: skip
                    if r.status_code == 200:
                        model = r.headers["x-turnout-model"]
                        cost = float(r.headers["x-turnout-cost-usd"])
                        up = self.rng.random() < self.sim[model].quality_on(topic.name) if model in self.sim else True
                        client.post("/v1/feedback", json={"decision_id": r.headers["x-turnout-decision-id"],
                                                          "rating": "up" if up else "down"})  # fmt: skip
                        ptoks = r.json()["usage"]["prompt_tokens"]
                        self._window.append((time.monotonic(), int(r.headers["x-turnout-cluster"]), topic.name,
                                             model, cost, self._priciest_cost(prompt, ptoks), up))  # fmt: skip
                except httpx.HTTPError:
                    pass
                now = time.monotonic()
                while self._window and self._window[0][0] < now - 20.0:
                    self._window.popleft()
                if now - last_report >= self.report_every_s:
                    last_report = now
                    print(self.table(), flush=True)
                self._stop.wait(1.0 / self.rate)

    def table(self) -> str:
        rows = list(self._window)
        if not rows:
            return "demo: no traffic yet"
        lines = [f"\n-- last 20 s: {len(rows)} requests --",
                 f"{'cluster':>7} {'top topic':>9} " + " ".join(f"{m[:12]:>12}" for m in self.models)
                 + f" {'cost/req':>10} {'vs priciest':>11} {'thumbs up':>9}"]  # fmt: skip
        for c in sorted({r[1] for r in rows}):
            sub = [r for r in rows if r[1] == c]
            topic = collections.Counter(r[2] for r in sub).most_common(1)[0][0]
            counts = collections.Counter(r[3] for r in sub)
            shares = " ".join(f"{counts.get(m, 0) / len(sub):>12.0%}" for m in self.models)
            cost = sum(r[4] for r in sub) / len(sub)
            ref = sum(r[5] for r in sub) / len(sub)
            ups = sum(r[6] for r in sub) / len(sub)
            lines.append(f"{c:>7} {topic:>9} {shares} {cost * 1000:>8.3f}m$ {cost / ref:>10.0%} {ups:>9.0%}")
        return "\n".join(lines)
