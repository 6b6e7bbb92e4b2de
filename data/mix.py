"""Packed documents mixed with synthetic retrieval samples (``data=mix``; ``data.synthetic.*``).

Each training row is, independently, either the next window of its packed document stream
(``data/packing.py``) or one synthetic sample (``data/synthetic.py``: niah_single_1,
niah_multikey_2, ..., and the training-only ``copy``, a random text then the same text again,
``data/copy.py``) drawn with a TRAIN-split seed, so no training sample is ever an evaluation
sample. Row ``k``'s ``n``-th window is synthetic when ``Random("mix|seed|k|n") < ratio``: the choice is
a pure function of the row and the window index, so it is the same however rows are split between
ranks and accumulation, and resumes exactly (the state is the text stream's cursor plus the window
count).

A synthetic row is ``prompt + target + EOS``, padded to ``seq_len + 1`` with PAD (labels ignored);
positions start at 0. With ``data.synthetic.lengths`` shorter than the row, several samples are packed
into it back to back, each its own document (positions restart, so attention stays within a sample):
short samples give many answers per step and teach the lookup quickly, long ones teach it at length
(and, for SSA, are the only ones whose blocks are routed rather than all in the local window). Supervision (``data.synthetic.supervise``):

- ``answer`` (default): only the target and the EOS after it carry labels, so a synthetic row teaches
  retrieval and stopping, not the haystack's filler. The trainer normalises the loss by the step's
  valid tokens, so with one row per step (``train.micro_batch=1``, ``train.grad_accum=1``, one GPU) a
  synthetic step's loss is the mean answer-token loss: the answer weighs as much as a whole text row.
  With several rows per step the answer's ~10 tokens count against the text rows' tokens.
- ``all``: every token of the sample (the filler is learnt quickly and then costs nothing but the
  normalisation).
"""

from __future__ import annotations

import random
import re

import numpy as np
import torch

from data.packing import IGNORE_INDEX, PackedLoader, window_to_example
from data.ruler import NEEDLE
from data.sample import SEEDS_PER_SPLIT, LengthError
from data.sources import DataConfig, DataError, SyntheticConfig, load_documents
from data.synthetic import ALL_TASKS, TRAIN_TASKS, generate
from data.tokenizer import is_byte_tokenizer, make_tokenize

SUPERVISE = ("answer", "all")


def check_synthetic(cfg: SyntheticConfig, seq_len: int) -> None:
    """Raises DataError naming the ``data.synthetic`` key to fix."""
    if not 0.0 <= cfg.ratio <= 1.0:
        raise DataError(f"data.synthetic.ratio={cfg.ratio} must be in [0, 1], e.g. 0.5")
    if cfg.ratio == 0:
        return
    if not cfg.tasks:
        raise DataError("data.synthetic.tasks is empty: use e.g. [niah_single_1,niah_multikey_2]")
    for task in cfg.tasks:
        if task not in ALL_TASKS + TRAIN_TASKS:
            raise DataError(
                f"data.synthetic.tasks: {task!r} is not a task: use names of {list(ALL_TASKS + TRAIN_TASKS)}"
            )
    for length in cfg.lengths:
        if not 1024 <= length <= seq_len:
            raise DataError(
                f"data.synthetic.lengths: {length} must be in [1024, train.seq_len={seq_len}]; [] means train.seq_len"
            )
    if cfg.supervise not in SUPERVISE:
        raise DataError(f"data.synthetic.supervise={cfg.supervise!r}: use one of {SUPERVISE}")
    if not 0 <= cfg.extra_queries <= 64:
        raise DataError(f"data.synthetic.extra_queries={cfg.extra_queries} must be in [0, 64]")
    if cfg.extra_order not in ("random", "prompt"):
        raise DataError(f"data.synthetic.extra_order={cfg.extra_order!r}: use random or prompt")
    if cfg.extra_labels not in ("all", "value"):
        raise DataError(f"data.synthetic.extra_labels={cfg.extra_labels!r}: use all or value")
    if not 0 <= cfg.seed_start < SEEDS_PER_SPLIT // 2:
        raise DataError(f"data.synthetic.seed_start={cfg.seed_start}: use 0 <= seed_start < 2**30")


class PromptEncoder:
    """Prompt ids as the eval runner makes them (``train/eval.py: PromptEncoder``): the byte tokenizer's
    fast path, else the tokenizer with its special tokens (BOS)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.byte_ids = make_tokenize(tokenizer) if is_byte_tokenizer(tokenizer) else None

    def __call__(self, text: str) -> np.ndarray:
        if self.byte_ids is not None:
            return self.byte_ids(text)
        return np.asarray(self.tokenizer(text, add_special_tokens=True)["input_ids"], np.int64)


# a niah needle line, RULER's NEEDLE with numbers as values: (key, value)
_NEEDLE_RE = re.compile(re.escape(NEEDLE).replace(r"\{type_needle_v\}", "numbers")
                        .replace(r"\{key\}", r"(\S+)").replace(r"\{value\}", r"(\d+)"))  # fmt: skip
# one answered lookup, in the words of RULER's niah answer prefix
EXTRA_QUERY = "\nThe special magic number for {key} mentioned in the provided text is {value}."
# tokens kept free for them (byte tokenizer: the line is ~70 + key bytes)
_EXTRA_BUDGET = 96
# niah tasks whose prompt has several needles with distinct keys (multivalue's needles share one key)
EXTRA_TASKS = ("niah_multikey_1", "niah_multikey_2", "niah_multiquery")


def lookup_pairs(prompt: str, count: int, rng: random.Random, order: str = "random") -> list[tuple[str, str]]:
    """``count`` (key, value) needles of ``prompt`` to ask about again ([] with fewer than two): the extra
    answered lookups appended after a niah sample's answer, so that one sample teaches the lookup ``count``
    more times. The answer of a lookup is in the prompt, so it is learnt by finding the key's needle, as the
    real question is. ``order``: "random" draws needles with replacement (the key must be looked up);
    "prompt" takes the first ``count`` in the prompt's order, so each next key is predictable too (plain
    copying, the easier skill that induction heads learn first)."""
    found = _NEEDLE_RE.findall(prompt)
    keys = [k for k, _ in found]
    needles = [(k, v) for k, v in found if keys.count(k) == 1]  # a key with one value only, prompt order
    if len(needles) < 2 or not count:  # one needle: its lookups would only repeat the answer just given
        return []
    return needles[:count] if order == "prompt" else [rng.choice(sorted(needles)) for _ in range(count)]


class SyntheticRows:
    """``row(seed, rng) -> {"input_ids", "labels", "position_ids"}``: one synthetic sample of a task and
    length drawn by ``rng``, with TRAIN-split seed ``seed``, as a training row of ``seq_len`` tokens."""

    def __init__(self, cfg: SyntheticConfig, tokenizer, seq_len: int):
        self.cfg, self.tokenizer, self.seq_len = cfg, tokenizer, seq_len
        self.lengths = list(cfg.lengths) or [seq_len]
        self.encode = PromptEncoder(tokenizer)
        self.tokenize = make_tokenize(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.specials = len(self.encode(""))  # BOS the encoder adds: kept out of the sample's budget

    def sample(self, seed: int, rng: random.Random, budget: int | None = None):
        task, length = rng.choice(self.cfg.tasks), rng.choice(self.lengths)
        length = length if budget is None else min(length, budget)
        # the sample's budget holds prompt + answer (+ the extra lookups); the EOS after the answer is the
        # row's one extra token. Extra lookups are halved until the task's minimum haystack fits.
        extra = self.cfg.extra_queries if task in EXTRA_TASKS else 0
        while True:
            try:
                s = generate(task, length - self.specials - _EXTRA_BUDGET * extra, self.tokenizer, seed, None, "train")
            except LengthError:
                if extra == 0:
                    raise
                extra //= 2
                continue
            s.metadata["extra_queries"] = extra
            return s

    def target_pieces(self, s, rng: random.Random) -> list[tuple[str, bool]]:
        """The continuation of sample ``s`` as (text, labelled) pieces: its answer, then its extra answered
        lookups (EXTRA_TASKS). With ``data.synthetic.extra_labels=value`` a lookup's question (up to its key and
        " is", a key drawn at random that nothing predicts) is read but not learnt: only its value is labelled."""
        pieces = [(s.target, True)]
        for key, value in lookup_pairs(s.prompt, s.metadata.get("extra_queries", 0), rng, self.cfg.extra_order):
            line = EXTRA_QUERY.format(key=key, value=value)
            if self.cfg.extra_labels == "value":
                cut = len(line) - len(f" {value}.")
                pieces += [(line[:cut], False), (line[cut:], True)]
            else:
                pieces.append((line, True))
        return pieces

    def row(self, seed: int, rng: random.Random) -> dict[str, np.ndarray]:
        """Samples of lengths drawn from ``data.synthetic.lengths``, packed back to back until the next
        shortest one would not fit (one sample when the lengths are [] = train.seq_len). Each sample is its
        own document (positions restart at 0, as in evaluation, so attention stays within it) with its own
        TRAIN seed ``seed * per_row + j``; a draw longer than the room left is cut to the room."""
        size = self.seq_len + 1
        per_row = max(1, self.seq_len // min(self.lengths))
        tokens = np.full(size, self.pad, np.int64)
        labels = np.full(self.seq_len, IGNORE_INDEX, np.int64)  # labels[i] is token i + 1
        positions = np.arange(self.seq_len)
        start, j = 0, 0
        while start == 0 or size - start - 1 >= min(self.lengths):
            s = self.sample((seed * per_row + j) % (SEEDS_PER_SPLIT - 1), rng, budget=size - start - 1)
            prompt = self.encode(s.prompt)
            pieces = self.target_pieces(s, rng)
            if all(labelled for _, labelled in pieces):  # one text, tokenized whole
                parts, labelled = [self.tokenize("".join(text for text, _ in pieces))], [True]
            else:
                parts, labelled = [self.tokenize(text) for text, _ in pieces], [lab for _, lab in pieces]
            ids = np.concatenate([prompt, *parts, [self.eos]]).astype(np.int64)
            n = len(ids)
            if start + n > size:
                raise DataError(
                    f"a {s.task} sample of {n} tokens does not fit train.seq_len={self.seq_len}: "
                    f"lower data.synthetic.lengths"
                )
            tokens[start : start + n] = ids
            first = start + (len(prompt) - 1 if self.cfg.supervise == "answer" else 0)
            labels[first : start + n - 1] = ids[first - start + 1 :]  # the answer (or all) and its EOS
            if self.cfg.supervise == "answer":  # pieces read but not learnt: no label predicts their tokens
                at = start + len(prompt)  # the continuation's first token; labels[i] predicts token i + 1
                for part, lab in zip(parts, labelled, strict=True):
                    if not lab:
                        labels[at - 1 : at - 1 + len(part)] = IGNORE_INDEX
                    at += len(part)
            positions[start:] = np.arange(self.seq_len - start)  # this sample's positions, and the padding's
            start, j = start + n, j + 1
        return {"input_ids": tokens[:-1], "labels": labels, "position_ids": positions}


class MixedLoader(PackedLoader):
    """A :class:`PackedLoader` whose rows are synthetic samples with probability ``ratio`` (see the module
    docstring). Same interface; ``state_dict()`` is ``{stream: {"text": StreamState, "windows": n}}``."""

    def __init__(self, docs, tokenizer, seq_len, rank, dp, grad_accum, micro_batch, data: DataConfig,
                 state: dict[int, dict] | None = None, prefetch: int = 2):  # fmt: skip
        check_synthetic(data.synthetic, seq_len)
        state = state or {}
        text_state = {sid: s["text"] for sid, s in state.items()}
        super().__init__(docs, make_tokenize(tokenizer), tokenizer.eos_token_id, seq_len, rank, dp, grad_accum,
                         micro_batch, data.doc_mask, data.shuffle_buffer, data.seed, text_state, prefetch)  # fmt: skip
        self.synthetic = SyntheticRows(data.synthetic, tokenizer, seq_len)
        self.ratio, self.mix_seed, self.seed_start = data.synthetic.ratio, data.seed, data.synthetic.seed_start
        self.windows = {sid: int(state[sid]["windows"]) if sid in state else 0 for sid in self.streams}
        self._consumed = self._snapshot()

    def _snapshot(self) -> dict[int, dict]:
        windows = getattr(self, "windows", {})  # PackedLoader.__init__ snapshots before self.windows exists
        return {sid: {"text": super(MixedLoader, self)._snapshot()[sid], "windows": windows.get(sid, 0)}
                for sid in self.streams}  # fmt: skip

    def is_synthetic(self, sid: int, window: int) -> bool:
        return random.Random(f"mix|{self.mix_seed}|{sid}|{window}").random() < self.ratio

    def row(self, sid: int) -> dict[str, np.ndarray]:
        n = self.windows[sid]
        self.windows[sid] = n + 1
        if self.is_synthetic(sid, n):
            # a train seed of its own per (row, window): rows and windows never share a sample
            seed = self.seed_start + n * self.global_rows + sid
            return self.synthetic.row(
                seed % (SEEDS_PER_SPLIT - 1), random.Random(f"mix-task|{self.mix_seed}|{sid}|{n}")
            )
        return window_to_example(*self.streams[sid].next_window(), self.doc_mask)

    def _make(self, micro_step: int) -> tuple[dict[str, torch.Tensor], dict[int, dict]]:
        rows = [self.row(sid) for sid in self.schedule[micro_step]]
        batch = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}
        return batch, self._snapshot()


def build_loader(
    data: DataConfig,
    tokenizer,
    seq_len: int,
    rank: int,
    dp: int,
    grad_accum: int,
    micro_batch: int,
    state: dict[int, dict] | None = None,
) -> PackedLoader:
    """The training loader for ``data``: packed documents, mixed with synthetic rows when
    ``data.synthetic.ratio > 0``."""
    docs = load_documents(data)
    if data.synthetic.ratio > 0:
        return MixedLoader(docs, tokenizer, seq_len, rank, dp, grad_accum, micro_batch, data, state)
    return PackedLoader(docs, make_tokenize(tokenizer), tokenizer.eos_token_id, seq_len, rank, dp, grad_accum,
                        micro_batch, data.doc_mask, data.shuffle_buffer, data.seed, state)  # fmt: skip
