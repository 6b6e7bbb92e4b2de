"""Right vs wrong answers against needle routing (seventh session): per evaluated 1M sample of fc25 and fc26, the
answer, the prediction and per layer the share of (kv head, answer token) pairs whose selection listed the needle's
block (train.eval needle_routing). Run from the repo root: python docs/results/fc-h200-2026-12-03g/routing.py"""

import json
from pathlib import Path

HERE = Path(__file__).parent
RUNS = {"fc25 (620 steps), beam 64": "fc25/runs/fc/ssa/eval/samples.jsonl",
        "fc26 (281 steps), beam 64": "fc26/runs/fc/ssa/eval/samples.jsonl",
        "fc26 (281 steps), beam 256": "fc26/runs/fc-beam256/ssa/eval/samples.jsonl"}  # fmt: skip

for name, path in RUNS.items():
    rows = [json.loads(line) for line in (HERE / path).read_text().splitlines()]
    rows = [r for r in rows if r["length"] == 1 << 20]
    print(f"\n{name}: {len(rows)} samples at 1M")
    print("depth seed  answer   pred     right | routed per layer 0..9")
    for r in rows:
        routed = " ".join(f"{x:.2f}" for x in r["needle_routed"])
        print(
            f"{r['depth']:.2f}  {r['seed']}     {r['answers'][0]}  {r['pred'].strip()[:8]:8} {'yes' if r['score'] == 100 else 'no':5} | {routed}"
        )
    for ok in (True, False):
        sel = [r["needle_routed"] for r in rows if (r["score"] == 100) == ok]
        if sel:
            mean = [sum(col) / len(sel) for col in zip(*sel)]
            print(f"mean over {'right' if ok else 'wrong'} ({len(sel)}): " + " ".join(f"{x:.2f}" for x in mean))
