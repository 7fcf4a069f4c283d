"""PostgreSQL from the distribution's packages (Debian: /usr/lib/postgresql/<major>/bin).

Layout under <home>: postgres/data (the cluster), postgres/run (unix socket),
postgres/initialized (marks a finished one-time init), logs/postgres.log.

PostgreSQL refuses to run as root. As root, the cluster belongs to the `postgres` system
user (created by the Debian package) and every server binary runs as that user; as
anyone else it simply runs as the current user.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from infra.services import process
from infra.settings import Settings

NAME = "postgres"
# Set this to use a server of your own; `up` then only checks that it answers.
EXTERNAL_ENV = "TAPEFLOW_POSTGRES_URL"
# SIGINT is PostgreSQL's "fast" shutdown: SIGTERM ("smart") would wait for every client,
# e.g. an API process's connection pool, to disconnect first.
STOP_SIGNAL = signal.SIGINT
STOP_TIMEOUT_S = 30.0

ROLE = "tapeflow"
DATABASE = "tapeflow"
SYSTEM_USER = "postgres"


def external(settings: Settings) -> bool:
    return settings.postgres_url is not None


def url(settings: Settings) -> str:
    return settings.postgres


def ports(settings: Settings) -> dict[str, int]:
    return {"TAPEFLOW_POSTGRES_PORT": settings.postgres_port}


def logs(settings: Settings) -> list[Path]:
    return [process.log_file(settings, NAME)]


def healthy(settings: Settings) -> bool:
    try:
        with psycopg.connect(settings.postgres, connect_timeout=2) as conn:
            conn.execute("select 1")
    except psycopg.Error:
        return False
    return True


def start(settings: Settings) -> int:
    bindir = find_bindir()
    user = run_as()
    base = reachable_dir(process.service_dir(settings, NAME), user)
    data, run_dir = base / "data", base / "run"
    prepare_dirs(base, run_dir, user)
    if not (base / "initialized").exists():
        initialize(settings, bindir, data, user)
    _await_stale_postmaster(data)
    # Settings that follow TAPEFLOW_* go on the command line, not into postgresql.conf,
    # so a changed port needs no re-init.
    cmd = [
        str(bindir / "postgres"),
        "-D",
        str(data),
        "-c",
        f"port={settings.postgres_port}",
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={run_dir}",
    ]
    return process.spawn(settings, NAME, cmd, cwd=base, user=user)


def _await_stale_postmaster(data: Path, timeout: float = 10.0) -> None:
    """Give a crashed postmaster's zombie time to be reaped before starting a new one.

    PostgreSQL refuses to start while the pid in postmaster.pid still exists, and a killed
    postmaster stays a zombie until init reaps it (seconds, on some container inits).
    """
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not process.is_running(pid) and _exists(pid):
        time.sleep(process.POLL_S)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_bindir() -> Path:
    """The newest PostgreSQL under /usr/lib/postgresql, else whatever `postgres` is on PATH."""
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    if candidates:
        return max(candidates, key=lambda p: _major(p.parent.name))
    on_path = shutil.which("postgres")
    if on_path is None:
        raise process.ServiceError(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin or on PATH; "
            "install them (apt-get install postgresql) or set TAPEFLOW_POSTGRES_URL"
        )
    return Path(on_path).resolve().parent


def _major(version: str) -> float:
    try:
        return float(version)
    except ValueError:
        return 0.0


def run_as() -> str | None:
    """The user the server must run as: `postgres` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise process.ServiceError(
            f"running as root, PostgreSQL needs the `{SYSTEM_USER}` system user "
            "(created by apt-get install postgresql); create it or run as a normal user"
        ) from None
    return SYSTEM_USER


FALLBACK_ROOT = Path("/var/lib/tapeflow")


def _can_traverse(path: Path, user: str) -> bool:
    probe = subprocess.run(
        ["test", "-x", str(path)], user=user, group=user, extra_groups=[], check=False
    )
    return probe.returncode == 0


def reachable_dir(base: Path, user: str | None) -> Path:
    """The cluster's real folder: <home>/postgres itself, or, when the postgres user cannot
    reach <home> (a clone under /root, as CI may make), a folder under /var/lib/tapeflow
    that <home>/postgres links to, so the data still shows up under <home>."""
    if user is None:
        return base
    if base.is_symlink():
        return base.resolve()
    base.parent.mkdir(parents=True, exist_ok=True)
    if _can_traverse(base.parent, user):
        return base
    digest = hashlib.sha1(str(base.resolve()).encode()).hexdigest()[:12]
    real = FALLBACK_ROOT / digest
    real.mkdir(parents=True, exist_ok=True)
    FALLBACK_ROOT.chmod(0o755)
    shutil.rmtree(base, ignore_errors=True)  # left by an attempt that could not work
    base.symlink_to(real, target_is_directory=True)
    return real


def prepare_dirs(base: Path, run_dir: Path, user: str | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for path in (base, run_dir):
        os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o700)
    # The postgres user must also be able to reach <home>: not possible under /root.
    probe = subprocess.run(
        ["test", "-w", str(base)], user=user, group=user, extra_groups=[], check=False
    )
    if probe.returncode != 0:
        raise process.ServiceError(
            f"the `{user}` user cannot reach {base}; put TAPEFLOW_HOME somewhere every "
            "user can traverse (for example not under /root)"
        )


def initialize(settings: Settings, bindir: Path, data: Path, user: str | None) -> None:
    """initdb plus the tapeflow database, once; a half-finished attempt is redone from scratch."""
    base = data.parent
    log = process.log_file(settings, NAME)
    shutil.rmtree(data, ignore_errors=True)
    # The bootstrap superuser is named `tapeflow`; trust auth, and only loopback
    # connections reach it at all (listen_addresses=127.0.0.1, pg_hba below).
    process.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            ROLE,
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--auth=trust",
        ],
        log=log,
        cwd=base,
        user=user,
    )
    # Overwriting initdb's file in place keeps its owner (the server user) and mode.
    (data / "pg_hba.conf").write_text(
        "# Written by infra/services/postgres.py at init.\n"
        "local all all trust\n"
        "host  all all 127.0.0.1/32 trust\n"
    )
    # Single-user mode creates the database before the server ever listens, so a started
    # server always has it and health can simply connect to settings.postgres.
    process.run(
        [str(bindir / "postgres"), "--single", "-D", str(data), "postgres"],
        log=log,
        cwd=base,
        user=user,
        stdin=f"CREATE DATABASE {DATABASE};\n".encode(),
    )
    (base / "initialized").write_text("")
