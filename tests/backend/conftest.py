"""Fixtures: a generated model repository and backend processes started from it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backend_harness import MODEL_CONTROL, Backend, start_backend

from inference.gen_models import generate


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("models")
    generate(repo)
    return repo


@pytest.fixture(scope="session")
def backend(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """One shared server with both classifier versions, over HTTP and gRPC. Tests that change
    its state (load/unload) start their own."""
    server = start_backend(model_repo, tmp_path_factory.mktemp("logs"), *MODEL_CONTROL, grpc=True)
    yield server
    server.stop()


@pytest.fixture
def start(model_repo: Path, tmp_path: Path) -> Iterator[Callable[..., Backend]]:
    """Start a dedicated server with extra arguments; stopped when the test ends."""
    started: list[Backend] = []

    def _start(*args: str, grpc: bool = False, wait: bool = True, repo: Path | None = None) -> Backend:
        server = start_backend(repo or model_repo, tmp_path, *args, grpc=grpc, wait=wait)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()
