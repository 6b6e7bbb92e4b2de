"""Rungs ``offload`` and ``nested_offload``: DeepSpeed ZeRO-3 with the parameters and the optimizer
offloaded to host memory.

Each rank keeps 1/world of every parameter, of its gradient and of AdamW's state, all on the host
(``offload_param`` / ``offload_optimizer`` device cpu, pinned on GPU machines). A layer's parameters are
gathered onto the GPU just before its forward (and again before its backward) and freed after, so the
GPU holds about one layer's weights plus the activations. Gradients are reduce-scattered after every
micro-batch and accumulated in fp32 on the host; AdamW steps there.

Composes with data parallelism (ZeRO partitions over the whole world, which is its data-parallel group)
and with Ulysses (``parallel.sp`` > 1: the same all-to-all attention and sequence sharding as
``parallel/ulysses.py``, without DDP; gradients are averaged over dp x sp as under DDP).

``nested_offload`` is the same rung with the other memory pieces required on: the layer inputs that
activation checkpointing keeps go to the host (``parallel.offload_activations``), the MLP runs in tiles
(``parallel.tiled_mlp``), and the lm_head + loss runs in chunks as under every rung (``train/loss.py``).
``conf/parallel/nested_offload.yaml`` turns them on; ``train.activation_checkpointing=true`` is required.

The rung has two halves: :func:`apply_offload` prepares the built model (``parallelize``), and
:class:`OffloadRunner` makes DeepSpeed's engine, which owns backward, the optimizer step and the
checkpoint of the partitioned state (the trainer calls it through ``parallel.runner.StepRunner``).
The DeepSpeed config is built here from ours (:func:`deepspeed_config`); nothing else is read from a
DeepSpeed JSON.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from parallel.dims import ParallelDims, ParallelError
from parallel.runner import OptimizerFactory, SchedulerFactory, StepSettings
from parallel.ulysses import shard_sequences

log = logging.getLogger(__name__)

TAG = "zero3"  # the checkpoint's subdirectory written by DeepSpeed's save_checkpoint
OPTIMIZERS = ("auto", "cpu_adam", "torch")
BUILD_DTYPES = ("auto", "fp32")


@dataclass
class OffloadConfig:
    """``parallel.offload.*``: used by the offload rungs only."""

    # The host optimizer. cpu_adam: DeepSpeed's vectorised CPU AdamW (5-7x torch's on the host; a C++ op that
    # DeepSpeed JIT-builds with gcc on first use, ~1.5 min on 2 cores, then cached in ~/.cache/torch_extensions).
    # torch: torch.optim.AdamW on the host partitions (no build; the exact update of the other rungs).
    # auto: cpu_adam on GPU, torch on CPU (CI, where the build would cost more than the steps).
    optimizer: str = "auto"
    # Parameters with fewer elements stay whole on every GPU (DeepSpeed's stage3_param_persistence_threshold;
    # norms and biases, by default): they cost little memory and spare a gather per layer. 0: partition all.
    persistence_threshold: int = 100_000
    pin_memory: bool = True  # pinned host buffers (faster host<->GPU copies); ignored on CPU
    # The dtype each process builds (or loads) the model in before ZeRO-3 partitions it (build_dtype()).
    # auto: bf16 when train.precision is bf16, fp32 otherwise. fp32: always (twice the host memory per process).
    build_dtype: str = "auto"


def check_offload_config(cfg: OffloadConfig) -> None:
    """Raise ParallelError naming the ``parallel.offload.*`` key that cannot work."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ParallelError(f"parallel.offload.optimizer={cfg.optimizer!r} is not valid: use one of {list(OPTIMIZERS)}")
    if cfg.build_dtype not in BUILD_DTYPES:
        raise ParallelError(
            f"parallel.offload.build_dtype={cfg.build_dtype!r} is not valid: use one of {list(BUILD_DTYPES)}"
        )
    if cfg.persistence_threshold < 0:
        raise ParallelError(
            f"parallel.offload.persistence_threshold={cfg.persistence_threshold}: a number of elements, >= 0 "
            f"(0 partitions every parameter)"
        )


def build_dtype(cfg: OffloadConfig, bf16: bool) -> torch.dtype:
    """The dtype to build the model in under the offload rungs (``parallel.offload.build_dtype``).

    Every process of a node builds the whole model on the host before ZeRO-3 partitions it (no
    ``deepspeed.zero.Init``: see docs/ladder.md), so the build is the host's peak on nodes of 5 or more GPUs.
    With bf16 the build can be bf16 at no cost in fidelity: DeepSpeed casts every parameter to bf16 before it
    partitions them and makes its fp32 master weights from the bf16 partitions (``DeepSpeedEngine.
    _configure_distributed_model``, ``DeepSpeedZeroOptimizer_Stage3``), so an fp32 build is rounded to the same
    bf16 values anyway (a test checks the steps equal bit for bit). Half the bytes per parameter per process:
    the 8B model on 8 GPUs builds 128 GB of host memory instead of 256, under ZeRO-3's own 18 bytes a parameter."""
    check_offload_config(cfg)
    return torch.bfloat16 if bf16 and cfg.build_dtype == "auto" else torch.float32


def apply_offload(model: nn.Module, dims: ParallelDims) -> nn.Module:
    """Prepare the built loss model (``model.lm`` inside) for ZeRO-3; the engine is made by
    :class:`OffloadRunner`, which also needs the optimizer."""
    import deepspeed
    from deepspeed.utils import set_z3_leaf_module

    # The chunked loss reads lm_head's weight directly (train/loss.py), outside lm_head's forward, where
    # ZeRO-3 would not have gathered it: gather it for the loss model's forward (and backward) instead.
    deepspeed.zero.register_external_parameter(model, model.lm.get_output_embeddings().weight)
    # A tiled MLP (parallel/tiled_mlp.py) passes its weights to an autograd.Function, which reads them again
    # in backward, outside its linears' forwards: ZeRO-3 gathers all of the MLP's weights around the whole
    # MLP instead (a "leaf" module), in forward and again before its backward.
    # The same for a tiled layer (parallel/tiled_layer.py): the whole decoder layer is the leaf.
    for module in model.modules():
        if getattr(module, "tiled_mlp_tokens", None) or getattr(module, "tiled_layer_tokens", None):
            set_z3_leaf_module(module, True)
    return shard_sequences(model, dims, "offload")  # Ulysses attention and sharded rows when parallel.sp > 1


def deepspeed_config(cfg: OffloadConfig, settings: StepSettings, on_gpu: bool, cpu_adam: bool) -> dict[str, Any]:
    """DeepSpeed's config for ZeRO-3 with parameter and optimizer offload, from ours."""
    pin = cfg.pin_memory and on_gpu  # pinning needs a GPU
    return {
        "train_micro_batch_size_per_gpu": settings.micro_batch,
        "gradient_accumulation_steps": settings.grad_accum,
        # The trainer owns accumulation: one backward per micro-batch, one step() per optimizer step.
        "managed_gradient_accumulation": False,
        "gradient_clipping": settings.grad_clip,
        # bf16 parameters on the GPU (half the gathers and host<->GPU traffic), fp32 master weights and AdamW
        # state on the host; fp32 throughout otherwise (CPU, tests).
        "bf16": {"enabled": settings.bf16},
        "zero_optimization": {
            "stage": 3,
            "offload_param": {"device": "cpu", "pin_memory": pin},
            "offload_optimizer": {"device": "cpu", "pin_memory": pin},
            "stage3_param_persistence_threshold": cfg.persistence_threshold,
        },
        # torch's AdamW on the host is allowed on purpose (parallel.offload.optimizer=torch); see OffloadConfig
        "zero_force_ds_cpu_optimizer": cpu_adam,
        "wall_clock_breakdown": False,
    }


def _join_process_group(dims: ParallelDims) -> None:
    """DeepSpeed needs a process group and LOCAL_RANK even for one process; torchrun provides both."""
    os.environ.setdefault("LOCAL_RANK", str(dims.local_rank))  # the engine asserts it is set
    if not dist.is_initialized():  # one process: an in-memory store, no port
        backend = "nccl" if dims.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def _cpu_adam(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """DeepSpeed's CPU AdamW over the same parameter groups (lr, betas, eps, weight decay per group)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    keys = ("params", "lr", "betas", "eps", "weight_decay")
    return DeepSpeedCPUAdam([{k: g[k] for k in keys} for g in optimizer.param_groups], adamw_mode=True)


class OffloadRunner:
    """The training step's optimizer half on DeepSpeed's ZeRO-3 engine (see ``parallel.runner.StepRunner``)."""

    def __init__(
        self,
        module: nn.Module,
        dims: ParallelDims,
        cfg: OffloadConfig,
        make_optimizer: OptimizerFactory,
        make_scheduler: SchedulerFactory,
        settings: StepSettings,
    ):
        import deepspeed

        check_offload_config(cfg)
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # it logs its whole config at INFO
        # DeepSpeed 0.19 calls all_gather_into_tensor / reduce_scatter_tensor, which torch 2.13 deprecates:
        # one FutureWarning per call, every step
        warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
        _join_process_group(dims)
        on_gpu = dims.device.type == "cuda"
        cpu_adam = cfg.optimizer == "cpu_adam" or (cfg.optimizer == "auto" and on_gpu)
        optimizer = make_optimizer(module)
        if cpu_adam:
            optimizer = _cpu_adam(optimizer)
        scheduler = make_scheduler(optimizer)
        config = deepspeed_config(cfg, settings, on_gpu, cpu_adam)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=False
        )
        self.module, self.dims = self.engine, dims
        self.state_kind = f"deepspeed zero3, {dims.world} ranks"
        log.info(
            "offload: ZeRO-3 over %d ranks, parameters and %s on the host",
            dims.world, "DeepSpeedCPUAdam" if cpu_adam else "torch AdamW",
        )  # fmt: skip

    def accumulating(self, more: bool) -> AbstractContextManager:
        # ZeRO-3 reduce-scatters every micro-batch's gradients into the fp32 host accumulator; there is
        # nothing to skip (DeepSpeed refuses no_sync under stage 3)
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # the trainer already divides by the global valid-token count of all micro-batches
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> torch.Tensor:
        # DeepSpeed clips and steps in one call and skips the step (norm reported inf) when the norm is not finite
        self.engine.step()
        return torch.as_tensor(self.engine.get_global_grad_norm(), dtype=torch.float32).to(self.dims.device)

    def full_state_dict(self, lm: nn.Module) -> dict[str, torch.Tensor] | None:
        """Every rank gathers each parameter's fp32 master weights (one parameter at a time); rank 0 keeps
        them on the host, with ``lm``'s buffers."""
        from deepspeed.utils import safe_get_full_fp32_param

        state: dict[str, torch.Tensor] = {}
        gathered: dict[int, torch.Tensor] = {}  # tied weights are gathered once
        # state_dict's keys (activation checkpointing's wrapper names stripped), the parameters themselves
        for name, t in lm.state_dict(keep_vars=True).items():
            if isinstance(t, nn.Parameter):
                if id(t) not in gathered:
                    full = safe_get_full_fp32_param(t)  # collective
                    gathered[id(t)] = full.detach().cpu() if self.dims.is_main else None
                t = gathered[id(t)]
            state[name] = t.detach().cpu() if self.dims.is_main else None
        return state if self.dims.is_main else None

    def save_state(self, directory: Path) -> None:
        # every rank writes its partition of the fp32 weights and AdamW state under directory/zero3
        self.engine.save_checkpoint(str(directory), tag=TAG, save_latest=False)

    def load_state(self, directory: Path) -> None:
        # the schedule is the checkpointer's (trainer.pt), as under the other rungs
        path, _ = self.engine.load_checkpoint(str(directory), tag=TAG, load_lr_scheduler_states=False)
        if path is None:
            raise ParallelError(f"{directory / TAG}: DeepSpeed could not load this ZeRO-3 checkpoint")
