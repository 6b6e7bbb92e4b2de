"""Small experiments on the SSA mechanism that tests and scripts share.

``train_block_retrieval`` trains a tiny Llama converted to SSA on ``data.tasks.block_retrieval`` and
tracks answer accuracy and the router's hit rate on the needle block (the share of examples whose last
query block routes to it, for the best (layer, kv head)), so routing mechanisms can be compared.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from data.tasks import FILLER, block_retrieval
from ssa_kernels import SSAConfig
from ssa_kernels.diagnostics import SSARecorder
from ssa_kernels.hf import convert_to_ssa


@torch.no_grad()
def evaluate(
    model,
    cfg: SSAConfig,
    seq_len: int,
    num_keys: int,
    n: int = 64,
    seed: int = 1234,
    needle_tokens: int = 0,
    distractors: bool = False,
) -> tuple[float, float]:
    """(answer accuracy, needle hit rate of the best (layer, kv head)) on n fresh examples."""
    g = torch.Generator().manual_seed(seed)
    ids, answer, needle = block_retrieval(n, seq_len, cfg.block_size, g, num_keys, needle_tokens=needle_tokens,
                                          distractors=distractors)  # fmt: skip
    # per layer, the routed blocks of the last query block: [batch, kv_heads, topk]
    with SSARecorder(lambda call: call.selection.routed[:, :, -1]) as recorder:
        logits = model(ids).logits[:, -1]
    accuracy = (logits.argmax(-1) == answer).float().mean().item()
    # per (layer, kv head): share of examples routed to the needle; the best one is the head doing retrieval
    # (one is enough for the task, so the others have no reason to learn it)
    hits = [(r == needle.view(-1, 1, 1)).any(-1).float().mean(0).max().item() for r in recorder.records.values()]
    return accuracy, max(hits)


def train_block_retrieval(
    routing: str,
    steps: int,
    seed: int = 0,
    seq_len: int = 256,
    block_size: int = 16,
    topk_blocks: int = 2,
    num_keys: int = 32,
    batch: int = 16,
    lr: float = 3e-3,
    eval_every: int = 50,
    dense_steps: int = 0,
    rope_theta: float = 10000.0,
    return_model: bool = False,
    far_distance: int = 0,
    ssa: dict | None = None,
    needle_tokens: int = 0,
    distractors: bool = False,
):
    """Train from scratch; returns [{step, loss, accuracy, hit_rate, router_change, seconds}] at every eval
    (with ``return_model``: that list and the trained model).

    ``dense_steps``: the first steps route every block (a budget covering the whole routed range, so the
    attention is dense and no routing is contested), the warm-up a dense model gets before going sparse;
    evaluations always use the ``topk_blocks`` budget. ``far_distance``: ``SSAConfig.far_distance`` in training
    (and in its evaluations). ``ssa``: other ``SSAConfig`` fields (e.g. ``{"distill_target": "attended"}``).
    ``needle_tokens``, ``distractors``: ``block_retrieval``'s (a needle of that many tokens inside its block, 0: the
    whole block; other keys' runs in every other block)."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "llama", vocab_size=FILLER + 2 * num_keys, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq_len, attn_implementation="sdpa",
        rope_theta=rope_theta,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).float()
    cfg = SSAConfig(
        block_size=block_size, topk_blocks=topk_blocks, local_window=2 * block_size, top_nodes=4, routing=routing,
        far_distance=far_distance, **(ssa or {}),
    )  # fmt: skip
    convert_to_ssa(model, cfg)
    sparse_budget, dense_budget = dict(model.config.ssa), {**model.config.ssa, "topk_blocks": seq_len // block_size}
    router_init = {n: p.detach().clone() for n, p in model.named_parameters() if ".ssa_router." in n}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    data = torch.Generator().manual_seed(seed + 1)
    history, t0 = [], time.perf_counter()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            model.config.ssa = sparse_budget  # the layers read their settings from the config at every call
            accuracy, hit_rate = evaluate(
                model, cfg, seq_len, num_keys, needle_tokens=needle_tokens, distractors=distractors
            )
            # how far the learned routers moved from their initialisation (max abs weight change)
            moved = max(
                (p - router_init[n]).abs().max().item() for n, p in model.named_parameters() if n in router_init
            )
            history.append(
                {
                    "step": step,
                    "accuracy": accuracy,
                    "hit_rate": hit_rate,
                    "router_change": moved,
                    "seconds": time.perf_counter() - t0,
                }
            )
        if step == steps:
            break
        model.config.ssa = dense_budget if step < dense_steps else sparse_budget
        ids, answer, _ = block_retrieval(
            batch, seq_len, block_size, data, num_keys, needle_tokens=needle_tokens, distractors=distractors
        )
        loss = F.cross_entropy(model(ids).logits[:, -1], answer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history[-1].setdefault("loss", loss.item())
    return (history, model) if return_model else history
