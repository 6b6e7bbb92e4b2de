"""docs/results/functional-context.json joining two recipes' runs, each row labelled with its recipe:

- h200-4k-bound (fc42, one H200, 2026-12-04; docs/results/fc-h200-2026-12-04/fc42): niah_single_1 to 4M and
  niah_multikey_2, all three models from one stage 1 (as that directory's make_table.py wrote them);
- h200-4k-prose (fc64, one H100, 2026-12-05, twenty-fourth session; this directory): niah_multikey_1 and niah_single_2
  at 256K and 1M for ssa (fc64.sh trains and reads multikey at 8 depths; fc64b.sh's mk and s2 lines, and the 1M lines
  of fc64d.sh and fc64f.sh, eval-only on the same checkpoint), swa and dense at 64K / 256K trained from the same
  stage 1 (fc64e.sh). fc64b.sh's k112 line (112 routed blocks, not the recipe's 64) is left out.

No recipe has yet been read on the whole grid by one training run; the rows say which run each figure is from. Writes
the table, heatmaps and docs section through prove_functional_context's own code. Run from the repository root:
python docs/results/h100-2026-12-05i/make_table.py"""

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


def samples(runs: Path, names: list[str]) -> list[dict]:
    return [json.loads(line) for r in names for line in (runs / r / "ssa/eval/samples.jsonl").read_text().splitlines()]


def labelled(rows: list[dict], recipe: str) -> list[dict]:
    return [{**r, "recipe": recipe} for r in rows]


FC42 = REPO / "docs/results/fc-h200-2026-12-04/fc42/runs"
FC64 = HERE / "runs"
base42 = json.loads((FC42 / "fc42-base/functional-context.json").read_text())
base64 = json.loads((FC64 / "fc64-base/functional-context.json").read_text())
# fc42's document as that directory's make_table.py wrote it (kept there when this one replaced it in docs/results)
fc42 = json.loads((REPO / "docs/results/fc-h200-2026-12-04/functional-context-fc42.json").read_text())
ssa64_cmd = json.loads((FC64 / "fc64-ssa/functional-context.json").read_text())["command"]
eval_only = "--recipe h200-4k-prose --models ssa --eval-only --checkpoint runs/fc64-ssa/ssa --needle-routing"
wide = "--eval-ssa node_score=bound leaf_score=bound beam_widths=[64,256,512] topk_blocks=64"
rows = (
    labelled(prove.accuracy_rows("ssa", samples(FC42, ["fc42-ssa", "fc42-s", "fc42-s64", "fc42-s1m", "fc42-s4m",
                                                       "fc42-m"])) + base42["results"], "h200-4k-bound")
    + labelled(prove.accuracy_rows("ssa", samples(FC64, ["fc64-ssa", "fc64-mk", "fc64-s2", "fc64-w1", "fc64-w3",
                                                         "fc64-w2", "fc64-w4"])) + base64["results"], "h200-4k-prose")
)  # fmt: skip
doc = {
    "device": "NVIDIA H200 (h200-4k-bound rows); NVIDIA H100 80GB HBM3 (h200-4k-prose rows)",
    "date": "2026-12-04 (h200-4k-bound); 2026-12-05 (h200-4k-prose)",
    "command": "h200-4k-bound: bash devrun/fc42.sh; bash devrun/fc42b.sh; bash devrun/fc42c.sh; fc42d.sh's two lines "
    "(docs/results/fc-h200-2026-12-04). h200-4k-prose: bash devrun/fc64.sh; bash devrun/fc64b.sh; bash fc64d.sh; "
    "bash fc64e.sh; bash fc64f.sh (docs/results/h100-2026-12-05i), five calls back to back on one machine",
    "commands": {
        **{f"h200-4k-bound/{m}": c for m, c in fc42["commands"].items()},
        "h200-4k-prose/ssa": f"{ssa64_cmd} (fc64.sh: trains, reads niah_multikey_1 at 256K, 8 depths); then "
        f"eval-only, python scripts/prove_functional_context.py {eval_only} with --eval-lengths 256K and --tasks "
        "niah_multikey_1 --depths 0.05 0.15 0.25 0.35 0.45 0.55 0.65 0.9, --tasks niah_single_2 (fc64b.sh); "
        f"--eval-lengths 1M {wide} with --tasks niah_multikey_1 / niah_single_2 --depths 0.2 0.5 0.8 (fc64d.sh) and "
        "--depths 0.1 0.35 0.65 (fc64f.sh; niah_multikey_1 cut by its time limit after 0.1 and 0.35)",
        **{f"h200-4k-prose/{m}": base64["command"] + " (fc64e.sh)" for m in ("swa", "dense")},
    },  # fmt: skip
    "results": rows,
    "models": {
        "h200-4k-bound": fc42["models"],
        "h200-4k-prose": {
            **base64["models"],
            "ssa": {
                **json.loads((FC64 / "fc64-ssa/ssa/train_summary.json").read_text()),
                "eval_ssa": wide.split()[1:],
            },
        },
    },
}
with tempfile.TemporaryDirectory() as tmp:
    prove.copy_to_docs(Path(tmp), prove.write_doc(Path(tmp), doc))
print(prove.markdown_table(doc))
