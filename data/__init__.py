"""Data: document sources (local files, code repositories, the embedded stdlib corpus), the
built-in byte tokenizer, and deterministic resumable packing into training sequences."""

from data.mix import MixedLoader, build_loader, check_synthetic
from data.packing import IGNORE_INDEX, PackedLoader, StreamState, stream_ids, window_to_example
from data.sample import Sample, read_jsonl, write_jsonl
from data.scoring import effective_length, mrcr_score, string_match_all, string_match_part
from data.sources import DataConfig, DataError, SyntheticConfig, build_stdlib_corpus, load_documents
from data.tokenizer import byte_tokenizer, make_tokenize

__all__ = [
    "Sample",
    "effective_length",
    "mrcr_score",
    "read_jsonl",
    "string_match_all",
    "string_match_part",
    "write_jsonl",
    "IGNORE_INDEX",
    "DataConfig",
    "DataError",
    "MixedLoader",
    "SyntheticConfig",
    "build_loader",
    "check_synthetic",
    "PackedLoader",
    "StreamState",
    "build_stdlib_corpus",
    "byte_tokenizer",
    "load_documents",
    "make_tokenize",
    "stream_ids",
    "window_to_example",
]
