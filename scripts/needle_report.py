"""Right against wrong answers, read beside needle routing: a table per (task, length) from the ``samples.jsonl``
(or ``results.json``) that ``python -m train.eval needle_routing=true`` writes.

    python scripts/needle_report.py runs/fc/ssa/eval/samples.jsonl [more files: one table each] [--json out.json]

For the right and the wrong answers apart: how many, the share of answer tokens whose selection listed the
needle per layer (``needle_routed``), and where the first answer token's search dropped the needle's first block
(``needle_lost``: routed, not routable, or the pyramid level; over layers x kv heads). A wrong answer whose needle
was routed is a reading miss; one dropped at level 0 a router (top-k) miss; at a coarser level a beam miss.
How far it was dropped (``needle_ranks_first`` / ``needle_widths_first``): per pyramid level, over the (sample,
layer, kv head) triples whose search reached it, the median rank of the needle's ancestor among the level's
candidates against the width kept there, and the share kept.
For the wrong answers also what they read (the rows' ``miss``, ``data.scoring.read_miss``): how many read a word
found elsewhere in the prompt (another needle's value: the key match failed) and the mean share of the gold
value's characters in place (a mis-copied value). Rows of evaluations older than ``miss`` get it with
``--regenerate byte`` (or a tokenizer directory): each wrong row's prompt is built again by
``data.synthetic.generate`` (deterministic in task, length, seed and depth under the evaluated tokenizer); a row
whose rebuilt answers differ from its own (essay haystacks under another Python's docstrings) is left without.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

OUTCOMES = {-1: "routed", -2: "not routable"}


def read_rows(path: Path) -> list[dict]:
    """Rows of a samples.jsonl (one JSON object a line; a killed run's partial last line is skipped) or of a
    results.json's ``results``."""
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)["results"]
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # only a torn last line can be incomplete (each row is flushed whole)
            continue
    return rows


def add_misses(rows: list[dict], tokenizer: str) -> int:
    """Give each wrong row without ``miss`` the one ``train.eval`` now writes, from its rebuilt prompt; returns how
    many rows could not be rebuilt to the same answers."""
    from data.synthetic import generate
    from data.tokenizer import load_tokenizer

    tok, unmatched = load_tokenizer(tokenizer), 0
    for r in rows:
        if r["score"] >= 100 or "miss" in r:
            continue
        sample = generate(r["task"], r["length"], tok, r["seed"], r["depth"], "eval")
        if list(sample.answers) != r["answers"]:
            unmatched += 1
            continue
        miss = sample.read_miss(r["pred"])
        if miss:
            r["miss"] = miss
    return unmatched


def outcome_name(value: int) -> str:
    return OUTCOMES.get(value, f"level {value}")


def first_token_searches(rows: list[dict]) -> list[list[int]]:
    """The rows' first-token searches, one per (row, layer, kv head): its needle ranks per level."""
    return [head for r in rows if r.get("needle_ranks_first") for layer in r["needle_ranks_first"] for head in layer]


def level_ranks(rows: list[dict]) -> list[dict]:
    """Per pyramid level (0 = blocks), over the rows' first-token ranks [layer][kv head][level] where the level was
    reached (rank >= 0; -1: dropped at a coarser level): how many, the median rank and the share within the width."""
    rows = [r for r in rows if r.get("needle_ranks_first") and r.get("needle_widths_first")]
    if not rows:
        return []
    widths = rows[0]["needle_widths_first"]
    heads = first_token_searches([r for r in rows if len(r["needle_widths_first"]) == len(widths)])  # one height
    out = []
    for level, width in enumerate(widths):
        ranks = sorted(head[level] for head in heads if head[level] >= 0)
        if ranks:
            kept = sum(x < width for x in ranks) / len(ranks)
            out.append({"level": level, "width": width, "reached": len(ranks),
                        "median": ranks[len(ranks) // 2], "kept": round(kept, 3)})  # fmt: skip
    return out


def within_budgets(rows: list[dict], budgets: list[int]) -> dict[int, float]:
    """Per routed budget K: the share of the rows' first-token (layer, kv head) searches whose needle block ranks
    among the K best blocks (a search that dropped it at a coarser level counts as missing it). What another
    ``topk_blocks`` would route with the same level-1 beam, exactly in layer 0; from layer 1 on the hidden states
    would differ, so it is a forecast there."""
    heads = first_token_searches(rows)
    if not heads or not budgets:
        return {}
    return {k: round(sum(0 <= head[0] < k for head in heads) / len(heads), 3) for k in budgets}


def summarize(rows: list[dict], budgets: list[int] | None = None) -> list[dict]:
    """One entry per (task, length), right and wrong answers apart; ``budgets``: also :func:`within_budgets`."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["length"])].append(r)
    out = []
    for (task, length), rs in sorted(groups.items()):
        entry = {"task": task, "length": length, "samples": len(rs)}
        for name, part in (
            ("right", [r for r in rs if r["score"] == 100]),
            ("wrong", [r for r in rs if r["score"] < 100]),
        ):
            routed = [r["needle_routed"] for r in part if r.get("needle_routed")]
            layers = [round(sum(col) / len(routed), 3) for col in zip(*routed)] if routed else []
            lost = Counter(h for r in part if r.get("needle_lost") for layer in r["needle_lost"][0] for h in layer)
            total = sum(lost.values())
            entry[name] = {
                "n": len(part),
                "routed_per_layer": layers,
                "first_token": {outcome_name(k): round(v / total, 3) for k, v in sorted(lost.items())} if total else {},
                "ranks": level_ranks(part),
            }
            if budgets:
                entry[name]["within"] = within_budgets(part, budgets)
        misses = [r["miss"] for r in rs if r["score"] < 100 and r.get("miss")]
        entry["wrong"]["read"] = {
            "with_miss": len(misses),  # rows of older evaluations carry no miss
            "in_prompt": sum(m["in_prompt"] for m in misses),
            "chars_right": round(sum(m["chars_right"] for m in misses) / len(misses), 3) if misses else None,
        }
        out.append(entry)
    return out


def render(entries: list[dict]) -> str:
    lines = []
    for e in entries:
        lines.append(f"{e['task']} @ {e['length']}: {e['samples']} samples")
        for name in ("right", "wrong"):
            part = e[name]
            routed = " ".join(f"{x:.2f}" for x in part["routed_per_layer"]) or "-"
            lost = ", ".join(f"{k} {v:.2f}" for k, v in part["first_token"].items()) or "-"
            lines.append(f"  {name:5} {part['n']:3}  routed per layer: {routed}  |  first token: {lost}")
            if part["ranks"]:
                ranks = ", ".join(f"level {x['level']} {x['median']} / {x['width']} (kept {x['kept']:.2f} of {x['reached']})"
                                  for x in part["ranks"])  # fmt: skip
                lines.append(f"          median rank / width: {ranks}")
            if part.get("within"):
                within = ", ".join(f"{k} {v:.2f}" for k, v in part["within"].items())
                lines.append(f"          block ranked within K (share of searches): {within}")
        read = e["wrong"]["read"]
        if read["with_miss"]:
            lines.append(f"  wrong answers read: another word of the prompt {read['in_prompt']} of {read['with_miss']}, "
                         f"gold characters in place {read['chars_right']:.2f}")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="samples.jsonl or results.json of train.eval")
    p.add_argument("--json", type=Path, default=None, help="also write {file: entries} here")
    p.add_argument("--regenerate", metavar="TOKENIZER", default=None,
                   help="wrong rows without miss: rebuild their prompts under this tokenizer (byte or a dir)")  # fmt: skip
    p.add_argument("--budgets", type=int, nargs="+", default=[], metavar="K",
                   help="also the share of searches ranking the needle block among the K best")  # fmt: skip
    args = p.parse_args(argv)
    report = {}
    for path in args.files:
        if not path.is_file():
            raise SystemExit(f"{path}: no such file (give a train.eval samples.jsonl or results.json)")
        rows = read_rows(path)
        if args.regenerate and (unmatched := add_misses(rows, args.regenerate)):
            sys.stdout.write(f"{path}: {unmatched} wrong rows rebuilt to other answers, left without miss\n")
        entries = summarize(rows, args.budgets)
        report[str(path)] = entries
        sys.stdout.write(f"== {path}\n" + render(entries))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return [e for entries in report.values() for e in entries]


if __name__ == "__main__":
    main()
