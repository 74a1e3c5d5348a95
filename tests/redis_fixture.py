"""A real redis-server per test session on a free 127.0.0.1 port, no persistence, stopped by its pid.

In CI (`CI=true`) a missing redis-server fails the tests that need it (.ci/run installs Debian's); elsewhere
they are skipped with a note on how to install it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import pytest


def free_port() -> int:
    # `redis-server --port 0` disables TCP instead of picking a port, so pick one here.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    executable: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="zimage-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart, on the same port: an outage in a test) and wait for the first PONG."""
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", self.workdir, "--loglevel", "warning"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not _pong(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.process.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None


def redis_server_or_skip() -> RedisServer:
    executable = shutil.which("redis-server")
    if executable is None:
        message = "redis-server is not installed (Debian: apt-get install -y redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must have it (.ci/run installs it)", pytrace=False)
        pytest.skip(message)
    return RedisServer(executable)


@pytest.fixture(scope="session")
def redis_server():
    """The session's redis-server; tests keep apart by key prefix (see `redis_prefix`)."""
    server = redis_server_or_skip()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so tests sharing the server never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"
