"""The locally trained byte-level BPE tokenizer (``data/bpe.py``): exact round trip, digits one per token, RULER's
key words compressed, and a model trained and evaluated with it end to end (``model.tokenizer=DIR``)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data.bpe import corpus, synthetic_texts, train_bpe, word_texts
from data.sources import DataConfig, DataError
from data.synthetic import generate
from data.tokenizer import EOS, byte_tokenizer, make_tokenize
from train.config import ModelConfig
from train.model import build_tokenizer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus-cache"))


@pytest.fixture(scope="module")
def bpe(cache_dir):
    cfg = DataConfig(cache_dir=cache_dir)
    texts = [*corpus(cfg, 2_000_000), *word_texts(), *synthetic_texts(["niah_multikey_2"], 4, 2048)]
    return train_bpe(texts, vocab_size=16384)


def test_round_trip_is_exact_and_digits_are_single_tokens(bpe, cache_dir):
    tokenize = make_tokenize(bpe)
    docs, seen = [], 0
    for text in corpus(DataConfig(cache_dir=cache_dir), 3_000_000):
        seen += len(text)
        if seen > 2_100_000:  # past the 2M characters the tokenizer learnt from
            docs.append(text)
    held_out = docs[:20]
    assert len(held_out) >= 5
    odd = f"naïve café ünïcödé — 数据 🙂\ttabs\r\n  spaces {EOS} <|pad|> literal specials \x00\x7f"
    for text in [*held_out, odd]:
        ids = tokenize(text)
        assert bpe.decode(ids.tolist()) == text
        assert bpe.eos_token_id not in ids.tolist()  # a literal "<|endoftext|>" is text
    assert len(bpe) == 16384 and bpe.eos_token == EOS and bpe.pad_token_id is not None
    digits = tokenize(" 7224845.")
    assert [bpe.decode([i]) for i in digits] == [" ", "7", "2", "2", "4", "8", "4", "5", "."]
    code = "".join(held_out)
    assert len(tokenize(code)) < 0.4 * len(code.encode())  # merges learnt (the byte tokenizer: 1 token a byte)


def test_niah_keys_take_a_few_tokens(bpe):
    sample = generate("niah_multikey_2", 4096, byte_tokenizer(), 0, 0.5, "eval")
    keys = re.findall(r"for ([a-z]+-[a-z]+) is:", sample.prompt)
    assert len(keys) > 20
    pieces = [len(make_tokenize(bpe)(" " + k)) for k in keys]
    assert sum(pieces) / len(pieces) < 5 < sum(len(k) for k in keys) / len(keys)  # bytes per key ~15


def test_bad_vocab_size_is_refused():
    with pytest.raises(DataError, match="vocab_size=100"):
        train_bpe(["text"], vocab_size=100)


def test_cli_tokenizer_trains_and_evaluates_a_model(tmp_path, cache_dir):
    """python -m data.bpe, then a short synthetic training run with model.tokenizer=DIR (the vocabulary sizes the
    model), then train.eval on its checkpoint: every step runs on the BPE token ids."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    tok_dir = tmp_path / "bpe"
    cmd = [sys.executable, "-m", "data.bpe", "--out", str(tok_dir), "--vocab-size", "1024", "--max-chars", "300000",
           "--synthetic-samples", "2", "--synthetic-length", "1024", "--cache-dir", cache_dir]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tok_dir / "bpe.json").read_text())["vocab_size"] == 1024
    tok = build_tokenizer(ModelConfig(tokenizer=str(tok_dir)))
    assert len(tok) == 1024

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", "experiment=smoke", f"model.tokenizer={tok_dir}", f"hydra.run.dir={run}",
           f"data.cache_dir={cache_dir}", "data=mix", "data.synthetic.ratio=1.0", "data.synthetic.tasks=[niah_single_1]",
           "train.seq_len=512", "train.steps=2", "train.ckpt_every=0"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (ckpt,) = (run / "checkpoints").glob("step_*")
    config = json.loads((ckpt / "model" / "config.json").read_text())
    assert config["vocab_size"] == 1024  # 1024 is already a multiple of 64
    saved = build_tokenizer(ModelConfig(tokenizer=str(ckpt / "model")))
    assert saved.get_vocab() == tok.get_vocab()

    cmd = [sys.executable, "-m", "train.eval", f"checkpoint={run}", f"out_dir={tmp_path / 'eval'}",
           "tasks=[niah_single_1]", "lengths=[512]", "depths=[0.5]", "samples=1", "max_new_tokens=4"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert 300 < row["prompt_tokens"] <= 512  # counted in BPE tokens: ~4x the bytes of text
    sample = generate("niah_single_1", 512, tok, row["seed"], 0.5, "eval")
    assert len(sample.prompt.encode()) > 2 * row["prompt_tokens"]
