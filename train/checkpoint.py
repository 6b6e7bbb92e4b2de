"""Atomic checkpoints: model (HF format, loadable with from_pretrained), optimizer, scheduler, RNG
of every rank, data position of every stream, and the resolved config.

Everything is written into ``step_N.tmp``, which rank 0 renames to ``step_N`` when complete, so a
directory named ``step_N`` is always whole; a run killed while saving leaves only a ``.tmp`` that the
next start removes. Rank 0 writes the files (RNG and data states are gathered to it; the rung's
``StepRunner`` gathers the whole weights); a rung whose optimizer state is partitioned (``offload``)
has every rank write its own part into the same ``.tmp`` first. Loading reads from a filesystem that
all ranks see, in two parts: the weights into the built model (:meth:`Checkpointer.load`), then the
optimizer state, schedule and RNG into the rung's runner (:meth:`Checkpointer.load_state`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from transformers.utils import logging as hf_logging

from parallel import ParallelDims, StepRunner

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed here; the message names the key to change."""


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(obj: Any, dims: ParallelDims) -> list[Any]:
    if not dims.distributed:
        return [obj]
    out = [None] * dims.world if dims.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def _save_model(lm: nn.Module, weights: dict[str, torch.Tensor], directory: Path) -> None:
    """``lm.save_pretrained`` with ``weights``, its config's ``dtype`` that of the weights. HF writes the model's
    own parameter dtype, which under the offload rungs with bf16 is DeepSpeed's bf16 while the weights saved are
    its fp32 master weights: a plain ``from_pretrained`` would load them rounded to bf16."""
    dtype = next((t.dtype for t in weights.values() if t.is_floating_point()), None)  # save_pretrained empties it
    lm.save_pretrained(directory, state_dict=weights, safe_serialization=True)
    if dtype is None or str(lm.config.dtype).removeprefix("torch.") == str(dtype).removeprefix("torch."):
        return
    config = lm.config.__class__.from_dict(lm.config.to_dict())
    config.dtype = dtype
    config.save_pretrained(directory)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True) + [path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _step_of(path: Path) -> int:
    return int(path.name.split("_")[1])


class Checkpointer:
    def __init__(self, run_dir: Path, dims: ParallelDims, keep: int):
        self.root = Path(run_dir) / "checkpoints"
        self.dims, self.keep = dims, keep
        if dims.is_main and self.root.exists():
            for stale in self.root.glob("step_*.tmp"):
                log.warning("removing %s, left by a run killed while saving", stale)
                shutil.rmtree(stale)

    def all(self) -> list[Path]:
        if not self.root.exists():
            return []
        done = [p for p in self.root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")]
        return sorted(done, key=_step_of)

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(
        self,
        step: int,
        runner: StepRunner,
        lm: nn.Module,
        tokenizer,
        data_state: dict[int, dict],
        meta: dict[str, Any],
        config_yaml: str,
    ) -> Path:
        """Collective: every rank calls it. ``lm`` is the HF model inside the runner's module."""
        data_states = _gather(data_state, self.dims)
        rng_states = _gather(_rng_state(), self.dims)
        final = self.root / f"step_{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.dims.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if self.dims.distributed:
            dist.barrier()  # tmp exists before any rank writes its part into it
        weights = runner.full_state_dict(lm)  # on rank 0
        runner.save_state(tmp)
        if self.dims.is_main:
            hf_logging.disable_progress_bar()  # no "Writing model shards" bar per checkpoint
            _save_model(lm, weights, tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
            torch.save({"scheduler": runner.scheduler.state_dict(), "step": step}, tmp / "trainer.pt")
            torch.save(rng_states, tmp / "rng.pt")
            merged = {str(sid): s for part in data_states for sid, s in part.items()}
            (tmp / "data.json").write_text(json.dumps(merged, indent=1, sort_keys=True))
            saved_meta = {**meta, "step": step, "optimizer_state": runner.state_kind}
            (tmp / "meta.json").write_text(json.dumps(saved_meta, indent=1))
            (tmp / "config.yaml").write_text(config_yaml)
            _fsync_tree(tmp)
            if final.exists():  # re-saving the same step after a resume: replace it whole
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.all()[: -self.keep]:
                shutil.rmtree(old)
            log.info("saved checkpoint %s", final)
        if self.dims.distributed:
            dist.barrier()
        return final

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint to resume from for ``resume`` (auto | none | a path), or None."""
        if resume == "auto":
            return self.latest()
        if resume == "none":
            if self.latest() is not None:
                raise CheckpointError(
                    f"resume=none but {self.root} already holds checkpoints; use resume=auto to continue "
                    f"that run, or choose another run directory (name=... or hydra.run.dir=...)"
                )
            return None
        path = Path(resume).expanduser()
        if not (path / "meta.json").is_file():
            raise CheckpointError(f"resume={resume!r}: not a checkpoint directory (no meta.json)")
        return path

    def load(self, path: Path, lm: nn.Module, meta: dict[str, Any]) -> tuple[int, dict[int, dict]]:
        """Restore the weights into the built model (before any rung partitions it); returns (step, data
        state of every stream). :meth:`load_state` restores the rest once the rung's runner exists."""
        saved = json.loads((path / "meta.json").read_text())
        check_compatible(saved, meta, path)
        state = {}
        for f in sorted((path / "model").glob("*.safetensors")):
            state.update(load_file(f))
        missing, unexpected = lm.load_state_dict(state, strict=False)
        tied = {id(p) for n, p in lm.named_parameters() if n in state} if missing else set()
        untied = [k for k in missing if id(lm.get_parameter(k)) not in tied]
        if untied or unexpected:
            raise CheckpointError(
                f"{path}: weights do not match the model (missing {untied[:3]}, unexpected {unexpected[:3]})"
            )
        trainer = torch.load(path / "trainer.pt", weights_only=True)
        data = {int(k): v for k, v in json.loads((path / "data.json").read_text()).items()}
        return trainer["step"], data

    def load_state(self, path: Path, runner: StepRunner) -> None:
        """Restore the optimizer state (through the rung's runner), the schedule and every rank's RNG."""
        saved = json.loads((path / "meta.json").read_text()).get("optimizer_state", "torch")
        if saved != runner.state_kind:
            raise CheckpointError(
                f"{path} holds the optimizer state of {saved!r}, this run has {runner.state_kind!r}: resume with "
                f"the rung and number of processes that wrote it (parallel.name, torchrun --nproc-per-node), or "
                f"start a new run from its weights (model=hf model.path={path / 'model'})"
            )
        runner.load_state(path)
        trainer = torch.load(path / "trainer.pt", weights_only=True)
        runner.scheduler.load_state_dict(trainer["scheduler"])
        rngs = torch.load(path / "rng.pt", weights_only=False)
        if len(rngs) == self.dims.world:
            _set_rng_state(rngs[self.dims.rank])
        else:
            log.warning(
                "checkpoint was made by %d ranks, this run has %d: RNG streams restart", len(rngs), self.dims.world
            )
        log.info("resumed from %s at step %d", path, trainer["step"])


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise CheckpointError, naming the key to change, when ``saved`` cannot continue as ``current``."""
    if saved["params"] != current["params"]:
        diff = sorted(set(saved["params"].items()) ^ set(current["params"].items()))
        raise CheckpointError(
            f"{path} holds a different model (first difference: {diff[0][0]} {saved['params'].get(diff[0][0])} in the "
            f"checkpoint vs {current['params'].get(diff[0][0])} now): set model.* as it was, or start a new run "
            f"(resume=none with another name=... / hydra.run.dir=...)"
        )
    if saved["global_rows"] != current["global_rows"]:
        raise CheckpointError(
            f"{path} was trained with a global batch of {saved['global_rows']} rows (data-parallel ranks x "
            f"train.grad_accum x train.micro_batch), this run has {current['global_rows']}: the data position is "
            f"per row, so keep that product (any split of it between ranks and accumulation resumes exactly)"
        )
    if saved["seq_len"] != current["seq_len"]:
        raise CheckpointError(
            f"{path} was trained with train.seq_len={saved['seq_len']}, this run has {current['seq_len']}: "
            f"set train.seq_len={saved['seq_len']} to resume (start a new stage from the weights instead)"
        )
