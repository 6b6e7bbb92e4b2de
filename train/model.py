"""Build the tokenizer and the HF causal LM, and wrap it with the chunked loss.

Any HF causal LM works: from a local directory (``model.path``: weights + tokenizer) or from an
HF config with random init (``model.arch`` + ``model.hf_config``). The model keeps fp32 master
weights; bf16 comes from autocast on GPU.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from data.tokenizer import load_tokenizer
from ssa_kernels.hf import apply_nope_layers, convert_to_ssa
from ssa_kernels.hf import from_pretrained as ssa_from_pretrained
from train.config import AttentionConfig, ConfigError, ModelConfig
from train.loss import linear_cross_entropy

log = logging.getLogger(__name__)


def build_tokenizer(cfg: ModelConfig):
    source = cfg.tokenizer if cfg.tokenizer is not None else (cfg.path or "byte")
    if source == "byte":
        return load_tokenizer(source)
    if not Path(source).expanduser().is_dir():
        key = "model.tokenizer" if cfg.tokenizer is not None else "model.path"
        raise ConfigError(f"{key}={source!r}: no such tokenizer directory (or use model.tokenizer=byte)")
    tok = load_tokenizer(source)
    if tok.eos_token_id is None:
        raise ConfigError(f"the tokenizer at {source} has no EOS token, which packing uses as separator")
    return tok


def _rope_params(config: PretrainedConfig) -> dict:
    """The config's rope settings: transformers 5 keeps them in rope_parameters, 4.x in rope_scaling."""
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})


def _max_positions(config: PretrainedConfig) -> int:
    """Positions the model supports: max_position_embeddings, times the rope-scaling factor."""
    rope = _rope_params(config)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in (None, "default"):
        return config.max_position_embeddings
    base = rope.get("original_max_position_embeddings") or config.max_position_embeddings
    return max(config.max_position_embeddings, int(base * float(rope.get("factor", 1.0))))


def build_config(cfg: ModelConfig, tokenizer, seq_len: int) -> PretrainedConfig:
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path={cfg.path!r}: no HF model there (config.json missing)")
        config = AutoConfig.from_pretrained(str(path), **cfg.hf_config)
    else:
        try:
            default = AutoConfig.for_model(cfg.arch)
        except ValueError as e:
            raise ConfigError(
                f"model.arch={cfg.arch!r} is not an HF model_type (e.g. llama, qwen2, qwen3, mistral)"
            ) from e
        # HF configs swallow unknown kwargs silently; refuse them so a typo cannot go unnoticed.
        known = set(inspect.signature(type(default).__init__).parameters) | set(default.to_dict())
        known |= {"rope_theta", "rope_scaling"}  # legacy names that transformers 5 still converts
        unknown = sorted(k for k in cfg.hf_config if k not in known)
        if unknown:
            raise ConfigError(f"model.hf_config.{unknown[0]} is not a field of {type(default).__name__}")
        config = AutoConfig.for_model(cfg.arch, **cfg.hf_config)
        if "vocab_size" not in cfg.hf_config:
            config.vocab_size = -(-len(tokenizer) // 64) * 64  # padded for matmul efficiency
        for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
            setattr(config, name, getattr(tokenizer, name))
    if cfg.nope_layers:
        n = config.num_hidden_layers
        bad = [i for i in cfg.nope_layers if not 0 <= int(i) < n]
        if bad:
            raise ConfigError(f"model.nope_layers={list(cfg.nope_layers)}: layer {bad[0]} is not in 0..{n - 1}")
        config.nope_layers = sorted({int(i) for i in cfg.nope_layers})
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"model.hf_config.vocab_size={config.vocab_size} is smaller than the tokenizer ({len(tokenizer)})"
        )
    if cfg.rope_scaling:
        params = _rope_params(config)
        theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
        rope = {"rope_theta": theta, **dict(cfg.rope_scaling)}
        # transformers 5 reads rope_parameters; 4.x read rope_scaling
        setattr(config, "rope_parameters" if hasattr(config, "rope_parameters") else "rope_scaling", rope)
    if seq_len > _max_positions(config):
        raise ConfigError(
            f"train.seq_len={seq_len} is beyond the model's {_max_positions(config)} positions "
            f"(max_position_embeddings={config.max_position_embeddings}, model.rope_scaling={cfg.rope_scaling}): "
            f"lower train.seq_len or set model.rope_scaling, e.g. "
            f"'model.rope_scaling={{rope_type:yarn,factor:{-(-seq_len // config.max_position_embeddings)}.0,"
            f"original_max_position_embeddings:{config.max_position_embeddings}}}'"
        )
    return config


def build_model(
    cfg: ModelConfig, attention: AttentionConfig, config: PretrainedConfig, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """The HF model with ``dtype`` weights (fp32; bf16 where the rung casts to bf16 anyway:
    ``parallel.weights_dtype``); for attention=ssa, built dense and converted in place."""
    impl = attention.impl if attention.name == "dense" else "sdpa"
    kwargs = {"attn_implementation": impl, "dtype": dtype}
    if cfg.path is not None and attention.name == "ssa" and getattr(config, "ssa", None):
        # an SSA checkpoint: HF's loader would drop its learned routers (convert_to_ssa below keeps them)
        model = ssa_from_pretrained(str(Path(cfg.path).expanduser()), config=config, dtype=dtype)
    elif cfg.path is not None:
        model = AutoModelForCausalLM.from_pretrained(str(Path(cfg.path).expanduser()), config=config, **kwargs)
    else:
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    if attention.name == "ssa":
        try:
            convert_to_ssa(model, attention.ssa)
        except ValueError as e:
            raise ConfigError(f"attention=ssa: {e}") from e
    apply_nope_layers(model)
    warn_yarn_temperature(model)
    n = sum(p.numel() for p in model.parameters())
    what = impl if attention.name == "dense" else f"ssa {attention.ssa}"
    what += f", built in {dtype}" if dtype != torch.float32 else ""
    nope = getattr(model.config, "nope_layers", None)
    what += f", NoPE layers {nope}" if nope else ""
    log.info("model: %s, %.2fM parameters, attention=%s", type(model).__name__, n / 1e6, what)
    return model


def warn_yarn_temperature(model: PreTrainedModel) -> None:
    """Warn when an SSA model (sliding-window included) has YaRN with its default attention temperature."""
    config = model.config
    rope = _rope_params(config)
    is_ssa = getattr(config, "_attn_implementation", None) == "ssa"
    if is_ssa and rope.get("rope_type") == "yarn" and rope.get("attention_factor") is None:
        log.warning(
            "attention=ssa with YaRN (factor %s): transformers scales every logit by (0.1 ln factor + 1)^2, a "
            "temperature that offsets attending to more keys. An SSA or sliding-window query attends to a fixed "
            "number of keys, and at evaluation such a model read needles better without it "
            "(docs/functional_context.md, fc15): add attention_factor:1.0 to model.rope_scaling to drop it.",
            rope.get("factor"),
        )


class PositionSkip:
    """PoSE-style position skipping (``train.position_skip``): a forward pre-hook on the model's rotary
    embedding. Written here because transformers has no such option; the hook changes only the positions the
    rotary embedding sees, so document boundaries (SSA routing ranges, HF's packed-sequence masks, Ulysses and
    ring) still come from the loader's position ids. Each training forward draws, per row, a split position s
    in [1, seq_len) and a skip u in [0, target - seq_len] from a generator seeded by (seed, step, forward index
    within the step): positions p >= s become p + u (within every document, since positions restart at each).
    The draw is a function of those three numbers and the global positions, so SP ranks agree and a resumed
    run repeats it. Eval-mode forwards see true positions."""

    def __init__(self, rotary: nn.Module, target: int, seq_len: int, seed: int):
        self.target, self.seq_len, self.seed = target, seq_len, seed
        self.step, self.calls = 0, 0
        rotary.register_forward_pre_hook(self._hook, with_kwargs=True)

    def begin_step(self, step: int) -> None:
        self.step, self.calls = step, 0

    def draw(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(split [rows, 1], skip [rows, 1]) of the next training forward."""
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.step) * 1009 + self.calls)
        self.calls += 1
        split = torch.randint(1, self.seq_len, (rows, 1), generator=gen)
        skip = torch.randint(0, self.target - self.seq_len + 1, (rows, 1), generator=gen)
        return split, skip

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if not module.training:
            return None
        args, kwargs = list(args), dict(kwargs)
        pos = kwargs["position_ids"] if "position_ids" in kwargs else args[1]
        split, skip = (t.to(pos.device) for t in self.draw(pos.shape[0]))
        pos = pos + (pos >= split) * skip
        if "position_ids" in kwargs:
            kwargs["position_ids"] = pos
        else:
            args[1] = pos
        return tuple(args), kwargs


def attach_position_skip(model: PreTrainedModel, target: int, seq_len: int, seed: int) -> PositionSkip | None:
    """``PositionSkip`` on ``model``'s rotary embedding when ``target`` (train.position_skip) > 0."""
    if not target:
        return None
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None:
        raise ConfigError(
            f"train.position_skip={target}: {type(model).__name__} has no model.rotary_emb to hook (0: off)"
        )
    if getattr(rotary, "rope_type", "default") in ("dynamic", "longrope"):
        # these rescale by the largest position they are given: a skip would change the whole row's rotation
        raise ConfigError(
            f"train.position_skip={target} with rope_type={rotary.rope_type}: use a static rope (default, linear, "
            f"yarn) or 0"
        )
    return PositionSkip(rotary, target, seq_len, seed)


class CausalLMLoss(nn.Module):
    """``forward(input_ids, labels, position_ids)`` -> sum of token losses (fp32 scalar).

    Wraps the HF model so the data-parallel wrapper sees one module, and replaces HF's full-vocab
    logits with the chunked loss. With ``position_ids`` restarting inside a row and no attention
    mask, HF builds a per-document causal mask (packed sequences)."""

    def __init__(self, lm: PreTrainedModel, loss_chunk: int = 0):
        super().__init__()
        self.lm = lm
        self.loss_chunk = loss_chunk
        if getattr(lm.config, "final_logit_softcapping", None):
            raise ConfigError("models with final_logit_softcapping are not supported by the chunked loss yet")

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.lm.get_decoder().layers

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # input_ids, labels, position_ids: (B, T)
        hidden = self.lm.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        head = self.lm.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise ConfigError("an lm_head with a bias is not supported by the chunked loss yet")
        # (B, T, D) -> (B*T, D)
        return linear_cross_entropy(hidden.flatten(0, 1), head.weight, labels.flatten(), self.loss_chunk)
