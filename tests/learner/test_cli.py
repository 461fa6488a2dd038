"""``turnout snapshot list | show | rollback`` against the ClickHouse stores, wired as service.cli does."""

from __future__ import annotations

import argparse

import msgspec
import numpy as np

from learner.cli import register
from learner.embedding import normalize_rows
from learner.snapshot import BudgetState, decode_snapshot, encode_snapshot, initial_snapshot
from service.cli import _open_stores, _settings


def _turnout(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="turnout")
    register(parser.add_subparsers(dest="command", required=True))
    parser.set_defaults(open_stores=_open_stores, load_settings=_settings)  # what service.cli sets
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_show_and_rollback(tmp_path, chdb_dir, ch_database, capsys):
    config = tmp_path / "turnout.toml"
    config.write_text(f'[storage]\nclickhouse_dsn = "chdb://{chdb_dir}"\nclickhouse_database = "{ch_database}"\n')
    _, snapshots, _ = _open_stores(argparse.Namespace(config=str(config), data_dir=None))
    first = initial_snapshot(models=("a", "b"), centroids=normalize_rows(np.eye(2, 4)), prior_mean=(0.5, 0.6),
                             completion_tokens=(1.0, 1.0), latency_s=(0.1, 0.1), prior_strength=2.0,
                             shrink_strength=5.0, created_at_ms=1_000)  # fmt: skip
    learned = msgspec.structs.replace(first, version=2, parent=1, reason="scheduled", watermark_ms=5_000,
                                      n=((10.0, 0.0), (0.0, 4.0)), reward_sum=((9.0, 0.0), (0.0, 1.0)),
                                      decisions=((10, 0), (0, 4)), budgets=(BudgetState("auto", 30.0, 0.002),))  # fmt: skip
    for s in (first, learned):
        snapshots.save(s.version, s.parent, s.created_at_ms, s.reason, encode_snapshot(s))

    assert _turnout(["snapshot", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out[1:]] == [["2", "1"], ["1", "0"]] and "scheduled" in out[1]

    assert _turnout(["snapshot", "show", "2", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "snapshot v2 (parent v1), scheduled" in out and "budget auto" in out and "(   10)" in out

    assert _turnout(["snapshot", "rollback", "1", "--config", str(config)]) == 0
    back = decode_snapshot(snapshots.latest())
    assert (back.version, back.parent, back.reason, back.n, back.watermark_ms) == (3, 2, "rollback", first.n, 5_000)

    assert _turnout(["snapshot", "show", "9", "--config", str(config)]) == 2  # a user's mistake: one line, exit 2
    assert "does not exist" in capsys.readouterr().err
