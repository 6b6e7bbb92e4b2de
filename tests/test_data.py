"""Tests for ``data/``: document sources, the byte tokenizer, and deterministic resumable packing.

Everything runs on local files built in ``tmp_path`` (or this interpreter's standard library), on
CPU, in a few seconds. Expected values are computed independently of the code under test: token
streams from ``str.encode("utf-8")``, document starts from the EOS separators, and so on.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sysconfig
import time
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

import data.sources
import data.tokenizer
from data import (
    IGNORE_INDEX,
    DataConfig,
    DataError,
    PackedLoader,
    build_stdlib_corpus,
    byte_tokenizer,
    load_documents,
    make_tokenize,
    stream_ids,
    window_to_example,
)
from data.packing import PackedStream

TOKENIZER = byte_tokenizer()
TOKENIZE = make_tokenize(TOKENIZER)
EOS = TOKENIZER.eos_token_id
SEQ_LEN = 16


# --------------------------------------------------------------------------------------------
# helpers


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_texts(n: int, seed: int = 0, max_chars: int = 40) -> list[str]:
    """``n`` distinct documents (prefix ``<i>``) of 3..max_chars+4 characters, some multi-byte."""
    rng = random.Random(seed)
    alphabet = "abcdefgh \n\té😀"
    return [f"<{i}>" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_chars))) for i in range(n)]


def jsonl_corpus(tmp_path: Path, texts: list[str], n_files: int = 1):
    """``texts`` written in order, in contiguous runs, to ``n_files`` jsonl files; then loaded."""
    root = tmp_path / "corpus"
    root.mkdir(exist_ok=True)
    per = -(-len(texts) // n_files)
    for f in range(n_files):
        write_jsonl(root / f"part{f:02d}.jsonl", [{"text": t} for t in texts[f * per : (f + 1) * per]])
    return load_documents(DataConfig(source="files", paths=[str(root)]))


def texts_of(ds) -> list[str]:
    return [row["text"] for row in ds]


def token_stream(texts: list[str]) -> list[int]:
    """What a stream packs: each document's UTF-8 bytes followed by EOS."""
    return [t for text in texts for t in [*text.encode("utf-8"), EOS]]


def doc_offsets(stream: list[int]) -> list[int]:
    """Offset of every token of ``stream`` inside its document (0 = first token of a document)."""
    out, off = [], 0
    for tok in stream:
        out.append(off)
        off = 0 if tok == EOS else off + 1
    return out


def split_documents(tokens: list[int]) -> list[str]:
    """The complete documents of a packed token stream (a trailing partial document is dropped)."""
    docs, cur = [], []
    for tok in tokens:
        if tok == EOS:
            docs.append(bytes(cur).decode("utf-8"))
            cur = []
        else:
            cur.append(tok)
    return docs


def make_loader(docs, *, rank=0, dp=1, grad_accum=1, micro_batch=1, seq_len=SEQ_LEN, **kw) -> PackedLoader:
    return PackedLoader(docs, TOKENIZE, EOS, seq_len, rank, dp, grad_accum, micro_batch, **kw)


def take(loader: PackedLoader, n: int) -> list[dict[str, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


def assert_batches_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys()
        for k in w:
            assert torch.equal(g[k], w[k]), f"batch {i}, {k}"


def wait_prefetched(loader: PackedLoader, timeout: float = 10.0) -> None:
    """Let the background thread fill its queue, so a leaky ``state_dict`` would show it."""
    deadline = time.monotonic() + timeout
    while loader._queue is not None and not loader._queue.full() and time.monotonic() < deadline:
        time.sleep(0.005)


# --------------------------------------------------------------------------------------------
# sources


def test_jsonl_source_reads_text_field_in_order(tmp_path):
    rows = [{"body": f"doc {i} é😀\n", "text": "not this", "id": i} for i in range(5)]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    ds = load_documents(DataConfig(source="files", paths=[str(path)], text_field="body"))
    assert texts_of(ds) == [r["body"] for r in rows]
    default = load_documents(DataConfig(source="files", paths=[str(path)]))
    assert texts_of(default) == ["not this"] * 5


def test_parquet_source_renames_text_field(tmp_path):
    pq.write_table(pa.table({"id": [1, 2], "content": ["first", "second é"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [3], "content": ["third"]}), tmp_path / "b.parquet")
    ds = load_documents(DataConfig(source="files", paths=[str(tmp_path)], text_field="content"))
    assert ds.column_names == ["text"]
    assert texts_of(ds) == ["first", "second é", "third"]


def test_parquet_missing_text_field_names_the_key(tmp_path):
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "a.parquet")
    with pytest.raises(DataError) as e:
        load_documents(DataConfig(source="files", paths=[str(tmp_path)], text_field="body"))
    assert "data.text_field" in str(e.value) and "'body'" in str(e.value) and "content" in str(e.value)


def test_text_source_one_document_per_file(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first line\n\nthird line é😀\n", encoding="utf-8")
    ds = load_documents(DataConfig(source="files", paths=[str(tmp_path)]))
    assert texts_of(ds) == ["first line\n\nthird line é😀\n", "second file\n"]


@pytest.fixture
def source_tree(tmp_path) -> Path:
    """A small repository: a package with a subpackage, a top-level module, a readme, a binary."""
    root = tmp_path / "repo"
    files = {
        "pkg/__init__.py": "X = 1\n",
        "pkg/sub/mod.py": "def f():\n    return 'é'\n",
        "top.py": "import pkg\n",
        "README.md": "# Readme\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02")
    return root


def test_source_dir_one_document_per_file(source_tree):
    ds = load_documents(DataConfig(source="files", paths=[str(source_tree)], doc_unit="file"))
    want = ["README.md", "pkg/__init__.py", "pkg/sub/mod.py", "top.py"]  # sorted; blob.bin has no source suffix
    assert texts_of(ds) == [(source_tree / rel).read_text(encoding="utf-8") for rel in want]


def test_source_dir_suffixes_respected(source_tree):
    ds = load_documents(DataConfig(source="files", paths=[str(source_tree)], suffixes=[".md"]))
    assert texts_of(ds) == ["# Readme\n"]


def test_source_dir_one_document_per_package(source_tree):
    docs = texts_of(load_documents(DataConfig(source="files", paths=[str(source_tree)], doc_unit="package")))
    assert len(docs) == 3  # README.md, pkg/, top.py
    readme, pkg, top = docs
    assert readme.startswith("# file: README.md\n") and "# Readme\n" in readme
    assert top.startswith("# file: top.py\n") and "import pkg\n" in top
    # the package joins its files in path order, each named by a header
    i_init, i_mod = pkg.index("# file: pkg/__init__.py\n"), pkg.index("# file: pkg/sub/mod.py\n")
    assert i_init == 0 < pkg.index("X = 1\n") < i_mod < pkg.index("def f():\n    return 'é'\n")
    assert "import pkg" not in pkg and "Readme" not in pkg


def test_source_package_units_stay_within_their_root(tmp_path):
    """Two repositories that both have ``src/`` give two documents, not one merged across roots."""
    for repo in ("repo_a", "repo_b"):
        (tmp_path / repo / "src").mkdir(parents=True)
        (tmp_path / repo / "src" / f"{repo}.py").write_text(f"NAME = {repo!r}\n", encoding="utf-8")
    paths = [str(tmp_path / "repo_a"), str(tmp_path / "repo_b")]
    docs = texts_of(load_documents(DataConfig(source="files", paths=paths, doc_unit="package")))
    assert len(docs) == 2
    assert "repo_a" in docs[0] and "repo_b" not in docs[0]
    assert "repo_b" in docs[1] and "repo_a" not in docs[1]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "text", "mixed"])
def test_format_auto_detection(tmp_path, kind):
    texts = ["alpha é", "beta\nline", "gamma 😀"]
    root = tmp_path / kind
    root.mkdir()
    if kind == "jsonl":
        write_jsonl(root / "a.jsonl", [{"text": t} for t in texts])
    elif kind == "parquet":
        pq.write_table(pa.table({"text": texts}), root / "a.parquet")
    else:
        suffixes = [".txt"] * 3 if kind == "text" else [".py", ".txt", ".md"]
        for i, (t, s) in enumerate(zip(texts, suffixes)):
            (root / f"{i}{s}").write_text(t, encoding="utf-8")
    if kind == "mixed":
        (root / "skip.jsonl").write_text('{"text": "read as jsonl by mistake"}\n', encoding="utf-8")
    assert texts_of(load_documents(DataConfig(source="files", paths=[str(root)]))) == texts


def test_explicit_format_filters_a_mixed_directory(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "from jsonl"}])
    (tmp_path / "README.md").write_text("readme", encoding="utf-8")
    ds = load_documents(DataConfig(source="files", paths=[str(tmp_path)], format="jsonl"))
    assert texts_of(ds) == ["from jsonl"]


# --------------------------------------------------------------------------------------------
# the embedded stdlib corpus


@pytest.fixture(scope="session")
def stdlib_corpus(tmp_path_factory):
    """Built once per session (31 MB, ~3 s); records the rename that publishes it."""
    cache = tmp_path_factory.mktemp("stdlib-cache")
    renames = []

    def recording_replace(src, dst):
        src, dst = Path(src), Path(dst)
        with open(src, encoding="utf-8") as f:
            src_lines = sum(1 for _ in f)
        renames.append({"src": src, "dst": dst, "dst_existed": dst.exists(), "src_lines": src_lines})
        os.replace(src, dst)

    os_proxy = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    os_proxy.replace = recording_replace
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data.sources, "os", os_proxy)
        path = build_stdlib_corpus(str(cache))
    with open(path, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    return types.SimpleNamespace(path=Path(path), cache=cache, renames=renames, docs=docs)


def _stdlib_top_level_entries() -> set[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    tops = set()
    for dirpath, _, filenames in os.walk(stdlib):
        rel = Path(dirpath).relative_to(stdlib)
        if "site-packages" in rel.parts or "dist-packages" in rel.parts:
            continue
        for name in filenames:
            if name.endswith(".py"):
                tops.add((rel / name).parts[0])
    return tops


def test_stdlib_corpus_one_document_per_top_level_entry(stdlib_corpus):
    tops = _stdlib_top_level_entries()
    docs = stdlib_corpus.docs
    assert len(docs) == len(tops) > 50
    doc_tops = []
    for doc in docs:
        headers = [line[len("# file: ") :] for line in doc.splitlines() if line.startswith("# file: ")]
        assert doc.startswith("# file: "), doc[:80]
        doc_tops.append(headers[0].split(os.sep)[0])
        # every file header of a document lies in that document's top-level entry
        assert {h.split(os.sep)[0] for h in headers} == {doc_tops[-1]}
    assert Counter(doc_tops) == Counter(tops)  # each top-level entry exactly once
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    os_doc = docs[doc_tops.index("os.py")]
    assert os_doc.startswith("# file: os.py\n") and (stdlib / "os.py").read_text(encoding="utf-8") in os_doc
    json_doc = docs[doc_tops.index("json")]
    for f in sorted((stdlib / "json").glob("*.py")):
        assert f"# file: json{os.sep}{f.name}\n" in json_doc
        assert f.read_text(encoding="utf-8") in json_doc


def test_stdlib_corpus_written_atomically(stdlib_corpus):
    c = stdlib_corpus
    assert c.path == c.cache / f"stdlib-py{sysconfig.get_python_version()}.jsonl"
    assert len(c.renames) == 1
    (r,) = c.renames
    assert r["dst"] == c.path and not r["dst_existed"], "the corpus was visible before it was complete"
    assert r["src"].parent == c.path.parent and r["src"] != c.path  # same directory: rename is atomic
    assert r["src_lines"] == len(c.docs)  # complete when published
    assert sorted(p.name for p in c.cache.iterdir()) == [c.path.name]  # no temporary left behind


def test_stdlib_corpus_reused_from_cache(stdlib_corpus, monkeypatch):
    mtime = stdlib_corpus.path.stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt the stdlib corpus although it is cached")

    monkeypatch.setattr(data.sources, "group_documents", no_rebuild)
    assert build_stdlib_corpus(str(stdlib_corpus.cache)) == str(stdlib_corpus.path)
    ds = load_documents(DataConfig(source="stdlib", cache_dir=str(stdlib_corpus.cache)))
    first = [row["text"] for _, row in zip(range(3), ds)]
    assert first == stdlib_corpus.docs[:3]
    assert stdlib_corpus.path.stat().st_mtime_ns == mtime


@pytest.fixture
def fake_stdlib(tmp_path, monkeypatch) -> Path:
    """A three-entry standard library, so build failures can be tested without the 31 MB one."""
    root = tmp_path / "stdlib"
    for rel in ("abc.py", "email/__init__.py", "email/parser.py", "site-packages/thirdparty/x.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n", encoding="utf-8")
    fake = types.SimpleNamespace(get_paths=lambda: {"stdlib": str(root)}, get_python_version=lambda: "0.0")
    monkeypatch.setattr(data.sources, "sysconfig", fake)
    return root


def test_stdlib_build_failure_publishes_nothing(tmp_path, fake_stdlib, monkeypatch):
    cache = tmp_path / "cache"
    real_read = data.sources._read_sources

    def failing_read(groups, headers):
        yield next(real_read(groups, headers))
        raise OSError("disk full")

    monkeypatch.setattr(data.sources, "_read_sources", failing_read)
    with pytest.raises(OSError, match="disk full"):
        build_stdlib_corpus(str(cache))
    assert not (cache / "stdlib-py0.0.jsonl").exists()
    monkeypatch.setattr(data.sources, "_read_sources", real_read)
    path = build_stdlib_corpus(str(cache))
    docs = [json.loads(line)["text"] for line in Path(path).read_text(encoding="utf-8").splitlines()]
    assert len(docs) == 2  # abc.py, email/; site-packages is not the standard library
    assert docs[0].startswith("# file: abc.py\n")
    assert "email/__init__.py" in docs[1] and "email/parser.py" in docs[1] and "thirdparty" not in "".join(docs)


def test_stdlib_without_sources_names_the_keys(tmp_path, fake_stdlib):
    for f in fake_stdlib.rglob("*.py"):
        f.unlink()
    with pytest.raises(DataError) as e:
        build_stdlib_corpus(str(tmp_path / "cache"))
    assert "data.source=files" in str(e.value) and "data.paths" in str(e.value)


# --------------------------------------------------------------------------------------------
# bad input


def test_missing_path_names_key_and_path(tmp_path):
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(DataError) as e:
        load_documents(DataConfig(source="files", paths=[str(missing)]))
    assert "data.paths" in str(e.value) and str(missing) in str(e.value)


def test_files_source_without_paths():
    with pytest.raises(DataError) as e:
        load_documents(DataConfig(source="files", paths=[]))
    assert "data.paths" in str(e.value) and "data.source=files" in str(e.value)


@pytest.mark.parametrize(
    "field, value",
    [("source", "hub"), ("format", "csv"), ("doc_unit", "repo")],
)
def test_bad_choice_names_the_key(tmp_path, field, value):
    (tmp_path / "a.py").write_text("x = 1\n", encoding="utf-8")
    cfg = DataConfig(source="files", paths=[str(tmp_path)])
    setattr(cfg, field, value)
    with pytest.raises(DataError) as e:
        load_documents(cfg)
    assert f"data.{field}={value!r}" in str(e.value)


@pytest.mark.parametrize("fmt", ["auto", "jsonl", "parquet"])
def test_directory_without_matching_files(tmp_path, fmt):
    root = tmp_path / "empty_of_sources"
    root.mkdir()
    (root / "blob.bin").write_bytes(b"\x00")
    if fmt != "auto":  # text files are not what an explicit format asks for
        (root / "notes.txt").write_text("a note", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_documents(DataConfig(source="files", paths=[str(root)], format=fmt))
    assert "data.paths" in str(e.value) and str(root) in str(e.value) and f"data.format={fmt}" in str(e.value)


def test_corrupt_jsonl_lines_are_skipped_and_logged(tmp_path, caplog):
    a = tmp_path / "a.jsonl"
    a.write_text(
        "\n".join(
            [
                '{"text": "good 0"}',  # 1
                "{not json",  # 2
                "",  # 3: blank, not corrupt
                '{"other": "x"}',  # 4: no text field
                '{"text": 5}',  # 5: not a string
                '["text"]',  # 6: not an object
                '{"text": "good 1"}',  # 7
                '"just a string"',  # 8
                '{"text": "good 2"}',  # 9
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "good 3"}])
    with open(b, "a", encoding="utf-8") as f:
        f.write('{"text": "truncated\n')
    c = write_jsonl(tmp_path / "c.jsonl", [{"text": "good 4"}])
    caplog.set_level(logging.WARNING, logger="data.sources")
    ds = load_documents(DataConfig(source="files", paths=[str(tmp_path)]))
    assert texts_of(ds) == [f"good {i}" for i in range(5)]
    msgs = [r.getMessage() for r in caplog.records if r.name == "data.sources" and r.levelno == logging.WARNING]
    assert len(msgs) == 5 + 1 + 1 + 1  # per line, plus one total per file with skips
    for lineno in (2, 4, 5, 6, 8):
        assert sum(m.startswith(f"{a}:{lineno}: ") for m in msgs) == 1, lineno
    assert sum(m.startswith(f"{b}:2: ") for m in msgs) == 1
    assert any(m == f"{a}: skipped 5 corrupt jsonl line(s) in total" for m in msgs)
    assert any(m == f"{b}: skipped 1 corrupt jsonl line(s) in total" for m in msgs)
    assert not any(str(c) in m for m in msgs)
    assert all("data.text_field='text'" in m for m in msgs if ": skipped corrupt" in m)


@pytest.mark.parametrize("prefetch", [2, 0])
@pytest.mark.parametrize("content", ["", '{"no_text": 1}\n{broken\n'], ids=["empty", "all-corrupt"])
def test_zero_documents_raise_from_the_packer(tmp_path, prefetch, content):
    (tmp_path / "a.jsonl").write_text(content, encoding="utf-8")
    loader = make_loader(load_documents(DataConfig(source="files", paths=[str(tmp_path)])), prefetch=prefetch)
    with pytest.raises(DataError) as e:
        next(loader)
    assert "data.paths" in str(e.value) and "empty" in str(e.value)


def test_fewer_documents_than_global_rows(tmp_path):
    docs = jsonl_corpus(tmp_path, ["a", "b", "c"])
    with pytest.raises(DataError) as e:
        next(make_loader(docs, micro_batch=4, prefetch=0))
    msg = str(e.value)
    assert "data stream 3 of 4" in msg and "= 4 rows" in msg and "data.paths" in msg and "train.micro_batch" in msg
    # exactly as many documents as rows is enough
    assert next(make_loader(docs, micro_batch=3, prefetch=0))["input_ids"].shape == (3, SEQ_LEN)


# --------------------------------------------------------------------------------------------
# packing


def test_window_to_example_by_hand():
    a, b, c, d, e = 10, 11, 12, 13, 14
    tokens = np.array([a, b, EOS, c, d, EOS, e])
    doc_start = np.array([1, 0, 0, 1, 0, 0, 1], bool)
    plain = window_to_example(tokens, doc_start, doc_mask=False)
    assert plain["input_ids"].tolist() == [a, b, EOS, c, d, EOS]
    assert plain["labels"].tolist() == [b, EOS, c, d, EOS, e]
    assert plain["position_ids"].tolist() == [0, 1, 2, 3, 4, 5]
    masked = window_to_example(tokens, doc_start, doc_mask=True)
    assert masked["input_ids"].tolist() == [a, b, EOS, c, d, EOS]
    assert masked["labels"].tolist() == [b, EOS, IGNORE_INDEX, d, EOS, IGNORE_INDEX]
    assert masked["position_ids"].tolist() == [0, 1, 2, 0, 1, 2]
    # a window that starts inside a document counts from its own start
    mid = window_to_example(np.array([b, EOS, c, d]), np.array([0, 0, 1, 0], bool), doc_mask=True)
    assert mid["position_ids"].tolist() == [0, 1, 0]
    assert mid["labels"].tolist() == [EOS, IGNORE_INDEX, d]
    assert tokens.tolist() == [a, b, EOS, c, d, EOS, e]  # inputs untouched


def test_windows_overlap_by_one_and_rebuild_the_stream(tmp_path):
    texts = make_texts(10, seed=1)
    assert max(len(t.encode()) for t in texts) > 2 * SEQ_LEN  # some documents span several windows
    stream_tokens = token_stream(texts)
    stream = PackedStream(jsonl_corpus(tmp_path, texts), 0, 1, TOKENIZE, EOS, SEQ_LEN)
    n_windows = 3 * len(stream_tokens) // SEQ_LEN  # almost three epochs
    windows = [stream.next_window() for _ in range(n_windows)]
    expected = stream_tokens * 3
    starts = [i == 0 or expected[i - 1] == EOS for i in range(len(expected))]
    for j, (w, doc_start) in enumerate(windows):
        assert w.shape == doc_start.shape == (SEQ_LEN + 1,) and w.dtype == np.int64
        assert w.tolist() == expected[j * SEQ_LEN : j * SEQ_LEN + SEQ_LEN + 1]
        assert doc_start.tolist() == starts[j * SEQ_LEN : j * SEQ_LEN + SEQ_LEN + 1]
        if j:
            assert w[0] == windows[j - 1][0][-1]  # overlap of exactly one token
    inputs = np.concatenate([w[:-1] for w, _ in windows]).tolist()
    assert inputs == expected[: n_windows * SEQ_LEN]
    assert split_documents(inputs)[: 2 * len(texts)] == texts + texts  # every document, in order, each epoch


def test_loader_rows_without_doc_mask(tmp_path):
    texts = make_texts(8, seed=2)
    expected = token_stream(texts) * 3
    loader = make_loader(jsonl_corpus(tmp_path, texts), doc_mask=False)
    n = 2 * len(expected) // (3 * SEQ_LEN)
    for j, batch in enumerate(take(loader, n)):
        assert set(batch) == {"input_ids", "labels", "position_ids"}
        assert all(v.shape == (1, SEQ_LEN) and v.dtype == torch.int64 for v in batch.values())
        g = j * SEQ_LEN
        assert batch["input_ids"][0].tolist() == expected[g : g + SEQ_LEN]
        assert batch["labels"][0].tolist() == expected[g + 1 : g + SEQ_LEN + 1]  # no label ignored
        assert batch["position_ids"][0].tolist() == list(range(SEQ_LEN))


def test_loader_rows_with_doc_mask(tmp_path):
    texts = make_texts(12, seed=3, max_chars=12)  # short documents: several per window
    expected = token_stream(texts) * 3
    offsets = doc_offsets(expected)
    loader = make_loader(jsonl_corpus(tmp_path, texts), doc_mask=True)
    restarts_inside = 0
    for j, batch in enumerate(take(loader, 2 * len(expected) // (3 * SEQ_LEN))):
        g = j * SEQ_LEN
        inputs, labels, pos = (batch[k][0].tolist() for k in ("input_ids", "labels", "position_ids"))
        assert inputs == expected[g : g + SEQ_LEN]
        for i in range(SEQ_LEN):
            starts_next = offsets[g + i + 1] == 0
            assert labels[i] == (IGNORE_INDEX if starts_next else expected[g + i + 1]), (j, i)
            assert pos[i] == min(i, offsets[g + i]), (j, i)  # counts from the document or window start
        assert [lab == IGNORE_INDEX for lab in labels] == [t == EOS for t in inputs]
        restarts_inside += sum(p == 0 for p in pos[1:])
    assert restarts_inside > 0


def test_epochs_roll_over(tmp_path):
    texts = make_texts(6, seed=4, max_chars=20)
    docs = jsonl_corpus(tmp_path, texts)
    loader = make_loader(docs, micro_batch=2, prefetch=0)
    rows: list[list[int]] = [[], []]
    epochs = [[], []]
    for _ in range(60):
        batch = next(loader)
        state = loader.state_dict()
        for r in range(2):
            rows[r] += batch["input_ids"][r].tolist()
            epochs[r].append(state[r]["epoch"])
    shards = []
    for r in range(2):
        assert epochs[r] == sorted(epochs[r]) and epochs[r][-1] >= 2, epochs[r]
        seen = split_documents(rows[r])
        n = len(set(seen))
        shard = seen[:n]
        assert len(shard) == n  # a full pass before any document repeats
        assert seen == (shard * (len(seen) // n + 1))[: len(seen)]  # then the same documents again
        shards.append(shard)
    assert sorted(shards[0] + shards[1]) == sorted(texts)
    assert not set(shards[0]) & set(shards[1])


def read_epochs(docs, index: int, count: int, n_epochs: int, **kw) -> dict[int, list[str]]:
    """Documents stream ``index`` of ``count`` reads in each of its first ``n_epochs`` epochs."""
    seen: list[tuple[int, str]] = []
    stream = None

    def recording_tokenize(text):
        seen.append((stream.state.epoch, text))
        return TOKENIZE(text)

    stream = PackedStream(docs, index, count, recording_tokenize, EOS, 8, **kw)
    for _ in range(100_000):  # bounded: a stream whose epoch never advances fails instead of hanging
        if seen and seen[-1][0] >= n_epochs:
            break
        stream.next_window()
    assert seen[-1][0] >= n_epochs, f"stream {index} of {count} stuck in epoch {seen[-1][0]}"
    return {e: [t for ep, t in seen if ep == e] for e in range(n_epochs)}


@pytest.mark.parametrize(
    "n_files, rows, shuffle_buffer",
    [(1, 3, 0), (4, 2, 0), (3, 2, 0), (1, 4, 8), (4, 4, 4), (6, 3, 5)],
    ids=["1file-G3", "4files-G2", "3files-G2", "1file-G4-shuffled", "4files-G4-shuffled", "6files-G3-shuffled"],
)
def test_streams_partition_every_epoch(tmp_path, n_files, rows, shuffle_buffer):
    texts = make_texts(24, seed=5, max_chars=6)
    docs = jsonl_corpus(tmp_path, texts, n_files=n_files)
    per_stream = [read_epochs(docs, k, rows, 2, shuffle_buffer=shuffle_buffer, seed=7) for k in range(rows)]
    for epoch in range(2):
        shards = [s[epoch] for s in per_stream]
        assert all(shards), f"epoch {epoch}: a stream read nothing"
        seen = Counter(t for shard in shards for t in shard)
        assert seen == Counter(texts), f"epoch {epoch}: documents lost or read twice"


def test_shuffle_buffer_reshuffles_each_epoch(tmp_path):
    texts = make_texts(24, seed=10, max_chars=6)
    docs = jsonl_corpus(tmp_path, texts)
    ordered = read_epochs(docs, 0, 1, 2)
    assert ordered[0] == ordered[1] == texts  # without a buffer: file order, every epoch
    shuffled = read_epochs(docs, 0, 1, 2, shuffle_buffer=8, seed=1)
    assert sorted(shuffled[0]) == sorted(shuffled[1]) == sorted(texts)
    assert shuffled[0] != texts and shuffled[1] != shuffled[0]


def test_same_seed_same_batches_other_seed_other_order(tmp_path):
    docs = jsonl_corpus(tmp_path, make_texts(30, seed=6))
    kw = {"micro_batch": 2, "shuffle_buffer": 8, "doc_mask": True}
    a = take(make_loader(docs, seed=1, **kw), 12)
    b = take(make_loader(docs, seed=1, prefetch=0, **kw), 12)
    assert_batches_equal(a, b)
    other = take(make_loader(docs, seed=2, **kw), 12)
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, other))
    unshuffled = take(make_loader(docs, seed=1, **{**kw, "shuffle_buffer": 0}), 12)
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, unshuffled))


# --------------------------------------------------------------------------------------------
# sharding between ranks, accumulation and micro-batches


def test_stream_ids_cover_the_global_batch_once():
    assert stream_ids(1, 2, 2, 2) == [[2, 3], [6, 7]]
    assert stream_ids(0, 1, 3, 1) == [[0], [1], [2]]
    for dp, ga, mb in [(1, 1, 4), (4, 1, 1), (2, 3, 2), (3, 2, 1)]:
        ids = [sid for rank in range(dp) for rows in stream_ids(rank, dp, ga, mb) for sid in rows]
        assert sorted(ids) == list(range(dp * ga * mb)), (dp, ga, mb)


@pytest.fixture
def shard_corpus(tmp_path):
    return jsonl_corpus(tmp_path, make_texts(20, seed=8))


def test_two_ranks_equal_two_micro_steps(shard_corpus):
    kw = {"doc_mask": True, "prefetch": 0}
    rank0 = take(make_loader(shard_corpus, rank=0, dp=2, **kw), 8)
    rank1 = take(make_loader(shard_corpus, rank=1, dp=2, **kw), 8)
    accum = take(make_loader(shard_corpus, grad_accum=2, **kw), 16)
    assert_batches_equal(rank0, accum[0::2])
    assert_batches_equal(rank1, accum[1::2])
    assert not torch.equal(rank0[0]["input_ids"], rank1[0]["input_ids"])


def test_micro_batch_equals_grad_accum(shard_corpus):
    wide = take(make_loader(shard_corpus, micro_batch=2, doc_mask=True), 8)
    accum = take(make_loader(shard_corpus, grad_accum=2, doc_mask=True), 16)
    for s, batch in enumerate(wide):
        for j in range(2):  # row j of the wide step is micro-step j: both are global row j
            for k in batch:
                assert torch.equal(batch[k][j], accum[2 * s + j][k][0]), (s, j, k)


@pytest.mark.parametrize(
    "dp, grad_accum, micro_batch", [(1, 1, 4), (4, 1, 1), (1, 4, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2)]
)
def test_global_batch_independent_of_split(shard_corpus, dp, grad_accum, micro_batch):
    rows, steps = dp * grad_accum * micro_batch, 5
    ref = []
    for sid in range(rows):
        stream = PackedStream(shard_corpus, sid, rows, TOKENIZE, EOS, SEQ_LEN)
        ref.append([window_to_example(*stream.next_window(), doc_mask=True) for _ in range(steps)])
    for rank in range(dp):
        split = {"rank": rank, "dp": dp, "grad_accum": grad_accum, "micro_batch": micro_batch}
        loader = make_loader(shard_corpus, doc_mask=True, **split)
        schedule = stream_ids(rank, dp, grad_accum, micro_batch)
        for step in range(steps):
            for micro in range(grad_accum):
                batch = next(loader)
                for j, sid in enumerate(schedule[micro]):
                    for k in batch:
                        assert batch[k][j].tolist() == ref[sid][step][k].tolist(), (rank, step, micro, j, k)


# --------------------------------------------------------------------------------------------
# exact resume


@pytest.fixture(scope="module")
def resume_corpus(tmp_path_factory):
    # short documents so each of 4 streams finishes an epoch within a few windows
    return jsonl_corpus(tmp_path_factory.mktemp("resume"), make_texts(16, seed=9, max_chars=24))


@pytest.mark.parametrize("prefetch", [2, 0], ids=["prefetch2", "prefetch0"])
@pytest.mark.parametrize("shuffle_buffer", [0, 6], ids=["ordered", "shuffled"])
@pytest.mark.parametrize("where", ["start", "mid_epoch", "before_epoch_end", "after_epoch_end"])
def test_exact_resume(resume_corpus, prefetch, shuffle_buffer, where):
    kw = {"rank": 1, "dp": 2, "grad_accum": 2, "micro_batch": 1, "doc_mask": True}
    kw |= {"shuffle_buffer": shuffle_buffer, "seed": 3}
    total, m = 40, 8
    ref_loader = make_loader(resume_corpus, prefetch=0, **kw)
    ref, states = [], [ref_loader.state_dict()]
    for _ in range(total):
        ref.append(next(ref_loader))
        states.append(ref_loader.state_dict())
    max_epoch = [max(s["epoch"] for s in st.values()) for st in states]
    # resume at optimizer-step boundaries (k a multiple of grad_accum), as the trainer saves
    candidates = [k for k in range(0, total - m + 1, 2)]
    k = {
        "start": 0,
        "mid_epoch": next(k for k in candidates if max_epoch[k] == 0 and any(s["doc"] for s in states[k].values())),
        "before_epoch_end": max(k for k in candidates if max_epoch[k] == 0 and max_epoch[k + m] >= 1),
        "after_epoch_end": next(k for k in candidates if min(s["epoch"] for s in states[k].values()) >= 1),
    }[where]

    first = make_loader(resume_corpus, prefetch=prefetch, **kw)
    assert_batches_equal(take(first, k), ref[:k])
    wait_prefetched(first)
    state = first.state_dict()
    assert state == states[k]  # batches prepared ahead are not counted as consumed
    state = {int(sid): s for sid, s in json.loads(json.dumps(state)).items()}  # as the checkpoint stores it
    resumed = make_loader(resume_corpus, prefetch=prefetch, state=state, **kw)
    assert resumed.state_dict() == states[k]
    assert_batches_equal(take(resumed, m), ref[k : k + m])
    # the uninterrupted loader with prefetch gives the same batches as without
    assert_batches_equal(take(first, m), ref[k : k + m])


# --------------------------------------------------------------------------------------------
# byte tokenizer

SAMPLES = [
    "",
    "plain ascii",
    "héllo wörld ñ",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 flags 🇫🇷",
    "日本語の文章と한국어 and עברית ←RTL",
    "combining e\u0301 and zero\u200bwidth",
    "controls \x00\x01\x02\x07\x08\x1b[0m\x7f\x85 tab\there\r\nnewline\u2028end",
    "  leading and trailing spaces  ",
    "clean-up bait: a . b , c ! d ? don 't do n't it 's",
    "\ufeffbom and \U0010ffff max code point",
    "a <|endoftext|> b <|pad|><|bos|> c",  # literal special-token text stays text
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ranges = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        chars = [chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 30))]
        out.append("".join(chars))
    return out


def test_byte_tokenizer_ids_are_utf8_bytes_and_round_trip():
    tok = byte_tokenizer()
    for text in SAMPLES + random_texts(200):
        ids = TOKENIZE(text)
        assert ids.dtype == np.int64
        assert ids.tolist() == list(text.encode("utf-8")), repr(text)
        assert tok.decode(ids.tolist()) == text, repr(text)


def test_byte_tokenizer_special_tokens():
    tok = byte_tokenizer()
    assert len(tok) == 259
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (256, 257, 258)
    assert tok.convert_ids_to_tokens([256, 257, 258]) == ["<|endoftext|>", "<|pad|>", "<|bos|>"]
    assert tok.decode([104, 105, 256, 257, 258]) == "hi<|endoftext|><|pad|><|bos|>"
    assert tok.decode([104, 105, 256, 257, 258], skip_special_tokens=True) == "hi"
    assert tok("hi")["input_ids"] == [104, 105]  # no BOS/EOS added by default
    # every byte is its own token: the vocabulary is exactly bytes 0..255 plus the three specials
    assert sorted(tok.get_vocab().values()) == list(range(259))


def test_make_tokenize_fast_path_equals_tokenizer(monkeypatch):
    tok = byte_tokenizer()
    fast = make_tokenize(tok)
    monkeypatch.setattr(data.tokenizer, "is_byte_tokenizer", lambda t: False)
    slow = make_tokenize(tok)
    assert fast is not slow
    for text in SAMPLES + random_texts(100, seed=1):
        assert np.array_equal(fast(text), slow(text)), repr(text)
        assert slow(text).dtype == fast(text).dtype == np.int64


def test_byte_tokenizer_save_and_reload(tmp_path):
    tok = byte_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert data.tokenizer.is_byte_tokenizer(loaded)
    assert len(loaded) == len(tok) and loaded.eos_token == tok.eos_token
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id) == (256, 257, 258)
    reloaded_tokenize = make_tokenize(loaded)
    for text in SAMPLES + random_texts(50, seed=2):
        assert tok(text)["input_ids"] == loaded(text)["input_ids"], repr(text)
        ids = reloaded_tokenize(text).tolist()
        assert ids == list(text.encode("utf-8"))
        assert loaded.decode(ids) == text
    assert loaded.decode([120, 256]) == "x<|endoftext|>"
