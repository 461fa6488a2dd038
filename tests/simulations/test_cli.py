"""``turnout replay | ope | simulate`` as a user runs them: outputs, files, errors, optional plots."""

from __future__ import annotations

import json
import sys

import msgspec
import numpy as np
import pytest

from service.cli import main
from simulations.environment import outcome_rows, scenario


@pytest.fixture(scope="module")
def outcome_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "topics.jsonl"
    rows = outcome_rows(scenario("stationary"), 160, np.random.default_rng(5))
    path.write_bytes(b"\n".join(msgspec.json.encode(r) for r in rows) + b"\n")
    return path


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    """The router's settings come from the deployment's config and TURNOUT_ overrides, as in the service."""
    monkeypatch.setenv("TURNOUT_ROUTER__EMBEDDER", "hashing")
    monkeypatch.setenv("TURNOUT_ROUTER__THOMPSON_SAMPLES", "32")


def test_replay_json_and_decisions(outcome_file, tmp_path, capsys):
    out = tmp_path / "decisions.jsonl"
    assert main(["replay", str(outcome_file), "--json", "--decisions-out", str(out), "--seed", "3"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["prompts"] == 160 and report["routed"] == 160
    assert {p["name"] for p in report["single"]} == set(report["models"])
    # the settings it ran with are the deployment's: defaults with the TURNOUT_ overrides
    assert report["settings"]["router"]["embedder"] == "hashing" and report["settings"]["router"]["thompson_samples"] == 32
    assert f"decisions: {out}" in captured.err.splitlines()  # the JSON on stdout stays one object
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 160 and set(lines[0]) == {"id", "model", "propensity", "cluster"}
    assert all(0 < x["propensity"] <= 1 for x in lines)


def test_replay_sweep_writes_one_file_per_weight_and_a_plot(outcome_file, tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    png = tmp_path / "plane.png"
    args = ["replay", str(outcome_file), "--sweep", "--decisions-out", str(out),
            "--plot", str(png)]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "share of the zero-to-oracle AIQ gap captured" in text
    files = sorted(tmp_path.glob("d.w*.jsonl"))
    assert len(files) == 6 and png.read_bytes()[:4] == b"\x89PNG"  # u x (0, 0.1, 0.3, 1, 3, 10)


def test_replay_two_models_reports_apgr(outcome_file, capsys):
    args = ["replay", str(outcome_file), "--models", "sim-mini,sim-frontier", "--sweep", "--json"]
    assert main(args) == 0
    two = json.loads(capsys.readouterr().out)["two_model"]
    assert two["strong"] == "sim-frontier" and 0.0 <= two["apgr"] <= 1.0 and two["cpt50"] <= two["cpt80"]


def test_replay_errors_exit_2(outcome_file, tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["replay", str(outcome_file), "--models", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["replay", str(outcome_file), "--sweep", "--budget-usd", "0.001"]) == 2
    assert main(["replay", str(outcome_file), "--sweep", "--cost-weight", "5"]) == 2
    assert "--sweep sets the cost weights itself" in capsys.readouterr().err


def test_replay_takes_the_router_levers_from_the_config(outcome_file, tmp_path, capsys):
    config = tmp_path / "turnout.toml"
    config.write_text("[router]\nseed = 7\nsatisfice = 0.0\n\n[learner]\ncold_start_min = 32\n")
    assert main(["replay", str(outcome_file), "--config", str(config), "--json"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert (settings["router"]["seed"], settings["router"]["satisfice"]) == (7, 0.0)
    assert settings["learner"]["cold_start_min"] == 32
    config.write_text("[router]\nbogus = 1\n")
    assert main(["replay", str(outcome_file), "--config", str(config)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_get_it(outcome_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["replay", str(outcome_file), "--plot", str(tmp_path / "x.png")]) == 2
    out = capsys.readouterr()
    assert "pip install" in out.err and out.out == ""  # said before the run: nothing ran
    assert main(["simulate", "--scenario", "stationary", "--steps", "10", "--out", str(tmp_path / "plots")]) == 2
    out = capsys.readouterr()
    assert "pip install" in out.err and out.out == ""


def test_ope_from_a_file(tmp_path, capsys):
    f = tmp_path / "rounds.jsonl"
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(2000):
        a = "x" if rng.random() < 0.5 else "y"
        rows.append({"action": a, "reward": float(rng.random() < (0.8 if a == "x" else 0.4)), "propensity": 0.5,
                     "target": {"x": 0.9, "y": 0.1}})  # fmt: skip
    f.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["ope", str(f), "--json", "--clip", "50"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"ips", "snips", "dr", "ess", "n"} and out["n"] == 2000
    for name in ("ips", "snips", "dr"):
        # truth 0.9 * 0.8 + 0.1 * 0.4; the standard error is about 0.015 (coverage: test_ope.py)
        assert abs(out[name]["estimate"] - 0.76) < 0.05 and out[name]["ci_low"] < out[name]["estimate"] < out[name]["ci_high"]
    assert main(["ope", str(f), "--min-ess", "5000"]) == 0
    captured = capsys.readouterr()
    assert "| DR |" in captured.out and "effective sample size" in captured.err


def test_simulate_json(tmp_path, capsys):
    args = ["simulate", "--scenario", "new-model-added", "--steps", "200", "--seeds", "2", "--embedder", "hashing",
            "--policies", "turnout,uniform,oracle,linucb", "--json", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    by = {p["name"]: p for p in out["policies"]}
    assert by["oracle"]["regret_oracle"]["mean"] == 0.0
    assert by["turnout"]["regret_oracle"]["mean"] < by["uniform"]["regret_oracle"]["mean"]
    # the plots are written after the JSON, and named on stderr (the JSON on stdout stays one object)
    plots = [line.removeprefix("plot: ") for line in captured.err.splitlines() if line.startswith("plot: ")]
    assert len(plots) == 2 and all(p.endswith(".png") for p in plots)
    assert sorted(map(str, tmp_path.glob("*.png"))) == sorted(plots)
    assert main(["simulate", "--scenario", "nope"]) == 2


def test_progress_bar_draws_to_its_stream_only_when_enabled():
    import io

    from simulations.progress import Progress

    buf = io.StringIO()
    with Progress(10, "replay", stream=buf, enabled=True) as bar:
        bar.advance(10)
    assert "replay [" in buf.getvalue() and "10/10" in buf.getvalue()
    quiet = io.StringIO()
    with Progress(10, "replay", stream=quiet) as bar:  # a StringIO is not a terminal
        bar.advance(10)
    assert quiet.getvalue() == ""


def test_progress_writes_a_line_every_few_seconds_where_stderr_is_no_terminal():
    import io

    from simulations.progress import Progress

    ticks = iter(range(0, 1000, 2))  # each reading of the clock is 2 s later
    buf = io.StringIO()
    with Progress(10, "replay", stream=buf, every_s=5.0, clock=lambda: float(next(ticks))) as bar:
        for _ in range(10):
            bar.advance()
    lines = buf.getvalue().splitlines()
    # a line at the first reading 5 s or more after the last one, and one at the end
    assert lines == ["replay: 3/10 (30%), 6 s, eta 14 s", "replay: 6/10 (60%), 12 s, eta 8 s",
                     "replay: 9/10 (90%), 18 s, eta 2 s", "replay: 10/10 (100%), 22 s, eta 0 s"]
    assert "\r" not in buf.getvalue()  # no bar drawn into a log
    nothing = io.StringIO()
    with Progress(10, "replay", stream=nothing, enabled=False, clock=lambda: float(next(ticks))) as bar:
        bar.advance(10)
    assert nothing.getvalue() == ""


def test_replay_cascade_reports_per_task_and_names_bad_flags(outcome_file, capsys):
    assert main(["replay", str(outcome_file), "--cascade", "sim-chat,sim-frontier", "--judge-noise", "0.2",
                 "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    rows = {r["task"]: r for r in report["rows"]}
    assert "all" in rows and report["cascade"]["cheap"] == "sim-chat" and report["judge_noise"] == 0.2
    assert main(["replay", str(outcome_file), "--cascade", "sim-chat"]) == 2
    assert "CHEAP,STRONG" in capsys.readouterr().err
    assert main(["replay", str(outcome_file), "--cascade", "sim-chat,nope"]) == 2
    assert "the strong model 'nope'" in capsys.readouterr().err
    assert main(["replay", str(outcome_file), "--cascade", "sim-chat,sim-frontier", "--sweep"]) == 2


def test_simulate_cascade_and_detection_flags(capsys):
    assert main(["simulate", "--scenario", "cascade", "--judge-noise", "abc"]) == 2
    assert "--judge-noise" in capsys.readouterr().err
    assert main(["simulate", "--scenario", "detection", "--judge-rate", "2"]) == 2
    assert main(["simulate", "--scenario", "cascade", "--steps", "60", "--seeds", "1", "--embedder", "hashing",
                 "--judge-noise", "0.1,1.0"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "break-even escalation rate" in out and "| 1 | 30.9% / 30.9% | always-cascade |" in out
    assert main(["simulate", "--scenario", "detection", "--steps", "60", "--change-at", "80", "--seeds", "1",
                 "--embedder", "hashing"]) == 2  # fmt: skip
    assert "--change-at" in capsys.readouterr().err
