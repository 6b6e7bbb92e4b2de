"""lm_head + cross-entropy in chunks, so [T, vocab] logits never exist at once.

Written by hand because torch has no fused linear-cross-entropy. Each chunk's logits are made,
turned into the loss and, in the same pass, into the gradients of the hidden states and of the
lm_head weight ("backward inside forward", as ALST and Liger do); backward only scales them. Peak
memory is one chunk of fp32 logits instead of T x vocab, and no matmul is recomputed.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
AUTO_CHUNK_ELEMENTS = 1 << 28  # 1 GiB of fp32 logits


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int):
        # hidden [N, D], weight [V, D], labels [N] -> sum of the valid tokens' losses, fp32 scalar
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s : s + chunk], labels[s : s + chunk]
            logits = (h @ weight.t()).float()  # [c, V]
            valid = y != IGNORE_INDEX
            target = y.clamp_min(0)
            lse = torch.logsumexp(logits, dim=-1)  # [c]
            picked = logits.gather(1, target[:, None]).squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            if want_h or want_w:
                # d(loss)/d(logits) = softmax - onehot, zero on ignored rows; reuse the logits buffer.
                grad = logits.sub_(lse[:, None]).exp_()
                grad[torch.arange(len(y), device=y.device), target] -= 1.0
                grad.mul_(valid[:, None])
                grad = grad.to(h.dtype)  # matmuls in the model's dtype (or autocast's)
                if want_h:
                    grad_h[s : s + chunk] = grad @ weight
                if want_w:
                    grad_w += (grad.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = 0
) -> torch.Tensor:
    """Sum over valid tokens of CE(hidden @ weight.T, labels); hidden [N, D], labels [N] with
    IGNORE_INDEX for tokens without a target. ``chunk`` tokens at a time (0: ~1 GiB of logits)."""
    if chunk <= 0:
        chunk = max(1, AUTO_CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, labels, chunk)
