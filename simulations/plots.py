"""PNG plots of replays and simulations. matplotlib is optional (the ``plots`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from simulations.report import ReplayReport

__all__ = ["PlotsUnavailable", "plot_frontier", "plot_lines", "pyplot"]


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or ``PlotsUnavailable`` saying how to get it."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise PlotsUnavailable(
            "plots need matplotlib, which is not installed: pip install 'turnout[plots]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(report: ReplayReport, path: str | Path, title: str = "") -> Path:
    """The cost-quality plane: single models, the three hulls, the router's points."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for name, h, style in (("single models (zero router)", report.hull_zero, "--"),
                           ("oracle", report.hull_oracle, ":"), ("router", report.hull_router, "-")):  # fmt: skip
        vx = [p[0] for p in h] + [max(report.cost_range[1], h[-1][0])]
        vy = [p[1] for p in h] + [h[-1][1]]
        # straight segments in cost are curves on the log axis: draw them densely
        xs = np.concatenate([np.linspace(a, b, 24) for a, b in zip(vx[:-1], vx[1:])]) if len(vx) > 1 else np.array(vx)
        ax.plot(xs * 1000, np.interp(xs, vx, vy), style, label=name)
    ax.scatter([p.cost_usd * 1000 for p in report.single], [p.quality for p in report.single], marker="o", color="gray")
    for p in report.single:
        ax.annotate(p.name.split("/")[-1], (p.cost_usd * 1000, p.quality), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.scatter([p.cost_usd * 1000 for p in report.router], [p.quality for p in report.router], marker="x", color="C2",
               label="router (one point per cost weight)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per request (mUSD, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title(title or f"AIQ: router {report.aiq_router:.3f}, single models {report.aiq_zero:.3f}, "
                 f"oracle {report.aiq_oracle:.3f} (gap captured {report.gap_share:+.2f})")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    path: str | Path, *, xlabel: str, ylabel: str, title: str = "", logx: bool = False,
) -> Path:  # fmt: skip
    """Curves with optional bands: name -> (x, y, half-width or None)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, (x, y, band) in series.items():
        line = ax.plot(x, y, label=name)[0]
        if band is not None:
            lo = [a - b for a, b in zip(y, band)]
            hi = [a + b for a, b in zip(y, band)]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
