"""train.position_skip (PoSE-style position skipping, train/model.py:PositionSkip): only the rotary embedding
sees the skipped positions, once per row, drawn reproducibly per (seed, step, forward); attention layers (and so
document boundaries and SSA routing ranges) keep the loader's positions; eval-mode forwards are untouched."""

import sys
from pathlib import Path

import pytest
import torch

from ssa_kernels import SSAConfig
from ssa_kernels.hf import convert_to_ssa
from train.config import ConfigError
from train.model import PositionSkip, attach_position_skip

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from tiny import tiny_hf_model  # noqa: E402

SEQ, TARGET = 64, 1000


def recorded_positions(model, ids, pos):
    """(positions the rotary embedding saw, positions each attention layer got) of one forward."""
    seen = {"rotary": [], "attention": []}
    hooks = [model.model.rotary_emb.register_forward_pre_hook(  # after PositionSkip's: sees its output
        lambda m, a, kw: seen["rotary"].append(kw.get("position_ids", a[1] if len(a) > 1 else None)), with_kwargs=True
    )]  # fmt: skip
    for layer in model.model.layers:
        hooks.append(layer.self_attn.register_forward_pre_hook(
            lambda m, a, kw: seen["attention"].append(kw["position_ids"]), with_kwargs=True
        ))  # fmt: skip
    with torch.no_grad():
        model(ids, position_ids=pos)
    for h in hooks:
        h.remove()
    return seen["rotary"][0], seen["attention"]


@pytest.mark.parametrize("arch,attention", [("llama", "dense"), ("llama", "ssa"), ("qwen3", "dense")])
def test_only_the_rotary_embedding_sees_one_skip_per_row(arch, attention):
    model = tiny_hf_model(arch)
    if attention == "ssa":
        convert_to_ssa(model, SSAConfig(block_size=8, topk_blocks=2, local_window=16, top_nodes=4))
    skip = attach_position_skip(model, TARGET, SEQ, seed=3)
    ids = torch.randint(0, 97, (4, SEQ))
    # rows 0-2 one document; row 3 two documents (positions restart at 40)
    pos = torch.arange(SEQ).repeat(4, 1)
    pos[3, 40:] = torch.arange(SEQ - 40)
    model.train()
    skip.begin_step(7)
    rotary, attention_pos = recorded_positions(model, ids, pos)
    fresh = PositionSkip(torch.nn.Identity(), TARGET, SEQ, seed=3)
    fresh.begin_step(7)
    split, jump = fresh.draw(4)  # the first draw of step 7, from a fresh object
    assert torch.equal(rotary, pos + (pos >= split) * jump)
    assert all(torch.equal(p, pos) for p in attention_pos) and len(attention_pos) == 2
    assert int(rotary.max()) < TARGET and int(jump.max()) <= TARGET - SEQ and int(jump.max()) > 0
    for r in range(3):  # one jump per single-document row, where the split is
        steps = torch.diff(rotary[r])
        assert int((steps != 1).sum()) == (1 if int(jump[r]) else 0)
    # the next forward of the step draws anew; the same step again (a resumed run) repeats the draws
    again, _ = recorded_positions(model, ids, pos)
    assert not torch.equal(again, rotary)
    skip.begin_step(7)
    assert torch.equal(recorded_positions(model, ids, pos)[0], rotary)
    skip.begin_step(8)
    assert not torch.equal(recorded_positions(model, ids, pos)[0], rotary)
    model.eval()  # evaluation: true positions
    assert torch.equal(recorded_positions(model, ids, pos)[0], pos)


def test_off_and_unsupported_models():
    assert attach_position_skip(tiny_hf_model("llama"), 0, SEQ, 0) is None
    with pytest.raises(ConfigError, match=r"train\.position_skip"):
        attach_position_skip(torch.nn.Linear(2, 2), TARGET, SEQ, 0)
    dynamic = tiny_hf_model("llama")
    dynamic.model.rotary_emb.rope_type = "dynamic"  # rescales by the largest position it sees
    with pytest.raises(ConfigError, match=r"train\.position_skip.*dynamic"):
        attach_position_skip(dynamic, TARGET, SEQ, 0)


@pytest.mark.parametrize("attention,factor,warns", [("ssa", None, True), ("ssa", 1.0, False), ("dense", None, False)])
def test_yarn_temperature_warning_for_ssa_only(attention, factor, warns, caplog):
    """An SSA model with YaRN and transformers' default attention temperature gets a warning naming the fix."""
    from train.model import warn_yarn_temperature

    model = tiny_hf_model("llama")
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512, "rope_theta": 10000.0}
    if factor is not None:
        rope["attention_factor"] = factor
    setattr(model.config, "rope_parameters" if hasattr(model.config, "rope_parameters") else "rope_scaling", rope)
    if attention == "ssa":
        convert_to_ssa(model, SSAConfig(block_size=8, topk_blocks=2, local_window=16, top_nodes=4))
    with caplog.at_level("WARNING", logger="train.model"):
        warn_yarn_temperature(model)
    assert ("attention_factor:1.0" in caplog.text) == warns, caplog.text
