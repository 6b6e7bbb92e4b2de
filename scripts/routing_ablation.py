"""Does SSA's routing mechanism help the router learn? Trains the tiny block-retrieval model
(train/probes.py) with each ``--routings`` mechanism (straight_through, distill, none) over several
seeds, prints a table and writes docs/results/routing-ablation-<device>.json (with ``--dense-steps N``,
a dense warm-up of N steps first: routing-ablation-<device>-warm<N>.json).

    python scripts/routing_ablation.py --seeds 0 1 2 --steps 200
    python scripts/routing_ablation.py --seeds 0 1 2 --steps 250 --dense-steps 150 --routings straight_through distill
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from ssa_kernels.config import ROUTINGS
from train.probes import train_block_retrieval

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--routings", nargs="+", default=["straight_through", "none"], choices=ROUTINGS)
    ap.add_argument("--dense-steps", type=int, default=0, help="first steps route every block (dense warm-up)")
    ap.add_argument("--out", default=str(REPO / "docs" / "results"))
    args = ap.parse_args()
    results = []
    for routing in args.routings:
        for seed in args.seeds:
            history = train_block_retrieval(
                routing, args.steps, seed=seed, eval_every=args.eval_every, dense_steps=args.dense_steps
            )
            for row in history:
                results.append({"routing": routing, "seed": seed, **row})
                print(routing, seed, row, flush=True)
    steps = sorted({r["step"] for r in results})
    print(f"\n{'routing':18} {'seed':>4} " + " ".join(f"{'acc/hit@' + str(s):>14}" for s in steps))
    for routing in args.routings:
        for seed in args.seeds:
            rows = {r["step"]: r for r in results if r["routing"] == routing and r["seed"] == seed}
            cells = " ".join(f"{rows[s]['accuracy']:>6.2f}/{rows[s]['hit_rate']:<6.2f} " for s in steps)
            print(f"{routing:18} {seed:>4} {cells}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    doc = {
        "device": device,
        "date": datetime.date.today().isoformat(),
        "command": "python scripts/routing_ablation.py " + " ".join(sys.argv[1:]),
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warm = f"-warm{args.dense_steps}" if args.dense_steps else ""
    (out / f"routing-ablation-{'cpu' if device == 'cpu' else device.split()[-1].lower()}{warm}.json").write_text(
        json.dumps(doc, indent=1)
    )


if __name__ == "__main__":
    main()
