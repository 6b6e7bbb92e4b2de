"""``SSAConfig.far_distance``: far blocks (sink and routed) attended at one fixed rotary distance, local blocks at
their true distance (``ssa_kernels/__init__.py:_attend_near_far``, ``ssa_kernels/hf.py:_far_rope``).

The op is checked against a dense fp32 oracle written here (every (query, key) logit chosen from the near or the
far pair, masked to the selection), forward and gradients, on both backends (Triton in the interpreter on CPU).
The HF glue is checked by what it must equal: decoding token by token equals the full forward under the
per-token rule; the training rule's full forward equals the per-token rule at the last token; the far logit of a
model equals q rotated by far_distance against k at position 0; and distances beyond the window no longer move
the output.
"""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from ssa_kernels import SSAConfig, select_blocks, ssa_attention
from ssa_kernels.hf import convert_to_ssa

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from tiny import tiny_hf_model  # noqa: E402

CFG = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4, router="learned", routing="none")


def dense_oracle(q, k, qf, kf, v, sel_indices, cfg, doc_ids=None):
    """[Bt, Hq, T, D]: softmax over the listed, causal, same-document keys; logits q.k for keys of the local
    window's blocks, qf.kf for the others. fp32, one [T, T] matrix per head."""
    bt, hq, t, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    blk = torch.arange(t) // cfg.block_size
    listed = torch.zeros(bt, hkv, t, t, dtype=torch.bool)
    for b in range(bt):
        for h in range(hkv):
            for i in range(sel_indices.shape[2]):
                rows = blk == i
                for j in sel_indices[b, h, i].tolist():
                    if j >= 0:
                        listed[b, h, rows.nonzero()[:, None], (blk == j).nonzero()[None, :, 0]] = True
    causal = torch.arange(t)[:, None] >= torch.arange(t)[None, :]
    far_pair = blk[None, :] <= blk[:, None] - cfg.local_blocks  # [Tq, Tk]
    mask = listed & causal
    if doc_ids is not None:
        mask &= doc_ids[:, None, :, None] == doc_ids[:, None, None, :]
    kx, kfx, vx = (x.repeat_interleave(g, 1) for x in (k, kf, v))
    maskx = mask.repeat_interleave(g, 1)
    s = torch.where(far_pair, qf @ kfx.transpose(-1, -2), q @ kx.transpose(-1, -2)) * d**-0.5
    return s.masked_fill(~maskx, float("-inf")).softmax(-1) @ vx


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("docs", [False, True], ids=["one-doc", "two-docs"])
def test_near_far_attention_equals_a_dense_oracle(backend, docs, monkeypatch):
    import ssa_kernels.attention.triton as tri

    monkeypatch.setattr(tri, "POISON", True)  # outputs and workspaces start as NaN: rows with no far block too
    g = torch.Generator().manual_seed(11)
    bt, hq, hkv, t, d = 2, 4, 2, 168, 16  # 11 blocks, the last one ragged
    q, k, qf, kf, v = (torch.randn(bt, h, t, d, generator=g) for h in (hq, hkv, hq, hkv, hkv))
    rq, rk = torch.randn(bt, hkv, t, d, generator=g), torch.randn(bt, hkv, t, d, generator=g)
    doc_ids = (torch.arange(t) >= 72).long().expand(bt, t).contiguous() if docs else None
    leaves = [x.clone().requires_grad_() for x in (q, k, qf, kf, v)]
    out = ssa_attention(
        leaves[0], leaves[1], leaves[4], CFG, doc_ids=doc_ids, backend=backend, route=(rq, rk),
        far=(leaves[2], leaves[3]),
    )  # fmt: skip
    sel = select_blocks(rq, rk, CFG, doc_ids)
    ref_leaves = [x.clone().requires_grad_() for x in (q, k, qf, kf, v)]
    ref = dense_oracle(*ref_leaves, sel.indices, CFG, doc_ids)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * w).sum(), ref_leaves)
    for name, a, b in zip(["q", "k", "q_far", "k_far", "v"], grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    # both halves matter: far blocks exist, and with far = (q, k) the op is plain SSA, which differs here
    far_listed = (sel.indices >= 0) & (sel.indices <= torch.arange(11).view(11, 1) - CFG.local_blocks)
    assert far_listed.any() and (~far_listed & (sel.indices >= 0)).any()
    plain = ssa_attention(q, k, v, CFG, doc_ids=doc_ids, backend=backend, route=(rq, rk))
    torch.testing.assert_close(ssa_attention(q, k, v, CFG, doc_ids=doc_ids, backend=backend, route=(rq, rk),
                                             far=(q, k)), plain, rtol=1e-4, atol=1e-5)  # fmt: skip
    assert (out - plain).abs().max() > 1e-2


HF_FAR = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4, far_distance=40)


def far_model(rule="causal_rows", dtype=torch.float64):
    model = convert_to_ssa(tiny_hf_model("llama", dtype).eval(), HF_FAR)
    model.config.ssa = {**model.config.ssa, "rule": rule}
    return model


@torch.no_grad()
def test_far_decoding_equals_the_full_forward_and_the_training_rule():
    model = far_model()
    ids = torch.randint(0, 97, (1, 200), generator=torch.Generator().manual_seed(3))
    full = model(ids, use_cache=False).logits
    cache = DynamicCache(config=model.config)
    steps = [model(ids[:, :97], past_key_values=cache, use_cache=True).logits]
    for t in range(97, 200):
        steps.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-10)
    # the cache holds un-rotated keys: layer 0's first key is k_proj of the embedding's norm, position aside
    layer0 = model.model.layers[0]
    k0 = layer0.self_attn.k_proj(layer0.input_layernorm(model.model.embed_tokens(ids[:, :1])))
    torch.testing.assert_close(cache.layers[0].keys[0, :, 0], k0.view(2, 16), rtol=1e-10, atol=1e-10)
    # the training rule (per query block, the sparse-attention op) agrees with the per-token rule at the last
    # token of the sequence, in layer 0 (whose input does not depend on the rule)
    seen = []
    hook = layer0.self_attn.register_forward_hook(lambda m, a, out: seen.append(out[0][:, -1]))
    for rule in ("causal_rows", "block"):
        model.config.ssa = {**model.config.ssa, "rule": rule}
        model(ids, use_cache=False)
    hook.remove()
    torch.testing.assert_close(seen[1], seen[0], rtol=1e-6, atol=1e-8)
    # and far_distance 0 is another model: the switch is read at each call
    model.config.ssa = {**model.config.ssa, "far_distance": 0}
    assert (model(ids, use_cache=False).logits[:, -1] - full[:, -1]).abs().max() > 1e-3


@torch.no_grad()
def test_far_keys_meet_the_query_at_far_distance():
    """The far logit is the model's own rotary at distance far_distance: q rotated at position p + 40 against
    k rotated at p, for any p (here with YaRN's attention factor in the rotary, which must scale both)."""
    from ssa_kernels.decode.reference import rope_at, rotate
    from ssa_kernels.hf import _far_inputs

    model = far_model()
    model.config.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                                    "rope_theta": 10000.0}  # fmt: skip
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    attn = model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(1, 4, 3, 16, generator=g, dtype=torch.float64), torch.randn(1, 2, 3, 16, generator=g).double()
    kwargs = {"ssa_rope": None, "ssa_rotary": model.model.rotary_emb}
    q_far, _ = _far_inputs(attn, q, HF_FAR, kwargs)
    for p in (0, 7, 1000):
        cq, sq = rope_at(model.model.rotary_emb, q, torch.tensor([p + 40]))
        ck, sk = rope_at(model.model.rotary_emb, k, torch.tensor([p]))
        want = rotate(q, cq.double(), sq.double())[:, :2] @ rotate(k, ck.double(), sk.double()).transpose(-1, -2)
        torch.testing.assert_close(q_far[:, :2] @ k.transpose(-1, -2), want, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_far_blocks_no_longer_see_their_distance():
    """Two documents that differ only in filler between the start (sink) and the end: with far_distance the
    last token's output does not depend on how many filler blocks lie between, when the routed blocks are
    the same content. Checked with all-identical filler blocks, so the selection keeps the same content."""
    model = far_model(rule="block")
    model.config.ssa = {**model.config.ssa, "topk_blocks": 0}  # sink + local window: the sink is far
    g = torch.Generator().manual_seed(6)
    head, tail = torch.randint(0, 97, (1, 16), generator=g), torch.randint(0, 97, (1, 48), generator=g)
    outs = {}
    for far in (40, 0):
        model.config.ssa = {**model.config.ssa, "far_distance": far}
        seqs = [torch.cat([head, torch.full((1, 16 * n), 5), tail], 1) for n in (2, 9)]
        outs[far] = [model(x, use_cache=False).logits[:, -1] for x in seqs]
    # the sink is the only far block; layer 0 sees the same sink content and the same local window, so with a
    # fixed far distance the last token's logits are the same whatever lies between (layer 1 too: its inputs
    # at the sink and in the window are layer 0's outputs there, which are equal for the same reason)
    # (to the float32 rounding of the rotary angles at different absolute positions, ~1e-8 here)
    moved = {far: (a - b).abs().max().item() for far, (a, b) in outs.items()}
    assert moved[40] < 1e-6 and moved[0] > 1e-3, moved  # true distances move it


def test_far_distance_needs_a_learned_router():
    with pytest.raises(ValueError, match="attention.far_distance"):
        dataclasses.replace(HF_FAR, router="attention").validate()
    with pytest.raises(ValueError, match="attention.far_distance"):
        dataclasses.replace(HF_FAR, far_distance=-1).validate()


@pytest.mark.parametrize(
    "override,key",
    [
        ("+ssa_settings.bogus=1", "ssa_settings.bogus"),
        ("++ssa_settings={far_distance:-1}", "ssa_settings.far_distance"),
    ],
)
def test_eval_ssa_settings_name_the_key(override, key):
    from hydra import compose, initialize_config_dir

    from train.config import ConfigError
    from train.eval import CONF_DIR, to_eval_config

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[override])
    with pytest.raises(ConfigError, match=key):
        to_eval_config(cfg)


def test_a_training_step_with_far_blocks_reaches_every_weight():
    """Training path (block rule, routing=distill): finite loss, gradients on the attention projections through
    both halves and on the learned router through the distillation loss."""
    model = convert_to_ssa(tiny_hf_model("llama").train(), dataclasses.replace(HF_FAR, routing="distill"))
    ids = torch.randint(0, 97, (2, 160), generator=torch.Generator().manual_seed(8))
    loss = model(ids, labels=ids, use_cache=False).loss
    loss.backward()
    attn = model.model.layers[0].self_attn
    for name, p in [
        ("q_proj", attn.q_proj.weight),
        ("k_proj", attn.k_proj.weight),
        ("router.q", attn.ssa_router.q.weight),
    ]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
