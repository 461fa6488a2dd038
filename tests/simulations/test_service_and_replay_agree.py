"""One router, measured as it ships: the HTTP service and ``turnout replay`` decide alike.

The same prompts, in the same order, go through the real service (chat over HTTP to an upstream
that answers from an outcome file, feedback posted from the file's scores, learning cycles run
at the same points) and through ``turnout replay --config`` of the same configuration. Every
choice, cluster and logged propensity must be identical: the replay is the service, offline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest

from learner.costs import request_tokens
from service.cli import main
from service.settings import load_settings
from service.upstream import Completion, UpstreamCall
from simulations.environment import scenario
from simulations.logs import read_decisions
from simulations.pool import make_prompt

MODELS = {"cheap": (0.2, 0.6, 0.55), "mid": (1.0, 3.0, 0.6), "dear": (10.0, 30.0, 0.7)}  # in, out, tier
QUALITY = {"code": (0.2, 0.8, 0.9), "cooking": (0.85, 0.8, 0.9), "travel": (0.8, 0.85, 0.9), "math": (0.3, 0.5, 0.9)}
LENGTH = {"code": 400, "cooking": 150, "travel": 120, "math": 200}  # completion tokens
CONFIG = """
[router]
seed = 3
thompson_samples = 256

[learner]
grace_s = 0.0
half_life_s = 0.0
cold_start_min = 24
recluster_growth = 2.0

[rerequest]
enabled = false
""" + "".join(
    f'\n[[models]]\nname = "{name}"\nbase_url = "http://127.0.0.1:9/v1"\nprice_in_per_mtok = {p_in}\n'
    f"price_out_per_mtok = {p_out}\ntier = {tier}\n"
    for name, (p_in, p_out, tier) in MODELS.items()
)


FRENCH = "Bonjour, pouvez-vous m'aider avec ceci, s'il vous plaît ? "  # a travel prompt in French


def _outcomes(n: int, rng: np.random.Generator, french: bool = False) -> tuple[list[dict], dict[tuple[str, str], int]]:
    topics = {t.name: t for t in scenario("stationary").topics}
    rows, seen, completion = [], set(), {}
    while len(rows) < n:
        topic = list(QUALITY)[len(rows) % 4]
        prompt = make_prompt(topics[topic], rng)
        prompt = FRENCH + prompt if french and topic == "travel" else prompt
        if prompt in seen:
            continue
        seen.add(prompt)
        tokens = request_tokens([prompt])
        scores, costs = {}, {}
        for j, (name, (p_in, p_out, _)) in enumerate(MODELS.items()):
            c = LENGTH[topic] + 10 * j
            completion[(prompt, name)] = c
            scores[name] = float(rng.random() < QUALITY[topic][j])
            costs[name] = (tokens * p_in + c * p_out) / 1e6  # what the service bills for this usage
        rows.append({"id": f"p{len(rows)}", "prompt": prompt, "task": topic, "scores": scores, "costs": costs})
    return rows, completion


class _FromFile:
    """An upstream that answers as the outcome file says this model did (usage included)."""

    def __init__(self, name: str, completion: dict[tuple[str, str], int], scores: dict | None = None) -> None:
        self.name = name
        self.completion = completion
        self.scores = scores  # when given, the answer carries its score for the test's judge to read

    async def complete(self, call: UpstreamCall) -> Completion:
        prompt = call.request.messages[-1].content
        text = "ok" if self.scores is None else f"ok <<score={self.scores[(prompt, self.name)]:g}>>"
        return Completion(text, request_tokens([prompt]), self.completion[(prompt, self.name)])

    async def stream(self, call: UpstreamCall):  # pragma: no cover - not used
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("seed, language", [(0, False), (1, False), (3, False), (4, False), (0, True)])
def test_the_service_and_the_replay_make_the_same_decisions(tmp_path: Path, settings, embedder, capsys, seed, language):
    """``language``: with the language step on ([language] weight), and a topic asked in French."""
    rows, completion = _outcomes(120, np.random.default_rng(seed), french=language)
    served, languages, _ = _agree(tmp_path, settings, embedder, capsys, rows, completion,
                                  CONFIG + ("\n[language]\nweight = 0.5\n" if language else ""), [])  # fmt: skip
    if language:  # the French prompts were told apart (most: a long English rest can outweigh the French)
        by_id = {r["id"]: r for r in rows}
        travel = [by_id[i]["task"] == "travel" for _, _, _, i in served]
        assert all(t for t, lang in zip(travel, languages) if lang == "fr")
        assert languages.count("fr") >= 0.8 * sum(travel)
    # the routing changed as it learned: not one fixed model, and clusters were rebuilt from traffic
    assert len({m for m, _, _, _ in served}) >= 2 and max(c for _, c, _, _ in served) >= 1


CASCADE = """
[[cascades]]
name = "cheap-then-dear"
cheap = "cheap"
strong = "dear"
gate = "judge"
threshold = 0.5
tier = 0.65

[judge]
enabled = true
base_url = "JUDGE/v1"
upstream_model = "grader"
sample = 0.0
"""


def _grade(req: dict) -> str:
    """The judge's reply: the answer graded as the outcome file scored it (its ``<<score=X>>``
    mark), so the service's gate reads what the replay's noiseless simulated judge reads."""
    score = float(req["messages"][-1]["content"].rsplit("<<score=", 1)[1].split(">>", 1)[0])
    return f"Score: {10 * score:g}"


@pytest.mark.parametrize("seed", [0, 2])
def test_with_a_cascade_arm_the_service_and_the_replay_decide_and_escalate_alike(tmp_path: Path, settings, embedder,
                                                                                  capsys, seed):  # fmt: skip
    """A cascade with a judge gate: the service calls the cheap model, a judge endpoint grades its
    answer, a rejection escalates to the strong one; the replay's gate reads the cheap model's
    outcome through its simulated judge (noise 0). Same choices (the cheap or the strong model's
    answer: the same escalations), clusters and propensities, through learning cycles that fold the
    cascade's records (its escalation rate, the gate's evidence on the cheap model)."""
    from tests.servers import serve
    from tests.service.providers import FakeProvider

    rows, completion = _outcomes(120, np.random.default_rng(seed))
    scores = {(r["prompt"], m): s for r in rows for m, s in r["scores"].items()}
    with serve(FakeProvider("grader", answer=_grade)) as judge:
        served, _, rt_escalated = _agree(tmp_path, settings, embedder, capsys, rows, completion,
                                         CONFIG + CASCADE.replace("JUDGE", judge), ["--judge-noise", "0"],
                                         scores)  # fmt: skip
    assert any(rt_escalated) and not all(rt_escalated)  # the gate both passed and rejected


def _agree(tmp_path: Path, settings, embedder, capsys, rows: list[dict], completion: dict, config: str,
           flags: list[str], scores: dict | None = None) -> tuple[list, list, list]:  # fmt: skip
    """Replay ``rows`` with ``turnout replay --config``, serve them through the HTTP service in the
    replay's order with feedback from the file and cycles at the same points; assert the same
    choices, clusters and propensities. Returns what the service did: (model, cluster, decision
    id, row id) per request, the prompts' languages, and whether each request escalated."""
    data, cfg, out = tmp_path / "outcomes.jsonl", tmp_path / "turnout.toml", tmp_path / "decisions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg.write_text(config)
    learn_every = 15
    assert main(["replay", str(data), "--config", str(cfg), "--seed", "3", "--learn-every", str(learn_every),
                 "--decisions-out", str(out), *flags]) == 0  # fmt: skip
    capsys.readouterr()
    replayed = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(replayed) == len(rows)

    from service.runtime import Runtime
    from tests.servers import serve

    conf = load_settings(cfg, {})
    conf = msgspec.structs.replace(conf, storage=settings.storage)
    by_id = {r["id"]: r for r in rows}
    rt = Runtime(conf, embedder=embedder, upstreams={m: _FromFile(m, completion, scores) for m in MODELS})
    served, languages, escalated = [], [], []
    try:
        with serve(rt.app) as url, httpx.Client(base_url=url, timeout=30) as client:
            for t, rec in enumerate(replayed):
                row = by_id[rec["id"]]
                r = client.post("/v1/chat/completions", json={"model": "auto", "messages": [
                    {"role": "user", "content": row["prompt"]}]})  # fmt: skip
                assert r.status_code == 200, r.text
                did, model = r.headers["x-turnout-decision-id"], r.headers["x-turnout-model"]
                served.append((model, int(r.headers["x-turnout-cluster"]), did, rec["id"]))
                languages.append(r.headers["x-turnout-language"])
                escalated.append("x-turnout-cascade" in r.headers and model != "cheap")
                rating = "up" if row["scores"][model] == 1.0 else "down"
                assert client.post("/v1/feedback", json={"decision_id": did, "rating": rating}).status_code == 202
                if (t + 1) % learn_every == 0:
                    # a window ends before the cycle's millisecond: let the last feedback's pass,
                    # as the replay's simulated clock does, so both cycles read the same events
                    rt.sink.flush(30.0)
                    time.sleep(0.005)
                    rt.cycle.run()
        rt.sink.flush(30.0)
        logged = read_decisions(rt.client, 0, 2**62)
    finally:
        rt.stop()
    assert [m for m, _, _, _ in served] == [r["model"] for r in replayed]
    assert [c for _, c, _, _ in served] == [r["cluster"] for r in replayed]
    propensity = dict(zip(logged.decision_ids, logged.propensities))
    assert np.allclose([propensity[d] for _, _, d, _ in served], [r["propensity"] for r in replayed], rtol=0, atol=1e-12)
    return served, languages, escalated
