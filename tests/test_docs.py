"""Every Python block in README.md and docs/*.md runs as written.

Blocks of one file run in order, each in its own process, in one temporary
directory (so a later block can read the database an earlier one wrote).
A block preceded by ``<!-- docs-test: skip (reason) -->`` is deliberately
partial and not run; ``<!-- docs-test: writes NAME -->`` before any block
writes its text to NAME in that directory first (a TOML file the next block
reads).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!-- docs-test: (?P<marker>skip|writes) ?(?P<arg>[^>]*?) ?-->\n)?"
    r"^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


def blocks(path: Path) -> list[tuple[int, str, str | None, str, str]]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("body"))
        found.append(
            (
                line,
                match.group("lang"),
                match.group("marker"),
                match.group("arg"),
                match.group("body"),
            )
        )
    return found


def test_every_document_is_checked():
    """The docs have Python blocks, and every one is either run or marked partial."""
    total = sum(1 for path in DOCS for b in blocks(path) if b[1] == "python")
    assert total >= 12


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_python_blocks_run(path, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITASPECT_")}
    ran = 0
    for line, lang, marker, arg, body in blocks(path):
        if marker == "writes":
            (tmp_path / arg.strip()).write_text(body, encoding="utf-8")
            continue
        if lang != "python" or marker == "skip":
            continue
        script = tmp_path / f"block_{line}.py"
        script.write_text(body, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert 0 == result.returncode, f"{path.name}:{line + 1}\n{body}\n{result.stderr}"
        ran += 1
    if path.name == "README.md":
        assert ran == 3
