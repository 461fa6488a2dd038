"""The spill journal: order, durability across reopen, torn tails, the bound and its loud logs."""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback import spill
from feedback.spill import SpillJournal


def _drain(j: SpillJournal, chunk: int = 7) -> list[bytes]:
    out = []
    while True:
        got = j.read(chunk)
        if not got:
            return out
        out += [p for p, _ in got]
        j.commit(got[-1][1], len(got))


@pytest.fixture
def journals():
    """Open journals through this; all are closed at teardown."""
    opened: list[SpillJournal] = []

    def open_(*args, **kwargs) -> SpillJournal:
        opened.append(SpillJournal(*args, **kwargs))
        return opened[-1]

    yield open_
    for j in opened:
        j.close()


def test_replays_in_append_order_across_segments_and_deletes_them(tmp_path, journals):
    j = journals(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    records = [f"event-{i}".encode() * (1 + i % 5) for i in range(60)]
    for i in range(0, 60, 6):
        assert j.append(records[i : i + 6]) == 6
    assert j.pending == 60 and len(list(tmp_path.glob("*.spill"))) > 3
    assert _drain(j) == records
    assert j.pending == 0 and j.pending_bytes == 0
    assert len(list(tmp_path.glob("*.spill"))) == 1  # replayed segments are gone


def test_reopen_keeps_what_was_not_replayed(tmp_path, journals):
    j = journals(tmp_path, max_bytes=1 << 20, segment_bytes=64)
    j.append([b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10, b"e" * 10])
    got = j.read(2)
    j.commit(got[-1][1], 2)
    j.close()
    again = journals(tmp_path, max_bytes=1 << 20, segment_bytes=64)
    assert again.pending == 3
    assert _drain(again) == [b"c" * 10, b"d" * 10, b"e" * 10]
    again.append([b"f"])
    again.close()
    assert _drain(journals(tmp_path, max_bytes=1 << 20)) == [b"f"]


def test_a_torn_last_record_is_cut_on_open(tmp_path, journals):
    j = journals(tmp_path, max_bytes=1 << 20)
    j.append([b"first", b"second"])
    j.close()
    (seg,) = tmp_path.glob("*.spill")
    with open(seg, "ab") as fh:  # a crash in the middle of the next append
        fh.write(b"\x20\x00\x00\x00\x01\x02\x03")
    again = journals(tmp_path, max_bytes=1 << 20)
    assert again.pending == 2
    again.append([b"third"])
    assert _drain(again) == [b"first", b"second", b"third"]


def test_one_fsync_per_batch(tmp_path, monkeypatch, journals):
    j = journals(tmp_path, max_bytes=1 << 20)
    calls = []
    real = os.fsync
    monkeypatch.setattr(spill.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    j.append([b"x"] * 500)
    assert len(calls) == 1
    j.append([b"y"] * 10, sync=False)
    j.append([b"z"] * 10, sync=False)
    assert len(calls) == 1
    j.sync()
    assert len(calls) == 2


def test_bound_refuses_and_logs_loudly(tmp_path, caplog, journals):
    caplog.set_level(logging.WARNING, logger="turnout.spill")
    j = journals(tmp_path, max_bytes=1000)  # each 92-byte record takes 100 bytes with its header
    assert j.append([b"r" * 92] * 7) == 7
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert j.append([b"r" * 92]) == 1  # 800 of 1000 bytes: the warning line
    assert [r.levelname for r in caplog.records] == ["ERROR"] and "NEARLY FULL" in caplog.records[0].message
    assert j.append([b"r" * 92] * 5) == 2  # two fit, three refused
    assert j.refused == 3 and j.pending == 10 and j.pending_bytes == 1000
    assert caplog.records[-1].levelname == "CRITICAL" and "FULL" in caplog.records[-1].message
    got = j.read(5)
    j.commit(got[-1][1], 5)
    assert j.append([b"r" * 92] * 5) == 5  # room again after a replay


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.one_of(st.tuples(st.just("append"), st.lists(st.binary(max_size=40), max_size=6)),
                              st.tuples(st.just("replay"), st.integers(0, 8)),
                              st.tuples(st.just("reopen"), st.just(0))), max_size=25))  # fmt: skip
def test_journal_is_a_fifo_that_survives_reopen(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("j")
    j = SpillJournal(path, max_bytes=1 << 20, segment_bytes=48)
    model: list[bytes] = []
    replayed: list[bytes] = []
    for op, arg in ops:
        if op == "append":
            j.append(arg)
            model += arg
        elif op == "replay":
            got = j.read(arg)
            if got:
                j.commit(got[-1][1], len(got))
                replayed += [p for p, _ in got]
        else:
            j.close()
            j = SpillJournal(path, max_bytes=1 << 20, segment_bytes=48)
        assert j.pending == len(model) - len(replayed)
    replayed += _drain(j)
    j.close()
    assert replayed == model


def test_one_writer_per_directory(tmp_path, journals):
    j = journals(tmp_path, max_bytes=1 << 20)
    with pytest.raises(RuntimeError, match="in use by another process"):
        SpillJournal(tmp_path, max_bytes=1 << 20)
    j.close()
    journals(tmp_path, max_bytes=1 << 20).append([b"ok"])  # free again once closed
