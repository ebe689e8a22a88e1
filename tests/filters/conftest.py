"""Fixtures shared by the filter tests (emulator and real Envoy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from proxywasm_host import wasm_path


@pytest.fixture(scope="module")
def wasm(request: pytest.FixtureRequest) -> Path:
    """The compiled filter the test module names in its FILTER ("ratelimit", "georoute"); a
    missing one fails the tests with how to build it."""
    try:
        return wasm_path(request.module.FILTER)
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)
