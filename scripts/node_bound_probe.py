"""Probe: does scoring coarse nodes by a bound of their best block (``attention.ssa.node_score=bound``) fix the
coarse levels of the beam search?

The selector scores a pyramid node by default by the mean of its routable keys, which dilutes one needle block
among a node's 8^l blocks. This probe trains the tiny block-retrieval model (train/probes.py, as
scripts/length_generalisation.py does: 256 tokens, rope_theta 1e8) and evaluates each trained model at longer
lengths with both node scores, paired: ``mean`` and ``bound`` (an upper bound of the node's best block score,
Quest's page bound over block means, Tang et al. 2024: sum_d max(q_d * max_j k_jd, q_d * min_j k_jd) over the
node's routable blocks j; ``ssa_kernels/selector/reference.py``). Evaluation only, CPU (the PyTorch selector).

    python scripts/node_bound_probe.py --seeds 0 1 2 --json docs/results/node-bound-probe-cpu.json

``--train-ssa KEY=VALUE ...`` trains with other ``SSAConfig`` fields (e.g. ``distill_score=bound``: the router
distilled through the bound score that ``leaf_score=bound`` reads it with). ``--leaf-scores mean bound`` also pairs
the block scores (``attention.ssa.leaf_score``: the block's mean key, or the bound over its token keys), and
``--needle-tokens N`` trains and evaluates on needles of N tokens inside their block (the rest filler), which a block
mean dilutes:

    python scripts/node_bound_probe.py --seeds 0 1 2 --steps 400 --needle-tokens 2 --leaf-scores mean bound \
        --json docs/results/leaf-bound-probe-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from ssa_kernels.hf import ssa_config_of  # noqa: E402
from train.probes import evaluate, train_block_retrieval  # noqa: E402
from train.router_report import ssa_setting  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096], help="first: the training length")
    ap.add_argument("--beam-mins", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--node-scores", nargs="+", default=["mean", "bound"], choices=["mean", "bound"])
    ap.add_argument("--leaf-scores", nargs="+", default=["mean"], choices=["mean", "bound"])
    ap.add_argument("--needle-tokens", type=int, default=0, help="needle tokens inside the needle block (0: all)")
    ap.add_argument("--distractors", action="store_true", help="other keys' runs in every other block (multikey)")
    ap.add_argument("--dense-steps", type=int, default=0, help="train with every block routed for these first steps")
    ap.add_argument(
        "--train-ssa",
        nargs="+",
        default=[],
        type=ssa_setting,
        metavar="KEY=VALUE",
        help="SSAConfig fields for training, e.g. distill_score=bound (values read as JSON where they parse)",
    )
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "node-bound-probe-cpu.json"))
    args = ap.parse_args(argv)
    train_ssa = dict(args.train_ssa)
    modes = [(node, leaf) for leaf in args.leaf_scores for node in args.node_scores]
    rows = []
    for seed in args.seeds:
        _, model = train_block_retrieval(
            "distill", args.steps, seed=seed, seq_len=args.lengths[0], eval_every=args.steps, rope_theta=1e8,
            return_model=True, needle_tokens=args.needle_tokens, distractors=args.distractors,
            dense_steps=args.dense_steps, ssa=train_ssa,
        )  # fmt: skip
        model.eval()
        trained, cfg = dict(model.config.ssa), ssa_config_of(model.config)
        for length in args.lengths:
            for beam_min in args.beam_mins:
                for node, leaf in modes:
                    # read at every call
                    model.config.ssa = {**trained, "beam_min": beam_min, "node_score": node, "leaf_score": leaf}
                    accuracy, hit_rate = evaluate(
                        model, cfg, length, 32, n=args.samples, needle_tokens=args.needle_tokens,
                        distractors=args.distractors,
                    )  # fmt: skip
                    row = {"seed": seed, "length": length, "beam_min": beam_min, "node_score": node,
                           "leaf_score": leaf, "needle_tokens": args.needle_tokens,
                           "distractors": args.distractors, "dense_steps": args.dense_steps, "train_ssa": train_ssa,
                           "accuracy": accuracy, "hit_rate": hit_rate}  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\naccuracy / hit rate, mean over seeds {args.seeds} (trained at {args.lengths[0]} tokens)")
    names = [f"{node}/{leaf}" for node, leaf in modes]  # node score / leaf score
    print(f"{'length':>6} {'beam_min':>8} " + " ".join(f"{n:>12}" for n in names))
    for length in args.lengths:
        for beam_min in args.beam_mins:
            cells = []
            for node, leaf in modes:
                got = [r for r in rows if (r["length"], r["beam_min"], r["node_score"], r["leaf_score"])
                       == (length, beam_min, node, leaf)]  # fmt: skip
                acc = sum(r["accuracy"] for r in got) / len(got)
                cells.append(f"{acc:.2f}/{sum(r['hit_rate'] for r in got) / len(got):.2f}")
            print(f"{length:>6} {beam_min:>8} " + " ".join(f"{c:>12}" for c in cells))
    doc = {"device": "cpu", "date": datetime.date.today().isoformat(),
           "command": "python scripts/node_bound_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "results": rows}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
