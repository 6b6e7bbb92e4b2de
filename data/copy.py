"""``copy``: a training task that teaches copying, the skill that in-context retrieval builds on.

A small model trained from scratch on needle tasks alone (answer-only labels, ~10 per sample) stayed
at chance (docs/functional_context.md, issue 6): it never formed the copying (induction) circuit. Here
a random text is followed by the same text again, and with ``data.synthetic.supervise=answer`` every
token of the second copy (and the EOS) is labelled, so about half the sample's tokens teach the copy
and none of them can be guessed without looking back at the first copy.

The text is random needle-like words: RULER's adjective-noun keys ("pale-river") and 7-digit numbers
(the niah values), space separated, so what is learnt to copy is what the niah answers are made of::

    Repeat the following text.
    pale-river 8472910 quiet-lamp 1930274 ...
    The text again:
    pale-river 8472910 quiet-lamp 1930274 ...

``input`` ends after the first copy, ``answer_prefix`` is ``"The text again:\\n"``, ``target`` (the only
answer) is the second copy. Seeds follow ``data.sample``: a sample is a pure function of (length,
split, seed, tokenizer); train seeds never meet eval seeds. The number of words is the largest whose
prompt plus target fit ``length`` tokens (``data.sample.fit_units``).
"""

from __future__ import annotations

import random

from data.sample import LengthError, Sample, counter_for, fit_units, rng_key
from data.wordlists import ADJECTIVES, NOUNS

TASK = "copy"
INSTRUCTION = "Repeat the following text.\n"
ANSWER_PREFIX = "The text again:\n"
NUMBER_SHARE = 0.5  # share of the words that are 7-digit numbers (the rest adjective-noun keys)


def _words(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        if rng.random() < NUMBER_SHARE:
            out.append(str(rng.randint(10**6, 10**7 - 1)))
        else:
            out.append(f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}".replace(" ", "-"))  # one word, no spaces
    return out


def generate(length: int, tokenizer, seed: int = 0, depth: float | None = None, split: str = "eval") -> Sample:
    """One copy sample whose prompt plus target fit ``length`` tokens of ``tokenizer``. ``depth`` must be
    None (there is no needle)."""
    if depth is not None:
        raise ValueError(f"task {TASK} has no needle: use depth=None")
    count = counter_for(tokenizer)
    key = rng_key(TASK, length, None, split, seed)
    # each word is in the sample twice, at least a token each time: at most length // 2 words. The text is a
    # prefix of this one draw, so the sizing only cuts it
    words = _words(random.Random(key), max(1, length // 2))

    def text(n: int) -> str:
        return " ".join(words[:n])

    def build(n: int) -> str:
        s = text(n)
        return INSTRUCTION + s + "\n" + ANSWER_PREFIX + s

    try:
        n, _, _ = fit_units(build, count, length, n_min=1, n_max=len(words))
    except LengthError as e:
        raise LengthError(f"{TASK} at length={length}: {e}") from None
    s = text(n)
    prompt_input, target = INSTRUCTION + s + "\n", s
    return Sample(
        task=TASK,
        length=length,
        seed=seed,
        split=split,
        input=prompt_input,
        answer_prefix=ANSWER_PREFIX,
        answers=[s],
        target=target,
        metric="string_match_all",
        label="copy",
        depth=None,
        num_tokens=count(prompt_input + ANSWER_PREFIX),
        reserved_tokens=count(target),
        metadata={"words": n},
    )
