"""All synthetic long-context tasks behind one name -> generator registry: RULER's 13
(``data.ruler``) and mrcr_synth with 2 / 4 / 8 identical requests (``data.mrcr``). Beside them, training-only
tasks (``TRAIN_TASKS``, not in ``ALL_TASKS`` nor in evaluation's ``all``): ``copy`` (``data.copy``), a
random text repeated, which teaches the copying that retrieval builds on.

Evaluation draws ``split="eval"``; SFT and RL data come from the same generators with
``split="train"`` (``training_examples``), whose seeds never meet evaluation's.

Export JSONL from the command line::

    python -m data.synthetic --task niah_single_1 --length 4096 --num 20 --out niah.jsonl
    python -m data.synthetic --task ruler --length 131072 --tokenizer /path/to/hf_model --out ruler128k/

``--tokenizer`` takes a local HF tokenizer directory (default: the built-in byte tokenizer);
``--task ruler`` / ``all`` write one file per task into the ``--out`` directory.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from data import copy, mrcr, ruler
from data.sample import Sample, write_jsonl
from data.tokenizer import load_tokenizer

RULER_TASKS = tuple(ruler.TASKS)
MRCR_TASKS = tuple(f"mrcr_{k}" for k in mrcr.NEEDLE_COUNTS)
ALL_TASKS = RULER_TASKS + MRCR_TASKS
TRAIN_TASKS = (copy.TASK,)  # for data.synthetic.tasks; generate() makes them too


def generate(
    task: str, length: int, tokenizer, seed: int = 0, depth: float | None = None, split: str = "eval", **kw
) -> Sample:
    """One sample of any task in ``ALL_TASKS`` or ``TRAIN_TASKS`` (keyword options go to the task's generator)."""
    if task in ruler.TASKS:
        return ruler.generate(task, length, tokenizer, seed, depth, split, **kw)
    if task in MRCR_TASKS:
        return mrcr.generate(length, tokenizer, seed, depth, split, needles=int(task.split("_")[1]), **kw)
    if task == copy.TASK:
        return copy.generate(length, tokenizer, seed, depth, split, **kw)
    raise ValueError(f"task={task!r}: use one of {ALL_TASKS + TRAIN_TASKS}")


def training_examples(
    tasks: Iterable[str],
    lengths: Iterable[int],
    tokenizer,
    num_per: int,
    seed_start: int = 0,
    depths: Iterable[float | None] = (None,),
    **kw,
) -> Iterator[dict]:
    """SFT / RL examples from the evaluation generators with train seeds: ``num_per`` samples for
    each (task, length, depth), interleaved (seed-major) so that any prefix mixes every task and
    length. Each: {"prompt", "target", "answers", "metric", "task", "length", "seed", "sample"}
    where ``target`` follows ``prompt`` directly and ``sample.score(completion)`` is the reward."""
    tasks, lengths, depths = list(tasks), list(lengths), list(depths)
    for i in range(num_per):
        for task, length, depth in itertools.product(tasks, lengths, depths):
            s = generate(task, length, tokenizer, seed_start + i, depth, "train", **kw)
            yield {
                "prompt": s.prompt,
                "target": s.target,
                "answers": s.answers,
                "metric": s.metric,
                "task": task,
                "length": length,
                "seed": s.seed,
                "sample": s,
            }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help=f"one of {ALL_TASKS}, or 'ruler' (the 13) or 'all'")
    p.add_argument("--length", type=int, required=True, help="token budget: prompt + answer tokens")
    p.add_argument("--num", type=int, default=20, help="samples per task (seeds seed-start ...)")
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--split", default="eval", choices=("eval", "train"))
    p.add_argument("--depth", type=float, default=None, help="needle depth in [0, 1]; default: RULER's draws")
    p.add_argument("--tokenizer", default="byte", help="'byte' or a local HF tokenizer / model directory")
    p.add_argument("--prose", nargs="*", default=None, help="plain-text files for the essay haystacks")
    p.add_argument("--out", required=True, help="a .jsonl file, or a directory for --task ruler/all")
    args = p.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer)
    tasks = {"ruler": RULER_TASKS, "all": ALL_TASKS}.get(args.task, (args.task,))
    kw = {"prose_files": args.prose} if args.prose else {}
    for task in tasks:
        out = Path(args.out) / f"{task}.jsonl" if len(tasks) > 1 or not args.out.endswith(".jsonl") else args.out
        depth = None if task in ("cwe", "fwe") else args.depth
        seeds = range(args.seed_start, args.seed_start + args.num)
        n = write_jsonl((generate(task, args.length, tokenizer, s, depth, args.split, **kw) for s in seeds), out)
        print(f"{task}: {n} samples -> {out}")


if __name__ == "__main__":
    main()
