"""Synthetic eval tasks (data.ruler, data.mrcr, data.synthetic) and their scoring (data.scoring):
determinism, needles at the stated depth, the token budget with two tokenizers, hand-worked
scores, oracle = 100 and random guessing ~ 0, disjoint train / eval seeds, JSONL export."""

from __future__ import annotations

import json
import random
import re
import string

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from data import mrcr, ruler, scoring, synthetic
from data.prose import prose_sentences
from data.sample import SEEDS_PER_SPLIT, LengthError, Sample, counter_for, global_seed, read_jsonl, rng_key, write_jsonl
from data.tokenizer import byte_tokenizer
from data.wordlists import NOUNS

NEEDLE_TASKS = [t for t in ruler.TASKS if t not in ("cwe", "fwe")] + list(synthetic.MRCR_TASKS)


@pytest.fixture(scope="module")
def byte_tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def bpe_tok():
    """A real subword tokenizer built offline: byte-level BPE (2000 merges-worth of vocab) trained
    on the built-in prose."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(prose_sentences()[:4000]), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", model_max_length=1 << 40)


# The byte tokenizer spends ~4x more tokens on the same text: the list-heavy tasks need longer budgets.
def _min_length(task: str, byte: bool) -> int:
    if task.startswith("mrcr"):
        return 16384 if byte else (8192 if task == "mrcr_8" else 4096)
    if task == "cwe":
        return 16384 if byte else 4096
    return 1024


# ---------------------------------------------------------------------------------------------
# determinism, seeds


@pytest.mark.parametrize("task", synthetic.ALL_TASKS)
def test_deterministic(task, bpe_tok):
    L = max(4096, _min_length(task, False))
    a = synthetic.generate(task, L, bpe_tok, seed=7)
    b = synthetic.generate(task, L, bpe_tok, seed=7)
    c = synthetic.generate(task, L, bpe_tok, seed=8)
    assert a.to_json() == b.to_json()
    assert a.input != c.input and a.answers != c.answers


def test_seed_splits_disjoint(bpe_tok):
    eval_seeds = {global_seed("eval", s) for s in (0, 1, 2, SEEDS_PER_SPLIT - 1)}
    train_seeds = {global_seed("train", s) for s in (0, 1, 2, SEEDS_PER_SPLIT - 1)}
    assert max(eval_seeds) < SEEDS_PER_SPLIT <= min(train_seeds) and not eval_seeds & train_seeds
    keys = {split: {rng_key("niah_single_1", 4096, None, split, s) for s in range(1000)} for split in ("eval", "train")}
    assert not keys["eval"] & keys["train"]
    for bad in (-1, SEEDS_PER_SPLIT):
        with pytest.raises(ValueError, match="seed"):
            global_seed("eval", bad)
    with pytest.raises(ValueError, match="split"):
        global_seed("test", 0)
    ev = [synthetic.generate("niah_single_1", 2048, bpe_tok, s, split="eval").answers[0] for s in range(20)]
    tr = [ex["answers"][0] for ex in synthetic.training_examples(["niah_single_1"], [2048], bpe_tok, num_per=20)]
    assert len(tr) == 20 and not set(ev) & set(tr)


def test_training_examples(bpe_tok):
    rows = list(synthetic.training_examples(["niah_single_1", "qa_1", "mrcr_2"], [2048, 4096], bpe_tok, num_per=2))
    assert len(rows) == 12
    assert [r["task"] for r in rows[:6]] == ["niah_single_1"] * 2 + ["qa_1"] * 2 + ["mrcr_2"] * 2
    for r in rows:
        assert r["sample"].split == "train" and r["sample"].score(r["target"]) == 100.0
        assert r["prompt"] == r["sample"].prompt


# ---------------------------------------------------------------------------------------------
# token budget


def _check_budget(s: Sample, tok):
    count = counter_for(tok)
    L = s.length
    assert count(s.prompt) == s.num_tokens
    assert s.num_tokens + s.reserved_tokens <= L
    assert count(s.prompt) + count(s.target) <= L
    assert s.reserved_tokens >= count(s.target)
    # as full as the haystack's granularity allows (documents and chat turns are the coarsest units)
    slack = L - s.num_tokens - s.reserved_tokens
    assert slack <= max(0.1 * L, 320), (s.task, L, slack)


@pytest.mark.parametrize("task", synthetic.ALL_TASKS)
@pytest.mark.parametrize("which", ["byte", "bpe"])
def test_token_budget(task, which, byte_tok, bpe_tok):
    tok = byte_tok if which == "byte" else bpe_tok
    for L in (1024, 4096, 16384):
        if L < _min_length(task, which == "byte"):
            continue
        _check_budget(synthetic.generate(task, L, tok, seed=1), tok)


@pytest.mark.parametrize("which", ["byte", "bpe"])
def test_token_budget_128k(which, byte_tok, bpe_tok):
    tok = byte_tok if which == "byte" else bpe_tok
    s = ruler.generate("niah_single_1", 131072, tok, seed=3, depth=0.5)
    _check_budget(s, tok)
    assert 131072 - s.num_tokens - s.reserved_tokens <= 131  # within 0.1%


def test_too_short_raises(byte_tok):
    with pytest.raises(LengthError, match="cwe at length=1024"):
        ruler.generate("cwe", 1024, byte_tok)


def test_template_tokens_and_generation_reserve(bpe_tok):
    a = ruler.generate("niah_single_1", 4096, bpe_tok, seed=0)
    b = ruler.generate("niah_single_1", 4096, bpe_tok, seed=0, template_tokens=200, tokens_to_generate=0)
    count = counter_for(bpe_tok)
    assert a.reserved_tokens == 128  # RULER's tokens_to_generate for niah
    assert b.reserved_tokens == max(count(b.target), count(" ".join(b.answers)))
    assert b.num_tokens + b.reserved_tokens + 200 <= 4096


# ---------------------------------------------------------------------------------------------
# needles in the context at the stated depth


def _units_before_lines(text: str, needle: str, unit: str) -> int:
    lines = text[: text.index(needle)].split("\n")
    return sum(line == unit for line in lines)


def _units_before_essay(text: str, needle: str, others: list[str]) -> int:
    """Prose sentences before ``needle``, by walking the prose sequence from the haystack's start."""
    prose = prose_sentences()
    body = text.split("\n", 1)[1]  # after the template's first line
    before = body[: body.index(needle)]
    for o in others:
        before = before.replace(o, "")
    before = " ".join(before.split())
    if not before:
        return 0
    start = next(i for i, p in enumerate(prose) if before.startswith(p))
    pos = j = 0
    while before.startswith(prose[(start + j) % len(prose)], pos):
        pos += len(prose[(start + j) % len(prose)]) + 1
        j += 1
    assert pos >= len(before), "the text before the needle is not the prose sequence"
    return j


def _units_before(s: Sample) -> int:
    """Haystack units (lines, sentences, documents, filler turns) before the first gold needle."""
    if s.task.startswith("mrcr"):
        ask = s.answers[0].removeprefix(s.metadata["prefix"])
        before = s.input[: s.input.index(ask)]
        form, topic = re.match(r"Write a (.+) about (.+)\.", s.metadata["request"]).groups()
        reqs = re.findall(r"User: Write a (.+?) about (.+?)\.\n", before)
        return sum(f != form and t != topic for f, t in reqs)
    if s.task == "vt":
        main = s.input[s.input.rindex("Memorize and track") :]
        return _units_before_lines(main, f"VAR {s.answers[0]} = ", ruler.NOISE)
    if s.task.startswith("qa"):
        gold = s.metadata["needles"]
        docs = re.split(r"\n\nDocument \d+:\n", "\n\n" + s.input.split("given documents.\n\n", 1)[1])
        i = next(i for i, d in enumerate(docs) if d.startswith(gold[0]))
        return i - 1 - sum(any(d.startswith(g) for g in gold[1:]) for d in docs[:i])
    needle = s.metadata["needles"][0]
    assert s.metadata["gold"][0] and s.answers[0] in needle
    if s.metadata["haystack"] == "essay":
        return _units_before_essay(s.input, needle, s.metadata["needles"][1:])
    if s.metadata["haystack"] == "noise":
        return _units_before_lines(s.input, needle, ruler.NOISE)
    others = set(s.metadata["needles"][1:])  # needle haystack: every line but the real needles
    lines = s.input[: s.input.index(needle)].split("\n")[1:]
    return sum(line.startswith("One of the special magic") and line not in others for line in lines)


@pytest.mark.parametrize("task", NEEDLE_TASKS)
def test_needle_at_depth(task, bpe_tok):
    L = 8192
    for depth in (0.0, 0.3, 0.75, 1.0):
        s = synthetic.generate(task, L, bpe_tok, seed=11, depth=depth)
        n = s.metadata.get("units", s.metadata.get("filler_turns"))
        assert n > 4
        if task.startswith("mrcr"):
            assert s.answers[0].removeprefix(s.metadata["prefix"]) in s.input
        else:  # qa: one gold form is in the document (another may drop the thousands separator)
            assert all(a in s.input for a in s.answers) or task.startswith("qa") and s.answers[0] in s.input
        assert abs(_units_before(s) - int(n * depth)) <= 1, (depth, n, _units_before(s))
        assert s.needle_depths[0] == pytest.approx(int(n * depth) / n)


@pytest.mark.parametrize("task", ["niah_multikey_1", "vt", "qa_2", "niah_single_1"])
def test_needle_depth_drawn(task, bpe_tok):
    """depth=None: positions drawn as RULER draws them; the recorded depth is where it went."""
    s = synthetic.generate(task, 8192, bpe_tok, seed=5)
    n = s.metadata["units"]
    assert abs(_units_before(s) - round(s.needle_depths[0] * n)) <= 1
    if task == "niah_multikey_1":  # essays: RULER's 40 depths
        assert all(any(int(n * d) == round(x * n) for d in ruler.DEPTHS) for x in s.needle_depths)


def test_cwe_fwe_counts(bpe_tok):
    s = ruler.generate("cwe", 8192, bpe_tok, seed=2)
    words = re.findall(r"\d+\. ([^\d]+?)(?= \d+\. |\n|$)", s.input.split("\n")[-2])
    counts = {w: words.count(w) for w in set(words)}
    assert all(counts[a] == 30 for a in s.answers) and sorted(counts.values())[-11] == 3
    s = ruler.generate("fwe", 8192, bpe_tok, seed=2)
    text = s.input.split("coded words. ", 1)[1].split("\nQuestion:")[0].split()
    ranked = sorted(set(text), key=text.count, reverse=True)
    assert ranked[0] == "..." and ranked[1:4] == s.answers


def test_labels(bpe_tok):
    exact = {"niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt", "cwe", "fwe"}
    for task in ruler.TASKS:
        s = ruler.generate(task, 4096, bpe_tok)
        assert s.label == ("RULER" if task in exact else "RULER-offline"), task
    assert synthetic.generate("mrcr_2", 4096, bpe_tok).label == "MRCR-synth"


def test_prose_files(tmp_path, bpe_tok):
    f = tmp_path / "essay.txt"
    f.write_text(" ".join(f"Sentence number {w} talks about the {w} at length." for w in NOUNS[:300]))
    s = ruler.generate("niah_single_2", 2048, bpe_tok, prose_files=[str(f)])
    assert "Sentence number" in s.input and s.label == "RULER-offline"


# ---------------------------------------------------------------------------------------------
# scoring, hand-worked


def test_string_match_hand_examples():
    refs = [["1234567", "7654321"], ["apple"]]
    # sample 1: one of two refs -> 0.5; sample 2: case-insensitive hit -> 1; mean 75
    assert scoring.string_match_all(["The numbers are 1234567 and 99.", "APPLE pie"], refs) == 75.0
    # part: max over refs -> 1 and 1
    assert scoring.string_match_part(["The numbers are 1234567 and 99.", "APPLE pie"], refs) == 100.0
    assert scoring.string_match_part(["nothing", "pear"], refs) == 0.0
    assert scoring.string_match_all(["a b c"], [["a", "b", "x"]]) == 66.67  # rounded like RULER
    assert scoring.match_all("\x00 Paris\n", ["paris"]) == 1.0
    assert scoring.postprocess_pred("  a\tb\x01c  ") == "a\nb\nc"
    assert scoring.score_one("string_match_part", "Lyon", ["Paris", "lyon"]) == 100.0
    with pytest.raises(ValueError):
        scoring.score_one("bleu", "x", ["x"])


def test_read_miss_tells_a_distractor_from_a_miscopy():
    prompt = "One of the special magic numbers for red-fox is: 4211343. For blue-owl it is: 7058593. End"
    # another value of the prompt, read whole: the key match failed
    assert scoring.read_miss(prompt, ["4211343"], " 7058593.\nThe") == {
        "read": "7058593", "in_prompt": True, "chars_right": round(1 / 7, 3)}  # fmt: skip
    # the gold value with its first digit wrong: found the needle, mis-copied it
    assert scoring.read_miss(prompt, ["4211343"], " 7211343.") == {
        "read": "7211343", "in_prompt": False, "chars_right": round(6 / 7, 3)}  # fmt: skip
    # a word only as part of a longer one is not "in the prompt"; the best of several answers counts; case-insensitive
    assert scoring.read_miss(prompt, ["4211343"], "421")["in_prompt"] is False
    assert scoring.read_miss(prompt, ["xxxxxxx", "4211340"], "4211343")["chars_right"] == round(6 / 7, 3)
    assert scoring.read_miss(prompt, ["Fox"], " RED-FOX")["in_prompt"] is True
    assert scoring.read_miss(prompt, ["4211343"], " .\n ") is None  # no word read


def test_mrcr_score_hand_examples():
    assert scoring.mrcr_score("hello world", "ab12hello world", "ab12") == 0.0  # no prefix
    assert scoring.mrcr_score("ab12hello world", "ab12hello world", "ab12") == 1.0
    # SequenceMatcher("abcd", "abce").ratio() = 2 * 3 / 8
    assert scoring.mrcr_score("XYabcd", "XYabce", "XY") == pytest.approx(0.75)
    assert scoring.mrcr_score("XY", "XYabcd", "XY") == 0.0


def test_effective_length():
    table = {4096: 95.0, 8192: 90.1, 16384: 85.6, 32768: 80.0, 65536: 86.0, 131072: 40.0}
    assert scoring.effective_length(table) == 65536  # longest length at or above 85.6
    assert scoring.effective_length(table, contiguous=True) == 16384
    assert scoring.effective_length({4096: 85.59}) == 0
    per_task = {4096: {"a": 100.0, "b": 80.0}, 8192: {"a": 90.0, "b": 80.0}}  # means 90, 85
    assert scoring.effective_length(per_task) == 4096


# ---------------------------------------------------------------------------------------------
# the harness can tell: an oracle scores 100, a random guesser ~0


def _random_guess(s: Sample, rng: random.Random) -> str:
    """A prediction of the right shape with no knowledge of the context."""
    k = len(s.answers)
    if s.task == "niah_multikey_3" or s.task == "niah_single_3":
        return ", ".join(str(random.Random(rng.random()).getrandbits(128)) for _ in range(k))
    if s.task.startswith("niah"):
        return ", ".join(str(rng.randint(10**6, 10**7 - 1)) for _ in range(k))
    if s.task == "vt":
        return " ".join("".join(rng.choices(string.ascii_uppercase, k=5)) for _ in range(5))
    if s.task == "cwe":
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(rng.sample(ruler._CWE_WORDS, 10)))
    if s.task == "fwe":
        return " ".join("".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(3))
    if s.task.startswith("qa"):
        return rng.choice([ruler._name(rng, 2), str(rng.randint(1200, 2019)), f"{rng.randint(1000, 99999):,}"])
    # mrcr: some reply-like prose, without the prefix it cannot know
    return " ".join(rng.sample(prose_sentences(), 4))


@pytest.mark.parametrize("task", synthetic.ALL_TASKS)
def test_oracle_and_random(task, bpe_tok):
    rng = random.Random(0)
    samples = [synthetic.generate(task, max(4096, _min_length(task, False)), bpe_tok, seed) for seed in range(6)]
    oracle = [s.score(s.target) for s in samples]
    assert oracle == [100.0] * len(samples)
    if not task.startswith("mrcr"):
        metric = scoring.METRICS[samples[0].metric]
        assert metric([s.target for s in samples], [s.answers for s in samples]) == 100.0
        assert metric([" ".join(s.answers) for s in samples], [s.answers for s in samples]) == 100.0
    guesses = [s.score(_random_guess(s, rng)) for s in samples for _ in range(5)]
    assert sum(guesses) / len(guesses) < 5.0, guesses


def test_mrcr_wrong_instance_scores_less(bpe_tok):
    """Copying the right request's other reply (with the prefix) must not score like the answer."""
    for seed in range(4):
        s = synthetic.generate("mrcr_4", 8192, bpe_tok, seed)
        prefix, k = s.metadata["prefix"], s.metadata["k"]
        replies = re.findall(
            re.escape(f"User: {s.metadata['request']}") + r"\n\nAssistant: (.*?)(?=\n\nUser:)", s.input, re.S
        )
        assert len(replies) == 4 and prefix + replies[k - 1] == s.answers[0]
        for r in replies:
            if r != replies[k - 1]:
                assert s.score(prefix + r) < 80.0
        assert s.score(replies[k - 1]) == 0.0  # the right reply without the prefix


# ---------------------------------------------------------------------------------------------
# export


def test_jsonl_roundtrip_and_cli(tmp_path, bpe_tok, capsys):
    samples = [synthetic.generate(t, 4096, bpe_tok, seed=1) for t in ("niah_multivalue", "qa_2", "mrcr_2")]
    path = tmp_path / "x.jsonl"
    assert write_jsonl(samples, path) == 3
    back = read_jsonl(path)
    assert [b.to_json() for b in back] == [s.to_json() for s in samples]
    row = json.loads(path.read_text().splitlines()[0])
    assert {"input", "answer_prefix", "answers", "length", "label", "metric"} <= row.keys()

    synthetic.main(["--task", "fwe", "--length", "2048", "--num", "2", "--out", str(tmp_path / "fwe.jsonl")])
    rows = read_jsonl(tmp_path / "fwe.jsonl")
    assert [r.seed for r in rows] == [0, 1] and all(r.num_tokens + r.reserved_tokens <= 2048 for r in rows)
    assert "fwe: 2 samples" in capsys.readouterr().out


def test_mrcr_plain_rendering(bpe_tok):
    s = mrcr.generate(8192, bpe_tok, seed=3, needles=8, keep_messages=True)
    msgs = s.metadata["messages"]
    assert msgs[-1]["role"] == "user" and msgs[-1]["content"].startswith(f"Prepend {s.metadata['prefix']} to the ")
    assert sum(m["content"] == s.metadata["request"] for m in msgs) == 8
    assert s.answer_prefix == "Assistant:" and s.input.endswith("\n\n")
