"""A Redis pub/sub listener in its own process that timestamps what arrives.

It speaks RESP over a plain socket and does nothing but recv() and read the clock
while the benchmark runs, so it is neither starved by the producer (another process)
nor slowed by parsing; messages are parsed only after `stop` is set. A message's
receive time is the wall-clock time of the recv() that completed it.
"""

from __future__ import annotations

import bisect
import multiprocessing as mp
import pickle
import resource
import select
import socket
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

import orjson

from schemas.marketdata import NBBO_VENUE


@dataclass
class Received:
    """Venue quotes seen, keyed by (symbol, event_ns): (receive wall time, the payload's
    receive_ns, i.e. when normalize parsed the raw message), both in ns."""

    at: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    nbbo: int = 0
    other: int = 0
    cpu_s: float = 0.0  # CPU of the listening phase (parsing excluded)


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class Listener:
    """`listen` in a spawned process of its own: start(), then wait_ready() (it is
    subscribed), collect() what it received, close() always (stops it if still running,
    removes its output file)."""

    def __init__(self, port: int, pattern: str) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.stop = ctx.Event(), ctx.Event()
        self.path = Path(tempfile.mkstemp(prefix="tapeflow-bench-sub-", suffix=".pickle")[1])
        self.process: BaseProcess = ctx.Process(
            target=listen,
            args=("127.0.0.1", port, pattern, self.ready, self.stop, str(self.path)),
            daemon=True,
        )

    def start(self) -> None:
        self.process.start()

    def wait_ready(self, timeout_s: float = 30) -> None:
        if not self.ready.wait(timeout_s):
            raise RuntimeError("the pub/sub subscriber did not start")

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def collect(self) -> Received:
        self.stop.set()
        self.process.join(120)
        received: Received = pickle.loads(self.path.read_bytes())
        return received

    def close(self) -> None:
        self.stop.set()
        if self.process.pid is not None:
            self.process.join(60)
            if self.process.is_alive():
                self.process.terminate()
        self.path.unlink(missing_ok=True)


def listen(
    host: str, port: int, pattern: str, ready: MpEvent, stop: MpEvent, out_path: str
) -> None:
    """Process entry point: PSUBSCRIBE, record (chunk, time) until stop, parse, pickle."""
    sock = socket.create_connection((host, port))
    sock.sendall(_command(b"PSUBSCRIBE", pattern.encode()))
    chunks: list[bytes] = []
    stamps: list[int] = []
    first = sock.recv(1 << 16)  # the subscription confirmation (and anything after it)
    chunks.append(first)
    stamps.append(time.time_ns())
    ready.set()
    _record(sock, stop, chunks, stamps)
    cpu = _cpu_s()
    sock.close()
    received = parse(chunks, stamps)
    received.cpu_s = cpu
    Path(out_path).write_bytes(pickle.dumps(received))


def _record(sock: socket.socket, stop: MpEvent, chunks: list[bytes], stamps: list[int]) -> None:
    next_check = time.monotonic()
    while True:
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            data = sock.recv(1 << 20)
            stamps.append(time.time_ns())
            if not data:
                return
            chunks.append(data)
        now = time.monotonic()
        if now >= next_check:  # an Event check costs a lock: a few times a second is enough
            if stop.is_set():
                return
            next_check = now + 0.1


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse(chunks: list[bytes], stamps: list[int]) -> Received:
    data = b"".join(chunks)
    ends: list[int] = []
    total = 0
    for c in chunks:
        total += len(c)
        ends.append(total)
    out = Received()
    pos = 0
    while pos < len(data):
        try:
            parts, pos = _array(data, pos)
        except ValueError:  # a message cut short when listening stopped
            break
        if len(parts) != 4 or parts[0] != b"pmessage":
            continue
        at = stamps[bisect.bisect_left(ends, pos)]
        _take(out, parts[3], at)
    return out


def _take(out: Received, payload: bytes, at: int) -> None:
    msg = orjson.loads(payload)
    if msg.get("T") != "q":
        out.other += 1
    elif msg["venue"] == NBBO_VENUE:
        out.nbbo += 1
    else:
        out.at.setdefault((msg["symbol"], msg["event_ns"]), (at, msg["receive_ns"]))


def _array(data: bytes, pos: int) -> tuple[list[bytes], int]:
    """One RESP2 array of bulk strings / integers starting at pos; (elements, next pos)."""
    line_end = data.index(b"\r\n", pos)
    if data[pos : pos + 1] != b"*":
        raise ValueError(f"unexpected RESP at {pos}: {data[pos : pos + 20]!r}")
    count = int(data[pos + 1 : line_end])
    pos = line_end + 2
    parts: list[bytes] = []
    for _ in range(count):
        line_end = data.index(b"\r\n", pos)
        kind, head = data[pos : pos + 1], data[pos + 1 : line_end]
        pos = line_end + 2
        if kind == b"$":
            n = int(head)
            if pos + n + 2 > len(data):
                raise ValueError("truncated bulk string")
            parts.append(data[pos : pos + n])
            pos += n + 2
        else:  # ':' integer (the subscription count) or '+' simple string
            parts.append(head)
    return parts, pos
