"""Local Kafka, Redis and PostgreSQL as plain processes under settings.home (no Docker).

    up(settings)      start whatever is not healthy yet, wait until all are healthy
    status(settings)  what is running and healthy
    down(settings)    stop what `up` started (never anything else)

A service whose URL is set in settings (TAPEFLOW_KAFKA_BOOTSTRAP, TAPEFLOW_REDIS_URL,
TAPEFLOW_POSTGRES_URL) is external: never started or stopped, only health-checked.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from infra.services import kafka, postgres, process, redis
from infra.services.process import ServiceError
from infra.settings import Settings

__all__ = ["SERVICES", "ServiceError", "ServiceStatus", "down", "status", "up"]

START_TIMEOUT_S = 60.0
# An external service is not ours to wait for: it is either reachable or misconfigured.
EXTERNAL_TIMEOUT_S = 10.0


class Service(Protocol):
    """What each service module (kafka, redis, postgres) provides."""

    NAME: str
    EXTERNAL_ENV: str
    STOP_SIGNAL: signal.Signals
    STOP_TIMEOUT_S: float

    def external(self, settings: Settings) -> bool: ...
    def url(self, settings: Settings) -> str: ...
    def ports(self, settings: Settings) -> dict[str, int]: ...
    def logs(self, settings: Settings) -> list[Path]: ...
    def healthy(self, settings: Settings) -> bool: ...
    def start(self, settings: Settings) -> int: ...


# Kafka first: its JVM takes longest to boot, so the others start while it does.
SERVICES: tuple[Service, ...] = (kafka, redis, postgres)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    healthy: bool
    pid: int | None
    url: str
    detail: str


def up(settings: Settings) -> list[ServiceStatus]:
    """Start every service that is not healthy, then wait for all; idempotent."""
    with process.locked(settings):
        to_start = [svc for svc in SERVICES if _needs_start(svc, settings)]
        # Check every port before starting anything, so a conflict leaves nothing half-up.
        for svc in to_start:
            _check_ports_free(svc, settings)
        pids = {svc.NAME: process.owned_pid(settings, svc.NAME) for svc in SERVICES}
        pids |= {svc.NAME: svc.start(settings) for svc in to_start}
        for svc in SERVICES:
            _wait_healthy(svc, settings, pids[svc.NAME])
    return status(settings)


def down(settings: Settings) -> list[ServiceStatus]:
    """Stop the processes this project started (by pid file): graceful, then SIGKILL."""
    with process.locked(settings):
        for svc in reversed(SERVICES):
            pid = None if svc.external(settings) else process.owned_pid(settings, svc.NAME)
            if pid is not None:
                process.terminate(pid, svc.STOP_SIGNAL, svc.STOP_TIMEOUT_S)
                process.pid_file(settings, svc.NAME).unlink(missing_ok=True)
    return status(settings)


def status(settings: Settings) -> list[ServiceStatus]:
    return [_status(svc, settings) for svc in SERVICES]


def _needs_start(svc: Service, settings: Settings) -> bool:
    """Not external, not ours and running (maybe still booting), not healthy anyway."""
    if svc.external(settings) or process.owned_pid(settings, svc.NAME) is not None:
        return False
    return not svc.healthy(settings)


def _check_ports_free(svc: Service, settings: Settings) -> None:
    for env, port in svc.ports(settings).items():
        if process.port_open(port):
            raise ServiceError(
                f"{svc.NAME}: port {port} is taken by a process this project did not start; "
                f"stop it or choose another port with {env}"
            )


def _wait_healthy(svc: Service, settings: Settings, pid: int | None) -> None:
    if svc.external(settings):
        name = f"{svc.NAME} at {svc.url(settings)} (external, from {svc.EXTERNAL_ENV})"
        process.wait_until(
            lambda: svc.healthy(settings), name=name, timeout=EXTERNAL_TIMEOUT_S, pid=None, logs=[]
        )
        return
    process.wait_until(
        lambda: svc.healthy(settings),
        name=svc.NAME,
        timeout=START_TIMEOUT_S,
        pid=pid,
        logs=svc.logs(settings),
    )


def _status(svc: Service, settings: Settings) -> ServiceStatus:
    healthy = svc.healthy(settings)
    url = svc.url(settings)
    if svc.external(settings):
        detail = "external" + ("" if healthy else ", unreachable")
        return ServiceStatus(svc.NAME, healthy, None, url, detail)
    pid = process.owned_pid(settings, svc.NAME)
    if pid is None:
        detail = "healthy, but not started by this project" if healthy else "not running"
    else:
        detail = "running" if healthy else "running, not healthy (starting?)"
    return ServiceStatus(svc.NAME, healthy, pid, url, detail)
