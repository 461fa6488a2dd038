"""Shadow routing and the judge end to end on the embedded ClickHouse: requests through the real
app (simulated pool), shadows and grades in the background, then the leakage per cluster on the
admin API and the dashboard, and the judge's agreement with the thumbs given."""

from __future__ import annotations

import re
import time

import httpx
import msgspec
import pytest

from tests.servers import serve
from tests.service.test_dashboard_browser import _run, chromium  # noqa: F401  (the browser fixture)
from tests.service.providers import FakeProvider


@pytest.fixture
def judged(settings, embedder):
    from service.runtime import Runtime

    grader = FakeProvider("grader", answer="Score: 6")
    with serve(grader) as judge_url:
        s = msgspec.structs.replace(
            settings,
            judge=msgspec.convert({"enabled": True, "base_url": judge_url + "/v1", "sample": 1.0,
                                   "price_in_per_mtok": 1.0, "price_out_per_mtok": 1.0}, type(settings.judge)),
            shadow=msgspec.convert({"enabled": True, "reference": "sim-frontier", "share": 1.0},
                                   type(settings.shadow)),
        )  # fmt: skip
        rt = Runtime(s, embedder=embedder, sim_latency_scale=0.0)
        try:
            with serve(rt.app) as url:
                yield rt, url, grader
        finally:
            rt.stop()


def test_leakage_per_cluster_and_calibration_through_the_admin_api_and_the_dashboard(judged, chromium, tmp_path,
                                                                                       capsys):
    rt, url, grader = judged
    ids = []
    for i in range(12):
        r = httpx.post(url + "/v1/chat/completions", timeout=10,
                       json={"model": "auto", "messages": [{"role": "user", "content": f"How do I sort list {i}?"}]})
        assert r.status_code == 200
        ids.append(r.headers["x-turnout-decision-id"])
    counts = rt.evaluation.offpath.counts
    deadline = time.monotonic() + 30
    while sum(n for (_, o), n in counts.items() if o in ("done", "failed")) < 12:
        assert time.monotonic() < deadline, dict(counts)
        time.sleep(0.05)
    for did in ids[:4]:  # thumbs on a few: up agrees with a grade of 0.6, down does not
        assert httpx.post(url + "/v1/feedback", json={"decision_id": did, "rating": "up"}).status_code == 202
    for did in ids[4:6]:
        assert httpx.post(url + "/v1/feedback", json={"decision_id": did, "rating": "down"}).status_code == 202
    rt.sink.flush(30.0)
    shadowed = counts["shadow", "done"]
    same = rt.evaluation.shadow.counts["same_model"]
    # a request routed to the reference itself is not shadowed; its answer is graded alone
    assert shadowed + counts["judge", "done"] == 12 and counts["judge", "done"] == same and shadowed >= 1

    report = httpx.get(url + "/v1/admin/shadow").json()
    rows = report["clusters"]
    assert sum(r["shadowed"] for r in rows) == shadowed
    assert sum(r["judged"] for r in rows) == shadowed  # both answers graded 0.6: ties, no leakage
    assert all(r["worse"] == 0 and r["leakage"] == 0.0 and r["leakage_high"] > 0 for r in rows)
    assert all(r["reference_cost_usd"] > r["routed_cost_usd"] for r in rows)  # the frontier model costs most

    judge = httpx.get(url + "/v1/admin/judge").json()
    cal = judge["calibration"]
    graded = {d for d in ids[:6]}  # every routed answer was graded (alone, or in its shadow pair)
    assert cal["pairs"] == len(graded) and cal["agree"] == 4 and cal["judge_pass_down"] == 2
    assert judge["judge"]["spent_today_usd"] > 0 and judge["queue"]["jobs"]

    history = httpx.get(url + "/v1/router/history?window_s=3600&buckets=6").json()
    counted = ("clustering", "cluster", "shadowed", "judged", "worse", "better")
    assert [{k: r[k] for k in counted} for r in history["shadow"]] == [{k: r[k] for k in counted} for r in rows]
    assert [r["saved_usd"] for r in history["shadow"]] == pytest.approx([r["saved_usd"] for r in rows])  # sums in any order
    assert history["decisions"] == 12  # shadow and judge calls are not traffic
    # the page draws the table: one row per cluster with its leakage and interval
    dom = _run(chromium, tmp_path / "profile", "--virtual-time-budget=4000", "--dump-dom",
               f"{url}/dashboard?refresh_s=1&window_s=3600")  # fmt: skip
    assert 'data-ready="1"' in dom, dom[:2000]
    section = re.search(r'<section id="shadow-section"[^>]*>(.*?)</section>', dom, re.S)
    assert section and "hidden" not in section.group(0)[:60], dom[:3000]
    drawn = re.findall(r'<tr data-cluster="(\d+)">(.*?)</tr>', section.group(1), re.S)
    assert sorted(int(c) for c, _ in drawn) == sorted(r["cluster"] for r in rows)
    assert all("0.0%" in cells for _, cells in drawn)

    # the same through ``turnout judge`` against the running service
    from service.cli import main

    assert main(["judge", "--url", url]) == 0
    out = capsys.readouterr().out
    assert f"judge vs thumbs: {len(graded)} decisions with both" in out
    assert sum(int(line.split()[1]) for line in out.splitlines() if line.strip()[:1].isdigit()) == shadowed
