"""The router as it ships, replayed on real outcomes: learning quality tables, no-peeking check, speed.

    python -m bench.replay --tables [--seeds 1,2,3] [--workers 2] [--data DIR]
    python -m bench.replay --peek [--data DIR]
    python -m bench.replay --speed [--prompts 10000] [--data DIR]
    python -m bench.replay --ceiling [--data DIR]

``--tables``: issue 10's protocol. One shuffled pass from nothing per seed, bandit feedback,
cost weights u x (0, 0.1, 0.3, 1, 3, 10) with u the break-even weight between the best and the
cheapest model; the figure is the share of the AIQ gap between the best single-model mix and
the per-prompt oracle (with models priced alike: cost weight 0 and the share of the quality gap
between the best single model and the oracle). Every file alone, their mean, each test file
warm-started from its own train file, and the plain baseline (online Beta Thompson sampling per
cluster over 16 k-means clusters of the same embeddings) on the same shuffles; then the same
share by quarter of the stream (the learning curve: what exploring cost, what was learned).
Turnout runs with the service's default settings (``service.runtime.deployment`` of the default
settings, ``--config`` for another), ``--learn-every`` prompts per learning cycle.

``--peek``: on every file, every unchosen model's score and cost (and every ``task``) is
replaced; the decisions must not change. ``--speed``: prompts per second of the replay.
``--ceiling``: what full information reaches on each test file: a router trained offline on every
label of the train file (``simulations.baselines.offline_knn``, k = 10, 40, 160 neighbours),
scored like ``--tables``' warm-started rows.

``--data``: a directory holding ``routerbench/`` and ``multilingual7/`` outcome files (default:
``data/`` of this repository).
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

import msgspec
import numpy as np

from simulations.outcomes import Outcomes, concat, hide_unchosen, load_outcomes

ROOT = Path(__file__).resolve().parents[1]


def _data_dir(arg: str | None) -> Path:
    cand = Path(arg) if arg else ROOT / "data"
    if (cand / "routerbench").is_dir():
        return cand
    raise SystemExit(f"bench.replay: no routerbench/ outcome files under {arg or ROOT / 'data'}; pass --data DIR")


_CACHE: dict = {}


def _deployment(config: str | None):
    from service.runtime import deployment
    from service.settings import load_settings

    return deployment(load_settings(Path(config) if config else None, os.environ))


def _embed(files: tuple[str, ...], config: str | None = None) -> tuple[Outcomes, np.ndarray]:
    """The files' outcomes and routing contexts, as the deployment of ``config`` computes them."""
    if files not in _CACHE:
        from learner.language import build_detector
        from learner.wordllama import WordLlamaEmbedder
        from simulations.experiment import embed_outcomes

        dep = _deployment(config)
        emb = _CACHE.setdefault("embedder", WordLlamaEmbedder(256))
        out = load_outcomes(list(files))
        _CACHE[files] = (out, embed_outcomes(out, emb, build_detector(dep.language_detector), dep.language_weight))
    return _CACHE[files]


def _cell(job: tuple) -> tuple[str, str, int, float, tuple[float, ...]]:
    """(set label, policy, seed, gap share, gap share by quarter of the stream) for one file (or
    warm-started file) and seed."""
    label, files, warm_files, seed, policy, learn_every, config = job
    from simulations.baselines import plain_baseline
    from simulations.experiment import run_replays
    from simulations.replay import ReplayConfig
    from simulations.report import evaluate, gap_share_by_part, sweep_weights

    outcomes, emb = _embed(tuple(files), config)
    weights = sweep_weights(outcomes)
    if policy == "plain":
        runs = [(float(w), plain_baseline(outcomes, emb, seed, float(w))) for w in weights]
        return label, policy, seed, evaluate(outcomes, runs).gap_share, gap_share_by_part(outcomes, runs)
    warm = _embed(tuple(warm_files), config) if warm_files else None
    cfg = ReplayConfig(seed=seed, learn_every=learn_every)
    report, runs = run_replays(outcomes, emb, _deployment(config), cfg, weights, warm, show_progress=False)
    return label, policy, seed, report.gap_share, gap_share_by_part(outcomes, runs)


def tables(data: Path, seeds: list[int], workers: int, learn_every: int, config: str | None, only: str = "") -> str:
    from multiprocessing import Pool

    rb = {Path(p).stem: p for p in sorted(glob.glob(str(data / "routerbench" / "*.jsonl")))}
    ml = {Path(p).stem: p for p in sorted(glob.glob(str(data / "multilingual7" / "*.jsonl")))}
    sets = [(f"routerbench/{k}", [v], None) for k, v in rb.items()]
    sets += [(f"routerbench/{k}, warm from {k.replace('_test', '_train')}", [v], [rb[k.replace("_test", "_train")]])
             for k, v in rb.items() if k.endswith("_test") and k.replace("_test", "_train") in rb]  # fmt: skip
    sets += [(f"multilingual7/{k}", [v], None) for k, v in ml.items()]
    sets += [("routerbench, six files together", list(rb.values()), None)] if rb else []
    sets += [("multilingual7, three files together", list(ml.values()), None)] if ml else []
    sets = [s for s in sets if only in s[0]]
    jobs = [(label, files, warm, seed, policy, learn_every, config)
            for label, files, warm in sets for seed in seeds for policy in ("turnout", "plain")]  # fmt: skip
    jobs.sort(key=lambda j: -sum(os.path.getsize(f) for f in j[1] + (j[2] or [])))  # longest first
    with Pool(workers) as pool:
        got = pool.map(_cell, jobs, chunksize=1)
    share = {(lab, pol): np.mean([g for lab2, pol2, _, g, _ in got if (lab2, pol2) == (lab, pol)])
             for lab, pol, _, _, _ in got}  # fmt: skip
    curve = {(lab, pol): np.mean([q for lab2, pol2, _, _, q in got if (lab2, pol2) == (lab, pol)], axis=0)
             for lab, pol, _, _, _ in got}  # fmt: skip
    rows = ["| outcome file (seeds " + ",".join(map(str, seeds)) + ") | Turnout | plain baseline | Turnout - plain |",
            "|---|---:|---:|---:|"]  # fmt: skip
    for label, _, _ in sets:
        t, p = share[(label, "turnout")], share[(label, "plain")]
        bold = "**" if "together" in label else ""
        rows.append(f"| {bold}{label}{bold} | {bold}{t:+.3f}{bold} | {p:+.3f} | {t - p:+.3f} |")
    for name, keys in (("routerbench, six files, mean of each alone", [f"routerbench/{k}" for k in rb]),
                       ("routerbench, test files warm from train (mean)",
                        [s[0] for s in sets if "warm from" in s[0]]),
                       ("multilingual7, mean of each alone", [f"multilingual7/{k}" for k in ml])):  # fmt: skip
        keys = [k for k in keys if (k, "turnout") in share]
        if keys:
            t = np.mean([share[(k, "turnout")] for k in keys])
            p = np.mean([share[(k, "plain")] for k in keys])
            rows.append(f"| {name} | {t:+.3f} | {p:+.3f} | {t - p:+.3f} |")
    rows += ["", "By quarter of the stream (each quarter scored on its own prompts; Turnout / plain baseline):", "",
             "| outcome file | 1st quarter | 2nd | 3rd | 4th |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for label, _, _ in sets:
        t, p = curve[(label, "turnout")], curve[(label, "plain")]
        rows.append(f"| {label} | " + " | ".join(f"{a:+.3f} / {b:+.3f}" for a, b in zip(t, p)) + " |")
    return "\n".join(rows)


def ceiling(data: Path, config: str | None, ks: tuple[int, ...] = (10, 40, 160)) -> str:
    """Each test file routed by ``simulations.baselines.offline_knn`` trained on every label of
    its train file: the share of the AIQ gap that full information, offline, reaches there."""
    from simulations.baselines import offline_knn
    from simulations.report import evaluate, sweep_weights

    rb = {Path(p).stem: p for p in sorted(glob.glob(str(data / "routerbench" / "*.jsonl")))}
    head = " | ".join(f"kNN k={k}" for k in ks)
    rows = [f"| test file, router trained on every label of its train file | {head} |",
            "|---|" + "---:|" * len(ks)]  # fmt: skip
    for name, path in rb.items():
        train = rb.get(name.replace("_test", "_train")) if name.endswith("_test") else None
        if train is None:
            continue
        (tr, tr_emb), (te, te_emb) = _embed((train,), config), _embed((path,), config)
        shares = [evaluate(te, [(float(w), offline_knn(tr, tr_emb, te, te_emb, float(w), k))
                                for w in sweep_weights(te)]).gap_share for k in ks]  # fmt: skip
        rows.append(f"| routerbench/{name} | " + " | ".join(f"{x:+.3f}" for x in shares) + " |")
    return "\n".join(rows)


def peek(data: Path, config: str | None) -> str:
    """Decisions on each file, then on the file with everything unchosen changed: identical?"""
    from simulations.replay import ReplayConfig, replay
    from simulations.report import sweep_weights

    lines = ["| outcome file | cost weight | prompts | decisions changed |", "|---|---:|---:|---:|"]
    dep = _deployment(config)
    for path in sorted(glob.glob(str(data / "*" / "*.jsonl"))):
        outcomes, emb = _embed((path,), config)
        w = float(sweep_weights(outcomes)[min(3, len(sweep_weights(outcomes)) - 1)])
        cfg = ReplayConfig(seed=1, cost_weight=w)
        run = replay(outcomes, emb, dep, cfg)
        other = replay(hide_unchosen(outcomes, run.rows, run.arms, np.random.default_rng(0)), emb, dep, cfg)
        changed = int((other.arms != run.arms).sum())
        lines.append(f"| {Path(path).parent.name}/{Path(path).stem} | {w:.4g} | {len(outcomes)} | {changed} |")
    return "\n".join(lines)


def tiled(paths: list[str], n: int) -> Outcomes:
    """``n`` rows: the files' rows repeated, each copy's prompts made distinct."""
    base = load_outcomes(paths)
    parts, k = [], 0
    while sum(len(p) for p in parts) < n:
        part = base.take(np.arange(min(len(base), n - sum(len(p) for p in parts))))
        if k:
            part = msgspec.structs.replace(part, ids=tuple(f"{i}#{k}" for i in part.ids),
                                           prompts=tuple(f"{p}\n(copy {k})" for p in part.prompts))  # fmt: skip
        parts.append(part)
        k += 1
    return concat(parts)


def speed(data: Path, prompts: int, learn_every: int, config: str | None) -> str:
    from learner.wordllama import WordLlamaEmbedder
    from simulations.experiment import embed_outcomes, run_replays
    from simulations.replay import ReplayConfig

    t0 = time.perf_counter()
    outcomes = tiled(sorted(glob.glob(str(data / "routerbench" / "*.jsonl"))), prompts)
    t1 = time.perf_counter()
    embeddings = embed_outcomes(outcomes, WordLlamaEmbedder(256))
    t2 = time.perf_counter()
    _, runs = run_replays(outcomes, embeddings, _deployment(config), ReplayConfig(learn_every=learn_every),
                          show_progress=False)  # fmt: skip
    t3 = time.perf_counter()
    r = runs[0][1]
    return (f"replay of {len(outcomes)} prompts, {len(outcomes.models)} models, a learning cycle every {learn_every}: "
            f"load {t1 - t0:.1f} s, embed {t2 - t1:.1f} s, route + learn {t3 - t2:.1f} s "
            f"({1e6 * (t3 - t2) / len(outcomes):.0f} us per prompt); quality {r.mean_quality:.4f}, "
            f"cost {r.mean_cost * 1000:.4f} mUSD, clusters {r.n_clusters}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--tables", action="store_true")
    what.add_argument("--peek", action="store_true")
    what.add_argument("--speed", action="store_true")
    what.add_argument("--ceiling", action="store_true")
    parser.add_argument("--data", help="directory with routerbench/ and multilingual7/ outcome files")
    parser.add_argument("--config", help="a deployment's TOML configuration (default: the shipped defaults)")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--learn-every", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--only", default="", help="only the outcome sets whose label contains this")
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.INFO)
    data = _data_dir(args.data)
    if args.tables:
        print(tables(data, [int(s) for s in args.seeds.split(",")], args.workers, args.learn_every, args.config, args.only))
    elif args.peek:
        print(peek(data, args.config))
    elif args.ceiling:
        print(ceiling(data, args.config))
    else:
        print(speed(data, args.prompts, args.learn_every, args.config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
