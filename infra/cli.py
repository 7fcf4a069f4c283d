"""The `tapeflow` command: services, flows, feeds and candles."""

from __future__ import annotations

import csv
import sys
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Literal

import httpx
import typer

from infra.cli_accounts import DEMO_EMAIL, accounts_app, demo_token, keys_app, users_app
from infra.cli_eod import eod_command, report_app
from infra.cli_reconcile import reconcile_command
from infra.settings import Settings, get_settings

app = typer.Typer(
    help="Tapeflow: a brokerage back end built as a stream pipeline.", no_args_is_help=True
)
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(accounts_app, name="accounts")
app.command(name="reconcile")(reconcile_command)
app.command(name="eod")(eod_command)  # end of day (infra/cli_eod.py)
app.add_typer(report_app, name="report")

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "session-2026-11-24"
CSV_HEADER = ["symbol", "start", "open", "high", "low", "close", "volume", "vwap", "trades"]


def _settings() -> Settings:
    return get_settings()


def _print_status(rows) -> None:
    for s in rows:
        mark = "up  " if s.healthy else "down"
        pid = s.pid if s.pid else "-"
        typer.echo(f"{mark} {s.name:<11} pid {pid!s:<8} {s.url}  {s.detail}")


def _migrate(settings: Settings) -> None:
    from infra.db import current_revision, migrate

    migrate(settings)
    typer.echo(f"schema      PostgreSQL at revision {current_revision(settings)} (head)")


@app.command()
def up() -> None:
    """Start Kafka, Redis and PostgreSQL (idempotent), create the topics, migrate the schema."""
    from infra import services
    from infra.topics import ensure_topics

    settings = _settings()
    _print_status(services.up(settings))
    ensure_topics(settings)
    _migrate(settings)


@app.command()
def down() -> None:
    """Stop the services this project started."""
    from infra import services

    _print_status(services.down(_settings()))


@app.command()
def status() -> None:
    """Show each service's health; exits 1 if any is down."""
    from infra import services

    rows = services.status(_settings())
    _print_status(rows)
    raise typer.Exit(0 if all(s.healthy for s in rows) else 1)


@app.command()
def run(
    api: Annotated[bool, typer.Option(help="Serve the HTTP API in this process")] = True,
    flows: Annotated[
        str, typer.Option(help="Comma-separated flows to host")
    ] = "normalize,quotes,candles,execution,ledger,alerts",
    workers: Annotated[
        int | None, typer.Option(min=1, help="Bytewax workers per flow [TAPEFLOW_FLOW_WORKERS]")
    ] = None,
    split: Annotated[
        bool,
        typer.Option(help="Run every flow but candles as a child process (uses more cores)"),
    ] = False,
    relay: Annotated[
        bool | None,
        typer.Option(
            help="Relay committed orders from the outbox to Kafka oms.orders "
            "[default: when serving the API]"
        ),
    ] = None,
    eod: Annotated[
        bool, typer.Option(help="Run end of day after each trading day (with the API)")
    ] = True,
) -> None:
    """Host the API and the flows in one process (what embedded chDB needs)."""
    from infra.runner import run as run_all

    settings = _settings()
    run_all(
        settings,
        api=api,
        flows=tuple(f for f in flows.split(",") if f),
        workers=workers or settings.flow_workers,
        split=split,
        relay=api if relay is None else relay,
        eod=eod,
    )


@app.command()
def relay() -> None:
    """Relay committed outbox rows to Kafka (oms.orders, alert definitions), exactly once in
    effect (foreground)."""
    from infra.outbox import main

    main()


@app.command()
def replay(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help=".jsonl or .tops recording")
    ],
    venue: Annotated[str, typer.Option(help="Publish to md.raw.<venue>")],
    speed: Annotated[float, typer.Option(min=0.001, help="Times faster than recorded")] = 1.0,
    max_speed: Annotated[bool, typer.Option("--max", help="As fast as possible")] = False,
) -> None:
    """Publish a recording into Kafka at recorded speed, N times faster, or flat out."""
    from infra.replay import replay as do_replay
    from infra.topics import topics_of

    settings = _settings()
    stats = do_replay(
        file,
        venue,
        settings.bootstrap,
        None if max_speed else speed,
        topics_of(settings).raw(venue),
    )
    typer.echo(
        f"replayed {stats.messages} messages to md.raw.{venue} in {stats.seconds:.2f} s "
        f"({stats.rate:,.0f}/s)"
    )


@app.command()
def record(
    venue: Annotated[str, typer.Option(help="Venue whose feed to record")],
    out: Annotated[Path, typer.Option(help="Output .jsonl or .tops file")],
    duration: Annotated[float, typer.Option(help="Seconds to record")] = 60.0,
    udp: Annotated[str | None, typer.Option(help="HOST:PORT to receive IEX-TP datagrams")] = None,
    from_beginning: Annotated[bool, typer.Option(help="From the topic's start")] = False,
) -> None:
    """Record a live feed (md.raw.<venue> in Kafka, or IEX-TP over UDP) to a replayable file."""
    from infra.record import record_kafka, record_udp

    if udp:
        host, _, port = udp.rpartition(":")
        n = record_udp(host or "0.0.0.0", int(port), out, duration_s=duration)
    else:
        from infra.topics import topics_of

        settings = _settings()
        n = record_kafka(
            topics_of(settings).raw(venue),
            out,
            settings.bootstrap,
            duration_s=duration,
            from_beginning=from_beginning,
        )
    typer.echo(f"recorded {n} messages to {out}")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Directory for one recording per venue")],
    symbols: Annotated[int, typer.Option(min=1)] = 20,
    minutes: Annotated[int, typer.Option(min=1, help="Session length")] = 390,
    seed: Annotated[int, typer.Option()] = 7,
    day: Annotated[str, typer.Option("--date", help="Session date, YYYY-MM-DD")] = "2026-11-24",
    start: Annotated[str, typer.Option(help="New York start time HH:MM")] = "09:30",
    malformed_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.001,
) -> None:
    """Write a realistic simulated session: two venues, two formats, an open burst, a halt."""
    from infra.simulate import write_session

    paths = write_session(
        out,
        date=date.fromisoformat(day),
        symbols=symbols,
        seed=seed,
        minutes=minutes,
        start=start,
        malformed_rate=malformed_rate,
    )
    for venue, path in paths.items():
        typer.echo(f"{venue}: {path}")


def _parse_time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"{name}: not an RFC 3339 time: {value}") from exc
    if parsed.tzinfo is None:
        raise typer.BadParameter(f"{name}: give a UTC offset, e.g. {value}Z")
    return parsed.astimezone(UTC)


@app.command()
def candles(
    symbol: Annotated[str, typer.Argument(help="Ticker")],
    interval: Annotated[str, typer.Option(help="1m, 5m, 15m, 1h or 1d")] = "1m",
    start: Annotated[str | None, typer.Option(help="RFC 3339, inclusive")] = None,
    end: Annotated[str | None, typer.Option(help="RFC 3339, exclusive")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most candles to print")] = 1_000_000,
    fmt: Annotated[Literal["csv", "json"], typer.Option("--format")] = "csv",
    token: Annotated[
        str | None,
        typer.Option(envvar="TAPEFLOW_TOKEN", help="API key token for a running API"),
    ] = None,
) -> None:
    """Print candles, the same ones GET /v1/candles serves.

    Asks the running API with the token; with no API running, reads this machine's
    store in-process without a token (whoever can read TAPEFLOW_HOME can read the
    candles anyway)."""
    params: dict = {"interval": interval, "limit": min(limit, 10_000)}
    for name, value in (("start", start), ("end", end)):
        parsed = _parse_time(name, value)
        if parsed:
            params[name] = parsed.isoformat()
    body = _candles_via_api(symbol, params, token)
    # Follow next_start until the range or the limit is exhausted.
    while body["next_start"] and len(body["candles"]) < limit:
        params |= {"start": body["next_start"], "limit": limit - len(body["candles"])}
        page = _candles_via_api(symbol, params, token)
        body["candles"] += page["candles"]
        body["next_start"] = page["next_start"]
    if fmt == "json":
        import orjson

        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for c in body["candles"]:
        writer.writerow(
            [body["symbol"], c["start"], *(("" if c[k] is None else c[k]) for k in CSV_HEADER[2:])]
        )


def _candles_via_api(symbol: str, params: dict, token: str | None) -> dict:
    """Answer through the running API if there is one, else from the store in this process."""
    settings = _settings()
    url = f"http://{settings.api_host}:{settings.api_port}/v1/candles/{symbol}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(url, params=params, headers=headers, timeout=30)
    except httpx.TransportError:
        resp = _local_app(settings).get(f"/v1/candles/{symbol}", params=params)
    if resp.status_code != 200:
        body = resp.json()
        typer.echo(f"error {resp.status_code} {body.get('code')}: {body.get('message')}", err=True)
        if resp.status_code == 401:
            typer.echo("pass --token or set TAPEFLOW_TOKEN (tapeflow keys create)", err=True)
        raise typer.Exit(1)
    return resp.json()


def _local_app(settings: Settings):
    """The API in this process, its auth replaced by a local operator: the same routes
    and bodies, no HTTP, no PostgreSQL, no rate limit."""
    from uuid import UUID

    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.auth import Principal, authorized

    local = Principal(UUID(int=0), UUID(int=0), "local", True, 1_000_000)
    app = create_app(settings)
    app.dependency_overrides[authorized] = lambda: local
    return TestClient(app)


@app.command()
def demo(
    speed: Annotated[
        float, typer.Option(help="Replay speed; the sample is 30 minutes long")
    ] = 10.0,
    recording: Annotated[Path, typer.Option(help="Folder of a recorded session")] = SAMPLE,
    hold: Annotated[bool, typer.Option(help="Keep serving after the replay until Ctrl-C")] = True,
) -> None:
    """Services up, the pipeline and API started, a recorded session replayed."""
    import os
    import subprocess

    from infra import services
    from infra.replay import replay as do_replay
    from infra.topics import ensure_topics, topics_of

    settings = _settings()
    _print_status(services.up(settings))
    ensure_topics(settings)
    _migrate(settings)
    token = demo_token(settings)
    log_path = settings.home.resolve() / "logs" / "run.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # The demo lets its users fund themselves: POST /v1/account/deposits. Its market
        # clock is the feed's (unless TAPEFLOW_CLOCK says otherwise), so the replayed
        # session trades in that session's hours whatever the wall says.
        env = {"TAPEFLOW_CLOCK": "feed", **os.environ, "TAPEFLOW_ALLOW_DEPOSITS": "true"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "run"], stdout=log, stderr=log, env=env
        )
    base = f"http://{settings.api_host}:{settings.api_port}"
    try:
        _wait_http(f"{base}/health", proc, log_path)
        typer.echo(f"API:      {base}   (OpenAPI docs at {base}/docs)")
        typer.echo(f"Token:    {token}   (user {DEMO_EMAIL}; Authorize in /docs)")
        typer.echo(f"Quotes:   {base}/v1/quotes/AAPL")
        typer.echo(f"Candles:  {base}/v1/candles/AAPL?interval=5m")
        typer.echo(f'Try:      curl -H "Authorization: Bearer {token}" {base}/v1/quotes/AAPL')
        typer.echo(f"Logs:     {log_path}")
        files = sorted(recording.glob("*.jsonl")) + sorted(recording.glob("*.tops"))
        threads = [
            threading.Thread(
                target=do_replay,
                args=(f, f.stem, settings.bootstrap, speed, topics_of(settings).raw(f.stem)),
            )
            for f in files
        ]
        typer.echo(f"Replaying {', '.join(f.name for f in files)} at {speed}x ...")
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        typer.echo("Replay finished; candles settle within a second.")
        if hold:
            typer.echo("Serving until Ctrl-C.")
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _wait_http(url: str, proc, log_path: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise typer.Exit(f"tapeflow run exited ({proc.returncode}); see {log_path}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise typer.Exit(f"API did not answer at {url}; see {log_path}")


if __name__ == "__main__":
    app()
