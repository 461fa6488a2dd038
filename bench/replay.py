"""Replay speed: 10,000 prompts with the 11-model RouterBench pool, embedding included.

    python -m bench.replay [--prompts 10000] [--files ../shared/data/routerbench/*.jsonl]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--files", nargs="+", default=sorted(glob.glob(str(DATA / "*.jsonl"))))
    parser.add_argument("--thompson-samples", type=int, default=1024)
    args = parser.parse_args(argv)

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
