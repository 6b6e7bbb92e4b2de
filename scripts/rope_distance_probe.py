"""Does a content lookup learnt at short distances work at long ones? A CPU study of the rotary base (issue 6).

A 2-layer Llama (HF, random init, 128 wide) learns to copy a random string of 8-16 tokens (vocabulary 32)
after a filler gap of 0..``--max-gap`` tokens drawn from 8 other tokens, then a separator: the copy needs an
induction head, i.e. a query-key match by content across the gap. Then it is scored (teacher-forced token
accuracy of the copy) at gaps of 1, 4, 16 and 64 times ``--max-gap``. A lookup that only works at the trained
distances falls to chance (1/32) beyond them. Seconds to minutes on CPU; prints one line and, with
``--json``, appends a row {"theta", "max_gap", "oracle_window", "steps", "train_loss", "acc": {gap: accuracy}}.

``--oracle-window W`` emulates SSA with perfect routing, in training and scoring alike: each query attends only
to the last W positions (itself included) and to the first string (the "routed block"), so the number of keys
it sees no longer grows with the gap; only their distance does. ``--nope-layers`` makes those layers attend
without rotary positions (NoPE); ``--eval-gaps`` scores at given gaps instead of 1x-64x ``--max-gap``.

    python scripts/rope_distance_probe.py --theta 1000 --steps 600 --max-gap 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssa_kernels.hf import apply_nope_layers  # noqa: E402

VOCAB, MAX_LEN, BATCH = 32, 16, 32
SEP, FILL = VOCAB, VOCAB + 1  # separator; filler tokens FILL .. FILL + 7 never occur in the strings


def batch(n: int, min_gap: int, max_gap: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``n`` rows of string, filler gap, separator, string again; labels on the second string only; the
    strings' lengths."""
    rows, labels, lengths = [], [], []
    for _ in range(n):
        length = int(torch.randint(8, MAX_LEN + 1, (), generator=g))
        gap = int(torch.randint(min_gap, max_gap + 1, (), generator=g))
        s = torch.randint(0, VOCAB, (length,), generator=g)
        x = torch.cat([s, torch.randint(FILL, FILL + 8, (gap,), generator=g), torch.tensor([SEP]), s])
        y = x.clone()
        y[: length + gap + 1] = -100
        rows.append(x)
        labels.append(y)
        lengths.append(length)
    t = max(len(r) for r in rows)
    x = torch.stack([torch.cat([r, torch.full((t - len(r),), FILL)]) for r in rows])
    y = torch.stack([torch.cat([r, torch.full((t - len(r),), -100)]) for r in labels])
    return x, y, lengths


def oracle_mask(t: int, lengths: list[int], window: int) -> torch.Tensor:
    """[B, 1, T, T] bool: causal, and either within the last ``window`` positions or in the row's first string."""
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    local = (j <= i) & (i - j < window)
    return torch.stack([local | ((j < n) & (j <= i)) for n in lengths])[:, None]


def forward(model, x: torch.Tensor, lengths: list[int], window: int, labels: torch.Tensor | None = None):
    mask = oracle_mask(x.shape[1], lengths, window) if window else None
    return model(input_ids=x, attention_mask=mask, labels=labels)


def run(
    theta: float,
    steps: int,
    max_gap: int,
    seed: int = 0,
    window: int = 0,
    gaps: list[int] | None = None,
    nope_layers: list[int] | None = None,
) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB + 16, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max([64 * max_gap, *(gaps or [])]) + 64,
                         tie_word_embeddings=True, rope_theta=theta)  # fmt: skip
    config.nope_layers = list(nope_layers or [])
    model = apply_nope_layers(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x, y, lengths = batch(BATCH, 0, max_gap, g)
        loss = forward(model, x, lengths, window, y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    acc = {}
    with torch.no_grad():
        for gap in gaps or (max_gap, 4 * max_gap, 16 * max_gap, 64 * max_gap):
            x, y, lengths = batch(8, gap, gap, torch.Generator().manual_seed(seed + 1))
            hits = []  # one row at a time: the [T, T] mask and scores of 8 rows at 16K do not fit in memory
            for r in range(len(lengths)):
                pred, gold = (
                    forward(model, x[r : r + 1], lengths[r : r + 1], window).logits[:, :-1].argmax(-1),
                    y[r : r + 1, 1:],
                )
                hits.append((pred == gold)[gold != -100].float())
            acc[gap] = round(torch.cat(hits).mean().item(), 3)
    return {
        "theta": theta,
        "max_gap": max_gap,
        "oracle_window": window,
        "nope_layers": list(nope_layers or []),
        "steps": steps,
        "train_loss": round(loss.item(), 4),
        "acc": acc,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--theta", type=float, required=True, help="rope_theta")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--max-gap", type=int, default=64, help="largest filler gap in training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oracle-window", type=int, default=0, help="attend only the last W positions + the string")
    p.add_argument(
        "--eval-gaps", type=int, nargs="+", default=None, help="score at these gaps (default: x1, x4, x16, x64 max-gap)"
    )
    p.add_argument("--nope-layers", type=int, nargs="*", default=[], help="these layers attend without RoPE (NoPE)")
    p.add_argument("--json", default=None, help="append the result row to this JSON-lines file")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    row = run(args.theta, args.steps, args.max_gap, args.seed, args.oracle_window, args.eval_gaps, args.nope_layers)
    head = f"theta={args.theta:g} max_gap={args.max_gap} oracle_window={args.oracle_window} steps={args.steps}"
    head += f" nope_layers={args.nope_layers}" if args.nope_layers else ""
    cells = "; ".join(f"gap {k}: {v:.2f}" for k, v in row["acc"].items())
    print(f"{head} loss={row['train_loss']:.3f}; {cells} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
