"""Copy a checkpoint's model in a smaller dtype and in small shards, e.g. to carry it out of one device call and
into the next: ``python scripts/export_model.py CHECKPOINT OUT [--dtype bfloat16] [--max-shard-size 15MB]``.

A device call returns files of at most 16 MiB and starts a bare machine, so a training run cannot go on in the
next call unless its weights come back. In bf16 shards of 15 MB a ~5M-parameter model is one 10 MB file (the
optimizer state stays behind: the next run starts it afresh, e.g. ``--pretrained OUT`` of
``scripts/prove_functional_context.py`` or ``model=hf model.path=OUT``, which load the weights as fp32).

CHECKPOINT is a run directory (its latest checkpoint), a trainer checkpoint or a model directory
(``train.eval``'s rule). Floating tensors are cast; everything else in the model directory (config,
tokenizer, generation config) is copied as it is. Shards and their index are written by
``huggingface_hub.save_torch_state_dict``, the format ``from_pretrained`` reads.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from train.config import ConfigError  # noqa: E402
from train.eval import resolve_checkpoint  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def export(checkpoint: str, out: Path, dtype: torch.dtype, max_shard_size: str) -> list[Path]:
    """Writes the model of ``checkpoint`` to ``out``; returns the weight files written."""
    src = resolve_checkpoint(checkpoint)
    weights = sorted(src.glob("*.safetensors"))
    if not weights:
        raise ConfigError(f"{src}: no *.safetensors weights to export")
    state = {}
    for f in weights:
        state.update(load_file(str(f)))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():  # config, tokenizer, generation config: as they are
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy2(f, out / f.name)
    save_torch_state_dict(state, out, max_shard_size=max_shard_size)
    return sorted(out.glob("*.safetensors"))


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a run directory, a trainer checkpoint or a model directory")
    p.add_argument("out", type=Path, help="directory for the exported model")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--max-shard-size", default="15MB", help="per weight file, e.g. 15MB (a larger tensor: its own)")
    args = p.parse_args(argv)
    try:
        files = export(args.checkpoint, args.out, DTYPES[args.dtype], args.max_shard_size)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    sizes = ", ".join(f"{f.name} {f.stat().st_size / 2**20:.1f} MiB" for f in files)
    print(f"{args.out}: {sizes}")
    return files


if __name__ == "__main__":
    main()
