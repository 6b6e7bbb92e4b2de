"""Tiled decoder layer (parallel/tiled_layer.py): the same loss and every gradient as HF's layer for Llama,
Mistral, Qwen2 (q/k/v biases) and Qwen3 (q/k norms), with SDPA and with SSA (attention, learned and distilled routers,
far distance, packed documents), fp64, a ragged last tile, with and without activation checkpointing and combined
with the tiled MLP; one gradient event per parameter; what a layer keeps reduced to its input and what the
attention saves; the untiled path where it must be; refusals."""

import copy
import dataclasses

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from parallel import ParallelConfig, ParallelDims, parallelize
from parallel.tiled_layer import apply_tiled_layer
from ssa_kernels.config import SSAConfig
from ssa_kernels.hf import convert_to_ssa
from tests.test_tiled_mlp import check_trainer_losses_unchanged
from train.model import CausalLMLoss

T, TILE = 100, 16  # six full tiles and a ragged one of 4
H, MLP = 64, 96  # hidden size, MLP width
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),  # q/k/v projections with biases
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),  # q_norm / k_norm
}
SSA = SSAConfig(block_size=8, topk_blocks=2, local_window=16, top_nodes=4, backend="reference")
ATTENTIONS = {
    "sdpa": None,
    "ssa_attention": dataclasses.replace(SSA, router="attention"),
    "ssa_learned": SSA,  # the router reads ssa_hidden, the normed layer input
    "ssa_far": dataclasses.replace(SSA, far_distance=24),  # RoPE swapped by the attention module's pre-hook
    # the router distilled from the dense attention over the whole q / k (rows' max, far blocks as attended)
    "ssa_distill": dataclasses.replace(
        SSA, routing="distill", distill_blocks=0, distill_rows="max", far_distance=24, distill_target="attended"
    ),  # fmt: skip
}


def model(family: str = "llama", attention: str = "sdpa", dtype: torch.dtype = torch.float64) -> CausalLMLoss:
    torch.manual_seed(0)
    config_cls, model_cls, extra = FAMILIES[family]
    config = config_cls(vocab_size=128, hidden_size=H, intermediate_size=MLP, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=256, **extra)  # fmt: skip
    lm = model_cls._from_config(config, attn_implementation="sdpa", dtype=dtype)
    if ATTENTIONS[attention] is not None:
        convert_to_ssa(lm, ATTENTIONS[attention])
    lm.train()
    with torch.no_grad():  # HF zero-inits no biases; make them matter
        for p in lm.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return CausalLMLoss(lm)


def batch() -> dict[str, torch.Tensor]:
    """Two packed rows of three documents: positions restart at 0 at each."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (2, T + 1), generator=g)
    pos = torch.cat([torch.arange(n) for n in (30, 45, 25)])
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "position_ids": pos.expand(2, -1).clone()}


def loss_and_grads(m):
    loss = m(**batch())
    loss.backward()
    return loss.detach(), {n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in m.named_parameters()}


def check_same(m, ref_loss, ref):
    loss, grads = loss_and_grads(m)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    assert grads.keys() == ref.keys()  # parameter names unchanged
    for name, g in grads.items():
        assert g is not None and ref[name] is not None, name
        torch.testing.assert_close(g, ref[name], rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


CASES = [(f, "sdpa", ac) for f in FAMILIES for ac in (False, True)] + [
    ("llama", a, ac) for a in ("ssa_attention", "ssa_learned", "ssa_far", "ssa_distill") for ac in (False, True)
]


@pytest.mark.parametrize(("family", "attention", "ac"), CASES)
def test_same_loss_and_gradients_as_hf_layers(family, attention, ac):
    ref_loss, ref = loss_and_grads(model(family, attention))
    if attention in ("ssa_learned", "ssa_distill"):
        assert all(g.abs().max() > 0 for n, g in ref.items() if ".ssa_router." in n)  # else nothing is checked
    m = model(family, attention)
    dims = ParallelDims(1, 0, 0, 1, 1, torch.device("cpu"))
    run = parallelize(m, m.decoder_layers, dims, ParallelConfig(tiled_layer=TILE), activation_checkpointing=ac)
    calls = []
    for layer in m.decoder_layers:  # the tiled path must run, not HF's
        inner = getattr(layer, "_checkpoint_wrapped_module", layer)
        fwd = inner.mlp.forward
        inner.mlp.forward = lambda x, fwd=fwd: (calls.append(x.shape[1]), fwd(x))[1]
    check_same(run, ref_loss, ref)
    assert calls and max(calls) <= TILE, calls


def test_with_the_tiled_mlp_and_offloaded_activations():
    ref_loss, ref = loss_and_grads(model("qwen3", "ssa_learned"))
    m = model("qwen3", "ssa_learned")
    dims = ParallelDims(1, 0, 0, 1, 1, torch.device("cpu"))
    cfg = ParallelConfig(tiled_layer=TILE, tiled_mlp=5, offload_activations=True)
    check_same(parallelize(m, m.decoder_layers, dims, cfg, activation_checkpointing=True), ref_loss, ref)


def test_backward_recomputes_under_the_forwards_autocast():
    """bf16 autocast: the tiles recomputed in the backward run under it too (else fp32 and a different result)."""
    plain, tiled = model(dtype=torch.float32), model(dtype=torch.float32)
    apply_tiled_layer(tiled.decoder_layers, TILE)
    seen = []
    for layer in tiled.decoder_layers:
        fwd = layer.self_attn.q_proj.forward

        def spy(x, fwd=fwd):
            seen.append(torch.is_autocast_enabled("cpu"))
            return fwd(x)

        layer.self_attn.q_proj.forward = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, ref_loss = tiled(**batch()), plain(**batch())
    loss.backward()
    ref_loss.backward()
    assert len(seen) == 2 * 2 * -(-T // TILE) and all(seen), seen  # 2 layers x (forward + recompute) x tiles
    ref = dict(plain.named_parameters())
    for name, p in tiled.named_parameters():  # bf16 products summed in another order: compare norms
        err = (p.grad - ref[name].grad).norm() / ref[name].grad.norm()
        assert err < 2e-2, f"{name}: relative error {err:.3g}"


def test_one_gradient_event_per_parameter():
    m = model("qwen2", "ssa_learned")
    apply_tiled_layer(m.decoder_layers, TILE)
    counts = {}
    for name, p in m.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, n=name: counts.__setitem__(n, counts.get(n, 0) + 1))
    m(**batch()).backward()
    assert len(counts) == len(list(m.parameters())) and all(c == 1 for c in counts.values()), counts


def layer_saved_bytes(m) -> int:
    """Bytes of the distinct tensors (not parameters) that one layer's forward saves for its backward."""
    params = {p.data_ptr() for p in m.parameters()}
    seen: dict[tuple, int] = {}

    def pack(t):
        if t.data_ptr() not in params:
            seen[(t.data_ptr(), t.dtype)] = max(seen.get((t.data_ptr(), t.dtype), 0), t.untyped_storage().nbytes())
        return t

    layer = m.decoder_layers[0]
    x = torch.randn(2, T, H, dtype=torch.float64, requires_grad=True)
    pos = batch()["position_ids"]
    emb = m.lm.model.rotary_emb(x, pos)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, attention_mask=None, position_ids=pos, position_embeddings=emb)
    return sum(seen.values())


@pytest.mark.parametrize("attention", ["sdpa", "ssa_learned"])
def test_a_layer_keeps_its_input_and_what_the_attention_saves(attention):
    plain, tiled = model("llama", attention), model("llama", attention)
    apply_tiled_layer(tiled.decoder_layers, TILE)
    kept, before = layer_saved_bytes(tiled), layer_saved_bytes(plain)
    # x, cos and sin (the tiles' inputs), q, k, v (the attention's), o (post's input), fp64, [2, T, .] each
    head = H // 4
    allowed = 2 * T * 8 * (H + 2 * head + 4 * head + 2 * 2 * head + 4 * head)
    allowed += 2 * T * 8 * (4 + 4)  # the attention's LSE (and SSA's per-row statistics), a few floats a head
    allowed += 2 * -(-T // 8) * 8 * (H + 4 * head + 32)  # SSA's block-level routing: pooled input, scores, indices
    assert kept <= allowed, (kept, allowed)
    assert before >= 2.5 * kept, (before, kept)  # HF's layer keeps its intermediates: that is what is saved


def test_untiled_without_grad_and_for_short_rows():
    m = model("llama", "ssa_learned")
    with torch.no_grad():
        ref = m.lm(**{k: v for k, v in batch().items() if k != "labels"}).logits
    apply_tiled_layer(m.decoder_layers, TILE)
    calls = []
    for layer in m.decoder_layers:
        fwd = layer.mlp.forward
        layer.mlp.forward = lambda x, fwd=fwd: (calls.append(x.shape[1]), fwd(x))[1]
    with torch.no_grad():
        out = m.lm(**{k: v for k, v in batch().items() if k != "labels"}).logits
    assert calls == [T, T]  # HF's forward, whole rows
    torch.testing.assert_close(out, ref)
    short = copy.deepcopy(m)
    apply_tiled_layer(short.decoder_layers, T)  # idempotent: the first tile size stays
    assert all(layer.tiled_layer_tokens == TILE for layer in short.decoder_layers)


def test_refusals_name_the_key():
    with pytest.raises(ValueError, match="parallel.tiled_layer=0"):
        apply_tiled_layer(model().decoder_layers, 0)
    m = model()
    apply_tiled_layer(m.decoder_layers, TILE)
    x = torch.randn(2, T, H, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="without position_embeddings.*parallel.tiled_layer=0"):
        m.decoder_layers[0](x, attention_mask=None, position_ids=batch()["position_ids"])
    m = model()
    m.decoder_layers[0].self_attn.config.model_type = "gemma"
    with pytest.raises(ValueError, match="parallel.tiled_layer: .*not supported"):
        apply_tiled_layer(m.decoder_layers, TILE)


def test_trainer_with_tiled_layer_logs_the_same_losses(tmp_path, data_cache):
    check_trainer_losses_unchanged("tiled_layer", tmp_path, data_cache)
