"""``bench.gateway``'s report: overhead per rate and percentile, per second, CPU, and the sustained
and saturation rates (the module doc of ``bench.gateway`` says how they are measured)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.gateway import Target

P_LEVELS = (50, 90, 99)
LIMIT_MS = 10.0
SECOND_LIMIT_MS = 20.0  # no second of a run should have a p99 overhead above this
KEEPS_UP_MS = 1000.0  # beyond this p99 overhead a gateway is queueing: saturated


def _overhead(target: Target, direct: Target, rate: float, p: float) -> float:
    return target.results[rate].pct_ms(p) - direct.results[rate].pct_ms(p)


def _report(direct: Target, gateways: list[Target], rates: list[float], against_litellm: bool = True) -> dict:
    print(f"\n{'rate/s':>7} {'target':<16} {'ok':>6} {'err':>4} " + " ".join(f"{'p' + str(p) + ' ms':>9}" for p in P_LEVELS)
          + " " + " ".join(f"{'ovh p' + str(p):>9}" for p in P_LEVELS) + f" {'cpu ms/req':>10}")  # fmt: skip
    summary: dict = {"rates": {}, "sustained": {}}
    for rate in rates:
        for t in [direct, *gateways]:
            if rate not in t.results:
                continue
            r = t.results[rate]
            lat = " ".join(f"{r.pct_ms(p):9.2f}" for p in P_LEVELS)
            ovh = " ".join(f"{_overhead(t, direct, rate, p):9.2f}" if t is not direct else f"{'':9}" for p in P_LEVELS)
            cpu = f"{t.cpu_ms[rate]:10.2f}" if rate in t.cpu_ms else f"{'':10}"
            helpers = f"  (+{t.helper_cpu_ms[rate]:.2f} sink, broker)" if rate in t.helper_cpu_ms else ""
            print(f"{rate:7g} {t.name:<16} {r.ok:6d} {r.errors:4d} {lat} {ovh} {cpu}{helpers}")
            if t is not direct:
                summary["rates"].setdefault(str(rate), {})[t.name] = {
                    f"overhead_p{p}_ms": round(_overhead(t, direct, rate, p), 3) for p in P_LEVELS
                } | {"errors": r.errors, "cpu_ms_per_request": round(t.cpu_ms.get(rate, float("nan")), 3),
                     "child_cpu_ms_per_request": round(t.child_cpu_ms.get(rate, float("nan")), 3),
                     "helper_cpu_ms_per_request": round(t.helper_cpu_ms.get(rate, 0.0), 3)}
    print(f"\nper second (by due time): p99 overhead of the worst second, and seconds above {SECOND_LIMIT_MS:g} ms")
    for rate in rates:
        for t in gateways:
            if rate not in t.results:
                continue
            base = direct.results[rate].pct_ms(99)
            secs = [v - base for v in t.results[rate].per_second_ms(99)]
            worst, over = max(secs, default=float("nan")), sum(v > SECOND_LIMIT_MS for v in secs)
            gens = "".join(f"  loadgen {i + 1}: p99 ovh {r.pct_ms(99) - base:.2f} ms"
                           for i, r in enumerate(t.by_loadgen.get(rate, [])))  # fmt: skip
            print(f"{rate:7g} {t.name:<16} worst second {worst:8.2f} ms  seconds > {SECOND_LIMIT_MS:g} ms: "
                  f"{over}/{len(secs)}{gens}")  # fmt: skip
            summary["rates"][str(rate)][t.name] |= {"worst_second_p99_overhead_ms": round(worst, 3),
                                                   "seconds_over_20ms": over,
                                                   "per_second_p99_overhead_ms": [round(v, 2) for v in secs]}
    print("\nCPU per request (ms, the gateway's processes) and requests per second per core (1000 / that); in "
          "brackets: the first process, and its children (Turnout: the storage process and any workers)")
    for t in gateways:
        if t.cpu_ms:
            print(f"  {t.name:<16} " + ", ".join(
                f"{r:g}/s: {c:.2f} ms = {1000 / max(c, 1e-6):.0f} req/s/core"
                f" ({c - t.child_cpu_ms.get(r, 0.0):.2f} + {t.child_cpu_ms.get(r, 0.0):.2f})"
                for r, c in sorted(t.cpu_ms.items())))  # fmt: skip
    summary["keeps_up"] = {}
    for t in gateways:
        clean = [rate for rate in rates if rate in t.results and t.results[rate].errors == 0]
        summary["sustained"][t.name] = max([r for r in clean if _overhead(t, direct, r, 99) < LIMIT_MS], default=0)
        summary["keeps_up"][t.name] = max([r for r in clean if _overhead(t, direct, r, 99) < KEEPS_UP_MS], default=0)
    print(f"\nhighest rate with p99 overhead < {LIMIT_MS:g} ms and no errors: "
          + ", ".join(f"{n} {r:g}/s" for n, r in summary["sustained"].items()))  # fmt: skip
    print(f"highest rate kept up with (p99 overhead < {KEEPS_UP_MS / 1000:g} s, no errors): "
          + ", ".join(f"{n} {r:g}/s" for n, r in summary["keeps_up"].items()))  # fmt: skip
    if len(gateways) >= 2 and gateways[-1].name == "litellm" and against_litellm:
        t, other = gateways[0], gateways[-1]
        at = 50.0
        if at in t.results and at in other.results:
            mine, theirs = _overhead(t, direct, at, 99), _overhead(other, direct, at, 99)
            summary["p99_ratio_at_50"] = round(theirs / max(mine, 1e-3), 1)
            print(f"p99 overhead at {at:g}/s: {t.name} {mine:.2f} ms, {other.name} {theirs:.2f} ms "
                  f"(ratio {summary['p99_ratio_at_50']}x; target >= 20x)")  # fmt: skip
        if summary["keeps_up"].get(other.name):
            summary["sustained_vs_saturation"] = round(summary["sustained"][t.name] / summary["keeps_up"][other.name], 1)
            print(f"{t.name} sustained (p99 < {LIMIT_MS:g} ms) / {other.name} saturation: "
                  f"{summary['sustained_vs_saturation']}x (target >= 5x)")  # fmt: skip
    return summary
