"""Redis from the distribution's redis-server, without persistence.

Redis holds only derived data (latest quote and status per symbol, pub/sub) that the flows
rebuild from Kafka (DESIGN.md), so snapshots and the AOF would be I/O for nothing.
"""

from __future__ import annotations

import signal
from pathlib import Path

import redis

from infra.services import process
from infra.settings import Settings

NAME = "redis"
# Set this to use a server of your own; `up` then only checks that it answers.
EXTERNAL_ENV = "TAPEFLOW_REDIS_URL"
STOP_SIGNAL = signal.SIGTERM
STOP_TIMEOUT_S = 10.0


def external(settings: Settings) -> bool:
    return settings.redis_url is not None


def url(settings: Settings) -> str:
    return settings.redis


def ports(settings: Settings) -> dict[str, int]:
    return {"TAPEFLOW_REDIS_PORT": settings.redis_port}


def logs(settings: Settings) -> list[Path]:
    return [process.log_file(settings, NAME)]


def healthy(settings: Settings) -> bool:
    client = redis.Redis.from_url(settings.redis, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start(settings: Settings) -> int:
    server = process.require_binary(
        "redis-server", "install Redis (apt-get install redis-server) or set TAPEFLOW_REDIS_URL"
    )
    config = write_config(settings)
    base = process.service_dir(settings, NAME)
    return process.spawn(settings, NAME, [server, str(config)], cwd=base)


def write_config(settings: Settings) -> Path:
    base = process.service_dir(settings, NAME)
    base.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Written by infra/services/redis.py on every start; edits are lost.",
        f"port {settings.redis_port}",
        "bind 127.0.0.1",
        "protected-mode yes",
        # We detach it ourselves and keep the pid file in <home>/run, like the other services.
        "daemonize no",
        # Redis rewrites its process title by default, which would hide the config path
        # that `down` looks for in /proc/<pid>/cmdline before it trusts the pid file.
        "set-proc-title no",
        f"dir {base}",
        f"logfile {process.log_file(settings, NAME)}",
        "loglevel notice",
        "appendonly no",
        'save ""',
    ]
    config = base / "redis.conf"
    config.write_text("\n".join(lines) + "\n")
    return config
