"""A tiny random-init HF causal LM shared by the SSA tests (tests/ is not a package)."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def tiny_hf_model(arch: str, dtype: torch.dtype = torch.float32):
    cfg = AutoConfig.for_model(
        arch, vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).to(dtype)
