"""What the synthetic task generators (``data.ruler``, ``data.mrcr``) share: the ``Sample`` they
return, the seed split that keeps training data disjoint from evaluation, the search that sizes a
haystack with the model's own tokenizer, and JSONL export.

Seeds. A sample is a pure function of (task, length, depth, split, seed, tokenizer). ``split`` maps
a seed into its own range: eval seeds are global seeds [0, 2**31), train seeds [2**31, 2**32), so
SFT / RL data built with ``split="train"`` never draws a sample that evaluation draws.

Sizing. The haystack grows in units (lines, sentences, documents, words, chat turns). A builder
``build(n) -> prompt`` makes the prompt with ``n`` units; ``fit_units`` finds the largest ``n``
whose prompt fits the budget, tokenizing the full prompt only a handful of times (a secant step
on the measured tokens per unit, guarded by bisection), never once per unit. It stops within one
unit of the budget, or within 0.1% of it for long budgets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data import scoring
from data.tokenizer import make_tokenize

SPLITS = ("eval", "train")
SEEDS_PER_SPLIT = 2**31


def global_seed(split: str, seed: int) -> int:
    """The split's seed range: eval -> [0, 2**31), train -> [2**31, 2**32)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS}")
    if not 0 <= seed < SEEDS_PER_SPLIT:
        raise ValueError(f"seed={seed}: use 0 <= seed < 2**31 (the split picks the range)")
    return SPLITS.index(split) * SEEDS_PER_SPLIT + seed


def rng_key(task: str, length: int, depth: float | None, split: str, seed: int) -> str:
    """The string that seeds a sample's ``random.Random`` (string seeds hash the same in every
    process, whatever PYTHONHASHSEED)."""
    return f"{task}|L={length}|depth={depth}|seed={global_seed(split, seed)}"


@dataclass
class Sample:
    task: str
    length: int  # the token budget L: prompt + reserved answer tokens <= L
    seed: int
    split: str
    input: str  # the prompt up to the answer prefix (RULER's "input")
    answer_prefix: str  # the model continues after input + answer_prefix
    answers: list[str]  # gold references (RULER's "outputs")
    target: str  # one completion that scores 100: the SFT label
    metric: str  # string_match_all | string_match_part | mrcr
    label: str  # "RULER", "RULER-offline" (a local substitute for external text) or "MRCR-synth"
    depth: float | None = None  # the depth asked for (None: drawn as RULER draws it)
    # where each needle went, as a fraction of the haystack's units; the first is a gold needle
    needle_depths: list[float] = field(default_factory=list)
    num_tokens: int = 0  # tokens of input + answer_prefix with the sizing tokenizer
    reserved_tokens: int = 0  # tokens kept for the answer
    metadata: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.input + self.answer_prefix

    def score(self, prediction: str) -> float:
        """This sample's metric on one prediction, 0..100."""
        if self.metric == "mrcr":  # leading whitespace is the prompt rendering's, not the model's
            return 100.0 * scoring.mrcr_score(prediction.lstrip(), self.answers[0], self.metadata["prefix"])
        return scoring.score_one(self.metric, prediction, self.answers)

    def read_miss(self, prediction: str) -> dict | None:
        """What a wrong ``prediction`` read (``scoring.read_miss`` against this prompt); None for mrcr samples, whose
        answer is a whole reply, not a value. Callers ask only for predictions that scored below 100."""
        return None if self.metric == "mrcr" else scoring.read_miss(self.prompt, self.answers, prediction)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> Sample:
        return cls(**row)


def write_jsonl(samples: Iterable[Sample], path: str | Path) -> int:
    """One sample a line; returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[Sample]:
    with open(path, encoding="utf-8") as f:
        return [Sample.from_json(json.loads(line)) for line in f if line.strip()]


class TokenCounter:
    """``count(text)``: tokens of ``text`` without special tokens, with the model's tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._tokenize = make_tokenize(tokenizer)

    def __call__(self, text: str) -> int:
        return len(self._tokenize(text))


def counter_for(tokenizer) -> TokenCounter:
    return tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)


class LengthError(ValueError):
    """The length is too short for the task's fixed parts (template, needles, answer)."""


def fit_units(
    build: Callable[[int], str], count: Callable[[str], int], budget: int, n_min: int = 0, n_max: int = 1 << 26
) -> tuple[int, str, int]:
    """Largest ``n`` in [n_min, n_max] with ``count(build(n)) <= budget``, assuming the count grows
    with ``n``; returns (n, prompt, tokens). About 3 to 6 full tokenizations: the first guess comes
    from the tokens per unit measured on a small build, later ones from the last measurements
    (secant), each clamped strictly inside the bracket so that the search always ends."""
    t_min_text = build(n_min)
    t_min = count(t_min_text)
    if t_min > budget:
        raise LengthError(f"budget {budget} tokens is below the task's minimum of {t_min} tokens")
    ok_n, ok_text, ok_t = n_min, t_min_text, t_min  # largest n known to fit
    bad_n = n_max + 1  # smallest n known not to fit
    probe = min(n_max, n_min + 256)
    t_probe = count(build(probe)) if probe > n_min else t_min
    per_unit = max((t_probe - t_min) / max(probe - n_min, 1), 1e-3)
    n = min(n_max, n_min + int((budget - t_min) / per_unit))
    for _ in range(64):
        if not ok_n < n < bad_n:
            if bad_n - ok_n <= 1:
                break
            # the secant guess left the bracket: bisect, or grow while no upper bound is known
            n = (ok_n + bad_n) // 2 if bad_n <= n_max else min(n_max, 2 * ok_n + 1)
        text = build(n)
        t = count(text)
        if t <= budget:
            ok_n, ok_text, ok_t = n, text, t
            # close enough: less than one unit's worth of tokens is left (or 0.1% of a long budget:
            # RULER itself sizes in steps of 25 lines or 500 words)
            if budget - t < max(per_unit, budget / 1000) or n == n_max:
                break
        else:
            bad_n = n
        per_unit = max((t - t_min) / max(n - n_min, 1), 1e-3)
        step = (budget - t) / per_unit
        n = n + (math.floor(step) if step > 0 else -math.ceil(-step) - 1)
    return ok_n, ok_text, ok_t
