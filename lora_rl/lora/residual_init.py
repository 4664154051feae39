"""PiSSA and OLoRA: inits that take the adapter from the base weight and leave a residual.

Both set A and B from a factorisation of the base weight W and rewrite the base to
W_res = W - scale * B A, so that the model at step 0 is still the base model (PEFT's
`init_lora_weights="pissa"` / `"olora"`, same maths):
- PiSSA (exact SVD, W = V S U^T): B = V_r sqrt(S_r / scale), A = sqrt(S_r / scale) U_r^T, the
  r principal singular directions.
- OLoRA (QR, W = Q R): B = Q_r, A = R_r (the first r rows of R).

The factorisation always runs on the CPU in float32, whatever device the weight is on: the
same weight then gives bit-identical factors wherever the model is rebuilt (resume, the
generation copy, export), which is what lets lora-rl recompute the init instead of storing it.
PEFT's fast-SVD form `pissa_niter_N` is not offered.
"""

from __future__ import annotations

import torch
from torch import nn

RESIDUAL_INITS: tuple[str, ...] = ("pissa", "olora")


def factorise(weight: torch.Tensor, method: str, rank: int,
              scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [rank, in], B [out, rank]) in float32 on the CPU for `method` ("pissa" or "olora")."""
    w = weight.detach().to(device="cpu", dtype=torch.float32)
    if method == "pissa":
        v, s, uh = torch.linalg.svd(w, full_matrices=False)
        s_r = s[:rank] / scale
        root = torch.diag(torch.sqrt(s_r))
        return (root @ uh[:rank]).contiguous(), (v[:, :rank] @ root).contiguous()
    if method == "olora":
        q, r = torch.linalg.qr(w)
        return r[:rank].contiguous(), q[:, :rank].contiguous()
    raise ValueError(f"unknown residual init {method!r}; expected one of "
                     f"{', '.join(RESIDUAL_INITS)}")


@torch.no_grad()
def residual_init(base: nn.Module, lora_a: nn.Linear, lora_b: nn.Linear, method: str,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Set `lora_a`/`lora_b` from `base.weight` and rewrite the base to the residual, in place;
    returns the (A, B) it set, in the adapters' dtype and device."""
    weight = base.weight
    rank = lora_a.out_features
    if rank > min(weight.shape):
        raise ValueError(f"{method} needs rank <= min(out, in) = {min(weight.shape)} of the "
                         f"adapted weight, got rank {rank}")
    a, b = factorise(weight, method, rank, scale)
    residual = weight.detach().to(device="cpu", dtype=torch.float32) - scale * (b @ a)
    weight.copy_(residual.to(dtype=weight.dtype, device=weight.device))
    lora_a.weight.copy_(a.to(lora_a.weight.dtype))
    lora_b.weight.copy_(b.to(lora_b.weight.dtype))
    return lora_a.weight.detach().clone(), lora_b.weight.detach().clone()
