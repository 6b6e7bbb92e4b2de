"""Document sources: local jsonl / parquet / text files, directories of source files, and the
embedded default corpus (the Python standard library, one document per top-level package).

Everything is returned as a streaming ``datasets.IterableDataset`` with one ``text`` column, one
row per document. HF ``datasets`` does the reading; we write by hand only what it lacks: a jsonl
reader that skips corrupt lines and says so (its json builder aborts the whole file), and a reader
that turns a directory of source files into documents.
"""

from __future__ import annotations

import json
import logging
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import datasets

log = logging.getLogger(__name__)

SOURCE_SUFFIXES = (".py", ".c", ".h", ".cc", ".cpp", ".rs", ".go", ".java", ".js", ".ts", ".md", ".rst", ".txt")
FORMATS = ("auto", "jsonl", "parquet", "text", "source")


class DataError(ValueError):
    """Bad data input; the message names the config key or file to fix."""


@dataclass
class SyntheticConfig:
    """Synthetic retrieval rows mixed into the packed documents (``data/mix.py``; ``conf/data/mix.yaml``)."""

    ratio: float = 0.0  # share of training rows that are synthetic samples; 0: documents only
    tasks: list[str] = field(default_factory=lambda: ["niah_single_1", "niah_multikey_2"])  # data/synthetic.py names
    lengths: list[int] = field(default_factory=list)  # token budgets per sample; empty: train.seq_len
    # "answer": only the answer tokens (and the EOS after them) carry labels; "all": every token of the sample
    supervise: str = "answer"
    seed_start: int = 0  # TRAIN-split seeds (data/sample.py: disjoint from every eval seed)
    # niah samples: after the answer, this many more answered lookups of the sample's own needles (data/mix.py)
    extra_queries: int = 0
    extra_order: str = "random"  # random: needles drawn with replacement; prompt: in the prompt's order
    extra_labels: str = "all"  # all: a lookup's whole line is labelled; value: only its value (data/mix.py)


@dataclass
class DataConfig:
    # "stdlib": the embedded default corpus; "files": the paths below.
    source: str = "stdlib"
    paths: list[str] = field(default_factory=list)
    format: str = "auto"  # auto | jsonl | parquet | text | source
    text_field: str = "text"
    suffixes: list[str] = field(default_factory=lambda: list(SOURCE_SUFFIXES))
    # "file": one document per source file; "package": one per top-level entry of the directory.
    doc_unit: str = "file"
    shuffle_buffer: int = 0  # documents; 0 keeps file order
    seed: int = 0
    # Positions restart per document and attention stays within documents.
    doc_mask: bool = False
    cache_dir: str = "~/.cache/ssa-train"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


def load_documents(cfg: DataConfig) -> datasets.IterableDataset:
    """A streaming dataset of documents (column ``text``) for ``cfg``. Raises DataError."""
    if cfg.source == "stdlib":
        return _jsonl_dataset([build_stdlib_corpus(cfg.cache_dir)], "text")
    if cfg.source != "files":
        raise DataError(f"data.source={cfg.source!r}: use 'stdlib' or 'files'")
    if not cfg.paths:
        raise DataError("data.source=files needs data.paths: a list of files or directories")
    if cfg.format not in FORMATS:
        raise DataError(f"data.format={cfg.format!r}: use one of {FORMATS}")
    for p in cfg.paths:
        if not Path(p).expanduser().exists():
            raise DataError(f"data.paths: {p!r} does not exist")
    fmt, files = _resolve_files(cfg)
    if fmt == "jsonl":
        return _jsonl_dataset(files, cfg.text_field)
    if fmt == "parquet":
        ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
        if ds.column_names is not None and cfg.text_field not in ds.column_names:
            raise DataError(f"data.text_field={cfg.text_field!r} is not a column of {files[0]}: {ds.column_names}")
        ds = ds.select_columns([cfg.text_field])
        return ds if cfg.text_field == "text" else ds.rename_column(cfg.text_field, "text")
    if fmt == "text":
        return datasets.load_dataset("text", data_files=files, split="train", streaming=True, sample_by="document")
    return _source_dataset(files, cfg.doc_unit, [Path(p).expanduser() for p in cfg.paths])


def _resolve_files(cfg: DataConfig) -> tuple[str, list[str]]:
    by_suffix = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text"}
    files: list[str] = []
    for p in (Path(p).expanduser() for p in cfg.paths):
        files += sorted(str(f) for f in p.rglob("*") if f.is_file()) if p.is_dir() else [str(p)]
    fmt = cfg.format
    if fmt == "auto":
        kinds = {by_suffix.get(Path(f).suffix) for f in files}
        # A directory of code (or a mix) is read as source files, one document per file.
        fmt = kinds.pop() if len(kinds) == 1 and None not in kinds else "source"
    if fmt == "source":
        suffixes = tuple(cfg.suffixes)
        files = [f for f in files if f.endswith(suffixes)]
    elif fmt in ("jsonl", "parquet"):
        want = {"jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}[fmt]
        files = [f for f in files if f.endswith(want)]
    if not files:
        raise DataError(f"data.paths={list(cfg.paths)} holds no {fmt} files (data.format={cfg.format})")
    return fmt, files


def _read_jsonl(paths: list[str], text_field: str):
    for path in paths:
        skipped = 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[text_field]
                    if not isinstance(text, str):
                        raise TypeError(f"field {text_field!r} is {type(text).__name__}, not a string")
                except (ValueError, KeyError, TypeError) as e:
                    skipped += 1
                    what = f"no field {e}" if isinstance(e, KeyError) else str(e)[:120]
                    log.warning(
                        "%s:%d: skipped corrupt jsonl line (%s; data.text_field=%r)", path, lineno, what, text_field
                    )
                    continue
                yield {"text": text}
        if skipped:
            log.warning("%s: skipped %d corrupt jsonl line(s) in total", path, skipped)


def _jsonl_dataset(paths: list[str], text_field: str) -> datasets.IterableDataset:
    # A list in gen_kwargs makes one shard per file, so ranks can split by file when counts allow.
    return datasets.IterableDataset.from_generator(_read_jsonl, gen_kwargs={"paths": paths, "text_field": text_field})


def group_documents(files: list[str], roots: list[str], doc_unit: str) -> list[list[tuple[str, str]]]:
    """Files grouped into documents, as (path, name relative to its root) pairs: one document per
    file, or one per top-level entry of a root."""
    if doc_unit not in ("file", "package"):
        raise DataError(f"data.doc_unit={doc_unit!r}: use 'file' or 'package'")
    groups: dict[str, list[tuple[str, str]]] = {}
    for path in files:
        rels = [(r, os.path.relpath(path, r)) for r in roots]
        root, rel = next(((r, rel) for r, rel in rels if not rel.startswith("..")), ("", os.path.basename(path)))
        # keyed by root too: two repositories' `src/` (or README.md) are two documents, not one
        if rel == os.curdir:  # a file given directly is its own root
            rel = os.path.basename(path)
        key = path if doc_unit == "file" else os.path.join(root, rel.split(os.sep)[0])
        groups.setdefault(key, []).append((path, rel))
    return list(groups.values())


def _read_sources(groups: list[list[tuple[str, str]]], headers: bool):
    for group in groups:
        parts = []
        for path, rel in group:
            if headers:  # a package document names each file it joins
                parts.append(f"# file: {rel}\n")
            parts.append(Path(path).read_text(encoding="utf-8", errors="replace"))
        yield {"text": "\n".join(parts) if headers else parts[0]}


def _source_dataset(files: list[str], doc_unit: str, roots: list[Path]) -> datasets.IterableDataset:
    groups = group_documents(files, [str(r) for r in roots], doc_unit)
    return datasets.IterableDataset.from_generator(
        _read_sources, gen_kwargs={"groups": groups, "headers": doc_unit == "package"}
    )


def build_stdlib_corpus(cache_dir: str) -> str:
    """The embedded default corpus: this interpreter's standard library sources, one document per
    top-level package or module (repository-scale code), written once into ``cache_dir``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    version = sysconfig.get_python_version()
    out = Path(cache_dir).expanduser() / f"stdlib-py{version}.jsonl"
    if out.exists():
        return str(out)
    files = sorted(
        str(f) for f in stdlib.rglob("*.py") if "site-packages" not in f.parts and "dist-packages" not in f.parts
    )
    if not files:
        raise DataError(f"no Python sources under {stdlib}: set data.source=files and data.paths")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            groups = group_documents(files, [str(stdlib)], "package")
            for doc in _read_sources(groups, headers=True):
                f.write(json.dumps(doc) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)  # atomic: concurrent ranks building the cache never see a partial file
    log.info("built the stdlib corpus at %s", out)
    return str(out)
