"""Packing documents into fixed-length training sequences, deterministically and resumably.

The global batch of a step has ``G = dp * grad_accum * micro_batch`` rows. Row ``k`` always comes
from *stream* ``k``: the ``k``-th of ``G`` disjoint document shards, packed on its own. A rank owns
the streams of its rows, so the global batch is the same however it is split between ranks and
accumulation (2 ranks x 1 micro-step == 1 rank x 2 micro-steps, exactly), no document is read by
two ranks, and none is lost.

A stream concatenates ``doc tokens + [EOS]`` and cuts windows of ``seq_len + 1`` tokens that
overlap by one, so inputs ``w[:-1]`` and labels ``w[1:]`` cover every token; a document longer
than ``seq_len`` continues in the next window. Its position is ``(epoch, doc, offset)``: exact to
the token and cheap to save. (HF ``IterableDataset.state_dict`` would drop the shuffle buffer on
resume, so we restore by re-reading ``doc`` documents of the same seeded order instead.)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from data.sources import DataError

Tokenize = Callable[[str], np.ndarray]
IGNORE_INDEX = -100


@dataclass
class StreamState:
    epoch: int = 0
    doc: int = 0  # documents of this epoch before the cursor
    offset: int = 0  # token offset of the cursor inside document ``doc``


class PackedStream:
    """Documents of shard ``index`` of ``count`` of ``docs``, cut into windows of seq_len + 1."""

    def __init__(
        self,
        docs: datasets.IterableDataset,
        index: int,
        count: int,
        tokenize: Tokenize,
        eos_id: int,
        seq_len: int,
        shuffle_buffer: int = 0,
        seed: int = 0,
        state: StreamState | None = None,
    ):
        self.docs = split_dataset_by_node(docs, rank=index, world_size=count)
        if shuffle_buffer > 0:
            self.docs = self.docs.shuffle(seed=seed, buffer_size=shuffle_buffer)
        self.index, self.count = index, count
        self.tokenize, self.eos_id, self.seq_len = tokenize, eos_id, seq_len
        self.state = state or StreamState()
        self._iter: Iterator | None = None
        self._tokens: np.ndarray | None = None  # tokens of document state.doc, EOS appended

    def _read_doc(self) -> np.ndarray:
        if self._iter is None:
            self.docs.set_epoch(self.state.epoch)
            self._iter = islice(iter(self.docs), self.state.doc, None)
        try:
            text = next(self._iter)["text"]
        except StopIteration:
            if self.state.doc == 0:
                raise DataError(
                    f"data stream {self.index} of {self.count} got no documents: the corpus is empty or "
                    f"has fewer documents than the global batch (data-parallel ranks x train.grad_accum "
                    f"x train.micro_batch = {self.count} rows); check data.paths or shrink the batch"
                ) from None
            self.state.epoch, self.state.doc, self._iter = self.state.epoch + 1, 0, None
            return self._read_doc()
        return np.append(self.tokenize(text), self.eos_id).astype(np.int64)

    def next_window(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [L+1], doc_start [L+1]): doc_start marks the first token of a document."""
        size = self.seq_len + 1
        tokens, doc_start = np.empty(size, np.int64), np.zeros(size, bool)
        n, st = 0, self.state
        while n < size:
            if self._tokens is None:
                self._tokens = self._read_doc()
            if st.offset >= len(self._tokens):
                st.doc, st.offset, self._tokens = st.doc + 1, 0, None
                continue
            k = min(size - n, len(self._tokens) - st.offset)
            tokens[n : n + k] = self._tokens[st.offset : st.offset + k]
            doc_start[n] = st.offset == 0
            n, st.offset = n + k, st.offset + k
        st.offset -= 1  # the window's last token is the next window's first input
        return tokens, doc_start


def window_to_example(tokens: np.ndarray, doc_start: np.ndarray, doc_mask: bool) -> dict[str, np.ndarray]:
    """Inputs, labels and position ids of one window. With ``doc_mask`` positions restart at each
    document (HF models then keep attention within documents) and no label crosses a boundary."""
    seq_len = len(tokens) - 1
    labels = tokens[1:].copy()
    if doc_mask:
        idx = np.arange(seq_len)
        last_start = np.maximum.accumulate(np.where(doc_start[:-1], idx, 0))
        positions = idx - last_start
        labels[doc_start[1:]] = IGNORE_INDEX
    else:
        positions = np.arange(seq_len)
    return {"input_ids": tokens[:-1], "labels": labels, "position_ids": positions}


def stream_ids(rank: int, dp: int, grad_accum: int, micro_batch: int) -> list[list[int]]:
    """Global stream ids of each micro-step's rows on ``rank``: row j of micro-step m is global
    row ``(m * dp + rank) * micro_batch + j``."""
    return [[(m * dp + rank) * micro_batch + j for j in range(micro_batch)] for m in range(grad_accum)]


class PackedLoader:
    """Micro-batches for one rank: ``next()`` gives a dict of int64 tensors [micro_batch, seq_len]
    (input_ids, labels, position_ids). A background thread prepares ``prefetch`` micro-batches
    ahead; ``state_dict()`` describes exactly the batches handed out so far."""

    def __init__(
        self,
        docs: datasets.IterableDataset,
        tokenize: Tokenize,
        eos_id: int,
        seq_len: int,
        rank: int,
        dp: int,
        grad_accum: int,
        micro_batch: int,
        doc_mask: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        state: dict[int, dict] | None = None,
        prefetch: int = 2,
    ):
        self.global_rows = dp * grad_accum * micro_batch
        self.schedule = stream_ids(rank, dp, grad_accum, micro_batch)
        self.doc_mask = doc_mask
        state = state or {}
        self.streams = {
            sid: PackedStream(
                docs,
                sid,
                self.global_rows,
                tokenize,
                eos_id,
                seq_len,
                shuffle_buffer,
                seed,
                StreamState(**state[sid]) if sid in state else None,
            )
            for rows in self.schedule
            for sid in rows
        }
        self._consumed = self._snapshot()
        self._step = 0  # micro-steps handed out, mod grad_accum picks the rows
        self._queue: queue.Queue | None = None
        self._prefetch = prefetch

    def _snapshot(self) -> dict[int, dict]:
        return {sid: asdict(s.state) for sid, s in self.streams.items()}

    def _make(self, micro_step: int) -> tuple[dict[str, torch.Tensor], dict[int, dict]]:
        rows = [window_to_example(*self.streams[sid].next_window(), self.doc_mask) for sid in self.schedule[micro_step]]
        batch = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}
        return batch, self._snapshot()

    def _produce(self) -> None:
        m = self._step
        try:
            while True:
                self._queue.put(self._make(m % len(self.schedule)))
                m += 1
        except BaseException as e:  # handed to the consumer, raised there
            self._queue.put(e)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._prefetch <= 0:
            batch, self._consumed = self._make(self._step % len(self.schedule))
        else:
            if self._queue is None:
                self._queue = queue.Queue(maxsize=self._prefetch)
                threading.Thread(target=self._produce, daemon=True, name="packed-loader").start()
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._queue.put(item)  # the producer has stopped: every later call raises it too
                raise item
            batch, self._consumed = item
        self._step += 1
        return batch

    def state_dict(self) -> dict[int, dict]:
        """Positions of this rank's streams after the last micro-batch handed out."""
        return {sid: dict(s) for sid, s in self._consumed.items()}
