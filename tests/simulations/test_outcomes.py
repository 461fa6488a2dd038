"""Outcome files: parsing, missing models, concatenation, errors that name the line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulations.outcomes import concat, load_outcomes


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_dense_with_missing_models(tmp_path):
    f = _write(tmp_path / "a.jsonl", [
        {"id": "1", "task": "t", "prompt": "p1", "scores": {"b": 1.0, "a": 0.0}, "costs": {"b": 0.2, "a": 0.1}},
        {"id": "2", "prompt": "p2", "scores": {"a": 1.0}, "costs": {"a": 0.1, "b": 0.3}},
    ])  # fmt: skip
    o = load_outcomes([f])
    assert o.models == ("a", "b") and o.ids == ("1", "2") and o.tasks == ("t", "")
    assert o.available.tolist() == [[True, True], [True, False]]  # a cost without a score is not an outcome
    assert np.isnan(o.scores[1, 1]) and np.isnan(o.costs[1, 1])
    assert o.take(np.array([1])).ids == ("2",)
    only_b = o.select_models(["b"])
    assert only_b.ids == ("1",) and only_b.models == ("b",)


def test_concat_on_the_union_of_models(tmp_path):
    a = load_outcomes([_write(tmp_path / "a.jsonl", [{"id": "1", "prompt": "x", "scores": {"a": 1}, "costs": {"a": 1}}])])
    b = load_outcomes([_write(tmp_path / "b.jsonl", [{"id": "2", "prompt": "y", "scores": {"b": 0}, "costs": {"b": 2}}])])
    both = concat([a, b])
    assert both.models == ("a", "b") and both.available.tolist() == [[True, False], [False, True]]
    assert load_outcomes([tmp_path / "a.jsonl", tmp_path / "b.jsonl"]).ids == ("1", "2")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "bad.jsonl:2"),
        (json.dumps({"id": "2", "prompt": "p", "scores": {"a": 1.5}, "costs": {"a": 1}}), "scores must be in"),
        (json.dumps({"id": "2", "prompt": "p", "scores": {"a": 1}, "costs": {"a": -1}}), "costs must be"),
        (json.dumps({"id": "2", "prompt": "p", "scores": {}, "costs": {}}), "no model has"),
        (json.dumps({"id": "2", "scores": {"a": 1}, "costs": {"a": 1}}), "bad.jsonl:2"),
    ],
)
def test_bad_rows_are_named(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"id": "1", "prompt": "p", "scores": {"a": 1}, "costs": {"a": 1}}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_outcomes([f])
