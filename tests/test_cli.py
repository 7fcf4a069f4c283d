"""The `tapeflow` command through typer's CliRunner: candles (CSV and JSON, answered by the
in-process store when no API listens, or by a running API with a token), simulate, users
and keys, and argument errors.

Two things in the code shape this module:
- infra.settings.get_settings is lru-cached, so the TAPEFLOW_* variables given to the
  runner are only read if the cache is cleared first (and it is cleared again after,
  so no later test sees this module's home).
- The CLI's fallback builds the app with create_app, whose chDB client is the per-process
  singleton infra.clickhouse.shared_clickhouse; chDB allows one data directory per process,
  so any other module's client is closed first and this module's at the end.
"""

from __future__ import annotations

import csv
import io
import json
import socket
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from infra import accounts, api_keys, db
from infra.candle_store import CandleStore
from infra.cli import CSV_HEADER, app
from infra.clickhouse import ClickHouse, release_shared_clickhouse
from infra.recording import read_recording
from infra.settings import Settings, get_settings
from schemas.feeds import parse_raw
from schemas.marketdata import Malformed, Quote, Trade
from schemas.sale_conditions import eligibility

pytestmark = pytest.mark.services

T0 = 1_795_530_600_000_000_000  # 2026-11-24T14:30:00Z
S = 1_000_000_000
START, END = "2026-11-24T14:30:00Z", "2026-11-24T15:00:00Z"


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trade(tid: str, price: str, size: int, ns: int, conditions=("@",)) -> Trade:
    last, volume = eligibility(conditions)
    return Trade("AAPL", "iex", tid, Decimal(price), size, conditions, ns, ns, last, volume)


TRADES = [trade(str(i), f"{100 + i}.{i:04d}", 10 + i, T0 + i * 25 * S) for i in range(30)] + [
    trade("odd", "99.0000", 3, T0 + 20 * 60 * S + 1, ("I",)),  # a minute without OHLC
    trade("late", "1.0000", 5, T0 + 40 * 60 * S),  # after --end
]


@pytest.fixture(scope="module")
def home(services: Settings, tmp_path_factory):
    release_shared_clickhouse()
    home = tmp_path_factory.mktemp("cli-home")
    settings = Settings(home=home, redis_port=services.redis_port, redis_db=12)
    ch = ClickHouse(settings)
    ch.migrate()
    CandleStore(ch).apply(TRADES)
    env = {
        "TAPEFLOW_HOME": str(home),
        "TAPEFLOW_API_PORT": str(unused_port()),  # nothing listens: the in-process fallback
        "TAPEFLOW_REDIS_PORT": str(services.redis_port),
        "TAPEFLOW_REDIS_DB": "12",
        "TAPEFLOW_CLICKHOUSE_URL": "",
    }
    yield settings, env
    ch.close()
    release_shared_clickhouse()


@pytest.fixture(autouse=True)
def fresh_settings_cache():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def invoke(env: dict[str, str], *args: str):
    get_settings.cache_clear()  # read this call's environment, not a previous call's
    return CliRunner().invoke(app, list(args), env=env)


def api_body(settings: Settings, auth: dict[str, str], **params) -> dict:
    resp = TestClient(create_app(settings), headers=auth).get("/v1/candles/AAPL", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_candles_csv_equals_the_api(home, auth):
    settings, env = home
    result = invoke(
        env, "candles", "AAPL", "--interval", "1m", "--start", START, "--end", END, "--format",
        "csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "symbol,start,open,high,low,close,volume,vwap,trades"
    rows = list(csv.reader(io.StringIO(result.stdout)))[1:]
    body = api_body(settings, auth, interval="1m", start=START, end=END)
    assert len(body["candles"]) == 14, "13 minutes of regular trades and one of odd lots"
    assert rows == [
        ["AAPL", c["start"]] + ["" if c[k] is None else str(c[k]) for k in CSV_HEADER[2:]]
        for c in body["candles"]
    ]
    odd = rows[-1]
    assert odd[2:6] == ["", "", "", ""] and odd[6] == "3", "null OHLC is an empty field"
    assert all(r[1].endswith("Z") for r in rows)


def test_candles_rollup_and_json_equal_the_api(home, auth):
    settings, env = home
    result = invoke(
        env, "candles", "AAPL", "--interval", "5m", "--start", START, "--end", END, "--format",
        "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.stdout)
    assert body == api_body(settings, auth, interval="5m", start=START, end=END)
    assert sum(c["volume"] for c in body["candles"]) == sum(t.size for t in TRADES[:-1])
    # An offset other than Z is converted, not dropped.
    again = invoke(
        env, "candles", "AAPL", "--interval", "5m", "--start", "2026-11-24T09:30:00-05:00",
        "--end", END, "--format", "json",
    )  # fmt: skip
    assert orjson.loads(again.stdout) == body


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "yesterday"], "start: not an RFC 3339 time: yesterday"),
        (["--start", "2026-13-40T00:00:00Z"], "start: not an RFC 3339 time"),
        (["--end", "2026-11-24T15:00:00"], "end: give a UTC offset"),
    ],
)
def test_bad_times_give_a_clear_error(home, args, message):
    _, env = home
    result = invoke(env, "candles", "AAPL", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "symbol,start" not in result.stdout


def test_api_errors_are_reported_with_their_code(home):
    _, env = home
    result = invoke(env, "candles", "ZZZZ", "--start", START)
    assert result.exit_code == 1
    assert "error 404 symbol_not_found" in result.stderr
    result = invoke(env, "candles", "AAPL", "--interval", "2m")
    assert result.exit_code == 1
    assert "error 422 invalid_parameter" in result.stderr
    result = invoke(env, "candles", "AAPL", "--start", END, "--end", START)
    assert result.exit_code == 1
    assert "error 422 invalid_time_range" in result.stderr


def test_simulate_writes_one_recording_per_venue(home, tmp_path):
    _, env = home
    out = tmp_path / "day"
    result = invoke(env, "simulate", "--out", str(out), "--symbols", "3", "--minutes", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"iex: {out / 'iex.tops'}",
        f"nasdaq: {out / 'nasdaq.jsonl'}",
    ]
    expected = json.loads((out / "expected.json").read_text())
    for venue, name in (("iex", "iex.tops"), ("nasdaq", "nasdaq.jsonl")):
        path: Path = out / name
        assert path.stat().st_size > 0
        items = [i for rec in read_recording(path) for i in parse_raw(rec.payload, venue, 0)]
        good = [i for i in items if not isinstance(i, Malformed)]
        kinds = Counter(e.kind for e in good)
        assert {k: v for k, v in expected[venue].items() if k != "malformed"} == dict(kinds)
        assert sum(isinstance(i, Malformed) for i in items) == expected[venue]["malformed"]
        assert len({e.symbol for e in good if isinstance(e, Quote)}) == 3
        assert any(isinstance(e, Trade) for e in good)
        minutes = {e.event_ns // (60 * S) for e in good if isinstance(e, Quote | Trade)}
        assert len(minutes) <= 3, "two minutes of session (a few boundary events at most)"


# ------------------------------------------------------------------ candles via the API


@pytest.fixture(scope="module")
def live_api(home):
    """The API served over HTTP from this process (a thread), on this module's home."""
    settings, env = home
    port = unused_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield env | {"TAPEFLOW_API_PORT": str(port)}
    server.should_exit = True
    thread.join(timeout=10)


def test_candles_from_a_running_api_need_a_token(home, live_api, api_token):
    _, fallback_env = home
    args = ["candles", "AAPL", "--start", START, "--end", END, "--format", "json"]
    refused = invoke(live_api, *args)
    assert refused.exit_code == 1
    assert "error 401 unauthorized" in refused.stderr
    assert "TAPEFLOW_TOKEN" in refused.stderr
    with_option = invoke(live_api, *args, "--token", api_token)
    assert with_option.exit_code == 0, with_option.output
    with_env = invoke(live_api | {"TAPEFLOW_TOKEN": api_token}, *args)
    assert with_env.exit_code == 0, with_env.output
    local = invoke(fallback_env, *args)  # no API: the in-process store, no token needed
    assert local.exit_code == 0, (local.output, local.exception)
    assert orjson.loads(with_option.stdout) == orjson.loads(with_env.stdout)
    assert orjson.loads(with_option.stdout) == orjson.loads(local.stdout)
    assert orjson.loads(local.stdout)["candles"], "candles were read"


# --------------------------------------------------------------------- users and keys


def email() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}@Test.Local"


def lines(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)


def test_users_create(home, services):
    _, env = home
    address = email()
    result = invoke(
        env, "users", "create", "--email", address, "--name", "Ada Operator", "--operator"
    )
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    pool = db.pool(services.postgres)
    user = accounts.find_user(pool, address)
    assert user is not None and user.email == address.lower() and user.is_operator
    assert out["user_id"] == str(user.id)
    assert out["account_number"] == accounts.account_of_user(pool, user.id).account_number
    again = invoke(env, "users", "create", "--email", address.upper(), "--name", "Twice")
    assert again.exit_code == 1 and "exists" in again.stderr
    bad = invoke(env, "users", "create", "--email", "not-an-email", "--name", "X")
    assert bad.exit_code == 2


def test_keys_create_list_revoke(home, services):
    _, env = home
    address = email()
    assert invoke(env, "users", "create", "--email", address, "--name", "K").exit_code == 0
    created = invoke(
        env, "keys", "create", "--email", address, "--name", "bot", "--rate-limit", "50"
    )
    assert created.exit_code == 0, created.output
    out = lines(created.stdout)
    token = out["token"]
    assert token.startswith(out["key_id"] + ".")
    assert "not shown again" in created.stderr
    pool = db.pool(services.postgres)
    principal = api_keys.authenticate(pool, token)
    assert principal is not None and principal.rate_limit_per_minute == 50
    secret = token.split(".", 1)[1]

    listed = invoke(env, "keys", "list", "--email", address)
    assert listed.exit_code == 0, listed.output
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(out["key_id"])]
    assert row.split()[1] == "50" and row.endswith("active bot")
    assert secret not in listed.stdout

    revoked = invoke(env, "keys", "revoke", out["key_id"])
    assert revoked.exit_code == 0 and f"revoked {out['key_id']}" in revoked.stdout
    assert api_keys.authenticate(pool, token) is None
    listed = invoke(env, "keys", "list", "--email", address)
    assert " revoked bot" in listed.stdout

    assert invoke(env, "keys", "revoke", "TFAAAAAAAAAAAAAAAA").exit_code == 1
    assert invoke(env, "keys", "create", "--email", email()).exit_code == 1, "no such user"
    assert invoke(env, "keys", "list", "--email", email()).exit_code == 1


def test_the_demo_token_is_reused_until_revoked(services, tmp_path):
    from infra.cli_accounts import DEMO_EMAIL, demo_token

    settings = Settings(home=tmp_path)
    first = demo_token(settings)
    assert demo_token(settings) == first, "idempotent: the same token every run"
    path = tmp_path / "demo.token"
    assert path.stat().st_mode & 0o777 == 0o600
    pool = db.pool(services.postgres)
    principal = api_keys.authenticate(pool, first)
    assert principal is not None
    assert principal.user_id == accounts.find_user(pool, DEMO_EMAIL).id
    assert principal.is_operator, "the demo's user may close the day and reconcile it"
    api_keys.revoke_key(pool, principal.key_id)
    second = demo_token(settings)
    assert second != first and api_keys.authenticate(pool, second) is not None
    assert path.read_text().strip() == second
    # Funded once, however many times the demo starts.
    with pool.connection() as conn:
        funding = conn.execute(
            "SELECT amount FROM cash_transfers WHERE account_id = %s AND note = 'demo funding'",
            (principal.account_id,),
        ).fetchall()
    assert funding == [(Decimal("100000.0000"),)]


def test_demo_homes_without_a_token_file_never_exhaust_the_key_limit(services, tmp_path):
    from infra.cli_accounts import DEMO_EMAIL, DEMO_KEYS_KEPT, demo_token

    pool = db.pool(services.postgres)
    tokens = [demo_token(Settings(home=tmp_path / str(n))) for n in range(DEMO_KEYS_KEPT + 3)]
    user = accounts.find_user(pool, DEMO_EMAIL)
    active = [k for k in api_keys.list_keys(pool, user.id) if k.revoked_at is None]
    assert len(active) <= DEMO_KEYS_KEPT
    assert api_keys.authenticate(pool, tokens[-1]) is not None  # the newest works
