"""The continued-pretraining (CPT) trainer. One step, in three hops:
``batches = next(loader)`` (data/) -> ``runner.module(**batch)`` (the parallelized HF model with the
chunked loss) -> ``runner.backward`` / ``runner.step()`` (the rung's optimizer half,
``parallel/runner.py``), then log and checkpoint.

The loss is the sum of token losses over the global count of valid tokens (all micro-batches, all
ranks), so accumulation and data parallelism never change it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from data import IGNORE_INDEX, build_loader
from parallel import (
    ParallelDims,
    StepRunner,
    StepSettings,
    build_runner,
    destroy_distributed,
    init_distributed,
    parallelize,
    weights_dtype,
)
from parallel.offload import build_dtype
from parallel.plan import GIB, NESTED_TILE, Setup, Shape, choose, estimate
from ssa_kernels.diagnostics import SSARecorder, router_metrics, router_stats_recorder
from train.checkpoint import Checkpointer
from train.config import Config, ConfigError
from train.model import CausalLMLoss, attach_position_skip, build_config, build_model, build_tokenizer
from train.optim import build_optimizer, build_scheduler
from train.tracking import Tracker, flops_per_token, peak_flops

log = logging.getLogger(__name__)
# parallel.memory_check=error raises only where an estimate exceeds the memory by more than this: the planner's checked
# error against every measured peak (tests/test_plan.py) is within 15%
MEMORY_CHECK_MARGIN = 1.15


class NonFiniteLoss(RuntimeError):
    """Loss or gradient norm became NaN/inf; nothing was saved for that step."""


class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self):
        self.received: int | None = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        if self.received is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: saving a checkpoint after this step, then exiting", signal.Signals(signum).name)

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def train_step(
    runner: StepRunner,
    loader,
    dims: ParallelDims,
    cfg: Config,
    autocast,
    stop: StopSignal,
    recorder: SSARecorder | None = None,
):
    """One optimizer step over ``train.grad_accum`` micro-batches. Returns (loss, grad_norm,
    stop_requested) after one host sync; the runner steps the optimizer only if the norm is finite.
    ``recorder`` (SSA router diagnostics) watches the first micro-batch's forward."""
    accum = cfg.train.grad_accum
    batches = [next(loader) for _ in range(accum)]
    # Global valid-token count first: every micro-batch's loss is normalised by it.
    n_valid = torch.stack([(b["labels"] != IGNORE_INDEX).sum() for b in batches]).sum().to(dims.device, torch.float32)
    if dims.distributed:
        dist.all_reduce(n_valid)
        n_valid /= dims.seq_shards  # the sp x cp ranks of a replica hold the same rows (each a shard's loss)
    scale = dims.world / n_valid.clamp_min(1)  # DDP averages gradients over all dp x sp x cp ranks
    loss_sum = torch.zeros((), device=dims.device)
    for i, batch in enumerate(batches):
        batch = {k: v.to(dims.device, non_blocking=True) for k, v in batch.items()}
        record = recorder if recorder is not None and i == 0 else contextlib.nullcontext()
        with runner.accumulating(i < accum - 1), autocast(), record:
            token_loss_sum = runner.module(**batch)
        runner.backward(token_loss_sum * scale)
        loss_sum += token_loss_sum.detach()
    flag = torch.tensor(float(stop.received is not None), device=dims.device)
    reduced = torch.stack([loss_sum, flag])
    if dims.distributed:
        dist.all_reduce(reduced)
    grad_norm = runner.step()  # clip, optimizer and schedule step, zero grads
    loss, grad_norm, stop_all = (torch.stack([reduced[0] / n_valid, grad_norm.float(), reduced[1]])).tolist()
    return loss, grad_norm, stop_all > 0


def _precision(precision: str, device: torch.device) -> str:
    """train.precision resolved: auto is bf16 on GPU, fp32 on CPU."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def _autocast_for(precision: str, device: torch.device):
    if _precision(precision, device) == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def train(cfg: Config, config_dict: dict, run_dir: Path) -> Path | None:
    """Run (or resume) the job described by ``cfg`` in ``run_dir``; returns the last checkpoint."""
    run_dir = Path(run_dir)
    auto = cfg.parallel.name == "auto"
    if auto:
        _resolve_auto(cfg)  # its pick fits by the same estimate (within 90%): nothing left for check_memory
    dims = init_distributed(cfg.parallel.device, cfg.parallel.backend, cfg.parallel.sp, cfg.parallel.cp)
    try:
        if not auto:
            check_memory(cfg, dims)
        return _train(cfg, config_dict, run_dir, dims)
    finally:
        destroy_distributed()


class _Machine(NamedTuple):
    """What the planner needs of a job and the machine it runs on (``parallel/plan.py``)."""

    shape: Shape
    setup: Setup
    world: int
    local_world: int
    gpu_gib: float | None  # one GPU's memory; None on CPU
    host_gib: float  # the node's memory


def _machine(cfg: Config) -> _Machine:
    config = build_config(cfg.model, build_tokenizer(cfg.model), cfg.train.seq_len)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    on_gpu = cfg.parallel.device != "cpu" and torch.cuda.is_available()
    p, t = cfg.parallel, cfg.train
    bf16 = _precision(t.precision, torch.device("cuda" if on_gpu else "cpu")) == "bf16"
    bf16_build = build_dtype(p.offload, bf16) == torch.bfloat16  # how an offload rung (if it is one) builds the model
    setup = Setup(cfg.attention.name, t.activation_checkpointing, p.tiled_mlp, p.offload_activations, t.micro_batch,
                  p.tiled_layer, bf16_build)  # fmt: skip
    return _Machine(
        Shape.from_hf_config(config, cfg.attention.name),
        setup,
        world,
        int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
        torch.cuda.get_device_properties(0).total_memory / GIB if on_gpu else None,
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB,
    )


def check_memory(cfg: Config, dims: ParallelDims) -> None:
    """Before anything is built: the planner's estimate of the rung as set up (``python -m parallel.plan``) against
    one GPU's and the node's memory, so that a run that cannot fit stops here with the keys to change, not at its
    first step's out-of-memory (or the host's OOM killer). ``parallel.memory_check``: error (default; raised only
    where the estimate is over the memory by more than the planner's checked error, 15%, and warned within it),
    warn, or off. GPU runs only: on CPU the planner has no device to plan."""
    mode = cfg.parallel.memory_check
    if mode == "off" or dims.device.type != "cuda":
        return
    m, p, t = _machine(cfg), cfg.parallel, cfg.train
    nodes = max(1, dims.world // dims.local_world)
    e = estimate(m.shape, t.seq_len, p.name, dims.local_world, dims.sp, m.setup, dims.cp, nodes)
    if e.note:
        return
    for what, need, have in (("GPU", e.gpu_bytes / GIB, m.gpu_gib), ("host", e.host_bytes / GIB, m.host_gib)):
        if need <= have:
            continue
        msg = (
            f"parallel={p.name} (sp={dims.sp}, cp={dims.cp}) at train.seq_len={t.seq_len:,} on {nodes} node(s) of "
            f"{dims.local_world} process(es): the planner estimates {need:.1f} GiB of {what} memory, "
            f"{'one GPU' if what == 'GPU' else 'the node'} has {have:.1f} GiB (terms: python -m parallel.plan). "
            f"Use parallel=auto (it picks a rung that fits, or says none does), a shorter train.seq_len, the memory "
            f"pieces (parallel.tiled_layer=16384, train.activation_checkpointing=true, "
            f"parallel.offload_activations=true), or more GPUs; "
            f"parallel.memory_check=warn runs anyway"
        )
        if mode == "error" and need > MEMORY_CHECK_MARGIN * have:
            raise ConfigError(msg)  # on every rank alike
        if dims.is_main:
            log.warning(msg)


def _resolve_auto(cfg: Config) -> None:
    """``parallel=auto``: the planner's rung (with its sp and cp) for this model, sequence length and machine
    (``parallel/plan.py``; nodes = WORLD_SIZE // LOCAL_WORLD_SIZE), written into ``cfg.parallel``."""
    shape, setup, world, local_world, mem, host_mem = _machine(cfg)
    p, t = cfg.parallel, cfg.train
    name, sp, cp, rows, tiled_layer = choose(shape, t.seq_len, world, local_world, mem, setup, host_mem)
    estimates = "; ".join(f"{e.rung} sp={e.sp} cp={e.cp}: {e.gpu_gib:.1f} GiB" for e in rows if not e.note)
    log.info(
        "parallel=auto picked parallel=%s parallel.sp=%d parallel.cp=%d%s on %d node(s) of %d processes (%s)",
        name,
        sp,
        cp,
        f" parallel.tiled_layer={tiled_layer} (nothing fits without it)" if tiled_layer != p.tiled_layer else "",
        max(1, world // local_world),
        local_world,
        estimates or "CPU: no GPU memory to plan",
    )
    p.name, p.sp, p.cp, p.tiled_layer = name, sp, cp, tiled_layer
    if name == "nested_offload":  # the planner counted its pieces: turn them on (conf/parallel/nested_offload.yaml)
        p.tiled_mlp, p.offload_activations = p.tiled_mlp or NESTED_TILE, True
        t.activation_checkpointing = True


def _train(cfg: Config, config_dict: dict, run_dir: Path, dims: ParallelDims) -> Path | None:
    t = cfg.train
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    config_yaml = OmegaConf.to_yaml(OmegaConf.create(config_dict))
    if not dims.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank speaks
    if dims.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml)  # the resolved config of this run

    tokenizer = build_tokenizer(cfg.model)
    bf16 = _precision(t.precision, dims.device) == "bf16"
    # bf16 only under the offload rungs, whose engine casts to bf16 anyway: half the host memory per process
    dtype = weights_dtype(cfg.parallel, bf16)
    lm = build_model(cfg.model, cfg.attention, build_config(cfg.model, tokenizer, t.seq_len), dtype)
    lm.train()
    skip = attach_position_skip(lm, t.position_skip, t.seq_len, t.seed)  # PoSE (train.position_skip), or None
    loss_model = CausalLMLoss(lm, t.loss_chunk).to(dims.device)
    n_params = sum(p.numel() for p in lm.parameters())  # counted before a rung partitions them
    n_embed = lm.get_input_embeddings().weight.numel()

    global_rows = dims.dp * t.grad_accum * t.micro_batch
    meta = {
        "params": {n: "x".join(map(str, p.shape)) for n, p in lm.state_dict().items()},
        "global_rows": global_rows,
        "seq_len": t.seq_len,
        "dp": dims.dp,
    }
    ckpt = Checkpointer(run_dir, dims, t.keep_checkpoints)
    start_step, data_state = 0, None
    resume_from = ckpt.resolve(cfg.resume)
    if resume_from is not None:
        start_step, data_state = ckpt.load(resume_from, lm, meta)  # weights; the optimizer's state below
    last_ckpt = resume_from
    if start_step >= t.steps:
        log.info("nothing to do: the run is at step %d of train.steps=%d", start_step, t.steps)
        return last_ckpt

    model = parallelize(
        loss_model, loss_model.decoder_layers, dims, cfg.parallel, t.activation_checkpointing, t.compile
    )
    settings = StepSettings(t.grad_clip, t.micro_batch, t.grad_accum, bf16)
    runner = build_runner(
        model,
        dims,
        cfg.parallel,
        lambda module: build_optimizer(module, t.optimizer),
        lambda optimizer: build_scheduler(optimizer, t.steps, t.schedule),
        settings,
    )
    if resume_from is not None:
        ckpt.load_state(resume_from, runner)  # optimizer state, schedule, RNG
    # packed documents, mixed with synthetic retrieval rows when data.synthetic.ratio > 0 (data/mix.py)
    loader = build_loader(
        cfg.data, tokenizer, t.seq_len, dims.dp_rank, dims.dp, t.grad_accum, t.micro_batch, data_state
    )
    flops_tok = flops_per_token(lm.config, n_params, n_embed, t.seq_len)
    peak = peak_flops(dims.device, cfg.logging.peak_tflops) * dims.world
    tokens_per_step = global_rows * t.seq_len
    autocast = _autocast_for(t.precision, dims.device)
    tracker = Tracker(cfg, config_dict, run_dir, dims.is_main, start_step)
    stop = StopSignal()
    router_every = cfg.logging.router_stats_every if cfg.attention.name == "ssa" else 0
    recent = collections.deque(maxlen=t.stop_at_loss_window)  # train.stop_at_loss's window
    try:
        for step in range(start_step + 1, t.steps + 1):
            t0 = time.perf_counter()
            if skip is not None:
                skip.begin_step(step)
            lr = runner.scheduler.get_last_lr()[0]
            # SSA router stats, recorded during this step's training forward (one extra selection per layer)
            recorder = None
            if router_every and step % router_every == 0:
                recorder = router_stats_recorder(cfg.logging.router_query_blocks, seed=step)
            loss, grad_norm, stop_requested = train_step(runner, loader, dims, cfg, autocast, stop, recorder)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise NonFiniteLoss(
                    f"loss={loss}, grad_norm={grad_norm} at step {step}: stopped without saving this step. "
                    f"Last good checkpoint: {last_ckpt or 'none yet'} (resume=auto continues from it); "
                    f"consider a lower train.optimizer.lr or train.grad_clip"
                )
            dt = time.perf_counter() - t0
            metrics = {
                "loss": loss,
                "grad_norm": grad_norm,
                "lr": lr,
                "tokens_per_s": tokens_per_step / dt,
                "step_s": dt,
            }
            if peak > 0:
                metrics["mfu"] = flops_tok * tokens_per_step / dt / peak
            if dims.device.type == "cuda":
                metrics["peak_mem_gib"] = torch.cuda.max_memory_allocated(dims.device) / 2**30
            if recorder is not None:
                metrics.update(router_metrics(recorder.records))
            tracker.log(step, metrics)
            recent.append(loss)
            mean = sum(recent) / len(recent)
            converged = t.stop_at_loss > 0 and len(recent) == recent.maxlen and mean <= t.stop_at_loss
            if converged:
                log.info("step %d: mean loss of the last %d steps %.4f <= train.stop_at_loss=%g: saving and stopping",
                         step, len(recent), mean, t.stop_at_loss)  # fmt: skip
            if (
                (t.ckpt_every and step % t.ckpt_every == 0)
                or (step == t.steps and t.save_final)
                or stop_requested
                or converged
            ):
                last_ckpt = ckpt.save(step, runner, lm, tokenizer, loader.state_dict(), meta, config_yaml)
            if converged:
                break
            if stop_requested:
                log.warning("stopped by signal at step %d; resume=auto continues from %s", step, last_ckpt)
                break
    finally:
        stop.restore()
        tracker.close()
    return last_ckpt
