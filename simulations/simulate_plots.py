"""PNG plots of a simulation: regret curves with intervals, and the cost-quality plane."""

from __future__ import annotations

from pathlib import Path

from simulations.plots import plot_lines, pyplot
from simulations.simulate import SimulateReport

__all__ = ["plot_simulation"]


def plot_simulation(report: SimulateReport, out: Path) -> list[Path]:
    """Write ``<scenario>-regret.png`` and ``<scenario>-cost-quality.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    xs = list(report.checkpoints)
    series = {p.name: (xs, list(p.curve), list(p.curve_ci)) for p in report.policies if p.name != "oracle"}
    regret = plot_lines(series, out / f"{report.scenario}-regret.png", xlabel="prompts routed",
                        ylabel="cumulative pseudo-regret against the per-prompt oracle (utility)",
                        title=f"{report.scenario}: regret over {report.seeds} seeds (95% bands)")  # fmt: skip
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for p in report.policies:
        ax.errorbar(p.cost_usd.mean * 1000, p.quality.mean, xerr=p.cost_usd.ci * 1000, yerr=p.quality.ci, fmt="o",
                    capsize=3, label=p.name)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per request (mUSD, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"{report.scenario}: cost-quality plane (cost weight {report.cost_weight:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    plane = out / f"{report.scenario}-cost-quality.png"
    fig.savefig(plane)
    plt.close(fig)
    return [regret, plane]
