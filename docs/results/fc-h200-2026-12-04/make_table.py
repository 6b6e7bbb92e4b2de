"""docs/results/functional-context.json from this session's ssa rows (fc31's checkpoint: 1M from the device call
that resumed it, 16K-256K and 4M from two eval-only calls on it) and fc15's swa and dense rows (the last run of the
baselines), through prove_functional_context's own table, heatmaps and docs section. Run from the repository root:
python docs/results/fc-h200-2026-12-04/make_table.py"""

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

R = HERE / "fc31-resumed"
samples = [json.loads(line) for f in ("samples-16k-256k.jsonl", "samples-1m.jsonl", "samples-4m.jsonl")
           for line in (R / f).read_text().splitlines()]  # fmt: skip
old = json.loads((REPO / "docs/results/functional-context.json").read_text())
base = [r for r in old["results"] if r["model"] != "ssa"]
train = ("python scripts/prove_functional_context.py --recipe h200-4k-wide --out runs/fc --models ssa "
         "--needle-routing --eval-lengths 1M (run as devrun/fc31.sh, h200-4k-far with these arguments spelled out, "
         "then resumed for 16 more stage-2 steps: docs/results/fc-h200-2026-12-04)")  # fmt: skip
doc = {
    "device": "NVIDIA H200",
    "date": "2026-12-04",
    "command": train,
    "commands": {
        "ssa": train + "; 16K / 64K / 256K and 4M: --eval-only --checkpoint runs/fc/ssa, 4M with "
        "--eval-ssa beam_widths=[64,128,256,64] --depths 0.7 0.3",
        # fc15's command; a second run of this file finds it under "commands"
        **{m: old.get("commands", {}).get(m, old["command"]) for m in ("swa", "dense")},
    },  # fmt: skip
    "results": prove.accuracy_rows("ssa", samples) + base,
    "models": old["models"],
}
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp)
    (out / "functional-context.json").write_text(json.dumps(doc, indent=1))
    for model in ("ssa", "swa", "dense"):
        prove.heatmap(doc["results"], model, out / f"functional-context-{model}.png")
    prove.copy_to_docs(out, doc)
print(prove.markdown_table(doc))
