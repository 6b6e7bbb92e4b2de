"""Prose for the haystacks that RULER fills with Paul Graham essays (not available offline).

``prose_sentences()`` is the built-in source: the English prose of this interpreter's standard
library, taken from module, class and function docstrings (code examples, doctests, tables and
reST directives dropped), split into sentences, deduplicated, in sorted file order. It exists on
every machine and is deterministic for a given Python version; for text that is the same on every
machine, pass your own prose with ``files=`` (plain text files, read in the order given).

Tasks that use it are reported under the label "RULER-offline", never as RULER.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import sysconfig
from pathlib import Path

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"[A-Za-z]+")
# A line that is code, a doctest, a table, a list bullet or reST markup, not running prose.
_NOT_PROSE_LINE = re.compile(r"^(>>>|\.\.\.|\.\. |::|[-=~*+|#]|\d+[.)]\s|[A-Za-z_]\w*\s*[:(=]\s*$)")


def _prose_paragraphs(docstring: str) -> list[str]:
    """Paragraphs of running prose in a docstring: unindented lines only, each paragraph joined."""
    out = []
    for para in re.split(r"\n\s*\n", docstring):
        lines = para.splitlines()
        if not lines or any(line.startswith((" ", "\t")) or _NOT_PROSE_LINE.match(line) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        if text.endswith((".", "!", "?")):
            out.append(text)
    return out


def _is_sentence(s: str) -> bool:
    words = s.split()
    if not 5 <= len(words) <= 60 or not s[0].isupper() or not s.endswith((".", "!", "?")):
        return False
    # mostly words, not identifiers or symbols; never text that reads like a needle
    letters = sum(len(w) for w in _WORD.findall(s))
    return letters >= 0.75 * len(s.replace(" ", "")) and "magic" not in s.lower() and "`" not in s


def sentences_from_text(text: str) -> list[str]:
    """Sentences of a prose text (whitespace collapsed; split after . ! ? before a capital)."""
    text = re.sub(r"\s+", " ", text).strip()
    return [s for s in _SENTENCE_END.split(text) if s]


def _stdlib_docstrings() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
    files = sorted(f for f in stdlib.rglob("*.py") if not skip.intersection(f.relative_to(stdlib).parts))
    docs = []
    for f in files:
        try:
            tree = ast.parse(f.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
    return docs


def _build_stdlib_prose() -> list[str]:
    seen: set[str] = set()
    out = []
    for doc in _stdlib_docstrings():
        for para in _prose_paragraphs(doc):
            for s in sentences_from_text(para):
                if _is_sentence(s) and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


@functools.lru_cache(maxsize=8)
def _cached_prose(files: tuple[str, ...], cache_dir: str) -> tuple[str, ...]:
    if files:
        sentences = []
        for path in files:
            text = Path(path).expanduser().read_text(encoding="utf-8", errors="replace")
            sentences += [s for s in sentences_from_text(text) if "magic" not in s.lower()]
        if not sentences:
            raise ValueError(f"prose files {list(files)} hold no sentences")
        return tuple(sentences)
    # Parsing the stdlib takes seconds: keep the result, one sentence a line, per Python version.
    out = Path(cache_dir).expanduser() / f"prose-py{sysconfig.get_python_version()}.txt"
    if out.exists():
        return tuple(out.read_text(encoding="utf-8").splitlines())
    sentences = _build_stdlib_prose()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    os.replace(tmp, out)  # atomic: concurrent processes never read a partial file
    return tuple(sentences)


def prose_sentences(
    files: list[str] | tuple[str, ...] | None = None, cache_dir: str = "~/.cache/ssa-train"
) -> tuple[str, ...]:
    """Sentences of prose, in a fixed order: from ``files`` (plain text, in the order given) or,
    when ``files`` is empty, from the standard library's docstrings (cached in ``cache_dir``)."""
    return _cached_prose(tuple(str(f) for f in files or ()), str(cache_dir))
