"""The system's Chromium, driven by Playwright, for the console tests.

Chromium comes from the operating system's packages (Debian: `apt-get install chromium`), never
from `playwright install`. Where it is missing the browser tests skip, saying so; CI sets
SLUICE_REQUIRE_BROWSER=1 (.ci/run installs the package), which turns that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage"]


def chromium_or_skip() -> str:
    found = os.environ.get("SLUICE_CHROMIUM") or next((c for c in CANDIDATES if Path(c).exists()), None) \
        or shutil.which("chromium")
    if found is None:
        reason = ("no Chromium found (/usr/bin/chromium): install the system package (`apt-get install -y chromium`) "
                  "to run the console's browser tests")
        if os.environ.get("SLUICE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SLUICE_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return found
