"""`tapeflow run`: the API and every flow in one process.

chDB lets one process own its data directory, so in the default embedded
mode the candles flow and the API that reads candles must share a process.
Each Bytewax flow runs in its own thread (Bytewax releases the GIL while it
schedules); a flow that dies takes the process down so a supervisor notices.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from importlib import import_module

import uvicorn
from bytewax.run import cli_main

from flows.common import SNAPSHOT_INTERVAL_S, recovery
from infra.settings import Settings
from infra.topics import ensure_topics

FLOWS = ("normalize", "quotes", "candles")
log = logging.getLogger("tapeflow.run")


def _run_flow(settings: Settings, name: str, workers: int) -> None:
    try:
        flow = import_module(f"flows.{name}").build(settings)
        cli_main(
            flow,
            workers_per_process=workers,
            epoch_interval=timedelta(seconds=SNAPSHOT_INTERVAL_S),
            recovery_config=recovery(settings, name),
        )
        log.error("flow %s ended", name)
    except BaseException:
        log.exception("flow %s failed", name)
    finally:
        os._exit(3)  # a half-running pipeline is worse than a stopped one


def start_flows(settings: Settings, names: tuple[str, ...] = FLOWS, workers: int = 1) -> None:
    ensure_topics(settings)
    for name in names:
        threading.Thread(
            target=_run_flow, args=(settings, name, workers), name=f"flow-{name}", daemon=True
        ).start()


def run(
    settings: Settings, *, api: bool = True, flows: tuple[str, ...] = FLOWS, workers: int = 1
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    start_flows(settings, flows, workers)
    if api:
        from api.app import create_app
        from api.stream.app import UVICORN_WS_OPTIONS

        uvicorn.run(
            create_app(settings),
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
            **UVICORN_WS_OPTIONS,
        )
    else:
        threading.Event().wait()
