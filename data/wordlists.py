"""English word lists of the ``wonderwords`` package (MIT; a dependency), which RULER draws its keys and
common words from: ``nounlist.txt``, ``adjectivelist.txt`` and ``verblist.txt``, one entry a line,
surrounding spaces stripped (three adjectives carry a trailing space in the package's file)."""

from __future__ import annotations

from importlib import resources


def _words(name: str) -> list[str]:
    text = (resources.files("wonderwords") / "assets" / name).read_text(encoding="utf-8")
    return [w.strip() for w in text.splitlines() if w.strip()]


NOUNS = _words("nounlist.txt")
ADJECTIVES = _words("adjectivelist.txt")
VERBS = _words("verblist.txt")

__all__ = ["ADJECTIVES", "NOUNS", "VERBS"]
