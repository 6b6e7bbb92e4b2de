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

Learned routers (``SSAConfig.router == "learned"``, ``ssa_kernels/router.py``) are submodules
``self_attn.ssa_router``; the same pre-hook passes the attention's input (``ssa_hidden``) so the
attention function can run them. Their weights are saved by ``save_pretrained`` with the rest, but HF's
``from_pretrained`` does not know them: load SSA checkpoints with :func:`from_pretrained` here.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, fields
from pathlib import Path

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ssa_kernels.config import SSAConfig
from ssa_kernels.decode.reference import rope_at, rotate
from ssa_kernels.router import SSARouter
from ssa_kernels.selector import PooledRoute

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


def route_of(
    module: torch.nn.Module, cfg: SSAConfig, kwargs: dict, pooled: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | PooledRoute | None:
    """(route_q, route_k) [Bt, Hkv, Tq, d] of an attention call from the layer's learned router (with
    ``pooled``: their block means, ``SSARouter.pooled``), or None when the config routes with the
    attention's own q/k."""
    if cfg.router != "learned":
        return None
    router, hidden = getattr(module, "ssa_router", None), kwargs.get("ssa_hidden")
    if router is None or hidden is None:
        raise RuntimeError(
            f"layer {getattr(module, 'layer_idx', '?')}: config.ssa['router'] is 'learned' but the attention "
            "module has no ssa_router (or its input was not passed): build SSA models with "
            "ssa_kernels.hf.convert_to_ssa, and load saved ones with ssa_kernels.hf.from_pretrained"
        )
    if not pooled:
        return router(hidden)
    # distill_score=bound trains the bound score: the loss needs the blocks' key min / max, with their gradient
    distill_bounds = cfg.routing == "distill" and cfg.distill_score == "bound" and torch.is_grad_enabled()
    return router.pooled(hidden, cfg.block_size, cfg.leaf_score == "bound" or distill_bounds, distill_bounds)


def _decode_tokens(module, query, key, value, cfg, scaling, states, position_ids, route, far=None) -> torch.Tensor:
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
        rq, rk = (None, None) if route is None else (route[0][:, :, j : j + 1], route[1][:, :, j])
        far_j = None if far is None else (far[0][:, :, j : j + 1], far[1])
        outs.append(
            ssa_decode_step(
                query[:, :, j : j + 1], key[:, :, :end], value[:, :, :end], state, cfg, scaling, doc_id, rq, rk, far_j
            )
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
    states = kwargs.get("ssa_decode_states")  # dict on the KV cache, passed by _pass_ssa_kwargs; None without
    # None: select with query / key themselves. Per-token routing tensors only where a decode state needs
    # them (a cached prefill, decoding) or the per-token rule runs; training selects from block means.
    pooled = rule == "block" and states is None and query.shape[2] == key.shape[2]
    route = kwargs.get("ssa_route")  # given by a wrapper that gathers it itself (parallel.ulysses)
    far = _far_inputs(module, query, cfg, kwargs)  # None unless cfg.far_distance: q, k arrive un-rotated
    if route is None:
        route = route_of(module, cfg, kwargs, pooled=pooled)
    if cfg.router == "oracle" and (states is not None or query.shape[2] != key.shape[2] or rule != "block"):
        raise ValueError(
            "attention.router=oracle routes by the dense attention of a whole forward: no KV-cache decoding and "
            "no per-token rule; evaluate it with full forwards (use_cache=False, e.g. scripts/probe_answers.py "
            "--oracle)"
        )
    if query.shape[2] != key.shape[2]:  # earlier tokens are cached: decode the new ones
        out = _decode_tokens(module, query, key, value, cfg, scaling, states, position_ids, route, far)
        return out.transpose(1, 2).contiguous(), None  # (B, Hq, Tq, D) -> (B, Tq, Hq, D)
    doc_ids = doc_ids_of(position_ids, query.shape[0])
    if rule == "causal_rows":
        out = causal_rows_attention(query, key, value, cfg, doc_ids=doc_ids, scale=scaling, route=route, far=far)
    elif far is not None:  # local blocks with HF's rotation at the true positions, far ones with q_far . k
        q_rot, k_rot = apply_rotary_pos_emb(query, key, *kwargs["ssa_rope"])
        out = ssa_attention(q_rot, k_rot, value, cfg, doc_ids=doc_ids, scale=scaling, route=route, far=(far[0], key))
    else:
        out = ssa_attention(query, key, value, cfg, doc_ids=doc_ids, scale=scaling, route=route)
    if states is not None:  # prefill of a cached sequence
        rq, rk = route if route is not None else (query, key)
        state = DecodeState.from_prefill(rq, rk, cfg, doc_ids, last_key=key[:, :, -1])
        if position_ids is not None:
            state.last_position = position_ids.expand(query.shape[0], -1)[:, -1].clone()
        states[module.layer_idx] = state
    return out.transpose(1, 2).contiguous(), None  # (B, Hq, T, D) -> (B, T, Hq, D)


def _far_inputs(module, query, cfg: SSAConfig, kwargs: dict) -> tuple[torch.Tensor, object] | None:
    """(q_far, rotary) for ``cfg.far_distance`` > 0, else None. q_far is the un-rotated query rotated by
    far_distance and scaled as a key at position 0 is (YaRN's attention factor): q_far . k = q(d) . k(0) with
    d = far_distance, the logit of a key that distance away."""
    if not cfg.far_distance or module.layer_idx in _nope_layers(module.config):
        return None  # NoPE layers have no distances to bound
    if "ssa_rope" not in kwargs:
        raise RuntimeError(
            f"attention.far_distance={cfg.far_distance}: layer {getattr(module, 'layer_idx', '?')} was called "
            "without the far-distance hook; build SSA models with ssa_kernels.hf.convert_to_ssa and load them "
            "with ssa_kernels.hf.from_pretrained"
        )
    if kwargs.get("ssa_route") is not None:
        raise ValueError(
            f"attention.far_distance={cfg.far_distance} runs on one process: set it to 0 under parallel "
            "wrappers (ulysses, ring)"
        )
    rotary = kwargs["ssa_rotary"]
    cos, sin = rope_at(rotary, query, torch.tensor([cfg.far_distance, 0], device=query.device))
    x = query if query.dtype == torch.float64 else query.float()
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return (rotate(x, cos[0], sin[0]) * cos[1]).to(query.dtype), rotary


def _far_rope(rotary_of, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook of an SSA attention module: with ``far_distance`` > 0 the layer gets cos 1, sin 0
    (q and k, and so the KV cache, stay un-rotated) and the real (cos, sin) and rotary module as
    ``ssa_rope`` / ``ssa_rotary``, for the attention function to rotate local and far blocks apart.
    Read at every call, so ``config.ssa["far_distance"]`` can be switched on a loaded model."""
    cfg = module.config
    if (
        not ssa_config_of(cfg).far_distance
        or "position_embeddings" not in kwargs
        or module.layer_idx in _nope_layers(cfg)
    ):
        return None
    cos, sin = kwargs["position_embeddings"]
    flat = (torch.ones_like(cos), torch.zeros_like(sin))
    return args, {**kwargs, "position_embeddings": flat, "ssa_rope": (cos, sin), "ssa_rotary": rotary_of()}


def _pass_ssa_kwargs(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook of an attention module: hands the attention function what HF does not pass it —
    the layer input for the learned router (``ssa_hidden``) and the per-layer decode states kept on the
    KV cache (``cache``; ``past_key_values`` before transformers 5.2x renamed the layers' keyword)."""
    extra = {}
    if hasattr(module, "ssa_router"):  # SSA itself, or SSA inside a wrapper (parallel.ulysses)
        # kept when given: parallel.tiled_layer calls the module with the un-normed layer input and the normed one here
        if "ssa_hidden" not in kwargs:
            extra["ssa_hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is not None and getattr(module.config, "_attn_implementation", None) == "ssa":
        states = getattr(cache, "ssa_decode_states", None)
        if states is None:
            states = cache.ssa_decode_states = {}
        extra["ssa_decode_states"] = states
    return (args, {**kwargs, **extra}) if extra else None


def _attention_modules(model: PreTrainedModel):
    """(name, module) of every HF attention module (``*.self_attn`` with a ``layer_idx``)."""
    return [(n, m) for n, m in model.named_modules() if n.endswith("self_attn") and hasattr(m, "layer_idx")]


def _nope_layers(config) -> set[int]:
    """``config.nope_layers`` (absent or None: none)."""
    return set(getattr(config, "nope_layers", None) or [])


def _no_rope(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of an attention module in ``config.nope_layers``: cos 1 and sin 0, i.e. no rotary
    positions (NoPE) in this layer; keys enter the KV cache unrotated too, so decoding stays consistent."""
    if "position_embeddings" not in kwargs:
        raise ValueError(
            f"model.nope_layers: {type(module).__name__} is not called with position_embeddings=(cos, sin); "
            "NoPE layers are not supported for this architecture"
        )
    cos, sin = kwargs["position_embeddings"]
    return args, {**kwargs, "position_embeddings": (torch.ones_like(cos), torch.zeros_like(sin))}


def apply_nope_layers(model: PreTrainedModel) -> PreTrainedModel:
    """The layers listed in ``model.config.nope_layers`` attend without rotary positions (NoPE), so a query-key
    match by content does not change with the distance (docs/functional_context.md, the rotary study). HF has
    no per-layer switch for Llama/Qwen/Mistral (Llama 4 has its own), hence a hook. Idempotent; every loader
    here calls it, and the list travels in config.json."""
    layers = _nope_layers(model.config)
    for _, module in _attention_modules(model):
        if module.layer_idx in layers and not hasattr(module, "_nope_hook"):
            module._nope_hook = module.register_forward_pre_hook(_no_rope, with_kwargs=True)
    return model


def enable_ssa_decode(model: PreTrainedModel) -> PreTrainedModel:
    """Let ``model`` run SSA with learned routers and decode with a KV cache (idempotent): registers
    ``_pass_ssa_kwargs`` on every attention module, and ``_far_rope`` (a no-op unless ``far_distance`` > 0)."""

    def rotary_of():  # looked up at each call: scripts replace model.model.rotary_emb (YaRN at eval time)
        return model.model.rotary_emb

    for _, module in _attention_modules(model):
        if not hasattr(module, "_ssa_hook"):
            module._ssa_hook = module.register_forward_pre_hook(_pass_ssa_kwargs, with_kwargs=True)
        if not hasattr(module, "_far_hook"):
            hook = functools.partial(_far_rope, rotary_of)
            module._far_hook = module.register_forward_pre_hook(hook, with_kwargs=True)
    return model


def _attach_routers(model: PreTrainedModel, init_from_attention: bool) -> None:
    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    for _, attn in _attention_modules(model):
        if hasattr(attn, "ssa_router"):  # already converted or loaded: keep the trained router
            continue
        head_dim = attn.head_dim
        if init_from_attention:
            attn.ssa_router = SSARouter.from_attention(attn, kv_heads, head_dim)
        else:
            w = attn.k_proj.weight
            attn.ssa_router = SSARouter(w.shape[1], kv_heads, head_dim, attn.q_proj.bias is not None).to(w)


AttentionInterface.register("ssa", ssa_attention_forward)


def convert_to_ssa(model: PreTrainedModel, cfg: SSAConfig | None = None) -> PreTrainedModel:
    """Switch a dense HF causal LM to SSA in place; weights are untouched. With ``cfg.router ==
    "learned"`` each attention module without one gets an ``ssa_router`` initialised from its q/k
    projections (a model loaded with :func:`from_pretrained` keeps its trained routers)."""
    cfg = cfg or SSAConfig()
    cfg.validate()
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"convert_to_ssa supports {SUPPORTED_MODEL_TYPES}, not model_type={model_type!r}")
    model.config.ssa = asdict(cfg)
    model.set_attn_implementation("ssa")
    if cfg.router == "learned":
        _attach_routers(model, init_from_attention=True)
    return enable_ssa_decode(model)


def from_pretrained(path: str | Path, **kwargs) -> PreTrainedModel:
    """Load an SSA model saved with ``save_pretrained``: HF's loader builds it and loads every weight it
    knows; the learned routers (unknown to HF, reported by it as unexpected keys) are attached and
    loaded here from the same safetensors files."""
    from safetensors import safe_open

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="ssa", **kwargs)
    cfg = ssa_config_of(model.config)
    if not getattr(model.config, "ssa", None):
        raise ValueError(f"{path}: config.json has no 'ssa' settings; convert a dense model with convert_to_ssa")
    if cfg.router == "learned":
        _attach_routers(model, init_from_attention=False)
        wanted = {n for n, _ in model.named_parameters() if ".ssa_router." in n}
        found = {}
        for f in sorted(Path(path).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as shard:  # reads only the router tensors, not the shard
                found.update({n: shard.get_tensor(n) for n in shard.keys() if ".ssa_router." in n})
        missing = wanted - set(found)
        if missing:
            raise ValueError(f"{path}: the safetensors files lack SSA router weights, e.g. {sorted(missing)[0]}")
        model.load_state_dict(found, strict=False)
    return apply_nope_layers(enable_ssa_decode(model))
