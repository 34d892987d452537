"""What both benchmarks share: databases, server processes, machine facts."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
PYTHON = sys.executable

# The benchmark's own database; it is dropped and created again before each run. Never `test`:
# the test suite may be using it at the same time.
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/waconv_bench"
POSTGRES_URL_ENV = "WACONV_BENCH_POSTGRES_URL"
OWN_DATABASE_PREFIX = "waconv_bench"

APP_SECRET = "bench-app-secret-0123456789abcdef"
VERIFY_TOKEN = "bench-verify-token"
SECRET_KEY = "bench-secret-key-for-fernet-tokens-0123456789"
GRAPH_TOKEN = "test-token"

SERVER_START_TIMEOUT = 60.0  # seconds for gunicorn's workers to answer
SERVER_STOP_TIMEOUT = 30.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- databases --------------------------------------------------------------------------------


def postgres_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


def postgres_available(url: str | None = None) -> str | None:
    """None when the server answers, else why not (one line)."""
    admin = _admin_url(url or postgres_url())
    try:
        engine = create_engine(admin, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure means "skip PostgreSQL", with the reason
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _admin_url(url: str) -> str:
    return make_url(url).set(database="postgres").render_as_string(hide_password=False)


def reset_postgres(url: str | None = None) -> str:
    """Drop and create the benchmark's own database; return its URL."""
    url = url or postgres_url()
    name = make_url(url).database or ""
    if not name.startswith(OWN_DATABASE_PREFIX):
        raise SystemExit(
            f"{POSTGRES_URL_ENV} must name a database of the benchmark's own "
            f"({OWN_DATABASE_PREFIX}…), not {name!r}: it is dropped before each run"
        )
    admin = create_engine(_admin_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url


def fresh_sqlite(directory: Path, name: str) -> str:
    path = directory / f"{name}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + suffix).unlink()
    return f"sqlite:///{path}"


def fresh_database(backend: str, workdir: Path, name: str) -> str:
    if backend == "sqlite":
        return fresh_sqlite(workdir, name)
    return reset_postgres()


def migrate(url: str) -> None:
    """`waconv db upgrade` on a fresh database, through the same code path."""
    from waconv.db import make_engine
    from waconv.schema import upgrade

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()


def plain_engine(url: str) -> Engine:
    return create_engine(url)


def wait_until(
    url: str, done: Callable[[Connection], bool], cap_s: float, every_s: float
) -> float | None:
    """Seconds until ``done(connection)`` holds, looking every ``every_s``; None after
    ``cap_s`` (what is still waiting then is the caller's to report)."""
    engine = plain_engine(url)
    started = time.monotonic()
    try:
        while True:
            with engine.connect() as conn:
                if done(conn):
                    return time.monotonic() - started
            if time.monotonic() - started > cap_s:
                return None
            time.sleep(every_s)
    finally:
        engine.dispose()


# -- server processes -------------------------------------------------------------------------


def tree_path(root: Path) -> str:
    """PYTHONPATH for a process whose ``waconv`` is ``root``'s (an exported earlier commit)
    and whose ``bench`` is today's."""
    return os.pathsep.join([str(root), str(REPO)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A gunicorn started for one measurement, stopped when the block ends."""

    app: str
    env: Mapping[str, str]
    log_path: Path
    workers: int = 4
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # The tree whose code it serves (bench/baseline.py serves an earlier commit's).
    root: Path = REPO

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            PYTHON,
            "-m",
            "gunicorn",
            "-c",
            str(BENCH_DIR / "gunicorn_bench.conf.py"),
            "-w",
            str(self.workers),
            "--bind",
            f"127.0.0.1:{self.port}",
            self.app,
        ]

    def __enter__(self) -> Server:
        env = {**os.environ, **self.env}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if self.root != REPO:
            env["PYTHONPATH"] = tree_path(self.root)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.app} exited with {self.process.returncode} at start; "
                    f"see {self.log_path}"
                )
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    # One worker answered; give the others a moment to finish booting too.
                    time.sleep(0.5)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.app} did not answer within {SERVER_START_TIMEOUT:g}s")

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        return [int(p) for p in out.stdout.split()]

    def __exit__(self, *exc_info: object) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._log.close()


# -- machine and versions ---------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024 / 1024:.1f} GiB"
    return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command_version(*cmd: str) -> str:
    if shutil.which(cmd[0]) is None:
        return "not found"
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text_out = (out.stdout or out.stderr).strip().splitlines()
    return text_out[0] if text_out else "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory": _memory(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "wrk": _command_version("wrk", "-v"),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    reason = postgres_available()
    if reason is None:
        engine = create_engine(_admin_url(postgres_url()))
        with engine.connect() as conn:
            info["postgresql"] = str(conn.execute(text("SHOW server_version")).scalar())
        engine.dispose()
    else:
        info["postgresql"] = f"unavailable ({reason})"
    info["packages"] = {
        name: _version(name)
        for name in (
            "waconv",
            "flask",
            "werkzeug",
            "gunicorn",
            "sqlalchemy",
            "psycopg",
            "requests",
            "pywa",
            "facebook_business",
            "matplotlib",
        )
    }
    return info


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)
