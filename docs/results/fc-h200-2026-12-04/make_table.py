"""docs/results/functional-context.json from one training run of --recipe h200-4k-bound, all three models (the
thirteenth session's fc42 calls, docs/results/fc-h200-2026-12-04/fc42): ssa trained and read at 1M by fc42.sh, read
eval-only at 16K-256K, 4M and niah_multikey_2 16K-1M by fc42c.sh and at more positions (16K, 64K, 1M) by fc42d.sh;
swa and dense trained from the same stage 1 and read by fc42b.sh. Writes the table, heatmaps and docs section through
prove_functional_context's own code. Run from the repository root: python docs/results/fc-h200-2026-12-04/make_table.py
Since the twenty-fourth session docs/results holds fc42 joined with fc64 (docs/results/h100-2026-12-05i/make_table.py,
which reads fc42's document as this script wrote it, kept here as functional-context-fc42.json)."""

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

RUNS = HERE / "fc42/runs"
SSA = ["fc42-ssa", "fc42-s", "fc42-s64", "fc42-s1m", "fc42-s4m", "fc42-m"]
samples = [json.loads(line) for r in SSA for line in (RUNS / r / "ssa/eval/samples.jsonl").read_text().splitlines()]
base = json.loads((RUNS / "fc42-base/functional-context.json").read_text())
ssa_cmd = json.loads((RUNS / "fc42-ssa/functional-context.json").read_text())["command"]
eval_only = "--recipe h200-4k-bound --models ssa --eval-only --checkpoint runs/fc42-ssa/ssa --needle-routing"
doc = {
    "device": "NVIDIA H200",
    "date": "2026-12-04",
    "command": "bash devrun/fc42.sh; bash devrun/fc42b.sh; bash devrun/fc42c.sh; fc42d.sh's two lines "
    "(docs/results/fc-h200-2026-12-04: one recipe, --recipe h200-4k-bound, four calls back to back on one machine)",
    "commands": {
        "ssa": f"{ssa_cmd} (fc42.sh: trains, reads 1M at 12 positions); then eval-only, python "
        f"scripts/prove_functional_context.py {eval_only} with --tasks niah_single_1 --eval-lengths 16K 64K 256K "
        "--depths 0.2 0.4 0.6 0.8, --tasks niah_multikey_2 --eval-lengths 16K 64K 256K 1M --depths 0.2 0.4 0.6 0.8, "
        "--tasks niah_single_1 --eval-lengths 4M --depths 0.2 0.4 0.6 0.8 (fc42c.sh), --eval-lengths 16K 64K --depths "
        "0.05 ... 0.95 (15) and --eval-lengths 1M --depths 0.05 0.15 0.3 0.45 0.55 0.7 0.85 0.95 (fc42d.sh)",
        "swa": base["command"] + " (fc42b.sh)",
        "dense": base["command"] + " (fc42b.sh)",
    },  # fmt: skip
    "results": prove.accuracy_rows("ssa", samples) + base["results"],
    "models": {
        **base["models"],
        "ssa": {
            **json.loads((RUNS / "fc42-ssa/ssa/train_summary.json").read_text()),
            "node_score": "bound",
            "beam_widths": [64],
        },  # fmt: skip
    },
}
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp)
    (out / "functional-context.json").write_text(json.dumps(doc, indent=1))
    for model in ("ssa", "swa", "dense"):
        prove.heatmap(doc["results"], model, out / f"functional-context-{model}.png")
    prove.copy_to_docs(out, doc)
print(prove.markdown_table(doc))
