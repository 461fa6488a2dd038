"""Clients that keep requests in flight and count exactly what they were answered.

Each client thread loops: a chat completion (every ``stream_every``-th one streamed), then a thumb
on the decision it got. A decision counts as answered when the client has its whole answer (the
JSON body, or the stream up to ``data: [DONE]``) with its ``x-turnout-decision-id``; a thumb when
the client has its 202 and event id. Refused, cut or failed requests count for nothing, which is
right: the client was not told that anything was recorded.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

__all__ = ["Traffic"]


class Traffic:
    def __init__(self, base_url: str, clients: int = 4, stream_every: int = 3) -> None:
        self.base_url = base_url
        self.stream_every = stream_every
        self.decisions: list[str] = []  # decision ids, one per answered completion
        self.feedback: list[str] = []  # event ids, one per accepted thumb
        self.errors: list[str] = []  # what the clients saw instead of an answer (for failure messages)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    @property
    def answered(self) -> int:
        return len(self.decisions)

    def _run(self, client_no: int) -> None:
        n = 0
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self._stop.is_set():
                n += 1
                body = {"model": "auto", "messages": [
                    {"role": "user", "content": f"Client {client_no} asks question {n} about bread."}]}  # fmt: skip
                try:
                    ask = self._stream if n % self.stream_every == 0 else self._complete
                    decision = ask(client, body)
                    if decision is None:
                        continue
                    r = client.post("/v1/feedback", json={"decision_id": decision, "rating": "up"})
                    if r.status_code == 202 and r.json()["status"] == "accepted":
                        with self._lock:
                            self.feedback.append(r.json()["event_id"])
                    else:
                        self.errors.append(f"feedback {r.status_code}")
                except httpx.HTTPError as exc:
                    self.errors.append(type(exc).__name__)
                    self._stop.wait(0.05)

    def _complete(self, client: httpx.Client, body: dict) -> str | None:
        r = client.post("/v1/chat/completions", json=body)
        return self._answered(r.headers.get("x-turnout-decision-id"), r.status_code, whole=True)

    def _stream(self, client: httpx.Client, body: dict) -> str | None:
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = list(r.iter_lines())
        whole = r.status_code != 200 or "data: [DONE]" in lines
        return self._answered(r.headers.get("x-turnout-decision-id"), r.status_code, whole)

    def _answered(self, decision: str | None, status: int, whole: bool) -> str | None:
        """Count the decision of a whole answer (an error answer too: its decision is recorded);
        the decision id to give a thumb to, for a 200."""
        if decision is None or not whole:
            self.errors.append(f"chat {status}" + ("" if whole else " cut"))
            return None
        with self._lock:
            self.decisions.append(decision)
        return decision if status == 200 else None
