"""The ladder planner (parallel/plan.py): exact parameter counts, its estimates against every peak
measured on a GPU and recorded under docs/results/ (within 15%), the rung it picks (ring and multinode
included), parallel=auto in the trainer, and its CLI."""

import copy
import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import ANY

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from parallel.dims import ParallelError
from parallel.plan import (
    GIB,
    HEADROOM,
    ZERO3_HOST,
    Setup,
    Shape,
    choose,
    estimate,
    load_shape,
    longest,
    main,
    plan,
    zero3_offload_host_bytes,
)
from ssa_kernels.config import SSAConfig
from ssa_kernels.hf import convert_to_ssa
from tests.scripts_loader import load_script
from tests.test_train import compose_cfg, run_cli
from train.config import ConfigError, to_config
from train.trainer import _resolve_auto

REPO = Path(__file__).resolve().parent.parent
SSA = Setup("ssa")
RESULTS = REPO / "docs" / "results"
# job name in a results file -> (model yaml, seq_len, attention, activation checkpointing). The compile job
# is left out: torch.compile fuses away activations that the estimate counts (17.0 vs 23.8 GiB eager).
MEASURED = {
    ("spine-h100.json", "125M seq 32K eager"): ("llama_125m", 32768, "dense", False),
    ("spine-h100.json", "125M seq 32K AC"): ("llama_125m", 32768, "dense", True),
    ("train-step-h100.json", "1B seq 128K dense AC"): ("llama_1b", 131072, "dense", True),
    ("train-step-h100.json", "1B seq 128K ssa AC"): ("llama_1b", 131072, "ssa", True),
    ("planner-check-h200.json", "1B seq 256K ssa AC"): ("llama_1b", 262144, "ssa", True),
}


@pytest.mark.parametrize("attention", ["dense", "ssa"])
def test_parameter_count_is_the_built_models(attention):
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM._from_config(copy.deepcopy(config))
    if attention == "ssa":
        convert_to_ssa(model, SSAConfig())
    shape = Shape.from_hf_config(config, attention)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.layer_params == sum(p.numel() for p in model.model.layers[0].parameters())  # the offload term


@pytest.mark.parametrize("key", list(MEASURED))
def test_estimate_within_15_percent_of_the_measured_peak(key):
    file, job = key
    rows = {r["job"]: r for r in json.loads((RESULTS / file).read_text())["results"]}
    measured = rows[job]["peak_mem_gib"]
    model, seq_len, attention, ac = MEASURED[key]
    shape = load_shape(REPO / "conf" / "model" / f"{model}.yaml", attention)
    est = estimate(shape, seq_len, "single", 1, 1, Setup(attention, ac)).gpu_bytes / GIB
    assert abs(est - measured) / measured <= 0.15, (job, est, measured)


bench = load_script("bench_ladder")  # its rung recipes and planner call, loaded once
# (file, index) -> row of every ladder benchmark run that completed two steps and measured a GPU peak
LADDER_ROWS = {
    (f.name, i): r
    for f in sorted(RESULTS.glob("ladder-*.json"))
    for i, r in enumerate(json.loads(f.read_text())["results"])
    if r.get("peak_gpu_gib") and r.get("steps_done", 0) >= 2
}


@pytest.mark.parametrize("key", [k for k, r in LADDER_ROWS.items() if "peak_host_gib" in r])
def test_host_estimate_within_15_percent_of_the_ladder_benchmark(key):
    """The host half of the same check, for every run whose host peak was measured (the benchmark's process tree's
    peak resident memory) and where the planner puts anything on the host: the layer inputs of nested rungs (fp32,
    or bf16 under DeepSpeed) and DeepSpeed's model states. Rows with nothing planned there must stay small."""
    row = LADDER_ROWS[key]
    est = bench.planned(row["model"], row["attention"], row["rung"], row["seq_len"], tuple(row.get("extra", ())))[
        "planned_host_gib"
    ]
    if est == 0:
        assert row["peak_host_gib"] < 8, row
    else:
        assert abs(est - row["peak_host_gib"]) / row["peak_host_gib"] <= 0.15, (row["rung"], row["seq_len"], est, row)


def test_zero3_host_rule_is_deepspeeds():
    """zero3_offload_host_bytes restates DeepSpeed's estimator (params and optimizer offloaded, no zero.Init)."""
    from deepspeed.runtime.zero import stage3  # installed by scripts/install.sh (the offload rungs)

    for params, gpus, nodes in [(1_269_368_832, 1, 1), (8_030_261_248, 8, 1), (8_030_261_248, 8, 4), (10**9, 2, 16)]:
        cpu, _, _ = stage3.estimate_zero3_model_states_mem_needs(params, 10**7, gpus, nodes, zero_init=False)
        assert abs(zero3_offload_host_bytes(params, gpus, nodes) - cpu) <= 1, (params, gpus, nodes)


def test_zero3_host_counts_the_bf16_build():
    """Under bf16 the offload rungs' processes build the model in bf16 (parallel.offload.build_dtype=auto): 2 bytes
    a parameter per process instead of DeepSpeed's 4. It lowers the host estimate only where the build is the
    larger term, 5 or more GPUs a node: the 8B on one node of 8 GPUs, from 8 x 4 to ZeRO-3's own 18."""
    params = 8_030_261_248
    assert zero3_offload_host_bytes(params, 8, 1, 2.0) == params * 18 * 1.5
    assert zero3_offload_host_bytes(params, 8, 4, 2.0) == params * 16 * 1.5  # 2 x 8 GPUs > 18 / 4 nodes
    assert zero3_offload_host_bytes(params, 4, 1, 2.0) == zero3_offload_host_bytes(params, 4, 1)  # 18 > 16
    shape = load_shape(REPO / "conf" / "model" / "llama_8b.yaml", "ssa")
    host = {b: estimate(shape, 1 << 20, "offload", 8, 1, replace(SSA, bf16_build=b)).host_terms for b in (True, False)}
    assert host[True][ZERO3_HOST] == zero3_offload_host_bytes(shape.params, 8, 1, 2.0)
    assert host[False][ZERO3_HOST] == zero3_offload_host_bytes(shape.params, 8, 1, 4.0)
    one_gpu = [estimate(shape, 1 << 20, "offload", 1, 1, replace(SSA, bf16_build=b)).host_bytes for b in (True, False)]
    assert one_gpu[0] == one_gpu[1]  # every measured host peak (one GPU) is planned as before


@pytest.mark.parametrize("key", list(LADDER_ROWS))
def test_estimate_within_15_percent_of_the_ladder_benchmark(key):
    """Every run of scripts/bench_ladder.py that measured a GPU peak (tiled MLP, layer inputs on the host,
    DeepSpeed offload) against the current planner, rebuilt from the row's rung recipe."""
    row = LADDER_ROWS[key]
    est = bench.planned(row["model"], row["attention"], row["rung"], row["seq_len"], tuple(row.get("extra", ())))[
        "planned_gpu_gib"
    ]
    assert abs(est - row["peak_gpu_gib"]) / row["peak_gpu_gib"] <= 0.15, (row["rung"], row["seq_len"], est, row)


def test_bench_ladder_composed_rung_names():
    """scripts/bench_ladder.py: recipes for any GPU count (issues 7 and 8) from composed names, each planned with its
    sp / cp; an unknown name names the forms."""
    assert bench.recipe("ulysses8_nested") == (8, ["parallel=ulysses", "parallel.sp=8", "parallel.tiled_mlp=16384",
                                                   "parallel.offload_activations=true"])  # fmt: skip
    assert bench.recipe("nested_offload_sp4_layer") == (4, ["parallel=nested_offload", "parallel.sp=4",
                                                            "parallel.tiled_layer=16384"])  # fmt: skip
    assert bench.recipe("ring4x2") == (8, ["parallel=ring", "parallel.sp=4", "parallel.cp=2"])
    assert bench.recipe("nested_layer")[1] == [*bench.RUNGS["nested"][1], "parallel.tiled_layer=16384"]
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")
    ring = estimate(shape, 1 << 20, "ring", 8, 4, SSA, 2)
    assert bench.planned("llama_1b", "ssa", "ring4x2", 1 << 20)["planned_gpu_gib"] == round(ring.gpu_gib, 2)
    with pytest.raises(Exception, match="ring<SP>x<CP>"):
        bench.recipe("ring4")


def test_bench_ladder_data_parallel_offload_and_its_extra_overrides():
    """offload_dp<N>: ZeRO-3 over N data-parallel ranks (no Ulysses). planned() reads the --extra overrides the
    planner depends on: the offload rungs' build dtype (train.precision, parallel.offload.build_dtype) and the tiled
    layer."""
    assert bench.recipe("offload_dp8") == (8, ["parallel=offload"])
    assert bench.recipe("nested_offload_dp2_layer") == (2, ["parallel=nested_offload", "parallel.tiled_layer=16384"])
    shape = load_shape(REPO / "conf" / "model" / "llama_8b.yaml", "ssa")
    t = 1 << 20
    host = {b: round(estimate(shape, t, "offload", 8, 1, replace(SSA, bf16_build=b)).host_bytes / GIB, 2)
            for b in (True, False)}  # fmt: skip
    assert host[False] > host[True]
    assert bench.planned("llama_8b", "ssa", "offload_dp8", t)["planned_host_gib"] == host[True]
    for fp32 in ("parallel.offload.build_dtype=fp32", "train.precision=fp32"):
        assert bench.planned("llama_8b", "ssa", "offload_dp8", t, (fp32,))["planned_host_gib"] == host[False]
    layer = bench.planned("llama_1b", "ssa", "nested_offload", t, ("parallel.tiled_layer=16384",))
    assert (
        layer
        == bench.planned("llama_1b", "ssa", "nested_offload_layer", t)
        != bench.planned("llama_1b", "ssa", "nested_offload", t)
    )


def test_bench_ladder_host_peak_counts_every_process_of_the_run():
    """tree_pss_bytes: the summed PSS of a process and its descendants (a node's host memory under torchrun),
    here a launcher whose child holds 256 MiB."""
    import subprocess
    import sys
    import time

    child = "import sys, time; b = b'x' * (256 << 20); print('ready', flush=True); time.sleep(60)"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)
    try:
        deadline, tree = time.time() + 30, 0
        while tree < 256 << 20 and time.time() < deadline:
            time.sleep(0.2)
            tree = bench.tree_pss_bytes(proc.pid)
        own = int(next(x for x in Path(f"/proc/{proc.pid}/smaps_rollup").read_text().splitlines()
                       if x.startswith("Pss:")).split()[1]) * 1024  # fmt: skip
        assert tree >= 256 << 20 > own, (tree, own)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_plan_picks_the_cheapest_rung_that_fits():
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")
    rows, pick = plan(shape, 131072, 1, 80.0, SSA)
    assert pick is not None and pick.rung == "single"
    # 1M tokens: nothing built fits one GPU; 8 GPUs: ulysses at the smallest sp that fits
    rows, pick = plan(shape, 1 << 20, 1, 80.0, SSA)
    assert pick is None and all(r.gpu_gib > 72 for r in rows)
    rows, pick = plan(shape, 1 << 20, 8, 80.0, SSA)
    assert pick is not None and pick.rung == "ulysses"
    smaller = [s for s in (2, 4, 8) if s < pick.sp]
    assert all(estimate(shape, 1 << 20, "ulysses", 8, s, SSA).gpu_gib > 72 for s in smaller)
    assert pick.gpu_gib <= 72
    # dense under ulysses pays for its [T, T] mask: more memory than SSA at the same sp
    dense = estimate(shape, 1 << 20, "ulysses", 8, pick.sp, Setup("dense"))
    assert dense.terms["dense [T, T] mask"] == float(1 << 40) and dense.gpu_bytes > pick.gpu_bytes
    assert not [r for r in rows if r.note]  # every rung is built


SIX_HEADS = Shape(768, 2048, 12, 6, 2, 128, 32000, 100_000_000)  # ulysses: sp=2 at most on 4 GPUs


def test_ring_estimate_and_pick():
    """Ring at cp holds T/cp tokens per GPU like ulysses at sp = cp, plus its k/v, gradient and output
    buffers; the planner and parallel=auto pick it (with its cp) where ulysses cannot shard the heads finely
    enough."""
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")
    t = 1 << 20
    ulysses, ring = estimate(shape, t, "ulysses", 8, 8, SSA), estimate(shape, t, "ring", 8, 1, SSA, cp=8)
    layer = "one layer recomputed"
    alltoall = 4 * (shape.heads + shape.kv_heads) * shape.head_dim * t / 8
    buffers = (32 * shape.kv_heads + 8 * shape.heads) * shape.head_dim * t / 8 + 2 * (64 << 20)
    assert ring.terms[layer] == ulysses.terms[layer] - alltoall + buffers
    assert (ring.cp, ring.sp) == (8, 1)
    # 64 GiB of host memory: nested_offload (before ring in the ladder) would need 290 GiB for the layer inputs
    rows, pick = plan(SIX_HEADS, 1 << 21, 4, 80.0, SSA, host_mem_gib=64.0)
    assert pick.rung == "ring" and pick.sp * pick.cp == 4 and pick.gpu_gib < 72
    assert next(r for r in rows if r.rung == "ulysses").gpu_gib > 72
    assert estimate(SIX_HEADS, 1 << 21, "ring", 4, 1, SSA, cp=2).gpu_gib > 72  # the smaller ring does not fit
    assert choose(SIX_HEADS, 1 << 21, 4, 4, 80.0, SSA, host_mem_gib=64.0)[:3] == ("ring", pick.sp, pick.cp)


def test_ring_prefers_the_larger_sp_among_equal_degrees():
    """Of the rings of sp x cp = 4 GPUs, the hybrid (Ulysses sp=2 inside the node x ring cp=2) is picked
    while it fits; with less memory, the pure ring (cp=4, no all-to-all copies) is the one that fits."""
    hybrid, pure = (estimate(SIX_HEADS, 1 << 21, "ring", 4, sp, SSA, cp=cp).gpu_gib for sp, cp in ((2, 2), (1, 4)))
    assert 0.9 * 60 < hybrid < 0.9 * 80 and pure < 0.9 * 60  # both fit 80 GiB, only the pure ring 60 GiB
    assert choose(SIX_HEADS, 1 << 21, 4, 4, 80.0, SSA, host_mem_gib=64.0)[:3] == ("ring", 2, 2)
    assert choose(SIX_HEADS, 1 << 21, 4, 4, 60.0, SSA, host_mem_gib=64.0)[:3] == ("ring", 1, 4)


def test_hybrid_ring_across_nodes_where_heads_limit_ulysses():
    """Six heads on two nodes of 4 GPUs: ulysses stops at sp=2 and multinode has no sp (8 does not divide 6
    heads), so at 3M tokens auto picks Ulysses sp=2 inside each node x a ring of cp=4 across; one node of
    4 GPUs fits nothing and the error names the keys to change."""
    t = 3 << 20
    rows, pick = plan(SIX_HEADS, t, 4, 80.0, SSA, host_mem_gib=64.0, nodes=2)
    assert "multinode" not in [r.rung for r in rows]
    assert next(r for r in rows if r.rung == "ulysses").gpu_gib > 72
    assert (
        choose(SIX_HEADS, t, 8, 4, 80.0, SSA, host_mem_gib=64.0)[:3] == ("ring", 2, 4) == (pick.rung, pick.sp, pick.cp)
    )
    assert estimate(SIX_HEADS, t, "ring", 4, 2, SSA, cp=2, nodes=2).gpu_gib > 72  # sp x cp = 4 does not fit
    # one node of 4 GPUs: only with the tiled layer (auto turns it on), and at 40 GiB not even with it
    assert choose(SIX_HEADS, t, 4, 4, 80.0, SSA, host_mem_gib=64.0) == ("ring", 2, 2, ANY, 16384)
    with pytest.raises(ParallelError, match=r"no rung fits train\.seq_len=3,145,728 on 1 node\(s\).*add GPUs or nodes"):
        choose(SIX_HEADS, t, 4, 4, 40.0, SSA, host_mem_gib=64.0)


def test_multinode_picked_where_one_node_is_too_small():
    """The 1B model at 2M tokens on two nodes of 8 x 80 GiB: ulysses inside a node (sp=8, 256K tokens per
    GPU) does not fit, Ulysses over both nodes (multinode sp=16) does, and comes before ring in the ladder
    although ring fits too. Its estimate is ulysses' at that sp, the dense [T, T] mask included."""
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")
    t = 1 << 21
    rows, pick = plan(shape, t, 8, 80.0, SSA, nodes=2)
    by_rung = {r.rung: r for r in rows}
    assert by_rung["ulysses"].sp == 8 and by_rung["ulysses"].gpu_gib > 72
    assert (pick.rung, pick.sp, pick.cp) == ("multinode", 16, 1) and by_rung["ring"].gpu_gib <= 72
    assert choose(shape, t, 16, 8, 80.0, SSA)[:3] == ("multinode", 16, 1)
    assert "multinode" not in [r.rung for r in plan(shape, t, 8, 80.0, SSA)[0]]  # one node
    # one node of 160 GiB: nested_offload needs 160 on the host (128 of bf16 layer inputs), over the 90% headroom, so
    # only ulysses with the tiled layer fits
    assert choose(shape, t, 8, 8, 80.0, SSA, host_mem_gib=160.0) == ("ulysses", 8, 1, ANY, 16384)
    with pytest.raises(ParallelError, match="no rung fits"):
        choose(shape, t, 8, 8, 40.0, SSA, host_mem_gib=160.0)
    # without a host limit, Ulysses inside ZeRO-3 offload with its memory pieces fits one node (sp=4: 54 GiB a GPU)
    assert choose(shape, t, 8, 8, 80.0, SSA)[:3] == ("nested_offload", 4, 1)
    for setup in (SSA, Setup("dense")):
        multinode, ulysses = (estimate(shape, t, r, 8, 16, setup, nodes=2) for r in ("multinode", "ulysses"))
        assert multinode.terms == ulysses.terms
    assert "dense [T, T] mask" in multinode.terms
    # the 32 heads bound it: on 8 nodes of 8 GPUs sp=64 is not tried (at 8M tokens nothing fits, the row shows
    # the largest, 32); on 4 nodes the smallest sp that fits
    multinode = next(r for r in plan(shape, 1 << 23, 8, 80.0, SSA, nodes=8)[0] if r.rung == "multinode")
    assert multinode.sp == 32 and multinode.gpu_gib > 72
    assert plan(shape, t, 8, 80.0, SSA, nodes=4)[1].sp == 16
    # host memory is the node's: the offload rungs' model states are partitioned over the nodes, unless the model
    # each of a node's processes builds before ZeRO-3 partitions it is larger (8 GPUs: bf16, 2 x 8 > 18 / 2 nodes;
    # an fp32 build, 4 x 8 > 18 on one node too); x 1.5 for DeepSpeed's buffers
    one, two = (estimate(shape, t, "offload", 1, 1, SSA, nodes=n).host_bytes for n in (1, 2))
    assert two == one / 2
    one, two = (estimate(shape, t, "offload", 8, 1, SSA, nodes=n).host_bytes for n in (1, 2))
    assert (one, two) == (27.0 * shape.params, 24.0 * shape.params)
    fp32_build = replace(SSA, bf16_build=False)
    one, two = (estimate(shape, t, "offload", 8, 1, fp32_build, nodes=n).host_bytes for n in (1, 2))
    assert two == one == 48.0 * shape.params


def test_resolve_auto_writes_the_pick_into_the_config(monkeypatch):
    """parallel=auto in the trainer: the node count from WORLD_SIZE / LOCAL_WORLD_SIZE, the GPU's memory
    from torch.cuda, and the pick's name, sp and cp written into cfg.parallel (the tiny model at 1M tokens
    with SSA)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    t = 1 << 20
    overrides = ["parallel=auto", "attention=ssa", f"train.seq_len={t}", f"model.hf_config.max_position_embeddings={t}",
                 "train.activation_checkpointing=true", "train.micro_batch=1"]  # fmt: skip

    def resolve(world, local_world, gpu_gib, host_gib=1.0):
        real, pages = os.sysconf, int(host_gib * GIB) // 4096
        monkeypatch.setattr(os, "sysconf", lambda k: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": pages}.get(k) or real(k))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
        props = SimpleNamespace(total_memory=int(gpu_gib * GIB))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
        cfg = to_config(compose_cfg(overrides))
        _resolve_auto(cfg)
        return cfg.parallel.name, cfg.parallel.sp, cfg.parallel.cp, cfg.parallel.tiled_layer

    # 4 heads. Two nodes of 2 GPUs: ulysses sp=2 needs 6.7 GiB, multinode sp=4 3.4 GiB.
    assert resolve(4, 2, 5.0) == ("multinode", 4, 1, 0)
    # Two nodes of 4: ulysses sp=4 needs 3.4 GiB and multinode has no sp (8 > 4 heads); ring 4 x 2 2.4 GiB.
    # With 1 GiB of host memory nothing of the offload rungs fits (nested_offload sp=4: 2 GiB of layer inputs);
    # with 64 GiB, nested_offload sp=4 does, and comes before ring in the ladder.
    assert resolve(8, 4, 3.0) == ("ring", 4, 2, 0)
    assert resolve(8, 4, 3.0, 64.0) == ("nested_offload", 4, 1, 0)
    assert resolve(1, 1, 80.0) == ("single", 1, 1, 0)
    # One GPU of 8 GiB and 1 GiB of host: nothing fits as set up; the tiled layer is turned on, single fits with it
    assert resolve(1, 1, 8.0) == ("single", 1, 1, 16384)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CPU: single or ddp
    assert resolve(4, 2, 5.0) == ("ddp", 1, 1, 0)


def test_memory_check_stops_a_run_that_cannot_fit(monkeypatch, caplog):
    """parallel.memory_check (GPU runs, before anything is built): the planner's estimate of the rung as set up against
    one GPU's and the node's memory; over by more than 15% an error naming the keys, within it a warning; warn only
    warns, off says nothing, and on CPU nothing is checked. The 1B SSA model: at 1M tokens on one 80 GiB GPU under
    single (~190 GiB planned); nested_offload on a 64 GiB host (~96 GiB planned); 128K fits."""
    import logging

    from parallel import ParallelDims
    from train.trainer import check_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * GIB))
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda k: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 16 * 2**20}.get(k) or real(k))
    gpu = ParallelDims(1, 0, 0, 1, 1, torch.device("cuda"))

    def check(seq_len, *extra, dims=gpu):
        t = f"train.seq_len={seq_len}"
        cfg = to_config(compose_cfg(["model=llama_1b", "attention=ssa", t, f"model.hf_config.max_position_embeddings={seq_len}",
                                     "train.activation_checkpointing=true", "train.micro_batch=1", *extra]))  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="train.trainer"):
            check_memory(cfg, dims)
        return caplog.text

    with pytest.raises(
        ConfigError, match=r"GPU memory, one GPU has 80\.0 GiB.*parallel=auto.*parallel\.memory_check=warn"
    ):
        check(1 << 20, "parallel=single")
    with pytest.raises(ConfigError, match=r"parallel=nested_offload.* of host memory, the node has 64\.0 GiB"):
        check(1 << 20, "parallel=nested_offload", "parallel.tiled_layer=16384")
    assert "GPU memory" in check(1 << 20, "parallel=single", "parallel.memory_check=warn")
    assert check(1 << 20, "parallel=single", "parallel.memory_check=off") == ""
    assert check(1 << 20, "parallel=single", dims=ParallelDims(1, 0, 0, 1, 1, torch.device("cpu"))) == ""
    assert check(1 << 17, "parallel=single") == ""  # 128K: ~56 GiB planned
    # within the planner's 15%: a warning, not an error (1B at 224K on single: ~82 GiB planned for 80)
    assert "GPU memory" in check(7 << 15, "parallel=single")
    with pytest.raises(ConfigError, match="parallel.memory_check"):
        to_config(compose_cfg(["parallel.memory_check=maybe"]))


def test_cli_prints_the_pick(capsys):
    main(["--model", str(REPO / "conf" / "model" / "llama_125m.yaml"), "--seq-len", "32768", "--attention", "dense"])
    out = capsys.readouterr().out
    assert "pick: parallel=single parallel.sp=1 parallel.cp=1" in out and "model states" in out
    main(["--model", str(REPO / "conf" / "model" / "llama_1b.yaml"), "--seq-len", str(1 << 21), "--gpus", "8",
          "--nodes", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert "2 node(s) of 8 GPU(s)" in out and "pick: parallel=multinode parallel.sp=16 parallel.cp=1" in out
    main(["--model", str(REPO / "conf" / "model" / "llama_1b.yaml"), "--seq-len", str(1 << 20)])  # 1M, one 80 GiB GPU
    out = capsys.readouterr().out
    assert "nested_offload     1   1      93.1" in out and "pick: parallel=nested_offload parallel.sp=1 parallel.cp=1 " \
        "parallel.tiled_layer=16384" in out and "50.4" not in out.split("pick")[0]  # fmt: skip


def test_cli_takes_a_models_name_and_names_the_choices_for_a_wrong_one(capsys):
    """--model llama_1b (the trainer's model=llama_1b) is conf/model/llama_1b.yaml; a name that is neither a file nor
    there exits with the names there, not a traceback about the working directory."""
    main(["--model", "llama_1b", "--seq-len", str(1 << 20)])
    by_name = capsys.readouterr().out
    main(["--model", str(REPO / "conf" / "model" / "llama_1b.yaml"), "--seq-len", str(1 << 20)])
    by_path = capsys.readouterr().out
    assert by_name.split("\n", 1)[1] == by_path.split("\n", 1)[1] and "pick:" in by_name  # the header names it
    with pytest.raises(SystemExit):
        main(["--model", "llama_1bb", "--seq-len", "1024"])
    err = capsys.readouterr().err
    assert "--model llama_1bb" in err and "llama_1b, " in err and "llama_8b" in err


def test_estimates_scale_with_the_terms():
    shape = load_shape(REPO / "conf" / "model" / "llama_125m.yaml")
    a, b = (estimate(shape, t, "single") for t in (32768, 65536))
    act = "checkpointed layer inputs (fp32)"
    assert b.terms[act] == 2 * a.terms[act]
    assert b.terms["model states (fp32 weights, grads, AdamW)"] == a.terms["model states (fp32 weights, grads, AdamW)"]
    assert torch.isclose(torch.tensor(a.terms[act]), torch.tensor(12 * 4.0 * 768 * 32768))


def test_choose_for_parallel_auto():
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")
    assert choose(shape, 1 << 20, 1, 1, None)[:2] == ("single", 1)  # CPU: memory does not decide
    assert choose(shape, 1 << 20, 4, 2, None)[:2] == ("ddp", 1)
    assert choose(shape, 131072, 1, 1, 80.0, SSA)[:2] == ("single", 1)
    assert choose(shape, 131072, 2, 1, 80.0, SSA)[:2] == ("ddp", 1)  # two nodes of one GPU
    name, sp, cp, _, tiled = choose(shape, 1 << 20, 16, 8, 80.0, SSA)
    assert (name, cp, tiled) == ("ulysses", 1, 0) and sp == plan(shape, 1 << 20, 8, 80.0, SSA)[1].sp
    with pytest.raises(ParallelError, match=r"no rung fits train\.seq_len=1,048,576"):
        choose(shape, 1 << 20, 1, 1, 40.0, SSA)


def test_parallel_auto_in_the_trainer(tmp_path, data_cache):
    out = run_cli(tmp_path, ["parallel=auto", "parallel.device=cpu", "train.steps=2"], data_cache)
    assert "parallel=auto picked parallel=single parallel.sp=1" in out.stderr
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_tiled_mlp_term():
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")
    plain, tiled = (estimate(shape, 262144, "single", setup=Setup(tiled_mlp=t)) for t in (0, 16384))
    key = "one layer recomputed"
    assert plain.terms[key] - tiled.terms[key] == 9 * 8192 * (262144 - 16384)


def test_tiled_layer_term_and_the_hint_to_use_it():
    """parallel.tiled_layer: one tile of the layer's intermediates plus, over the sequence, q/k/v/o and their
    gradients, the LSE and the fp32 gradients of the layer's output and input; auto names it when it would fit."""
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")  # H 2048, I 8192, 32 / 8 heads of 64
    n, tile = 1 << 20, 16384
    tiled = estimate(shape, n, "nested_offload", setup=Setup("ssa", tiled_layer=tile))
    per_token = 8 * (32 + 8) * 64 + 4 * 32 + 8 * 2048
    assert tiled.terms["one layer recomputed"] == (40 * 2048 + 9 * 8192) * tile + per_token * n
    assert estimate(shape, n, "nested_offload", setup=SSA).gpu_gib - tiled.gpu_gib > 40  # 93.1 -> 50.4 GiB
    # parallel=auto turns it on where nothing fits without it (80 GiB: nested_offload needs 93.1 GiB, 50.4 with it)
    pick = choose(shape, n, 1, 1, 80.0, SSA)
    assert (pick.rung, pick.sp, pick.tiled_layer) == ("nested_offload", 1, tile)
    assert next(r for r in pick.rows if r.rung == pick.rung).gpu_gib < 72
    assert choose(shape, n, 1, 1, 139.0, SSA)[:5:4] == ("nested_offload", 0)  # fits without: left off
    assert choose(shape, 1 << 17, 1, 1, 80.0, SSA).tiled_layer == 0
    with pytest.raises(ParallelError) as too_small:  # where it would not fit either, no hint to set it
        choose(shape, n, 1, 1, 40.0, SSA)
    assert "tiled_layer" not in str(too_small.value)
    with pytest.raises(ParallelError, match="activation_checkpointing=true"):  # and never without AC
        choose(shape, n, 1, 1, 80.0, Setup("ssa", activation_checkpointing=False))


def test_longest_context_per_rung():
    """``--longest``: per rung, the longest multiple of 1,024 x sp x cp whose estimate fits (GPU and host), one unit
    more does not; the offload rungs try Ulysses degrees too; the tiled layer lengthens nested_offload."""
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")
    rows = longest(shape, 8, 80.0, SSA, host_mem_gib=512.0)
    assert [r for r, _, _ in rows] == ["ddp", "ulysses", "offload", "nested_offload", "ring"]
    for rung, n, e in rows:
        assert e is not None and n > 0 and n % (1024 * e.sp * e.cp) == 0, rung
        assert e.gpu_bytes <= HEADROOM * 80.0 * GIB and e.host_bytes <= HEADROOM * 512.0 * GIB, rung
        more = estimate(shape, n + 1024 * e.sp * e.cp, rung, 8, e.sp, SSA, e.cp)
        assert more.gpu_bytes > HEADROOM * 80.0 * GIB or more.host_bytes > HEADROOM * 512.0 * GIB, rung
    by_rung = {r: (n, e) for r, n, e in rows}
    assert by_rung["nested_offload"][1].sp > 1  # Ulysses inside ZeRO-3 offload
    one = dict((r, n) for r, n, _ in longest(shape, 1, 80.0, SSA, host_mem_gib=512.0))
    tiled = dict((r, n) for r, n, _ in longest(shape, 1, 80.0, Setup("ssa", tiled_layer=16384), host_mem_gib=512.0))
    assert tiled["nested_offload"] > 1.5 * one["nested_offload"] and tiled["single"] > one["single"]
    main(["--model", str(REPO / "conf" / "model" / "llama_1b.yaml"), "--longest", "--gpu-mem-gib", "80"])


def test_offloaded_activations_move_to_the_host():
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")
    on_gpu, offloaded = (estimate(shape, 262144, "single", setup=Setup(offload_activations=o)) for o in (False, True))
    key = "checkpointed layer inputs (fp32)"
    assert offloaded.host_bytes == on_gpu.terms[key] == 16 * offloaded.terms[key]  # 16 layers, one stays
    assert on_gpu.host_bytes == 0 and offloaded.gpu_bytes < on_gpu.gpu_bytes
    # and under every rung the planner tries, ulysses included
    rows, _ = plan(shape, 1 << 20, 8, 80.0, Setup("ssa", offload_activations=True))
    assert all(r.host_bytes > 0 for r in rows if not r.note)


def test_offload_terms_and_picks():
    """ZeRO-3 offload: no model states on the GPU (18 bytes per parameter on the host instead), one layer's
    bf16 weights twice and its gradients, lm_head's weight and fp32 gradient; the planner picks offload
    where the model states do not fit one GPU, nested_offload where the activations do not either, and
    neither when the host is too small."""
    shape = load_shape(REPO / "conf" / "model" / "llama_8b.yaml", "ssa")
    single, offload = (estimate(shape, 32768, r, 1, 1, SSA) for r in ("single", "offload"))
    assert "model states (fp32 weights, grads, AdamW)" not in offload.terms
    assert offload.host_terms == {ZERO3_HOST: 27.0 * shape.params}  # 18 B/param x DeepSpeed's 1.5 for buffers
    assert offload.terms["gathered layer weights (bf16, this + prefetched)"] == 4.0 * shape.layer_params
    assert offload.terms["lm_head weight for the loss (bf16) + fp32 grad"] == 6.0 * 128256 * 4096
    assert single.gpu_bytes - offload.gpu_bytes > 16.0 * shape.params - 0.1 * single.gpu_bytes
    assert plan(shape, 32768, 1, 80.0, SSA)[1].rung == "offload"  # 8B: 124 GiB of model states alone
    # 256K: the activations of one recomputed layer and the layer inputs need the nested pieces
    rows, pick = plan(shape, 262144, 1, 80.0, SSA, host_mem_gib=512.0)
    assert pick.rung == "nested_offload" and next(r for r in rows if r.rung == "offload").gpu_gib > 72
    nested = estimate(shape, 262144, "nested_offload", 1, 1, SSA)  # the pieces whatever the setup says
    assert nested.terms == estimate(shape, 262144, "offload", 1, 1, Setup("ssa", True, 16384, True)).terms
    assert nested.host_terms["offloaded layer inputs (every GPU's)"] == 32 * 2.0 * 4096 * 262144  # bf16
    assert plan(shape, 262144, 1, 80.0, SSA, host_mem_gib=128.0)[1] is None  # 245 GiB on the host
    assert choose(shape, 262144, 1, 1, 80.0, SSA, host_mem_gib=512.0)[:2] == ("nested_offload", 1)
