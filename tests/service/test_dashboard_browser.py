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
import numpy as np
import pytest

from feedback.events import DecisionMade, uuid7
from feedback.ports import DriftEvent
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
                                   completion_tokens=c, cost_usd=cost))  # fmt: skip
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
    assert "update failed" not in dom

    shot = tmp_path / "dashboard.png"
    _run(chromium, tmp_path / "profile-shot", "--virtual-time-budget=4000", f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 30_000  # a drawn page, not a blank one
    assert _png_size(shot) == (1400, 1700)
