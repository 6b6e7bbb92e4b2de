"""Packed documents mixed with synthetic retrieval samples (``data=mix``; ``data.synthetic.*``).

Each training row is, independently, either the next window of its packed document stream
(``data/packing.py``) or one synthetic sample (``data/synthetic.py``: niah_single_1,
niah_multikey_2, ...) drawn with a TRAIN-split seed, so no training sample is ever an evaluation
sample. Row ``k``'s ``n``-th window is synthetic when ``Random("mix|seed|k|n") < ratio``: the choice is
a pure function of the row and the window index, so it is the same however rows are split between
ranks and accumulation, and resumes exactly (the state is the text stream's cursor plus the window
count).

A synthetic row is ``prompt + target + EOS``, padded to ``seq_len + 1`` with PAD (labels ignored);
positions start at 0. Supervision (``data.synthetic.supervise``):

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

import numpy as np
import torch

from data.packing import IGNORE_INDEX, PackedLoader, window_to_example
from data.sample import SEEDS_PER_SPLIT
from data.sources import DataConfig, DataError, SyntheticConfig, load_documents
from data.synthetic import ALL_TASKS, generate
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
        if task not in ALL_TASKS:
            raise DataError(f"data.synthetic.tasks: {task!r} is not a task: use names of {list(ALL_TASKS)}")
    for length in cfg.lengths:
        if not 1024 <= length <= seq_len:
            raise DataError(
                f"data.synthetic.lengths: {length} must be in [1024, train.seq_len={seq_len}]; [] means train.seq_len"
            )
    if cfg.supervise not in SUPERVISE:
        raise DataError(f"data.synthetic.supervise={cfg.supervise!r}: use one of {SUPERVISE}")
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

    def sample(self, seed: int, rng: random.Random):
        task, length = rng.choice(self.cfg.tasks), rng.choice(self.lengths)
        # the sample's budget holds prompt + answer; the EOS after the answer is the row's one extra token
        return generate(task, length - self.specials, self.tokenizer, seed, None, "train")

    def row(self, seed: int, rng: random.Random) -> dict[str, np.ndarray]:
        s = self.sample(seed, rng)
        prompt = self.encode(s.prompt)
        ids = np.concatenate([prompt, self.tokenize(s.target), [self.eos]]).astype(np.int64)
        n, size = len(ids), self.seq_len + 1
        if n > size:
            raise DataError(
                f"a {s.task} sample of {n} tokens does not fit train.seq_len={self.seq_len}: "
                f"lower data.synthetic.lengths"
            )
        tokens = np.full(size, self.pad, np.int64)
        tokens[:n] = ids
        labels = tokens[1:].copy()  # labels[i] is token i + 1
        labels[n - 1 :] = IGNORE_INDEX  # padding
        if self.cfg.supervise == "answer":
            labels[: len(prompt) - 1] = IGNORE_INDEX  # the first answer token is predicted at len(prompt) - 1
        return {"input_ids": tokens[:-1], "labels": labels, "position_ids": np.arange(self.seq_len)}


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
