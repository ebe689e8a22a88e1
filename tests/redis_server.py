"""A real Redis for tests: `redis-server` on a free port with its own AOF directory, stopped by pid.

Without `redis-server` on PATH the tests that need it skip, saying why; CI sets
SLUICE_REQUIRE_REDIS=1 so that a missing Redis fails the run instead of hiding tests.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Proc, free_port, wait_until


def require_redis() -> str:
    """The redis-server binary, or skip (fail under SLUICE_REQUIRE_REDIS=1) when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not on PATH (install the Debian package redis-server to run the Redis tests)"
        if os.environ.get("SLUICE_REQUIRE_REDIS") == "1":
            pytest.fail(f"SLUICE_REQUIRE_REDIS=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


@dataclass
class RedisServer:
    proc: Proc
    port: int
    dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, workdir: Path, *extra: str, port: int | None = None) -> RedisServer:
        binary = require_redis()
        data = workdir / "redis-data"
        data.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        # The settings sluice requires (README, "Redis"): every acknowledged write is in the AOF.
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--dir", str(data), *extra]
        server = cls(Proc(f"redis-{port}", argv, workdir / f"redis-{port}.log"), port, data)
        server.proc.start()
        server.wait_ready()
        return server

    def wait_ready(self) -> None:
        def answers() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")

        wait_until(answers, 20, what=lambda: f"redis-server on {self.port}\n{self.proc.tail()}")

    def restart(self) -> None:
        """Start again on the same port and AOF directory (after `proc.kill()` or `proc.stop()`)."""
        self.proc.start()
        self.wait_ready()


@contextmanager
def running_redis(workdir: Path, *extra: str) -> Iterator[RedisServer]:
    """A Redis for the duration of a fixture or a `with` block."""
    server = RedisServer.start(workdir, *extra)
    try:
        yield server
    finally:
        server.proc.stop()
