"""The dashboard in a real headless browser (Debian's chromium): the DOM after its scripts ran,
and a screenshot of it, for a service that has seen traffic and a learning cycle."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest

from feedback.events import DecisionMade, uuid7
from learner.ports import DriftEvent
from tests.service.learning import drive

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", "--window-size=1400,1700")  # fmt: skip


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium binary; installed from Debian's packages when missing and we may (root, apt)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("the dashboard test needs Debian's chromium: run `apt-get install -y chromium` as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            pytest.fail(f"installing chromium failed ({' '.join(cmd)}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.fail("apt-get installed chromium but no `chromium` is on PATH")
    return found


def _run(chromium: str, profile: Path, *args: str) -> str:
    done = subprocess.run([chromium, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def _text(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert m, f"no element #{element_id} in the DOM"
    return m.group(1)


def _past_traffic(runtime, now_ms: int, rng: np.random.Generator) -> int:
    """Decisions of the last 14 minutes as the service would have stored them: the router moves
    from the most expensive model to the cheaper ones. Returns how many."""
    snap = runtime.router.view.snapshot
    k = len(snap.centroids) // (4 * snap.dim)
    pool = runtime.pool
    events = []
    for i, ts in enumerate(range(now_ms - 14 * 60_000, now_ms - 30_000, 4_000)):
        progress = i / 200
        arm = 0 if rng.random() > progress else int(rng.integers(1, len(pool)))
        p, c = int(rng.integers(30, 300)), int(rng.integers(100, 400))
        cost = (p * pool[arm].price_in_per_mtok + c * pool[arm].price_out_per_mtok) / 1e6
        events.append(DecisionMade(event_id=uuid7(ts), decision_id=uuid7(ts), ts_ms=ts, clustering=snap.clustering,
                                   cluster=int(rng.integers(k)), arm=pool[arm].name, model=pool[arm].name,
                                   margin=float(0.45 - 0.1 * progress + 0.03 * rng.random()), prompt_tokens=p,
                                   completion_tokens=c, cost_usd=cost, language="zh" if i % 2 else ""))  # fmt: skip
    runtime.rows.insert(events)
    return len(events)


def test_dashboard_renders_live_data_in_chromium(live, runtime, chromium, tmp_path):
    with httpx.Client(base_url=live, timeout=30) as client:
        drive(client, np.random.default_rng(11), per_topic=20)
        runtime.sink.flush()
        runtime.cycle.run()
        drive(client, np.random.default_rng(12), per_topic=10, feedback=False)
        runtime.sink.flush()
    snap = runtime.router.view.snapshot
    now_ms = int(time.time() * 1000)
    past = _past_traffic(runtime, now_ms, np.random.default_rng(13))
    drift = DriftEvent(version=snap.version, at_ms=now_ms - 5 * 60_000, clustering=snap.clustering, kind="margin",
                       clusters=(1,), model="", old_value=0.42, new_value=0.21, action="recluster")  # fmt: skip
    runtime.learner_log.record(snap.version, [], [drift])
    url = f"{live}/dashboard?refresh_s=1&window_s=900"

    # the DOM after the page polled a few times (virtual time runs the timers without waiting)
    dom = _run(chromium, tmp_path / "profile-dom", "--virtual-time-budget=4000", "--dump-dom", url)
    assert 'data-ready="1"' in dom, dom[:2000]
    updates = int(re.search(r'data-updates="(\d+)"', dom).group(1))
    assert updates >= 2  # it polls: live updates
    assert _text(dom, "requests") == str(60 + past)
    assert _text(dom, "snapshot").startswith(f"snapshot v{snap.version} (")
    cost = float(_text(dom, "cost-per-request").lstrip("$"))
    counterfactual = float(_text(dom, "counterfactual").lstrip("$"))
    assert 0 < cost < counterfactual
    assert re.fullmatch(r"\d+\.\d%", _text(dom, "saving"))
    n_clusters = len(snap.centroids) // (4 * snap.dim)
    assert len(re.findall(r'<section class="cluster" id="cluster-\d+"', dom)) == n_clusters
    # per cluster: a posterior row (mean and credible interval) per model, and a share chart
    assert dom.count('class="posterior"') == n_clusters * len(snap.models)
    assert dom.count('class="chart share-chart"') == n_clusters
    assert 'class="share"' in dom  # some traffic share was drawn
    assert 'class="actual"' in dom and 'class="counterfactual"' in dom and 'class="margin"' in dom
    assert re.search(rf'class="snapshot-mark".*?>v{snap.version}<', dom)
    assert dom.count('class="drift-mark"') == 1
    assert "margin in cluster 1: 0.420 -&gt; 0.210, recluster" in dom
    for model in snap.models:
        assert re.search(rf'<tr data-model="{model}"><td>{model}</td><td class="state closed">closed</td>', dom)
    # decisions per language: the driven English prompts, the past traffic's Chinese and undetected
    for lang, shown in (("en", "en"), ("zh", "zh"), ("", "unknown")):
        assert re.search(rf'<tr data-language="{lang}"><td>{shown}</td><td>\d+</td><td>\d+\.\d%</td>', dom)
    assert "update failed" not in dom

    shot = tmp_path / "dashboard.png"
    _run(chromium, tmp_path / "profile-shot", "--virtual-time-budget=4000", f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 30_000  # a drawn page, not a blank one
    assert _png_size(shot) == (1400, 1700)


def test_dashboard_draws_cache_hits_as_traffic_not_as_a_model(settings, embedder, chromium, tmp_path):
    """Response-cache hits (decisions of model "cache", cost 0) after a learning cycle: the page
    draws them as a share of the traffic, with a legend entry, and never as a pool model (no
    posterior row, no breaker row); nothing fails to update."""
    from service.runtime import Runtime
    from service.settings import CacheSettings
    from tests.servers import serve

    runtime = Runtime(msgspec.structs.replace(settings, cache=CacheSettings(enabled=True, min_quality=0.0)),
                      embedder=embedder, sim_latency_scale=0.0)  # fmt: skip
    try:
        with serve(runtime.app) as url:
            with httpx.Client(base_url=url, timeout=30) as client:
                for content in ("How do I boil an egg?", "Sort a list in Python.", "How do I boil an egg?"):
                    body = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": content}]}
                    r = client.post("/v1/chat/completions", json=body)
                    assert r.status_code == 200, r.text
                assert r.headers["x-turnout-model"] == "cache"
                fb = client.post("/v1/feedback", json={"decision_id": r.headers["x-turnout-decision-id"], "rating": "up"})
                assert fb.status_code == 202, fb.text
            runtime.sink.flush()
            runtime.cycle.run()
            dom = _run(chromium, tmp_path / "profile", "--virtual-time-budget=4000", "--dump-dom",
                       f"{url}/dashboard?refresh_s=1&window_s=900")  # fmt: skip
    finally:
        runtime.stop()
    snap = runtime.router.view.snapshot
    assert 'data-ready="1"' in dom and "update failed" not in dom, dom[:2000]
    assert _text(dom, "requests") == "3"
    assert re.search(r'<span class="item" data-model="cache">', dom)  # in the legend, with its colour
    assert re.search(r'class="share" data-model="cache"', dom)  # a third of the traffic's bars
    n_clusters = len(snap.centroids) // (4 * snap.dim)
    assert dom.count('class="posterior"') == n_clusters * len(snap.models)  # the pool's only
    assert 'class="posterior" data-model="cache"' not in dom and '<tr data-model="cache">' not in dom


# Measured in the laid-out page after it polled: is the margin line drawn on top and clear of
# the marks, how many snapshot marks and labels were drawn (and do labels collide), and is any
# text outside its card (or its chart). A text may be clipped only on purpose: by an ellipsis,
# with its full text in a title; or lie below the fold of a list that scrolls (within its width).
_MEASURE = r"""
(() => {
  const inside = (r, box) => r.left >= box.left - 0.5 && r.right <= box.right + 0.5 &&
                             r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5;
  const chart = document.getElementById("margin-chart");
  const path = chart.querySelector("path.margin");
  const out = { path: !!path, samples: 0, onTop: 0, underMarks: 0 };
  if (path) {
    const len = path.getTotalLength(), ctm = path.getScreenCTM();
    out.length = len;
    for (let i = 1; i < 60; i++) {
      const p = path.getPointAtLength(len * i / 60).matrixTransform(ctm);
      const stack = document.elementsFromPoint(p.x, p.y);
      out.samples++;
      if (stack[0] && stack[0].closest("#margin-chart") && (stack[0] === path || stack[0].tagName === "circle")) out.onTop++;
      if (stack.some(e => e.closest && e.closest(".snapshot-mark, .drift-mark"))) out.underMarks++;
    }
  }
  out.snapshotMarks = chart.querySelectorAll("g.snapshot-mark").length;
  out.snapshotTicks = chart.querySelectorAll("g.snapshot-mark rect").length;
  const labels = [...chart.querySelectorAll("text.snapshot-mark-label, text.drift-mark-label")];
  out.labels = labels.map(t => t.textContent);
  const boxes = labels.map(t => t.getBoundingClientRect());
  out.labelOverlaps = 0;
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) out.labelOverlaps++;
  }
  out.plotWidth = chart.viewBox.baseVal.width;
  const bad = [];
  const cards = document.querySelectorAll(".card, .panel, .cluster");
  for (const card of cards) {
    const cardBox = card.getBoundingClientRect();
    const walker = document.createTreeWalker(card, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const el = node.parentElement;
      if (!node.textContent.trim() || el.closest("title")) continue;
      const svg = el.closest("svg");
      const range = document.createRange();
      range.selectNodeContents(node);
      const r = svg ? el.getBoundingClientRect() : range.getBoundingClientRect();
      if (!r.width && !r.height) continue;
      const where = (card.id || card.className) + ": " + node.textContent.trim().slice(0, 60);
      if (svg) {
        if (!inside(r, svg.getBoundingClientRect()) || !inside(r, cardBox)) bad.push("outside its chart: " + where);
        continue;
      }
      if (inside(r, cardBox)) continue;
      const scroller = el.closest("ul, ol, div");  // a list that scrolls: below its fold is not cut off
      if (scroller && card.contains(scroller) && ["auto", "scroll"].includes(getComputedStyle(scroller).overflowY)) {
        const s = scroller.getBoundingClientRect();
        if (r.left >= s.left - 0.5 && r.right <= s.right + 0.5 && inside(s, cardBox)) continue;
      }
      const clip = el.closest("[title]");
      const style = clip && getComputedStyle(clip);
      const ellipsis = clip && card.contains(clip) && style.textOverflow === "ellipsis" && style.overflow === "hidden"
                       && inside(clip.getBoundingClientRect(), cardBox) && clip.title.startsWith(node.textContent.trim());
      if (!ellipsis) bad.push("outside its card: " + where);
    }
  }
  out.overflow = bad;
  out.clusters = document.querySelectorAll("section.cluster").length;
  out.about = [...document.querySelectorAll("section.cluster")].map(sec => ({
    heads: [...sec.querySelectorAll(".about-head")].map(e => e.textContent),
    texts: [...sec.querySelectorAll(".about li .text")].map(e => e.title),
    clipped: [...sec.querySelectorAll(".about li .text")].filter(e => e.scrollWidth > e.clientWidth).length,
  }));
  out.shortenedStats = [...document.querySelectorAll(".posterior text.stat, .posterior text.model-name")]
    .filter(t => t.firstChild && t.firstChild.nodeValue.includes("\u2026")).map(t => t.textContent);
  out.status = document.getElementById("status").textContent;
  return out;
})()
"""

_LONG = ("Summarise this quarterly report for the board, keeping every figure about revenue, churn and "
         "hiring, and flag anything that contradicts last quarter: ") * 4  # fmt: skip
_UNBROKEN = "https://example.com/" + "a-very-long-path-segment-without-spaces-" * 8 + "?q=1"


def test_dashboard_stays_readable_with_300_snapshots_and_12_clusters(settings, embedder, chromium, tmp_path):
    """A store with 300 snapshots in the window, 12 clusters, prompt storage on and long prompts:
    the margin line is drawn on top and clear of the marks, the marks are thinned (a tick per
    few pixels, a few labels that do not collide), and no text leaves its card or its chart."""
    from learner.snapshot import centroid_array, encode_snapshot
    from service.runtime import Runtime
    from simulations.pool import DEFAULT_TOPICS, make_prompt
    from tests.servers import serve
    from tests.service.cdp import Page

    settings = msgspec.structs.replace(
        settings, router=msgspec.structs.replace(settings.router, n_clusters=12),
        server=msgspec.structs.replace(settings.server, store_prompts=True),
    )  # fmt: skip
    runtime = Runtime(settings, embedder=embedder, sim_latency_scale=0.0)
    try:
        snap = runtime.router.view.snapshot
        cents = centroid_array(snap)
        assert len(cents) == 12
        # a long-lived router: evidence and decisions in the tens of thousands per cluster and model
        big = msgspec.structs.replace(snap, version=snap.version + 1000,
                                      n=tuple(tuple(12345.6 + 1000 * k for _ in snap.models) for k in range(12)),
                                      decisions=tuple(tuple(98765 for _ in snap.models) for _ in range(12)))  # fmt: skip
        assert runtime.router.swap(big)
        now_ms = int(time.time() * 1000)
        rng = np.random.default_rng(5)
        prompts = [make_prompt(DEFAULT_TOPICS[i % len(DEFAULT_TOPICS)], rng) for i in range(300)] + [_LONG, _UNBROKEN]
        emb = embedder.embed(prompts)
        emb[-2:] = cents[:2]  # the long ones sit on the centres of clusters 0 and 1: shown first there
        events = []
        for i, (text, e) in enumerate(zip(prompts, emb)):
            ts = now_ms - 50 * 60_000 + i * 9_000
            model = runtime.pool[i % len(runtime.pool)]
            events.append(DecisionMade(
                event_id=uuid7(ts), decision_id=uuid7(ts), ts_ms=ts, clustering=snap.clustering,
                cluster=int(np.argmax(cents @ e)), arm=model.name, model=model.name, prompt_tokens=100,
                completion_tokens=200, cost_usd=(100 * model.price_in_per_mtok + 200 * model.price_out_per_mtok) / 1e6,
                margin=float(0.5 - 0.3 * i / len(prompts)), embedding=e.astype("<f4").tobytes(), prompt_text=text,
            ))  # fmt: skip
        runtime.rows.insert(events)
        for v in range(1, 301):  # a snapshot every 10 s over the last 50 minutes
            at = now_ms - 50 * 60_000 + v * 10_000
            body = encode_snapshot(msgspec.structs.replace(snap, version=snap.version + v, parent=snap.version + v - 1,
                                                           created_at_ms=at))  # fmt: skip
            runtime.snapshots.save(snap.version + v, snap.version + v - 1, at, "scheduled", body)
        runtime.learner_log.record(snap.version, [], [
            DriftEvent(version=snap.version, at_ms=now_ms - m * 60_000, clustering=snap.clustering, kind="margin",
                       clusters=tuple(range(m % 12, 12)), model="", old_value=0.42, new_value=0.21, action="recluster")
            for m in (40, 20, 19)])  # fmt: skip

        with serve(runtime.app) as url, Page(chromium, tmp_path / "profile", _FLAGS) as page:
            page.open(f"{url}/dashboard?refresh_s=1&window_s=3600")
            page.evaluate("new Promise(ok => { const t = setInterval(() => { if (Number(document.body.dataset.updates)"
                          " >= 2) { clearInterval(t); ok(true); } }, 50); })")  # fmt: skip
            got = page.evaluate(_MEASURE)
            page.screenshot(tmp_path / "dashboard-300.png")
    finally:
        runtime.stop()

    assert got["status"].startswith("updated"), got["status"]
    assert got["clusters"] == 12
    # the margin line: drawn, on top at every sampled point, and no mark under it (but where a
    # drift line crosses it)
    assert got["path"] and got["length"] > 200 and got["samples"] == 59
    assert got["onTop"] == got["samples"], got
    assert got["underMarks"] <= 3, got
    # thinned: 300 snapshots, at most one tick per 4 units of a 560-unit chart, a few labels
    assert 0 < got["snapshotMarks"] == got["snapshotTicks"] <= got["plotWidth"] / 4 < 300
    assert 1 <= sum(t.startswith("v") for t in got["labels"]) <= 10
    assert f"v{snap.version + 300}" in got["labels"]  # the newest is always labelled
    assert got["labelOverlaps"] == 0
    # every text inside its card (or its chart), clipped only with an ellipsis and a title
    assert got["overflow"] == [], got["overflow"]
    assert got["shortenedStats"] == []  # numbers and model names are never shortened ("n=85 d=8...")
    # what each cluster is about: its nearest examples and stored prompts
    for about in got["about"]:
        assert any(h.startswith("examples nearest the centre") for h in about["heads"]), about
        assert any(h.startswith("stored prompts nearest the centre") for h in about["heads"]), about
        assert 1 <= len(about["texts"]) <= 6
    assert any(a["clipped"] for a in got["about"])  # the long prompts were shortened, not cut
    assert _png_size(tmp_path / "dashboard-300.png") == (1400, 1700)
