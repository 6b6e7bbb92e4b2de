"""How close the wrong answers were (fifth and sixth sessions' records, 2026-12-03): per (run, task, length), the samples,
exact answers, answers with the needle's digits in another order, and the mean digits in their right place (of 7;
chance 0.7). Run from the repository root: python docs/results/fc-h200-2026-12-03e/digits.py"""

import collections
import glob
import json

RUNS = {
    "fc15 ssa, YaRN": "docs/results/fc-h200-2026-12-03d/fc15/ssa/**/results.json",
    "fc17 NoPE": "docs/results/fc-h200-2026-12-03e/fc17/nope/ssa/**/results.json",
    "fc16 PoSE 380": "docs/results/fc-h200-2026-12-03e/fc16/pose/ssa/**/results.json",
    "fc18 PoSE 760": "docs/results/fc-h200-2026-12-03e/fc18/pose2/ssa/**/results.json",
    "fc20 eval far1024": "docs/results/fc-h200-2026-12-03f/fc20/far/ssa/**/results.json",
    "fc20 eval far3072": "docs/results/fc-h200-2026-12-03f/fc20/far-d2/ssa/**/results.json",
    "fc20 YaRN": "docs/results/fc-h200-2026-12-03f/fc20/far-yarn/ssa/**/results.json",
    "fc21 far1024": "docs/results/fc-h200-2026-12-03f/fc21/far21/ssa/**/results.json",
    "fc21 far1024 mk": "docs/results/fc-h200-2026-12-03f/fc21/far21-mk/ssa/**/results.json",
    "fc22 far1024": "docs/results/fc-h200-2026-12-03f/fc22/far22/ssa/**/results.json",
}
for name, pattern in RUNS.items():
    cells = collections.defaultdict(lambda: [0, 0, 0, 0])
    for f in glob.glob(pattern, recursive=True):
        for r in json.load(open(f)).get("results", []):
            pred, ans = "".join(c for c in r["pred"] if c.isdigit())[:7], r["answers"][0]
            c = cells[r["task"], r["length"]]
            c[0] += 1
            c[1] += pred == ans
            c[2] += sorted(pred) == sorted(ans)
            c[3] += sum(x == y for x, y in zip(pred, ans))
    for (task, length), (n, exact, same, place) in sorted(cells.items()):
        print(
            f"{name:16s} {task:16s} {length:>8d}  n {n:2d}  exact {exact:2d}  same digits {same:2d}  "
            f"in place {place / n:.2f}"
        )
