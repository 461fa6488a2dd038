"""``turnout snapshot list | show VERSION | rollback VERSION``: the router's snapshots in ClickHouse.

Registered by ``service.cli``, which hands over how to open the stores (``args.open_stores``):
this package may not import the service or the ClickHouse adapter.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from learner.routing import snapshot_posterior
from learner.snapshot import SnapshotError, decode_snapshot, encode_snapshot, rollback_snapshot

__all__ = ["register"]


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else "-"


def cmd_list(args: argparse.Namespace) -> int:
    _, snapshots, _ = args.open_stores(args)
    rows = snapshots.list(args.limit)
    if not rows:
        print("no snapshots yet")
        return 0
    print(f"{'version':>8}  {'parent':>6}  {'created':<23}  reason")
    for info in rows:
        print(f"{info.version:>8}  {info.parent:>6}  {_when(info.created_at_ms):<23}  {info.reason}")
    return 0


def _load(snapshots: Any, version: int):
    blob = snapshots.get(version)
    if blob is None:
        raise LookupError(f"snapshot v{version} does not exist")
    return decode_snapshot(blob)


def cmd_show(args: argparse.Namespace) -> int:
    _, snapshots, learner_log = args.open_stores(args)
    try:
        snap = _load(snapshots, args.version)
    except (LookupError, SnapshotError) as exc:
        print(f"turnout snapshot show: {exc}")
        return 1
    alpha, beta = snapshot_posterior(snap)
    mean = alpha / (alpha + beta)
    print(f"snapshot v{snap.version} (parent v{snap.parent}), {snap.reason}, created {_when(snap.created_at_ms)}")
    print(f"watermark {_when(snap.watermark_ms)}; clustering {snap.clustering}: {len(snap.n)} clusters of dim {snap.dim}")
    width = max(len(m) for m in snap.models)
    print(f"posterior mean quality (decisions) per cluster:\n{'':>{width}}  " +
          "  ".join(f"{'c' + str(c):>13}" for c in range(len(snap.n))))  # fmt: skip
    for j, model in enumerate(snap.models):
        cells = "  ".join(f"{mean[c, j]:>5.3f} ({snap.decisions[c][j]:>5})" for c in range(len(snap.n)))
        print(f"{model:>{width}}  {cells}")
    for b in snap.budgets:
        print(f"budget {b.policy}: target ${b.target_cost_usd:.6f}/request, realised ${b.realised_cost_usd:.6f}, "
              f"cost weight {b.cost_weight:.4g} ({b.decisions} requests)")  # fmt: skip
    if snap.explore_share:
        capped = [f"{m} {s:.0%}" for m, s in zip(snap.models, snap.explore_share) if s < 1.0]
        print("exploration capped: " + (", ".join(capped) or "none"))
    for c, d in enumerate(snap.drift):
        if d.margin_blocks:
            print(f"drift c{c}: {len(d.margin_blocks)} margin blocks, baseline {np.mean(d.margin_blocks[:8]):.3f}, "
                  f"last {d.margin_blocks[-1]:.3f}")  # fmt: skip
    for e in (e for e in learner_log.drift_events(1000) if e.version == snap.version):
        print(f"drift event: {e.kind} in clusters {list(e.clusters)} {e.model} {e.old_value:.3f} -> {e.new_value:.3f}, "
              f"{e.action}")  # fmt: skip
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    _, snapshots, _ = args.open_stores(args)
    latest_blob = snapshots.latest()
    try:
        target = _load(snapshots, args.version)
        if latest_blob is None:
            raise LookupError("no snapshots")
        latest = decode_snapshot(latest_blob)
    except (LookupError, SnapshotError) as exc:
        print(f"turnout snapshot rollback: {exc}")
        return 1
    snap = rollback_snapshot(target, latest, int(time.time() * 1000))
    snapshots.save(snap.version, snap.parent, snap.created_at_ms, snap.reason, encode_snapshot(snap))
    print(f"snapshot v{snap.version} routes as v{target.version} did (parent v{latest.version}); "
          "services pick it up at their next poll, the learner continues from it")  # fmt: skip
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--data-dir", help="where the embedded ClickHouse keeps its data (default ./.turnout)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("snapshot", help="list, show or roll back the router's snapshots")
    sub = p.add_subparsers(dest="snapshot_command", required=True)
    ls = sub.add_parser("list", help="newest snapshots first")
    _common(ls)
    ls.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    ls.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="one snapshot: posteriors, traffic, budgets, drift")
    _common(show)
    show.add_argument("version", type=int)
    show.set_defaults(func=cmd_show)
    rb = sub.add_parser("rollback", help="publish a new snapshot that routes as VERSION did")
    _common(rb)
    rb.add_argument("version", type=int)
    rb.set_defaults(func=cmd_rollback)
