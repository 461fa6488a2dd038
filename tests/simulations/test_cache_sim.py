"""``turnout simulate --cache``: repeated and paraphrased questions, the cache against no cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from learner.cache import CacheParams
from learner.embedding import HashingEmbedder
from service.cli import main
from service.runtime import deployment
from service.settings import load_settings
from simulations.cache_sim import simulate_cache, with_repeats
from simulations.environment import scenario, stream


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setenv("TURNOUT_ROUTER__EMBEDDER", "hashing")
    monkeypatch.setenv("TURNOUT_ROUTER__THOMPSON_SAMPLES", "32")


def test_repeats_ask_earlier_questions_again_in_the_same_or_other_words():
    st = stream(scenario("stationary"), 400, np.random.default_rng(0))
    again, question = with_repeats(st, np.random.default_rng(1), 0.3, 0.2)
    assert len(again.prompts) == 400 and (question <= np.arange(400)).all()
    for t, q in enumerate(question):
        assert st.prompts[q] in again.prompts[t]  # the question's words, maybe with a prefix or suffix
        if again.prompts[t] != st.prompts[t]:  # asked again: the earlier step's topic and costs with it
            s = next(i for i in range(t) if question[i] == q)
            assert again.topics[t] == again.topics[s] and (again.cost_usd[t] == again.cost_usd[s]).all()
    _, plain = with_repeats(st, np.random.default_rng(1), 0.0, 0.0)
    assert (question != np.arange(400)).mean() > (plain != np.arange(400)).mean() + 0.1  # the stream repeats itself too
    reworded = np.mean([p not in set(st.prompts) for p in again.prompts])
    assert 0.12 < reworded < 0.28  # 20% in other words


def test_the_cache_saves_money_and_never_answers_another_question_at_a_strict_similarity():
    dep = deployment(load_settings(None, {"TURNOUT_ROUTER__THOMPSON_SAMPLES": "32"}))
    report = simulate_cache(scenario("stationary"), HashingEmbedder(256), dep, CacheParams(similarity=0.97), 0.7,
                            steps=600, seeds=2)  # fmt: skip
    assert report.without.hit_rate.mean == 0 and report.without.learned_from.mean == 1
    assert report.cached.hit_rate.mean > 0.2 and report.cost_saved.mean > 0.2
    assert report.cached.learned_from.mean == pytest.approx(1 - report.cached.hit_rate.mean)
    assert report.cached.wrong_hits.mean == 0.0


def test_simulate_cache_json(capsys):
    assert main(["simulate", "--cache", "--steps", "200", "--seeds", "2", "--embedder", "hashing", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cached"]["hit_rate"]["mean"] > 0 and report["similarity"] == 0.95
    assert set(report) >= {"without", "cached", "cost_saved", "quality_change"}


@pytest.mark.parametrize("flags", [["--repeat", "1.5"], ["--repeat", "0.6", "--paraphrase", "0.6"]])
def test_bad_shares_exit_2(flags, capsys):
    assert main(["simulate", "--cache", *flags]) == 2
    assert "turnout simulate: --repeat" in capsys.readouterr().err
