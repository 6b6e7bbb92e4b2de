"""The optimizer half of a training step, behind one small interface that every rung implements.

The trainer calls, per step: ``runner.module(**batch)`` (forward) -> ``runner.backward(loss)`` per
micro-batch (inside ``runner.accumulating(...)``) -> ``runner.step()``; and for checkpoints
``full_state_dict`` / ``save_state`` / ``load_state``. :class:`TorchRunner` is torch's optimizer on a
(DDP-)wrapped module, for every rung whose parameters are whole on each rank. A rung that owns the
optimizer itself (``offload``: DeepSpeed's ZeRO-3 engine, ``parallel/offload.py``) brings its own runner,
so the trainer has no per-rung branch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from parallel.dims import ParallelDims

# Build the optimizer for a module's parameters, and the lr schedule for an optimizer (train/optim.py).
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


@dataclass(frozen=True)
class StepSettings:
    """What a runner needs of the training config (parallel/ does not read train/'s config)."""

    grad_clip: float  # max global gradient norm
    micro_batch: int  # rows per rank and micro-batch
    grad_accum: int  # micro-batches per optimizer step
    bf16: bool  # mixed precision in bf16 (train.precision resolved); fp32 otherwise


class StepRunner(Protocol):
    module: nn.Module  # call it with a batch; it returns the sum of the token losses
    scheduler: Any  # the lr schedule (its state is saved by the checkpointer)
    state_kind: str  # what save_state writes, checked when resuming ("torch", "zero3 x N ranks")

    def accumulating(self, more: bool) -> AbstractContextManager:
        """Context of a micro-batch's forward and backward; ``more``: not the last of the step."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> torch.Tensor:
        """Clip to the global norm, step the optimizer and the schedule unless the norm is not finite,
        zero the gradients. Returns the norm before clipping."""

    def full_state_dict(self, lm: nn.Module) -> dict[str, torch.Tensor] | None:
        """Collective: ``lm``'s whole weights (state_dict keys) on rank 0, None elsewhere."""

    def save_state(self, directory: Path) -> None:
        """Collective: the optimizer state into ``directory`` (which every rank sees)."""

    def load_state(self, directory: Path) -> None: ...


class TorchRunner:
    """torch's optimizer on a module whose parameters are whole on every rank (single, ddp, ulysses)."""

    state_kind = "torch"

    def __init__(
        self,
        module: nn.Module,
        dims: ParallelDims,
        make_optimizer: OptimizerFactory,
        make_scheduler: SchedulerFactory,
        settings: StepSettings,
    ):
        self.module, self.dims, self.settings = module, dims, settings
        self.optimizer = make_optimizer(module)
        self.scheduler = make_scheduler(self.optimizer)

    def accumulating(self, more: bool) -> AbstractContextManager:
        # DDP: skip the gradient all-reduce on all but the last micro-batch of an accumulation
        return self.module.no_sync() if more and hasattr(self.module, "no_sync") else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.settings.grad_clip)
        if torch.isfinite(norm):  # a host sync, next to the step's one for logging
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def full_state_dict(self, lm: nn.Module) -> dict[str, torch.Tensor] | None:
        return lm.state_dict() if self.dims.is_main else None

    def save_state(self, directory: Path) -> None:
        if self.dims.is_main:
            torch.save(self.optimizer.state_dict(), Path(directory) / "optimizer.pt")

    def load_state(self, directory: Path) -> None:
        state = torch.load(Path(directory) / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state)
