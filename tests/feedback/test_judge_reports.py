"""The judge's calibration and the shadow leakage report: ClickHouse SQL on the real chDB engine,
checked on a hand-built log whose answers are known."""

from __future__ import annotations

import time

import pytest

from feedback.clickhouse import ClickHouseRowStore, connect
from feedback.clickhouse_judge import calibration, leakage, wilson
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, FeedbackGiven, uuid7

NOW = int(time.time() * 1000) - 3_600_000  # an hour ago: inside the CLI's default window


def _ids(n: int, start: int) -> list[str]:
    return [uuid7(NOW + start + i) for i in range(n)]


def _log() -> list:
    r = _ids(6, 0)  # routed: r0-r3 in cluster 0, r4-r5 in cluster 1
    s = _ids(6, 100)  # their shadows (s5 failed)
    events: list = []
    for i in range(6):
        events.append(DecisionMade(event_id=uuid7(NOW + i), decision_id=r[i], ts_ms=NOW, cluster=0 if i < 4 else 1,
                                   arm="cheap", model="cheap", cost_usd=0.001))  # fmt: skip
        events.append(DecisionMade(event_id=uuid7(NOW + 100 + i), decision_id=s[i], ts_ms=NOW, cluster=0 if i < 4 else 1,
                                   policy="shadow", arm="ref", model="ref", cost_usd=0.01, parent_decision_id=r[i],
                                   purpose="shadow", status="error" if i == 5 else "ok"))  # fmt: skip
    t = iter(range(1000, 2000))

    def fb(did: str, reward: float, kind: str) -> FeedbackGiven:
        return FeedbackGiven(event_id=uuid7(NOW + next(t)), decision_id=did, ts_ms=NOW, reward=reward, kind=kind)

    grades = [(r[0], 0.3), (s[0], 0.8), (r[1], 0.9), (s[1], 0.5), (r[2], 0.6), (s[2], 0.6), (r[3], 0.7),
              (r[4], 0.2), (s[4], 0.9), (r[5], 0.1)]  # fmt: skip
    events += [fb(d, g, "judge") for d, g in grades]
    # thumbs: r0 down (judge fails it: agree), r1 up (passes: agree), r2 down then up (the first
    # counts: passes, down: disagree), r4 up (fails: disagree); a rating of a shadow record is no pair
    events += [fb(r[0], 0.0, "explicit"), fb(r[1], 1.0, "explicit"), fb(r[2], 0.0, "explicit"),
               fb(r[2], 1.0, "explicit"), fb(r[4], 1.0, "explicit"), fb(s[1], 0.0, "explicit"),
               fb(r[5], 0.0, "re_request")]  # fmt: skip
    return events


@pytest.fixture
def client(chdb_dir, ch_database):
    client = connect(f"chdb://{chdb_dir}", ch_database)
    assert "070_judge_shadow.sql" in migrate(client)
    ClickHouseRowStore(client).insert(_log())
    return client


def test_leakage_per_cluster_with_its_interval_and_the_cost_saved(client):
    got = {row.cluster: row for row in leakage(client, NOW - 60_000)}
    c0, c1 = got[0], got[1]
    # cluster 0: four shadows answered, three pairs graded (r3's reference was not): r0 worse, r1 better, r2 tied
    assert (c0.shadowed, c0.judged, c0.worse, c0.better) == (4, 3, 1, 1)
    assert c0.leakage == pytest.approx(1 / 3)
    assert (c0.leakage_low, c0.leakage_high) == pytest.approx((0.0615, 0.7923), abs=1e-4)
    assert c0.routed_cost_usd == pytest.approx(0.004) and c0.reference_cost_usd == pytest.approx(0.04)
    assert c0.saved_usd == pytest.approx(0.036) and c0.saved_share == pytest.approx(0.9)
    # cluster 1: the failed shadow (r5) is no comparison, and costs nothing saved
    assert (c1.shadowed, c1.judged, c1.worse, c1.leakage) == (1, 1, 1, 1.0)
    assert c1.saved_usd == pytest.approx(0.009)
    assert (c0.unanswered, c1.unanswered) == (0, 1)  # the failed one is said, apart from the comparisons
    assert (c0.decided, c0.agreed, c1.decided) == (0, 0, 0)  # a reference's shadows: no candidate's decisions
    assert leakage(client, NOW + 60_000) == []  # nothing in the window


def test_a_candidates_agreement_leakage_and_cost_per_cluster(client, chdb_dir, ch_database, tmp_path, capsys):
    """Clustering 5: four routed answers of model a; the candidate chose a twice (agreement: no
    call, cost 0 recorded), b once (asked: graded better than the routed answer) and b once more
    (refused by the budget: an error record, no call)."""
    r, c = _ids(4, 300), _ids(4, 400)
    chosen = [("a", "ok", 0.0), ("a", "ok", 0.0), ("b", "ok", 0.01), ("b", "error", 0.0)]
    events: list = []
    for i, (model, status, cost) in enumerate(chosen):
        events.append(DecisionMade(event_id=uuid7(NOW + 300 + i), decision_id=r[i], ts_ms=NOW, clustering=5, cluster=0,
                                   arm="a", model="a", cost_usd=0.001))  # fmt: skip
        events.append(DecisionMade(event_id=uuid7(NOW + 400 + i), decision_id=c[i], ts_ms=NOW, clustering=5, cluster=0,
                                   policy="candidate", arm=model, model=model, cost_usd=cost, parent_decision_id=r[i],
                                   purpose="shadow", status=status, snapshot_version=3))  # fmt: skip
    events += [FeedbackGiven(event_id=uuid7(NOW + 500 + i), decision_id=d, ts_ms=NOW, reward=g, kind="judge")
               for i, (d, g) in enumerate([(r[2], 0.4), (c[2], 0.8)])]  # fmt: skip
    ClickHouseRowStore(client).insert(events)
    got = {(row.clustering, row.cluster): row for row in leakage(client, NOW - 60_000)}
    cand = got[5, 0]
    assert (cand.decided, cand.agreed, cand.agreement) == (4, 2, 0.5)
    assert (cand.agreement_low, cand.agreement_high) == pytest.approx(wilson(2, 4))
    assert (cand.shadowed, cand.judged, cand.worse, cand.better, cand.leakage) == (3, 1, 1, 0, 1.0)
    # agreeing decisions cost what the routed answer cost; the refused one is no comparison
    assert cand.routed_cost_usd == pytest.approx(0.003) and cand.reference_cost_usd == pytest.approx(0.012)
    assert cand.saved_usd == pytest.approx(0.009) and cand.unanswered == 1  # "saved" covers the answered only
    assert got[0, 0].decided == 0  # the reference's shadows beside it are unchanged
    from service.cli import main

    config = tmp_path / "turnout.toml"
    config.write_text(f'[storage]\nclickhouse_dsn = "chdb://{chdb_dir}"\nclickhouse_database = "{ch_database}"\n'
                      f'data_dir = "{tmp_path}"\n')  # fmt: skip
    assert main(["judge", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if "/" in line[:9]}
    assert rows["5/0"][-3:] == ["2/4", "50.0%", "1"] and rows["0/0"][-2:] == ["n/a", "0"]
    assert "2 shadows were not asked or failed" in out  # the refused candidate call and cluster 1's failed one


def test_calibration_against_the_first_rating_of_routed_decisions(client):
    cal = calibration(client, NOW - 60_000, agree_at=0.5)
    assert (cal.pairs, cal.agree) == (4, 2) and cal.agreement == 0.5
    assert (cal.judge_pass_up, cal.judge_pass_down, cal.judge_fail_up, cal.judge_fail_down) == (1, 1, 1, 1)
    assert cal.kappa == pytest.approx(0.0)
    assert (cal.agreement_low, cal.agreement_high) == pytest.approx(wilson(2, 4))
    # a stricter judge: only r1 (0.9) passes; r2 (down) now agrees
    strict = calibration(client, NOW - 60_000, agree_at=0.8)
    assert (strict.agree, strict.judge_pass_up, strict.judge_fail_down) == (3, 1, 2)
    assert -1.0 <= strict.correlation <= 1.0 and strict.kappa == pytest.approx(0.5)


def test_wilson_interval():
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


def test_turnout_judge_reads_the_store_when_no_service_holds_it(client, chdb_dir, ch_database, tmp_path, capsys):
    from service.cli import main

    config = tmp_path / "turnout.toml"
    config.write_text(f'[storage]\nclickhouse_dsn = "chdb://{chdb_dir}"\nclickhouse_database = "{ch_database}"\n'
                      f'data_dir = "{tmp_path}"\n')  # fmt: skip
    assert main(["judge", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "4 decisions with both, agreement 50.0%" in out and "kappa 0.00" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("0/")]
    assert [r[:5] for r in rows] == [["0/0", "4", "3", "1", "33.3%"], ["0/1", "1", "1", "1", "100.0%"]]
    assert main(["judge", "--config", str(config), "--window-s", "0"]) == 2
    assert "--window-s must be in" in capsys.readouterr().err
