"""The ladder planner: estimated per-GPU and host memory of each rung for a model, sequence length and
machine, and the cheapest rung that fits.

    python -m parallel.plan --model conf/model/llama_1b.yaml --seq-len 131072 --gpus 1 --gpu-mem-gib 80
    python -m parallel.plan --model conf/model/llama_1b.yaml --seq-len 524288 --gpus 8 --attention ssa
    python -m parallel.plan --model conf/model/llama_8b.yaml --seq-len 2097152 --gpus 8 --nodes 2 --attention ssa

The estimate is a sum of named terms (``Estimate.terms``), bytes on one GPU:
- model states, fp32 master weights, fp32 gradients and AdamW's two fp32 moments, 16 bytes per
  parameter. DDP (any rung of a job with more than one process) adds its fp32 gradient buckets (4 bytes
  per parameter). The parameters are counted exactly, from the HF model built on the meta device, with
  SSA's learned routers when attention is ssa.
- activations of T_local = seq_len / (sp x cp) tokens under bf16 autocast. One decoder layer keeps about
  ``40 H + 9 I`` bytes per token, with H the hidden size and I the MLP width. That is the fp32 residual
  and RMSNorm inputs (4 H each), the bf16 normed inputs, q/k/v, RoPE outputs, the attention output and
  o_proj's input (~26 H), and the MLP's gate, up, activation and product (2 I each) plus their fp32
  norm (~6 H + I). With activation checkpointing, each layer keeps only its fp32 input (4 H per token),
  and one layer is recomputed at a time.
- the loss: lm_head + cross-entropy run in chunks of about 1 GiB of fp32 logits, plus their gradient.
- with ``parallel.offload_activations`` the checkpointed layer inputs are on the host (one layer's
  on the GPU at a time), counted as host memory.
- a tiled layer (``parallel.tiled_layer``, ``parallel/tiled_layer.py``) keeps the ``40 H + 9 I`` bytes for one
  tile of tokens; over the whole sequence, what the attention saves and its gradients (bf16 q, k, v, o and dq,
  dk, dv, do: ``8 (Hq + Hkv) d``), its fp32 LSE (``4 Hq``) and the fp32 gradient of the layer's output and
  input (``8 H``). Checked on one GPU measurement (1B model at 256K on an H200: +10%).
- a tiled MLP (``parallel.tiled_mlp``, ``parallel/tiled_mlp.py``) keeps the 9 I bytes for one tile of
  tokens instead of all of them.
- rung extras. Under ulysses and multinode (the same Ulysses SP, its group spanning nodes), a layer holds
  q/k/v/o twice around the all-to-alls (+ 4 (Hq + Hkv) d bytes per token). With dense attention, the inner
  attention builds a [T, T] bool mask (T² bytes). Under ring (``parallel/ring.py``, T / cp tokens per rank;
  with sp > 1, Ulysses inside a node x the ring across, T / (sp x cp) tokens and the all-to-all copies),
  the layer in backward holds its k/v and
  the incoming ones (bf16, 8 Hkv d), fp32 copies of the visiting k/v (8 Hkv d), the fp32 dK/dV
  accumulators and the incoming ones (16 Hkv d) and fp32 dQ and output accumulators (8 Hq d) per token,
  plus two 64 MiB chunks of scores; no [T, T] mask. Not yet checked against a GPU measurement.
- offload and nested_offload (``parallel/offload.py``, DeepSpeed ZeRO-3 with bf16 parameters): no model
  states on the GPU. It holds the gathered bf16 weights of the layer being computed and of the prefetched
  next one (2 x 2 bytes per layer parameter), that layer's bf16 gradients and their reduce-scatter buffer
  (2 x 2 bytes), and lm_head's weight, gathered for the whole loss (2 bytes), with the chunked loss's fp32
  gradient of it (4 bytes per vocab x hidden). The host holds the model states by DeepSpeed's own estimate
  (:func:`zero3_offload_host_bytes`: 16 bytes per parameter plus the bf16 partitions (2), over the nodes, or
  the model each of a node's processes builds, bf16 under bf16, x 1.5 for buffers), and, under nested_offload, the layer
  inputs in bf16. nested_offload is offload with the checkpointed layer inputs on the host and a tiled MLP
  (``conf/parallel/nested_offload.yaml``; activation checkpointing on). Checked on one H200 (1B at 512K and
  1M, GPU and host).

Host memory is the node's: its GPU processes' offloaded layer inputs, and its share of the offload rungs'
model states. With ``host_mem_gib`` (``--host-mem-gib``; the machine's memory under ``parallel=auto``), a
rung fits only when its host estimate is within the same headroom of it.

The ladder, cheapest first (``ORDER``): single, ddp, ulysses (sp dividing a node's GPUs and the heads),
offload (sp 1, or Ulysses inside ZeRO-3 at sp as for ulysses), multinode (sp a multiple of a node's GPUs
dividing the world and the heads; only with several nodes), nested_offload (sp as offload), ring (sp dividing
a node's GPUs and the heads, cp >= 2, sp x cp dividing the world). ``longest`` (``--longest``) gives each
rung's longest sequence that fits instead.
Each sharded rung is shown at its smallest degree that fits; ring at the smallest sp x cp, ties to the larger
sp (Ulysses' all-to-all inside a node is cheaper than passing k/v around a ring).

The constants come from the op list above, not from a fit. ``tests/test_plan.py`` checks them against
every peak measured on a GPU and recorded under ``docs/results/`` (within 15%). ``parallel=auto`` asks
:func:`choose` at the start of training (``train/trainer.py``), which may pick any rung and sets
``parallel.name``, ``parallel.sp`` and ``parallel.cp``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from parallel.dims import ParallelError

GIB = 2**30
LOSS_CHUNK_BYTES = GIB  # train/loss.py: loss_chunk = 0 sizes chunks to about 1 GiB of fp32 logits
# Cheapest first: the planner picks the first rung that fits.
ORDER = ("single", "ddp", "ulysses", "offload", "multinode", "nested_offload", "ring")
NOT_BUILT: set[str] = set()  # rungs listed as "not built yet" and never picked
OFFLOAD = ("offload", "nested_offload")
ULYSSES = ("ulysses", "multinode")  # the same Ulysses SP; multinode's group spans nodes
NESTED_TILE = 16384  # conf/parallel/nested_offload.yaml: tokens per MLP tile
RING_CHUNK_BYTES = 2 * (64 << 20)  # parallel/ring.py: CHUNK_BYTES of scores in forward and backward
HEADROOM = 0.9  # a rung fits when its estimate is within this share of the GPU's memory
ZERO3_HOST = "model states + buffers (DeepSpeed's estimate)"


def zero3_offload_host_bytes(params: int, gpus_per_node: int, nodes: int, build_bytes: float = 4.0) -> float:
    """One node's host bytes of ZeRO-3 with parameters and optimizer offloaded, by DeepSpeed's own rule
    (``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs``, without ``zero.Init``; restated
    here so that planning needs no DeepSpeed import, and checked equal to it in tests/test_plan.py): 18 bytes
    per parameter over the nodes, or the model every process of the node builds before ZeRO-3 partitions it
    (``build_bytes`` x GPUs per node: DeepSpeed's rule has fp32, 4; the trainer builds in bf16 under bf16, 2:
    ``parallel.offload.build_dtype``), whichever is larger, x 1.5 for DeepSpeed's buffers. Measured on one
    H200 (1B model, nested_offload 512K / 1M): 64.1 / 96.1 GiB against 63.9 / 95.9 with the layer inputs."""
    return params * max(build_bytes * gpus_per_node, 18.0 / nodes) * 1.5


@dataclass
class Shape:
    """What the estimate needs of a model: sizes from its HF config and the exact parameter count."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    params: int
    layer_params: int = 0  # one decoder layer's (with SSA's router); 0: params / layers

    @property
    def per_layer_params(self) -> float:
        return self.layer_params or self.params / self.layers

    @classmethod
    def from_hf_config(cls, config, attention: str = "dense") -> Shape:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        params = sum(p.numel() for p in model.parameters())
        layer = sum(p.numel() for p in model.get_decoder().layers[0].parameters())
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if attention == "ssa":  # learned routers: a q and a k projection of kv_heads x head_dim per layer
            router = 2 * config.hidden_size * kv_heads * head_dim
            params += config.num_hidden_layers * router
            layer += router
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers, heads, kv_heads,
                   head_dim, config.vocab_size, params, layer)  # fmt: skip


MODEL_CONFS = Path(__file__).resolve().parent.parent / "conf" / "model"


def model_yaml(model: str | Path) -> Path:
    """The model yaml ``--model`` names: a path to one, or a name under conf/model/ (``llama_1b``, as the trainer's
    ``model=llama_1b``). Anything else: an error naming the names there."""
    path = Path(model).expanduser()
    for candidate in (path, MODEL_CONFS / f"{model}.yaml", MODEL_CONFS / str(model)):
        if candidate.is_file():
            return candidate
    names = ", ".join(sorted(x.stem for x in MODEL_CONFS.glob("*.yaml")))
    raise FileNotFoundError(f"--model {model}: no such file, and not a name under {MODEL_CONFS} ({names})")


def load_shape(model_yaml: str | Path, attention: str = "dense") -> Shape:
    """A :class:`Shape` from a ``conf/model/*.yaml`` (``arch`` + ``hf_config``; ``path`` for a local HF
    model). The byte tokenizer's vocabulary (256 + specials, padded) applies when hf_config has none."""
    spec = OmegaConf.to_container(OmegaConf.load(str(model_yaml)))
    hf = dict(spec.get("hf_config") or {})
    if spec.get("path"):
        config = AutoConfig.from_pretrained(str(Path(spec["path"]).expanduser()), **hf)
    else:
        hf.setdefault("vocab_size", 320)
        config = AutoConfig.for_model(spec.get("arch", "llama"), **hf)
    return Shape.from_hf_config(config, attention)


@dataclass
class Estimate:
    rung: str
    sp: int
    gpu_bytes: float
    host_bytes: float
    terms: dict[str, float] = field(default_factory=dict)
    note: str = ""
    cp: int = 1  # ring degree (parallel=ring)
    host_terms: dict[str, float] = field(default_factory=dict)  # the node's host memory, by term

    @property
    def gpu_gib(self) -> float:
        return self.gpu_bytes / GIB


@dataclass(frozen=True)
class Setup:
    """How the job runs, apart from the rung: what the estimate's terms depend on."""

    attention: str = "dense"  # dense | ssa
    activation_checkpointing: bool = True
    tiled_mlp: int = 0  # parallel.tiled_mlp: tokens per MLP tile; 0: off
    offload_activations: bool = False  # parallel.offload_activations
    micro_batch: int = 1
    tiled_layer: int = 0  # parallel.tiled_layer: tokens per tile of the layers' token-wise parts; 0: off
    # the offload rungs build the model in bf16 (bf16 training with parallel.offload.build_dtype=auto), else fp32
    bf16_build: bool = True


def estimate(
    shape: Shape,
    seq_len: int,
    rung: str,
    gpus: int = 1,
    sp: int = 1,
    setup: Setup = Setup(),
    cp: int = 1,
    nodes: int = 1,
) -> Estimate:
    """Peak bytes on one GPU (and on one node's host) of one training step under ``rung`` on ``nodes`` nodes
    of ``gpus`` GPUs (``cp``: the ring's degree under parallel=ring); see the module docstring for the terms."""
    if rung in NOT_BUILT:
        return Estimate(rung, sp, math.inf, math.inf, note="not built yet")
    if rung == "nested_offload":  # its pieces are on whatever the setup says
        setup = replace(setup, activation_checkpointing=True, offload_activations=True,
                        tiled_mlp=setup.tiled_mlp or NESTED_TILE)  # fmt: skip
    h, i, mb = shape.hidden, shape.intermediate, setup.micro_batch
    cp = cp if rung == "ring" else 1
    t_local = mb * seq_len / (sp * cp)
    host_terms = {}
    if rung in OFFLOAD:  # ZeRO-3: the model states on the host, one layer's weights at a time on the GPU
        layer = shape.per_layer_params
        terms = {
            "gathered layer weights (bf16, this + prefetched)": 2 * 2.0 * layer,
            "a layer's gradients (bf16) + reduce-scatter buffer": 2 * 2.0 * layer,
            "lm_head weight for the loss (bf16) + fp32 grad": 6.0 * shape.vocab * h,
        }
        host_terms[ZERO3_HOST] = zero3_offload_host_bytes(shape.params, gpus, nodes, 2.0 if setup.bf16_build else 4.0)
    else:
        terms = {"model states (fp32 weights, grads, AdamW)": 16.0 * shape.params}
        if gpus * nodes > 1:
            terms["DDP gradient buckets"] = 4.0 * shape.params
    # a tiled MLP (parallel.tiled_mlp) holds its intermediates for one tile of tokens at a time
    mlp_tokens = min(t_local, mb * setup.tiled_mlp) if setup.tiled_mlp else t_local
    per_layer = 40 * h * t_local + 9 * i * mlp_tokens
    if setup.tiled_layer:  # parallel.tiled_layer: the whole layer's intermediates for one tile, and the attention's
        tile = min(t_local, mb * setup.tiled_layer)
        qkvo = 4.0 * (shape.heads + shape.kv_heads) * shape.head_dim  # bf16 q, k, v, o per token
        per_layer = (40 * h + 9 * i) * tile + (2 * qkvo + 4 * shape.heads + 8 * h) * t_local
    if rung in ULYSSES + OFFLOAD + ("ring",) and sp > 1:  # q/k/v/o twice around the all-to-alls
        per_layer += 4 * (shape.heads + shape.kv_heads) * shape.head_dim * t_local
    if rung == "ring" and cp > 1:  # per token of the ring rank's T / cp, for its heads (a shard under sp)
        kv_heads = math.lcm(shape.kv_heads, sp) // sp  # kv heads repeated when sp does not divide them
        per_layer += (32 * kv_heads + 8 * shape.heads // sp) * shape.head_dim * mb * seq_len / cp
        per_layer += RING_CHUNK_BYTES
    if setup.activation_checkpointing:
        kept = shape.layers * 4.0 * h * t_local
        if setup.offload_activations:  # on the host; one layer's input is on the GPU while it moves or recomputes
            # under DeepSpeed's bf16 (the offload rungs) the residual stream, so the saved input, is bf16: half
            # (measured on the host: +32.1 GiB from 512K to 1M tokens for the 1B, 16 layers x 2 B x 2048 x 512K)
            host_terms["offloaded layer inputs (every GPU's)"] = gpus * kept / (2 if rung in OFFLOAD else 1)
            kept = 4.0 * h * t_local
        terms["checkpointed layer inputs (fp32)"] = kept
        terms["one layer recomputed"] = per_layer
    else:
        terms["activations of every layer"] = shape.layers * per_layer
    logits = 4.0 * shape.vocab * t_local
    terms["loss chunk (fp32 logits + grad)"] = 2 * min(logits, LOSS_CHUNK_BYTES)
    if rung in ULYSSES + OFFLOAD and sp > 1 and setup.attention == "dense":
        terms["dense [T, T] mask"] = float(mb * seq_len * seq_len)
    return Estimate(rung, sp, sum(terms.values()), sum(host_terms.values()), terms, cp=cp, host_terms=host_terms)


def _degrees(shape: Shape, gpus: int, nodes: int) -> dict[str, list[tuple[int, int]]]:
    """Rung -> its (sp, cp) candidates on ``nodes`` nodes of ``gpus`` GPUs, in the order of preference."""
    world = gpus * nodes
    in_node = [s for s in range(1, gpus + 1) if gpus % s == 0 and shape.heads % s == 0]  # Ulysses inside a node
    ring = [(s, c) for s in in_node for c in range(2, world // s + 1) if world % (s * c) == 0]
    return {
        "single": [(1, 1)] if world == 1 else [],
        "ddp": [(1, 1)] if world > 1 else [],
        "ulysses": [(s, 1) for s in in_node if s > 1],
        "offload": [(s, 1) for s in in_node],  # Ulysses inside ZeRO-3 (parallel.sp) as well
        "multinode": [(k * gpus, 1) for k in range(2, nodes + 1) if nodes % k == 0 and shape.heads % (k * gpus) == 0],
        "nested_offload": [(s, 1) for s in in_node],
        "ring": sorted(ring, key=lambda sc: (sc[0] * sc[1], -sc[0])),
    }


def _fits(gpu_mem_gib: float, host_mem_gib: float | None, headroom: float = HEADROOM):
    budget = headroom * gpu_mem_gib * GIB
    host_budget = math.inf if host_mem_gib is None else headroom * host_mem_gib * GIB
    return lambda e: e.gpu_bytes <= budget and e.host_bytes <= host_budget


def longest(
    shape: Shape,
    gpus: int,
    gpu_mem_gib: float,
    setup: Setup = Setup(),
    host_mem_gib: float | None = None,
    nodes: int = 1,
    step: int = 1024,
    limit: int = 1 << 30,
) -> list[tuple[str, int, Estimate | None]]:
    """Per rung of ``ORDER`` that applies: (rung, the longest seq_len, a multiple of ``step`` x sp x cp up to ``limit``,
    whose estimate fits at one of the rung's degrees, that estimate), or (rung, 0, None) when none fits. The estimates
    grow with the length, so a bisection finds it. Issue 7's "largest context per rung", estimated for any machine."""
    fits = _fits(gpu_mem_gib, host_mem_gib)
    out = []
    for rung, degrees in _degrees(shape, gpus, nodes).items():
        best: tuple[int, Estimate | None] = (0, None)
        for sp, cp in degrees:
            unit = step * sp * cp  # whole steps per shard
            lo, hi = 0, limit // unit + 1  # lo units fit (0: none), hi do not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if fits(estimate(shape, mid * unit, rung, gpus, sp, setup, cp, nodes)) else (lo, mid)
            if lo and lo * unit > best[0]:
                best = (lo * unit, estimate(shape, lo * unit, rung, gpus, sp, setup, cp, nodes))
        if degrees:
            out.append((rung, *best))
    return out


def plan(
    shape: Shape,
    seq_len: int,
    gpus: int,
    gpu_mem_gib: float,
    setup: Setup = Setup(),
    headroom: float = HEADROOM,
    rungs: tuple[str, ...] = ORDER,
    host_mem_gib: float | None = None,
    nodes: int = 1,
) -> tuple[list[Estimate], Estimate | None]:
    """Every rung's estimate on ``nodes`` nodes of ``gpus`` GPUs each, and the first of ``rungs`` (in
    ``ORDER``) that fits: its estimate within ``headroom`` x the GPU's memory (and x ``host_mem_gib``, the
    node's, when given). A sharded rung is shown at the smallest degree that fits, or at its largest when
    none does: ulysses at sp dividing a node's GPUs and the heads; multinode (``nodes`` > 1) at sp a multiple
    of a node's GPUs dividing the world and the heads; ring at sp dividing a node's GPUs and the heads and
    cp >= 2 with sp x cp dividing the world, the smallest sp x cp first, ties to the larger sp."""
    fits = _fits(gpu_mem_gib, host_mem_gib, headroom)
    degrees = _degrees(shape, gpus, nodes)
    rows = []
    for rung in ORDER:
        ests = [estimate(shape, seq_len, rung, gpus, sp, setup, cp, nodes) for sp, cp in degrees[rung]]
        if ests:
            rows.append(next((e for e in ests if fits(e)), ests[-1]))
    pick = next((e for e in rows if fits(e) and e.rung in rungs), None)
    return rows, pick


def plan_or_tiled(
    shape: Shape,
    seq_len: int,
    gpus: int,
    gpu_mem_gib: float,
    setup: Setup,
    host_mem_gib: float | None = None,
    nodes: int = 1,
) -> tuple[list[Estimate], Estimate | None, int]:
    """:func:`plan`, and where nothing fits as set up (activation checkpointing on, no tiled layer) :func:`plan`
    with ``parallel.tiled_layer=NESTED_TILE``: (the rows the pick came from, the pick or None, its tiled_layer).
    The tiled layer costs 6-9% more step time (1B model on an H200, 256K and 512K) and takes 25-35% off the GPU
    peak, so it is a last resort, never a rival to a rung that fits without it."""
    rows, pick = plan(shape, seq_len, gpus, gpu_mem_gib, setup, host_mem_gib=host_mem_gib, nodes=nodes)
    if pick is None and setup.activation_checkpointing and not setup.tiled_layer:
        tiled = replace(setup, tiled_layer=NESTED_TILE)
        tiled_rows, tiled_pick = plan(shape, seq_len, gpus, gpu_mem_gib, tiled, host_mem_gib=host_mem_gib, nodes=nodes)
        if tiled_pick is not None:
            return tiled_rows, tiled_pick, NESTED_TILE
    return rows, pick, setup.tiled_layer


class Pick(NamedTuple):
    """What :func:`choose` decides for ``parallel=auto``."""

    rung: str
    sp: int
    cp: int
    rows: list[Estimate]  # the estimates it chose from
    tiled_layer: int  # parallel.tiled_layer: as set up, or NESTED_TILE where only the tiled layer fits


def choose(
    shape: Shape,
    seq_len: int,
    world: int,
    local_world: int,
    gpu_mem_gib: float | None,
    setup: Setup = Setup(),
    host_mem_gib: float | None = None,
) -> Pick:
    """``parallel=auto``: (rung name, parallel.sp, parallel.cp, the estimates, parallel.tiled_layer) for a job
    of ``world`` processes, ``local_world`` per node, on GPUs of ``gpu_mem_gib`` (None: the CPU, where memory
    does not decide: single or ddp) and nodes of ``host_mem_gib`` (None: not checked). Any rung of ``ORDER``.
    Where no rung fits as set up but one does with the tiled layer, that rung with it (:func:`plan_or_tiled`)."""
    if gpu_mem_gib is None:
        return Pick("single" if world == 1 else "ddp", 1, 1, [], setup.tiled_layer)
    nodes = max(1, world // local_world)
    rows, pick, tiled_layer = plan_or_tiled(shape, seq_len, local_world, gpu_mem_gib, setup, host_mem_gib, nodes)
    if pick is None:
        table = ", ".join(
            f"{e.rung} sp={e.sp} cp={e.cp} {e.gpu_gib:.1f} GiB"
            + (f" + {e.host_bytes / GIB:.1f} GiB host" if e.host_bytes else "")
            for e in rows
            if not e.note
        )
        fix = ["lower train.seq_len"]
        if not setup.activation_checkpointing:
            fix.append("set train.activation_checkpointing=true")
        if setup.attention == "dense":
            fix.append("use attention=ssa (no [T, T] mask)")
        host = [e.host_bytes for e in rows if e.gpu_bytes <= HEADROOM * gpu_mem_gib * GIB and e.host_bytes > 0]
        if host and host_mem_gib is not None:
            fix.append(f"run on nodes of more than {min(host) / GIB / HEADROOM:.0f} GiB of memory")
        fix.append("add GPUs or nodes")
        raise ParallelError(
            f"parallel=auto: no rung fits train.seq_len={seq_len:,} on {nodes} node(s) of {local_world} GPU(s) of "
            f"{gpu_mem_gib:.0f} GiB (estimates: {table}); {', '.join(fix[:-1])} or {fix[-1]}"
        )
    return Pick(pick.rung, pick.sp, pick.cp, rows, tiled_layer)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a conf/model/ name (llama_1b) or a model yaml (arch + hf_config, or path)")  # fmt: skip
    p.add_argument("--seq-len", type=int, default=0)
    p.add_argument("--gpus", type=int, default=1, help="GPUs of one node")
    p.add_argument("--nodes", type=int, default=1, help="nodes of --gpus GPUs each")
    p.add_argument("--gpu-mem-gib", type=float, default=80.0)
    p.add_argument("--host-mem-gib", type=float, default=None, help="the node's memory; default: not checked")
    p.add_argument("--attention", choices=("dense", "ssa"), default="ssa")
    p.add_argument("--no-ac", action="store_true", help="without activation checkpointing")
    p.add_argument("--tiled-mlp", type=int, default=0, help="tokens per MLP tile (parallel.tiled_mlp); 0: off")
    p.add_argument("--tiled-layer", type=int, default=0, help="tokens per layer tile (parallel.tiled_layer); 0: off")
    p.add_argument("--offload-activations", action="store_true", help="parallel.offload_activations")
    p.add_argument("--longest", action="store_true", help="per rung, the longest seq_len that fits (--seq-len ignored)")
    p.add_argument("--fp32-build", action="store_true",
                   help="the offload rungs' processes build the model in fp32 (fp32 training, or "
                        "parallel.offload.build_dtype=fp32); default bf16")  # fmt: skip
    args = p.parse_args(argv)
    if not args.longest and args.seq_len < 1:
        p.error("--seq-len N is required (or --longest)")
    try:
        shape = load_shape(model_yaml(args.model), args.attention)
    except FileNotFoundError as err:
        p.error(str(err))
    setup = Setup(args.attention, not args.no_ac, args.tiled_mlp, args.offload_activations,
                  tiled_layer=args.tiled_layer, bf16_build=not args.fp32_build)  # fmt: skip
    if args.longest:
        print(f"{args.model}: {shape.params / 1e9:.3f}B parameters, {args.nodes} node(s) of {args.gpus} GPU(s) of "
              f"{args.gpu_mem_gib:g} GiB, host {args.host_mem_gib or 'unlimited'} GiB, attention {args.attention}; "
              f"the longest seq_len (a multiple of 1,024) whose estimate fits, per rung")  # fmt: skip
        print(f"{'rung':<16}{'sp':>4}{'cp':>4}{'seq_len':>14}{'GPU GiB':>10}{'host GiB':>10}")
        for rung, n, e in longest(shape, args.gpus, args.gpu_mem_gib, setup, args.host_mem_gib, args.nodes):
            if e is None:
                print(f"{rung:<16}{'-':>4}{'-':>4}{'none':>14}")
            else:
                print(f"{rung:<16}{e.sp:>4}{e.cp:>4}{n:>14,}{e.gpu_gib:>10.1f}{e.host_bytes / GIB:>10.1f}")
        return
    rows = plan(shape, args.seq_len, args.gpus, args.gpu_mem_gib, setup, host_mem_gib=args.host_mem_gib,
                nodes=args.nodes)[0]  # fmt: skip
    pick, tiled_layer = plan_or_tiled(shape, args.seq_len, args.gpus, args.gpu_mem_gib, setup, args.host_mem_gib,
                                      args.nodes)[1:]  # fmt: skip
    print(f"{args.model}: {shape.params / 1e9:.3f}B parameters, seq_len {args.seq_len:,}, {args.nodes} node(s) of "
          f"{args.gpus} GPU(s) of {args.gpu_mem_gib:g} GiB, attention {args.attention}")  # fmt: skip
    print(f"{'rung':<16}{'sp':>4}{'cp':>4}{'GPU GiB':>10}{'host GiB':>10}  fits  (host: one node's)")
    host_budget = math.inf if args.host_mem_gib is None else HEADROOM * args.host_mem_gib * GIB
    for e in rows:
        gib = "-" if math.isinf(e.gpu_bytes) else f"{e.gpu_gib:.1f}"
        host = "-" if math.isinf(e.host_bytes) else f"{e.host_bytes / GIB:.1f}"
        fits = e.gpu_bytes <= HEADROOM * args.gpu_mem_gib * GIB and e.host_bytes <= host_budget
        print(f"{e.rung:<16}{e.sp:>4}{e.cp:>4}{gib:>10}{host:>10}  {e.note or ('yes' if fits else 'no')}")
    extra = ""
    if tiled_layer != setup.tiled_layer:  # as parallel=auto does
        print(f"nothing fits as set up; with the tiled layer, which parallel=auto turns on here, {pick.rung} "
              f"sp={pick.sp} cp={pick.cp} does")  # fmt: skip
        extra = f" parallel.tiled_layer={tiled_layer}"
    if pick is None:
        print("no rung fits: lower train.seq_len or add GPUs or nodes")
    else:
        print(f"pick: parallel={pick.rung} parallel.sp={pick.sp} parallel.cp={pick.cp}{extra}")
        for name, b in pick.terms.items():
            print(f"  {name:<58}{b / GIB:8.2f} GiB")
        for name, b in pick.host_terms.items():
            print(f"  host: {name:<52}{b / GIB:8.2f} GiB")


if __name__ == "__main__":
    main()
