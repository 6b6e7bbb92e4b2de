"""Scoring as RULER scores (``scripts/eval/synthetic/constants.py`` and ``evaluate.py`` of
NVIDIA/RULER), the MRCR grade (OpenAI MRCR's difflib ratio), and RULER's effective length.

- ``string_match_all``: per sample, the fraction of gold references contained in the prediction
  (case-insensitive); the mean over samples x 100, rounded to 2 decimals. niah, vt, cwe, fwe.
- ``string_match_part``: per sample, 1 if any gold reference is contained, else 0. qa.
- Predictions are post-processed as RULER does: stripped, control characters turned into newlines.
- ``mrcr_score``: 0 unless the response starts with the random prefix; else the
  ``difflib.SequenceMatcher`` ratio of the response and the answer, both without the prefix.
- ``read_miss``: what a wrong answer read instead (not a RULER metric; a diagnostic): the first word of the
  prediction, whether that word occurs in the prompt (another needle's value: the key match failed) and how
  many of the gold value's characters it has in place (a mis-copied value: the lookup found the needle).
- ``effective_length``: the longest length whose mean over the 13 RULER tasks is >= 85.6 (the score
  of Llama-2-7B at 4K, RULER's threshold).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from difflib import SequenceMatcher

RULER_THRESHOLD = 85.6
_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str) -> str:
    """RULER's post-processing: strip, control characters to newlines, strip."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def match_all(prediction: str, refs: Sequence[str]) -> float:
    """Fraction of ``refs`` contained in ``prediction``, case-insensitive (0..1)."""
    pred = postprocess_pred(prediction).lower()
    return sum(1.0 if r.lower() in pred else 0.0 for r in refs) / len(refs)


def match_part(prediction: str, refs: Sequence[str]) -> float:
    """1 if any of ``refs`` is contained in ``prediction``, case-insensitive, else 0."""
    pred = postprocess_pred(prediction).lower()
    return max(1.0 if r.lower() in pred else 0.0 for r in refs)


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """RULER's metric for niah / vt / cwe / fwe: mean of ``match_all`` x 100, rounded to 2 places."""
    return round(sum(match_all(p, r) for p, r in zip(preds, refs, strict=True)) / len(preds) * 100, 2)


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """RULER's metric for qa: mean of ``match_part`` x 100, rounded to 2 places."""
    return round(sum(match_part(p, r) for p, r in zip(preds, refs, strict=True)) / len(preds) * 100, 2)


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def score_one(metric: str, prediction: str, refs: Sequence[str]) -> float:
    """One sample's score, 0..100 (not rounded)."""
    if metric == "string_match_all":
        return 100.0 * match_all(prediction, refs)
    if metric == "string_match_part":
        return 100.0 * match_part(prediction, refs)
    raise ValueError(f"metric={metric!r}: use one of {sorted(METRICS)} (mrcr samples score with mrcr_score)")


_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def read_miss(prompt: str, answers: Sequence[str], prediction: str) -> dict | None:
    """What a wrong answer read: {"read": its first word, "in_prompt": that word occurs in ``prompt`` as a
    whole word (so a value copied from elsewhere, e.g. a distractor needle's), "chars_right": the best, over
    ``answers``, fraction of the gold value's characters matched at the same place}. None when the
    prediction has no word. Case-insensitive, as the scores."""
    match = _WORD.search(postprocess_pred(prediction))
    if match is None:
        return None
    read = match.group(0).lower()
    in_prompt = re.search(rf"(?<![A-Za-z0-9-]){re.escape(read)}(?![A-Za-z0-9-])", prompt.lower()) is not None
    right = max((sum(a == b for a, b in zip(ref.lower(), read)) / len(ref) for ref in answers if ref), default=0.0)
    return {"read": read, "in_prompt": in_prompt, "chars_right": round(right, 3)}


def mrcr_score(response: str, answer: str, prefix: str) -> float:
    """OpenAI MRCR's grade, 0..1: 0 without the prefix, else the difflib ratio of the rest."""
    if not response.startswith(prefix):
        return 0.0
    return float(SequenceMatcher(None, response.removeprefix(prefix), answer.removeprefix(prefix)).ratio())


def effective_length(
    table: Mapping[int, float | Mapping[str, float]], threshold: float = RULER_THRESHOLD, contiguous: bool = False
) -> int:
    """The longest length whose score is >= ``threshold``; 0 when none is.

    ``table`` maps length -> the mean score (0..100) or length -> {task: score}, averaged here (the
    13 RULER tasks weigh equally). ``contiguous=True`` asks, stricter than RULER, that every
    shorter length in the table passes too.
    """
    means = {L: (sum(v.values()) / len(v) if isinstance(v, Mapping) else float(v)) for L, v in table.items()}
    best = 0
    for L in sorted(means):
        if means[L] >= threshold:
            best = L
        elif contiguous:
            break
    return best
