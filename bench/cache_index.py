"""The cache's semantic index at other sizes: what each costs a cold search, and what it finds.

    python -m bench.cache_index [--rows 30000] [--queries 6000] [--sizes 128/64/2,64/32/2,128/64/1]

One bucket of ``--rows`` prompts (``bench.overhead``'s cache prompts, the size of its largest
bucket at 100,000 entries), embedded by the shipped embedder, in one ``CellIndex`` per size
``cell_rows/group_cells/probe`` (``[cache]`` settings); the first size is the reference. Queries:

- *rewordings*: ``--queries`` stored prompts with " please" added (cosine about 0.98 to their
  stored prompt): found is the share whose own prompt the search returns at cosine >= 0.95;
- *new prompts*: as many prompts never stored; recall is the share of those with a stored
  prompt at cosine >= 0.95 (by brute force) for which the search returns one at >= 0.95.

Each query is searched in every index in a random order, each search after 2 MB of other memory
was read (as after the routing that precedes a lookup), timed in CPU time of the thread; the
ratio to the reference is the median of the paired ratios and the ratio of the p99s: on a
shared machine only ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.cache_lookup import cache_texts
from learner.cache_index import CellIndex

_SIMILARITY = 0.95  # [cache] similarity's default


def _sizes(arg: str) -> list[tuple[int, int, int]]:
    out = []
    for part in arg.split(","):
        try:
            cell_rows, group_cells, probe = (int(x) for x in part.split("/"))
        except ValueError:
            raise SystemExit(f"--sizes: {part!r} is not cell_rows/group_cells/probe (three integers)") from None
        if min(cell_rows, group_cells, probe) < 1:
            raise SystemExit(f"--sizes: {part!r}: each of cell_rows/group_cells/probe must be at least 1")
        out.append((cell_rows, group_cells, probe))
    return out


def run(rows: int, queries: int, sizes: list[tuple[int, int, int]], seed: int = 0) -> list[dict]:
    """Per size: its shape, what it found and its search times (see the module doc)."""
    from learner.wordllama import WordLlamaEmbedder

    texts = cache_texts(rows + queries)
    embedder = WordLlamaEmbedder()

    def embed(batch: list[str]) -> np.ndarray:
        return np.concatenate([embedder.embed(batch[i : i + 4096]) for i in range(0, len(batch), 4096)])

    stored, fresh = embed(texts[:rows]), embed(texts[rows:])
    reworded = embed([t + " please" for t in texts[:queries]])
    indexes = []
    for cell_rows, group_cells, probe in sizes:
        index = CellIndex(stored.shape[1], cell_rows, group_cells)
        for i, row in enumerate(stored):
            index.add(f"r{i}", row, probe)
        indexes.append(index)
    has_near = (fresh @ stored.T).max(axis=1) >= _SIMILARITY  # brute force
    other = np.ones(500_000, dtype=np.float32)  # 2 MB read before each search
    rng = np.random.default_rng(seed)
    times = np.zeros((len(sizes), 2 * queries))
    found = np.zeros(len(sizes), dtype=int)
    recalled = np.zeros(len(sizes), dtype=int)
    for q, emb in enumerate(np.concatenate([reworded, fresh])):
        for k in rng.permutation(len(sizes)):
            other.sum()
            t0 = time.thread_time_ns()
            key, cos = indexes[k].nearest(emb, sizes[k][2]) or ("", -1.0)
            times[k, q] = (time.thread_time_ns() - t0) / 1e3
            if q < queries:
                found[k] += key == f"r{q}" and cos >= _SIMILARITY
            else:
                recalled[k] += bool(has_near[q - queries]) and cos >= _SIMILARITY
    out = []
    for k, size in enumerate(sizes):
        p50, p90, p99 = np.percentile(times[k], [50, 90, 99])
        out.append({"size": size, "shape": indexes[k].shape(), "reworded_found": found[k] / queries,
                    "near_found": int(recalled[k]), "near": int(has_near.sum()), "p50_us": p50, "p90_us": p90,
                    "p99_us": p99, "median_ratio": float(np.median(times[k] / times[0])),
                    "p99_ratio": p99 / float(np.percentile(times[0], 99))})  # fmt: skip
    return out


def report(rows: int, queries: int, results: list[dict]) -> str:
    lines = [f"{rows} rows in one bucket, {queries} rewordings and {queries} new prompts "
             f"({results[0]['near']} of them with a stored prompt at cosine >= {_SIMILARITY})",
             "| cell_rows/group_cells/probe | groups, cells | rewordings found | new prompts' neighbours found "
             "| search CPU p50 / p90 / p99 | median ratio | p99 ratio |",
             "|---|---|---:|---:|---|---:|---:|"]  # fmt: skip
    for r in results:
        lines.append("| {}/{}/{} | {}, {} | {:.3f} | {}/{} | {:.1f} / {:.1f} / {:.1f} us | {:.2f} | {:.2f} |".format(
            *r["size"], *r["shape"], r["reworded_found"], r["near_found"], r["near"], r["p50_us"], r["p90_us"],
            r["p99_us"], r["median_ratio"], r["p99_ratio"]))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=30_000)
    p.add_argument("--queries", type=int, default=6_000)
    p.add_argument("--sizes", default="128/64/2,64/64/2,64/32/2,96/48/2,128/64/1,256/64/1",
                   help="cell_rows/group_cells/probe, comma-separated; the first is the reference")  # fmt: skip
    args = p.parse_args(argv)
    if not 1 <= args.queries <= args.rows:
        p.error("--queries must be at least 1 and at most --rows (the rewordings are of stored prompts)")
    print(report(args.rows, args.queries, run(args.rows, args.queries, _sizes(args.sizes))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
