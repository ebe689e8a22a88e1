"""Code blocks of the documentation (README.md and docs/), for the tests that check them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def expected(self) -> list[str]:
        """What the block's output must contain: its `# => TEXT` lines."""
        return [m[1] for m in re.finditer(r"^# => (.+)$", self.text, re.MULTILINE)]


def blocks(page: Path, lang: str | None = None) -> list[Block]:
    text = page.read_text()
    found = [Block(page, text.count("\n", 0, m.start()) + 1, m[1], m[2]) for m in FENCE.finditer(text)]
    return [b for b in found if lang is None or b.lang == lang]


def all_blocks(lang: str) -> list[Block]:
    return [b for page in PAGES for b in blocks(page, lang)]


def command_lines(block: Block) -> list[str]:
    """The block's commands, continuation lines joined, heredoc bodies and comments left out."""
    out: list[str] = []
    pending = ""
    heredoc: str | None = None
    for raw in block.text.splitlines():
        if heredoc is not None:
            heredoc = None if raw.strip() == heredoc else heredoc
            continue
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if (m := re.search(r"<<-?'?(\w+)'?", line)) is not None:
            heredoc = m[1]
        stripped = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if stripped:
            out.append(stripped)
    return out
