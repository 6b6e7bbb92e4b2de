"""Which block summary would route the right needle? A router diagnostic on a trained checkpoint (issue 6).

For niah samples (``--tasks``, ``--lengths``, ``--depths``) the prompt runs through the model once (block rule, no
cache), and at every SSA layer the answer position's query block (the prompt's last) ranks every block of its
routed range (after the sinks, before the local window) under several scorers; the probe reports where the
needle's value block lands (0: first). A rank below ``topk_blocks`` means one level of search would route it.

Scorers, per kv head (``q`` the routing query: the mean of the router's queries over the query block's rows, as the
selector uses it; ``k_t`` the router's key of token t):

- ``mean``: q . mean_t k_t, the selector's block score today (the pyramid's leaf);
- ``token_max``: max_t q . k_t, the best token of the block (exact; O(block) a block, what a summary approximates);
- ``bound``: sum_d max(q_d min_t k_td, q_d max_t k_td), an upper bound of token_max from per-dimension min / max
  of the block's router keys (Quest's page bound at block granularity; O(1) a block);
- ``attn``: the layer's own attention mass on the block from the answer row (softmax over the routed range's keys,
  per query head, averaged over the kv head's group), with far blocks at ``far_distance`` when the model was
  trained so: the answer row's own lookup (the distillation target averages it with the query block's other rows:
  ``teacher``);
- ``attn_max``: the block's largest attention logit (mean over the group's heads);
- ``teacher``: the router's distillation target for the answer's query block, the dense attention mass of the block's
  rows on each key block averaged over its rows and the group's heads (``distill.dense_block_mass``, with far blocks
  at ``far_distance`` under ``distill_target=attended``), what ``routing=distill`` trains the router toward;
- ``teacher_max``: the same with each key block's largest one-row mass (``attention.ssa.distill_rows=max``), and so
  the ranking ``router=oracle`` routes by under each setting.

In niah_multikey_2 every block of the haystack is another needle of the same form, so only the key word tells the
right block apart: ``mean`` ranking it at chance while ``token_max`` or ``attn`` rank it first says the block
summary, not the router's features, is what loses it.

    python scripts/needle_rank_probe.py runs/fc/ssa --tasks niah_multikey_2 niah_single_1 --lengths 4K 16K --out r.json

Prints a table (per target, the needle's value blocks or its key's blocks, and scorer: share of (sample, layer, kv
head) with the target ranked below topk_blocks, median rank, routable blocks, the share of samples whose key and value
lie in different blocks) and per-layer rows; ``--out`` writes it all as JSON.

``--as-ssa`` probes a DENSE checkpoint: the model is switched to SSA with every block routed (``topk_blocks`` covering
the longest prompt, no learned router: ``router=attention``, ``routing=none``), which computes exactly its dense
attention (tested), so ``attn`` / ``attn_max`` say where the dense model's own answer row looks (true distances) and
``mean`` / ``token_max`` / ``bound`` score its attention's own q / k. The share in the top ``--topk`` (default 16)
then says whether a router distilled from that attention could route the right block: what converting the dense
model to SSA would start from.

    python scripts/needle_rank_probe.py runs/fc/dense --as-ssa --local-window 256 --lengths 4K 16K
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data.synthetic import generate  # noqa: E402
from ssa_kernels.config import SSAConfig  # noqa: E402
from ssa_kernels.diagnostics import SSARecorder  # noqa: E402
from ssa_kernels.distill import dense_block_mass  # noqa: E402
from ssa_kernels.hf import _far_inputs, convert_to_ssa, route_of, ssa_config_of  # noqa: E402
from ssa_kernels.selector.reference import block_means, block_minmax, routed_bounds  # noqa: E402
from train.eval import PromptEncoder, needle_blocks, parse_length  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from probe_answers import load  # noqa: E402  (SSA checkpoints with their routers)

SCORERS = ("mean", "token_max", "bound", "attn", "attn_max", "teacher", "teacher_max")


def summary_scores(q: Tensor, k: Tensor, block_size: int) -> dict[str, Tensor]:
    """q [H, d] (one routing query per kv head), k [H, T, d] (router keys per token) -> {"mean", "token_max",
    "bound"}: [H, nb] fp32 block scores (module doc), from the selector's own block summaries."""
    q, k = q.float(), k.float()
    mean = block_means(k, block_size)  # (H, nb, d)
    lo, hi = block_minmax(k, block_size)  # (H, nb, d): leaf_score=bound's summaries
    per_token = torch.einsum("hd,htd->ht", q, k).unsqueeze(-1)  # (H, T, 1)
    token_max = block_minmax(per_token, block_size)[1].squeeze(-1)  # (H, nb): each block's best token
    bound = torch.maximum(q[:, None] * lo, q[:, None] * hi).sum(-1)
    return {"mean": torch.einsum("hd,hnd->hn", q, mean), "token_max": token_max, "bound": bound}


def routed_only(scores: Tensor, lo: int, hi: int) -> Tensor:
    """scores [H, nb] with the blocks outside the routed range [lo, hi) set to -inf (in place; returned)."""
    scores[:, :lo], scores[:, max(hi, 0) :] = -math.inf, -math.inf  # (hi < 0: an empty range, not a slice from the end)
    return scores


def attention_scores(q: Tensor, k: Tensor, scale: float, lo: int, hi: int, block_size: int) -> dict[str, Tensor]:
    """q [Hq, D] (the answer row's attention queries, as they meet far keys), k [Hkv, T, D] -> {"attn", "attn_max"}:
    [Hkv, nb] fp32; blocks outside [lo, hi) get -inf. attn: per query head the softmax over the keys of blocks
    lo .. hi-1 summed per block, averaged over the kv head's group; attn_max: the block's largest logit, averaged
    over the group."""
    hq, hkv, t = q.shape[0], k.shape[0], k.shape[1]
    group, nb = hq // hkv, -(-t // block_size)
    a, b = lo * block_size, min(hi * block_size, t)
    logits = torch.einsum("hgd,htd->hgt", q.float().view(hkv, group, -1), k[:, a:b].float()) * scale
    full = torch.full((hkv, group, nb * block_size), -math.inf, device=k.device)
    full[..., a:b] = logits
    full = full.view(hkv, group, nb, block_size)
    if b <= a:  # nothing routable
        return {"attn": full.amax(-1).mean(1), "attn_max": full.amax(-1).mean(1)}
    mass = torch.softmax(full.flatten(2), -1).view_as(full).sum(-1).mean(1)
    return {"attn": routed_only(mass, lo, hi), "attn_max": full.amax(-1).mean(1)}


def teacher_scores(
    q: Tensor,
    k: Tensor,
    i: int,
    block_size: int,
    lo: int,
    hi: int,
    scale: float,
    far: tuple[Tensor, Tensor] | None = None,
    local_blocks: int = 1,
) -> dict[str, Tensor]:
    """q [1, Hq, T, D], k [1, Hkv, T, D] (post-RoPE; ``far`` as ``dense_block_mass`` takes it) -> {"teacher",
    "teacher_max"}: [Hkv, nb] fp32, the distillation target of query block i with its rows averaged / maxed (the
    library's own ``dense_block_mass``); blocks outside [lo, hi) get -inf."""
    blocks = torch.tensor([i], device=q.device)
    far = None if far is None else (far[0].float(), far[1].float())
    return {
        name: routed_only(
            dense_block_mass(
                q.float(), k.float(), blocks, block_size, None, scale, far=far, local_blocks=local_blocks, rows=rows
            )[0, :, 0],
            lo,
            hi,
        )
        for name, rows in (("teacher", "mean"), ("teacher_max", "max"))
    }


def needle_rank(scores: Tensor, lo: int, hi: int, needle: list[int]) -> Tensor:
    """scores [H, nb] -> [H] int64: the number of blocks in [lo, hi) scoring strictly above the best-scoring
    needle block in that range (0: the needle first), or -1 when no needle block is in the range."""
    inside = [j for j in needle if lo <= j < hi]
    if not inside:
        return torch.full((scores.shape[0],), -1, dtype=torch.long)
    best = scores[:, inside].amax(-1, keepdim=True)  # (H, 1)
    return (scores[:, lo:hi] > best).sum(-1).cpu()


def key_blocks(sample, encode, block_size: int) -> list[int]:
    """The blocks holding the gold needle's key (``... for <key> is: <value>``, RULER's needle template: the key
    just before the gold value), or [] when the prompt has no such needle. Byte-exact as ``needle_blocks``."""
    prompt = sample.prompt
    at = prompt.find(sample.answers[0]) if sample.answers and sample.answers[0] else -1
    start = prompt.rfind(" for ", 0, at) if at > 0 else -1
    end = prompt.find(" is:", start, at) if start >= 0 else -1
    if end < 0:
        return []
    first = encode(prompt[: start + len(" for ")]).shape[1]
    last = encode(prompt[:end]).shape[1] - 1
    return list(range(first // block_size, last // block_size + 1))


class RankRecorder(SSARecorder):
    """Per SSA layer call (the prompt's forward): under every scorer, the rank of the needle's value blocks and of
    its key's blocks, for the last query block."""

    def __init__(self, needle: list[int], key: list[int]):
        super().__init__(lambda call: call)  # unused: _record below keeps ranks, not the call
        self.needle, self.key = needle, key

    def _record(self, module, query: Tensor, key: Tensor, kwargs: dict) -> None:
        cfg = ssa_config_of(module.config)
        with torch.no_grad(), torch.autocast(query.device.type, enabled=False):
            t, bs = query.shape[2], cfg.block_size
            i = (t - 1) // bs  # the answer position's query block
            lo, hi = routed_bounds(None, t, cfg, query.device)
            lo, hi = int(lo[0, i]), int(hi[i])
            route = route_of(module, cfg, kwargs)  # the learned router's per-token (q, k), or None: the attention's
            rq, rk = route if route is not None else (query, key)
            hkv = rk.shape[1]
            if rq.shape[1] != hkv:  # the attention's own q: the group's mean query, as the selector pools it
                rq = rq.float().view(rq.shape[0], hkv, -1, t, rq.shape[-1]).mean(2)
            q_route = rq[0, :, i * bs : t].float().mean(1)  # (Hkv, d): the query block's mean routing query
            scores = summary_scores(q_route, rk[0], bs)
            for s in scores.values():  # the routed range only
                routed_only(s, lo, hi)
            far = _far_inputs(module, query, cfg, kwargs)  # routed blocks are far: q_far . k, k un-rotated
            q_attn = (far[0] if far is not None else query)[0, :, t - 1]  # (Hq, D)
            scale = kwargs.get("scaling") or query.shape[-1] ** -0.5
            scores.update(attention_scores(q_attn, key[0], scale, lo, hi, bs))
            if far is not None:  # as ssa_kernels.hf: local keys rotated at their positions, far ones at far_distance
                q_rot, k_rot = apply_rotary_pos_emb(query, key, *kwargs["ssa_rope"])
                target_far = (far[0], key) if cfg.distill_target == "attended" else None
                scores.update(teacher_scores(q_rot, k_rot, i, bs, lo, hi, scale, target_far, cfg.local_blocks))
            else:
                scores.update(teacher_scores(query, key, i, bs, lo, hi, scale))
            self.records[module.layer_idx] = {
                "ranks": {name: needle_rank(s, lo, hi, self.needle).tolist() for name, s in scores.items()},
                "key_ranks": {name: needle_rank(s, lo, hi, self.key).tolist() for name, s in scores.items()},
                "routable": max(hi - lo, 0),
            }


@torch.no_grad()
def probe_sample(model, tokenizer, task: str, length: int, depth: float, seed: int) -> dict:
    encode = PromptEncoder(tokenizer)
    sample = generate(task, length, tokenizer, seed, depth, "eval")
    ids = encode(sample.prompt).to(model.device)
    cfg = ssa_config_of(model.config)
    needle = needle_blocks(sample, encode, cfg.block_size)
    key = key_blocks(sample, encode, cfg.block_size)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    with RankRecorder(needle, key) as rec:
        decoder(input_ids=ids, use_cache=False)
    if not rec.records:
        raise SystemExit("needle_rank_probe: no SSA attention ran (is the checkpoint an SSA model?)")
    layers = sorted(rec.records)
    return {"task": task, "length": length, "depth": depth, "seed": seed, "prompt_tokens": ids.shape[1],
            "needle_blocks": needle, "key_blocks": key, "routable": rec.records[layers[0]]["routable"],
            "ranks": {s: [rec.records[i]["ranks"][s] for i in layers] for s in SCORERS},
            "key_ranks": {s: [rec.records[i]["key_ranks"][s] for i in layers] for s in SCORERS}}  # fmt: skip


TARGETS = {"value": ("needle_blocks", "ranks"), "key": ("key_blocks", "key_ranks")}


def summarize(rows: list[dict], topk: int) -> list[dict]:
    """Per (task, length, target, scorer), target "value" (the needle's value blocks) or "key" (its key's blocks):
    share of (sample, layer, kv head) ranking the target below ``topk`` (routed by one level of search), its median
    rank, the same share per layer, the median routable block count, and ``apart``: the share of samples whose key
    and value lie in different blocks (a router that finds the key's block then still misses the value)."""
    out = []
    for task, length in sorted({(r["task"], r["length"]) for r in rows}):
        for target, (blocks, field) in TARGETS.items():
            cell = [r for r in rows if (r["task"], r["length"]) == (task, length) and r.get(blocks)]
            if not cell:
                continue
            apart = sum(not set(r["needle_blocks"]) & set(r["key_blocks"]) for r in cell) / len(cell)
            for s in SCORERS:
                per_layer = list(zip(*[r[field][s] for r in cell]))  # layer -> samples -> heads
                flat = [v for layer in per_layer for heads in layer for v in heads if v >= 0]
                if not flat:
                    continue
                hits = [sum(0 <= v < topk for h in layer for v in h) / max(1, sum(v >= 0 for h in layer for v in h))
                        for layer in per_layer]  # fmt: skip
                out.append({"task": task, "length": length, "target": target, "scorer": s, "samples": len(cell),
                            "hit": round(sum(v < topk for v in flat) / len(flat), 3),
                            "median_rank": statistics.median(flat), "hit_per_layer": [round(h, 2) for h in hits],
                            "routable": statistics.median(r["routable"] for r in cell),
                            "apart": round(apart, 2)})  # fmt: skip
    return out


def table(summary: list[dict], topk: int) -> str:
    lines = [f"| task | length | target | scorer | samples | in top {topk} | median rank | routable | key, value apart "
             "| per layer |", "|---|---:|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in summary:
        layers = " ".join(f"{h:.2f}" for h in r["hit_per_layer"])
        lines.append(f"| {r['task']} | {r['length']} | {r['target']} | {r['scorer']} | {r['samples']} | "
                     f"{r['hit']:.2f} | {r['median_rank']:g} | {r['routable']:g} | {r['apart']:.2f} | {layers} |")  # fmt: skip
    return "\n".join(lines)


def as_dense_ssa(model, max_len: int, local_window: int):
    """Switch a dense model to SSA routing every block of prompts up to ``max_len`` tokens (so it computes its dense
    attention exactly), scored by its attention's own q / k: the probe's view of a dense checkpoint."""
    every_block = -(-max_len // SSAConfig.block_size)
    cfg = SSAConfig(topk_blocks=every_block, local_window=local_window, router="attention", routing="none")
    return convert_to_ssa(model, cfg)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="an SSA run directory, trainer checkpoint or model directory")
    p.add_argument("--tasks", nargs="+", default=["niah_multikey_2", "niah_single_1"])
    p.add_argument("--lengths", nargs="+", default=["4K"])
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--seed", type=int, default=0, help="EVAL-split seed of the first sample; one sample per depth")
    p.add_argument("--out", help="write the rows and the summary as JSON here")
    p.add_argument("--as-ssa", action="store_true", help="a dense checkpoint, probed as SSA routing every block")
    p.add_argument("--local-window", type=int, default=256, help="--as-ssa: the routed range ends before this window")
    p.add_argument("--topk", type=int, help="the top-k the shares count (default: the model's topk_blocks; 16 with "
                   "--as-ssa)")  # fmt: skip
    args = p.parse_args(argv)
    lengths = [parse_length(x, "--lengths") for x in args.lengths]
    model, tokenizer, path = load(args.checkpoint)
    if args.as_ssa:
        if getattr(model.config, "ssa", None):
            raise SystemExit(f"needle_rank_probe: --as-ssa is for dense checkpoints; {path} is an SSA model")
        as_dense_ssa(model, max(lengths), args.local_window)
    elif not getattr(model.config, "ssa", None):
        raise SystemExit(f"needle_rank_probe: {path} is not an SSA model (its config.json has no 'ssa'; a dense "
                         "checkpoint: --as-ssa)")  # fmt: skip
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    rows, t0 = [], time.perf_counter()
    for length in lengths:
        for task in args.tasks:
            for j, depth in enumerate(args.depths):
                rows.append(probe_sample(model, tokenizer, task, length, depth, args.seed + j))
    topk = args.topk or (16 if args.as_ssa else ssa_config_of(model.config).topk_blocks)
    summary = summarize(rows, topk)
    print(table(summary, topk))
    doc = {"checkpoint": str(path), "command": "python scripts/needle_rank_probe.py " + " ".join(argv or sys.argv[1:]),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - t0, 1), "topk_blocks": topk,
           "summary": summary, "rows": rows}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
