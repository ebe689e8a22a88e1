"""MkDocs hook: adds the generated reference pages (docs/reference.py) to the site as it builds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # the repository root: the control plane's packages
_spec = importlib.util.spec_from_file_location("sluice_docs_reference", _HERE / "reference.py")
assert _spec is not None and _spec.loader is not None
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def on_files(files: Files, config: Any) -> Files:
    for page, render in reference.PAGES.items():
        files.append(File.generated(config, page, content=render()))
    return files
