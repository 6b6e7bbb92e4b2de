"""Sequence-tiled decoder layer (``parallel.tiled_layer``; any rung, a piece for the longest sequences).

With activation checkpointing, the one layer being recomputed holds ~``40 H + 9 I`` bytes per token
(``parallel/plan.py``): at 1M tokens 80 GiB for a 1B model, 160 GiB for an 8B one, whatever the rung. The tiled
MLP (``parallel/tiled_mlp.py``) removes the ``9 I``; the ``40 H`` is the attention half's: RMSNorm's fp32
copies, the bf16 casts of the normed input saved by each of q/k/v_proj, q and k before and after RoPE, the
fp32 residual and the post-attention norm.

Only the attention core needs the whole sequence at once; everything else in a Llama-family layer works per
token. Here a layer runs as
  1. ``q, k, v = pre(x)``: input RMSNorm, q/k/v projections, Qwen3's q/k norms, RoPE, tile by tile;
  2. the model's attention function (SDPA, SSA, the Ulysses or ring wrappers) on the whole q, k, v;
  3. ``out = post(x, o)``: o_proj, residual, post-attention RMSNorm, MLP, residual, tile by tile;
1 and 3 through :class:`~parallel.tiled_mlp.SequenceTiled`, which keeps only its inputs and recomputes one
tile at a time in the backward. What the layer keeps is then x (the checkpoint's input anyway) and what the
attention saves (q, k, v, o and its LSE: ``4 (Hq + Hkv) d`` bytes per token in bf16), about ``10 H`` for
Llama shapes instead of ``40 H``. The cost is one more forward of the layer's token-wise part in the
backward (as the tiled MLP already pays for its part).

The attention module is still called through its ``__call__``, so its forward pre-hooks (SSA's router input
and decode states, far-distance RoPE, NoPE layers) run as without tiling; its forward is replaced to take
the layer input and tile around the attention function. The learned SSA router gets the normed input
(``ssa_hidden``), computed without grad as it is detached anyway. Written here because neither transformers
nor DeepSpeed tiles the attention half (ALST's sequence tiling covers the MLP and the loss).

Supported: the layer and attention of Llama, Mistral, Qwen2 and Qwen3 (``SUPPORTED``). Without grad (evaluation,
generation) or with a KV cache, and for sequences of at most one tile, the layer runs as HF wrote it.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import nn

from parallel.tiled_mlp import sequence_tiled

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def _params(*modules: nn.Module) -> list[torch.Tensor]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def _pre(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """The token-wise part before the attention function, as the families' attention forwards write it:
    [B, t, H] -> q [B, t, Hq, d], k and v [B, t, Hkv, d] (HF's storage; the attention gets them transposed)."""
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    shape = (*h.shape[:-1], -1, attn.head_dim)
    q, k, v = attn.q_proj(h).view(shape), attn.k_proj(h).view(shape), attn.v_proj(h).view(shape)
    if hasattr(attn, "q_norm"):  # Qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    q, k = rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    return q.transpose(1, 2), k.transpose(1, 2), v


def _post(layer: nn.Module, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """The token-wise part after the attention function: [B, t, H] layer input, [B, t, Hq d] attention output."""
    h = x + layer.self_attn.o_proj(o)
    return h + layer.mlp(layer.post_attention_layernorm(h))


def _attention_forward(layer, original, tile, *args, ssa_tiled_layer: bool = False, **kwargs):
    """The attention module's forward. Called by :func:`_layer_forward` (``ssa_tiled_layer``) with the layer's
    un-normed input: q/k/v tile by tile, the model's attention function, and the output before o_proj."""
    if not ssa_tiled_layer:
        return original(*args, **kwargs)
    attn = layer.self_attn
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if kwargs.get("position_embeddings") is None:
        raise ValueError(
            f"parallel.tiled_layer: {type(attn).__name__} was called without position_embeddings=(cos, sin), which "
            "the tiles need (transformers >= 5 passes them); set parallel.tiled_layer=0"
        )
    x, (cos, sin) = kwargs.pop("hidden_states"), kwargs.pop("position_embeddings")
    mask = kwargs.pop("attention_mask", None)
    for key in ("cache", "past_key_values"):  # None: a cache sends the layer down HF's own path
        kwargs.pop(key, None)
    pre = functools.partial(_pre, layer)
    q, k, v = sequence_tiled(pre, _params(layer.input_layernorm, attn.q_proj, attn.k_proj, attn.v_proj,
                                          *[getattr(attn, n) for n in ("q_norm", "k_norm") if hasattr(attn, n)]),
                             tile, x, cos, sin)  # fmt: skip
    family = sys.modules[type(attn).__module__]
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, family.eager_attention_forward)
    if attn.config.model_type in ("qwen2", "qwen3"):  # what those families pass besides Llama's arguments
        kwargs["sliding_window"] = attn.sliding_window
    elif attn.config.model_type == "mistral":
        kwargs["sliding_window"] = getattr(attn.config, "sliding_window", None)
    out, _ = interface(attn, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask,
                       dropout=attn.attention_dropout if attn.training else 0.0, scaling=attn.scaling, **kwargs)  # fmt: skip
    return out.reshape(*x.shape[:-1], -1), None


def _layer_forward(layer, original, tile, hidden_states, *args, **kwargs):
    x = hidden_states
    cached = kwargs.get("cache", kwargs.get("past_key_values")) is not None
    if args or cached or not torch.is_grad_enabled() or x.shape[1] <= tile:
        return original(hidden_states, *args, **kwargs)
    attn = layer.self_attn
    if hasattr(attn, "ssa_router"):  # SSA's learned router reads the normed layer input, detached
        with torch.no_grad():
            kwargs["ssa_hidden"] = layer.input_layernorm(x)
    o, _ = attn(hidden_states=x, ssa_tiled_layer=True, **kwargs)
    post = functools.partial(_post, layer)
    params = _params(attn.o_proj, layer.post_attention_layernorm, layer.mlp)
    return sequence_tiled(post, params, tile, x, o)


def apply_tiled_layer(decoder_layers: nn.ModuleList, tile: int) -> None:
    """Run every layer's token-wise parts over tiles of ``tile`` tokens, in place (forwards replaced, modules
    kept: parameter names, state dicts and checkpoints stay unchanged)."""
    if tile < 1:
        raise ValueError(f"parallel.tiled_layer={tile}: tokens per tile must be >= 1 (0 turns tiling off)")
    for layer in decoder_layers:
        model_type = getattr(getattr(layer.self_attn, "config", None), "model_type", None)
        if model_type not in SUPPORTED or not all(hasattr(layer, n) for n in ("input_layernorm", "mlp")):
            raise ValueError(
                f"parallel.tiled_layer: {type(layer).__name__} (model_type {model_type!r}) is not supported; "
                f"it tiles the layers of {', '.join(SUPPORTED)}. Use parallel.tiled_mlp, or 0 to turn it off"
            )
        if getattr(layer, "tiled_layer_tokens", None) is None:
            attn = layer.self_attn
            attn.forward = functools.partial(_attention_forward, layer, attn.forward, tile)
            layer.forward = functools.partial(_layer_forward, layer, layer.forward, tile)
            layer.tiled_layer_tokens = tile
