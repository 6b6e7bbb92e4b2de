"""Rung ``ulysses`` on CPU with gloo: loss and every parameter gradient with sequence parallelism
equal the single-process run (fp32, 1e-5) for dense and SSA attention on packed multi-document
rows, with kv-head repetition (sp=4 > 2 kv heads) and padding; and a trainer run under torchrun
resumes after a kill with the uninterrupted run's losses.

Workers run under ``torchrun --standalone`` (the port is chosen at run time), each in a subprocess
with a timeout, as in tests/test_distributed.py; each rank computes the single-process reference itself.
"""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from parallel.dims import ParallelDims, ParallelError
from parallel.ulysses import apply_ulysses, kv_repeat_for
from ssa_kernels.config import SSAConfig
from ssa_kernels.hf import convert_to_ssa
from tests.test_distributed import REPO_ROOT, TIMEOUT_S, job_env
from train.model import CausalLMLoss

SSA = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4, router="attention", backend="reference")
DOCS = (37, 50, 9, 1000)  # document lengths of the packed row (the last one is cut at T)
CASES = [  # (attention, T): T=112 and T=127 are padded (to 128) under sp=2 / sp=4
    ("sdpa", 128),
    ("ssa", 128),
    ("sdpa", 127),
    ("ssa", 112),
]


def tiny_model(attention: str) -> CausalLMLoss:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, attention_dropout=0.0,
    )  # fmt: skip
    lm = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    if attention == "ssa":
        convert_to_ssa(lm, copy.deepcopy(SSA))
    return CausalLMLoss(lm)


def packed_batch(t: int, rows: int = 2) -> dict[str, torch.Tensor]:
    """Rows of several documents: positions restart at each, no label crosses a boundary."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (rows, t + 1), generator=g)
    pos = torch.cat([torch.arange(n) for n in DOCS])[:t]
    starts = (pos == 0).nonzero().flatten()
    labels = ids[:, 1:].clone()
    labels[:, starts[1:] - 1] = -100  # the last token of a document has no target
    return {"input_ids": ids[:, :-1], "labels": labels, "position_ids": pos.expand(rows, -1).clone()}


def reference(attention: str, t: int):
    model = tiny_model(attention)
    loss = model(**packed_batch(t))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(sp: int) -> None:
    """One torchrun rank: every case under sp, compared with this process's single-process run."""
    torch.set_num_threads(1)
    refs = {case: reference(*case) for case in CASES}
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        groups = [dist.new_group(list(range(s, s + sp))) for s in range(0, world, sp)]
        dims = ParallelDims(world, rank, rank, world // sp, 1, torch.device("cpu"), sp, groups[rank // sp])
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda r: records.append(r.getMessage())
        logging.getLogger("parallel.ulysses").addHandler(handler)
        logging.getLogger("parallel.ulysses").setLevel(logging.INFO)
        for attention, t in CASES:
            records.clear()
            model = apply_ulysses(tiny_model(attention), dims)
            local = model(**packed_batch(t))  # this rank's shard's loss sum
            (local * world).backward()  # DDP averages over the world: the sum of every shard's gradient
            total = local.detach().clone()
            dist.all_reduce(total)
            ref_loss, ref_grads = refs[(attention, t)]
            what = f"{attention} T={t} sp={sp} rank={rank}"
            torch.testing.assert_close(total, ref_loss, rtol=1e-5, atol=1e-5, msg=lambda m, w=what: f"{w} loss: {m}")
            for name, p in model.module.module.named_parameters():
                torch.testing.assert_close(
                    p.grad, ref_grads[name], rtol=1e-5, atol=1e-5, msg=lambda m, n=name, w=what: f"{w} {n}: {m}"
                )
            multiple = sp * (SSA.block_size if attention == "ssa" else 1)
            if t % multiple:
                assert any("padded to" in r for r in records), (what, records)
            if sp > 2:
                assert any("kv heads repeated 2x" in r for r in records), (what, records)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sp", [2, 4])
def test_ulysses_matches_single_process(sp):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={sp}"]
    out = subprocess.run(
        [*torchrun, str(Path(__file__)), str(sp)],
        cwd=REPO_ROOT, env=job_env(PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]


def test_heads_not_divisible_names_the_key():
    with pytest.raises(ParallelError, match="parallel.sp=3 must divide the model's 4 attention heads"):
        kv_repeat_for(4, 2, 3)
    assert kv_repeat_for(4, 2, 4) == 2 and kv_repeat_for(8, 8, 4) == 1


if __name__ == "__main__":
    _worker(int(sys.argv[1]))
