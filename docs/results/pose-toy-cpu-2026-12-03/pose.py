"""CPU experiment (2026-12-03): does PoSE-style position skipping in training remove the positional limit of
length generalisation? The tiny block-retrieval model (train/probes.py's task, rope_theta from argv) is
trained at 256 tokens; with pose=1 each training row's positions jump once, at a random split, by a random
skip up to 4,096 - 256, so the relative distances of 4K evaluation occur in training. Evaluated at 256,
1,024 and 4,096 tokens with beam_min 4 (searches as good as exhaustive here: docs/ssa.md).

The library starts a new document wherever positions do not continue by +1 (HF's packed-sequence rule), which
would cut each skipped row in two; this record patches ``ssa_kernels.hf.doc_ids_of`` so that a row is one
document. A real PoSE option needs document ids that do not come from positions (docs/functional_context.md).

    python3 docs/results/pose-toy-cpu-2026-12-03/pose.py <pose 0|1> <seed> 10000
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

import ssa_kernels.hf as hf  # noqa: E402
from data.tasks import FILLER, block_retrieval  # noqa: E402
from ssa_kernels import SSAConfig  # noqa: E402
from train.probes import evaluate  # noqa: E402

hf.doc_ids_of = lambda position_ids, batch: None  # one document per row, skips or not

pose, seed, theta = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
seq_len, bs, nk, target = 256, 16, 32, 4096
torch.manual_seed(seed)
config = AutoConfig.for_model(
    "llama", vocab_size=FILLER + 2 * nk, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq_len, attn_implementation="sdpa",
    rope_theta=theta,
)  # fmt: skip
model = AutoModelForCausalLM.from_config(config).float()
cfg = SSAConfig(block_size=bs, topk_blocks=2, local_window=2 * bs, top_nodes=4, routing="distill", beam_min=4)
hf.convert_to_ssa(model, cfg)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
g = torch.Generator().manual_seed(seed + 1)
for _ in range(200):
    ids, ans, _ = block_retrieval(16, seq_len, bs, g, nk)
    pos = torch.arange(seq_len).expand(16, -1).clone()
    if pose:
        split = torch.randint(1, seq_len, (16, 1), generator=g)
        skip = torch.randint(0, target - seq_len + 1, (16, 1), generator=g)
        pos = pos + (pos >= split) * skip
    loss = F.cross_entropy(model(ids, position_ids=pos).logits[:, -1], ans)
    opt.zero_grad()
    loss.backward()
    opt.step()
model.eval()
rows = [(L, *[round(x, 2) for x in evaluate(model, cfg, L, nk, n=64)]) for L in (256, 1024, 4096)]
print("pose" if pose else "plain", seed, theta, rows, flush=True)
