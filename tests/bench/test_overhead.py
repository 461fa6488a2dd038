"""bench/overhead.py's cache section runs on a small cache and reports every figure (no timing is
asserted: speed is printed by the benchmark, never checked in a test)."""

from __future__ import annotations

from bench.cache_lookup import bench_cache


def test_the_cache_lookup_bench_runs_and_reports_its_figures():
    out = bench_cache(entries=600, tenants=2, lookups=200)
    assert out["cache_entries"] == 600 and out["cache_tenants"] == 2
    assert out["cache_hits"] >= 100  # every stored prompt asked again is an exact hit
    assert out["cache_buckets"] >= 2 and out["cache_cells"] >= out["cache_groups"] >= out["cache_buckets"]
    assert 0 < out["cache_largest_bucket"] <= 300
    for what in ("lookup", "lookup_cpu", "hit", "miss", "back_to_back", "store", "keys_parsed_cpu", "keys_routed_cpu",
                 "lookup_keys_parsed_cpu", "lookup_keys_routed_cpu"):
        assert {f"cache_{what}_{p}_ms" for p in ("p50", "p90", "p99", "max")} <= out.keys()
        assert all(out[f"cache_{what}_{p}_ms"] >= 0 for p in ("p50", "p99"))



def test_the_decision_bench_runs_with_a_cascade_configured():
    from bench.overhead import bench_decision

    out = bench_decision(600, cascade=True)
    assert {"decision_p50_ms", "decision_p99_ms", "decision_new_key_p99_ms"} <= out.keys()


def test_the_cache_index_bench_reports_recall_against_brute_force():
    from bench.cache_index import report, run

    out = run(rows=400, queries=60, sizes=[(128, 64, 2), (1000, 64, 1)])
    assert [r["size"] for r in out] == [(128, 64, 2), (1000, 64, 1)]
    assert out[0]["median_ratio"] == 1.0 and out[0]["shape"][1] >= 3  # the reference, cut in cells
    whole = out[1]  # one cell of every row: the search is brute force, so it finds everything there is
    assert whole["shape"] == (1, 1) and whole["reworded_found"] == 1.0 and whole["near_found"] == whole["near"]
    assert out[0]["near_found"] <= out[0]["near"] and 0.9 <= out[0]["reworded_found"] <= 1.0
    assert report(400, 60, out).count("\n") == 4  # a line, the header, its rule, two sizes


def test_the_gc_bench_times_a_full_collection_as_it_is_and_frozen():
    import gc

    from bench.overhead import bench_gc

    out = bench_gc()
    assert out["gc_tracked_objects"] > 10_000 and out["gc_full_collection_ms"] > 0
    assert out["gc_full_collection_frozen_ms"] < out["gc_full_collection_ms"]  # nothing much left to read
    assert gc.get_freeze_count() == 0  # the bench gives the objects back to the collector
