"""The judge's parts alone: the score parser, the daily budget, the tenants it may see, the
bounded background queue, and the settings that refuse a judge or a shadow they cannot run."""

from __future__ import annotations

import asyncio
import re

import msgspec
import pytest

from service.daily_budget import DailyBudget
from service.evaluation import JudgeScope
from service.judge_settings import DEFAULT_PROMPT, DEFAULT_SCORE_PATTERN
from service.judge import parse_score, render
from service.offpath import OffPath
from service.settings import ConfigError, load_settings
from service.tenants import Tenant

PATTERN = re.compile(DEFAULT_SCORE_PATTERN)


@pytest.mark.parametrize("reply, score", [
    ("Score: 7", 0.7), ("score=10", 1.0), ("The answer is fine.\nSCORE: 8.5", 0.85), ("Score: 42", 1.0),
    ("I would rather not.", None), ("7/10", None),
])  # fmt: skip
def test_parse_score(reply, score):
    got = parse_score(reply, PATTERN, 10.0)
    assert got == (pytest.approx(score) if score is not None else None)


def test_render_keeps_other_braces():
    out = render(DEFAULT_PROMPT, "What is {x}?", "x = {1, 2}")
    assert "What is {x}?" in out and "x = {1, 2}" in out and "{question}" not in out


def test_daily_budget_caps_a_utc_day_and_starts_again_the_next():
    now = [86_400.0 * 100 + 10]
    b = DailyBudget(1.0, clock=lambda: now[0])
    assert b.allows(0.4)
    b.spend(0.4)
    assert b.allows(0.6) and not b.allows(0.61)
    b.spend(0.6)
    assert not b.allows(0.0001) and b.refused == 2 and b.spent_today() == pytest.approx(1.0)
    now[0] += 86_400  # the next UTC day
    assert b.spent_today() == 0.0 and b.allows(1.0)
    assert not DailyBudget(0.0).allows(1e-9)


def test_judge_scope_keeps_private_and_provider_bound_tenants_to_themselves():
    open_pool = JudgeScope("a", frozenset(), frozenset({"vault"}))
    assert open_pool.allows(Tenant(name="acme")) and not open_pool.allows(Tenant(name="vault"))
    assert open_pool.allows(Tenant(name="bound", models=("a", "b")))  # the judge is among its providers
    assert not open_pool.allows(Tenant(name="bound", models=("b",)))
    endpoint = JudgeScope("", frozenset({"acme", "bound"}))
    assert endpoint.allows(Tenant(name="bound", models=("b",)))  # named: its explicit opt-in
    assert not endpoint.allows(Tenant(name="other"))
    assert not JudgeScope("").allows(Tenant(name="bound", models=("b",)))


def test_a_full_queue_skips_and_counts_and_never_blocks():
    async def run() -> OffPath:
        q = OffPath(size=1, workers=1)
        release = asyncio.Event()
        ran: list[int] = []

        async def job(i: int) -> None:
            await release.wait()
            ran.append(i)

        async def boom() -> None:
            raise RuntimeError("judge exploded")

        assert q.submit("judge", lambda: job(1))
        await asyncio.sleep(0)  # the worker takes job 1 and waits on it
        assert q.submit("judge", lambda: job(2))  # waits in the queue
        assert not q.submit("shadow", lambda: job(3))  # full: skipped at once
        release.set()
        await q.drain()
        assert q.submit("judge", boom)
        await q.drain()
        assert ran == [1, 2]
        await q.aclose()
        return q

    q = asyncio.run(run())
    assert q.counts == {("judge", "queued"): 3, ("judge", "done"): 2, ("shadow", "skipped_full"): 1,
                        ("judge", "failed"): 1}  # fmt: skip


def test_submit_outside_an_event_loop_is_skipped():
    q = OffPath(size=4, workers=1)

    async def job() -> None:
        return None

    assert not q.submit("judge", job) and q.counts["judge", "skipped_no_loop"] == 1


@pytest.mark.parametrize("toml, key", [
    ('[judge]\nenabled = true\nmodel = "nope"\n[[models]]\nname = "a"\nbase_url = "http://x/v1"\n', "judge.model"),
    ('[judge]\nenabled = true\nprompt = "grade {answer}"\nbase_url = "http://x/v1"\n', "judge.prompt"),
    ('[judge]\nenabled = true\nscore_pattern = "score"\nbase_url = "http://x/v1"\n', "judge.score_pattern"),
    ('[judge]\nsample = 1.5\n', "judge.sample"),
    ('[shadow]\nenabled = true\n', "shadow.reference"),
    ('[shadow]\nenabled = true\nreference = "a"\ncandidate = 3\n', "shadow.candidate"),
    ('[shadow]\nenabled = true\ncandidate = -1\n', "shadow.candidate"),
    ('[shadow]\ntenant_share = { acme = -1 }\n', "shadow.tenant_share.acme"),
    ('[judge]\nbudget_usd_per_day = -1\n', "judge.budget_usd_per_day"),
    ('[judge]\nsampel = 0.1\n', "sampel"),
])  # fmt: skip
def test_a_judge_or_shadow_it_cannot_run_stops_the_start_naming_the_key(tmp_path, toml, key):
    path = tmp_path / "turnout.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(path, {})
    assert key in str(err.value) and str(path) in str(err.value)


def test_the_simulated_pool_names_its_judge_at_build(tmp_path):
    from service.evaluation_parts import build_evaluation

    path = tmp_path / "turnout.toml"
    path.write_text('[judge]\nenabled = true\nmodel = "no-such-model"\n')
    settings = load_settings(path, {})  # no [[models]]: the simulated pool, checked when built
    with pytest.raises(ConfigError, match="judge.model 'no-such-model' is not in the pool"):
        build_evaluation(settings, (), {}, None, None, None)  # type: ignore[arg-type]


def test_a_simulated_model_cannot_be_the_judge(settings, embedder):
    """Its answers are placeholders with no score: every grade would fail, silently, all day."""
    from service.runtime import Runtime

    judged = msgspec.structs.replace(settings, judge=msgspec.convert({"enabled": True, "model": "sim-mini"},
                                                                     type(settings.judge)))  # fmt: skip
    with pytest.raises(ConfigError, match="judge.model 'sim-mini' is a simulated model"):
        Runtime(judged, embedder=embedder, sim_latency_scale=0.0)


@pytest.mark.parametrize("toml", [
    '[shadow]\nenabled = true\n',  # neither
    '[shadow]\nenabled = true\nreference = "a"\ncandidate = 3\n',  # both
])  # fmt: skip
def test_an_enabled_shadow_takes_a_reference_or_a_candidate_and_the_error_names_both_keys(tmp_path, toml):
    path = tmp_path / "turnout.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(path, {})
    assert "shadow.reference" in str(err.value) and "shadow.candidate" in str(err.value)
    path.write_text(toml.replace("enabled = true", "enabled = false"))
    assert load_settings(path, {}).shadow.enabled is False  # off: nothing to check


def test_a_candidate_is_a_snapshot_version(tmp_path):
    path = tmp_path / "turnout.toml"
    path.write_text('[shadow]\nenabled = true\ncandidate = 7\nshare = 0.1\n')
    assert load_settings(path, {}).shadow.candidate == 7
    assert load_settings(path, {"TURNOUT_SHADOW__CANDIDATE": "9"}).shadow.candidate == 9


def test_a_shadow_that_can_show_nothing_is_said_at_start(settings, embedder, caplog):
    from service.runtime import Runtime

    idle = msgspec.structs.replace(settings, shadow=msgspec.convert({"enabled": True, "reference": "sim-frontier"},
                                                                    type(settings.shadow)))  # fmt: skip
    rt = Runtime(idle, embedder=embedder, sim_latency_scale=0.0)
    rt.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "turnout.evaluation"]
    assert any("share 0" in m and "nothing is shadowed" in m for m in said), said
    assert any("without the judge" in m and "no leakage is measured" in m for m in said), said


def test_each_of_n_workers_holds_a_nth_of_the_days_budgets(settings, embedder):
    from service.runtime import Runtime

    two = msgspec.structs.replace(
        settings, processes=msgspec.structs.replace(settings.processes, workers=2),
        judge=msgspec.convert({"enabled": True, "base_url": "http://127.0.0.1:9/v1", "budget_usd_per_day": 5.0},
                              type(settings.judge)),
        shadow=msgspec.convert({"enabled": True, "reference": "sim-frontier", "share": 0.1, "budget_usd_per_day": 3.0},
                               type(settings.shadow)))  # fmt: skip
    rt = Runtime(two, embedder=embedder, sim_latency_scale=0.0)
    try:  # the group never spends more than the cap
        assert rt.evaluation.judge.budget.usd_per_day == 2.5 and rt.evaluation.shadow.budget.usd_per_day == 1.5
    finally:
        rt.stop()
