"""Probe: would a node summary that keeps its best block visible fix the coarse levels of the beam search?

The selector scores a pyramid node by the mean of its routable keys (``_score_ranges``), which dilutes one
needle block among a node's 8^l blocks. This probe trains the tiny block-retrieval model (train/probes.py, as
scripts/length_generalisation.py does: 256 tokens, rope_theta 1e8) and evaluates it at longer lengths with the
selector's coarse-level scores swapped for an upper bound of the node's best block score (Quest's page bound,
Tang et al. 2024, over block means): sum_d max(q_d * max_j k_jd, q_d * min_j k_jd) over the node's routable
blocks j. Evaluation only, CPU only (the PyTorch reference selector; nothing in the library uses the bound
yet: the probe decides whether ``attention.ssa`` should get it). The bound gathers every block under a node,
O(node size) per candidate: fine at the toy's lengths, not an implementation for 1M.

    python scripts/node_bound_probe.py --seeds 0 1 2 --json docs/results/node-bound-probe-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import ssa_kernels.selector.reference as selector_reference  # noqa: E402
from ssa_kernels.hf import ssa_config_of  # noqa: E402
from train.probes import evaluate, train_block_retrieval  # noqa: E402

_MEAN_SCORES = selector_reference._score_ranges


def bound_scores(q_sum, prefix, node, cover, block_size, lo, hi):
    """``_score_ranges``' contract ([Bt, Hkv, R, M] scores of nodes covering ``cover`` blocks, only their blocks
    in [lo, hi) counted) with the per-dimension min/max bound over the block means instead of the mean."""
    if cover == 1:
        return _MEAN_SCORES(q_sum, prefix, node, cover, block_size, lo, hi)  # a block: bound = its score
    bt, hkv, n1, d = prefix.shape
    nb = n1 - 1
    means = ((prefix[:, :, 1:] - prefix[:, :, :-1]) / block_size).reshape(bt * hkv * nb, d)  # full blocks
    start = torch.maximum(node * cover, lo).clamp(0, nb)  # (Bt, Hkv, R, M)
    end = torch.minimum((node + 1) * cover, hi).clamp(0, nb)
    block = start.unsqueeze(-1) + torch.arange(cover, device=node.device)  # (Bt, Hkv, R, M, cover)
    inside = block < end.unsqueeze(-1)
    row0 = (torch.arange(bt * hkv, device=node.device) * nb).view(bt, hkv, 1, 1, 1)
    keys = means.index_select(0, (block.clamp(0, nb - 1) + row0).reshape(-1)).view(*block.shape, d)
    high = torch.where(inside.unsqueeze(-1), keys, -torch.inf).amax(-2)  # (Bt, Hkv, R, M, D)
    low = torch.where(inside.unsqueeze(-1), keys, torch.inf).amin(-2)
    q = q_sum.to(torch.float64).unsqueeze(-2)  # (Bt, Hkv, R, 1, D)
    score = torch.maximum(q * high, q * low).sum(-1)
    return torch.where(inside.any(-1), score, 0.0).to(q_sum.dtype)  # empty nodes: masked by the caller


@contextlib.contextmanager
def node_scores(mode: str):
    selector_reference._score_ranges = bound_scores if mode == "bound" else _MEAN_SCORES
    try:
        yield
    finally:
        selector_reference._score_ranges = _MEAN_SCORES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096], help="first: the training length")
    ap.add_argument("--beam-mins", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "node-bound-probe-cpu.json"))
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        _, model = train_block_retrieval(
            "distill", args.steps, seed=seed, seq_len=args.lengths[0], eval_every=args.steps, rope_theta=1e8,
            return_model=True,
        )  # fmt: skip
        model.eval()
        trained, cfg = dict(model.config.ssa), ssa_config_of(model.config)
        for length in args.lengths:
            for beam_min in args.beam_mins:
                for mode in ("mean", "bound"):
                    model.config.ssa = {**trained, "beam_min": beam_min}  # read at every call
                    with node_scores(mode):
                        accuracy, hit_rate = evaluate(model, cfg, length, 32, n=args.samples)
                    row = {"seed": seed, "length": length, "beam_min": beam_min, "node_score": mode,
                           "accuracy": accuracy, "hit_rate": hit_rate}  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\naccuracy / hit rate, mean over seeds {args.seeds} (trained at {args.lengths[0]} tokens)")
    print(f"{'length':>6} {'beam_min':>8} {'mean':>12} {'bound':>12}")
    for length in args.lengths:
        for beam_min in args.beam_mins:
            cells = []
            for mode in ("mean", "bound"):
                got = [r for r in rows if (r["length"], r["beam_min"], r["node_score"]) == (length, beam_min, mode)]
                acc = sum(r["accuracy"] for r in got) / len(got)
                cells.append(f"{acc:.2f}/{sum(r['hit_rate'] for r in got) / len(got):.2f}")
            print(f"{length:>6} {beam_min:>8} {cells[0]:>12} {cells[1]:>12}")
    doc = {"device": "cpu", "date": datetime.date.today().isoformat(),
           "command": "python scripts/node_bound_probe.py " + " ".join(sys.argv[1:]), "results": rows}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
