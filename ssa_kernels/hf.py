"""HF transformers glue: SSA registered as ``attn_implementation="ssa"`` through
``AttentionInterface`` (no monkey patching), and ``convert_to_ssa`` for Llama, Qwen2, Qwen3 and
Mistral models, keeping every weight.

The SSA settings live in ``model.config.ssa`` (a dict), so ``save_pretrained`` /
``from_pretrained(..., attn_implementation="ssa")`` round-trip them; importing ``ssa_kernels``
registers the implementation.

Decoding with a KV cache (``ssa_kernels/decode``): every layer keeps a ``DecodeState`` in a dict on the
cache object (``cache.ssa_decode_states[layer_idx]``), built from the prompt at prefill and advanced by
each new token. HF does not hand the cache to attention functions, so ``convert_to_ssa`` (or
``enable_ssa_decode`` on a model loaded with ``attn_implementation="ssa"``) registers a forward pre-hook on
each attention module that passes that dict along as the keyword ``ssa_decode_states``. Full forwards select
per query block with the block's mean query (the training path) unless ``model.config.ssa["rule"]`` is
``"causal_rows"``: then every token selects with the mean query of its block so far, the rule decoding
uses, so cached and uncached forwards agree (a slow reference, for tests and evaluation).
"""

from __future__ import annotations

from dataclasses import asdict, fields

import torch
from transformers import AttentionInterface, PreTrainedModel

from ssa_kernels.config import SSAConfig

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def doc_ids_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Document index per token: a new document wherever positions do not continue by +1, the rule
    HF uses for packed sequences. position_ids [B, T] -> [B, T] int64, 0 for the first document."""
    first = position_ids[:, :1] - 1
    return (torch.diff(position_ids, dim=1, prepend=first) != 1).long().cumsum(dim=1)


def doc_ids_of(position_ids: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Document ids of an attention call's tokens from its ``position_ids`` kwarg (None: one document)."""
    return doc_ids_from_positions(position_ids.expand(batch, -1)) if position_ids is not None else None


def ssa_config_of(config) -> SSAConfig:
    saved = getattr(config, "ssa", None) or {}
    names = {f.name for f in fields(SSAConfig)}
    return SSAConfig(**{k: v for k, v in saved.items() if k in names})


SELECTION_RULES = ("block", "causal_rows")


def selection_rule_of(config) -> str:
    """``config.ssa["rule"]``: how full (uncached) forwards select. "block" (default): per query block with
    the block's mean query, the training path. "causal_rows": per token with the mean query of its block so
    far, the rule of cached decoding (``ssa_kernels.decode.causal_rows_attention``)."""
    rule = (getattr(config, "ssa", None) or {}).get("rule", "block")
    if rule not in SELECTION_RULES:
        raise ValueError(f"config.ssa['rule']={rule!r}: use one of {SELECTION_RULES}")
    return rule


def _decode_tokens(module, query, key, value, cfg, scaling, states, position_ids) -> torch.Tensor:
    """Attention of the q_len newest tokens of a cached sequence, one decode step each: query
    [B, Hq, q_len, D], key/value [B, Hkv, past + q_len, D] -> [B, Hq, q_len, D]."""
    from ssa_kernels.decode import ssa_decode_step

    state = states.get(module.layer_idx) if states is not None else None
    if state is None:
        raise RuntimeError(
            "SSA decoding keeps a DecodeState per layer on the KV cache and found none: call "
            "ssa_kernels.hf.enable_ssa_decode(model) after from_pretrained (convert_to_ssa does it), and start "
            "from an empty DynamicCache (the prompt's prefill builds the state)"
        )
    q_len = query.shape[2]
    if state.length + q_len != key.shape[2]:
        raise RuntimeError(
            f"the KV cache holds {key.shape[2]} tokens but the SSA decode state of layer {module.layer_idx} "
            f"saw {state.length} + {q_len} new ones (static, cropped or reused caches are not supported)"
        )
    outs = []
    for j in range(q_len):
        doc_id = None
        if position_ids is not None:  # documents start where positions do not continue by +1
            pos = position_ids.expand(query.shape[0], -1)[:, j]
            if state.last_position is not None:
                doc_id = state.doc + (pos != state.last_position + 1).long()
            state.last_position = pos.clone()
        end = state.length + 1
        outs.append(
            ssa_decode_step(query[:, :, j : j + 1], key[:, :, :end], value[:, :, :end], state, cfg, scaling, doc_id)
        )
    return torch.cat(outs, dim=2)  # (B, Hq, q_len, D)


def ssa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """HF attention function. query [B, Hq, Tq, D] (post-RoPE), key/value [B, Hkv, T, D] (not
    repeated for GQA; T > Tq when a KV cache holds earlier tokens). Returns ([B, Tq, Hq, D], None) like
    HF's own implementations."""
    from ssa_kernels import ssa_attention
    from ssa_kernels.decode import DecodeState, causal_rows_attention

    if dropout:
        raise ValueError("SSA attention does not implement attention dropout (set attention_dropout=0)")
    cfg = ssa_config_of(module.config)
    rule = selection_rule_of(module.config)
    position_ids = kwargs.get("position_ids")
    states = kwargs.get("ssa_decode_states")  # dict on the KV cache, passed by _pass_decode_states; None without
    if query.shape[2] != key.shape[2]:  # earlier tokens are cached: decode the new ones
        out = _decode_tokens(module, query, key, value, cfg, scaling, states, position_ids)
        return out.transpose(1, 2).contiguous(), None  # (B, Hq, Tq, D) -> (B, Tq, Hq, D)
    doc_ids = doc_ids_of(position_ids, query.shape[0])
    if rule == "causal_rows":
        out = causal_rows_attention(query, key, value, cfg, doc_ids=doc_ids, scale=scaling)
    else:
        out = ssa_attention(query, key, value, cfg, doc_ids=doc_ids, scale=scaling)
    if states is not None:  # prefill of a cached sequence
        state = DecodeState.from_prefill(query, key, cfg, doc_ids)
        if position_ids is not None:
            state.last_position = position_ids.expand(query.shape[0], -1)[:, -1].clone()
        states[module.layer_idx] = state
    return out.transpose(1, 2).contiguous(), None  # (B, Hq, T, D) -> (B, T, Hq, D)


def _pass_decode_states(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook of an attention module: hands the per-layer decode states kept on the KV cache
    (``past_key_values``) to the attention function, which HF calls without the cache."""
    cache = kwargs.get("past_key_values")
    if cache is None or getattr(module.config, "_attn_implementation", None) != "ssa":
        return None
    states = getattr(cache, "ssa_decode_states", None)
    if states is None:
        states = cache.ssa_decode_states = {}
    return args, {**kwargs, "ssa_decode_states": states}


def enable_ssa_decode(model: PreTrainedModel) -> PreTrainedModel:
    """Let ``model`` decode with a KV cache under SSA (idempotent): registers ``_pass_decode_states`` on
    every attention module (``*.self_attn`` with a ``layer_idx``)."""
    for name, module in model.named_modules():
        if name.endswith("self_attn") and hasattr(module, "layer_idx") and not hasattr(module, "_ssa_decode_hook"):
            module._ssa_decode_hook = module.register_forward_pre_hook(_pass_decode_states, with_kwargs=True)
    return model


AttentionInterface.register("ssa", ssa_attention_forward)


def convert_to_ssa(model: PreTrainedModel, cfg: SSAConfig | None = None) -> PreTrainedModel:
    """Switch a dense HF causal LM to SSA in place; weights are untouched."""
    cfg = cfg or SSAConfig()
    cfg.validate()
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"convert_to_ssa supports {SUPPORTED_MODEL_TYPES}, not model_type={model_type!r}")
    model.config.ssa = asdict(cfg)
    model.set_attn_implementation("ssa")
    return enable_ssa_decode(model)
