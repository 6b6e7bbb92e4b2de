"""Teacher-forced answer probe of a trained checkpoint: per task, on held-out EVAL-split samples, the
mean loss of the target's tokens (+ EOS) and the exact-match share (every target token is the argmax).
An exact match under teacher forcing is what greedy decoding would produce up to the target, so it is a
fast stand-in for the RULER score of a short answer (no decoding loop, one forward per sample).

    python scripts/probe_answers.py runs/fc/ssa --tasks niah_single_1 niah_multikey_2 copy --length 1024

Prints one JSON line per (length, task): {"task", "length", "samples", "answer_loss", "exact", "token_acc"};
``--length 16384 65536 262144`` probes several lengths with one model load. ``--oracle K`` routes every query block
to the K key blocks where the layer's own dense attention puts the most mass (``attention.ssa.router=oracle``), for a
dense checkpoint too: what the model would read with a perfect router of that budget (``--oracle-rows max``: the
blocks of the largest one-row mass, ``attention.ssa.distill_rows=max``'s target).
``copy``'s target is the whole second copy, and its row adds ``first_copy_loss``, the loss of the same
text where it first appears (nothing predicts it but word statistics): an answer_loss far below it is
copying. Niah chance is ~1.6 nats per answer token (7 random digits of the ~10 tokens " DDDDDDD." + EOS).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data.copy import INSTRUCTION  # noqa: E402
from data.mix import PromptEncoder  # noqa: E402
from data.synthetic import generate  # noqa: E402
from data.tokenizer import make_tokenize  # noqa: E402
from ssa_kernels.config import SSAConfig  # noqa: E402
from ssa_kernels.hf import apply_nope_layers, convert_to_ssa, ssa_config_of  # noqa: E402
from ssa_kernels.hf import from_pretrained as ssa_from_pretrained  # noqa: E402
from train.eval import resolve_checkpoint  # noqa: E402
from train.model import build_tokenizer  # noqa: E402


def load(
    checkpoint: str,
    ssa_topk: int | None = None,
    oracle: int | None = None,
    local_window: int = 256,
    oracle_rows: str = "mean",
):
    from transformers import AutoConfig, AutoModelForCausalLM

    from train.config import ModelConfig

    path = resolve_checkpoint(checkpoint)
    config = AutoConfig.from_pretrained(str(path))
    if getattr(config, "ssa", None):
        model = ssa_from_pretrained(str(path), config=config, dtype=torch.float32)
        if ssa_topk is not None:  # the same weights and routers with another routed budget
            convert_to_ssa(model, replace(ssa_config_of(model.config), topk_blocks=ssa_topk))
    elif ssa_topk is not None:
        raise SystemExit(f"--ssa-topk: {path} is not an SSA model")
    else:
        model = apply_nope_layers(AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32))
    if oracle is not None:  # route by the layer's own dense attention mass (SSAConfig.router=oracle)
        if getattr(model.config, "ssa", None):  # an SSA model keeps its settings (far_distance included)
            base = ssa_config_of(model.config)
        else:  # a dense model: SSA with this window around the oracle's blocks
            base = SSAConfig(local_window=local_window)
        oracle_cfg = replace(base, router="oracle", routing="none", topk_blocks=oracle, distill_rows=oracle_rows)
        convert_to_ssa(model, oracle_cfg)
    tokenizer = build_tokenizer(ModelConfig(name="probe", path=str(path)))
    return model.eval(), tokenizer, path


@torch.no_grad()
def probe(model, tokenizer, task: str, length: int, samples: int, seed_start: int = 0) -> dict:
    encode, tokenize, eos = PromptEncoder(tokenizer), make_tokenize(tokenizer), tokenizer.eos_token_id
    specials = len(encode(""))
    losses, exact, correct, total, first = [], [], 0, 0, []
    for seed in range(seed_start, seed_start + samples):
        s = generate(task, length - specials, tokenizer, seed, None, "eval")
        prompt, target = encode(s.prompt), tokenize(s.target)
        ids = torch.from_numpy(np.concatenate([prompt, target, [eos]]).astype(np.int64))[None].to(model.device)
        all_logits = model(input_ids=ids, use_cache=False).logits[0].float()
        logits, gold = all_logits[len(prompt) - 1 : -1], ids[0, len(prompt) :]  # predicts target + EOS
        if task == "copy":  # the same text's first copy, which nothing before it predicts: the no-lookback loss
            a = len(encode(s.input[: len(INSTRUCTION)]))
            b = a + len(tokenize(s.target))
            first.append(F.cross_entropy(all_logits[a - 1 : b - 1], ids[0, a:b]).item())
        losses.append(F.cross_entropy(logits, gold).item())
        hit = logits.argmax(-1) == gold
        exact.append(bool(hit[: len(target)].all()))
        correct, total = correct + int(hit.sum()), total + len(gold)
    extra = {"first_copy_loss": round(float(np.mean(first)), 4)} if first else {}
    return {
        "task": task,
        "length": length,
        "samples": samples,
        "answer_loss": round(float(np.mean(losses)), 4),
        "exact": round(float(np.mean(exact)), 4),
        "token_acc": round(correct / total, 4),
        **extra,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a run directory, a trainer checkpoint or a model directory")
    p.add_argument("--tasks", nargs="+", default=["niah_single_1", "niah_multikey_2", "copy"])
    p.add_argument("--length", type=int, nargs="+", default=[1024], help="one or more lengths, probed in order")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seed-start", type=int, default=0, help="EVAL-split seeds seed_start ...")
    p.add_argument(
        "--ssa-topk", type=int, default=None, help="SSA models: probe with this attention.ssa.topk_blocks instead"
    )
    p.add_argument(
        "--oracle",
        type=int,
        default=None,
        metavar="K",
        help="route each query block to the K key blocks of the layer's own dense attention mass "
        "(attention.ssa.router=oracle: the upper bound of routing for this model; dense checkpoints too)",
    )
    p.add_argument("--local-window", type=int, default=256, help="--oracle on a dense checkpoint: its local window")
    p.add_argument(
        "--oracle-rows",
        choices=["mean", "max"],
        default="mean",
        help="--oracle: rank key blocks by the query block's mean row mass or by the largest one-row mass "
        "(attention.ssa.distill_rows)",
    )
    args = p.parse_args(argv)
    if args.oracle is not None and args.ssa_topk is not None:
        p.error("--oracle K sets the routed budget itself: drop --ssa-topk")
    model, tokenizer, path = load(args.checkpoint, args.ssa_topk, args.oracle, args.local_window, args.oracle_rows)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    for length in args.length:  # one model load for every length; each row is printed as soon as it is done
        for task in args.tasks:
            row = probe(model, tokenizer, task, length, args.samples, args.seed_start)
            oracle = {"oracle": args.oracle, "oracle_rows": args.oracle_rows if args.oracle is not None else None}
            print(json.dumps({"checkpoint": str(path), "ssa_topk": args.ssa_topk, **oracle, **row}), flush=True)


if __name__ == "__main__":
    main()
