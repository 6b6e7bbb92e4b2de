"""Synthetic long-range tasks. ``block_retrieval``: a key-value needle far outside the local window,
asked for at the end of the sequence; used to test that SSA's routing learns to find evidence."""

from __future__ import annotations

import torch

FILLER = 64  # token ids [0, 64) are filler; keys and values follow


def block_retrieval(
    n: int,
    seq_len: int,
    block_size: int,
    generator: torch.Generator,
    num_keys: int = 32,
    local_blocks: int = 2,
    needle_tokens: int = 0,
    distractors: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids [n, seq_len], answer [n], needle_block [n]).

    Filler tokens everywhere; one block (the needle, never a sink block nor in the last block's
    local window) alternates a key token ``a`` and a value token ``b``; the last block repeats ``a``,
    and the answer is ``b``: the model must route the last block to the needle block. Vocabulary:
    FILLER + 2 * num_keys tokens. ``needle_tokens`` > 0: only that many tokens of the needle block (at a
    random offset inside it) alternate ``a`` and ``b``, the rest is filler: a needle its block's mean dilutes.
    ``distractors`` (with ``needle_tokens``): every other block a needle could be in holds such a run of another
    key and value, so that only the key tells the needle apart (niah_multikey_2's haystack of other needles).
    """
    if not 0 <= needle_tokens <= block_size:
        raise ValueError(f"needle_tokens={needle_tokens} must be in [0, block_size={block_size}]")
    if distractors and not needle_tokens:
        raise ValueError("distractors need needle_tokens > 0 (runs of a few tokens inside their blocks)")
    nb = seq_len // block_size
    if nb < local_blocks + 3:
        raise ValueError(f"seq_len={seq_len} holds too few blocks of {block_size} for a needle outside the window")
    ids = torch.randint(0, FILLER, (n, seq_len), generator=generator)
    key = torch.randint(FILLER, FILLER + num_keys, (n,), generator=generator)
    value = torch.randint(FILLER + num_keys, FILLER + 2 * num_keys, (n,), generator=generator)
    needle = torch.randint(1, nb - local_blocks - 1, (n,), generator=generator)  # blocks [1, nb - local - 1)
    cols = torch.arange(block_size)
    rows = torch.arange(n)[:, None]
    start = (needle * block_size)[:, None]  # [n, 1]
    pattern = torch.where(cols % 2 == 0, key[:, None], value[:, None])  # [n, block_size]
    if needle_tokens:
        offset = torch.randint(0, block_size - needle_tokens + 1, (n, 1), generator=generator)
        inside = (cols >= offset) & (cols < offset + needle_tokens)
        pattern = torch.where(
            inside, torch.where((cols - offset) % 2 == 0, key[:, None], value[:, None]), ids[rows, start + cols]
        )
    if distractors:  # another key (never the needle's) and value in each other candidate block
        for j in range(1, nb - local_blocks - 1):
            other = FILLER + (key - FILLER + torch.randint(1, num_keys, (n,), generator=generator)) % num_keys
            val = torch.randint(FILLER + num_keys, FILLER + 2 * num_keys, (n,), generator=generator)
            at = torch.randint(0, block_size - needle_tokens + 1, (n, 1), generator=generator)
            run = (cols >= at) & (cols < at + needle_tokens) & (needle != j)[:, None]  # the needle's block: its own
            pair = torch.where((cols - at) % 2 == 0, other[:, None], val[:, None])
            ids[:, j * block_size : (j + 1) * block_size] = torch.where(
                run, pair, ids[:, j * block_size : (j + 1) * block_size]
            )
    ids[rows, start + cols] = pattern
    ids[:, nb * block_size - block_size : nb * block_size] = key[:, None]
    return ids, value, needle
