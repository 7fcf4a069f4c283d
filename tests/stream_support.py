"""A stream-only API (uvicorn in a thread, real sockets) and a WebSocket test client.

Protocol tests publish straight to Redis channels, so they choose exactly what the
hub sees and when. Redis pub/sub ignores the database number, so every test uses
symbols of its own (`symbols()`), never shared with another test or pipeline.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import redis
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from api.stream.app import UVICORN_WS_OPTIONS, create_stream_app
from api.stream.config import StreamSettings
from infra.settings import Settings

_ids = itertools.count()


def symbols(n: int) -> list[str]:
    """n symbols no other test uses: 'Z' + 6 random + a counter."""
    tag = uuid.uuid4().hex[:5].upper()
    return [f"Z{tag}{next(_ids) % 1000:03d}"[:11] for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StreamServer:
    """create_stream_app served by uvicorn on a free port, in a thread of this process."""

    def __init__(self, settings: Settings, cfg: StreamSettings) -> None:
        self.settings, self.cfg = settings, cfg
        self.port = free_port()
        app = create_stream_app(settings)
        app.state.stream_settings = cfg
        self.app = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", **UVICORN_WS_OPTIONS
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.redis = redis.Redis.from_url(settings.redis)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.redis.close()

    # ------------------------------------------------------------ publishing

    def publish(self, channel: str, payload: dict[str, Any]) -> None:
        self.redis.publish(channel, orjson.dumps(payload))


def quote(symbol: str, bid: str, *, venue: str = "NBBO", event_ns: int | None = None) -> dict:
    now = time.time_ns()
    return {
        "T": "q",
        "symbol": symbol,
        "venue": venue,
        "bid_price": bid,
        "bid_size": 100,
        "ask_price": "999.0000",
        "ask_size": 100,
        "event_ns": event_ns or now,
        "receive_ns": now,
    }


def trade(symbol: str, trade_id: int, *, pad: int = 0) -> dict:
    now = time.time_ns()
    return {
        "T": "t",
        "symbol": symbol,
        "venue": "iex",
        "trade_id": str(trade_id),
        "price": "10.0000",
        "size": 100,
        "conditions": ["@"] + ["I"] * pad,
        "event_ns": now,
        "receive_ns": now,
    }


def bar(symbol: str, start: str = "2026-11-24T14:30:00Z") -> dict:
    return {
        "T": "b",
        "symbol": symbol,
        "start": start,
        "open": "1.0000",
        "high": "2.0000",
        "low": "0.5000",
        "close": "1.5000",
        "volume": 300,
        "vwap": "1.2000",
        "trades": 3,
    }


def status(symbol: str, state: str = "halted") -> dict:
    now = time.time_ns()
    return {
        "T": "s",
        "symbol": symbol,
        "venue": "iex",
        "state": state,
        "reason": "T1",
        "event_ns": now,
        "receive_ns": now,
    }


# ---------------------------------------------------------------- the client


class Client:
    """A real WebSocket client (websockets' sync client) that keeps every frame it gets."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[float, list[dict]]] = []  # (monotonic time, events)

    @property
    def events(self) -> list[dict]:
        return [e for _, batch in self.frames for e in batch]

    def send(self, msg: dict[str, Any] | str | bytes) -> None:
        self.ws.send(msg if isinstance(msg, str | bytes) else orjson.dumps(msg).decode())

    def recv(self, timeout: float = 5.0) -> list[dict]:
        raw = self.ws.recv(timeout=timeout)
        batch = orjson.loads(raw)
        assert isinstance(batch, list), f"a message is a JSON array: {raw!r}"
        self.frames.append((time.monotonic(), batch))
        return batch

    def until(self, pred: Callable[[dict], bool], timeout: float = 5.0) -> dict:
        """Read until an event matches; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no matching event in {timeout} s; got {self.events[-5:]}"
            for e in self.recv(left):
                if pred(e):
                    return e

    def drain(self, quiet: float = 0.3) -> list[dict]:
        """Everything that arrives until nothing has for `quiet` seconds."""
        out: list[dict] = []
        while True:
            try:
                out += self.recv(quiet)
            except TimeoutError:
                return out

    def subscribe(self, **kinds: list[str]) -> dict:
        self.send({"action": "subscribe", **kinds})
        return self.until(lambda e: e["T"] in ("subscription", "error"))

    def unsubscribe(self, **kinds: list[str]) -> dict:
        self.send({"action": "unsubscribe", **kinds})
        return self.until(lambda e: e["T"] in ("subscription", "error"))

    def closed_with(self, timeout: float = 10.0) -> int | None:
        """Read until the server closes; its close code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    self.recv(deadline - time.monotonic())
                except TimeoutError:
                    break
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
        raise AssertionError("the server did not close the connection")


@contextmanager
def client(
    url: str,
    token: str | None = None,
    *,
    authed: bool = True,
    sock: socket.socket | None = None,
    max_queue: int = 16,
    authorization: str | None = None,
) -> Iterator[Client]:
    """Connected with the token as a Bearer header (or `authorization` as the header's
    raw value); waits for "authenticated" if authed."""
    if authorization is None and token is not None:
        authorization = f"Bearer {token}"
    headers = {"Authorization": authorization} if authorization is not None else None
    with connect(
        url,
        additional_headers=headers,
        sock=sock,
        max_size=None,
        open_timeout=10,
        max_queue=max_queue,
    ) as ws:
        c = Client(ws)
        if authed:
            c.until(lambda e: e["T"] == "authenticated")
        yield c


def small_buffer_socket(port: int, rcvbuf: int = 4096) -> socket.socket:
    """A connected socket with a tiny receive buffer: a client that reads slowly fills up fast."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    return s


def check_sequence(events: list[dict]) -> int:
    """Seqs go 1, 2, 3 ... with holes only where a gap event says; returns events dropped."""
    expected, dropped = 1, 0
    for e in events:
        if e["T"] == "gap":
            assert e["from_seq"] == expected, (e, expected)
            assert e["to_seq"] - e["from_seq"] + 1 == e["dropped"]
            dropped += e["dropped"]
            expected = e["to_seq"] + 1
        assert e["seq"] == expected, f"seq {e['seq']} where {expected} was due: {e}"
        expected += 1
    return dropped
