"""Dependencies point inward (STYLE.md), read from the code's own imports.

service may import learner, feedback, simulations (only its composition root may import
simulations: the request path does not); learner may import feedback.events only, and owns the
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
    "learner/routing.py", "learner/hierarchy.py", "learner/costs.py", "learner/fold.py", "learner/clusters.py",
    "learner/reward.py", "learner/snapshot.py", "learner/embedding.py", "learner/drift.py", "learner/recluster.py",
    "learner/budget.py", "learner/describe.py", "learner/cache.py",
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


# the request path: what serves a chat completion, and everything it imports in this repository
REQUEST_PATH = (
    "service/chat.py", "service/openai_http.py", "service/routing.py", "service/app.py", "service/failover.py",
    "service/rules.py", "service/records.py",
)  # fmt: skip
# the composition root: builds the processes and may wire simulations/ (the simulated pool, the demo)
COMPOSITION_ROOT = {"service.runtime", "service.cli", "service.demo", "service.simulated", "service.params",
                    "service.pool", "service.stores", "service.storage_process", "service.workers"}


def _module_path(name: str) -> Path | None:
    path = ROOT / (name.replace(".", "/") + ".py")
    return path if path.is_file() else None


def test_request_path_imports_nothing_from_simulations():
    """Walks the imports of the request path transitively (lazy imports inside functions too),
    through service, learner and feedback. Reaching the composition root counts as a failure:
    service/simulated.py is how the request path used to reach simulations/pool.py."""
    seen: set[str] = set()
    todo = [rel.removesuffix(".py").replace("/", ".") for rel in REQUEST_PATH]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_path(name)
        assert path is not None, f"{name} not found"
        for m in _imports(path):
            top = m.split(".")[0]
            assert top != "simulations", f"{name} (on the request path) imports {m}"
            assert m not in COMPOSITION_ROOT, f"{name} (on the request path) imports the composition root {m}"
            if top in ("service", "learner", "feedback") and _module_path(m) is not None:
                todo.append(m)
    assert {"service.chat", "service.schemas", "learner.routing", "learner.hierarchy"} <= seen  # the walk did walk
