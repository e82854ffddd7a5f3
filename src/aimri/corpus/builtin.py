"""The built-in corpus: Python's own documentation and sources, from the running interpreter.

Needs no download and is the same on every machine with the same Python version. It mixes
three kinds of text so that features have something to find: English reference prose
(`pydoc_data.topics`, the language reference), docstrings (English about code), and source
code. Documents come out in a seeded order that interleaves files, so even a small token budget
sees many modules. Not here: tokenization (see `contexts.py`).
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

MAX_CHARS = 3000
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo"}
_TOP_LEVEL = re.compile(r"^(?=(?:async\s+def|def|class)\s)", re.MULTILINE)


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p
        for p in root.rglob("*.py")
        if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
        and not p.name.startswith("test_")
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def topic_sections() -> list[str]:
    """The language reference as shipped with pydoc, cut into sections of at most MAX_CHARS."""
    try:
        from pydoc_data.topics import topics  # type: ignore[import-not-found]
    except ImportError:  # some distributions strip pydoc_data
        return []
    sections: list[str] = []
    for key in sorted(topics):
        sections.extend(_pack_paragraphs(topics[key].split("\n\n")))
    return sections


def builtin_documents(seed: int) -> Iterator[str]:
    """Endless, deterministic stream: per file a code chunk and a docstring chunk, plus a
    reference section, files in a seeded order; later passes pick other chunks."""
    rng = random.Random(seed)
    files = stdlib_files()
    sections = topic_sections()
    rng.shuffle(sections)
    n_section = 0
    while True:
        order = files[:]
        rng.shuffle(order)
        for path in order:
            try:
                source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            code = _code_chunks(source)
            if code:
                yield rng.choice(code)
            prose = _pack_paragraphs(_docstrings(source))
            if prose:
                yield rng.choice(prose)
            if sections:
                yield sections[n_section % len(sections)]
                n_section += 1


def _code_chunks(source: str) -> list[str]:
    """Top-level definitions (and the module header), each at most MAX_CHARS."""
    chunks = [c.strip("\n") for c in _TOP_LEVEL.split(source)]
    return [c[:MAX_CHARS] for c in chunks if len(c) > 200]


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 80:
                title = "" if isinstance(node, ast.Module) else f"{node.name}\n\n"
                out.append(title + doc)
    return out


def _pack_paragraphs(paragraphs: list[str]) -> list[str]:
    """Join consecutive paragraphs into chunks of at most MAX_CHARS (longer ones are cut)."""
    chunks: list[str] = []
    current = ""
    for para in (p.strip() for p in paragraphs):
        if not para:
            continue
        if current and len(current) + len(para) + 2 > MAX_CHARS:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para[:MAX_CHARS]
    if current:
        chunks.append(current)
    return chunks
