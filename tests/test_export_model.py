"""scripts/export_model.py: a checkpoint's model in bf16 shards that from_pretrained reads back (SSA routers too)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssa_kernels.hf import from_pretrained as ssa_from_pretrained
from tests.scripts_loader import load_script
from tests.test_eval_runner import save_tiny
from train.config import ModelConfig
from train.model import build_tokenizer


def weights(model_dir: Path) -> dict:
    out = {}
    for f in model_dir.glob("*.safetensors"):
        out.update(load_file(str(f)))
    return out


def test_export_writes_bf16_shards_that_load_back(tmp_path, capsys):
    src = save_tiny(tmp_path / "src", ssa=True)
    files = load_script("export_model").main([str(src), str(tmp_path / "out"), "--max-shard-size", "40KB"])
    out = tmp_path / "out"
    assert len(files) > 3 and all(f.stat().st_size < 60_000 for f in files)  # small shards (one tensor may exceed)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    original, exported = weights(src), weights(out)
    assert set(index["weight_map"]) == set(original) == set(exported)
    assert any("ssa_router" in k for k in exported)  # the learned routers travel too
    for k, v in original.items():
        assert exported[k].dtype == torch.bfloat16 and torch.equal(exported[k], v.to(torch.bfloat16)), k
    assert (
        build_tokenizer(ModelConfig(path=str(out))).get_vocab()
        == build_tokenizer(ModelConfig(path=str(src))).get_vocab()
    )

    # from_pretrained reads the shards as fp32: the same logits as the original model with bf16-rounded weights
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(0))
    ref = ssa_from_pretrained(str(src), dtype=torch.float32).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        got = ssa_from_pretrained(str(out), dtype=torch.float32).eval()
        assert all(p.dtype == torch.float32 for p in got.parameters())
        assert torch.equal(got(ids).logits, ref(ids).logits)
    assert "out: model-00001-of-" in capsys.readouterr().out


def test_a_directory_without_weights_is_named(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="no \\*.safetensors weights"):
        load_script("export_model").main([str(tmp_path / "m"), str(tmp_path / "out")])
