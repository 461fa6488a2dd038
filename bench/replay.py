"""Replay speed: 10,000 prompts with the 11-model RouterBench pool, embedding included.
With ``--tables``: the RouterBench tables of docs/simulations.md.

    python -m bench.replay [--prompts 10000] [--files ../shared/data/routerbench/*.jsonl]
    python -m bench.replay --tables [--seeds 5] [--workers 2]

The six RouterBench files (3,164 prompts) are tiled to ``--prompts`` rows; every copy's text
gets a distinct suffix so that all of them are embedded (one batch call, as ``turnout replay``
does). Then one replay with the default policy (``turnout replay``'s defaults, 1,024 posterior
draws per decision, learning after every prompt). Target on a 2-core machine: under 60 s in all.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np

from simulations.outcomes import concat, load_outcomes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench"


def tiled(paths: list[str], n: int):
    """``n`` rows: the files' rows repeated, each copy's prompts made distinct."""
    base = load_outcomes(paths)
    parts, k = [], 0
    while sum(len(p) for p in parts) < n:
        idx = np.arange(min(len(base), n - sum(len(p) for p in parts)))
        part = base.take(idx)
        if k:
            import msgspec

            part = msgspec.structs.replace(
                part, ids=tuple(f"{i}#{k}" for i in part.ids), prompts=tuple(f"{p}\n(copy {k})" for p in part.prompts)
            )
        parts.append(part)
        k += 1
    return concat(parts)


def _share(job: tuple) -> tuple[str, int, float, float, float, float]:
    """One table cell for one seed: (label, seed, gap share, AIQ router, zero, oracle)."""
    label, files, warm_files, seed, overrides = job
    import msgspec

    from learner.wordllama import WordLlamaEmbedder
    from simulations.cli import DEFAULT_POLICY
    from simulations.experiment import embed_outcomes, run_replays, warm_start
    from simulations.report import sweep_weights

    embedder = _EMBEDDER.setdefault("e", WordLlamaEmbedder(256))
    outcomes = load_outcomes(files)
    key = tuple(files)
    if key not in _EMB:
        _EMB[key] = embed_outcomes(outcomes, embedder)
    config = msgspec.structs.replace(DEFAULT_POLICY, seed=seed, thompson_samples=256, **overrides)
    warm = warm_start(load_outcomes(warm_files), embedder, config) if warm_files else None
    report, _ = run_replays(outcomes, _EMB[key], config, sweep_weights(outcomes), warm, show_progress=False)
    return label, seed, report.gap_share, report.aiq_router, report.aiq_zero, report.aiq_oracle


_EMBEDDER: dict = {}
_EMB: dict = {}


def tables(seeds: int, workers: int, overrides: dict) -> str:
    """Gap share captured (mean and 95% interval over seeds) for each file, all six, and the test
    files with and without a warm start fitted on the train files; plus the full-feedback bound."""
    from multiprocessing import Pool

    from scipy import stats

    names = ["arc_challenge", "mbpp", "winogrande"]
    f = {f"{n}_{s}": str(DATA / f"{n}_{s}.jsonl") for n in names for s in ("train", "test")}
    tests, trains = [f[f"{n}_test"] for n in names], [f[f"{n}_train"] for n in names]
    sets = [(k, [v], None) for k, v in f.items()] + [("all six", list(f.values()), None), ("three test files", tests, None)]
    sets += [(f"{n}_test, warm from {n}_train", [f[f"{n}_test"]], [f[f"{n}_train"]]) for n in names]
    sets += [("three test files, warm from the three train files", tests, trains)]
    jobs = [(label, files, warm, seed, overrides) for label, files, warm in sets for seed in range(seeds)]
    jobs += [(label + " (full feedback)", files, None, 0, {**overrides, "feedback": "full"})
             for label, files, warm in sets if warm is None and label in ("all six", "three test files")]  # fmt: skip
    with Pool(workers) as pool:
        results = pool.map(_share, jobs, chunksize=1)
    rows = ["| replayed | AIQ single models | AIQ oracle | AIQ router | gap captured (95% CI over seeds) |",
            "|---|---:|---:|---:|---:|"]  # fmt: skip
    for label in dict.fromkeys(r[0] for r in results):
        got = [r for r in results if r[0] == label]
        share = np.array([r[2] for r in got])
        half = stats.t.ppf(0.975, len(share) - 1) * share.std(ddof=1) / np.sqrt(len(share)) if len(share) > 1 else 0.0
        ci = f" ± {half:.3f}" if len(share) > 1 else " (1 seed)"
        rows.append(f"| {label} | {got[0][4]:.4f} | {got[0][5]:.4f} | {np.mean([r[3] for r in got]):.4f} | "
                    f"{share.mean():+.3f}{ci} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--files", nargs="+", default=sorted(glob.glob(str(DATA / "*.jsonl"))))
    parser.add_argument("--thompson-samples", type=int, default=1024)
    parser.add_argument("--tables", action="store_true", help="the RouterBench tables instead of the speed figure")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--policy", default="{}", help='JSON overrides of the replay policy, e.g. {"eliminate": 0}')
    args = parser.parse_args(argv)
    if args.tables:
        import json

        print(tables(args.seeds, args.workers, json.loads(args.policy)))
        return 0

    from learner.wordllama import WordLlamaEmbedder
    from simulations.cli import DEFAULT_POLICY
    from simulations.experiment import embed_outcomes, run_replays

    import msgspec

    t0 = time.perf_counter()
    outcomes = tiled(args.files, args.prompts)
    t1 = time.perf_counter()
    embedder = WordLlamaEmbedder(256)
    embeddings = embed_outcomes(outcomes, embedder)
    t2 = time.perf_counter()
    config = msgspec.structs.replace(DEFAULT_POLICY, thompson_samples=args.thompson_samples)
    report, runs = run_replays(outcomes, embeddings, config, show_progress=False)
    t3 = time.perf_counter()
    cpu = time.process_time()
    print(f"replay of {len(outcomes)} prompts, {len(outcomes.models)} models: load {t1 - t0:.1f} s, "
          f"embed {t2 - t1:.1f} s, route + learn {t3 - t2:.1f} s; total {t3 - t0:.1f} s "
          f"(process CPU {cpu:.1f} s; {1e6 * (t3 - t2) / len(outcomes):.0f} us per prompt routed)")  # fmt: skip
    r = runs[0][1]
    print(f"router: quality {r.mean_quality:.4f}, cost {r.mean_cost * 1000:.4f} mUSD, clusters {r.n_clusters}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
