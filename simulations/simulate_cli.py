"""``turnout simulate``: the command line of ``simulations.simulate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec
import numpy as np

from simulations.plots import PlotsUnavailable, pyplot

__all__ = ["add_simulate"]


def _quiet_learner() -> None:
    """An offline run's learning cycles are hundreds of lines of INFO: warnings only."""
    import logging

    logging.getLogger("turnout.learner").setLevel(logging.WARNING)


def _show(args: argparse.Namespace, report: msgspec.Struct, markdown) -> None:
    """A report as one JSON object (``--json``) or as its markdown tables."""
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(report), indent=2).decode() + "\n")
    else:
        print(markdown(report))


def _noises(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--judge-noise: {text!r} is not a comma-separated list of numbers") from None
    if not values or not all(np.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"--judge-noise: {text!r} needs numbers >= 0")
    return values


# flags that only mean something in one mode: (flag, dest, default, the mode, its test)
_SCOPED = (
    ("--repeat", "repeat", 0.3, "--cache", lambda a: a.cache),
    ("--paraphrase", "paraphrase", 0.2, "--cache", lambda a: a.cache),
    ("--judge-noise", "judge_noise", None, "--scenario cascade or detection",
     lambda a: a.scenario in ("cascade", "detection")),
    ("--judge-rate", "judge_rate", 0.2, "--scenario detection", lambda a: a.scenario == "detection"),
    ("--change-at", "change_at", None, "--scenario detection", lambda a: a.scenario == "detection"),
    ("--judge-bias", "judge_bias", 0.0, "--scenario cascade", lambda a: a.scenario == "cascade"),
    ("--cache-discount", "cache_discount", 0.9, "--scenario conversations", lambda a: a.scenario == "conversations"),
)


def _scoped_flags(args: argparse.Namespace) -> None:
    """A flag given where it means nothing is a mistake said, not ignored; the rest get defaults."""
    for flag, dest, default, mode, applies in _SCOPED:
        if getattr(args, dest) is None:
            setattr(args, dest, default)
        elif not applies(args):
            raise ValueError(f"{flag} only applies with {mode}")


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulations.environment import scenario
    from simulations.progress import Progress
    from simulations.simulate import POLICIES, simulate

    try:
        sc = scenario(args.scenario)
        _scoped_flags(args)
        names = tuple(n.strip() for n in args.policies.split(",")) if args.policies else POLICIES
        unknown = [n for n in names if n not in POLICIES]
        if unknown:
            raise ValueError(f"unknown policies {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
        for flag, value, least in (("--steps", args.steps, 2), ("--seeds", args.seeds, 1),
                                   ("--learn-every", args.learn_every, 1)):  # fmt: skip
            if value < least:
                raise ValueError(f"{flag} must be at least {least}, got {value}")
        if args.cost_weight is not None and not args.cost_weight >= 0:
            raise ValueError(f"--cost-weight must be >= 0, got {args.cost_weight:g}")
        for flag, share in (("--repeat", args.repeat), ("--paraphrase", args.paraphrase)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{flag} must be a share in [0, 1], got {share:g}")
        args.judge_noise = _noises(args.judge_noise) if args.judge_noise is not None else None
        if not 0.0 <= args.judge_rate <= 1.0:
            raise ValueError(f"--judge-rate must be a share in [0, 1], got {args.judge_rate:g}")
        if not np.isfinite(args.judge_bias):
            raise ValueError(f"--judge-bias must be finite, got {args.judge_bias:g}")
        if not 0.0 <= args.cache_discount <= 1.0:
            raise ValueError(f"--cache-discount must be a share in [0, 1], got {args.cache_discount:g}")
        if args.repeat + args.paraphrase > 1.0:
            raise ValueError("--repeat and --paraphrase together must be at most 1")
        if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out} exists and is not a directory")
        if args.out:  # said before the run, not after it
            pyplot()
    except (ValueError, PlotsUnavailable) as exc:
        print(f"turnout simulate: {exc}", file=sys.stderr)
        return 2
    deployment = args.load_deployment(args)  # Turnout as the service runs it: --config, overrides, defaults
    _quiet_learner()
    if args.embedder == "hashing":
        from learner.embedding import HashingEmbedder

        embedder = HashingEmbedder(256)
    else:
        from learner.wordllama import WordLlamaEmbedder

        embedder = WordLlamaEmbedder(256)
    weight = deployment.cost_weight if args.cost_weight is None else args.cost_weight
    if sc.name == "detection":
        return _simulate_detection(args, sc, embedder, msgspec.structs.replace(deployment, cost_weight=weight))
    if sc.name == "cascade":
        return _simulate_cascade(args, sc, embedder, msgspec.structs.replace(deployment, cost_weight=weight))
    if sc.name == "conversations":
        return _simulate_conversations(args, sc, embedder, msgspec.structs.replace(deployment, cost_weight=weight))
    if args.cache:
        return _simulate_cache(args, sc, embedder, msgspec.structs.replace(deployment, cost_weight=weight))
    with Progress(args.steps * args.seeds * len(names), f"simulate {sc.name}") as bar:
        report = simulate(sc, embedder, deployment, weight, steps=args.steps, seeds=args.seeds, policies=names,
                          base_seed=args.seed, learn_every=args.learn_every, progress=bar.advance)  # fmt: skip
    from simulations.simulate import markdown

    _show(args, report, markdown)
    if not args.json:
        print(f"\n{report.seeds * report.steps * len(names)} decisions in {report.seconds:.1f} s")
    if args.out:  # results first: a plot that fails below loses nothing
        from simulations.simulate_plots import plot_simulation

        try:
            for p in plot_simulation(report, Path(args.out)):
                print(f"plot: {p}", file=sys.stderr if args.json else sys.stdout)
        except PlotsUnavailable as exc:
            print(f"turnout simulate: {exc}", file=sys.stderr)
            return 3
        except OSError as exc:
            print(f"turnout simulate: --out: {exc}", file=sys.stderr)
            return 2
    return 0


def _simulate_detection(args: argparse.Namespace, sc, embedder, deployment) -> int:
    """``--scenario detection``: how much sooner a degraded model is noticed with judge feedback."""
    from simulations.detection import markdown, simulate_detection
    from simulations.progress import Progress

    seeds = tuple(range(args.seed, args.seed + args.seeds))
    noise = args.judge_noise[0] if args.judge_noise else 0.3
    with Progress(args.steps * args.seeds * 2, f"simulate {sc.name}") as bar:
        try:
            report = simulate_detection(sc, embedder, deployment, steps=args.steps, seeds=seeds,
                                        judge_rate=args.judge_rate, judge_noise=noise, learn_every=args.learn_every,
                                        change_at=args.change_at, progress=bar.advance)  # fmt: skip
        except ValueError as exc:
            print(f"turnout simulate: --change-at: {exc}", file=sys.stderr)
            return 2
    _show(args, report, markdown)
    return 0


def _simulate_cascade(args: argparse.Namespace, sc, embedder, deployment) -> int:
    """``--scenario cascade``: the cascade against routing, always-cheap and always-strong, per judge noise."""
    from simulations.cascade_sim import markdown, simulate_cascade
    from simulations.progress import Progress

    from simulations.cascade_sim import NOISES

    noises = args.judge_noise or NOISES
    with Progress(args.steps * args.seeds * (1 + len(noises)), f"simulate {sc.name}") as bar:
        report = simulate_cascade(sc, embedder, deployment, steps=args.steps, seeds=args.seeds, base_seed=args.seed,
                                  learn_every=args.learn_every, noises=noises, bias=args.judge_bias,
                                  progress=bar.advance)  # fmt: skip
    _show(args, report, markdown)
    return 0


def _simulate_cache(args: argparse.Namespace, sc, embedder, deployment) -> int:
    """``--cache``: Turnout with the response cache of ``[cache]`` (similarity, TTL, bounds,
    min_quality; enabled or not) against Turnout alone."""
    from learner.cache import CacheParams
    from simulations.cache_sim import markdown, simulate_cache
    from simulations.progress import Progress

    c = args.load_settings(args).cache  # the deployment's [cache], as the service would run it
    params = CacheParams(ttl_s=c.ttl_s, max_entries=c.max_entries, max_bytes=c.max_bytes, similarity=c.similarity,
                         semantic=c.semantic)  # fmt: skip
    with Progress(args.steps * args.seeds * 2, f"simulate {sc.name} --cache") as bar:
        report = simulate_cache(sc, embedder, deployment, params, c.min_quality, steps=args.steps, seeds=args.seeds,
                                base_seed=args.seed, learn_every=args.learn_every, repeat=args.repeat,
                                paraphrase=args.paraphrase, progress=bar.advance)  # fmt: skip
    _show(args, report, markdown)
    return 0


def _simulate_conversations(args: argparse.Namespace, sc, embedder, deployment) -> int:
    """``--scenario conversations``: sticky routing (``[router] switch_margin``, ``[conversations]
    context_decay`` of --config) against routing every turn afresh, with and without a cache discount."""
    from simulations.conversation_sim import markdown, simulate_conversations
    from simulations.progress import Progress

    settings = args.load_settings(args)
    chats = max(2, args.steps // 5)  # about five turns a chat: --steps turns
    with Progress(args.steps * args.seeds * 7, f"simulate {sc.name}") as bar:  # six arms and a warm-up
        report = simulate_conversations(sc, embedder, deployment, n_chats=chats, seeds=args.seeds,
                                        base_seed=args.seed, learn_every=args.learn_every,
                                        cache_discount=args.cache_discount,
                                        switch_margin=settings.router.switch_margin,
                                        context_decay=settings.conversations.context_decay,
                                        progress=bar.advance)  # fmt: skip
    _show(args, report, markdown)
    return 0


def add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="compare policies on simulated traffic (named scenarios), over seeds",
                       description="Every policy routes the same simulated stream per seed; regret against the "
                                   "per-prompt oracle, the best model per cluster and the best single model.")  # fmt: skip
    p.add_argument("--scenario", default="stationary",
                   help="stationary, model-degrades, new-topic, price-change, new-model-added, conversations, cascade, "
                        "detection")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument("--cost-weight", type=float, help="quality points one US dollar is worth (default: router.cost_weight)")
    p.add_argument("--policies", help="comma-separated subset (default: all)")
    p.add_argument("--config", help="the deployment's TOML configuration: Turnout's settings (default: the shipped ones)")
    p.add_argument("--learn-every", type=int, default=10, help="prompts per learning cycle (default 10)")
    p.add_argument("--embedder", choices=("wordllama", "hashing"), default="wordllama")
    p.add_argument("--out", help="directory for PNG plots (regret curves, cost-quality plane)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cache", action="store_true",
                   help="Turnout with the response cache ([cache] of --config) against no cache, on traffic whose "
                        "users repeat and paraphrase earlier questions: cost saved, users pleased, hit rates")
    p.add_argument("--repeat", type=float, help="--cache: share of prompts repeated word for word (default 0.3)")
    p.add_argument("--paraphrase", type=float, help="--cache: share of prompts asked again in other words (default 0.2)")
    p.add_argument("--judge-noise",
                   help="--scenario cascade: the simulated judge's noise levels, comma-separated (default "
                        "0.1,0.3,0.6,1.0); --scenario detection: its noise (default 0.3)")
    p.add_argument("--judge-rate", type=float,
                   help="--scenario detection: share of answers the judge grades (default 0.2; its noise: the first "
                        "--judge-noise)")
    p.add_argument("--change-at", type=int,
                   help="--scenario detection: the request after which the model degrades (default: at 3/8 of --steps)")
    p.add_argument("--judge-bias", type=float,
                   help="--scenario cascade: the judge's bias (positive: lenient, negative: harsh; default 0)")
    p.add_argument("--cache-discount", type=float,
                   help="--scenario conversations: share of the input price a cached prompt prefix saves (default 0.9)")
    p.set_defaults(func=cmd_simulate)
