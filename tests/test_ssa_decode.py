"""SSA decoding with a KV cache: token-by-token decode steps against the full forward under the same
(causal per-token) selection rule, that rule against the training path on each prefix, the state's
incremental prefix sums, the memory of a step, and HF generation."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._pytree import tree_flatten
from transformers import AutoModelForCausalLM, DynamicCache

from ssa_kernels import SSAConfig, select_blocks, ssa_attention
from ssa_kernels.decode import DecodeState, causal_rows_attention, ssa_decode_step
from ssa_kernels.decode.reference import _union_rows
from ssa_kernels.diagnostics import DecodeRouteRecorder, SSARecorder, blocks_listed
from ssa_kernels.hf import apply_nope_layers, convert_to_ssa, enable_ssa_decode, from_pretrained
from ssa_kernels.selector.reference import _key_prefix, _union

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from memprobe import MaxTensorProbe  # noqa: E402
from tiny import tiny_hf_model  # noqa: E402

# Sparse enough that routing is contested (up to ~35 candidate blocks for 2-3 slots) over 3 pyramid levels.
SPARSE = {"block_size": 16, "topk_blocks": 2, "local_window": 32, "top_nodes": 4, "routing": "none"}
# Up to 6 levels and a greedy top (beam 1): here the pyramid's height, which grows with the prefix, changes
# the choice (with beams at least as wide as the top level, an extra level above it changes nothing).
DEEP = {
    "block_size": 8,
    "branching": 2,
    "topk_blocks": 2,
    "local_window": 16,
    "top_nodes": 4,
    "beam_widths": [1, 2],
    "routing": "none",
}


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Decoding is thousands of tiny ops: intra-op threads only add a barrier per op (seen here at ~10 ms
    each on an oversubscribed 2-core machine, 10x the whole file's run time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_qkv(bt, hq, hkv, t, d, dtype, seed):
    # Independent tokens: block summaries are close to each other, so routing is contested (structured
    # data, e.g. a shared random walk, makes the per-token and per-block choices agree far more often).
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bt, h, t, d, generator=g, dtype=torch.float64).to(dtype) for h in (hq, hkv, hkv)]


class NewStorageProbe(MaxTensorProbe):
    """Largest tensor an op allocates: outputs that share storage with an input (views of the KV cache
    or of the state's prefix buffer, in-place updates) are not counted."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = tree_flatten((args, kwargs))[0]
        seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            fresh = isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen
            if fresh and t.numel() > self.max_numel:
                self.max_numel, self.max_op = t.numel(), f"{func} {tuple(t.shape)}"
        return out


def make_doc_ids(bt, t, starts):
    doc = torch.zeros(bt, t, dtype=torch.long)
    for s in starts:
        doc[:, s:] += 1
    return doc


def test_union_rows_is_the_selector_union_at_any_block():
    cfg = SSAConfig(block_size=4, topk_blocks=3, local_window=12, sink_blocks=2)
    nb = 20
    routed = torch.randint(-1, nb, (2, 3, nb, 3)).sort(-1).values
    assert torch.equal(_union_rows(routed, torch.arange(nb), cfg), _union(routed, cfg))
    rows = torch.tensor([7, 0, 19])
    assert torch.equal(_union_rows(routed[:, :, rows], rows, cfg), _union(routed, cfg)[:, :, rows])


@pytest.mark.parametrize(
    "docs,cfg",
    [
        (False, {**SPARSE, "topk_blocks": 3}),
        (True, {**SPARSE, "topk_blocks": 3}),
        (False, DEEP),
        (True, {**DEEP, "node_score": "bound"}),
        (True, {**DEEP, "leaf_score": "bound"}),
    ],
    ids=["sparse", "sparse-docs", "deep", "deep-docs-bound", "deep-docs-leaf-bound"],
)
def test_per_token_rule_is_the_training_path_on_each_prefix(docs, cfg):
    """causal_rows_attention at t == ssa_attention over tokens 0..t, at its last token (whose query block
    is t's block so far), for every kind of t: block ends, mid-block, document starts."""
    cfg = SSAConfig(**cfg)
    q, k, v = make_qkv(2, 4, 2, 333, 16, torch.float64, seed=1)
    doc_ids = make_doc_ids(2, 333, [150, 201]) if docs else None
    out = causal_rows_attention(q, k, v, cfg, doc_ids)
    for t in [0, 15, 16, 40, 95, 150, 151, 170, 201, 255, 271, 300, 319, 332]:
        d = doc_ids[:, : t + 1] if docs else None
        want = ssa_attention(q[:, :, : t + 1], k[:, :, : t + 1], v[:, :, : t + 1], cfg, d)[:, :, t]
        torch.testing.assert_close(out[:, :, t], want, rtol=1e-4, atol=1e-5)  # sparse_attention runs in fp32
    # Not vacuous: mid-block tokens do select differently from their whole block's mean query.
    full = ssa_attention(q, k, v, cfg, doc_ids)
    assert (out - full).abs().amax(dim=(0, 1, 3)).gt(1e-3).sum() > 50


def test_training_on_the_whole_sequence_equals_per_token_rule_at_block_ends():
    cfg = SSAConfig(block_size=16, topk_blocks=3, local_window=32, top_nodes=2, branching=4, routing="none")
    q, k, v = make_qkv(1, 4, 2, 2048, 16, torch.float64, seed=0)
    ends = torch.arange(15, 2048, 16)
    got = causal_rows_attention(q, k, v, cfg)[:, :, ends]
    torch.testing.assert_close(ssa_attention(q, k, v, cfg)[:, :, ends], got, rtol=1e-5, atol=1e-6)


DECODE_CASES = {
    # bt, hq, hkv, T, prompt, config, dtype, documents (starts; the last one during decoding)
    "B2-Hq4-Hkv2-T437-empty-top2-fp64": (2, 4, 2, 437, 0, SPARSE, torch.float64, []),
    "B1-Hq6-Hkv2-T600-pre123-top3-fp64": (1, 6, 2, 600, 123, {**SPARSE, "topk_blocks": 3}, torch.float64, []),
    "B2-Hq4-Hkv1-T333-pre48-top2-fp32": (2, 4, 1, 333, 48, SPARSE, torch.float32, []),
    "B2-Hq4-Hkv2-T401-pre130-top2-docs": (2, 4, 2, 401, 130, SPARSE, torch.float64, [70, 100, 250]),
    "B1-Hq4-Hkv2-T500-pre61-deep-fp64": (1, 4, 2, 500, 61, DEEP, torch.float64, []),
    "B2-Hq4-Hkv2-T420-pre61-deep-bound-docs": (
        2,
        4,
        2,
        420,
        61,
        {**DEEP, "node_score": "bound"},
        torch.float64,
        [90, 300],
    ),
    "B2-Hq4-Hkv2-T420-pre61-deep-leaf-bound-docs": (
        2,
        4,
        2,
        420,
        61,
        {**DEEP, "node_score": "bound", "leaf_score": "bound"},
        torch.float64,
        [90, 300],
    ),
}


@pytest.mark.parametrize("case", DECODE_CASES.values(), ids=DECODE_CASES.keys())
def test_decode_steps_equal_the_per_token_rule_forward(case):
    bt, hq, hkv, seq_len, prompt, cfg, dtype, starts = case
    cfg = SSAConfig(**cfg)
    blk = cfg.block_size
    q, k, v = make_qkv(bt, hq, hkv, seq_len, 16, dtype, seed=seq_len)
    doc_ids = make_doc_ids(bt, seq_len, starts) if starts else None
    want = causal_rows_attention(q, k, v, cfg, doc_ids)
    if prompt:
        state = DecodeState.from_prefill(
            q[:, :, :prompt], k[:, :, :prompt], cfg, None if doc_ids is None else doc_ids[:, :prompt]
        )
    else:
        state = DecodeState.empty(bt, hkv, 16, cfg)
    got = torch.full_like(want[:, :, prompt:], torch.nan)
    for t in range(prompt, seq_len):
        doc_t = None if doc_ids is None else doc_ids[:, t]
        got[:, :, t - prompt] = ssa_decode_step(
            q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1], state, cfg, doc_id=doc_t
        )[:, :, 0]
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(got, want[:, :, prompt:], **tol)
    # The incrementally updated state is what a recomputation over the whole cache gives.
    nb = state.num_blocks
    prefix = _key_prefix(k, blk)
    assert state.length == seq_len and state.prefix.shape[2] > nb  # the buffer grew (or had room), never shrank
    torch.testing.assert_close(state.prefix[:, :, : nb + 1], prefix, rtol=1e-12, atol=1e-9)
    assert not state.prefix[:, :, nb + 1 :].any()
    last = q[:, :, (nb - 1) * blk :].unflatten(1, (hkv, hq // hkv)).sum((2, 3), dtype=torch.float64)
    torch.testing.assert_close(state.query_sum, last, rtol=1e-12, atol=1e-9)


def test_decode_rejects_a_cache_it_does_not_continue():
    cfg = SSAConfig(**SPARSE)
    q, k, v = make_qkv(1, 2, 1, 80, 16, torch.float32, seed=5)
    state = DecodeState.from_prefill(q[:, :, :79], k[:, :, :79], cfg)
    k_other = k.clone()
    k_other[:, :, 78] += 1
    with pytest.raises(ValueError, match="does not continue"):
        ssa_decode_step(q[:, :, 79:], k_other, v, state, cfg)
    with pytest.raises(ValueError, match="state.length"):
        ssa_decode_step(q[:, :, 79:], k[:, :, :79], v[:, :, :79], state, cfg)


def test_decode_step_memory_does_not_grow_with_the_cache():
    """No O(T * D) tensor in a step: the pyramid is read from the incremental prefix sums and only the
    selected blocks are gathered from the cache. Every tensor a step touches is < T*D/4 elements (views
    of the state's [nb + 1, D] buffer included), and what it allocates is the same at 2K and 8K tokens."""
    cfg = SSAConfig(**SPARSE)
    allocated = {}
    for seq_len in (2048, 8192):
        q, k, v = make_qkv(1, 2, 1, seq_len, 16, torch.float32, seed=2)
        state = DecodeState.from_prefill(q[:, :, :-1], k[:, :, :-1], cfg)
        with torch.no_grad(), MaxTensorProbe() as touched, NewStorageProbe() as made:
            out = ssa_decode_step(q[:, :, -1:], k, v, state, cfg)
        torch.testing.assert_close(out, causal_rows_attention(q, k, v, cfg)[:, :, -1:], rtol=1e-5, atol=1e-6)
        assert touched.max_numel < seq_len * 16 / 4, touched.max_op
        allocated[seq_len] = made.max_numel
    # the largest new tensor: the gathered keys, (1 + 2 + 2) blocks x B x D, or a beam's child summaries
    bound = max(5 * 16 * 16, cfg.beam_min * cfg.branching * 16)
    assert allocated[8192] == allocated[2048] <= bound, allocated


# --- HF generation ------------------------------------------------------------------------------

HF_SSA = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4)


def tiny_ssa_model(arch, dtype=torch.float32, rule="causal_rows"):
    model = convert_to_ssa(tiny_hf_model(arch, dtype).eval(), HF_SSA)
    model.config.ssa = {**model.config.ssa, "rule": rule}  # uncached forwards select like decoding
    return model


# fp32 on llama; fp64 on qwen3 (fp32 noise between a 1-token and a T-token forward could in principle flip a
# near-tied routing choice: the fp64 case checks the rule without that risk). Llama feeds one token at a time
# from the first; qwen3 prefills 97 tokens, then feeds 1, 2 or 3 tokens per forward.
# The third case makes layer 0 NoPE (model.nope_layers): its keys enter the cache unrotated.
@pytest.mark.parametrize(
    "arch,dtype,prompt,chunks,nope",
    [("llama", torch.float32, 1, [1], []), ("qwen3", torch.float64, 97, [1, 3, 2], []),
     ("qwen3", torch.float64, 97, [1, 3, 2], [0])],
    ids=["llama-fp32-from1", "qwen3-fp64-pre97-chunks", "qwen3-fp64-nope0"],
)  # fmt: skip
@torch.no_grad()
def test_hf_incremental_logits_equal_a_full_forward(arch, dtype, prompt, chunks, nope):
    model = tiny_ssa_model(arch, dtype)
    if nope:
        model.config.nope_layers = nope
        apply_nope_layers(model)
        assert hasattr(model.model.layers[0].self_attn, "_nope_hook")
    ids = torch.randint(0, 97, (1, 300), generator=torch.Generator().manual_seed(3))
    full_out = model(ids, use_cache=False, output_hidden_states=True)
    full = full_out.logits
    cache = DynamicCache(config=model.config)
    steps = [model(ids[:, :prompt], past_key_values=cache, use_cache=True).logits]
    t = prompt
    while t < ids.shape[1]:
        n = chunks[len(steps) % len(chunks)]
        steps.append(model(ids[:, t : t + n], past_key_values=cache, use_cache=True).logits)
        t += n
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **tol)
    # The per-layer prefix sums of the routing keys, grown token by token, equal a recomputation from the
    # learned router on the layer's input.
    for layer, state in cache.ssa_decode_states.items():
        decoder_layer = model.model.layers[layer]
        _, keys = decoder_layer.self_attn.ssa_router(decoder_layer.input_layernorm(full_out.hidden_states[layer]))
        assert state.length == keys.shape[2] == ids.shape[1] == cache.layers[layer].keys.shape[2]
        prefix_tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-9}
        torch.testing.assert_close(state.prefix[:, :, : state.num_blocks + 1], _key_prefix(keys, 16), **prefix_tol)


@torch.no_grad()
def test_hf_generate_equals_greedy_over_repeated_full_forwards():
    model = tiny_ssa_model("llama")
    prompt = torch.randint(0, 97, (2, 200), generator=torch.Generator().manual_seed(4))
    seq = model.generate(prompt, max_new_tokens=40, do_sample=False)
    assert seq.shape == (2, 240) and torch.equal(seq[:, :200], prompt)
    want = prompt
    for _ in range(40):
        nxt = model(want, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        want = torch.cat([want, nxt], dim=1)
    assert torch.equal(seq, want)


@torch.no_grad()
def test_hf_generate_with_the_training_rule_and_after_loading(tmp_path):
    """Default rule: the prompt runs the training path, new tokens the per-token rule. ``from_pretrained``
    restores the learned routers and the decode hooks; a model without routers loaded by HF's own loader
    needs enable_ssa_decode before generating with a cache."""
    model = tiny_ssa_model("qwen3", rule="block")
    prompt = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(5))
    seq = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert seq.shape == (1, 162)
    assert seq[0, 150] == model(prompt, use_cache=False).logits[0, -1].argmax()  # prefill = training path
    model.save_pretrained(tmp_path / "learned")
    loaded = from_pretrained(tmp_path / "learned").eval()
    assert torch.equal(loaded.generate(prompt, max_new_tokens=12, do_sample=False), seq)

    model = convert_to_ssa(tiny_hf_model("qwen3").eval(), dataclasses.replace(HF_SSA, router="attention"))
    seq = model.generate(prompt, max_new_tokens=12, do_sample=False)
    model.save_pretrained(tmp_path / "attention")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "attention", attn_implementation="ssa").eval()
    with pytest.raises(RuntimeError, match="enable_ssa_decode"):
        loaded.generate(prompt, max_new_tokens=2, do_sample=False)
    assert torch.equal(enable_ssa_decode(loaded).generate(prompt, max_new_tokens=12, do_sample=False), seq)


@pytest.mark.parametrize("cfg", [SPARSE, DEEP], ids=["sparse", "deep"])
def test_state_route_is_the_block_rule_at_the_last_token(cfg):
    """DecodeState.route (what a decode step attends, and what DecodeRouteRecorder reports) equals the
    training selector's last query block over the same prefix, after a prefill and after each appended token,
    at block ends and mid-block (the block rule's mean query is then the partial block's)."""
    cfg = SSAConfig(**cfg)
    q, k, _ = make_qkv(2, 4, 2, 300, 16, torch.float64, seed=7)
    state = DecodeState.from_prefill(q[:, :, :200], k[:, :, :200], cfg)
    seen = set()
    for t in range(199, 300):
        if t > 199:
            state.append(q[:, :, t], k[:, :, t], cfg)
        got = state.route(cfg, torch.float64)
        want = select_blocks(q[:, :, : t + 1], k[:, :, : t + 1], cfg).indices[:, :, -1:]
        assert torch.equal(got, want), t
        seen.add(tuple(got[0, 0, 0].tolist()))
    assert len(seen) > 10  # not vacuous: the routed blocks change along the way


@torch.no_grad()
def test_decode_route_recorder_sees_the_prefill_selection_then_every_step():
    """The first record (the prompt's last token) is the prefill's own last-block selection (recorded by
    SSARecorder from the training path), then one record per decode step, for every layer; the model's
    output is unchanged by recording."""
    model = tiny_ssa_model("llama", rule="block")
    prompt = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(8))
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False)
    with SSARecorder(lambda call: call.selection.indices[:, :, -1:].clone()) as prefill:
        with DecodeRouteRecorder(lambda layer, indices: indices.clone()) as rec:
            seq = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(seq, plain)
    assert sorted(rec.records) == list(range(149, 155)) and all(sorted(r) == [0, 1] for r in rec.records.values())
    for layer in (0, 1):
        assert torch.equal(rec.records[149][layer], prefill.records[layer])
    assert blocks_listed(rec.records[149][0], [9]).all()  # block 9 (tokens 144-159) is the local one
    assert not blocks_listed(rec.records[149][0], list(range(10))).any()  # 2 routed + 2 local + sink < 10
