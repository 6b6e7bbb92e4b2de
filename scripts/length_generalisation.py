"""Does SSA's routing carry beyond the training length, and what in the beam search decides it? Trains the
tiny block-retrieval model (train/probes.py: one needle block among random filler, trained at 256 tokens)
and evaluates it at longer lengths with several searches over the same learned router: the capacity beams
alone (``beam_min=1``, the rule before 2026-12-03), ``beam_min`` 4 and 16 (the default), and an exhaustive
search (every block scored). ``--yarn`` also evaluates each longer length with YaRN rope scaling of factor
length / training length, no fine-tuning: ``default`` (transformers' attention temperature) or
``no-temperature`` (``attention_factor`` 1). ``--far-distances`` also evaluates with far blocks at that one
rotary distance (``attention.ssa.far_distance`` at evaluation; 0: true distances), ``--train-far-distance`` trains
with it. Prints a table (answer accuracy / needle hit rate) and writes
docs/results/length-generalisation-<device>.json (or ``--json``).

    python scripts/length_generalisation.py --seeds 0 1 2 --rope-thetas 10000 1e8
    python scripts/length_generalisation.py --rope-thetas 10000 --searches beam_min=16 --yarn off default \
        no-temperature --json docs/results/length-generalisation-yarn-cpu.json
    python scripts/length_generalisation.py --rope-thetas 10000 --searches beam_min=16 --far-distances 0 128 \
        --json docs/results/length-generalisation-far-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from ssa_kernels.hf import ssa_config_of  # noqa: E402
from train.probes import evaluate, train_block_retrieval  # noqa: E402
from train.router_report import ssa_setting  # noqa: E402

SEARCHES = {f"beam_min={b}": {"beam_min": b} for b in (1, 4, 16, 64)}
YARN = ("off", "default", "no-temperature")


def set_rope(model, theta: float, factor: float, yarn: str, train_len: int) -> None:
    """Rebuild the model's rotary embedding: plain, or YaRN of ``factor`` (with or without the temperature)."""
    rope = {"rope_type": "default", "rope_theta": theta}
    if yarn != "off" and factor > 1:
        rope = {
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": train_len,
            "rope_theta": theta,
        }
        rope.update({"attention_factor": 1.0} if yarn == "no-temperature" else {})
    model.config.rope_parameters = rope
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rope-thetas", type=float, nargs="+", default=[10000.0, 1e8])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--routing", default="distill")
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096], help="first: the training length")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--searches", nargs="+", default=[*SEARCHES, "exhaustive"], choices=[*SEARCHES, "exhaustive"])
    ap.add_argument("--yarn", nargs="+", default=["off"], choices=YARN, help="rope at the longer lengths")
    ap.add_argument("--far-distances", type=int, nargs="+", default=[0], help="attention.ssa.far_distance at eval")
    ap.add_argument("--train-far-distance", type=int, default=0, help="attention.ssa.far_distance in training")
    ap.add_argument(
        "--ssa",
        nargs="*",
        type=ssa_setting,
        default=[],
        metavar="KEY=VALUE",
        help="other SSAConfig fields in training, e.g. distill_target=attended",
    )
    ap.add_argument("--out", default=str(REPO / "docs" / "results"))
    ap.add_argument(
        "--json", default=None, help="the results file (default: <out>/length-generalisation-<device>.json)"
    )
    args = ap.parse_args()
    train_ssa = dict(args.ssa)
    results = []
    for theta in args.rope_thetas:
        for seed in args.seeds:
            _, model = train_block_retrieval(
                args.routing, args.steps, seed=seed, seq_len=args.lengths[0], eval_every=args.steps,
                rope_theta=theta, return_model=True, far_distance=args.train_far_distance, ssa=train_ssa,
            )  # fmt: skip
            model.eval()
            trained, cfg = dict(model.config.ssa), ssa_config_of(model.config)
            for length, yarn, far in itertools.product(args.lengths, args.yarn, args.far_distances):
                if yarn != "off" and length <= args.lengths[0]:
                    continue  # no scaling within the training length
                set_rope(model, theta, length / args.lengths[0], yarn, args.lengths[0])
                searches = {**SEARCHES, "exhaustive": {"top_nodes": length // cfg.block_size}}
                for search in args.searches:
                    # the layers read their settings at every call
                    model.config.ssa = {**trained, **searches[search], "far_distance": far}
                    accuracy, hit_rate = evaluate(model, cfg, length, 32, n=args.samples)
                    row = {"rope_theta": theta, "seed": seed, "length": length, "search": search, "yarn": yarn,
                           "train_far_distance": args.train_far_distance, "train_ssa": train_ssa,
                           "far_distance": far, "accuracy": accuracy,
                           "hit_rate": hit_rate}  # fmt: skip
                    results.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\naccuracy / hit rate, mean over seeds {args.seeds} (trained at {args.lengths[0]} tokens)")
    print(f"{'rope_theta':>10} {'length':>6} {'yarn':>14} {'far':>5} " + " ".join(f"{s:>14}" for s in args.searches))
    for theta, length, yarn, far in itertools.product(args.rope_thetas, args.lengths, args.yarn, args.far_distances):
        cells = []
        for search in args.searches:
            key = (theta, length, search, yarn, far)
            rows = [
                r for r in results if (r["rope_theta"], r["length"], r["search"], r["yarn"], r["far_distance"]) == key
            ]
            if rows:
                acc = sum(r["accuracy"] for r in rows) / len(rows)
                hit = sum(r["hit_rate"] for r in rows) / len(rows)
                cells.append(f"{acc:>6.2f}/{hit:<6.2f} ")
        if cells:
            print(f"{theta:>10.0e} {length:>6} {yarn:>14} {far:>5} " + " ".join(cells))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    doc = {
        "device": device,
        "date": datetime.date.today().isoformat(),
        "command": "python scripts/length_generalisation.py " + " ".join(sys.argv[1:]),
        "results": results,
    }
    path = Path(args.json or Path(args.out) / f"length-generalisation-{device.replace(' ', '-').lower()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
