"""Fixtures for tests on the real services.

`services` brings Kafka, Redis and PostgreSQL up once per session (idempotent) and
migrates the schema; `api_token` is a session user's Bearer token (a high rate limit,
so polling tests never meet it) and `auth` its header.
`pipeline` gives a test its own isolated pipeline on those services: a topic
namespace, a Redis database, a home folder (chDB, recovery) and an API port,
and can start and SIGKILL a real `tapeflow run` process.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from infra import accounts, api_keys, db
from infra import services as svc
from infra.settings import Settings
from infra.topics import ensure_topics, topics_of

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "session-2026-11-24"
_redis_dbs = itertools.count(1)


@pytest.fixture(scope="session")
def services() -> Settings:
    settings = Settings()
    bad = [s for s in svc.up(settings) if not s.healthy]
    assert not bad, f"services not healthy: {bad}"
    db.migrate(settings)
    return settings


def new_user(settings: Settings, *, rate_limit: int = 200, name: str = "Test User"):
    """A fresh user (unique email), their account, and a key: (user, account, token)."""
    pool = db.pool(settings.postgres)
    user, account = accounts.create_user(pool, f"u{uuid.uuid4().hex[:12]}@test.local", name)
    _, token = api_keys.create_key(pool, user.id, "tests", rate_limit_per_minute=rate_limit)
    return user, account, str(token)


@pytest.fixture(scope="session")
def api_token(services: Settings) -> str:
    return new_user(services, rate_limit=1_000_000, name="Session User")[2]


@pytest.fixture(scope="session")
def auth(api_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_token}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PIPELINE_PARTITIONS = 4


class Pipeline:
    """One isolated Tapeflow pipeline: its settings, and its `tapeflow run` process."""

    def __init__(self, base: Settings, home: Path, token: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.headers = {"Authorization": f"Bearer {token}"}
        db = next(_redis_dbs) % 16 or 1
        self.env = {
            "TAPEFLOW_HOME": str(home),
            "TAPEFLOW_NAMESPACE": f"t{uuid.uuid4().hex[:8]}.",
            "TAPEFLOW_REDIS_DB": str(db),
            "TAPEFLOW_API_PORT": str(_free_port()),
            # More than the default of one, so that the flows' sharing of partitions
            # among their consumers is what these pipelines exercise.
            "TAPEFLOW_PARTITIONS": str(PIPELINE_PARTITIONS),
        }
        self.settings = Settings(
            home=home,
            namespace=self.env["TAPEFLOW_NAMESPACE"],
            partitions=PIPELINE_PARTITIONS,
            redis_db=db,
            api_port=int(self.env["TAPEFLOW_API_PORT"]),
            kafka_port=base.kafka_port,
            redis_port=base.redis_port,
        )
        redis.Redis.from_url(self.settings.redis).flushdb()
        ensure_topics(self.settings)
        self.topics = topics_of(self.settings)
        self.proc: subprocess.Popen | None = None
        self.log = home / "run.log"
        # End of day closes a day for every account of the database, so a pipeline runs
        # it only when its test asks (the scheduler has tests of its own).
        self.eod = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def start(self, *, workers: int = 1, split: bool = False) -> None:
        env = {**os.environ, **self.env}
        args = ["--workers", str(workers), *(["--split"] if split else [])]
        args += [] if self.eod else ["--no-eod"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infra.cli", "run", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"tapeflow run exited:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"API did not come up:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str, **params) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, headers=self.headers, timeout=30)


@pytest.fixture
def pipeline(services: Settings, api_token: str, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(services, tmp_path / "home", api_token)
    yield p
    p.stop()
