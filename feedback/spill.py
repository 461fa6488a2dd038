"""The spill journal: events the broker could not take yet, kept on local disk in order.

An append-only log of length-prefixed, CRC-checked records in numbered segment files, plus a
``cursor`` file naming the first record not yet replayed. The producer appends a batch and
fsyncs once (``append(..., sync=True)``); the replayer ``read``s from the cursor, sends, and
``commit``s the position it reached, which deletes segments left behind. A crash mid-append
leaves a torn last record; opening the journal cuts it off (its batch was never acknowledged
as stored, because the fsync had not returned).

The journal is bounded (``max_bytes`` of records not yet replayed). An append past the bound is
refused record by record and counted in ``refused``; a loud log line is written when the
journal first fills past ``warn_ratio`` of its bound, and again whenever it refuses.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Position", "SpillJournal"]

log = logging.getLogger("turnout.spill")

_HEADER = struct.Struct("<II")  # payload length, crc32(payload)
_CURSOR = struct.Struct("<QQ")  # segment number, byte offset
_SUFFIX = ".spill"

Position = tuple[int, int]  # (segment number, byte offset): where the next record starts


class SpillJournal:
    """Append-only on-disk FIFO of byte records with an explicit replay cursor. Thread-safe."""

    def __init__(self, directory: str | Path, max_bytes: int, *, segment_bytes: int = 32 << 20,
                 warn_ratio: float = 0.8) -> None:  # fmt: skip
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fh = _lock_directory(self.directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, max_bytes))
        self._warn_at = int(max_bytes * warn_ratio)
        self._warned = False
        self._lock = threading.Lock()
        self.refused = 0
        self._last_refusal_log = 0.0
        self._unsynced = False
        self._cursor: Position = self._read_cursor()
        self._sizes: dict[int, int] = {}  # segment -> bytes of whole records in it
        self._records = 0  # records not yet replayed
        self._recover()
        if not self._sizes:
            self._sizes[max(self._cursor[0], 1)] = 0
        if self._cursor[0] not in self._sizes:
            self._cursor = (min(self._sizes), 0)
        self._active = max(self._sizes)
        self._fh = open(self._segment(self._active), "ab")

    # -- state ----------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes of records appended and not yet replayed (what the bound applies to)."""
        with self._lock:
            return self._pending_bytes()

    @property
    def pending(self) -> int:
        """Number of records appended and not yet replayed."""
        return self._records

    def _pending_bytes(self) -> int:
        seg, off = self._cursor
        return sum(size for n, size in self._sizes.items() if n >= seg) - off

    # -- writing --------------------------------------------------------------------------

    def append(self, records: Sequence[bytes], sync: bool = True) -> int:
        """Append records in order; fsync once when ``sync``. Returns how many were accepted.

        Records past the bound are refused (counted in ``refused``, logged loudly).
        """
        accepted = 0
        with self._lock:
            pending = self._pending_bytes()
            for payload in records:
                size = _HEADER.size + len(payload)
                if pending + size > self.max_bytes:
                    self._refuse(len(records) - accepted)
                    break
                if self._sizes[self._active] and self._sizes[self._active] + size > self.segment_bytes:
                    self._roll()
                self._fh.write(_HEADER.pack(len(payload), zlib.crc32(payload)))
                self._fh.write(payload)
                self._sizes[self._active] += size
                pending += size
                accepted += 1
            self._records += accepted
            if accepted:
                self._unsynced = True
                if sync:
                    self._sync_locked()
                if pending >= self._warn_at and not self._warned:
                    self._warned = True
                    log.error("SPILL JOURNAL NEARLY FULL: %d of %d bytes (%d events) waiting in %s; "
                              "is the Kafka broker down?", pending, self.max_bytes, self._records,
                              self.directory)  # fmt: skip
        return accepted

    def sync(self) -> None:
        """Flush and fsync what was appended without ``sync``."""
        with self._lock:
            if self._unsynced:
                self._sync_locked()

    def _sync_locked(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._unsynced = False

    def _refuse(self, n: int) -> None:
        self.refused += n
        now = time.monotonic()
        if now - self._last_refusal_log > 5.0:
            self._last_refusal_log = now
            log.critical("SPILL JOURNAL FULL (%d bytes in %s): %d events refused so far; events are being "
                         "LOST until the broker is back", self.max_bytes, self.directory, self.refused)  # fmt: skip

    def _roll(self) -> None:
        self._sync_locked()
        self._fh.close()
        self._active += 1
        self._sizes[self._active] = 0
        self._fh = open(self._segment(self._active), "ab")
        _fsync_dir(self.directory)

    # -- replay ---------------------------------------------------------------------------

    def read(self, max_records: int, max_bytes: int = 8 << 20) -> list[tuple[bytes, Position]]:
        """Up to ``max_records`` records from the cursor, each with the position after it.

        Does not move the cursor: ``commit`` the position of the last record replayed.
        """
        out: list[tuple[bytes, Position]] = []
        with self._lock:
            if self._unsynced:
                self._fh.flush()
            seg, off = self._cursor
            taken = 0
            while len(out) < max_records and taken < max_bytes and seg in self._sizes:
                end = self._sizes[seg]
                if off >= end:
                    if seg >= self._active:
                        break
                    seg, off = seg + 1, 0
                    continue
                with open(self._segment(seg), "rb") as fh:
                    fh.seek(off)
                    while off < end and len(out) < max_records and taken < max_bytes:
                        length, _crc = _HEADER.unpack(fh.read(_HEADER.size))
                        payload = fh.read(length)
                        off += _HEADER.size + length
                        taken += length
                        out.append((payload, (seg, off)))
        return out

    def commit(self, position: Position, records: int) -> None:
        """Mark everything before ``position`` (``records`` records) as replayed; drop old segments."""
        with self._lock:
            self._cursor = position
            self._records = max(0, self._records - records)
            seg, off = position
            if self._records == 0 and seg == self._active and off >= self._sizes[seg]:
                # all replayed: start a fresh segment so the files do not grow forever
                self._roll()
                self._cursor = (self._active, 0)
            for n in [n for n in self._sizes if n < self._cursor[0]]:
                del self._sizes[n]
                self._segment(n).unlink(missing_ok=True)
            self._write_cursor()
            if self._warned and self._pending_bytes() < self.max_bytes // 2:
                self._warned = False
                log.warning("spill journal drained below half of its bound (%d events left)", self._records)

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._sync_locked()
                self._fh.close()
            if not self._lock_fh.closed:
                self._lock_fh.close()  # releases the directory lock

    def __enter__(self) -> "SpillJournal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- files ----------------------------------------------------------------------------

    def _segment(self, n: int) -> Path:
        return self.directory / f"{n:010d}{_SUFFIX}"

    def _read_cursor(self) -> Position:
        try:
            seg, off = _CURSOR.unpack((self.directory / "cursor").read_bytes())
            return int(seg), int(off)
        except (FileNotFoundError, struct.error):
            return (0, 0)

    def _write_cursor(self) -> None:
        tmp = self.directory / "cursor.tmp"
        with open(tmp, "wb") as fh:
            fh.write(_CURSOR.pack(*self._cursor))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / "cursor")
        _fsync_dir(self.directory)

    def _recover(self) -> None:
        """Scan the segments: count records past the cursor, cut a torn or corrupt tail."""
        seg0, off0 = self._cursor
        for path in sorted(self.directory.glob("*" + _SUFFIX)):
            n = int(path.stem)
            if n < seg0:
                path.unlink()
                continue
            good = 0
            with open(path, "rb") as fh:
                data = fh.read()
            while good + _HEADER.size <= len(data):
                length, crc = _HEADER.unpack_from(data, good)
                end = good + _HEADER.size + length
                if end > len(data) or zlib.crc32(data[good + _HEADER.size : end]) != crc:
                    break
                if n > seg0 or good >= off0:
                    self._records += 1
                good = end
            if good < len(data):
                log.warning("spill segment %s: cutting %d bytes of a torn record", path.name, len(data) - good)
                with open(path, "r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
            self._sizes[n] = good
        if self._records:
            log.warning("spill journal %s holds %d events from an earlier run; they will be replayed",
                        self.directory, self._records)  # fmt: skip


def _lock_directory(directory: Path) -> Any:
    """Hold an exclusive lock on the journal directory: two writers would corrupt each other."""
    fh = open(directory / "lock", "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise RuntimeError(f"spill journal {directory} is in use by another process; give each process that "
                           f"publishes events its own [events] spill_dir") from None  # fmt: skip
    return fh


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
