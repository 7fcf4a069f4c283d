"""One settings object for every process, read from TAPEFLOW_* environment variables."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAPEFLOW_", env_file=".env", extra="ignore")

    # Everything the local services write (data, logs, pid files) lives under here.
    home: Path = Path(".tapeflow")

    kafka_port: int = 39092
    kafka_controller_port: int = 39093
    kafka_bootstrap: str | None = None  # set to use an external cluster

    redis_port: int = 36379
    redis_url: str | None = None
    redis_db: int = 0

    postgres_port: int = 35432
    postgres_url: str | None = None

    # A ClickHouse server URL (http://user:pass@host:8123/db); empty means embedded chDB.
    clickhouse_url: str | None = None

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    # Prefix for every Kafka topic, so pipelines can share a broker (tests use one each).
    namespace: str = ""
    # Partitions of each topic Tapeflow creates (existing topics keep theirs). A flow's
    # workers share a topic's partitions, so a flow spread over N workers needs N; on one
    # machine one is enough, and the broker's CPU goes by partition (README, "Scaling out").
    partitions: int = Field(1, ge=1)
    venues: str = "iex,nasdaq"  # comma-separated; each reads Kafka topic md.raw.<venue>
    stale_after_s: float = 5.0
    # How long a process trusts an API key it has checked; a key revoked elsewhere keeps
    # working here for up to this long (0 checks PostgreSQL on every request).
    auth_cache_s: float = 5.0
    flow_workers: int = 1
    # The market clock the API places orders by (sessions, auction cut-offs): the wall by
    # default; set, it starts at this UTC time when the process starts and runs with the
    # wall from there (demos and tests that replay a recorded day).
    clock_start: datetime | None = None
    # Which clock that is: "wall" (the above), or "feed": the newest event time the quotes
    # flow has processed, so a replayed session trades in that session's hours (the wall,
    # or clock_start, until any feed time exists). GET /v1/clock says which answered.
    clock: Literal["wall", "feed"] = "wall"
    # POST /v1/account/deposits for every user, not only operators (`tapeflow demo` sets it).
    allow_deposits: bool = False
    # The simulated venues' fill model (schemas/fill_model.py); the defaults are plain and
    # deterministic: no latency, the whole displayed size, no minimum, no slippage.
    fill_latency_ms: int = 0
    fill_fraction_min: Decimal = Decimal(1)
    fill_fraction_max: Decimal = Decimal(1)
    fill_min_qty: Decimal = Decimal(0)
    fill_slippage_ticks: int = 0
    fill_seed: int = 0

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def redis(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/{self.redis_db}"

    @property
    def postgres(self) -> str:
        return self.postgres_url or f"postgresql://tapeflow@127.0.0.1:{self.postgres_port}/tapeflow"

    @property
    def chdb_path(self) -> Path:
        return self.home.resolve() / "chdb"

    @property
    def venue_list(self) -> list[str]:
        return [v.strip() for v in self.venues.split(",") if v.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
