"""``turnout simulate``: the command line of ``simulations.simulate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

__all__ = ["add_simulate"]


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulations.cli import DEFAULT_POLICY
    from simulations.environment import SCENARIOS, scenario
    from simulations.online import PolicyConfig
    from simulations.progress import Progress
    from simulations.simulate import POLICIES, markdown, simulate

    try:
        sc = scenario(args.scenario)
        names = tuple(args.policies.split(",")) if args.policies else POLICIES
        unknown = [n for n in names if n not in POLICIES]
        if unknown:
            raise ValueError(f"unknown policies {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    except ValueError as exc:
        print(f"turnout simulate: {exc} (scenarios: {', '.join(SCENARIOS)})", file=sys.stderr)
        return 2
    if args.embedder == "hashing":
        from learner.embedding import HashingEmbedder

        embedder = HashingEmbedder(256)
    else:
        from learner.wordllama import WordLlamaEmbedder

        embedder = WordLlamaEmbedder(256)
    # Turnout as ``turnout replay`` runs it (simulations.cli.DEFAULT_POLICY), with these overrides
    base = {f: getattr(DEFAULT_POLICY, f) for f in PolicyConfig.__struct_fields__}
    config = PolicyConfig(**{**base, "cost_weight": args.cost_weight, "n_clusters": args.n_clusters,
                             "prior": args.prior, "discount": args.discount,
                             "thompson_samples": args.thompson_samples, "seed": args.seed})  # fmt: skip
    with Progress(args.steps * args.seeds * len(names), f"simulate {sc.name}") as bar:
        report = simulate(sc, embedder, config, steps=args.steps, seeds=args.seeds, policies=names, progress=bar.advance)
    plots: list[str] = []
    if args.out:
        from simulations.plots import PlotsUnavailable
        from simulations.simulate_plots import plot_simulation

        try:
            plots = [str(p) for p in plot_simulation(report, Path(args.out))]
        except PlotsUnavailable as exc:
            print(f"turnout simulate: {exc}", file=sys.stderr)
            return 3
    if args.json:
        out = msgspec.to_builtins(report)
        out["plots"] = plots
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(out), indent=2).decode() + "\n")
    else:
        print(markdown(report))
        print(f"\n{report.seeds * report.steps * len(names)} decisions in {report.seconds:.1f} s")
        for p in plots:
            print(f"plot: {p}")
    return 0


def add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="compare policies on simulated traffic (named scenarios), over seeds",
                       description="Every policy routes the same simulated stream per seed; regret against the "
                                   "per-prompt oracle, the best model per cluster and the best single model.")  # fmt: skip
    p.add_argument("--scenario", default="stationary",
                   help="stationary, model-degrades, new-topic, price-change, new-model-added")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument("--cost-weight", type=float, default=25.0, help="quality points one US dollar is worth")
    p.add_argument("--policies", help="comma-separated subset (default: all)")
    p.add_argument("--n-clusters", type=int, default=0, help="Turnout's clusters; 0 chooses from the data")
    p.add_argument("--prior", choices=("flat", "prices"), default="flat")
    p.add_argument("--discount", type=float, default=1.0, help="evidence discount per fold (drift)")
    p.add_argument("--thompson-samples", type=int, default=256)
    p.add_argument("--embedder", choices=("wordllama", "hashing"), default="wordllama")
    p.add_argument("--out", help="directory for PNG plots (regret curves, cost-quality plane)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_simulate)
