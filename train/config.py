"""The config schema: structured configs registered with Hydra, validated at start.

Precedence (lowest first): the dataclass defaults below -> ``conf/config.yaml`` and the group files
it selects (model/, data/, attention/, parallel/, train/, logging/) -> an ``experiment=...`` file
-> command-line overrides. An unknown key anywhere is an error that names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from data import DataConfig, DataError, check_synthetic
from parallel import RUNGS, ParallelConfig, ParallelError
from parallel.offload import check_offload_config
from ssa_kernels.config import SSAConfig


class ConfigError(ValueError):
    """A bad config value; the message names the key and a value that works."""


@dataclass
class ModelConfig:
    name: str = "tiny"
    # A local HF model directory (weights + tokenizer). When null, the model is built from
    # ``arch`` + ``hf_config`` with random init.
    path: str | None = None
    arch: str = "llama"  # an HF model_type: llama, qwen2, qwen3, mistral, ...
    hf_config: dict[str, Any] = field(default_factory=dict)
    # "byte" (built in), a local tokenizer directory, or null: model.path's tokenizer, else "byte".
    tokenizer: str | None = None
    # null: the model's own; e.g. {rope_type: yarn, factor: 4.0, original_max_position_embeddings: 8192}.
    # Typed Any so that a whole dict can be given on the command line (model.rope_scaling={...}).
    rope_scaling: Any = None
    # Decoder layers (0-based) that attend without rotary positions (NoPE); saved in config.json as
    # nope_layers. Empty: the checkpoint's own list (none for a new model).
    nope_layers: list[int] = field(default_factory=list)


@dataclass
class AttentionConfig:
    name: str = "dense"  # dense | ssa
    impl: str = "sdpa"  # dense: an HF attn_implementation (sdpa, eager, flash_attention_2, flex_attention)
    ssa: SSAConfig = field(default_factory=SSAConfig)  # used when name=ssa


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | constant (both after linear warmup)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1


@dataclass
class TrainConfig:
    stage: str = "cpt"
    steps: int = 200
    seq_len: int = 1024
    micro_batch: int = 1
    grad_accum: int = 1
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    activation_checkpointing: bool = False
    compile: bool = False
    loss_chunk: int = 0  # tokens per lm_head + cross-entropy chunk; 0: about 1 GiB of fp32 logits
    ckpt_every: int = 100  # steps; a checkpoint is also written at the end and on SIGTERM/SIGINT
    save_final: bool = True  # the end-of-run checkpoint (benchmarks turn it off: tens of GB for 8B models)
    keep_checkpoints: int = 2
    seed: int = 0
    # PoSE-style position skipping (Zhu et al. 2023), 0: off. In training, the rotary positions of each row
    # jump once, at a random token, by a random skip in [0, position_skip - seq_len], so relative distances up
    # to position_skip occur at seq_len. Only the rotary embedding sees the skip: document boundaries, masks
    # and routing ranges still come from the loader's positions. Evaluation uses true positions.
    position_skip: int = 0
    # Early stop (0: off): once the mean loss of the last stop_at_loss_window steps is <= stop_at_loss, save and
    # stop, with train.steps as the cap (the schedule still runs over train.steps). For a stage whose loss drops
    # in a phase transition at a run-to-run varying step (issue 6's stage 1: 0.013 at 1,100 steps in one run,
    # 0.10 in the next); the window restarts on resume.
    stop_at_loss: float = 0.0
    stop_at_loss_window: int = 50


@dataclass
class LoggingConfig:
    wandb: str = "offline"  # offline | online | disabled
    project: str = "ssa-train"
    log_every: int = 1
    progress: bool = True
    peak_tflops: float = 0.0  # per GPU, for MFU; 0: looked up from the GPU's name
    # attention=ssa: every N steps log router/layer{i}/{stat} and router/{stat} (selection share,
    # distances, far share and mass; ssa_kernels/diagnostics.py) from the step's first micro-batch; 0: off
    router_stats_every: int = 0
    router_query_blocks: int = 8  # query blocks sampled per layer for router/far_mass, recall, oracle_recall; 0: off


@dataclass
class Config:
    name: str = "default"  # the run's name; the run directory is runs/<name> unless hydra.run.dir says
    resume: str = "auto"  # auto (latest checkpoint of the run dir, if any) | none | a checkpoint dir
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


@dataclass
class EvalConfig:
    """``python -m train.eval`` (``conf/eval.yaml``; validated by ``train.eval.to_eval_config``)."""

    # A saved model directory (HF or SSA ``save_pretrained``), a trainer checkpoint (``.../step_N``, its
    # ``model/`` is read) or a run directory (its latest checkpoint). null: the ``model`` group's model
    # (``model.path``, or random init from ``model.hf_config`` seeded by ``seed``: smoke tests).
    checkpoint: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    # null: as saved (an SSA checkpoint runs SSA with its own settings, others dense). attention=dense forces
    # dense attention; attention=ssa converts a dense model (or re-sets an SSA one's settings, keeping routers).
    attention: AttentionConfig | None = None
    # With attention null, settings of a saved SSA model changed for this evaluation only, e.g.
    # +ssa_settings.far_distance=256 (or ++ssa_settings={far_distance:256,beam_min:64}): attention.ssa.* key
    # names; the routers are kept.
    ssa_settings: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=lambda: ["ruler"])  # names of data/synthetic.py, or ruler / all
    lengths: list[str] = field(default_factory=lambda: ["4K"])  # token budgets: 4096, "4K" (x1024), "1M"
    depths: list[float] | None = None  # needle depths in [0, 1]; null: drawn as RULER draws them
    samples: int = 10  # per (task, length, depth); eval seeds seed .. seed + samples - 1
    seed: int = 0
    max_new_tokens: int | None = None  # null: the task's (RULER's tokens_to_generate; MRCR: its reserve)
    max_prefill_tokens: int = 0  # longest prompt to prefill on one device; 0: the model's positions only
    out_dir: str = "runs/eval"  # results.json, results.md, niah_heatmap.png
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    wandb: str = "disabled"  # disabled | offline | online (offline when no API key works)
    project: str = "ssa-eval"
    progress: bool = True  # a tqdm bar over (task, length) pairs on stderr
    # SSA models: per sample and layer, the share of (kv head, generated token) pairs whose selection lists every
    # block of the gold needle's answer (its first occurrence in the prompt), as the row's needle_routed; the
    # log and summary give its mean and best layer per task x length. Tells a routing miss from a reading miss.
    needle_routing: bool = False
    # null: the model's greedy decoding. oracle (the gold target), random (a random guess of the answer's shape) or
    # "package.module:function" taking a data.sample.Sample and returning the prediction: checks the harness.
    answer_fn: str | None = None


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
    ConfigStore.instance().store(name="base_eval_config", node=EvalConfig)


def _one_of(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not valid: use one of {sorted(allowed)}")


def _positive(key: str, value: float, minimum: float = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{key}={value} is not valid: it must be >= {minimum}")


def _reject_unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Hydra's ``+key=value`` may add keys that the schema lacks; refuse them by name."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix}{key}: {schema.__name__} has {sorted(fields)}")
        sub = node._get_node(key)
        sub_type = OmegaConf.get_type(sub) if isinstance(sub, DictConfig) else None
        if sub_type is not None and dataclasses.is_dataclass(sub_type):
            _reject_unknown_keys(sub, sub_type, f"{prefix}{key}.")


def to_config(cfg: DictConfig) -> Config:
    """The typed, validated config. Raises ConfigError naming the key to fix."""
    _reject_unknown_keys(cfg, Config)
    config: Config = OmegaConf.to_object(cfg)
    t, lg = config.train, config.logging
    _one_of("train.stage", t.stage, {"cpt"})
    _one_of("train.precision", t.precision, {"auto", "bf16", "fp32"})
    _one_of("train.optimizer.name", t.optimizer.name, {"adamw"})
    _one_of("train.schedule.name", t.schedule.name, {"cosine", "constant"})
    _one_of("logging.wandb", lg.wandb, {"offline", "online", "disabled"})
    _one_of("parallel.name", config.parallel.name, set(RUNGS) | {"auto"})
    _one_of("parallel.device", config.parallel.device, {"auto", "cuda", "cpu"})
    _one_of("attention.name", config.attention.name, {"dense", "ssa"})
    _one_of("attention.impl", config.attention.impl, {"sdpa", "eager", "flash_attention_2", "flex_attention"})
    _one_of("data.format", config.data.format, {"auto", "jsonl", "parquet", "text", "source"})
    try:
        check_synthetic(config.data.synthetic, t.seq_len)
    except DataError as e:
        raise ConfigError(str(e)) from e
    for key in ("steps", "seq_len", "micro_batch", "grad_accum", "keep_checkpoints"):
        _positive(f"train.{key}", getattr(t, key))
    _positive("parallel.sp", config.parallel.sp, 0)  # 0: every process of the job (parallel=multinode's default)
    _positive("parallel.cp", config.parallel.cp)
    _one_of("parallel.memory_check", config.parallel.memory_check, {"error", "warn", "off"})
    for key in ("tiled_mlp", "tiled_layer"):
        if getattr(config.parallel, key) < 0:
            raise ConfigError(f"parallel.{key}={getattr(config.parallel, key)}: tokens per tile, >= 1 (0: off)")
    try:
        check_offload_config(config.parallel.offload)
    except ParallelError as e:
        raise ConfigError(str(e)) from e
    p = config.parallel
    if p.name in ("offload", "nested_offload") and t.compile:
        raise ConfigError(
            f"train.compile=true with parallel={p.name}: compiled layers under ZeRO-3's parameter hooks are not "
            "tested here; set train.compile=false"
        )
    if p.name == "nested_offload":
        pieces = {"train.activation_checkpointing=true": t.activation_checkpointing,
                  "parallel.offload_activations=true": p.offload_activations,
                  "parallel.tiled_mlp=16384": p.tiled_mlp > 0}  # fmt: skip
        missing = [k for k, on in pieces.items() if not on]
        if missing:
            raise ConfigError(f"parallel=nested_offload is offload with its memory pieces on: set {' '.join(missing)}")
    for key in ("ckpt_every", "loss_chunk"):
        _positive(f"train.{key}", getattr(t, key), 0)
    _positive("logging.log_every", lg.log_every)
    _positive("logging.router_stats_every", lg.router_stats_every, 0)
    _positive("logging.router_query_blocks", lg.router_query_blocks, 0)
    if not t.optimizer.lr > 0:
        raise ConfigError(f"train.optimizer.lr={t.optimizer.lr} must be > 0")
    if t.stop_at_loss < 0 or t.stop_at_loss_window < 1:
        raise ConfigError(
            f"train.stop_at_loss={t.stop_at_loss}, train.stop_at_loss_window={t.stop_at_loss_window}: "
            "the loss must be >= 0 (0: off) and the window >= 1 steps"
        )
    if t.position_skip and t.position_skip <= t.seq_len:
        raise ConfigError(
            f"train.position_skip={t.position_skip}: the longest position to train, > train.seq_len={t.seq_len} "
            f"(0: off)"
        )
    if len(t.optimizer.betas) != 2:
        raise ConfigError(f"train.optimizer.betas={t.optimizer.betas}: give two values, e.g. [0.9, 0.95]")
    if not 0 <= t.schedule.min_lr_ratio <= 1:
        raise ConfigError(f"train.schedule.min_lr_ratio={t.schedule.min_lr_ratio} must be in [0, 1]")
    if config.attention.name == "ssa":
        try:
            config.attention.ssa.validate()
        except ValueError as e:
            raise ConfigError(str(e).replace("attention.", "attention.ssa.")) from e
        if config.attention.ssa.routing == "distill" and config.parallel.name == "ring":
            raise ConfigError(
                "attention.ssa.routing=distill needs dense attention over every key, which parallel=ring never "
                "holds: use routing=straight_through with ring, or distil under parallel=single/ulysses"
            )
    if config.resume not in ("auto", "none") and not config.resume:
        raise ConfigError("resume is empty: use auto, none or a checkpoint directory")
    return config
