"""scripts/needle_rank_probe.py: its scorers against loops written from their definitions, a planted needle that
only the token-level scorers find, and the whole probe on a tiny trained checkpoint, where its ``mean`` rank must
agree with what the library's selector routed."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssa_kernels.diagnostics import SSARecorder
from tests.scripts_loader import load_script

REPO = Path(__file__).resolve().parents[1]
probe = load_script("needle_rank_probe")


def test_block_scores_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    h, t, d, bs = 3, 45, 8, 8  # a ragged last block of 5 tokens
    q, k = torch.randn(h, d, generator=g), torch.randn(h, t, d, generator=g)
    got = probe.summary_scores(q, k, bs)
    for hh in range(h):
        for j in range(-(-t // bs)):
            kb = k[hh, j * bs : (j + 1) * bs]
            assert got["mean"][hh, j] == pytest.approx(float(q[hh] @ kb.mean(0)), abs=1e-5)
            assert got["token_max"][hh, j] == pytest.approx(float((kb @ q[hh]).max()), abs=1e-5)
            bound = sum(max(q[hh, c] * kb[:, c].min(), q[hh, c] * kb[:, c].max()) for c in range(d))
            assert got["bound"][hh, j] == pytest.approx(float(bound), abs=1e-5)
    assert (got["bound"] >= got["token_max"] - 1e-5).all()  # an upper bound of the best token


def test_attention_scores_match_a_loop():
    g = torch.Generator().manual_seed(1)
    hq, hkv, t, d, bs, lo, hi = 4, 2, 40, 8, 8, 1, 4
    q, k = torch.randn(hq, d, generator=g), torch.randn(hkv, t, d, generator=g)
    got = probe.attention_scores(q, k, 0.5, lo, hi, bs)
    for h in range(hkv):
        for j in range(-(-t // bs)):
            if not lo <= j < hi:
                assert got["attn"][h, j] == -math.inf
                continue
            mass, top = 0.0, 0.0
            for qh in (2 * h, 2 * h + 1):  # the kv head's group
                logits = (k[h, lo * bs : hi * bs] @ q[qh]) * 0.5
                p = torch.softmax(logits, 0)
                mass += float(p[(j - lo) * bs : (j - lo + 1) * bs].sum()) / 2
                top += float(logits[(j - lo) * bs : (j - lo + 1) * bs].max()) / 2
            assert got["attn"][h, j] == pytest.approx(mass, abs=1e-5)
            assert got["attn_max"][h, j] == pytest.approx(top, abs=1e-5)
    assert torch.allclose(got["attn"][:, lo:hi].sum(-1), torch.ones(hkv))


@pytest.mark.parametrize("use_far", [False, True])
def test_teacher_scores_match_a_loop(use_far):
    """teacher / teacher_max: the answer query block's rows' dense mass per key block (over the keys each row sees,
    far blocks with (q_far, k_far)), averaged / maxed over rows and the group's heads; mean and max rank differently."""
    g = torch.Generator().manual_seed(3)
    hq, hkv, t, d, bs, i, lo, hi, local = 4, 2, 75, 8, 8, 9, 1, 8, 2  # block 9: the ragged last (3 rows)
    q, k = 2 * torch.randn(1, hq, t, d, generator=g), torch.randn(1, hkv, t, d, generator=g)
    far = (2 * torch.randn(1, hq, t, d, generator=g), torch.randn(1, hkv, t, d, generator=g)) if use_far else None
    got = probe.teacher_scores(q, k, i, bs, lo, hi, 0.5, far, local)
    for h in range(hkv):
        rows = []
        for qh in (2 * h, 2 * h + 1):
            for r in range(i * bs, t):
                keys = torch.arange(r + 1)
                near = keys // bs > r // bs - local  # the local window keeps (q, k)
                logits = (k[0, h, : r + 1] @ q[0, qh, r]) * 0.5
                if far is not None:
                    logits = torch.where(near, logits, (far[1][0, h, : r + 1] @ far[0][0, qh, r]) * 0.5)
                p = torch.softmax(logits, 0)
                rows.append(torch.stack([p[j * bs : (j + 1) * bs].sum() for j in range(-(-t // bs))]))
        rows = torch.stack(rows)  # (G x rows, nb)
        for j in range(-(-t // bs)):
            if not lo <= j < hi:
                assert got["teacher"][h, j] == got["teacher_max"][h, j] == -math.inf
                continue
            assert got["teacher"][h, j] == pytest.approx(float(rows[:, j].mean()), abs=1e-5)
            assert got["teacher_max"][h, j] == pytest.approx(float(rows[:, j].max()), abs=1e-5)
    assert not torch.equal(got["teacher"].argsort(-1), got["teacher_max"].argsort(-1))


def test_needle_rank_counts_blocks_above_the_best_needle_block():
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0, 4.0, 7.0], [0.0, 8.0, 1.0, 2.0, 0.5, 0.0]])
    assert probe.needle_rank(scores, 1, 5, [3, 4]).tolist() == [1, 1]  # head 0: 5.0 above 4.0; head 1: 8.0 above 2.0
    assert probe.needle_rank(scores, 1, 5, [0, 5]).tolist() == [-1, -1]  # outside the routed range
    assert probe.needle_rank(scores, 1, 5, [1]).tolist() == [3, 0]


def test_a_needle_token_diluted_in_its_block_is_found_by_token_scores_only():
    """Every block's keys are noise plus a shared offset along q, larger in the distractors (their means score
    higher); the needle block holds one token aligned with q. mean ranks it last, token_max / bound first."""
    g = torch.Generator().manual_seed(2)
    d, bs, nb = 16, 16, 12
    q = torch.zeros(1, d)
    q[0, 0] = 1.0
    k = 0.1 * torch.randn(1, nb * bs, d, generator=g)
    k[..., 0] += 1.0  # every token a little along q
    needle = 7
    k[0, needle * bs : (needle + 1) * bs, 0] -= 0.5  # the needle block's other tokens less so
    k[0, needle * bs + 3, 0] = 6.0  # its one needle token
    scores = probe.summary_scores(q, k, bs)
    rank = {name: int(probe.needle_rank(s, 0, nb, [needle])[0]) for name, s in scores.items()}
    assert rank["mean"] == nb - 1 and rank["token_max"] == 0 and rank["bound"] == 0


@pytest.mark.parametrize("task", ["niah_multikey_2", "niah_single_1"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_key_blocks_hold_the_gold_needles_key(task, seed):
    """The key's blocks cover exactly the tokens of the key before the gold value (byte tokenizer), and the value's
    blocks start at or after them."""
    from data.synthetic import generate
    from train.config import ModelConfig
    from train.eval import PromptEncoder, needle_blocks
    from train.model import build_tokenizer

    tok = build_tokenizer(ModelConfig(name="t", tokenizer="byte"))
    encode = PromptEncoder(tok)
    sample = generate(task, 2048, tok, seed, 0.5, "eval")
    bs = 16
    key, value = probe.key_blocks(sample, encode, bs), needle_blocks(sample, encode, bs)
    assert key and value and key[0] <= value[0]
    ids = encode(sample.prompt)[0]

    def span(a, b):  # the text of blocks a..b
        return tok.decode(ids[a * bs : (b + 1) * bs].tolist())

    at = sample.prompt.find(sample.answers[0])
    start = sample.prompt.rfind(" for ", 0, at) + len(" for ")
    word = sample.prompt[start : sample.prompt.find(" is:", start)]
    assert word and word in span(key[0], key[-1]) and word in sample.prompt[at:]  # the question asks for this key
    if len(key) > 1:  # minimal: without its first or its last block the key is cut
        assert word not in span(key[0] + 1, key[-1]) and word not in span(key[0], key[-1] - 1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("nrp") / "run"
    cmd = [sys.executable, "-m", "train", "model=tiny", "attention=ssa", "attention.ssa.block_size=16",
           "attention.ssa.topk_blocks=4", "attention.ssa.local_window=64", "attention.ssa.far_distance=128",
           "train.seq_len=512", "train.micro_batch=1", "train.steps=2", "data.synthetic.ratio=1.0",
           "data.synthetic.lengths=[]", "data.synthetic.tasks=[niah_multikey_2]", "train.schedule.warmup_steps=1",
           "logging.wandb=disabled", f"hydra.run.dir={run}"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return run


def test_probe_runs_and_its_mean_rank_is_what_the_selector_routed(checkpoint, tmp_path):
    out = tmp_path / "ranks.json"
    doc = probe.main([str(checkpoint), "--lengths", "1K", "--depths", "0.3", "0.7", "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == doc["summary"]
    rows, topk = doc["rows"], doc["topk_blocks"]
    assert topk == 4 and len(rows) == 4  # 2 tasks x 2 depths
    for r in rows:
        assert r["needle_blocks"] and r["key_blocks"] and set(r["ranks"]) == set(r["key_ranks"]) == set(probe.SCORERS)
        for ranks in [*r["ranks"].values(), *r["key_ranks"].values()]:
            assert len(ranks) == 4 and all(-1 <= v < r["routable"] for layer in ranks for v in layer)
        assert all(v >= 0 for layer in r["ranks"]["mean"] for v in layer)  # the value lies in the routed range
    assert {(s["task"], s["target"], s["scorer"]) for s in doc["summary"]} == {
        (t, g, s) for t in ("niah_multikey_2", "niah_single_1") for g in ("value", "key") for s in probe.SCORERS
    }
    for s in doc["summary"]:  # apart: the share of the cell's samples whose key and value blocks do not meet
        cell = [r for r in rows if r["task"] == s["task"]]
        assert s["apart"] == round(sum(not set(r["needle_blocks"]) & set(r["key_blocks"]) for r in cell) / 2, 2)

    # the library's selection for the same prompt: the needle routed at the last query block <=> mean rank < topk
    model, tokenizer, _ = probe.load(str(checkpoint))
    r = rows[0]
    from data.synthetic import generate
    from train.eval import PromptEncoder

    ids = PromptEncoder(tokenizer)(generate(r["task"], r["length"], tokenizer, r["seed"], r["depth"], "eval").prompt)
    assert ids.shape[1] == r["prompt_tokens"]
    with SSARecorder(lambda call: call.selection.indices[0, :, -1]) as rec, torch.no_grad():
        model.get_decoder()(input_ids=ids, use_cache=False)
    for layer, ranks in enumerate(r["ranks"]["mean"]):
        routed = [bool(set(r["needle_blocks"]) & set(row.tolist())) for row in rec.records[layer]]
        assert routed == [v < topk for v in ranks], layer


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("nrp") / "dense"
    cmd = [sys.executable, "-m", "train", "model=tiny", "attention=dense", "train.seq_len=128", "train.steps=1",
           "data.synthetic.ratio=1.0", "data.synthetic.lengths=[]", "data.synthetic.tasks=[copy]",
           "train.schedule.warmup_steps=1", "logging.wandb=disabled", f"hydra.run.dir={run}"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return run


def test_probe_refuses_a_dense_checkpoint_without_as_ssa(dense_checkpoint, checkpoint):
    with pytest.raises(SystemExit, match="not an SSA model"):
        probe.main([str(dense_checkpoint), "--lengths", "512"])
    with pytest.raises(SystemExit, match="--as-ssa is for dense checkpoints"):
        probe.main([str(checkpoint), "--as-ssa", "--lengths", "512"])


def test_a_dense_checkpoint_probed_as_ssa_computes_its_dense_attention(dense_checkpoint):
    """--as-ssa routes every block: the converted model's logits are the dense model's, on a prompt longer than the
    local window and than its training length; and the probe's attn ranks come from that attention."""
    dense, _, _ = probe.load(str(dense_checkpoint))
    ids = torch.randint(0, dense.config.vocab_size, (1, 700), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = dense(input_ids=ids).logits
        got = probe.as_dense_ssa(dense, 700, local_window=64)(input_ids=ids).logits
    assert getattr(dense.config, "ssa", None)  # converted in place: SSA attention ran
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    doc = probe.main([str(dense_checkpoint), "--as-ssa", "--local-window", "64", "--lengths", "1K", "--depths", "0.5",
                      "--tasks", "niah_single_1"])  # fmt: skip
    assert doc["topk_blocks"] == 16
    (row,) = doc["rows"]
    assert row["routable"] == -(-row["prompt_tokens"] // 64) - 1 - 1  # all but the sink and the 64-token window
    for ranks in row["ranks"].values():
        assert len(ranks) == dense.config.num_hidden_layers
        assert all(0 <= v < row["routable"] for layer in ranks for v in layer)
