"""HF transformers glue: SSA registered as ``attn_implementation="ssa"`` through
``AttentionInterface`` (no monkey patching), and ``convert_to_ssa`` for Llama, Qwen2, Qwen3 and
Mistral models, keeping every weight.

The SSA settings live in ``model.config.ssa`` (a dict), so ``save_pretrained`` /
``from_pretrained(..., attn_implementation="ssa")`` round-trip them; importing ``ssa_kernels``
registers the implementation.
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


def ssa_config_of(config) -> SSAConfig:
    saved = getattr(config, "ssa", None) or {}
    names = {f.name for f in fields(SSAConfig)}
    return SSAConfig(**{k: v for k, v in saved.items() if k in names})


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
    """HF attention function. query [B, Hq, T, D] (post-RoPE), key/value [B, Hkv, T, D] (not
    repeated for GQA). Returns ([B, T, Hq, D], None) like HF's own implementations."""
    from ssa_kernels import ssa_attention

    if dropout:
        raise ValueError("SSA attention does not implement attention dropout (set attention_dropout=0)")
    if kwargs.get("past_key_values") is not None and query.shape[2] != key.shape[2]:
        raise NotImplementedError("SSA decode with a KV cache is not implemented yet")
    position_ids = kwargs.get("position_ids")
    doc_ids = doc_ids_from_positions(position_ids.expand(query.shape[0], -1)) if position_ids is not None else None
    out = ssa_attention(query, key, value, ssa_config_of(module.config), doc_ids=doc_ids, scale=scaling)
    return out.transpose(1, 2).contiguous(), None  # (B, Hq, T, D) -> (B, T, Hq, D)


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
    return model
