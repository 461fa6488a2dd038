"""``turnout up --demo``, shortened: the demo's own simulated users against the real service, a
learning cycle every ``LEARN_EVERY`` requests instead of every 10 s, through the growth
re-clusterings and on past the last one.

What issue 10 asks of the demo: from minute 3 to minute 10, cooking and travel at least 80% on
sim-chat (the cheap model that is good at them) and code at least 80% on sim-coder, per topic
(the demo's table is per cluster). The demo sends 5-25 requests a second depending on the
machine (minute 3 begins at 600-3,000 requests; the README says what three runs showed): judged
here are the requests from ``JUDGED_FROM`` on, window by window, the last re-clustering among them.
"""

from __future__ import annotations

import httpx
import msgspec
import numpy as np
import pytest

from service.demo import Answered, DemoUsers, topic_shares

LEARN_EVERY = 200  # re-clusterings at 400, 1000 and 2200 requests (then 4400 > recluster_until)
REQUESTS = 3000
JUDGED_FROM = 1400
WINDOW = 400  # some 100 requests of each topic
WANT = {"code": "sim-coder", "cooking": "sim-chat", "travel": "sim-chat"}


@pytest.fixture(params=[1, 3])
def settings(request, settings):
    """Router seeds 1 and 3 (the demo's users take the same seed; seed 3 lost code to sim-chat after a
    re-clustering that explained the traffic worse than the live one)."""
    return msgspec.structs.replace(settings, router=msgspec.structs.replace(settings.router, seed=request.param))


def drive(base_url: str, users: DemoUsers, learn, requests: int, learn_every: int) -> list[Answered]:
    """``requests`` of the users, in order, and a learning cycle after every ``learn_every``."""
    rows = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for i in range(1, requests + 1):
            got = users.ask(client)
            assert got is not None, f"request {i} was not answered"
            rows.append(got)
            if i % learn_every == 0:
                learn()
    return rows


def test_each_topic_stays_on_the_model_good_and_cheap_for_it(live, runtime, settings):
    users = DemoUsers(runtime.pool, np.random.default_rng(settings.router.seed))
    reasons = []
    rows = drive(live, users, lambda: reasons.append(runtime.cycle.run().reason), REQUESTS, LEARN_EVERY)
    # it went through the re-clusterings, the last one among the judged requests, and no more are due
    reclustered_at = [(i + 1) * LEARN_EVERY for i, r in enumerate(reasons) if r == "recluster"]
    assert len(reclustered_at) >= 3 and JUDGED_FROM <= reclustered_at[-1] < REQUESTS, reasons
    assert not runtime.cycle.due_rebuild(runtime.cycle.current())
    short = {}
    for start in range(JUDGED_FROM, REQUESTS, WINDOW):
        got = topic_shares(rows[start : start + WINDOW])
        shares = {t: got[t][m] / sum(got[t].values()) for t, m in WANT.items()}
        short.update({(start, t): round(s, 3) for t, s in shares.items() if s < 0.8})
    assert not short, f"(first request of the window, topic): share on its model: {short}"
