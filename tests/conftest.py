from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import PYTHON, ROOT, Backend, ControlPlane, Envoy
from redis_server import RedisServer, running_redis


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    subprocess.run([PYTHON, "-m", "inference.gen_models", "--out", str(out)], check=True, cwd=ROOT)
    return out


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane.start(tmp_path)
    yield cp
    cp.proc.stop()


@pytest.fixture
def start_envoy(tmp_path: Path) -> Iterator[Callable[..., Envoy]]:
    started: list[Envoy] = []

    def start(cp: ControlPlane, **kwargs: Any) -> Envoy:
        envoy = Envoy.start(tmp_path, cp, **kwargs)
        started.append(envoy)
        return envoy

    yield start
    for envoy in started:
        envoy.proc.stop()


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory, model_repository: Path) -> Iterator[dict[int, Backend]]:
    """classifier version 1 and version 2, each in its own backend process (as `make up` runs them)."""
    workdir = tmp_path_factory.mktemp("backends")
    running: dict[int, Backend] = {}
    try:
        for version in (1, 2):
            running[version] = Backend.start(workdir, model_repository, f"classifier:{version}")
        yield running
    finally:
        for backend in running.values():
            backend.proc.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store in turn: a SQLite file, then a Redis of this test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with running_redis(tmp_path) as server:
        yield server.url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, on a free port (skips, or fails under SLUICE_REQUIRE_REDIS=1)."""
    with running_redis(tmp_path) as server:
        yield server
