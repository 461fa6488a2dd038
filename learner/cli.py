"""``turnout snapshot list | show VERSION | rollback VERSION``: the router's snapshots.

Registered by ``service.cli``, which hands over how to reach them: ``args.admin(args)`` is the
admin API of the running process that holds the store (or None: no process holds it), and
``args.open_stores(args)`` opens the stores here. This package may not import the service or
the ClickHouse adapter. Either way the same ``learner.admin`` structs are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from typing import Any

from learner.admin import SnapshotDetail, SnapshotList, list_snapshots, load_snapshot, roll_back, snapshot_detail
from learner.snapshot import SnapshotError

__all__ = ["print_detail", "print_list", "register", "when"]


def when(ms: int) -> str:
    """A millisecond time (a watermark) in UTC, as the CLI prints it; "-" for 0."""
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else "-"


def _remote(args: argparse.Namespace) -> Any:
    """The running process's admin API when it holds the store, else None (open the store here)."""
    admin = getattr(args, "admin", None)
    return admin(args) if admin is not None else None


def print_list(listing: SnapshotList) -> None:
    if not listing.snapshots:
        print("no snapshots yet")
        return
    print(f"{'version':>8}  {'parent':>6}  {'created':<23}  reason")
    for row in listing.snapshots:
        print(f"{row.version:>8}  {row.parent:>6}  {when(row.created_at_ms):<23}  {row.reason}"
              + ("  (live)" if row.live else ""))  # fmt: skip


def cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print(f"turnout snapshot list: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    remote = _remote(args)
    if remote is not None:
        print_list(remote.snapshots(args.limit))
        return 0
    _, snapshots, _ = args.open_stores(args)
    print_list(list_snapshots(snapshots, args.limit))
    return 0


def print_detail(d: SnapshotDetail) -> None:
    print(f"snapshot v{d.version} (parent v{d.parent}), {d.reason}, created {when(d.created_at_ms)}"
          + (" (live)" if d.live else ""))  # fmt: skip
    print(f"watermark {when(d.watermark_ms)}; clustering {d.clustering}: {d.clusters} clusters of dim {d.dim}")
    width = max(len(m) for m in d.models)
    print(f"posterior mean quality (decisions) per cluster:\n{'':>{width}}  " +
          "  ".join(f"{'c' + str(c):>13}" for c in range(d.clusters)))  # fmt: skip
    for j, model in enumerate(d.models):
        cells = "  ".join(f"{d.mean[c][j]:>5.3f} ({d.decisions[c][j]:>5})" for c in range(d.clusters))
        print(f"{model:>{width}}  {cells}")
    for b in d.budgets:
        print(f"budget {b.policy}: target ${b.target_cost_usd:.6f}/request, realised ${b.realised_cost_usd:.6f}, "
              f"cost weight {b.cost_weight:.4g} ({b.decisions} requests)")  # fmt: skip
    if d.explore_share:
        capped = [f"{m} {s:.0%}" for m, s in zip(d.models, d.explore_share) if s < 1.0]
        print("exploration capped: " + (", ".join(capped) or "none"))
    for s in d.drift:
        print(f"drift c{s.cluster}: {s.margin_blocks} margin blocks, baseline {s.baseline:.3f}, last {s.last:.3f}")
    for e in d.drift_events:
        print(f"drift event: {e.kind} in clusters {list(e.clusters)} {e.model} {e.old_value:.3f} -> {e.new_value:.3f}, "
              f"{e.action}")  # fmt: skip


def cmd_show(args: argparse.Namespace) -> int:
    remote = _remote(args)
    try:
        if remote is not None:
            detail = remote.snapshot(args.version)
        else:
            _, snapshots, learner_log = args.open_stores(args)
            detail = snapshot_detail(load_snapshot(snapshots, args.version), learner_log.drift_events(1000))
    except (LookupError, SnapshotError) as exc:
        print(f"turnout snapshot show: {exc}", file=sys.stderr)
        return 2
    print_detail(detail)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    remote = _remote(args)
    try:
        if remote is not None:
            done = remote.rollback(args.version)
            new, parent, where = done.version, done.parent, "the service routes with it now"
        else:
            _, snapshots, _ = args.open_stores(args)
            snap = roll_back(snapshots, args.version, int(time.time() * 1000))
            new, parent, where = snap.version, snap.parent, "services pick it up at their next poll"
    except (LookupError, SnapshotError) as exc:
        print(f"turnout snapshot rollback: {exc}", file=sys.stderr)
        return 2
    print(f"snapshot v{new} routes as v{args.version} did (parent v{parent}); {where}, "
          "the learner continues from it")  # fmt: skip
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--data-dir", help="where the embedded ClickHouse keeps its data (default ./.turnout)")
    p.add_argument("--url", help="the admin API of a running service (default: the one that holds --data-dir, if any)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("snapshot", help="list, show or roll back the router's snapshots")
    sub = p.add_subparsers(dest="snapshot_command", required=True)
    ls = sub.add_parser("list", help="newest snapshots first, the live one marked")
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
