"""The delivery spool: verified deliveries the database could not take in time, kept on disk
until it can.

Forgejo sends a delivery once and never again, whatever the answer. When the database cannot
commit one within the answer deadline (unreachable, restarting, locked, out of space), the
delivery is appended here, fsync'd, and answered 202 "spooled"; `SpoolReplayer` feeds the
records to the intake in arrival order once the database answers, and the delivery id makes
that idempotent (one that did reach the database is a duplicate, not a second run).

The file is a sequence of records: a 4-byte mark, the payload's length and CRC-32 (4 bytes
each, big-endian), the payload (JSON). A record cut short by a crash (a torn write) or
damaged fails its length or checksum: it is logged and skipped, and reading goes on at the
next mark (the mark's first byte never occurs in UTF-8 JSON followed by 'C').
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from claude_hooks.errors import ClaudeHooksError
from claude_hooks.store.intake import DeliveryRecord

log = logging.getLogger(__name__)

FILE_NAME = "deliveries.spool"
MARK = b"\xd9CHS"
_HEAD = struct.Struct(">4sII")  # mark, payload length, CRC-32 of the payload


class SpoolError(ClaudeHooksError):
    """The spool cannot take a delivery (full, or its disk failed): the answer is a 503."""


@dataclass(frozen=True, slots=True)
class Spooled:
    """A delivery in the spool: where its record starts and ends, and what it is."""

    start: int
    end: int
    record: DeliveryRecord
    reason: str


def encode(record: DeliveryRecord, reason: str) -> bytes:
    """One record of the spool file."""
    payload = orjson.dumps({"record": asdict(record), "reason": reason})
    return _HEAD.pack(MARK, len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes, start: int, end: int) -> Spooled:
    data: dict[str, Any] = orjson.loads(payload)
    return Spooled(start, end, DeliveryRecord(**data["record"]), str(data["reason"]))


def read_records(data: bytes, source: str, offset: int = 0) -> Iterator[Spooled]:
    """The whole records of `data` from `offset`; a torn or damaged one is logged and skipped."""
    position = offset
    while position < len(data):
        start = position
        problem = ""
        if data[start : start + 4] != MARK:
            problem = "no record mark"
        elif start + _HEAD.size > len(data):
            problem = "its header is cut short (a torn write)"
        else:
            _, length, crc = _HEAD.unpack_from(data, start)
            end = start + _HEAD.size + length
            payload = data[start + _HEAD.size : end]
            if end > len(data):
                problem = f"it is cut short at {len(data) - start} of {end - start} bytes"
            elif zlib.crc32(payload) != crc:
                problem = "its checksum does not match"
            else:
                try:
                    yield _decode(payload, start, end)
                except (ValueError, TypeError, KeyError) as exc:
                    log.warning(
                        "spool %s: record at byte %d cannot be read: %s", source, start, exc
                    )
                position = end
                continue
        found = data.find(MARK, start + 1)
        position = len(data) if found < 0 else found
        log.warning(
            "spool %s: skipped bytes %d-%d: %s; the records after them are kept",
            source,
            start,
            position,
            problem,
        )


class Spool:
    """The append-only spool file of one node, and the deliveries in it still to replay."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self.max_bytes = max_bytes
        self.waiting: list[Spooled] = []
        self._size = 0
        self._batch: list[tuple[bytes, DeliveryRecord, str, asyncio.Future[Spooled]]] = []
        self._unwritten = 0  # records accepted and not yet written
        self._unwritten_bytes = 0
        self._writer: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Read what an earlier run left (after a crash too): it waits to be replayed."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        self._size = len(data)
        self.waiting = list(read_records(data, str(self.path)))
        if self.waiting:
            log.warning(
                "spool %s: %d deliveries wait for the database", self.path, len(self.waiting)
            )

    @property
    def size(self) -> int:
        return self._size

    @property
    def busy(self) -> bool:
        """Deliveries wait in the spool, or are being written to it: a new one goes after."""
        return bool(self.waiting or self._unwritten)

    async def append(self, record: DeliveryRecord, reason: str) -> Spooled:
        """Write `record` and fsync it: on return it survives a crash. Raises SpoolError.

        Records that arrive while a write is under way go in the next one, with one fsync for
        all: one fsync per record held the answers up by milliseconds each at 200/s."""
        data = encode(record, reason)
        if self._size + self._unwritten_bytes + len(data) > self.max_bytes:
            raise SpoolError(
                f"the delivery spool is full ({self._size} bytes of server.spool_max_bytes, "
                f"{self.max_bytes}) while {reason}: retry once the database answers"
            )
        future: asyncio.Future[Spooled] = asyncio.get_running_loop().create_future()
        self._batch.append((data, record, reason, future))
        self._unwritten += 1
        self._unwritten_bytes += len(data)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches(), name="spool-writer")
        return await asyncio.shield(future)

    async def _write_batches(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            data = b"".join(item[0] for item in batch)
            try:
                await asyncio.to_thread(self._write, data)
            except OSError as exc:
                # What a short write left is a torn record: the reader skips it.
                self._size = self._on_disk()
                for _data, _record, reason, future in batch:
                    future.set_exception(
                        SpoolError(
                            f"cannot write the delivery spool {self.path} ({exc}) while {reason}"
                        )
                    )
                    future.exception()  # retrieved: the caller may have gone
                continue
            finally:
                self._unwritten -= len(batch)
                self._unwritten_bytes -= len(data)
            for chunk, record, reason, future in batch:
                entry = Spooled(self._size, self._size + len(chunk), record, reason)
                self._size = entry.end
                self.waiting.append(entry)
                future.set_result(entry)

    def _write(self, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"wrote {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _on_disk(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return self._size

    def done(self, entry: Spooled) -> None:
        """`entry` is in the database now; once none waits, the file starts afresh."""
        self.waiting.remove(entry)
        if not self.busy:
            try:
                with self.path.open("r+b") as file:
                    file.truncate(0)
                    os.fsync(file.fileno())
                self._size = 0
            except OSError as exc:
                # Kept: replaying it again is harmless (the delivery ids are recorded).
                log.warning("spool %s: could not empty it: %s", self.path, exc)


def read_spool(path: Path) -> list[Spooled]:
    """The deliveries in a spool file, or in the spool of a data dir (`path` a folder)."""
    file = path / FILE_NAME if path.is_dir() else path
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SpoolError(f"cannot read the spool {file}: {exc}") from None
    return list(read_records(data, str(file)))
