"""Memory-ladder rungs, applied to a built model from outside it (never inside the model file).

``parallelize`` applies, in order: tiled MLP -> tiled layer -> activation checkpointing (its kept inputs on the host with
``parallel.offload_activations``) -> torch.compile -> the rung's wrapper.
Adding a rung = one file here + one yaml in ``conf/parallel/``. :func:`build_runner` gives the trainer the
rung's ``StepRunner`` (``parallel/runner.py``): torch's optimizer, or the rung's own (``offload``: DeepSpeed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from parallel.ddp import apply_ddp
from parallel.dims import ParallelDims, ParallelError, destroy_distributed, init_distributed
from parallel.multinode import apply_multinode
from parallel.offload import OffloadConfig, OffloadRunner, apply_offload, build_dtype
from parallel.ring import apply_ring
from parallel.runner import OptimizerFactory, SchedulerFactory, StepRunner, StepSettings, TorchRunner
from parallel.single import apply_single
from parallel.tiled_layer import apply_tiled_layer
from parallel.tiled_mlp import apply_tiled_mlp
from parallel.ulysses import apply_ulysses

RUNGS: dict[str, Callable[[nn.Module, ParallelDims], nn.Module]] = {
    "single": apply_single,
    "ddp": apply_ddp,
    "ulysses": apply_ulysses,
    "multinode": apply_multinode,
    "offload": apply_offload,
    "nested_offload": apply_offload,  # offload with the pieces below required on (conf/parallel/nested_offload.yaml)
    "ring": apply_ring,
}

__all__ = [
    "RUNGS",
    "ParallelConfig",
    "ParallelDims",
    "ParallelError",
    "destroy_distributed",
    "init_distributed",
    "StepRunner",
    "StepSettings",
    "build_runner",
    "parallelize",
    "weights_dtype",
]
# Rungs whose optimizer step is not torch's on whole parameters bring their own StepRunner (parallel/runner.py).
RUNNERS: dict[str, type] = {"offload": OffloadRunner, "nested_offload": OffloadRunner}


@dataclass
class ParallelConfig:
    name: str = "single"  # a key of RUNGS
    device: str = "auto"  # auto | cuda | cpu
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    # Ulysses degree (parallel=ulysses, across nodes under multinode, inside each node under ring); dp = world // (sp x cp);
    # 0: every process of the job (over cp)
    sp: int = 1
    cp: int = 1  # ring degree (parallel=ring): ranks that pass k/v around, zigzag shards of each row
    tiled_mlp: int = 0  # tokens per MLP tile (parallel/tiled_mlp.py), any rung; 0: off
    # tokens per tile of every layer's token-wise parts, all but the attention core (parallel/tiled_layer.py); 0: off
    tiled_layer: int = 0
    # move what activation checkpointing keeps (each layer's input) to host memory during the forward
    offload_activations: bool = False
    offload: OffloadConfig = field(default_factory=OffloadConfig)  # parallel=offload: DeepSpeed ZeRO-3 settings
    # GPU runs: the planner's estimate of this rung against the GPU's and the host's memory before anything is built
    # (train/trainer.py: check_memory): error (over by > 15%: stop with the keys to change; within: warn) | warn | off
    memory_check: str = "error"


def weights_dtype(cfg: ParallelConfig, bf16: bool) -> torch.dtype:
    """The dtype to build the model's weights in, before :func:`parallelize` hands them to the rung: fp32 (the
    master weights of torch's optimizer, autocast for bf16), or bf16 under the offload rungs with bf16 training,
    whose DeepSpeed engine would cast the weights to bf16 first anyway (``parallel.offload.build_dtype``)."""
    return build_dtype(cfg.offload, bf16) if cfg.name in RUNNERS else torch.float32


def parallelize(
    model: nn.Module,
    decoder_layers: nn.ModuleList,
    dims: ParallelDims,
    cfg: ParallelConfig,
    activation_checkpointing: bool = False,
    compile: bool = False,
) -> nn.Module:
    """Apply AC, compile and the rung to ``model`` (whose transformer blocks are
    ``decoder_layers``). Returns the module to call for training."""
    if cfg.name not in RUNGS:
        raise ParallelError(f"parallel.name={cfg.name!r}: use one of {sorted(RUNGS)}")
    if dims.sp > 1 and cfg.name not in ("ulysses", "multinode", "ring", "offload", "nested_offload"):
        raise ParallelError(
            f"parallel.sp={dims.sp} shards sequences, which parallel={cfg.name} does not: use parallel=ulysses"
        )
    if dims.cp > 1 and cfg.name != "ring":
        raise ParallelError(f"parallel.cp={dims.cp} is the ring's degree: use parallel=ring (or parallel.cp=1)")
    if cfg.tiled_mlp:
        apply_tiled_mlp(decoder_layers, cfg.tiled_mlp)
    if cfg.tiled_layer:
        apply_tiled_layer(decoder_layers, cfg.tiled_layer)
    if cfg.offload_activations and not activation_checkpointing:
        raise ParallelError(
            "parallel.offload_activations moves what activation checkpointing keeps to the host: "
            "set train.activation_checkpointing=true"
        )
    if activation_checkpointing:
        for i, layer in enumerate(decoder_layers):
            decoder_layers[i] = _checkpointed(layer)
            if cfg.offload_activations:
                _offload_saved(decoder_layers[i])
    if compile:
        for layer in decoder_layers:
            layer.compile()  # in place: parameter names (and checkpoints) stay unchanged
    return RUNGS[cfg.name](model, dims)


def _checkpointed(layer: nn.Module) -> nn.Module:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    return checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def _offload_saved(layer: nn.Module) -> None:
    """Run ``layer`` (a checkpointed block, whose saved tensors are only its inputs) under torch's
    ``save_on_cpu``: those inputs go to (pinned) host memory in the forward and come back for the
    backward's recomputation. The forward is replaced in place, so parameter names stay unchanged."""
    forward = layer.forward

    def offloaded(*args, **kwargs):
        pin = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
        with torch.autograd.graph.save_on_cpu(pin_memory=pin):
            return forward(*args, **kwargs)

    layer.forward = offloaded


def build_runner(
    module: nn.Module,
    dims: ParallelDims,
    cfg: ParallelConfig,
    make_optimizer: OptimizerFactory,
    make_scheduler: SchedulerFactory,
    settings: StepSettings,
) -> StepRunner:
    """The rung's StepRunner for ``module`` (what :func:`parallelize` returned)."""
    if cfg.name in RUNNERS:
        return RUNNERS[cfg.name](module, dims, cfg.offload, make_optimizer, make_scheduler, settings)
    return TorchRunner(module, dims, make_optimizer, make_scheduler, settings)
