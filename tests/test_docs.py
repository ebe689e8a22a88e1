"""The documentation cannot drift: the site builds with --strict (broken links and anchors fail),
the generated references cover the code, every YAML example is valid policy, and every `sluice`
or `make` command in a shell example is one the CLI or the Makefile accepts."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from docs_blocks import ROOT, Block, all_blocks, blocks, command_lines

from controlplane.admin.openapi import openapi_document
from controlplane.policy import KINDS, InvalidPolicy, Policy, parse_document, with_document
from inference.generate.config import GenerateConfig


def _reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("tour", "reference/policy", "reference/admin-api", "policy/canaries", "benchmarks"):
        assert (site / page / "index.html").is_file(), page


def test_the_policy_reference_lists_every_field_of_every_kind() -> None:
    text = _reference().policy_reference()
    for kind in KINDS.values():
        assert f"## {kind.name}\n" in text
        for field in kind.spec.model_json_schema()["properties"]:
            assert f"| `{field}` |" in text, f"{kind.name}.{field} is missing from the policy reference"
    assert "| `outlier_detection.success_rate.stdev_factor` | number | `1.9` | > 0, ≤ 100 |" in text
    assert "| `routes[].split[].backend` |" in text


def test_the_admin_api_reference_lists_every_operation() -> None:
    text = _reference().admin_api_reference()
    for path, operations in openapi_document()["paths"].items():
        for method in operations:
            assert f"## `{method.upper()} {path}`" in text, f"{method} {path} is missing"


def _yaml_documents(block: Block) -> list[object]:
    try:
        return [d for d in yaml.safe_load_all(block.text) if d is not None]
    except yaml.YAMLError as exc:
        raise AssertionError(f"{block.where}: not YAML: {exc}") from None


def _heredocs(block: Block) -> list[str]:
    """The here-documents fed to `sluice` (others, such as a Python script, are not YAML)."""
    return [m[2] for m in re.finditer(r"^.*sluice.*<<-?'?(\w+)'?\n(.*?)^\1$", block.text, re.MULTILINE | re.DOTALL)]


def test_every_yaml_example_is_valid_policy() -> None:
    checked = 0
    examples = all_blocks("yaml") + [
        Block(b.page, b.line, "yaml", text) for b in all_blocks("sh") for text in _heredocs(b)]
    for block in examples:
        for doc in _yaml_documents(block):
            if isinstance(doc, dict) and doc.get("backend") == "generate":
                GenerateConfig.model_validate(doc)  # a generative model's config.yaml
                checked += 1
            if isinstance(doc, dict) and "kind" in doc:
                try:
                    parse_document(doc)
                except InvalidPolicy as exc:
                    raise AssertionError(f"{block.where}: {doc.get('kind')} {doc.get('name')}: {exc}") from None
                checked += 1
    assert checked >= 15  # the policy pages are full of examples; a parser that finds none fails here


def test_the_examples_directory_applies_on_the_demo_policy() -> None:
    """Each example, applied on top of what `make up` starts with, makes a valid whole policy."""
    demo = Policy()
    for raw in yaml.safe_load_all((ROOT / "examples/demo.yaml").read_text()):
        demo = with_document(demo, parse_document(raw))
    assert demo.problems() == []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        policy = demo
        for raw in yaml.safe_load_all(path.read_text()):
            if raw is not None:
                policy = with_document(policy, parse_document(raw))
        assert policy.problems() == [], path.name


def _component_parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from controlplane.main import parser as controlplane_parser
    from inference.main import build_parser as backend_parser
    from sluice.mesh import parser as up_parser
    from sluice.proxy import parser as envoy_parser
    return {"controlplane": controlplane_parser, "backend": backend_parser, "envoy": envoy_parser,
            "up": up_parser}


# A command, not the word: at the start of a command, or run as a module (inside docker or kubectl exec).
SLUICE = re.compile(r"(?:python -m sluice|(?:^|&&\s*|;\s*|\|\s*|\(\s*)(?:\.venv/bin/)?sluice)(?=\s|$)(.*)")
MAKE_TARGET = re.compile(r"^([a-z][a-z-]*):", re.MULTILINE)


def _sluice_argv(line: str) -> list[str] | None:
    match = SLUICE.search(line)
    if match is None:
        return None
    rest = re.split(r"\s(?:\||;|&&|>|&)(?:\s|$)", match[1], maxsplit=1)[0]
    rest = re.sub(r"<<-?'?\w+'?", "", rest)
    return shlex.split(rest)


def _parses(argv: list[str]) -> str | None:
    """None when the CLI accepts argv, else what it said."""
    from sluice.cli import policy_parser
    components = _component_parsers()
    parser = components[argv[0]]() if argv and argv[0] in components else policy_parser()
    args = argv[1:] if argv and argv[0] in components else argv
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        return None if exc.code == 0 else f"exit {exc.code}"
    return None


def test_every_sluice_and_make_command_in_the_docs_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    targets = set(MAKE_TARGET.findall((ROOT / "Makefile").read_text()))
    checked = 0
    for block in all_blocks("sh"):
        for line in command_lines(block):
            if (m := re.match(r"make\s+([a-z-]+)", line)) is not None:
                assert m[1] in targets, f"{block.where}: no make target {m[1]!r}"
            argv = _sluice_argv(line)
            if argv is None:
                continue
            problem = _parses(argv)
            assert problem is None, f"{block.where}: `{line}` is refused: {capsys.readouterr().err}"
            checked += 1
    assert checked >= 30


def _tour_section(readme: str) -> str:
    start = readme.index("## Five-minute tour")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def test_the_readme_is_a_short_front_door_whose_tour_is_the_docs_tour() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    first = blocks(ROOT / "README.md", "sh")[0].text
    assert first.startswith("make up ") and "\nmake test " in first
    section = ROOT / "README.md"
    tour = [b.text for b in blocks(section, "sh") if f"```sh\n{b.text}```" in _tour_section(readme)]
    assert tour == [b.text for b in blocks(ROOT / "docs/tour.md", "sh")]
    assert all(b.expected() for b in blocks(ROOT / "docs/tour.md", "sh") if "history" not in b.text)


def test_the_readmes_links_point_at_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert links
    assert [link for link in links if "://" not in link and not (ROOT / link).exists()] == []
