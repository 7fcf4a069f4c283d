"""Process plumbing shared by the local services: paths, pid files, detached starts, waiting.

Every service keeps its pid file in <home>/run/<name>.pid and its output in
<home>/logs/<name>.log. A pid file is trusted only while that pid is alive *and* its command
line mentions a path under our home, so a recycled pid never gets a signal from `down`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from infra.settings import Settings

POLL_S = 0.2

# Popen objects of the services this process started. Holding them lets us reap a child
# that died early (otherwise it lingers as a zombie and still "exists" for os.kill).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _disown_children() -> None:
    # The services are meant to outlive this process. Marking their Popen objects as done
    # stops interpreter exit from warning "subprocess N is still running" about each one.
    for child in _CHILDREN.values():
        if child.poll() is None:
            child.returncode = 0


class ServiceError(RuntimeError):
    """A service could not be started, checked or stopped; the message says where to look."""


def home(settings: Settings) -> Path:
    # Absolute, because services run with a different cwd and maybe as another user.
    return settings.home.expanduser().resolve()


def service_dir(settings: Settings, name: str) -> Path:
    return home(settings) / name


def log_file(settings: Settings, name: str) -> Path:
    return home(settings) / "logs" / f"{name}.log"


def pid_file(settings: Settings, name: str) -> Path:
    return home(settings) / "run" / f"{name}.pid"


def ensure_dirs(settings: Settings) -> None:
    for sub in ("logs", "run"):
        (home(settings) / sub).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def locked(settings: Settings) -> Iterator[None]:
    """Serialise up/down across processes (e.g. conftest and a CLI at once): no double starts."""
    ensure_dirs(settings)
    with open(home(settings) / "run" / "services.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def require_binary(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"`{name}` not found on PATH; {hint}")
    return path


def is_running(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def owned_pid(settings: Settings, name: str) -> int | None:
    """The live pid recorded for `name`, or None (a stale pid file is removed)."""
    path = pid_file(settings, name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    # The service folder may link elsewhere (PostgreSQL's, when home is under /root).
    marks = (f"{home(settings)}/", f"{service_dir(settings, name).resolve()}/")
    if is_running(pid) and any(mark in _cmdline(pid) for mark in marks):
        return pid
    path.unlink(missing_ok=True)
    return None


def spawn(
    settings: Settings,
    name: str,
    cmd: Sequence[str],
    *,
    cwd: Path,
    user: str | None = None,
) -> int:
    """Start `cmd` detached (own session, output appended to its log) and record its pid.

    The new session keeps Ctrl-C in the caller's terminal (or pytest exiting) from
    reaching the services; they live until `down`.
    """
    ensure_dirs(settings)
    log = log_file(settings, name)
    with open(log, "ab") as out:
        _banner(out, "starting", cmd)
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    _CHILDREN[proc.pid] = proc
    pid_file(settings, name).write_text(f"{proc.pid}\n")
    return proc.pid


def run(
    cmd: Sequence[str],
    *,
    log: Path,
    cwd: Path | None = None,
    user: str | None = None,
    stdin: bytes | None = None,
) -> None:
    """Run a one-off setup command (initdb, storage format), its output appended to `log`."""
    with open(log, "ab") as out:
        _banner(out, "running", cmd)
        result = subprocess.run(
            list(cmd),
            cwd=cwd,
            input=stdin if stdin is not None else b"",
            stdout=out,
            stderr=subprocess.STDOUT,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            check=False,
        )
    if result.returncode != 0:
        raise ServiceError(
            f"`{' '.join(cmd)}` failed with exit code {result.returncode}; see {log}\n{tail(log)}"
        )


def _banner(out: BinaryIO, verb: str, cmd: Sequence[str]) -> None:
    """Mark each start in the (appended-to) log, so a failure's output is easy to find."""
    out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {verb}: {' '.join(cmd)}\n".encode())
    out.flush()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def wait_until(
    check: Callable[[], bool],
    *,
    name: str,
    timeout: float,
    pid: int | None,
    logs: Sequence[Path],
) -> None:
    """Poll `check` until true; fail fast if the process died, otherwise after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        died = pid is not None and not is_running(pid)
        if died or time.monotonic() > deadline:
            why = f"exited (pid {pid})" if died else f"not healthy after {timeout:.0f}s"
            raise ServiceError(f"{name} {why}{_see(logs)}")
        time.sleep(POLL_S)


def _see(logs: Sequence[Path]) -> str:
    if not logs:
        return ""
    return f"; see {', '.join(str(p) for p in logs)}\n{tail(logs[0])}"


def terminate(pid: int, sig: signal.Signals, timeout: float) -> None:
    """Send `sig` (the service's graceful shutdown), then SIGKILL if it is still up."""
    if not _signal_and_wait(pid, sig, timeout):
        _signal_and_wait(pid, signal.SIGKILL, 5.0)
    # Reap our own child so it does not stay a zombie for the rest of this process.
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait()


def _signal_and_wait(pid: int, sig: signal.Signals, timeout: float) -> bool:
    """True once `pid` is gone (within `timeout`)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while is_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True
