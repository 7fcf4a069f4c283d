"""Recorded feeds on disk, behind one interface whatever the wire format.

A recording is either
- ``*.jsonl``: JSON-lines vendor feed (schemas.json_feed), one message per line, or
- ``*.tops``: IEX-TP segments carrying IEX TOPS 1.6 messages, concatenated
  exactly as they came off the wire (each segment's header holds its length).

Each stored message becomes a Record whose payload is exactly what goes onto
Kafka md.raw.<venue>: a line without its newline, or one whole segment. The
replayer paces by ``event_ns`` and keys by ``key``:
- JSON lines: event_ns is the (first) message's time, key the symbol, so a
  symbol's messages stay ordered in one partition; a line with no symbol (or
  a batch mixing symbols) has key None.
- TOPS segments: event_ns is the segment's send time; key is None because one
  segment carries many symbols (it goes to a partition as a unit).
A record whose time cannot be read (e.g. truncated JSON) takes the previous
record's time (0 for the first), so pacing never goes backwards or fails on
bad input: the normalize flow is where bad input gets judged.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, NamedTuple

from schemas import iex_tops, json_feed

Format = Literal["json", "tops"]

_SUFFIXES: dict[str, Format] = {".jsonl": "json", ".tops": "tops"}


class Record(NamedTuple):
    event_ns: int
    key: bytes | None
    payload: bytes


def format_of(path: str | Path) -> Format:
    """The recording format, by file extension (.jsonl or .tops)."""
    suffix = Path(path).suffix.lower()
    try:
        return _SUFFIXES[suffix]
    except KeyError:
        raise ValueError(f"not a recording (want .jsonl or .tops): {path}") from None


def read_recording(path: str | Path) -> Iterator[Record]:
    """Stream the records of a recording in file order."""
    if format_of(path) == "json":
        return _read_json(Path(path))
    return _read_tops(Path(path))


def _read_json(path: Path) -> Iterator[Record]:
    last_ns = 0
    with path.open("rb") as f:
        for line in f:  # streams: a full day's file never has to fit in memory
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            event_ns = json_feed.line_event_time(line)
            last_ns = last_ns if event_ns is None else event_ns
            symbol = json_feed.line_symbol(line)
            key = symbol.encode("ascii") if symbol else None
            yield Record(last_ns, key, line)


def _read_tops(path: Path) -> Iterator[Record]:
    last_ns = 0
    with path.open("rb") as f:
        if path.stat().st_size == 0:
            return
        # mmap lets iter_segments frame a multi-GB file without reading it all in.
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for segment in iex_tops.iter_segments(data):  # type: ignore[arg-type]
                raw = bytes(segment)
                # Framing already checked the header is whole; its send time is always there.
                last_ns = iex_tops.segment_send_time(raw)
                yield Record(last_ns, None, raw)


class RecordingWriter:
    """Appends raw messages to a recording: a line per JSON message, a segment per TOPS one.

    Truncates an existing file unless ``append=True`` (a recorder resuming a day).
    """

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.format: Format = format_of(self.path)
        self.count = 0
        self._file: BinaryIO = self.path.open("ab" if append else "wb")

    def write(self, payload: bytes) -> None:
        if self.format == "json":
            # A newline inside a payload would silently split it into two records.
            if b"\n" in payload or b"\r" in payload:
                raise ValueError("a JSON-lines payload must not contain a line break")
            self._file.write(payload + b"\n")
        else:
            self._file.write(payload)
        self.count += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
