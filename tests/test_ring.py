"""Rung ``ring`` on CPU with gloo: the ring attention functions (dense and SSA's block-sparse) equal
attention over the whole row, forward and gradients, at cp = 2 and 4; a model's loss and every parameter
gradient under ring cp=2 and Ulysses x ring 2 x 2 equal the single-process run (fp32, 1e-5) for dense and
SSA attention (both routers) on packed multi-document rows with padding; and a trainer run under torchrun
equals the single-process run step by step and resumes after a SIGKILL with the uninterrupted run's losses.

Workers run under ``torchrun --standalone`` (the port is chosen at run time), each in a subprocess with a
timeout, as in tests/test_ulysses.py; each rank computes the single-process reference itself.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from parallel.dims import init_distributed
from parallel.ring import Ring, ring_attention, sparse_ring_attention, unzigzag, zigzag_shard
from ssa_kernels.attention import sparse_attention
from ssa_kernels.config import SSAConfig
from ssa_kernels.hf import doc_ids_from_positions
from ssa_kernels.selector import select_blocks
from tests.test_distributed import TIMEOUT_S, Job, check_ok, job_env, run_workers, torchrun, wait_all
from tests.test_train import _wait_for_step, losses, same_steps
from tests.test_ulysses import SEQ_LEN, TRAINER_ATTENTION, packed_batch, tiny_model

# (attention, T, documents): 112 and 127 are padded to 128 (ring cp=2: multiple 4 dense / 64 SSA;
# 2 x 2: 8 / 128). (9, 1000) gives SSA blocks with more routed candidates than topk_blocks, so a routing
# gradient exists (ssa_kernels._routed_slots) and the router gradients are compared.
CASES = [
    ("sdpa", 128, (37, 50, 9, 1000)),
    ("sdpa", 127, (37, 50, 9, 1000)),
    ("ssa", 112, (37, 50, 9, 1000)),
    ("ssa", 112, (9, 1000)),
    ("ssa_learned", 112, (9, 1000)),
    ("ssa_mqa", 112, (9, 1000)),  # 2 x 2: the one kv head repeated for sp=2, routing over its whole group
    ("ssa_learned_tiled", 112, (9, 1000)),  # parallel.tiled_layer in tiles of 16 around the ring's attention
]


def _fill(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def _docs(t: int, lengths=(20, 7, 30, 1000)) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.cat([torch.arange(n) for n in lengths])[:t].expand(2, -1)  # (B=2, T)
    return pos, doc_ids_from_positions(pos)


def _dense_reference(q, k, v, doc):
    """Causal attention within documents over the whole row: q [B, Hq, T, D], k/v [B, Hkv, T, D]."""
    g = q.shape[1] // k.shape[1]
    t = q.shape[2]
    mask = torch.ones(t, t, dtype=torch.bool).tril() & (doc[:, :, None] == doc[:, None, :])  # (B, T, T)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


def check_ring_attention(ring: Ring) -> None:
    """Dense ring attention on this rank's zigzag shard == its shard of whole-row attention (output and
    q/k/v gradients), with GQA and packed documents."""
    cp, r = ring.size, ring.rank
    g = torch.Generator().manual_seed(0)
    q, k, v, w = _fill(g, 2, 4, 64, 8), _fill(g, 2, 2, 64, 8), _fill(g, 2, 2, 64, 8), _fill(g, 2, 4, 64, 8)
    _, doc = _docs(64)
    full = [x.clone().requires_grad_() for x in (q, k, v)]
    out = _dense_reference(*full, doc)
    (out * w).sum().backward()
    mine = [zigzag_shard(x, cp, r, dim=2).requires_grad_() for x in (q, k, v)]
    out_r = ring_attention(*mine, ring, doc)
    (out_r * zigzag_shard(w, cp, r, dim=2)).sum().backward()
    _close(out_r, zigzag_shard(out.detach(), cp, r, dim=2), f"dense ring cp={cp} out")
    for name, a, b in zip("qkv", mine, full):
        _close(a.grad, zigzag_shard(b.grad, cp, r, dim=2), f"dense ring cp={cp} d{name}")


def check_sparse_ring_attention(ring: Ring) -> None:
    """SSA's block-sparse attention around the ring (the selector's lists, a differentiable block bias) ==
    this rank's rows of ``sparse_attention`` over the whole row: output, q/k/v and bias gradients."""
    cp, r = ring.size, ring.rank
    cfg = SSAConfig(block_size=8, topk_blocks=3, local_window=16, top_nodes=4, router="attention", backend="reference")
    g = torch.Generator().manual_seed(1)
    t = 128
    q, k, v, w = _fill(g, 2, 4, t, 8), _fill(g, 2, 2, t, 8), _fill(g, 2, 2, t, 8), _fill(g, 2, 4, t, 8)
    _, doc = _docs(t, (40, 5, 1000))
    indices = select_blocks(q, k, cfg, doc).indices  # (B, Hkv, nb, S)
    bias = _fill(g, *indices.shape)
    full = [x.clone().requires_grad_() for x in (q, k, v, bias)]
    out, _ = sparse_attention(*full[:3], indices, cfg.block_size, doc_ids=doc, block_bias=full[3])
    (out * w).sum().backward()
    rows = zigzag_shard(torch.arange(t // cfg.block_size), cp, r, dim=0)  # our query blocks
    mine = [zigzag_shard(x, cp, r, dim=2).requires_grad_() for x in (q, k, v)]
    mine.append(bias[:, :, rows].requires_grad_())
    out_r = sparse_ring_attention(*mine[:3], indices[:, :, rows], cfg.block_size, ring, doc, block_bias=mine[3])
    (out_r * zigzag_shard(w, cp, r, dim=2)).sum().backward()
    _close(out_r, zigzag_shard(out.detach(), cp, r, dim=2), f"sparse ring cp={cp} out")
    for name, a, b in zip("qkv", mine, full):
        _close(a.grad, zigzag_shard(b.grad, cp, r, dim=2), f"sparse ring cp={cp} d{name}")
    _close(mine[3].grad, full[3].grad[:, :, rows], f"sparse ring cp={cp} dbias")


def reference(attention: str, t: int, docs: tuple[int, ...]):
    model = tiny_model(attention)
    loss = model(**packed_batch(t, docs=docs))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    routers = [g for n, g in grads.items() if ".ssa_router." in n]
    assert all(g.abs().max() > 0 for g in routers), attention  # else their equality would prove nothing
    return loss.detach(), grads


def check_model(dims, refs) -> None:
    """Loss and every parameter gradient of each case under ``dims`` == the single-process run."""
    from parallel.ring import apply_ring

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    for name in ("parallel.ring", "parallel.ulysses"):  # the padding line comes from SequenceSharded
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    for attention, t, docs in CASES:
        records.clear()
        model = apply_ring(tiny_model(attention), dims)
        local = model(**packed_batch(t, docs=docs))  # this rank's shard's loss sum
        (local * dims.world).backward()  # DDP averages over the world: the sum of every shard's gradient
        total = local.detach().clone()
        dist.all_reduce(total)
        ref_loss, ref_grads = refs[(attention, t, docs)]
        what = f"{attention} T={t} docs={docs} cp={dims.cp} sp={dims.sp} rank={dims.rank}"
        _close(total, ref_loss, f"{what} loss")
        for name, p in model.module.module.named_parameters():
            _close(p.grad, ref_grads[name], f"{what} {name}")
        if t != 128:
            assert any("padded to 128" in r for r in records), (what, records)


def _worker(world: int) -> None:
    """One torchrun rank. 2 processes: the functions at cp=2 and the model at ring cp=2. 4 processes:
    the functions at cp=4 and the model at Ulysses 2 x ring 2."""
    faulthandler.dump_traceback_later(TIMEOUT_S - 20, exit=True)  # a hang fails with every thread's stack
    torch.set_num_threads(1)
    refs = {case: reference(*case) for case in CASES}
    dims = init_distributed("cpu", "gloo", sp=1, cp=world)
    try:
        ring = Ring.of(dims.cp_group)
        assert (ring.size, ring.rank) == (world, dims.rank)
        check_ring_attention(ring)
        check_sparse_ring_attention(ring)
        if world == 4:
            dims = init_distributed("cpu", "gloo", sp=2, cp=2)
            assert (dims.sp_rank, dims.cp_rank) == (dims.rank % 2, dims.rank // 2)
        check_model(dims, refs)
    finally:
        # the groups go before the default group (see tests/test_ulysses.py: a rank could hang at exit)
        dims = ring = None  # noqa: F841
        gc.collect()
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_ring_matches_single_process(world):
    run_workers(__file__, world, str(world))


@pytest.mark.parametrize("cp", [2, 4])
def test_each_listed_block_is_visited_once_and_empty_steps_are_skipped(cp):
    """Over the ring's steps, every listed block of every query block is present in exactly one visiting
    chunk (so each is attended once); with only the diagonal block listed, every step but our own is
    skipped (None)."""
    from parallel.ring import _visiting

    g = torch.Generator().manual_seed(2)
    q, k = _fill(g, 2, 4, 128, 8), _fill(g, 2, 2, 128, 8)
    _, doc = _docs(128, (40, 5, 1000))
    block, nb = 8, 16
    for cfg, diagonal_only in [
        (SSAConfig(block_size=block, topk_blocks=3, local_window=16, top_nodes=4, router="attention"), False),
        (SSAConfig(block_size=block, topk_blocks=0, local_window=block, sink_blocks=0, router="attention"), True),
    ]:
        indices = select_blocks(q, k, cfg, doc).indices
        for r in range(cp):
            ring = Ring(None, cp, r, 0, 0)
            mine = indices[:, :, zigzag_shard(torch.arange(nb), cp, r, dim=0)]
            hits = torch.zeros_like(mine)
            for j in range(cp):
                vis = _visiting(mine, ring, j, nb // (2 * cp))
                if diagonal_only:
                    assert (vis is None) == (j != r), (r, j)
                if vis is not None:
                    slot, local = vis
                    hits.scatter_add_(-1, slot, (local >= 0).long())
            assert torch.equal(hits, (mine >= 0).long()), (cfg, r)


def test_ring_functions_gradcheck_and_ignore_autocast():
    """On a ring of one (no communication: the same Functions, every pair on one rank), fp64 gradcheck of
    the dense and the sparse ring attention (q, k, v and the block bias), and bf16 autocast leaves their
    fp32 math unchanged."""
    ring = Ring(None, 1, 0, 0, 0)
    g = torch.Generator().manual_seed(3)
    q, k, v = (_fill(g, 1, h, 16, 4).double().requires_grad_() for h in (2, 1, 1))
    _, doc = _docs(16, (5, 3, 100))
    assert torch.autograd.gradcheck(lambda q, k, v: ring_attention(q, k, v, ring, doc[:1]), (q, k, v))
    cfg = SSAConfig(block_size=4, topk_blocks=1, local_window=4, top_nodes=2, router="attention")
    indices = select_blocks(q.detach(), k.detach(), cfg, doc[:1]).indices
    bias = _fill(g, *indices.shape).double().requires_grad_()

    def sparse(q, k, v, bias):
        return sparse_ring_attention(q, k, v, indices, 4, ring, doc[:1], block_bias=bias)

    assert torch.autograd.gradcheck(sparse, (q, k, v, bias))
    q32, k32, v32 = (x.detach().float() for x in (q, k, v))
    plain = ring_attention(q32, k32, v32, ring, doc[:1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = ring_attention(q32, k32, v32, ring, doc[:1])
    assert under.dtype == torch.float32 and torch.equal(under, plain)


def test_ring_degree_must_divide_the_world(monkeypatch):
    """parallel.cp x parallel.sp must divide the processes: the error names the key and what would work
    (raised before any process group is made)."""
    from parallel.dims import ParallelError

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(
        ParallelError, match=r"parallel.cp=3 x parallel.sp=1 must divide the 4 processes .* \[1, 2, 4\]"
    ):
        init_distributed("cpu", "gloo", sp=1, cp=3)
    with pytest.raises(ParallelError, match=r"parallel.cp=4 x parallel.sp=2 .* \[1, 2\]"):
        init_distributed("cpu", "gloo", sp=2, cp=4)


def test_zigzag_placement():
    """Ring rank r holds chunks r and 2cp-1-r of 2cp; unzigzag puts the shards back in order."""
    x = torch.arange(16).view(1, 16)
    assert zigzag_shard(x, 2, 0).tolist() == [[0, 1, 2, 3, 12, 13, 14, 15]]
    assert zigzag_shard(x, 2, 1).tolist() == [[4, 5, 6, 7, 8, 9, 10, 11]]
    assert zigzag_shard(x, 4, 1).tolist() == [[2, 3, 12, 13]]
    assert torch.equal(unzigzag([zigzag_shard(x, 4, r) for r in range(4)], dim=1), x)


# --- the trainer under ring ----------------------------------------------------------------------

STEPS = 20  # checkpoints every 10; the kill lands after step 12


def trainer_cmd(
    run_dir: Path, data_cache: Path, attention: str, *parallel: str, extra: tuple[str, ...] = (), nproc: int = 0
) -> list[str]:
    """``python -m train`` on the smoke experiment, positions restarting at each packed document;
    ``parallel`` empty: one process, else ``parallel=ring``
    with these overrides under torchrun with ``nproc`` processes (0: parallel.cp x parallel.sp)."""
    # rows padded under cp=2: ssa 112 -> 128 (2 x cp x block 16 = 64), dense 111 -> 112 (2 x cp = 4)
    args = ["-m", "train", "experiment=smoke", "parallel.device=cpu", f"train.steps={STEPS}", "train.ckpt_every=10",
            f"train.seq_len={SEQ_LEN[attention][0]}", "logging.wandb=disabled", f"data.cache_dir={data_cache}",
            f"hydra.run.dir={run_dir}", "data.doc_mask=true", *TRAINER_ATTENTION[attention], *extra]  # fmt: skip
    if not parallel:
        return [sys.executable, *args, "parallel=single"]
    if not nproc:
        nproc = 1
        for p in parallel:
            if p.startswith(("parallel.cp=", "parallel.sp=")):
                nproc *= int(p.split("=")[1])
    return [*torchrun(nproc), *args, "parallel=ring", *parallel]


# SSA only: dense ring attention is the same trainer path (tested against single-process at model level
# above); a dense run here would add ~20 s to a file that should stay near a minute and a half.
def test_trainer_under_ring_matches_single_and_resumes_after_a_kill(tmp_path, data_cache):
    """``python -m train parallel=ring parallel.cp=2`` under torchrun: each step's loss and gradient norm
    equal the single-process run's (1e-5), rows padded as logged; a third run, SIGKILLed (torchrun and every
    worker) after step 12, resumes from its last checkpoint and reproduces the first bit for bit."""
    attention = "ssa"
    ring_cmd = trainer_cmd(tmp_path / "ring", data_cache, attention, "parallel.cp=2")
    jobs = [Job(ring_cmd, job_env(), tmp_path / "ring.log"),
            Job(trainer_cmd(tmp_path / "single", data_cache, attention), job_env(), tmp_path / "single.log")]  # fmt: skip
    kill_dir = tmp_path / "kill"
    kill_cmd = trainer_cmd(kill_dir, data_cache, attention, "parallel.cp=2")
    # alongside the others (the runs are mostly start-up): killed, then resumed
    kill_job = Job(kill_cmd, job_env(), tmp_path / "kill.log")
    try:
        _wait_for_step(kill_dir, 12, kill_job.proc, TIMEOUT_S)
    except BaseException:
        for job in jobs:
            job.kill()
        raise
    finally:
        kill_job.kill()
    saved = sorted(int(p.name.split("_")[1]) for p in (kill_dir / "checkpoints").glob("step_????????"))
    assert saved and saved[-1] < STEPS, saved  # killed mid-run
    jobs.append(Job(kill_cmd, job_env(), tmp_path / "resume.log"))
    for rc, out in wait_all(*jobs):
        check_ok(rc, out)
    assert f"padded to {SEQ_LEN[attention][1]}" in (tmp_path / "ring.log").read_text()
    same_steps(losses(tmp_path / "ring"), losses(tmp_path / "single"), STEPS)
    out = (tmp_path / "resume.log").read_text()
    assert f"step_{saved[-1]:08d} at step {saved[-1]}" in out, out[-6000:]
    assert losses(kill_dir) == losses(tmp_path / "ring")


if __name__ == "__main__":
    _worker(int(sys.argv[1]))
