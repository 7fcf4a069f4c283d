"""`tapeflow run`: the API and every flow in one process (or, with --split, a few).

chDB lets one process own its data directory, so in the default embedded
mode the candles flow and the API that reads candles must share a process.
Each Bytewax flow runs in its own thread; a flow that dies takes the process
down so a supervisor notices.

One process is bound by one GIL. `split=True` keeps the API and the candles
flow (the chDB users) here and starts every other flow as a child process of
its own, killed by the kernel if this process dies (PR_SET_PDEATHSIG), so a
crash never leaves an orphan writing to the same recovery store.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from importlib import import_module

import uvicorn
from bytewax.run import cli_main

from flows.common import SNAPSHOT_INTERVAL_S, recovery
from infra.gc_tuning import tune_for_server
from infra.settings import Settings
from infra.topics import ensure_topics

# execution and ledger: the order side (oms.orders -> oms.executions -> PostgreSQL).
# alerts: price alerts on md.trades/md.quotes -> PostgreSQL + account:{id} (flows/alerts.py).
FLOWS = ("normalize", "quotes", "candles", "execution", "ledger", "alerts")
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


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _watch_child(name: str, proc: subprocess.Popen) -> None:
    proc.wait()
    log.error("flow process %s exited with %s", name, proc.returncode)
    os._exit(3)


def start_flow_processes(names: tuple[str, ...], workers: int) -> None:
    for name in names:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infra.cli",
                "run",
                "--no-api",
                "--flows",
                name,
                "--workers",
                str(workers),
            ],
            preexec_fn=_die_with_parent,
            stdin=subprocess.DEVNULL,
        )
        threading.Thread(target=_watch_child, args=(name, proc), daemon=True).start()


def _run_relay(settings: Settings) -> None:
    from infra.outbox import run_relays

    try:
        run_relays(settings, threading.Event())  # oms.orders, and the alerts topic
        log.error("outbox relay ended")
    except BaseException:
        log.exception("outbox relay failed")
    finally:
        os._exit(3)  # acknowledged orders that never reach Kafka: stop rather than hide it


def start_relay(settings: Settings, *, as_process: bool) -> None:
    """The outbox relay (infra/outbox.py): a thread here, or with --split a child process.

    Several `tapeflow run` processes may each start one: an advisory lock in PostgreSQL
    lets one relay work at a time and the others wait to take over."""
    if not as_process:
        threading.Thread(target=_run_relay, args=(settings,), name="relay", daemon=True).start()
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "relay"],
        preexec_fn=_die_with_parent,
        stdin=subprocess.DEVNULL,
    )
    threading.Thread(target=_watch_child, args=("relay", proc), daemon=True).start()


def run(
    settings: Settings,
    *,
    api: bool = True,
    flows: tuple[str, ...] = FLOWS,
    workers: int = 1,
    split: bool = False,
    relay: bool = True,
    eod: bool = True,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Every process this starts runs for hours; the stream hub does the same for stream
    # workers that uvicorn starts on its own (python -m api.stream --workers N).
    tune_for_server()
    here = tuple(f for f in flows if not split or f == "candles")
    ensure_topics(settings)
    start_flow_processes(tuple(f for f in flows if f not in here), workers)
    start_flows(settings, here, workers)
    if relay:
        start_relay(settings, as_process=split)
    if api and eod:
        # End of day after each close, here: the API's process owns chDB (also --split).
        from infra.eod_scheduler import start_scheduler

        start_scheduler(settings)
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
