"""The ladder planner (parallel/plan.py): exact parameter counts, its estimates against every peak
measured on a GPU and recorded under docs/results/ (within 15%), the rung it picks, and its CLI."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from parallel.dims import ParallelError
from parallel.plan import GIB, Setup, Shape, choose, estimate, load_shape, main, plan
from ssa_kernels.config import SSAConfig
from ssa_kernels.hf import convert_to_ssa
from tests.test_train import run_cli

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


def _bench_ladder():
    spec = importlib.util.spec_from_file_location("bench_ladder", REPO / "scripts" / "bench_ladder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench_ladder()  # its rung recipes and planner call, loaded once
LADDER = [
    (f.name, i)
    for f in sorted(RESULTS.glob("ladder-*.json"))
    for i, r in enumerate(json.loads(f.read_text())["results"])
    if r.get("peak_gpu_gib") and r.get("steps_done", 0) >= 2
]


@pytest.mark.parametrize("key", LADDER)
def test_estimate_within_15_percent_of_the_ladder_benchmark(key):
    """Every run of scripts/bench_ladder.py that measured a GPU peak (tiled MLP, layer inputs on the host,
    DeepSpeed offload) against the current planner, rebuilt from the row's rung recipe."""
    file, i = key
    row = json.loads((RESULTS / file).read_text())["results"][i]
    est = bench.planned(row["model"], row["attention"], row["rung"], row["seq_len"])["planned_gpu_gib"]
    assert abs(est - row["peak_gpu_gib"]) / row["peak_gpu_gib"] <= 0.15, (row["rung"], row["seq_len"], est, row)


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


def test_ring_estimate_and_auto_leaves_it_out():
    """Ring at cp holds T/cp tokens per GPU like ulysses at sp = cp, plus its k/v, gradient and output
    buffers; the planner picks it where ulysses cannot shard the heads finely enough, parallel=auto does not
    (it would have to set parallel.cp) and says that nothing it can pick fits."""
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")
    t = 1 << 20
    ulysses, ring = estimate(shape, t, "ulysses", 8, 8, SSA), estimate(shape, t, "ring", 8, 1, SSA, cp=8)
    layer = "one layer recomputed"
    alltoall = 4 * (shape.heads + shape.kv_heads) * shape.head_dim * t / 8
    buffers = (32 * shape.kv_heads + 8 * shape.heads) * shape.head_dim * t / 8 + 2 * (64 << 20)
    assert ring.terms[layer] == ulysses.terms[layer] - alltoall + buffers
    assert (ring.cp, ring.sp) == (8, 1)
    six_heads = Shape(768, 2048, 12, 6, 2, 128, 32000, 100_000_000)  # ulysses: sp=2 at most on 4 GPUs
    # 64 GiB of host memory: nested_offload (before ring in the ladder) would need 290 GiB for the layer inputs
    rows, pick = plan(six_heads, 1 << 21, 4, 80.0, SSA, host_mem_gib=64.0)
    assert (pick.rung, pick.cp) == ("ring", 4) and pick.gpu_gib < 72
    assert next(r for r in rows if r.rung == "ulysses").gpu_gib > 72
    with pytest.raises(ParallelError, match="no built rung fits .* set parallel=ring parallel.cp=4"):
        choose(six_heads, 1 << 21, 4, 4, 80.0, SSA, host_mem_gib=64.0)


def test_cli_prints_the_pick(capsys):
    main(["--model", str(REPO / "conf" / "model" / "llama_125m.yaml"), "--seq-len", "32768", "--attention", "dense"])
    out = capsys.readouterr().out
    assert "pick: parallel=single" in out and "model states" in out


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
    name, sp, _ = choose(shape, 1 << 20, 16, 8, 80.0, SSA)
    assert name == "ulysses" and sp == plan(shape, 1 << 20, 8, 80.0, SSA)[1].sp
    with pytest.raises(ParallelError, match=r"no built rung fits train\.seq_len=1,048,576"):
        choose(shape, 1 << 20, 1, 1, 80.0, SSA)


def test_parallel_auto_in_the_trainer(tmp_path, data_cache):
    out = run_cli(tmp_path, ["parallel=auto", "parallel.device=cpu", "train.steps=2"], data_cache)
    assert "parallel=auto picked parallel=single parallel.sp=1" in out.stderr
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_tiled_mlp_term():
    shape = load_shape(REPO / "conf" / "model" / "llama_1b.yaml", "ssa")
    plain, tiled = (estimate(shape, 262144, "single", setup=Setup(tiled_mlp=t)) for t in (0, 16384))
    key = "one layer recomputed"
    assert plain.terms[key] - tiled.terms[key] == 9 * 8192 * (262144 - 16384)


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
    assert offload.host_terms == {"model states (fp32 weights, grads, AdamW) + bf16 params": 18.0 * shape.params}
    assert offload.terms["gathered layer weights (bf16, this + prefetched)"] == 4.0 * shape.layer_params
    assert offload.terms["lm_head weight for the loss (bf16) + fp32 grad"] == 6.0 * 128256 * 4096
    assert single.gpu_bytes - offload.gpu_bytes > 16.0 * shape.params - 0.1 * single.gpu_bytes
    assert plan(shape, 32768, 1, 80.0, SSA)[1].rung == "offload"  # 8B: 124 GiB of model states alone
    # 256K: the activations of one recomputed layer and the layer inputs need the nested pieces
    rows, pick = plan(shape, 262144, 1, 80.0, SSA, host_mem_gib=512.0)
    assert pick.rung == "nested_offload" and next(r for r in rows if r.rung == "offload").gpu_gib > 72
    nested = estimate(shape, 262144, "nested_offload", 1, 1, SSA)  # the pieces whatever the setup says
    assert nested.terms == estimate(shape, 262144, "offload", 1, 1, Setup("ssa", True, 16384, True)).terms
    assert nested.host_terms["offloaded layer inputs (every GPU's)"] == 32 * 4.0 * 4096 * 262144
    assert plan(shape, 262144, 1, 80.0, SSA, host_mem_gib=128.0)[1] is None  # 267 GiB on the host
    assert choose(shape, 262144, 1, 1, 80.0, SSA, host_mem_gib=512.0)[:2] == ("nested_offload", 1)
