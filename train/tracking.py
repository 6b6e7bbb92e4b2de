"""Metrics: a jsonl file in the run directory, wandb (offline by default), a console progress bar
and a log line. Only rank 0 reports; values arrive already reduced over ranks."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from train.config import Config

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per GPU, by a fragment of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H20": 148e12, "A100": 312e12, "B200": 2250e12}


def peak_flops(device: torch.device, override_tflops: float) -> float:
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), 0.0)


def attended_keys(seq_len: int, ssa: dict | None) -> float:
    """Mean keys a query attends in a causal sequence of seq_len tokens: (seq_len + 1) / 2 for dense
    attention. With SSA (``config.ssa``) a query in block i sees every earlier key while the whole prefix fits
    its budget of K = (sink_blocks + topk_blocks) x block_size + local_window keys (t < K), and after that
    its sink and routed blocks, the local window's full blocks and its own block up to itself:
    K - block_size + t % block_size + 1 keys (an upper bound: the selector may route fewer blocks)."""
    if not ssa:
        return (seq_len + 1) / 2
    b = ssa["block_size"]
    cap = (ssa["sink_blocks"] + ssa["topk_blocks"]) * b + max(ssa["local_window"], b)
    if seq_len <= cap:
        return (seq_len + 1) / 2
    rest, (full, part) = seq_len - cap, divmod(seq_len - cap, b)  # cap is a multiple of block_size
    total = cap * (cap + 1) // 2 + rest * (cap - b + 1) + full * b * (b - 1) // 2 + part * (part - 1) // 2
    return total / seq_len


def flops_per_token(config, n_params: int, n_embedding: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding parameters, lm_head included) plus attention's
    12 x layers x (heads x head_dim) x the keys a query attends (``attended_keys``: about seq_len / 2 when
    dense and causal, PaLM's 12 x seq_len halved by the mask; SSA's budget when ``config.ssa`` is set)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    keys = attended_keys(seq_len, getattr(config, "ssa", None))
    attn = 12 * config.num_hidden_layers * keys * config.num_attention_heads * head_dim
    lm_head = n_embedding if getattr(config, "tie_word_embeddings", False) else 0
    return 6 * (n_params - n_embedding + lm_head) + attn


class Tracker:
    def __init__(self, cfg: Config, config_dict: dict, run_dir: Path, is_main: bool, start_step: int):
        self.cfg, self.is_main = cfg.logging, is_main
        self.wandb = None
        self.bar = None
        if not is_main:
            return
        self.metrics_file = open(Path(run_dir) / "metrics.jsonl", "a")
        if self.cfg.wandb != "disabled":
            import wandb  # only when used: a run with logging.wandb=disabled needs no wandb install

            id_file = Path(run_dir) / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            self.wandb = wandb.init(
                project=self.cfg.project,
                name=cfg.name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                mode=self.cfg.wandb,
                config=config_dict,
            )
        if self.cfg.progress:
            self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc=cfg.name, unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.metrics_file.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
        if step % self.cfg.log_every == 0:
            # Per-layer series (router/layer3/far_mass, ...) go to the file and wandb, not the console line.
            shown = {k: v for k, v in metrics.items() if "/layer" not in k}
            text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
            (self.bar.write if self.bar is not None else log.info)(f"step {step}: {text}")

    def close(self) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.metrics_file.close()
