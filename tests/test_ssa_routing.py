"""Routing is trained end to end: a tiny SSA model learns a retrieval task whose evidence lies
beyond the local window, and its router learns to find the evidence block."""

from train.probes import train_block_retrieval


def test_routing_learns_to_find_far_evidence():
    """256 tokens in 16 blocks of 16; the last block's routed range holds 13 blocks and it may route
    to 2: chance hit rate per kv head ~0.15, chance accuracy 1/32."""
    history = train_block_retrieval("straight_through", steps=200, seed=0, eval_every=100)
    first, last = history[0], history[-1]
    assert first["accuracy"] < 0.15 and first["hit_rate"] < 0.6, first
    assert last["accuracy"] >= 0.8, history
    assert last["hit_rate"] >= 0.85 and last["hit_rate"] >= first["hit_rate"] + 0.3, history
