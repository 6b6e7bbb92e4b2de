"""``python -m train.eval``: evaluate a checkpoint on the synthetic long-context tasks of ``data/``
(RULER's 13, mrcr_2/4/8) over tasks x lengths x depths, with greedy decoding.

Decoding is the model's own ``generate`` (``use_cache=True, do_sample=False``, one prompt at a time),
so an SSA model prefills with sparse attention and decodes through the SSA decode path (a
``DecodeState`` per layer on the KV cache, ``ssa_kernels/hf.py``); each result row records which
path ran (``decode``: ssa | dense). Decoding stops at ``max_new_tokens`` (default: the task's) or EOS;
only the new tokens are decoded and scored with ``Sample.score``. A wrong answer's row also says what it read
(``miss``, ``data.scoring.read_miss``): a word found elsewhere in the prompt (a distractor's value) or a
mis-copy of the gold value (``chars_right``).

Prefill runs on one device. Sequence-parallel rungs (ulysses / ring) do not exist in ``parallel/``
yet (only single and ddp), so a prompt beyond the model's positions or beyond ``max_prefill_tokens``
is an error that names the key to change; the prefill will go through those rungs once they exist.

Outputs in ``out_dir``: ``results.json`` (every sample, per task x length and per length means, the
effective length), ``results.md`` (the table) and ``niah_heatmap.png`` (mean niah score, depth x
length); the same go to wandb when ``wandb`` is offline or online. ``samples.jsonl`` gets each row as
soon as its sample is scored (flushed), so an evaluation killed at its time limit keeps every sample
it finished; ``results.json`` is written (atomically) only at the end.

Examples::

    python -m train.eval checkpoint=runs/cpt/checkpoints/step_00001000 tasks=[ruler] lengths=[4K,8K,16K]
    python -m train.eval checkpoint=/models/llama attention=ssa tasks=[niah_single_1,niah_multikey_2] \\
        lengths=[32K,64K] depths=[0,0.25,0.5,0.75,1] samples=4 wandb=offline
    python -m train.eval answer_fn=oracle tasks=[all] lengths=[4K] samples=2   # checks the harness
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import logging
import math
import random
import re
import string
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel

from data.sample import LengthError, Sample
from data.scoring import RULER_THRESHOLD, effective_length
from data.synthetic import ALL_TASKS, RULER_TASKS, generate
from data.tokenizer import is_byte_tokenizer, make_tokenize
from ssa_kernels.config import SSAConfig
from ssa_kernels.diagnostics import DecodeRouteRecorder, blocks_listed
from ssa_kernels.hf import from_pretrained as ssa_from_pretrained
from ssa_kernels.hf import ssa_config_of
from train.checkpoint import CheckpointError
from train.config import (
    AttentionConfig,
    ConfigError,
    EvalConfig,
    ModelConfig,
    _one_of,
    _positive,
    _reject_unknown_keys,
    register_configs,
)
from train.model import _max_positions, build_config, build_model, build_tokenizer, warn_yarn_temperature

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
NO_NEEDLE = ("cwe", "fwe")  # tasks without a needle: always depth=None
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
log = logging.getLogger("train.eval")

AnswerFn = Callable[[Sample], str]


# --- config -------------------------------------------------------------------------------------


def parse_length(value: Any, key: str = "lengths") -> int:
    """4096, "4096", "4K" / "4k" (x 1024), "1M" (x 2**20) -> tokens."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", str(value))
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"{key}: {value!r} is not a length: use a positive int or e.g. 4K, 128K, 1M")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20}[m.group(2).lower()]


def expand_tasks(names: list[str]) -> list[str]:
    """Task names with ``ruler`` (the 13) and ``all`` (the 16) expanded, order kept, no repeats."""
    out: list[str] = []
    for name in names:
        group = {"ruler": RULER_TASKS, "all": ALL_TASKS}.get(name, (name,))
        for task in group:
            if task not in ALL_TASKS:
                raise ConfigError(f"tasks: {task!r} is not a task: use ruler, all or names of {list(ALL_TASKS)}")
            if task not in out:
                out.append(task)
    if not out:
        raise ConfigError("tasks is empty: use e.g. tasks=[ruler] or tasks=[niah_single_1]")
    return out


def to_eval_config(cfg: DictConfig) -> EvalConfig:
    """The typed, validated eval config. Raises ConfigError naming the key to fix."""
    _reject_unknown_keys(cfg, EvalConfig)
    config: EvalConfig = OmegaConf.to_object(cfg)
    validate(config)
    return config


def validate(config: EvalConfig) -> None:
    expand_tasks(list(config.tasks))
    if not config.lengths:
        raise ConfigError("lengths is empty: use e.g. lengths=[4K,8K]")
    for value in config.lengths:
        parse_length(value)
    for d in config.depths or ():
        if not 0.0 <= d <= 1.0:
            raise ConfigError(f"depths: {d} is not in [0, 1]: use fractions, e.g. depths=[0,0.5,1], or null")
    if config.depths is not None and not config.depths:
        raise ConfigError("depths is empty: use e.g. depths=[0,0.5,1], or null for RULER's own draws")
    if config.ssa_settings:
        if config.attention is not None:
            raise ConfigError("ssa_settings applies to a saved SSA model (attention=null); with attention=ssa "
                              "set attention.ssa.* instead")  # fmt: skip
        unknown = sorted(set(config.ssa_settings) - {f.name for f in dataclasses.fields(SSAConfig)})
        if unknown:
            raise ConfigError(f"ssa_settings.{unknown[0]}: not an SSA setting (the attention.ssa.* keys)")
        try:
            SSAConfig(**{**dataclasses.asdict(SSAConfig(router="learned")), **config.ssa_settings}).validate()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"ssa_settings: {e}".replace("attention.", "ssa_settings.")) from e
    _positive("samples", config.samples)
    if not 0 <= config.seed or config.seed + config.samples > 2**31:
        raise ConfigError(f"seed={config.seed}: use 0 <= seed and seed + samples <= 2**31")
    if config.max_new_tokens is not None:
        _positive("max_new_tokens", config.max_new_tokens)
    _positive("max_prefill_tokens", config.max_prefill_tokens, 0)
    _one_of("dtype", config.dtype, {"auto", "bf16", "fp16", "fp32"})
    _one_of("wandb", config.wandb, {"disabled", "offline", "online"})
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device):
        raise ConfigError(f"device={config.device!r} is not valid: use auto, cpu, cuda or cuda:N")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={config.device!r} but no CUDA device is available: use device=cpu or auto")
    if config.attention is not None:
        a = config.attention
        _one_of("attention.name", a.name, {"dense", "ssa"})
        _one_of("attention.impl", a.impl, {"sdpa", "eager", "flash_attention_2", "flex_attention"})
        if a.name == "ssa":
            try:
                a.ssa.validate()
            except ValueError as e:
                raise ConfigError(str(e).replace("attention.", "attention.ssa.")) from e
    if config.answer_fn is not None:
        resolve_answer_fn(config.answer_fn)
        if config.needle_routing:
            raise ConfigError("needle_routing reads the model's routing: set answer_fn=null or needle_routing=false")
    if not config.out_dir:
        raise ConfigError("out_dir is empty: give a directory for results.json, results.md and the heatmap")


# --- answers without a model (harness checks) -----------------------------------------------------


def oracle_answer(sample: Sample) -> str:
    """The gold completion: scores 100 on every task."""
    return sample.target


def random_answer(sample: Sample) -> str:
    """A uniform guess of the answers' shape: each gold answer with every digit and letter redrawn at random
    (a 7-digit number for a 7-digit number, a uuid-shaped string for a uuid). Seeded by the sample."""
    rng = random.Random(f"random|{sample.task}|{sample.length}|{sample.depth}|{sample.seed}")

    def redraw(c: str) -> str:
        for alphabet in (string.digits, string.ascii_lowercase, string.ascii_uppercase):
            if c in alphabet:
                return rng.choice(alphabet)
        return c

    return " ".join("".join(redraw(c) for c in answer) for answer in sample.answers)


def resolve_answer_fn(name: str) -> AnswerFn:
    """``oracle``, ``random`` or ``package.module:function``."""
    if name in ("oracle", "random"):
        return oracle_answer if name == "oracle" else random_answer
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr) if attr else None
    except (ImportError, AttributeError):
        fn = None
    if not callable(fn):
        raise ConfigError(f"answer_fn={name!r}: use null (the model), oracle, random or package.module:function")
    return fn


# --- model --------------------------------------------------------------------------------------


def resolve_checkpoint(path: str) -> Path:
    """A model directory from ``checkpoint``: the directory itself, a trainer checkpoint's ``model/``,
    or the ``model/`` of a run directory's latest checkpoint."""
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return p
    if (p / "model" / "config.json").is_file():
        return p / "model"
    steps = [s for s in (p / "checkpoints").glob("step_*") if s.is_dir() and not s.name.endswith(".tmp")]
    if steps:
        latest = max(steps, key=lambda s: int(s.name.split("_")[1]))
        if (latest / "model" / "config.json").is_file():
            return latest / "model"
    raise ConfigError(
        f"checkpoint={path!r}: no model there (looked for config.json, model/config.json and "
        f"checkpoints/step_N/model/config.json); or checkpoint=null for the model group's model"
    )


def model_source(config: EvalConfig) -> ModelConfig:
    """The ModelConfig that builds the evaluated model: the checkpoint's directory (its own tokenizer
    when it has one, else ``model.tokenizer``; ``model.rope_scaling`` applies), or the model group."""
    if config.checkpoint is None:
        return config.model
    path = resolve_checkpoint(config.checkpoint)
    has_tokenizer = any((path / f).is_file() for f in TOKENIZER_FILES)
    if not has_tokenizer and config.model.tokenizer is None:
        raise ConfigError(f"checkpoint={config.checkpoint!r} has no tokenizer: set model.tokenizer (byte or a dir)")
    return ModelConfig(
        name=path.name,
        path=str(path),
        tokenizer=None if has_tokenizer else config.model.tokenizer,
        rope_scaling=config.model.rope_scaling,
    )


def resolve_device(config: EvalConfig) -> tuple[torch.device, torch.dtype]:
    device = torch.device(config.device if config.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dtype = dtypes.get(config.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


def load_model(config: EvalConfig, mcfg: ModelConfig, hf_config: PretrainedConfig) -> PreTrainedModel:
    """The model in eval mode on ``device`` / ``dtype``. ``attention`` null: as saved (an SSA checkpoint
    with its learned routers and settings; anything else dense), else as the attention group says."""
    device, dtype = resolve_device(config)
    torch.manual_seed(config.seed)  # a random-init model (checkpoint=null) is the same in every run
    if config.attention is None and mcfg.path is not None and getattr(hf_config, "ssa", None):
        model = ssa_from_pretrained(str(mcfg.path), config=hf_config, dtype=torch.float32)
        model.config.ssa = {**model.config.ssa, **config.ssa_settings}  # the layers read it at every call
        ssa_config_of(model.config).validate()
        warn_yarn_temperature(model)
    else:
        if config.ssa_settings:
            raise ConfigError(
                f"ssa_settings={config.ssa_settings}: {mcfg.path or 'the model'} is not a saved SSA model"
            )
        model = build_model(mcfg, config.attention or AttentionConfig(), hf_config)  # warns itself
    return model.to(device=device, dtype=dtype).eval()


def attention_of(model: PreTrainedModel | None) -> str | None:
    if model is None:
        return None
    return "ssa" if getattr(model.config, "_attn_implementation", None) == "ssa" else "dense"


# --- decoding -----------------------------------------------------------------------------------


class PromptEncoder:
    """``encode(text) -> (1, T)`` prompt ids, with the tokenizer's special tokens (BOS) where it adds them."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.byte_ids = make_tokenize(tokenizer) if is_byte_tokenizer(tokenizer) else None

    def __call__(self, text: str) -> torch.Tensor:
        if self.byte_ids is not None:  # the byte tokenizer adds none; skip its slow BPE pass
            return torch.from_numpy(self.byte_ids(text))[None]
        return torch.tensor(self.tokenizer(text, add_special_tokens=True)["input_ids"])[None]


class GreedyDecoder:
    """``decoder(ids, max_new_tokens) -> (prediction, info)`` with the model's own generate."""

    def __init__(self, model: PreTrainedModel, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        gen = model.generation_config
        self.eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.layers = model.config.num_hidden_layers

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, max_new_tokens: int) -> tuple[str, dict]:
        ids = ids.to(self.device)  # (1, T)
        gen = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            return_dict_in_generate=True,
        )
        # prefill_s / decode_s: where a sample's time goes. The model's first forward is the prefill; a hook on
        # the model, not a generate streamer, since HF defers its streamer's tokens where it defers stop checks
        prefilled: list[float] = []

        def mark_prefill(*_) -> None:
            if not prefilled:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                prefilled.append(time.perf_counter())

        hook = self.model.register_forward_hook(mark_prefill)
        start = time.perf_counter()
        try:
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen)
        finally:
            hook.remove()
        new = out.sequences[0, ids.shape[1] :].cpu()  # (new,); waits for the last step
        cache = getattr(out, "cache", None)  # transformers >= 5.2x; past_key_values before
        cache = cache if cache is not None else getattr(out, "past_key_values", None)
        states = getattr(cache, "ssa_decode_states", None) or {}
        # every layer kept an SSA decode state on the cache: the prompt prefilled it and new tokens advanced it
        decode = "ssa" if len(states) == self.layers else "dense"
        end = time.perf_counter()
        pred = self.tokenizer.decode(new, skip_special_tokens=True)
        times = {"prefill_s": round(prefilled[0] - start, 3), "decode_s": round(end - prefilled[0], 3)}
        return pred, {"new_tokens": int(new.numel()), "decode": decode, **times}


def max_new_tokens_of(sample: Sample, config: EvalConfig) -> int:
    if config.max_new_tokens is not None:
        return config.max_new_tokens
    return int(sample.metadata.get("tokens_to_generate") or sample.reserved_tokens)


# --- the run ------------------------------------------------------------------------------------


def evaluate(config: EvalConfig, answer_fn: AnswerFn | None = None, command: str | None = None) -> dict:
    """Run the evaluation, write results.json / results.md / niah_heatmap.png into ``config.out_dir``
    (and wandb), and return the results.json content. ``answer_fn`` (a Sample -> prediction function)
    replaces the model, overriding ``config.answer_fn``."""
    validate(config)
    tasks = expand_tasks(list(config.tasks))
    lengths = sorted({parse_length(v) for v in config.lengths})  # shortest first: errors come early
    if answer_fn is None and config.answer_fn is not None:
        answer_fn = resolve_answer_fn(config.answer_fn)

    mcfg = model_source(config)
    tokenizer = build_tokenizer(mcfg)
    hf_config = build_config(mcfg, tokenizer, seq_len=0)  # lengths are checked below, naming eval keys
    max_positions = _max_positions(hf_config)
    too_long = [L for L in lengths if L > max_positions]
    if too_long:
        raise ConfigError(
            f"lengths: {too_long[0]} is beyond the model's {max_positions} positions "
            f"(max_position_embeddings={hf_config.max_position_embeddings}, model.rope_scaling="
            f"{config.model.rope_scaling}): drop it from lengths or set model.rope_scaling, e.g. "
            f"'model.rope_scaling={{rope_type:yarn,factor:{-(-max(lengths) // hf_config.max_position_embeddings)}.0,"
            f"original_max_position_embeddings:{hf_config.max_position_embeddings}}}'"
        )
    model = load_model(config, mcfg, hf_config) if answer_fn is None else None
    decoder = GreedyDecoder(model, tokenizer) if model is not None else None
    if config.needle_routing and attention_of(model) != "ssa":
        raise ConfigError(f"needle_routing reads SSA routing; {mcfg.path or 'the model'} runs dense attention")
    encode = PromptEncoder(tokenizer)
    if model is not None:
        device, dtype = resolve_device(config)
        what = mcfg.path or f"random-init {mcfg.name}"
        log.info("evaluating %s (attention=%s) on %s, %s", what, attention_of(model), device, dtype)

    rows: list[dict] = []
    start = time.perf_counter()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = (out_dir / "samples.jsonl").open("w", encoding="utf-8")  # rows as they finish: see the docstring
    bar = tqdm(total=len(tasks) * len(lengths), desc="eval", unit="task", file=sys.stderr,
               disable=not config.progress, dynamic_ncols=True)  # fmt: skip
    try:
        for length in lengths:
            for task in tasks:
                bar.set_postfix_str(f"{task} @ {format_length(length)}", refresh=True)
                depths = [None] if task in NO_NEEDLE or config.depths is None else list(config.depths)
                scores = []
                for depth in depths:
                    for i in range(config.samples):
                        row = run_sample(task, length, depth, config.seed + i, tokenizer, config, encode,
                                         decoder, answer_fn, max_positions)  # fmt: skip
                        rows.append(row)
                        scores.append(row["score"])
                        journal.write(json.dumps(row, ensure_ascii=False) + "\n")
                        journal.flush()
                mean = sum(scores) / len(scores)
                routed = needle_routing_summary(rows[len(rows) - len(scores) :])
                note = (
                    ""
                    if routed is None
                    else f" (needle routed: {routed['mean']:.2f}, best layer {routed['best_layer']:.2f}"
                    + "".join(f"; {k} {v:.2f}" for k, v in routed.get("first_token", {}).items())
                    + ")"
                )
                (bar.write if config.progress else log.info)(f"{task} @ {format_length(length)}: {mean:.1f}{note}")
                bar.update(1)
    finally:
        bar.close()
        journal.close()

    results = {
        "checkpoint": mcfg.path or f"random-init:{mcfg.name}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or "train.eval.evaluate (in process)",
        "label": label_of(rows),
        "attention": attention_of(model),
        "ssa": dict(getattr(model.config, "ssa", None) or {}) if attention_of(model) == "ssa" else None,
        "answer_fn": None if answer_fn is None else getattr(answer_fn, "__name__", repr(answer_fn)),
        "seconds": round(time.perf_counter() - start, 3),
        "config": dataclasses.asdict(config),
        "results": rows,
        "summary": summarize(rows, tasks, lengths),
    }
    write_outputs(results, out_dir)
    if config.wandb != "disabled":
        log_to_wandb(results, config)
    return results


def run_sample(
    task: str,
    length: int,
    depth: float | None,
    seed: int,
    tokenizer,
    config: EvalConfig,
    encode: Callable[[str], torch.Tensor],
    decoder: GreedyDecoder | None,
    answer_fn: AnswerFn | None,
    max_positions: int,
) -> dict:
    try:
        sample = generate(task, length, tokenizer, seed, depth, "eval")
    except LengthError as e:  # lengths run shortest first: this stops before the long ones
        raise ConfigError(f"lengths: {e}; drop that length from lengths or {task} from tasks") from None
    t0 = time.perf_counter()
    ids = encode(sample.prompt)  # (1, T)
    max_new = max_new_tokens_of(sample, config)
    prompt_tokens = ids.shape[1]
    if config.max_prefill_tokens and prompt_tokens > config.max_prefill_tokens:
        raise ConfigError(
            f"{task} @ {length}: a prompt of {prompt_tokens} tokens is beyond max_prefill_tokens="
            f"{config.max_prefill_tokens}, and the sequence-parallel prefill rungs do not exist yet in parallel/: "
            f"drop the length from lengths or raise max_prefill_tokens (0: no limit)"
        )
    if prompt_tokens + max_new > max_positions:
        raise ConfigError(
            f"{task} @ {length}: {prompt_tokens} prompt + {max_new} new tokens are beyond the model's "
            f"{max_positions} positions: lower max_new_tokens (null: the task's) or the lengths"
        )
    if answer_fn is not None:
        pred, info = answer_fn(sample), {"new_tokens": None, "decode": "answer_fn"}
    elif config.needle_routing:
        pred, info = decode_recording_needle(decoder, sample, encode, ids, max_new)
    else:
        pred, info = decoder(ids, max_new)
    score = float(sample.score(pred))
    miss = sample.read_miss(pred) if score < 100 else None
    return {
        "task": task,
        "length": length,
        "depth": depth,
        "seed": seed,
        "score": score,
        "pred": pred,
        "answers": list(sample.answers),
        **({"miss": miss} if miss else {}),
        "needle_depth": sample.needle_depths[0] if sample.needle_depths else None,
        "label": sample.label,
        "prompt_tokens": int(prompt_tokens),
        **info,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def needle_blocks(sample: Sample, encode: Callable[[str], torch.Tensor], block_size: int) -> list[int]:
    """The key blocks holding the gold answer's first occurrence in the prompt (the needle's value), or []
    when the prompt does not contain it (tasks without a copied needle). Token offsets by encoding the
    prompt up to the answer's first and last character: exact for the byte tokenizer, a tokenizer that merges
    across the boundary may shift them by a token."""
    at = sample.prompt.find(sample.answers[0]) if sample.answers and sample.answers[0] else -1
    if at < 0:
        return []
    first = encode(sample.prompt[:at]).shape[1]
    last = encode(sample.prompt[: at + len(sample.answers[0])]).shape[1] - 1
    return list(range(first // block_size, last // block_size + 1))


def decode_recording_needle(decoder: GreedyDecoder, sample: Sample, encode, ids: torch.Tensor, max_new: int):
    """``decoder(ids, max_new)`` under a :class:`DecodeRouteRecorder`; ``info`` gains ``needle_blocks`` and
    ``needle_routed``: per layer, the share of (kv head, token) pairs whose selection lists every needle
    block, over the tokens that predicted a new token (the prompt's last, then each decode step: the answer and
    whatever follows it up to EOS or max_new), and ``needle_routed_first``, the same for the first new token;
    ``needle_lost`` / ``needle_ranks_first`` / ``needle_widths_first``: where the search dropped the needle's
    first block (:class:`~ssa_kernels.decode.reference.BeamTrace`)."""
    cfg = ssa_config_of(decoder.model.config)
    blocks = needle_blocks(sample, encode, cfg.block_size)
    if not blocks:
        pred, info = decoder(ids, max_new)
        return pred, {**info, "needle_blocks": [], "needle_routed": None, "needle_routed_first": None}

    def record(layer: int, indices: torch.Tensor, trace) -> tuple[torch.Tensor, object]:
        return blocks_listed(indices, blocks).float().mean(), trace

    with DecodeRouteRecorder(record, trace_block=blocks[0]) as rec:
        pred, info = decoder(ids, max_new)
    if not rec.records:
        raise RuntimeError("needle_routing: generate kept no SSA decode state (call ssa_kernels.hf.enable_ssa_decode)")
    steps = [rec.records[t] for t in sorted(rec.records)]  # {layer: (share of kv heads, trace)}, one per token
    layers = sorted(steps[0])
    table = torch.stack([torch.stack([step[i][0] for i in layers]) for step in steps]).cpu()  # (tokens, layers)
    first = [steps[0][i][1] for i in layers]
    return pred, {**info, "needle_blocks": blocks, "needle_routed": [round(v, 3) for v in table.mean(0).tolist()],
                  "needle_routed_first": [round(v, 3) for v in table[0].tolist()],
                  # where each token's search dropped the needle's first block: [token][layer][kv head], see
                  # BeamTrace.lost_at (-1 routed, -2 not routable, else the pyramid level), and for the first
                  # token the rank of its ancestor per level [layer][kv head][level] against the widths kept
                  "needle_lost": [[step[i][1].lost_at()[0].tolist() for i in layers] for step in steps],
                  "needle_ranks_first": [t.rank[0].tolist() for t in first],
                  "needle_widths_first": first[0].width.tolist()}  # fmt: skip


def needle_routing_summary(rows: list[dict]) -> dict | None:
    """Over rows with ``needle_routed``: the mean over samples of its mean over layers and of its best layer."""
    got = [r["needle_routed"] for r in rows if r.get("needle_routed")]
    if not got:
        return None
    summary = {"mean": _mean([sum(v) / len(v) for v in got]), "best_layer": _mean([max(v) for v in got]), "n": len(got)}
    lost = [h for r in rows if r.get("needle_lost") for layer in r["needle_lost"][0] for h in layer]
    if lost:  # first new token, over samples x layers x kv heads
        names = {-1: "routed", -2: "not routable"}
        summary["first_token"] = {names.get(v, f"lost at level {v}"): round(lost.count(v) / len(lost), 3)
                                  for v in sorted(set(lost))}  # fmt: skip
    return summary


def label_of(rows: list[dict]) -> str:
    """RULER-offline when any sample used a local substitute; RULER when all are exact; else the labels."""
    labels = {r["label"] for r in rows}
    if "RULER-offline" in labels:
        return "RULER-offline" if labels <= {"RULER", "RULER-offline"} else "+".join(sorted(labels))
    return "+".join(sorted(labels))


def depth_bin(row: dict) -> float | None:
    """The heatmap's depth: the one asked for, else where the gold needle went, to the nearest 10%."""
    if row["depth"] is not None:
        return float(row["depth"])
    return None if row["needle_depth"] is None else round(row["needle_depth"] * 10) / 10


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 2)


def summarize(rows: list[dict], tasks: list[str], lengths: list[int]) -> dict:
    """Means: per task x length (over depths and samples), per length (each task weighs the same), per
    task; the niah depth x length grid; the effective length over the evaluated tasks."""
    by_cell: dict[tuple[str, int], list[float]] = defaultdict(list)
    by_depth: dict[tuple[float, int], list[float]] = defaultdict(list)
    for r in rows:
        by_cell[r["task"], r["length"]].append(r["score"])
        if r["task"].startswith("niah") and depth_bin(r) is not None:
            by_depth[depth_bin(r), r["length"]].append(r["score"])
    cell = {t: {L: _mean(by_cell[t, L]) for L in lengths} for t in tasks}
    per_length = {L: _mean([cell[t][L] for t in tasks]) for L in lengths}
    depths = sorted({d for d, _ in by_depth})
    routed = {t: {str(L): needle_routing_summary([r for r in rows if (r["task"], r["length"]) == (t, L)])
                  for L in lengths} for t in tasks}  # fmt: skip
    return {
        **({"needle_routed": routed} if any(v for t in routed.values() for v in t.values()) else {}),
        "task_length": {t: {str(L): v for L, v in cell[t].items()} for t in tasks},
        "length": {str(L): v for L, v in per_length.items()},
        "task": {t: _mean(list(cell[t].values())) for t in tasks},
        "niah_depth_length": {
            str(d): {str(L): _mean(by_depth[d, L]) for L in lengths if by_depth.get((d, L))} for d in depths
        },
        "effective_length": effective_length({L: {t: cell[t][L] for t in tasks} for L in lengths}),
        "threshold": RULER_THRESHOLD,
        "effective_length_tasks": tasks,
    }


def format_length(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    return f"{n >> 10}K" if n % 1024 == 0 else str(n)


def markdown(results: dict) -> str:
    s = results["summary"]
    lengths = list(s["length"])
    head = "| task | " + " | ".join(format_length(int(L)) for L in lengths) + " |"
    lines = [
        f"# Evaluation of {results['checkpoint']}",
        "",
        f"{results['label']}, {results['date']}, "
        + (f"attention: {results['attention']}, " if results["attention"] else f"answers: {results['answer_fn']}, ")
        + f"{len(results['results'])} samples (mean score 0-100 over depths and seeds).",
        "",
        head,
        "|---" * (len(lengths) + 1) + "|",
    ]
    for task, row in s["task_length"].items():
        lines.append(f"| {task} | " + " | ".join(f"{row[L]:.1f}" for L in lengths) + " |")
    lines.append("| **average** | " + " | ".join(f"**{s['length'][L]:.1f}**" for L in lengths) + " |")
    n = len(s["effective_length_tasks"])
    eff = s["effective_length"]
    lines += [
        "",
        f"Effective length (longest length whose {n}-task mean is >= {s['threshold']}): "
        f"{format_length(eff) if eff else 'none'}",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def niah_heatmap(results: dict, path: Path) -> Path | None:
    """Mean niah score per (depth, length) as a PNG; None when there is no niah row or no matplotlib."""
    grid = results["summary"]["niah_depth_length"]
    if not grid:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s", path.name)
        return None
    lengths = list(results["summary"]["length"])
    depths = list(grid)
    values = [[grid[d].get(L, math.nan) for L in lengths] for d in depths]  # (depths, lengths)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.45 * len(depths)))
    im = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [format_length(int(L)) for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * float(d):.0f}%" for d in depths])
    ax.set_xlabel("length (tokens)")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"NIAH, {Path(str(results['checkpoint'])).name}", fontsize=9)
    fig.colorbar(im, ax=ax, label="score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.json.tmp"  # a reader never sees half a file
    tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    tmp.replace(out_dir / "results.json")
    (out_dir / "results.md").write_text(markdown(results))
    niah_heatmap(results, out_dir / "niah_heatmap.png")
    log.info("wrote %s", out_dir / "results.json")


def log_to_wandb(results: dict, config: EvalConfig) -> None:
    """Per-sample table, heatmap and summary to wandb; offline when online fails (no API key, no network)."""
    import wandb

    out_dir = Path(config.out_dir)
    kwargs = dict(project=config.project, name=out_dir.name, dir=str(out_dir), job_type="eval",
                  config={**results["config"], "checkpoint": results["checkpoint"], "label": results["label"]})  # fmt: skip
    try:
        run = wandb.init(mode=config.wandb, **kwargs)
    except Exception as e:  # noqa: BLE001 - any login / network failure: keep the run, offline
        if config.wandb != "online":
            raise
        log.warning("wandb online failed (%s): logging offline into %s/wandb", e, out_dir)
        run = wandb.init(mode="offline", **kwargs)
    columns = ["task", "length", "depth", "seed", "score", "pred", "answers"]
    table = wandb.Table(columns=columns, data=[[r[c] if c != "answers" else " | ".join(r[c]) for c in columns]
                                               for r in results["results"]])  # fmt: skip
    logged: dict[str, Any] = {"eval/samples": table}
    if (out_dir / "niah_heatmap.png").is_file():
        logged["eval/niah_heatmap"] = wandb.Image(str(out_dir / "niah_heatmap.png"))
    run.log(logged)
    s = results["summary"]
    for task, row in s["task_length"].items():
        for L, v in row.items():
            run.summary[f"eval/{task}/{L}"] = v
    for L, v in s["length"].items():
        run.summary[f"eval/average/{L}"] = v
    run.summary["eval/effective_length"] = s["effective_length"]
    for name in ("results.json", "results.md"):
        run.save(str(out_dir / name), base_path=str(out_dir), policy="now")
    run.finish()


# --- entry point --------------------------------------------------------------------------------

register_configs()


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        config = to_eval_config(cfg)
        config.out_dir = HydraConfig.get().runtime.output_dir  # the same ${now} as hydra.run.dir
        results = evaluate(config, command=" ".join(["python -m train.eval", *sys.argv[1:]]))
    except (ConfigError, CheckpointError, LengthError) as e:
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(2)
    sys.stdout.write(markdown(results))


if __name__ == "__main__":
    main()
