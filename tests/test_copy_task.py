"""The training-only ``copy`` task (data/copy.py): a random text and the same text again, every token of
the second copy labelled in the mix (data/mix.py), seeded like the other synthetic tasks."""

import random

import numpy as np
import pytest

from data import IGNORE_INDEX, SyntheticConfig, byte_tokenizer
from data.copy import ANSWER_PREFIX, INSTRUCTION
from data.mix import SyntheticRows, check_synthetic
from data.sample import LengthError
from data.sources import DataError
from data.synthetic import ALL_TASKS, TRAIN_TASKS, generate
from data.wordlists import ADJECTIVES, NOUNS

LONGEST = max(map(len, ADJECTIVES)) + 1 + max(map(len, NOUNS))


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def n_tokens(text: str) -> int:
    return len(text.encode())


@pytest.mark.parametrize("length", [100, 300, 1024, 4096])
def test_copy_is_the_text_twice_and_fills_the_budget(tok, length):
    for seed in range(5):
        s = generate("copy", length, tok, seed, None, "train")
        assert s.input.startswith(INSTRUCTION) and s.answer_prefix == ANSWER_PREFIX
        text = s.input[len(INSTRUCTION) : -1]
        assert s.input.endswith("\n") and s.target == text and s.answers == [text]
        assert s.prompt + s.target == f"{INSTRUCTION}{text}\n{ANSWER_PREFIX}{text}"
        used = n_tokens(s.prompt + s.target)
        assert used <= length
        # the largest number of words that fits: one more (a space and the longest word, twice) would not
        assert used > length - 2 * (1 + LONGEST), (length, used)
        words = text.split(" ")
        assert len(words) == s.metadata["words"] >= 1
        assert all(w.isdigit() and len(w) == 7 or w.count("-") >= 1 for w in words)
        assert s.score(s.target) == 100.0
        assert s.score(s.target[: len(s.target) // 2]) < 100.0


def test_copy_is_deterministic_and_splits_are_disjoint(tok):
    a = [generate("copy", 512, tok, seed, None, "train").target for seed in range(40)]
    assert a == [generate("copy", 512, tok, seed, None, "train").target for seed in range(40)]
    assert len(set(a)) == len(a)  # every seed its own text
    b = [generate("copy", 512, tok, seed, None, "eval").target for seed in range(40)]
    assert not set(a) & set(b)  # a training sample is never an evaluation sample
    # the same seed at another length draws another text (the length is part of the seed key, as for niah)
    assert generate("copy", 1024, tok, 3, None, "train").target[:40] != a[3][:40]


def test_copy_rejects_a_depth_and_a_budget_below_one_word(tok):
    with pytest.raises(ValueError, match="no needle"):
        generate("copy", 512, tok, 0, 0.5, "train")
    with pytest.raises(LengthError, match="copy at length=50"):
        generate("copy", 50, tok, 0, None, "train")


def test_copy_is_a_training_task_not_an_evaluation_task():
    assert "copy" in TRAIN_TASKS and "copy" not in ALL_TASKS  # evaluation's `all` stays RULER + MRCR
    check_synthetic(SyntheticConfig(ratio=1.0, tasks=["copy", "niah_single_1"]), 1024)
    with pytest.raises(DataError, match="data.synthetic.tasks"):
        check_synthetic(SyntheticConfig(ratio=1.0, tasks=["copy2"]), 1024)


def test_answer_supervision_labels_exactly_the_second_copy(tok):
    seq = 1024
    rows = SyntheticRows(SyntheticConfig(ratio=1.0, tasks=["copy"]), tok, seq)
    for seed in range(3):
        row = rows.row(seed, random.Random(seed))
        s = rows.sample(seed, random.Random(seed))
        ids, labels = row["input_ids"], row["labels"]
        n_prompt, n_copy = n_tokens(s.prompt), n_tokens(s.target)
        assert tok.decode(ids[:n_prompt]) == s.prompt
        labelled = np.flatnonzero(labels != IGNORE_INDEX)
        # labels[i] is token i + 1: the labelled inputs are the last prompt token .. the copy's last token
        assert labelled.tolist() == list(range(n_prompt - 1, n_prompt + n_copy))
        assert tok.decode(labels[labelled]) == s.target + tok.eos_token
        assert tok.decode(labels[labelled][:-1]) == s.input[len(INSTRUCTION) : -1]  # = the first copy


def test_packed_copies_each_label_their_own_second_copy(tok):
    seq = 4096
    cfg = SyntheticConfig(ratio=1.0, tasks=["copy", "niah_single_1"], lengths=[1024, 2048])
    rows = SyntheticRows(cfg, tok, seq)
    seen_copy = 0
    for seed in range(4):
        row = rows.row(seed, random.Random(seed))
        ids, labels, pos = row["input_ids"], row["labels"], row["position_ids"]
        starts = [i for i in range(seq) if pos[i] == 0]
        rng, per_row, n_labelled = random.Random(seed), seq // 1024, 0
        for j, start in enumerate(starts):
            s = rows.sample(seed * per_row + j, rng, budget=seq - start)
            n_prompt = n_tokens(s.prompt)
            assert tok.decode(ids[start : start + n_prompt]) == s.prompt
            seg = labels[start + n_prompt - 1 : start + n_prompt + n_tokens(s.target)]
            assert tok.decode(seg) == s.target + tok.eos_token
            n_labelled += n_tokens(s.target) + 1
            seen_copy += s.task == "copy"
        assert int((labels != IGNORE_INDEX).sum()) == n_labelled  # nothing but the targets
    assert seen_copy >= 2


def test_copy_experiment_composes_and_the_script_uses_it():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.scripts_loader import load_script
    from train.__main__ import CONF_DIR
    from train.config import to_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=functional_context_copy", "attention=ssa"])
    config = to_config(cfg)
    assert "copy" in config.data.synthetic.tasks and config.data.synthetic.ratio > 0
    assert config.train.seq_len == 16384 and config.train.micro_batch == 1
    script = load_script("prove_functional_context")
    args = script.parse_args(["--out", "x", "--experiment", "functional_context_copy"])
    assert script.train_overrides("ssa", args)[0] == "experiment=functional_context_copy"
    assert script.train_overrides("ssa", script.parse_args(["--out", "x"]))[0] == "experiment=functional_context"
