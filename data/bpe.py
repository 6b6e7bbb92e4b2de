"""A byte-level BPE tokenizer trained on the local corpus: ``python -m data.bpe --out DIR``.

For models trained from scratch (``model.tokenizer=DIR``). The byte tokenizer spells a niah key such as
"husky-dust" in 10 tokens (RULER's keys average ~15), so matching it is a 10-15-token pattern; a BPE vocabulary
learnt on the same corpus plus RULER's word lists spells a key in ~3 (issue 6: the multikey lookup was not learnt
at byte level). Digits stay single tokens, so a 7-digit answer is 7 tokens as before and copying it needs no
knowledge of how numbers split.

Trained with HF ``tokenizers`` (``BpeTrainer``) over GPT-2's byte alphabet, so any UTF-8 text round-trips
exactly and nothing is unknown; EOS / PAD / BOS as in ``data/tokenizer.py``. Saved with ``save_pretrained``:
``AutoTokenizer`` and ``train.model.build_tokenizer`` load it like any other tokenizer directory.

    python -m data.bpe --out runs/bpe16k              # the stdlib corpus, RULER's word lists, synthetic rows
    python -m data.bpe --out runs/bpe --source files --paths /data/code --synthetic-samples 0
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from data.sources import DataConfig, DataError, load_documents
from data.synthetic import ALL_TASKS, TRAIN_TASKS, generate
from data.tokenizer import BOS, EOS, PAD, byte_tokenizer
from data.wordlists import ADJECTIVES, NOUNS

SPECIALS = [EOS, PAD, BOS]


def train_bpe(texts: Iterable[str], vocab_size: int = 16384, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ``vocab_size`` entries (256 bytes + 3 specials + merges) learnt on
    ``texts``; digits are split one per token before the merges."""
    if vocab_size < 256 + len(SPECIALS):
        raise DataError(f"vocab_size={vocab_size}: at least {256 + len(SPECIALS)} (the bytes and specials)")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token=PAD, bos_token=BOS, model_max_length=1 << 40
    )


def corpus(cfg: DataConfig, max_chars: int) -> Iterator[str]:
    """Documents of ``cfg`` (``data.sources``) until ``max_chars`` characters."""
    seen = 0
    for row in load_documents(cfg):
        if seen >= max_chars:
            return
        text = row["text"][: max_chars - seen]
        seen += len(text)
        yield text


def word_texts(repeats: int = 20) -> Iterator[str]:
    """The English words RULER's keys are made of (``data/wordlists.py``: adjective-noun, e.g. "husky-dust"),
    each as it appears in a key, ``repeats`` times: " husky" (after a space) and "dust" (after the hyphen,
    which the byte-level split keeps apart). A corpus of code barely contains them, so without these they end
    up in 4-6 pieces; an English tokenizer (GPT-2's, Llama's) spells most of them in one token."""
    adjectives, nouns = sorted(set(ADJECTIVES)), sorted(set(NOUNS))
    for _ in range(repeats):
        yield " " + " ".join(adjectives)
        yield "-" + "-".join(nouns)


def synthetic_texts(tasks: list[str], samples: int, length: int) -> Iterator[str]:
    """``samples`` TRAIN-split samples (prompt + target) of each task at ``length`` bytes: the template,
    keys and values the model will read, so they get tokens of their own."""
    tok = byte_tokenizer()
    for task in tasks:
        for seed in range(samples):
            s = generate(task, length, tok, seed, None, "train")
            yield s.prompt + s.target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.bpe", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the tokenizer (save_pretrained)")
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--source", default="stdlib", choices=("stdlib", "files"), help="as data.source")
    p.add_argument("--paths", nargs="*", default=[], help="as data.paths (--source files)")
    p.add_argument("--max-chars", type=int, default=50_000_000, help="corpus characters read")
    p.add_argument("--cache-dir", default=DataConfig.cache_dir, help="as data.cache_dir (the stdlib corpus)")
    p.add_argument("--synthetic-tasks", nargs="*", default=["copy", "niah_single_1", "niah_multikey_2",
                                                              "niah_multikey_1", "niah_multiquery"])  # fmt: skip
    p.add_argument("--synthetic-samples", type=int, default=100, help="per task (0: none)")
    p.add_argument("--synthetic-length", type=int, default=4096, help="bytes per synthetic sample")
    p.add_argument("--no-words", action="store_true", help="leave out the English word lists (word_texts)")
    args = p.parse_args(argv)
    for task in args.synthetic_tasks:
        if task not in ALL_TASKS + TRAIN_TASKS:
            raise SystemExit(f"--synthetic-tasks: {task!r} is not a task: use names of {list(ALL_TASKS + TRAIN_TASKS)}")
    try:
        cfg = DataConfig(source=args.source, paths=args.paths, cache_dir=args.cache_dir)

        def texts() -> Iterator[str]:
            yield from corpus(cfg, args.max_chars)
            if not args.no_words:
                yield from word_texts()
            if args.synthetic_samples:
                yield from synthetic_texts(args.synthetic_tasks, args.synthetic_samples, args.synthetic_length)

        tok = train_bpe(texts(), args.vocab_size)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(args.out)
    tok.save_pretrained(out)
    info = {"vocab_size": len(tok), **{k: v for k, v in vars(args).items() if k != "out"}}
    (out / "bpe.json").write_text(json.dumps(info, indent=1))
    print(f"{len(tok)} tokens -> {out}")


if __name__ == "__main__":
    main()
