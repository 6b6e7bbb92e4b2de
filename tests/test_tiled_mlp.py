"""Tiled MLP (parallel/tiled_mlp.py): the same loss and every gradient as the plain MLP (fp32, ragged last
tile, with and without activation checkpointing), parameter names unchanged, one gradient event per
parameter per backward, and the MLP's saved activations reduced to its input."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from parallel import ParallelConfig, ParallelDims, parallelize
from parallel.tiled_mlp import apply_tiled_mlp
from tests.test_train import losses, run_cli
from train.model import CausalLMLoss

T = 100  # tiles of 16: six full and a ragged one of 4


def model() -> CausalLMLoss:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    return CausalLMLoss(LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32))


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (2, T + 1), generator=g)
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "position_ids": torch.arange(T).expand(2, -1)}


def loss_and_grads(m):
    loss = m(**batch())
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in m.named_parameters()}


@pytest.mark.parametrize("ac", [False, True])
def test_same_loss_and_gradients_as_the_plain_mlp(ac):
    dims = ParallelDims(1, 0, 0, 1, 1, torch.device("cpu"))
    ref_loss, ref = loss_and_grads(model())
    tiled = model()
    run = parallelize(tiled, tiled.decoder_layers, dims, ParallelConfig(tiled_mlp=16), activation_checkpointing=ac)
    loss, grads = loss_and_grads(run)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    grads = {n.replace("._checkpoint_wrapped_module", ""): g for n, g in grads.items()}  # AC's wrapper, not tiling's
    assert grads.keys() == ref.keys()  # parameter names unchanged
    for name, g in grads.items():
        torch.testing.assert_close(g, ref[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    assert all(layer.mlp.tiled_mlp_tokens == 16 for layer in tiled.lm.model.layers)


def test_backward_recomputes_under_the_forwards_autocast():
    """Autograd runs the backward outside ``torch.autocast``: the tiles' recomputation must re-enter the
    forward's autocast state (it ran in fp32 before: 2.7x slower steps on an H100), and bf16 gradients equal
    the plain MLP's under the same autocast."""
    seen = []
    m = model()
    plain = model()
    for layer in m.lm.model.layers:
        fwd = layer.mlp.forward

        def spy(x, fwd=fwd):
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
            return fwd(x)

        layer.mlp.forward = spy
    apply_tiled_mlp(m.decoder_layers, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(**batch())
        ref_loss = plain(**batch())
    loss.backward()
    ref_loss.backward()
    n_tiles = -(-T // 16)
    assert len(seen) == 2 * 2 * n_tiles  # 2 layers x (forward + backward recompute) x tiles
    assert all(seen), f"{seen.count(False)} of {len(seen)} tile calls ran without autocast"
    ref = dict(plain.named_parameters())
    for name, p in m.named_parameters():  # bf16 products summed in another order: compare norms
        err = (p.grad - ref[name].grad).norm() / ref[name].grad.norm()
        assert err < 2e-2, f"{name}: relative error {err:.3g}"


def test_bf16_weights_sum_their_tiles_in_fp32():
    """bf16 weights (DeepSpeed's bf16 model): the weight gradients summed over 25 tiles in fp32 are as close to the
    fp64 gradients of the same weights as the untiled bf16 MLP's (bf16 partial sums drifted 1.4x further)."""

    def grads(m):
        m(**batch()).backward()
        return {n: p.grad.double() for n, p in m.named_parameters() if ".mlp." in n}

    b16 = model().to(torch.bfloat16)
    tiled = copy.deepcopy(b16)
    apply_tiled_mlp(tiled.decoder_layers, 4)
    ref, plain, tiles = grads(copy.deepcopy(b16).double()), grads(b16), grads(tiled)
    for name, g in ref.items():
        err_plain, err_tiled = ((x[name] - g).norm() / g.norm() for x in (plain, tiles))
        assert err_tiled <= 1.15 * err_plain, (name, err_tiled.item(), err_plain.item())
        assert tiled.get_parameter(name).grad.dtype == torch.bfloat16


def test_offloaded_activations_same_loss_and_gradients():
    """parallel.offload_activations: the checkpointed layers' inputs saved through save_on_cpu (on CPU the
    move is a copy; what it saves on a GPU is for the device benchmark); the same numbers, and refused
    without activation checkpointing."""
    from parallel import ParallelError

    dims = ParallelDims(1, 0, 0, 1, 1, torch.device("cpu"))
    ref_loss, ref = loss_and_grads(model())
    m = model()
    cfg = ParallelConfig(tiled_mlp=16, offload_activations=True)
    loss, grads = loss_and_grads(parallelize(m, m.decoder_layers, dims, cfg, activation_checkpointing=True))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref[name.replace("._checkpoint_wrapped_module", "")], rtol=1e-5, atol=1e-6)
    calls = []
    real = torch.autograd.graph.save_on_cpu
    torch.autograd.graph.save_on_cpu = lambda **kw: (calls.append(kw), real(**kw))[1]
    try:
        m(**batch())
    finally:
        torch.autograd.graph.save_on_cpu = real
    assert calls == [{"pin_memory": False}] * 2  # each of the 2 layers, unpinned on CPU
    with pytest.raises(ParallelError, match="train.activation_checkpointing=true"):
        parallelize(model(), model().decoder_layers, dims, ParallelConfig(offload_activations=True))


def test_one_gradient_event_per_parameter():
    m = model()
    apply_tiled_mlp(m.decoder_layers, 16)
    counts = {}
    for name, p in m.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, n=name: counts.__setitem__(n, counts.get(n, 0) + 1))
    m(**batch()).backward()
    assert counts and all(c == 1 for c in counts.values()), counts  # as DDP's reducer requires


def saved_bytes(m) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(**batch())
    return total


def test_mlp_keeps_only_its_input():
    plain, tiled = model(), model()
    apply_tiled_mlp(tiled.decoder_layers, 16)
    saved = saved_bytes(plain) - saved_bytes(tiled)
    # plain: gate, up, act(gate) (and its input), act * up, per layer, [2, T, I] fp32 each, at least 4 of them
    intermediate = 2 * T * 160 * 4
    assert saved >= 2 * 4 * intermediate - 2 * 2 * T * 64 * 4, saved  # minus the input each tiled MLP keeps


def test_bad_tile_names_the_key():
    with pytest.raises(ValueError, match="parallel.tiled_mlp=0"):
        apply_tiled_mlp(copy.deepcopy(model().decoder_layers), 0)


def check_trainer_losses_unchanged(key: str, tmp_path, data_cache) -> None:
    """A trainer run with ``parallel.<key>=16`` (tiles of 16 tokens) logs the losses of the run without it."""
    runs = {}
    for tile in (0, 16):
        run_dir = tmp_path / f"tile{tile}"
        run_cli(run_dir, ["parallel.device=cpu", f"parallel.{key}={tile}", "train.activation_checkpointing=true"],
                data_cache)  # fmt: skip
        runs[tile] = [loss for loss, _ in losses(run_dir).values()]
    assert len(runs[0]) == 4 and runs[0][-1] < runs[0][0]
    torch.testing.assert_close(torch.tensor(runs[16]), torch.tensor(runs[0]), rtol=1e-5, atol=0)


def test_trainer_with_tiled_mlp_logs_the_same_losses(tmp_path, data_cache):
    check_trainer_losses_unchanged("tiled_mlp", tmp_path, data_cache)
