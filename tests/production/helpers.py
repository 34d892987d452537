"""Helpers of the multi-process tests: real servers and dispatchers as child processes, and a
fake Graph API that can tell which child is holding a request open.

Everything waits in bounded loops (start-up, health, shutdown); children always die in a
``finally``, their whole process group, and their output goes to files, never to pipes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import (
    ACCESS_TOKEN,
    ADMIN_TOKEN,
    APP_SECRET,
    SECRET_KEY,
    VERIFY_TOKEN,
)
from waconv.graph.fake import FakeGraph

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 30.0  # a fresh interpreter importing flask, sqlalchemy ... on a busy machine
STOP_SECONDS = 15.0  # SIGTERM: the batch in flight finishes first (one request at most)
POLL_SECONDS = 0.02  # how often bounded loops look again (other processes, not time rules)


def poll(condition: Callable[[], object], seconds: float, what: str) -> float:
    """Wait until ``condition()`` is true; the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if condition():
            return time.monotonic() - began
        time.sleep(POLL_SECONDS)
    pytest.fail(f"{what}: not within {seconds} s")


def environment(db_url: str, **extra: str) -> dict[str, str]:
    """The parent's environment without any WACONV_* of a developer's shell, plus the test
    settings (all secrets set, so no instance/dev-secrets.json is read or written)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WACONV_")}
    env.update(
        WACONV_DATABASE_URL=db_url,
        WACONV_APP_SECRET=APP_SECRET,
        WACONV_VERIFY_TOKEN=VERIFY_TOKEN,
        WACONV_SECRET_KEY=SECRET_KEY,
        WACONV_ADMIN_TOKEN=ADMIN_TOKEN,
        WACONV_ACCESS_TOKEN=ACCESS_TOKEN,
        WACONV_LOG_LEVEL="INFO",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


class Child:
    """One child process, its stdout and stderr in files."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], out: Path, err: Path):
        self.name = name
        self.process = process
        self.out = out
        self.err = err

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        """The whole group: gunicorn's workers die with their arbiter."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def stop(self, seconds: float = STOP_SECONDS) -> int:
        """SIGTERM, wait (bounded); the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {seconds} s of SIGTERM")


@contextlib.contextmanager
def spawn(
    name: str, command: list[str], env: Mapping[str, str], logs: Path, cwd: Path = ROOT
) -> Iterator[Child]:
    """Start ``command``; on the way out, whatever happened, its process group is killed and
    waited for, and its log files are closed."""
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            start_new_session=True,
        )
        child = Child(name, process, out, err)
        try:
            yield child
        finally:
            child.signal(signal.SIGKILL)
            process.wait(STOP_SECONDS)


def gunicorn_command(port: int, workers: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(ROOT / "config" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "wsgi:app",
    ]


def dispatch_command() -> list[str]:
    return [sys.executable, "-m", "waconv.cli", "dispatch"]


def wait_healthy(child: Child, url: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    with requests.Session() as http:
        while time.monotonic() < deadline:
            assert child.alive(), f"{child.name} exited during start-up:\n{child.output()}"
            try:
                with http.get(f"{url}/healthz", timeout=1) as r:
                    if r.status_code == 200:
                        return
            except (requests.ConnectionError, requests.Timeout):  # not listening yet
                pass
            time.sleep(0.1)
    pytest.fail(f"{child.name} did not become healthy:\n{child.output()}")


# -- which process holds a connection --------------------------------------------------------


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the loopback TCP socket ``local_port -> remote_port`` (/proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        next(table)  # header
        for line in table:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.split(":")[1], 16) == local_port and (
                int(remote.split(":")[1], 16) == remote_port
            ):
                return inode
    return None


def owner_of_connection(local_port: int, remote_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the client end of a loopback TCP connection."""
    inode = _socket_inode(local_port, remote_port)
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        with contextlib.suppress(OSError):  # the process is gone
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):  # the fd closed meanwhile
                    if os.readlink(fd) == wanted:
                        return pid
    return None


class TracingFakeGraph(FakeGraph):
    """The fake Graph API that also knows which requests are open now (with the client's port),
    which events it accepted only after the client had given up (``late_timeout``), and can
    make the first events request after a number of accepted events hang."""

    def __init__(self, late_timeout: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.late_timeout = late_timeout
        self.open_requests: dict[int, tuple[int, float]] = {}  # thread id -> (port, start)
        # Event ids of every events request accepted after ``late_timeout``, a list a request.
        self.late_batches: list[list[str]] = []
        self._hang: tuple[int, float] | None = None  # (after this many accepted, delay)
        self._request = threading.local()
        # The client port of the request that hangs, once it does.
        self.hanging_port: int | None = None
        self.hanging = threading.Event()
        self._hang_delay: float | None = None

    def hang_after(self, accepted: int, delay: float) -> None:
        """Once ``accepted`` events were accepted, the next events request hangs for ``delay``
        seconds, then is accepted (Meta got it, the client never heard back)."""
        with self.lock:
            self._hang = (accepted, delay)

    def _serve(self, handler: Any, method: str) -> None:
        started = time.monotonic()
        self._request.started = started
        key = threading.get_ident()
        with self.lock:
            self.open_requests[key] = (int(handler.client_address[1]), started)
            hang = self._hang if self._hang and len(self.events) >= self._hang[0] else None
            if hang is not None:
                self._hang = None
        if hang is not None:
            # Queued at the start of this request: this one (or one racing it) will hang.
            self._hang_delay = hang[1]
            self.fail_next(1, "timeout", delay=hang[1], accept=True)
        try:
            super()._serve(handler, method)
        finally:
            with self.lock:
                self.open_requests.pop(key, None)

    def _faulted(self, handler: Any, fault: Any) -> None:
        if fault.kind == "timeout" and fault.accept and fault.delay == self._hang_delay:
            self.hanging_port = int(handler.client_address[1])
            self.hanging.set()

    def _route(
        self,
        method: str,
        parts: list[str],
        query: dict[str, str],
        handler: Any,
        body: Any,
        record: dict[str, Any],
    ) -> Any:
        reply = super()._route(method, parts, query, handler, body, record)
        if record.get("accepted") and time.monotonic() - self._request.started > self.late_timeout:
            with self.lock:
                self.late_batches.append([str(e.get("event_id")) for e in body["data"]])
        return reply

    def open_longer_than(self, seconds: float) -> list[int]:
        """Client ports of the requests open for more than ``seconds``."""
        now = time.monotonic()
        with self.lock:
            return [port for port, start in self.open_requests.values() if now - start > seconds]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])
