"""docs/results/functional-context.json from the twelfth session's ssa rows (fc35's checkpoint, --recipe
h200-4k-attended's training, evaluated eval-only with attention.ssa.node_score=bound and beams of 64: 16K-256K from
fc39, 1M from fc37, 4M from fc40 and fc41, niah_multikey_2 at 4K-256K from fc38) and fc15's swa and dense rows (the
last run of the baselines), through prove_functional_context's own table, heatmaps and docs section. Run from the
repository root: python docs/results/fc-h200-2026-12-04/make_table.py"""

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
spec = importlib.util.spec_from_file_location("prove", REPO / "scripts" / "prove_functional_context.py")
prove = importlib.util.module_from_spec(spec)
sys.modules["prove"] = prove
spec.loader.exec_module(prove)

RUNS = ["fc39/runs/fc35-sb", "fc37/runs/fc35-bd64", "fc40/runs/fc35-b4m", "fc41/runs/fc35-c4m", "fc38/runs/fc35-mk"]
samples = [json.loads(line) for r in RUNS for line in (HERE / r / "ssa/eval/samples.jsonl").read_text().splitlines()]
old = json.loads((REPO / "docs/results/functional-context.json").read_text())
base = [r for r in old["results"] if r["model"] != "ssa"]
train = ("python scripts/prove_functional_context.py --recipe h200-4k-bound --out runs/fc --models ssa "
         "--needle-routing --eval-lengths 16K 64K 256K 1M 4M (trained by devrun/fc35.sh = --recipe h200-4k-attended, "
         "evaluated eval-only with --eval-ssa node_score=bound beam_widths=[64,64,64] (1M; [64,64,64,64] at 4M, the "
         "same beams): docs/results/fc-h200-2026-12-04, fc35 and fc37-fc41)")  # fmt: skip
summary = json.loads((HERE / "fc35/runs/fc35/ssa/train_summary.json").read_text())
doc = {
    "device": "NVIDIA H200",
    "date": "2026-12-04",
    "command": train,
    "commands": {
        "ssa": train + "; niah_multikey_2: --tasks niah_multikey_2 --eval-lengths 4K 16K 64K 256K --depths 0.2 0.4 "
        "0.6 0.8 (fc38)",
        # fc15's command; a second run of this file finds it under "commands"
        **{m: old.get("commands", {}).get(m, old["command"]) for m in ("swa", "dense")},
    },  # fmt: skip
    "results": prove.accuracy_rows("ssa", samples) + base,
    "models": {**old["models"], "ssa": {**summary, "node_score": "bound", "beam_widths": [64]}},
}
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp)
    (out / "functional-context.json").write_text(json.dumps(doc, indent=1))
    for model in ("ssa", "swa", "dense"):
        prove.heatmap(doc["results"], model, out / f"functional-context-{model}.png")
    prove.copy_to_docs(out, doc)
print(prove.markdown_table(doc))
