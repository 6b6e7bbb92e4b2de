"""scripts/needle_report.py: right and wrong answers apart, routing per layer and first-token outcomes."""

import json
import re

import pytest

from tests.scripts_loader import load_script


def row(score, routed, lost_first, length=1024):
    # needle_lost: [token][layer][kv head]; the report reads the first token only
    return {"task": "niah_single_1", "length": length, "score": score, "needle_routed": routed,
            "needle_lost": [lost_first, [[-1, -1], [-1, -1]]]}  # fmt: skip


def test_report_splits_right_and_wrong_and_counts_first_token_outcomes(tmp_path, capsys):
    rows = [row(100, [1.0, 0.5], [[-1, -1], [-1, 0]]), row(100, [0.5, 0.5], [[-1, -1], [-1, -1]]),
            row(0, [0.0, 0.25], [[2, 2], [0, -2]]), row(0, [0.5, 0.5], [[-1, -1], [1, 1]], length=2048)]  # fmt: skip
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"task": "niah_single_1", "len')  # torn line
    out_json = tmp_path / "report.json"
    entries = load_script("needle_report").main([str(path), "--json", str(out_json)])
    short = entries[0]
    assert (short["length"], short["samples"]) == (1024, 3)
    assert short["right"] == {"n": 2, "routed_per_layer": [0.75, 0.5],
                              "first_token": {"level 0": 0.125, "routed": 0.875}, "ranks": []}  # fmt: skip
    assert short["wrong"] == {"n": 1, "routed_per_layer": [0.0, 0.25],
                              "first_token": {"not routable": 0.25, "level 0": 0.25, "level 2": 0.5}, "ranks": [],
                              "read": {"with_miss": 0, "in_prompt": 0, "chars_right": None}}  # fmt: skip
    assert entries[1]["wrong"]["first_token"] == {"routed": 0.5, "level 1": 0.5} and entries[1]["right"]["n"] == 0
    assert json.loads(out_json.read_text())[str(path)] == entries
    printed = capsys.readouterr().out
    assert "niah_single_1 @ 1024: 3 samples" in printed and "level 2 0.50" in printed


def test_results_json_reads_too_and_a_missing_file_is_named(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": [row(100, [1.0], [[-1]])]}))
    (entry,) = load_script("needle_report").main([str(path)])
    assert entry["right"]["first_token"] == {"routed": 1.0} and entry["wrong"]["n"] == 0
    with pytest.raises(SystemExit, match="nope.jsonl: no such file"):
        load_script("needle_report").main([str(tmp_path / "nope.jsonl")])


def test_wrong_answers_say_how_many_read_another_value_and_how_much_of_the_gold_one():
    rows = [row(0, [0.0], [[0]]) | {"miss": {"read": "7058593", "in_prompt": True, "chars_right": 0.143}},
            row(0, [0.5], [[-1]]) | {"miss": {"read": "7211343", "in_prompt": False, "chars_right": 0.857}},
            row(0, [0.5], [[-1]]), row(100, [1.0], [[-1]])]  # fmt: skip
    (entry,) = load_script("needle_report").summarize(rows)
    assert entry["wrong"]["n"] == 3 and entry["wrong"]["read"] == {"with_miss": 2, "in_prompt": 1, "chars_right": 0.5}
    text = load_script("needle_report").render([entry])
    assert "another word of the prompt 1 of 2, gold characters in place 0.50" in text


def test_regenerate_gives_older_rows_their_miss(tmp_path, capsys):
    """Rows written before train.eval recorded misses: --regenerate rebuilds each wrong row's prompt (niah_multikey_2,
    a haystack of other needles) and finds that a read of another needle's value is in the prompt and a mis-copy is
    not; a row whose answers the rebuild does not give back is counted and left alone."""
    from data.synthetic import generate
    from data.tokenizer import byte_tokenizer

    sample = generate("niah_multikey_2", 1024, byte_tokenizer(), 0, 0.5, "eval")
    gold = sample.answers[0]
    other = next(v for v in re.findall(r"is: (\d+)\.", sample.prompt) if v != gold)
    base = {"task": "niah_multikey_2", "length": 1024, "seed": 0, "depth": 0.5, "answers": [gold]}
    rows = [base | {"score": 0.0, "pred": f" {other}."}, base | {"score": 0.0, "pred": f" 0{gold[1:]}."},
            base | {"score": 0.0, "pred": " 1.", "answers": ["1234567"]}, base | {"score": 100.0, "pred": gold}]  # fmt: skip
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (entry,) = load_script("needle_report").main([str(path), "--regenerate", "byte"])
    assert entry["wrong"]["n"] == 3
    same_place = sum(a == b for a, b in zip(other, gold)) / 7
    want = round((round(same_place, 3) + round(6 / 7, 3)) / 2, 3)
    assert entry["wrong"]["read"] == {"with_miss": 2, "in_prompt": 1, "chars_right": want}
    assert "1 wrong rows rebuilt to other answers" in capsys.readouterr().out


def test_ranks_per_level_count_only_the_searches_that_reached_the_level():
    """needle_ranks_first [layer][kv head][level] (-1: dropped at a coarser level) against needle_widths_first: per
    level the median over the triples that reached it and the share within the width kept."""
    widths = [16, 64, 64]  # blocks, 512-token nodes, the top level
    wrong = row(0, [0.0], [[1, 1]]) | {"needle_widths_first": widths,
                                       "needle_ranks_first": [[[-1, 100, 30], [-1, 70, 2]], [[20, 10, 5], [3, 63, 9]]]}  # fmt: skip
    other = row(0, [0.0], [[1]]) | {"needle_widths_first": widths, "needle_ranks_first": [[[-1, 200, 40]]]}
    right = row(100, [1.0], [[-1]]) | {"needle_widths_first": widths, "needle_ranks_first": [[[0, 1, 2]]]}
    (entry,) = load_script("needle_report").summarize([wrong, other, right, row(0, [0.0], [[0]])])  # last: no ranks
    assert entry["wrong"]["ranks"] == [
        {"level": 0, "width": 16, "reached": 2, "median": 20, "kept": 0.5},
        {"level": 1, "width": 64, "reached": 5, "median": 70, "kept": 0.4},
        {"level": 2, "width": 64, "reached": 5, "median": 9, "kept": 1.0},
    ]
    assert [x["median"] for x in entry["right"]["ranks"]] == [0, 1, 2]
    text = load_script("needle_report").render([entry])
    assert "level 1 70 / 64 (kept 0.40 of 5)" in text
    assert load_script("needle_report").level_ranks([row(0, [0.0], [[0]])]) == []


def test_budgets_give_the_share_of_searches_ranking_the_block_within_k(tmp_path, capsys):
    """--budgets K: per right / wrong, the share of first-token (layer, kv head) searches whose block rank is < K,
    a search that dropped the needle at a coarser level (rank -1) counting as a miss."""
    widths = [16, 64]
    wrong = row(0, [0.0], [[1, 1]]) | {"needle_widths_first": widths,
                                       "needle_ranks_first": [[[-1, 100], [70, 2]], [[20, 10], [3, 63]]]}  # fmt: skip
    right = row(100, [1.0], [[-1]]) | {"needle_widths_first": widths, "needle_ranks_first": [[[0, 1], [15, 1]]]}
    script = load_script("needle_report")
    (entry,) = script.summarize([wrong, right], budgets=[4, 16, 64, 128])
    assert entry["wrong"]["within"] == {4: 0.25, 16: 0.25, 64: 0.5, 128: 0.75}
    assert entry["right"]["within"] == {4: 0.5, 16: 1.0, 64: 1.0, 128: 1.0}
    assert "within" not in script.summarize([wrong, right])[0]["wrong"]  # only when asked
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(wrong) + "\n" + json.dumps(right) + "\n")
    script.main([str(path), "--budgets", "16", "64"])
    assert "block ranked within K (share of searches): 16 0.25, 64 0.50" in capsys.readouterr().out
