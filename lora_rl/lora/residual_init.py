"""PiSSA and OLoRA: inits that take the adapter from the base weight and leave a residual.

Both set A and B from a factorisation of the base weight W and rewrite the base to
W_res = W - scale * B A, so that the model at step 0 is still the base model (PEFT's
`init_lora_weights="pissa"` / `"olora"`, same maths):
- PiSSA (exact SVD, W = V S U^T): B = V_r sqrt(S_r / scale), A = sqrt(S_r / scale) U_r^T, the
  r principal singular directions.
- OLoRA (QR, W = Q R): B = Q_r, A = R_r (the first r rows of R).

The factorisation runs in float32 on the GPU when there is one (exact SVD on a CPU took 14 s
for one 2048 x 2048 matrix on one core of a shared machine), else on the CPU. lora-rl
recomputes the init wherever the model is rebuilt (resume, the generation copy,
generate/eval, export) instead of storing it; what every rebuild needs is only the product
B0 A0 (the residual, the disabled layer, the export's conversion), which does not depend on the
sign choices of the factorisation, so a rebuild on another device agrees to float32 rounding,
and on the same device exactly. PEFT's fast-SVD form `pissa_niter_N` is not offered.
"""

from __future__ import annotations

import torch
from torch import nn

RESIDUAL_INITS: tuple[str, ...] = ("pissa", "olora")


def factor_device(weight: torch.Tensor) -> torch.device:
    """Where to factorise: the weight's accelerator, else the current CUDA device, else CPU."""
    if weight.device.type != "cpu":
        return weight.device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return weight.device


def factorise(weight: torch.Tensor, method: str, rank: int,
              scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [rank, in], B [out, rank]) in float32 on `factor_device(weight)` for `method`
    ("pissa" or "olora")."""
    w = weight.detach().to(device=factor_device(weight), dtype=torch.float32)
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
def residual_factors(weight: torch.Tensor, rank: int, method: str, scale: float,
                     what: str = "the adapted weight"
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(residual W - scale * B A in `weight`'s dtype and device, A, B) for `weight`; nothing is
    written. `what` names the weight in errors (a canonical projection's rows of a fused one)."""
    if weight.is_meta:
        raise ValueError(f"{method} needs the base weights, not meta tensors (load the model "
                         "before applying LoRA)")
    if rank > min(weight.shape):
        raise ValueError(f"{method} needs rank <= min(out, in) = {min(weight.shape)} of "
                         f"{what}, got rank {rank}")
    a, b = factorise(weight, method, rank, scale)
    residual = weight.detach().to(device=a.device, dtype=torch.float32) - scale * (b @ a)
    return residual.to(dtype=weight.dtype, device=weight.device), a, b


@torch.no_grad()
def set_adapter(lora_a: nn.Linear, lora_b: nn.Linear, a: torch.Tensor,
                b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy the init's A and B into the adapter; returns them in its dtype and device (the
    init factors a rebuild and the disabled layer use)."""
    lora_a.weight.copy_(a.to(dtype=lora_a.weight.dtype, device=lora_a.weight.device))
    lora_b.weight.copy_(b.to(dtype=lora_b.weight.dtype, device=lora_b.weight.device))
    return lora_a.weight.detach().clone(), lora_b.weight.detach().clone()


@torch.no_grad()
def residual_init(base: nn.Module, lora_a: nn.Linear, lora_b: nn.Linear, method: str,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Set `lora_a`/`lora_b` from `base.weight` and rewrite the base to the residual, in place;
    returns the (A, B) it set, in the adapters' dtype and device."""
    residual, a, b = residual_factors(base.weight, lora_a.out_features, method, scale)
    base.weight.copy_(residual)
    return set_adapter(lora_a, lora_b, a, b)
