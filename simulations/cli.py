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

from simulations.replay import ReplayConfig

__all__ = ["DEFAULT_POLICY", "register"]

# ``turnout replay``'s policy: the service's defaults plus the levers that measured well on
# RouterBench (docs/simulations.md): the cluster count chosen from the data and refreshed as
# traffic grows, dominated models eliminated at 80% credibility, posteriors tempered (x2).
DEFAULT_POLICY = ReplayConfig(n_clusters=0, recluster_growth=4.0, eliminate=0.8, temper=2.0)

_json = msgspec.json.Encoder()


def _print_json(obj: object) -> None:
    sys.stdout.write(msgspec.json.format(_json.encode(obj), indent=2).decode() + "\n")


def _embedder(name: str, dim: int):
    from learner.embedding import HashingEmbedder

    if name == "hashing":
        return HashingEmbedder(dim)
    from learner.wordllama import WordLlamaEmbedder

    return WordLlamaEmbedder(dim)


def _replay_config(args: argparse.Namespace) -> ReplayConfig:
    return ReplayConfig(
        cost_weight=args.cost_weight,
        budget_usd=args.budget_usd,
        n_clusters=args.n_clusters,
        max_clusters=args.max_clusters,
        cold_start=args.cold_start,
        recluster_growth=args.recluster_growth,
        prior_strength=args.prior_strength,
        shrink_strength=args.shrink_strength,
        prior=args.prior,
        costs=args.costs,
        thompson_samples=args.thompson_samples,
        learn_every=args.learn_every,
        eliminate=args.eliminate,
        temper=args.temper,
        passes=args.passes,
        feedback=args.feedback,
        seed=args.seed,
    )


def cmd_replay(args: argparse.Namespace) -> int:
    from simulations.experiment import decisions_path, embed_outcomes, run_replays, warm_start, write_decisions
    from simulations.outcomes import load_outcomes
    from simulations.report import markdown, sweep_weights

    if args.sweep and args.budget_usd is not None:
        print("turnout replay: --sweep and --budget-usd exclude each other", file=sys.stderr)
        return 2
    try:
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
        config = _replay_config(args)
    except (OSError, ValueError, msgspec.ValidationError) as exc:
        print(f"turnout replay: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    embedder = _embedder(args.embedder, args.embedding_dim)
    embeddings = embed_outcomes(outcomes, embedder)
    warm = warm_start(warm_outcomes, embedder, config) if warm_outcomes is not None else None
    embed_s = time.perf_counter() - t0
    weights = sweep_weights(outcomes, args.sweep_points) if args.sweep else None
    report, runs = run_replays(outcomes, embeddings, config, weights, warm)
    files = []
    if args.decisions_out:
        for w, run in runs:
            files.append(str(write_decisions(decisions_path(args.decisions_out, w, len(runs) > 1), outcomes, run)))
    plot = None
    if args.plot:
        from simulations.plots import PlotsUnavailable, plot_frontier

        try:
            plot = str(plot_frontier(report, args.plot))
        except PlotsUnavailable as exc:
            print(f"turnout replay: {exc}", file=sys.stderr)
            return 3
    if args.json:
        out = msgspec.to_builtins(report)
        out.update(decisions_files=files, plot=plot, embed_seconds=embed_s,
                   final_cost_weight=[r.cost_weight for _, r in runs], warm_start=bool(warm))  # fmt: skip
        _print_json(out)
    else:
        print(markdown(report))
        if config.budget_usd is not None:
            print(f"budget {config.budget_usd:g} USD per request: cost weight paced to {runs[0][1].cost_weight:g}")
        print(f"embedding {len(outcomes)} prompts took {embed_s:.1f} s")
        for f in files:
            print(f"decisions: {f}")
        if plot:
            print(f"plot: {plot}")
    return 0


def _ms(text: str | None, default: int) -> int:
    if not text:
        return default
    if text.lstrip("-").isdigit():
        return int(text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def cmd_ope(args: argparse.Namespace) -> int:
    from simulations.ope import estimate, from_rounds, read_rounds

    try:
        if args.file:
            logged = from_rounds(read_rounds(args.file))
        else:
            logged = _logged_from_clickhouse(args)
    except (OSError, ValueError) as exc:
        print(f"turnout ope: {exc}", file=sys.stderr)
        return 2
    report = estimate(logged, clip=args.clip, level=args.level, min_ess=args.min_ess)
    if args.json:
        _print_json(report)
    else:
        pct = f"{report.level:.0%}"
        print(f"| estimator | estimate | {pct} interval |\n|---|---:|---|")
        for name in ("ips", "snips", "dr"):
            iv = getattr(report, name)
            print(f"| {name.upper()} | {iv.estimate:.4f} | [{iv.ci_low:.4f}, {iv.ci_high:.4f}] |")
        print(f"\nrounds {report.n}, effective sample size {report.ess:.1f}, logged mean reward {report.logged_reward:.4f}"
              + (f", weights capped at {report.clip:g} in {report.clipped} rounds" if report.clip else ""))  # fmt: skip
    if report.warning:
        print(f"turnout ope: warning: {report.warning}", file=sys.stderr)
    return 0


def _logged_from_clickhouse(args: argparse.Namespace):
    from feedback.clickhouse import ClickHouseSnapshotStore, connect
    from learner.snapshot import decode_snapshot
    from simulations.logs import candidate_target, read_decisions, to_logged

    data_dir = args.data_dir or os.environ.get("TURNOUT_STORAGE__DATA_DIR", ".turnout")
    dsn = args.clickhouse_dsn or os.environ.get("TURNOUT_STORAGE__CLICKHOUSE_DSN") or \
        "chdb://" + str((Path(data_dir) / "clickhouse").resolve())  # fmt: skip
    database = args.database or os.environ.get("TURNOUT_STORAGE__CLICKHOUSE_DATABASE", "turnout")
    client = connect(dsn, database)
    store = ClickHouseSnapshotStore(client)
    blob = store.get(args.snapshot) if args.snapshot else store.latest()
    if blob is None:
        raise ValueError(f"no snapshot {args.snapshot or '(latest)'} in {dsn} / {database}")
    snap = decode_snapshot(blob)
    logs = read_decisions(client, _ms(args.since, 0), _ms(args.until, int(time.time() * 1000)), args.tenant)
    if not logs.arms:
        raise ValueError("no routed decisions with feedback in that time range")
    target = candidate_target(logs, snap, args.cost_weight, seed=args.seed, n_samples=args.thompson_samples,
                              exclude=tuple(args.exclude_model))  # fmt: skip
    return to_logged(logs, snap.models, target)


def _replay_parser(sub: argparse._SubParsersAction) -> None:
    D = DEFAULT_POLICY
    p = sub.add_parser("replay", help="replay outcome files (JSONL): route online, learn from bandit feedback, report",
                       description="Shuffle the prompts (--seed), route each with the policy, reveal only the chosen "
                                   "model's score and cost, learn online; report against every single model and the "
                                   "per-prompt oracle in the cost-quality plane.")  # fmt: skip
    p.add_argument("files", nargs="+", help="outcome files (several are concatenated)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--cost-weight", type=float, default=D.cost_weight,
                     help=f"quality points one US dollar is worth (default {D.cost_weight:g})")
    how.add_argument("--budget-usd", type=float, help="target mean cost per request; the cost weight is paced to it")
    p.add_argument("--sweep", action="store_true", help="replay at a range of cost weights from the data's cost scale")
    p.add_argument("--sweep-points", type=int, default=9, help="cost weights in a sweep (default 9)")
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--passes", type=int, default=D.passes, help="stream the shuffled prompts this many times")
    p.add_argument("--learn-every", type=int, default=D.learn_every, help="fold feedback into the evidence every N prompts")
    p.add_argument("--warm-start", nargs="+", metavar="FILE", help="fit priors with full information on these outcome files first")
    p.add_argument("--decisions-out", metavar="FILE", help="one JSON line per routed prompt (suffix per weight in a sweep)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw the cost-quality plane (needs matplotlib)")
    pol = p.add_argument_group("policy")
    pol.add_argument("--models", help="comma-separated subset of the pool (e.g. two models for APGR/CPT)")
    pol.add_argument("--n-clusters", type=int, default=D.n_clusters,
                     help=f"clusters; 0 chooses the count from the data (default {D.n_clusters})")
    pol.add_argument("--max-clusters", type=int, default=D.max_clusters)
    pol.add_argument("--cold-start", type=int, default=D.cold_start, help="prompts before the first clustering")
    pol.add_argument("--recluster-growth", type=float, default=D.recluster_growth,
                     help=f"cluster again each time the prompts seen grow by this factor (0: only once; "
                          f"default {D.recluster_growth:g})")  # fmt: skip
    pol.add_argument("--prior-strength", type=float, default=D.prior_strength)
    pol.add_argument("--shrink-strength", type=float, default=D.shrink_strength)
    pol.add_argument("--prior", choices=("flat", "prices"), default=D.prior,
                     help=f"prior quality: flat, or from prices (default {D.prior})")
    pol.add_argument("--costs", choices=("tokens", "mean", "exact"), default=D.costs,
                     help="cost estimate before the call: per token (default), running mean per call, or the true one")
    pol.add_argument("--eliminate", type=float, default=D.eliminate,
                     help=f"credible level to drop dominated models, 0 keeps all (default {D.eliminate:g})")
    pol.add_argument("--temper", type=float, default=D.temper, help="posterior concentration factor (>1 explores less)")
    pol.add_argument("--feedback", choices=("bandit", "full"), default=D.feedback,
                     help="bandit (the protocol) or full: every model's outcome revealed, a bound")
    pol.add_argument("--thompson-samples", type=int, default=D.thompson_samples)
    pol.add_argument("--embedder", choices=("wordllama", "hashing"), default="wordllama")
    pol.add_argument("--embedding-dim", type=int, default=256)
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
    ch.add_argument("--cost-weight", type=float, default=25.0, help="candidate's cost weight (default 25)")
    ch.add_argument("--exclude-model", action="append", default=[], help="remove a model from the candidate's pool")
    ch.add_argument("--seed", type=int, default=0, help="the router seed (router.seed)")
    ch.add_argument("--thompson-samples", type=int, default=1024, help="router.thompson_samples")
    p.set_defaults(func=cmd_ope)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``simulate``, ``replay`` and ``ope`` to the ``turnout`` command line."""
    from simulations.simulate_cli import add_simulate

    add_simulate(sub)
    _replay_parser(sub)
    _ope_parser(sub)
