"""``turnout simulate | replay | ope``: the evidence a team wants before a router meets users.

Registered by ``service.cli`` through ``register(subparsers)``; each command returns an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import numpy as np

from simulations.plots import PlotsUnavailable, pyplot
from simulations.replay import ReplayConfig

__all__ = ["register"]

_json = msgspec.json.Encoder()


def _print_json(obj: object) -> None:
    sys.stdout.write(msgspec.json.format(_json.encode(obj), indent=2).decode() + "\n")


def _embedder(name: str, dim: int):
    from learner.embedding import HashingEmbedder

    if name == "hashing":
        return HashingEmbedder(dim)
    from learner.wordllama import WordLlamaEmbedder

    return WordLlamaEmbedder(dim)


def _positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is not None and not (value > 0 or (allow_zero and value == 0)) or value != value:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value:g}")


def _said(exc: BaseException) -> str:
    """One line a user reads: an OS error as ``file: reason`` (not ``[Errno 2] ...``), the rest as is."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()}"
    return str(exc)


def _quiet_learner() -> None:
    """An offline run's learning cycles are hundreds of lines of INFO: warnings only."""
    import logging

    logging.getLogger("turnout.learner").setLevel(logging.WARNING)


def cmd_replay(args: argparse.Namespace) -> int:
    from learner.language import build_detector
    from simulations.experiment import decisions_path, embed_outcomes, run_replays, write_decisions
    from simulations.outcomes import load_outcomes
    from simulations.report import markdown, sweep_weights

    if args.sweep and args.budget_usd is not None:
        print("turnout replay: --sweep and --budget-usd exclude each other", file=sys.stderr)
        return 2
    if args.sweep and args.cost_weight is not None:
        print("turnout replay: --sweep sets the cost weights itself; drop --cost-weight", file=sys.stderr)
        return 2
    if args.threshold is not None and not args.cascade:  # a configured cascade has its own threshold
        print("turnout replay: --threshold only applies with --cascade CHEAP,STRONG", file=sys.stderr)
        return 2
    judged = [f for f, v in (("--judge-noise", args.judge_noise), ("--judge-bias", args.judge_bias)) if v is not None]
    D = ReplayConfig()
    args.judge_noise = D.judge_noise if args.judge_noise is None else args.judge_noise
    args.judge_bias = D.judge_bias if args.judge_bias is None else args.judge_bias
    args.threshold = 0.5 if args.threshold is None else args.threshold
    try:
        _positive("--passes", args.passes)
        _positive("--learn-every", args.learn_every)
        _positive("--budget-usd", args.budget_usd)
        _positive("--cost-weight", args.cost_weight, allow_zero=True)
        outcomes = load_outcomes(args.files)
        warm_outcomes = load_outcomes(args.warm_start) if args.warm_start else None
        if args.models:
            names = [m.strip() for m in args.models.split(",") if m.strip()]
            missing = [m for m in names if m not in outcomes.models]
            if missing:
                raise ValueError(f"--models: {', '.join(missing)} not in the files ({', '.join(outcomes.models)})")
            outcomes = outcomes.select_models(names)
            if warm_outcomes is not None:
                warm_outcomes = warm_outcomes.select_models([m for m in names if m in warm_outcomes.models])
        config = ReplayConfig(cost_weight=args.cost_weight, budget_usd=args.budget_usd, passes=args.passes,
                              learn_every=args.learn_every, seed=args.seed, judge_noise=args.judge_noise,
                              judge_bias=args.judge_bias)  # fmt: skip
        if args.cascade:
            args.cascade = _cascade_flag(args, outcomes)
        if args.plot:  # said before the run, not after it
            pyplot()
    except (OSError, ValueError, msgspec.ValidationError, PlotsUnavailable) as exc:
        print(f"turnout replay: {_said(exc)}", file=sys.stderr)
        return 2
    deployment = args.load_deployment(args)  # the product's settings: --config, TURNOUT_ overrides, defaults
    if judged and not (args.cascade or deployment.cascades):  # the simulated judge is every cascade's gate here
        print(f"turnout replay: {', '.join(judged)} only appl{'y' if len(judged) > 1 else 'ies'} with a cascade "
              "(--cascade CHEAP,STRONG, or [[cascades]] in --config)", file=sys.stderr)  # fmt: skip
        return 2
    _quiet_learner()
    t0 = time.perf_counter()
    embedder = _embedder(deployment.embedder, deployment.embedding_dim)
    detector = build_detector(deployment.language_detector)
    contexts = lambda o: embed_outcomes(o, embedder, detector, deployment.language_weight)  # noqa: E731
    embeddings = contexts(outcomes)
    warm = (warm_outcomes, contexts(warm_outcomes)) if warm_outcomes is not None else None
    embed_s = time.perf_counter() - t0
    if args.cascade:
        return _replay_cascade(args, outcomes, embeddings, deployment, config, warm)
    weights = sweep_weights(outcomes) if args.sweep else None
    report, runs = run_replays(outcomes, embeddings, deployment, config, weights, warm)
    print_report = (lambda: _print_json({**msgspec.to_builtins(report), "embed_seconds": embed_s,
                                         "final_cost_weight": [r.cost_weight for _, r in runs]})) if args.json else \
        (lambda: print(markdown(report) + f"\nembedding {len(outcomes)} prompts took {embed_s:.1f} s"))  # fmt: skip
    print_report()  # results first: an optional output that fails below loses nothing
    if config.budget_usd is not None and not args.json:
        print(f"budget {config.budget_usd:g} USD per request: cost weight paced to {runs[0][1].cost_weight:g}")
    status = 0
    try:
        for w, run in runs if args.decisions_out else ():
            path = write_decisions(decisions_path(args.decisions_out, w, len(runs) > 1), outcomes, run)
            print(f"decisions: {path}", file=sys.stderr if args.json else sys.stdout)
    except OSError as exc:
        print(f"turnout replay: --decisions-out: {_said(exc)}", file=sys.stderr)
        status = 2
    if args.plot:
        from simulations.plots import plot_frontier

        try:
            print(f"plot: {plot_frontier(report, args.plot)}", file=sys.stderr if args.json else sys.stdout)
        except PlotsUnavailable as exc:
            print(f"turnout replay: {_said(exc)}", file=sys.stderr)
            status = 3
        except OSError as exc:
            print(f"turnout replay: --plot: {_said(exc)}", file=sys.stderr)
            status = 2
    return status


def _cascade_flag(args: argparse.Namespace, outcomes):
    from learner.cascade import Cascade

    if args.sweep or args.warm_start or args.decisions_out or args.plot:
        raise ValueError("--cascade: not with --sweep, --warm-start, --decisions-out or --plot")
    parts = [x.strip() for x in args.cascade.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--cascade: {args.cascade!r} must name two models, CHEAP,STRONG")
    _positive("--judge-noise", args.judge_noise, allow_zero=True)
    if not np.isfinite(args.judge_bias) or not np.isfinite(args.threshold):
        raise ValueError("--judge-bias and --threshold must be finite")
    for role, name in zip(("cheap", "strong"), parts):
        if name not in outcomes.models:
            raise ValueError(f"--cascade: the {role} model {name!r} is not in the files ({', '.join(outcomes.models)})")
    return Cascade("cascade", parts[0], parts[1], gate="judge", threshold=args.threshold)


def _replay_cascade(args: argparse.Namespace, outcomes, embeddings, deployment, config, warm) -> int:
    from simulations.cascade_replay import cascade_replay, markdown

    try:
        report, _, _ = cascade_replay(outcomes, embeddings, deployment, config, args.cascade)
    except ValueError as exc:
        print(f"turnout replay: {_said(exc)}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(report)
    else:
        print(markdown(report))
    return 0


def _ms(text: str | None, default: int, flag: str = "") -> int:
    if not text:
        return default
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is neither an ISO date-time (2026-11-01T00:00) nor milliseconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def cmd_ope(args: argparse.Namespace) -> int:
    from simulations.ope import estimate, from_rounds, read_rounds

    try:
        if args.file:
            _positive("--clip", args.clip)
            if not 0.0 < args.level < 1.0:
                raise ValueError(f"--level must be in (0, 1), got {args.level:g}")
            report = estimate(from_rounds(read_rounds(args.file)), clip=args.clip, level=args.level,
                              min_ess=args.min_ess)  # fmt: skip
        else:
            report = _ope_from_clickhouse(args)
    except (OSError, ValueError, msgspec.ValidationError) as exc:
        print(f"turnout ope: {_said(exc)}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(report)
    else:
        pct = f"{report.level:.0%}"
        print(f"| estimator | estimate | {pct} interval |\n|---|---:|---|")
        for name in ("ips", "snips", "dr"):
            iv = getattr(report, name)
            print(f"| {name.upper()} | {iv.estimate:.4f} | [{iv.ci_low:.4f}, {iv.ci_high:.4f}] |")
        if report.skipped_pinned:
            print(f"\n{report.skipped_pinned} decisions made by a rule (pinned or passthrough) or kept by a "
                  "conversation (sticky) left out: not the policy's")
        print(f"\nrounds {report.n}, effective sample size {report.ess:.1f}, logged mean reward {report.logged_reward:.4f}"
              + (f", weights capped at {report.clip:g} in {report.clipped} rounds" if report.clip else "")
              + (f", candidate's share where the logging policy never chose {report.unsupported:.1%}"
                 if report.unsupported is not None else ""))  # fmt: skip
    if report.warning:
        print(f"turnout ope: warning: {report.warning}", file=sys.stderr)
    return 0


def _ope_from_clickhouse(args: argparse.Namespace):
    """The candidate evaluated by the running process that holds the store (its admin API), or
    here on a store no process holds (``simulations.candidate``: one code path for both)."""
    from simulations.candidate import Candidate, evaluate_candidate

    candidate = Candidate(snapshot=args.snapshot, cost_weight=args.cost_weight,
                          exclude_models=tuple(args.exclude_model), since_ms=_ms(args.since, 0, "--since"),
                          until_ms=_ms(args.until, 0, "--until") or None, tenant=args.tenant, clip=args.clip,
                          level=args.level, min_ess=args.min_ess)  # fmt: skip
    candidate.check()
    admin = getattr(args, "admin", None)
    remote = admin(args) if admin is not None else None
    if remote is not None:
        from simulations.ope import OpeReport

        return msgspec.convert(remote.ope(candidate), OpeReport)
    from feedback.clickhouse import ClickHouseSnapshotStore, connect

    data_dir = args.data_dir or os.environ.get("TURNOUT_STORAGE__DATA_DIR", ".turnout")
    dsn = args.clickhouse_dsn or os.environ.get("TURNOUT_STORAGE__CLICKHOUSE_DSN") or \
        "chdb://" + str((Path(data_dir) / "clickhouse").resolve())  # fmt: skip
    database = args.database or os.environ.get("TURNOUT_STORAGE__CLICKHOUSE_DATABASE", "turnout")
    client = connect(dsn, database)
    try:
        return evaluate_candidate(client, ClickHouseSnapshotStore(client), args.load_deployment(args), candidate,
                                  int(time.time() * 1000))  # fmt: skip
    except ValueError as exc:
        if "no snapshot" in str(exc):
            raise ValueError(f"{exc} ({dsn} / {database})") from None
        raise


def _replay_parser(sub: argparse._SubParsersAction) -> None:
    D = ReplayConfig()
    p = sub.add_parser("replay", help="replay outcome files (JSONL) through the router as it ships, report",
                       description="Shuffle the prompts (--seed), route each with the service's router and settings "
                                   "(--config), reveal only the chosen model's score and cost, learn with the "
                                   "service's learner every --learn-every prompts; report against every single model "
                                   "and the per-prompt oracle in the cost-quality plane.")  # fmt: skip
    p.add_argument("files", nargs="+", help="outcome files (several are concatenated)")
    p.add_argument("--config", help="the deployment's TOML configuration: levers, cost weight, [[models]] prices")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--cost-weight", type=float, help="quality points one US dollar is worth (default: router.cost_weight)")
    how.add_argument("--budget-usd", type=float, help="target mean cost per request; the learner paces the cost weight")
    p.add_argument("--sweep", action="store_true",
                   help="replay at u x (0, 0.1, 0.3, 1, 3, 10), u the break-even weight of the best and the cheapest model")
    p.add_argument("--seed", type=int, default=D.seed, help="shuffle and router seed (default 0)")
    p.add_argument("--passes", type=int, default=D.passes, help="stream the shuffled prompts this many times")
    p.add_argument("--learn-every", type=int, default=D.learn_every,
                   help=f"prompts per learning cycle (default {D.learn_every})")
    p.add_argument("--warm-start", nargs="+", metavar="FILE",
                   help="stream these outcome files first, the same way, as traffic served before the replay")
    p.add_argument("--models", help="comma-separated subset of the pool (e.g. two models for APGR/CPT)")
    p.add_argument("--cascade", metavar="CHEAP,STRONG",
                   help="replay plain routing and routing with this cascade as an arm (the gate: a simulated judge "
                        "reading the cheap model's outcome); report per task where the cascade wins or loses")
    p.add_argument("--judge-noise", type=float,
                   help=f"with a cascade (--cascade, or [[cascades]] in --config): the simulated judge's noise, which "
                        f"every cascade's gate reads here (default {D.judge_noise:g})")
    p.add_argument("--judge-bias", type=float, help=f"with a cascade: the simulated judge's bias (default {D.judge_bias:g})")
    p.add_argument("--threshold", type=float, help="--cascade: the gate passes grades >= this (default 0.5)")
    p.add_argument("--decisions-out", metavar="FILE", help="one JSON line per routed prompt (suffix per weight in a sweep)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw the cost-quality plane (needs matplotlib)")
    p.set_defaults(func=cmd_replay)


def _ope_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ope", help="off-policy evaluation of a candidate policy from logged decisions",
                       description="IPS, self-normalised IPS and doubly robust estimates with intervals, from a JSONL "
                                   "file of logged rounds or from ClickHouse decisions and feedback.")  # fmt: skip
    p.add_argument("file", nargs="?", help='JSONL: {"action", "reward", "propensity", "target": {action: prob}} per line')
    p.add_argument("--clip", type=float, help="cap importance weights at this value (propensity clipping)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--min-ess", type=float, default=100.0, help="warn below this effective sample size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    ch = p.add_argument_group("from ClickHouse (when no file is given)")
    ch.add_argument("--clickhouse-dsn", help="default: TURNOUT_STORAGE__CLICKHOUSE_DSN or chdb://<data-dir>/clickhouse")
    ch.add_argument("--database", help="default: TURNOUT_STORAGE__CLICKHOUSE_DATABASE or turnout")
    ch.add_argument("--data-dir", help="the embedded ClickHouse's directory (default ./.turnout)")
    ch.add_argument("--since", help="start of the time range: ISO 8601 or Unix ms (default: the beginning)")
    ch.add_argument("--until", help="end of the time range: ISO 8601 or Unix ms (default: now)")
    ch.add_argument("--tenant", default="", help="only this tenant's decisions")
    ch.add_argument("--snapshot", type=int, help="candidate snapshot version (default: the latest)")
    ch.add_argument("--cost-weight", type=float, help="candidate's cost weight (default: router.cost_weight)")
    ch.add_argument("--exclude-model", action="append", default=[], help="remove a model from the candidate's pool")
    ch.add_argument("--config", help="the service's TOML configuration (pool prices, router settings)")
    ch.add_argument("--url", help="the admin API of a running service, which evaluates with its own configuration "
                                  "(default: the one that holds --data-dir, if any)")
    p.set_defaults(func=cmd_ope)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``simulate``, ``replay`` and ``ope`` to the ``turnout`` command line."""
    from simulations.simulate_cli import add_simulate

    add_simulate(sub)
    _replay_parser(sub)
    _ope_parser(sub)
