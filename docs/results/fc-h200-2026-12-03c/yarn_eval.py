"""fc11: evaluate trained checkpoints with YaRN rope scaling at eval time (no fine-tuning), in one process.
argv: out_dir train_len variant... ; variant = model:length:factor:attention_factor[:ssa edits] (factor 0 = no
scaling; attention_factor "d" = the default mscale; ssa edits "key=json;key=json" (e.g. top_nodes=1024;beam_widths=[64])
edited into a copy of the checkpoint config.json; top_nodes >= blocks = an exhaustive search)."""

import json
import shutil
import sys
import time
from pathlib import Path

sys.path[:0] = ["scripts", "."]
from prove_functional_context import compose_config  # noqa: E402

from train.eval import evaluate, parse_length, to_eval_config  # noqa: E402

out, train_len = Path(sys.argv[1]), int(sys.argv[2])
rows = []
for v in sys.argv[3:]:
    model, length, factor, af, *tn = v.split(":")
    ckpt = f"{out}/{model}"
    if tn:  # ssa edits "key=json;key=json", e.g. top_nodes=1024;beam_widths=[64]
        src = sorted((out / model / "checkpoints").glob("step_*"))[-1] / "model"
        ckpt = out / f"{model}_{abs(hash(tn[0]))}"
        if not ckpt.exists():
            shutil.copytree(src, ckpt)
            c = json.loads((ckpt / "config.json").read_text())
            c["ssa"].update({kv.split("=")[0]: json.loads(kv.split("=")[1]) for kv in tn[0].split(";")})
            (ckpt / "config.json").write_text(json.dumps(c, indent=1))
    o = [
        f"checkpoint={ckpt}",
        "tasks=[niah_single_1]",
        f"lengths=[{length}]",
        "depths=[0.25,0.5,0.75]",
        "samples=4",
        "max_new_tokens=12",
        f"out_dir={out}/yarn/{abs(hash(v))}",
        "progress=false",
        "wandb=disabled",
    ]
    if float(factor) > 0:
        rs = f"rope_type:yarn,factor:{float(factor)},original_max_position_embeddings:{train_len}"
        if af != "d":
            rs += f",attention_factor:{float(af)}"
        o.append("model.rope_scaling={" + rs + "}")
    t = time.time()
    res = evaluate(to_eval_config(compose_config("eval", o)), command="yarn_eval " + v)
    scores = [r["score"] for r in res["results"]]
    row = {
        "variant": v,
        "model": model,
        "length": parse_length(length),
        "factor": float(factor),
        "attention_factor": af,
        "top_nodes": tn[0] if tn else None,
        "accuracy": sum(scores) / len(scores) / 100,
        "n": len(scores),
        "s": round(time.time() - t, 1),
        "by_depth": {str(r["depth"]): r["score"] for r in res["results"]},
    }
    rows.append(row)
    print("YARN", json.dumps(row), flush=True)
    (out / "yarn.json").write_text(json.dumps(rows, indent=1))
