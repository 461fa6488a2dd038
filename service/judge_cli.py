"""``turnout judge``: the judge's agreement with the thumbs and the shadow leakage per cluster.

    turnout judge [--window-s 86400] [--data-dir DIR | --url URL] [--json]

Through the admin API of the running service that holds the store (``GET /v1/admin/judge`` and
``/v1/admin/shadow``), or, when none does, on the store itself with the same SQL
(``feedback/clickhouse_judge.py``). Registered by ``service.cli``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import msgspec

__all__ = ["register"]


def _here(args: argparse.Namespace, since_ms: int) -> dict[str, Any]:
    from feedback.clickhouse import connect
    from feedback.clickhouse_judge import calibration, leakage
    from feedback.clickhouse_schema import migrate

    settings = args.load_settings(args)
    client = connect(settings.storage.dsn(), settings.storage.clickhouse_database)
    migrate(client)
    return {"calibration": msgspec.to_builtins(calibration(client, since_ms, settings.judge.agree_at)),
            "clusters": msgspec.to_builtins(leakage(client, since_ms))}  # fmt: skip


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def cmd_judge(args: argparse.Namespace) -> int:
    import time

    from service.settings import ConfigError

    if not 1 <= args.window_s <= 400 * 86400:
        raise ConfigError(f"--window-s must be in [1, {400 * 86400}], got {args.window_s}")
    admin = args.admin(args)
    if admin is not None:
        try:
            judge, shadow = admin.judge(args.window_s), admin.shadow(args.window_s)
        finally:
            admin.close()
        report = {"calibration": judge.get("calibration"), "clusters": shadow.get("clusters"), "judge": judge}
    else:
        report = _here(args, int(time.time() * 1000) - args.window_s * 1000)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if report.get("judge", {}).get("enabled") is False:
        print("the service runs neither the judge nor shadow routing (off in its configuration: [judge] and "
              "[shadow] enabled = true would start them); what its store holds of earlier runs:")
    cal = report["calibration"]
    if cal is None:
        print("judge calibration: n/a (the service does not hold a ClickHouse store)")
    elif not cal["pairs"]:
        print("judge calibration: no decision has both a judge grade and a rating in the window")
    else:
        print(f"judge vs thumbs: {cal['pairs']} decisions with both, agreement {_pct(cal['agreement'])} "
              f"(95% {_pct(cal['agreement_low'])}-{_pct(cal['agreement_high'])}), kappa {cal['kappa']:.2f}, "
              f"correlation {cal['correlation']:.2f}; pass/up {cal['judge_pass_up']}, pass/down {cal['judge_pass_down']}, "
              f"fail/up {cal['judge_fail_up']}, fail/down {cal['judge_fail_down']} (pass: grade >= {cal['agree_at']:g})")  # fmt: skip
    rows = report["clusters"]
    if not rows:
        print("shadow leakage: no shadowed request in the window" if rows is not None else "shadow leakage: n/a")
        return 0
    print(f"\n{'cluster':>9} {'shadowed':>9} {'judged':>7} {'worse':>6} {'leakage':>8} {'95% interval':>15} "
          f"{'routed USD':>11} {'reference USD':>14} {'saved':>7} {'agreement':>16} {'not asked':>9}")  # fmt: skip
    for r in rows:
        interval = f"{_pct(r['leakage_low'])}-{_pct(r['leakage_high'])}" if r["judged"] else "n/a"
        # a candidate's decisions that chose the model that answered ("n/a" against a fixed reference)
        agreement = f"{r['agreed']}/{r['decided']} {_pct(r['agreement'])}" if r.get("decided") else "n/a"
        print(f"{r['clustering']:>4}/{r['cluster']:<4} {r['shadowed']:9d} {r['judged']:7d} {r['worse']:6d} "
              f"{_pct(r['leakage']) if r['judged'] else 'n/a':>8} {interval:>15} {r['routed_cost_usd']:11.6f} "
              f"{r['reference_cost_usd']:14.6f} {_pct(r['saved_share']):>7} {agreement:>16} "
              f"{r.get('unanswered', 0):9d}")  # fmt: skip
    unasked = sum(r.get("unanswered", 0) for r in rows)
    if unasked:
        print(f"\n{unasked} shadows were not asked or failed (the shadow's budget for the day spent, a cascade, or "
              "an error; GET /v1/admin/shadow counts why): leakage, costs and 'saved' cover only the answered ones")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("judge", help="the judge's agreement with thumbs, and shadow leakage per cluster")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--data-dir", help="where the embedded ClickHouse keeps its data (default ./.turnout)")
    p.add_argument("--url", help="the admin API of a running service (default: the one that holds --data-dir)")
    p.add_argument("--window-s", type=int, default=86400, help="how far back (default 86400: a day)")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_judge)
