"""Router report: how much dense attention the SSA router captures, and how far back it reaches.

    python -m train.router_report --checkpoint DIR|tiny --input FILE.jsonl|FILE.txt|stdlib --length N --out DIR

One forward of the model over ``--rows`` rows of ``--length`` tokens (the texts of ``--input``, tokenized
with the model's tokenizer, EOS-separated and packed into one stream, cut into consecutive windows). The
:class:`~ssa_kernels.diagnostics.SSARecorder` sees every SSA layer's selection and q/k; per layer it
measures (``docs/eval.md``, "Router report", says what each number means):

- recall / oracle recall (:func:`~ssa_kernels.diagnostics.dense_recall`) on sampled query blocks, their
  ratio, and the sparse attention's far mass (:func:`~ssa_kernels.diagnostics.far_mass`);
- reach: :func:`~ssa_kernels.diagnostics.selection_stats` (distances, far share, attended share), the
  routed blocks' shares beyond the local window and beyond L/4
  (:func:`~ssa_kernels.diagnostics.share_at_least`) and log2 histograms of the selected distances,
  routed blocks and all listed blocks (:func:`~ssa_kernels.diagnostics.distance_histogram`).

Writes ``router_report.json``, ``router_report.md`` and ``router_reach.png`` (skipped without matplotlib)
into ``--out``. From Python: :func:`load_model`, :func:`read_texts`, :func:`pack_rows`,
:func:`router_report`, :func:`write_report`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from data import DataConfig, load_documents, make_tokenize
from data.tokenizer import load_tokenizer
from ssa_kernels import SSAConfig
from ssa_kernels.diagnostics import (
    SSACall,
    SSARecorder,
    dense_recall,
    distance_bin_edges,
    distance_histogram,
    far_mass,
    router_metrics,
    sample_query_blocks,
    selection_stats,
    share_at_least,
)
from ssa_kernels.hf import convert_to_ssa, from_pretrained, ssa_config_of

log = logging.getLogger(__name__)

# The tiny random model of ``--checkpoint tiny``: 1 sink + 2 routed + 2 local blocks of 16 tokens.
TINY_SSA = {"block_size": 16, "topk_blocks": 2, "local_window": 32, "top_nodes": 4}

# Per-layer numbers, in table order: (key, column title, format).
COLUMNS = [
    ("recall", "recall", "{:.3f}"),
    ("oracle_recall", "oracle", "{:.3f}"),
    ("recall_ratio", "recall/oracle", "{:.3f}"),
    ("far_mass", "far mass", "{:.3f}"),
    ("attended_share", "attended", "{:.3f}"),
    ("far_share", "far share", "{:.3f}"),
    ("routed_mean_distance", "routed mean dist", "{:.0f}"),
    ("routed_max_distance", "routed max dist", "{:.0f}"),
    ("routed_far_share", "routed > window", "{:.3f}"),
    ("routed_quarter_share", "routed >= L/4", "{:.3f}"),
]


# --- model and inputs --------------------------------------------------------------------------------


def tiny_ssa_model(length: int, ssa: SSAConfig | None = None, seed: int = 0) -> PreTrainedModel:
    """A random 2-layer Llama (byte vocabulary, 4 query / 2 kv heads) converted to SSA (default
    :data:`TINY_SSA`), for smoke tests."""
    config = AutoConfig.for_model(
        "llama", vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max(length, 512), attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float()
    return convert_to_ssa(model, ssa or SSAConfig(**TINY_SSA))


def _model_dir(checkpoint: str | Path) -> Path:
    """A saved HF model directory, or a trainer checkpoint ``step_*/`` holding one in ``model/``."""
    path = Path(checkpoint).expanduser()
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"--checkpoint {checkpoint}: no config.json there or in its model/ (or use 'tiny')")


def load_model(
    checkpoint: str | Path,
    length: int,
    ssa_overrides: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer) in eval mode. ``checkpoint``: a directory saved with ``save_pretrained`` (loaded
    with ``ssa_kernels.hf.from_pretrained``; a trainer checkpoint's ``model/`` is found too) or ``"tiny"``
    (:func:`tiny_ssa_model`, byte tokenizer). ``ssa_overrides`` replace entries of ``config.ssa`` (e.g.
    ``{"topk_blocks": 8}``: the same weights under another budget). ``tokenizer``: a directory or
    ``"byte"``; default the checkpoint's own (byte for tiny)."""
    overrides = dict(ssa_overrides or {})
    if str(checkpoint) == "tiny":
        model = tiny_ssa_model(length, SSAConfig(**{**TINY_SSA, **overrides}), seed)
        tokenizer = tokenizer or "byte"
    else:
        path = _model_dir(checkpoint)
        model = from_pretrained(path, dtype=dtype)
        if overrides:
            model.config.ssa = {**model.config.ssa, **overrides}
        ssa_config_of(model.config).validate()
        tokenizer = tokenizer or str(path)
    tok = load_tokenizer(tokenizer)
    return model.to(dtype).eval(), tok


def _sample_text(row: dict, text_field: str | None, where: str) -> str:
    """The text of one JSONL row: ``text_field`` if given, else ``prompt``, ``input`` (+ ``answer_prefix``:
    a ``data.sample.Sample``, what the model reads before answering) or ``text``."""
    if text_field is not None:
        return row[text_field]
    if "prompt" in row:
        return row["prompt"]
    if "input" in row:
        return row["input"] + row.get("answer_prefix", "")
    if "text" in row:
        return row["text"]
    raise ValueError(f"{where}: no prompt, input or text field (fields: {sorted(row)}); pass --text-field")


def read_texts(
    inputs: Iterable[str], cache_dir: str = "~/.cache/ssa-train", text_field: str | None = None
) -> Iterator[str]:
    """Texts, lazily, in order: ``"stdlib"`` (the built-in corpus, ``data.sources``: one document per
    standard-library package), ``*.jsonl`` / ``*.json`` (one text a line, see :func:`_sample_text`), or any
    other file (read whole as one text)."""
    for item in inputs:
        if item == "stdlib":
            for row in load_documents(DataConfig(source="stdlib", cache_dir=cache_dir)):
                yield row["text"]
            continue
        path = Path(item).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--input {item}: no such file (or use 'stdlib')")
        if path.suffix in (".jsonl", ".json"):
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield _sample_text(json.loads(line), text_field, f"{path}:{lineno}")
        else:
            yield path.read_text(encoding="utf-8", errors="replace")


def pack_rows(texts: Iterable[str], tokenizer, length: int, rows: int = 1) -> torch.Tensor:
    """``rows`` consecutive windows of ``length`` tokens of the stream text, EOS, text, EOS, ... (one
    document per row, as training packs without ``doc_mask``): input_ids [rows, length] int64."""
    tokenize, eos = make_tokenize(tokenizer), tokenizer.eos_token_id
    need, have, parts = rows * length, 0, []
    for text in texts:
        parts.append(torch.from_numpy(tokenize(text)))
        if eos is not None:
            parts.append(torch.tensor([eos]))
        have += len(parts[-1]) + (len(parts[-2]) if eos is not None else 0)
        if have >= need:
            break
    if have < need:
        raise ValueError(f"--input holds {have} tokens; --length {length} x --rows {rows} needs {need}")
    return torch.cat(parts)[:need].view(rows, length)  # (rows, length)


# --- the report -------------------------------------------------------------------------------------


def _layer_measure(num_query_blocks: int, seed: int):
    """The recorder callback: one layer's scalar stats (0-dim tensors) and distance histograms."""

    def measure(call: SSACall) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cfg, sel, seq_len = call.cfg, call.selection, call.q.shape[2]
        B, nb = cfg.block_size, sel.indices.shape[2]
        blocks = sample_query_blocks(nb, num_query_blocks or nb, seed)
        stats = selection_stats(sel.indices, B, seq_len, call.doc_ids, cfg.local_blocks, sel.routed)
        stats.update(dense_recall(call.q, call.k, sel, cfg, blocks, call.doc_ids, call.scale))
        stats["far_mass"] = far_mass(call.q, call.k, sel.indices, B, blocks, cfg.local_blocks, call.doc_ids, call.scale)
        stats["routed_far_share"] = share_at_least(sel.routed, B, cfg.local_blocks * B)
        stats["routed_quarter_share"] = share_at_least(sel.routed, B, seq_len / 4)
        edges = distance_bin_edges(seq_len, B)
        hist = {"routed": distance_histogram(sel.routed, edges), "all": distance_histogram(sel.indices, edges)}
        return stats, hist

    return measure


def _bins(seq_len: int, block_size: int) -> list[dict[str, Any]]:
    """The histogram's bins in tokens: {lo, hi, label}, distances lo..hi inclusive."""
    edges = distance_bin_edges(seq_len, block_size)
    farthest = (len(range(0, seq_len, block_size)) - 1) * block_size  # last query block -> block 0
    bins = [{"lo": 0, "hi": 0, "label": "0"}]
    for lo_blocks, hi_blocks in zip(edges[:-1], edges[1:]):
        lo, hi = (lo_blocks + 1) * block_size, min(hi_blocks * block_size, farthest)
        bins.append({"lo": lo, "hi": hi, "label": f"{lo}-{hi}"})
    return bins


@torch.no_grad()
def router_report(
    model: PreTrainedModel, input_ids: torch.Tensor, num_query_blocks: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Router recall and reach of an SSA-converted HF causal LM on ``input_ids`` [Bt, T] (one document per
    row): ``{"length", "rows", "ssa", "query_blocks", "per_layer": [...], "mean": {...}, "histogram":
    {"bins", "routed", "all"}}``. ``num_query_blocks`` query blocks, sampled with ``seed`` (0: all), are
    measured against dense attention; selection statistics and histograms cover every query block.
    Histogram counts are (row, kv head, query block, block) entries summed over layers."""
    records: dict[int, tuple[dict, dict]] = {}
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    with SSARecorder(_layer_measure(num_query_blocks, seed)) as rec:
        decoder(input_ids=input_ids, use_cache=False)
        records = rec.records
    if not records:
        raise ValueError("router_report: no SSA attention ran; convert the model with ssa_kernels.hf.convert_to_ssa")
    flat = router_metrics({i: stats for i, (stats, _) in records.items()}, prefix="r")  # one host sync
    names = list(next(iter(records.values()))[0])
    layers = sorted(records)
    per_layer = []
    for i in layers:
        row = {"layer": i, **{n: flat[f"r/layer{i}/{n}"] for n in names}}
        row["recall_ratio"] = row["recall"] / row["oracle_recall"] if row["oracle_recall"] > 0 else 0.0
        hist = {kind: h.tolist() for kind, h in records[i][1].items()}
        row.update(routed_blocks=sum(hist["routed"]), listed_blocks=sum(hist["all"]), histogram=hist)
        per_layer.append(row)
    mean = {n: flat[f"r/{n}"] for n in names}  # over layers; the max for max_* stats
    mean["recall_ratio"] = mean["recall"] / mean["oracle_recall"] if mean["oracle_recall"] > 0 else 0.0
    mean["routed_blocks"] = sum(r["routed_blocks"] for r in per_layer)
    mean["listed_blocks"] = sum(r["listed_blocks"] for r in per_layer)
    cfg = ssa_config_of(model.config)
    rows, seq_len = input_ids.shape
    nb = -(-seq_len // cfg.block_size)
    return {
        "length": seq_len,
        "rows": rows,
        "ssa": asdict(cfg),
        "query_blocks": sample_query_blocks(nb, num_query_blocks or nb, seed),
        "per_layer": per_layer,
        "mean": mean,
        "histogram": {
            "bins": _bins(seq_len, cfg.block_size),
            "routed": [sum(c) for c in zip(*(r["histogram"]["routed"] for r in per_layer))],
            "all": [sum(c) for c in zip(*(r["histogram"]["all"] for r in per_layer))],
        },
    }


# --- writing it -------------------------------------------------------------------------------------


def _shares(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def render_markdown(report: dict[str, Any]) -> str:
    """The per-layer table with a mean row, then the distance histogram."""
    cfg = report["ssa"]
    lines = [
        "# Router report",
        "",
        f"- checkpoint: `{report.get('checkpoint', '?')}`",
        f"- date: {report.get('date', '?')}",
        f"- command: `{report.get('command', '?')}`",
        f"- length: {report['length']} tokens x {report['rows']} row(s); "
        f"recall on {len(report['query_blocks'])} query block(s) of {-(-report['length'] // cfg['block_size'])}",
        f"- SSA: block_size {cfg['block_size']}, topk_blocks {cfg['topk_blocks']}, local_window "
        f"{cfg['local_window']}, sink_blocks {cfg['sink_blocks']}, router {cfg['router']}",
        "",
        "| layer | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for row in [*report["per_layer"], {**report["mean"], "layer": "mean"}]:
        cells = [str(row["layer"])] + [fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    hist = report["histogram"]
    lines += [
        "",
        "Selected distances (query block start - key block start, tokens), entries summed over layers, "
        "rows and kv heads:",
        "",
        "| distance | routed | routed share | all listed | all share |",
        "|---|---|---|---|---|",
    ]
    for b, r, rs, a, as_ in zip(
        hist["bins"], hist["routed"], _shares(hist["routed"]), hist["all"], _shares(hist["all"])
    ):
        lines.append(f"| {b['label']} | {r} | {rs:.3f} | {a} | {as_:.3f} |")
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: Path) -> Path | None:
    """Two panels: the distance histogram (shares of routed and of all listed blocks per bin) and recall /
    oracle recall per layer. None (and a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: %s not written (pip install matplotlib)", path.name)
        return None
    hist, layers = report["histogram"], report["per_layer"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = list(range(len(hist["bins"])))
    width = 0.4
    left.bar([i - width / 2 for i in x], _shares(hist["routed"]), width, label="routed")
    left.bar([i + width / 2 for i in x], _shares(hist["all"]), width, label="all listed")
    left.set_xticks(x, [b["label"] for b in hist["bins"]], rotation=45, ha="right")
    left.set_xlabel("distance back (tokens)")
    left.set_ylabel("share of selected blocks")
    left.set_title(f"reach at L = {report['length']}")
    left.legend()
    ids = [r["layer"] for r in layers]
    right.plot(ids, [r["recall"] for r in layers], "o-", label="recall")
    right.plot(ids, [r["oracle_recall"] for r in layers], "s--", label="oracle recall")
    right.set_xticks(ids)
    right.set_ylim(0, 1.05)
    right.set_xlabel("layer")
    right.set_ylabel("share of dense attention mass")
    right.set_title(f"recall (mean {report['mean']['recall']:.3f}, oracle {report['mean']['oracle_recall']:.3f})")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``router_report.json``, ``router_report.md`` and (with matplotlib) ``router_reach.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / "router_report.json", "md": out / "router_report.md"}
    written["json"].write_text(json.dumps(report, indent=1) + "\n")
    written["md"].write_text(render_markdown(report))
    png = plot_report(report, out / "router_reach.png")
    if png is not None:
        written["png"] = png
    return written


# --- CLI --------------------------------------------------------------------------------------------


def ssa_setting(text: str) -> tuple[str, Any]:
    """argparse type of an ``--ssa KEY=VALUE`` over ``SSAConfig``: the value read as JSON when it parses (16, 0.5, [4, 4], true), else a string."""
    key, sep, value = text.partition("=")
    if not sep or key not in SSAConfig.__dataclass_fields__:
        raise argparse.ArgumentTypeError(f"--ssa {text!r}: use KEY=VALUE with KEY one of {list(asdict(SSAConfig()))}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.router_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="SSA model directory (save_pretrained) or 'tiny'")
    p.add_argument(
        "--input", required=True, nargs="+", help="*.jsonl (prompt/input/text field), text files, or 'stdlib'"
    )
    p.add_argument("--length", required=True, type=int, help="tokens per row")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-query-blocks", type=int, default=16, help="query blocks sampled for recall (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seeds the query-block sample (and the tiny model)")
    p.add_argument("--rows", type=int, default=1, help="windows of --length tokens, one batch")
    p.add_argument("--ssa", type=ssa_setting, action="append", default=[], help="KEY=VALUE over config.ssa")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or 'byte' (default: the checkpoint's)")
    p.add_argument("--text-field", default=None, help="JSONL field to read (default: prompt, input, text)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: bfloat16 on cuda")
    p.add_argument("--cache-dir", default="~/.cache/ssa-train", help="where the stdlib corpus is built")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    try:  # bad inputs end with one line naming the flag, not a traceback
        model, tokenizer = load_model(args.checkpoint, args.length, dict(args.ssa), args.tokenizer, args.seed, dtype)
        texts = read_texts(args.input, args.cache_dir, args.text_field)
        input_ids = pack_rows(texts, tokenizer, args.length, args.rows)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"router_report: {e}") from e
    report = router_report(model.to(args.device), input_ids.to(args.device), args.num_query_blocks, args.seed)
    command = shlex.join(["python", "-m", "train.router_report", *(sys.argv[1:] if argv is None else argv)])
    report = {
        "checkpoint": str(args.checkpoint),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        **report,
    }
    written = write_report(report, args.out)
    m = report["mean"]
    log.info(
        "recall %.3f, oracle %.3f (ratio %.3f), routed mean distance %.0f tokens, routed >= L/4 %.3f: %s",
        m["recall"], m["oracle_recall"], m["recall_ratio"], m["routed_mean_distance"], m["routed_quarter_share"],
        ", ".join(str(p) for p in written.values()),
    )  # fmt: skip
    return written


if __name__ == "__main__":
    main()
