"""Dependencies point inward (STYLE.md), read from the code's own imports.

service may import learner, feedback, simulations; learner may import feedback.events only, and owns the
ports it reads through (learner/ports.py), which the adapters in feedback implement and import;
nothing imports service; the pure core imports no adapter.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "learner", "feedback", "simulations", "bench")
# modules of the pure core: no I/O adapters, no clock, no settings
CORE = (
    "learner/policy.py", "learner/clusters.py", "learner/reward.py", "learner/snapshot.py", "learner/embedding.py",
    "learner/drift.py", "learner/recluster.py", "learner/budget.py", "learner/describe.py",
)  # fmt: skip
ADAPTER_LIBS = {"clickhouse_connect", "chdb", "kafka", "httpx", "litestar", "uvicorn", "apscheduler", "service"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _modules(pkg: str):
    return sorted((ROOT / pkg).rglob("*.py"))


def test_nothing_imports_service():
    for pkg in ("learner", "feedback", "simulations"):
        for path in _modules(pkg):
            bad = {m for m in _imports(path) if m == "service" or m.startswith("service.")}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_feedback_imports_only_the_ports_of_learner_and_no_simulations():
    for path in _modules("feedback"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("learner", "simulations") and m != "learner.ports"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_learner_imports_only_events_of_feedback():
    for path in _modules("learner"):
        bad = {m for m in _imports(path) if m.split(".")[0] == "feedback" and m != "feedback.events"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_core_imports_no_adapter():
    for rel in CORE:
        bad = {m for m in _imports(ROOT / rel) if m.split(".")[0] in ADAPTER_LIBS or m.startswith("feedback")}
        assert not bad, f"{rel} imports {bad}"


def test_core_has_no_clock_or_global_rng():
    for rel in CORE:
        src = (ROOT / rel).read_text()
        for needle in ("time.time(", "np.random.seed(", "np.random.rand(", "random.random(", "datetime.now("):
            assert needle not in src, f"{rel} uses {needle}"

