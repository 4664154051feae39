"""Fused LoRA adapter branch in Triton: y = scale * (x @ A^T) @ B^T in one kernel launch, each
program keeping its [rows, rank] intermediate on chip between the two matmuls; the backward's
dx = scale * (dy @ B) @ A is the same kernel with the roles swapped.

Only imported when the Triton path runs (`kernel_select.triton_path_active`): on CUDA. On CPU it
runs solely under TRITON_INTERPRET=1, which the tests use to compare it with the torch path.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl

BLOCK_M = 32
BLOCK_K = 32
BLOCK_N = 32


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _rank_block(rank: int) -> int:
    # tl.arange needs a power of two, tl.dot at least 16 along every dimension.
    return max(16, triton.next_power_of_2(rank))


@triton.jit
def _two_matmuls(X, P, Q, OUT, MID, M, K, N, R, scale,
                 sxm, sxk, spr, spk, sqn, sqr, som, son, smm, smr,
                 BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """MID = X @ P^T ([M, R], fp32) then OUT = scale * MID @ Q^T ([M, N]), one row block per
    program. Forward: X = x, P = A, Q = B. Backward: X = dy, P = B^T, Q = A^T."""
    pid = tl.program_id(0)
    rm = pid * BM + tl.arange(0, BM)
    rr = tl.arange(0, BR)
    mid = tl.zeros((BM, BR), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(X + rm[:, None] * sxm + rk[None, :] * sxk,
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        p = tl.load(P + rr[None, :] * spr + rk[:, None] * spk,
                    mask=(rr[None, :] < R) & (rk[:, None] < K), other=0.0)
        if UPCAST:
            mid += tl.dot(x.to(tl.float32), p.to(tl.float32), input_precision=PRECISION)
        else:
            mid += tl.dot(x, p)
    tl.store(MID + rm[:, None] * smm + rr[None, :] * smr, mid,
             mask=(rm[:, None] < M) & (rr[None, :] < R))
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        q = tl.load(Q + rn[None, :] * sqn + rr[:, None] * sqr,
                    mask=(rn[None, :] < N) & (rr[:, None] < R), other=0.0)
        if UPCAST:
            out = tl.dot(mid, q.to(tl.float32), input_precision=PRECISION) * scale
        else:
            # Low-precision inputs: round the intermediate like torch would, use tensor cores.
            out = tl.dot(mid.to(q.dtype), q) * scale
        tl.store(OUT + rm[:, None] * som + rn[None, :] * son, out,
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def _launch(x: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale * (x @ p^T) @ q^T, x @ p^T), both fp32, for 2-D x [M, K], p [R, K], q [N, R]."""
    m, k = x.shape
    r, n = p.shape[0], q.shape[0]
    out = torch.empty((m, n), device=x.device, dtype=torch.float32)
    mid = torch.empty((m, r), device=x.device, dtype=torch.float32)
    # bf16 tl.dot is wrong in the interpreter, and fp32 inputs must not silently drop to tf32.
    upcast = _interpreting() or x.dtype == torch.float32
    _two_matmuls[(triton.cdiv(m, BLOCK_M),)](
        x, p, q, out, mid, m, k, n, r, scale,
        x.stride(0), x.stride(1), p.stride(0), p.stride(1), q.stride(0), q.stride(1),
        out.stride(0), out.stride(1), mid.stride(0), mid.stride(1),
        BM=BLOCK_M, BK=BLOCK_K, BN=BLOCK_N, BR=_rank_block(r), UPCAST=upcast,
        PRECISION="ieee")
    return out, mid


class _FusedLora(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                scale: float) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        y, xa = _launch(x2, a.contiguous(), b.contiguous(), scale)
        ctx.save_for_backward(x2, a, b, xa)
        ctx.scale = scale
        ctx.shape = shape
        return y.to(x.dtype).reshape(*shape[:-1], b.shape[0])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):
        x2, a, b, xa = ctx.saved_tensors
        need_x, need_a, need_b, _ = ctx.needs_input_grad
        dy2 = dy.reshape(-1, dy.shape[-1]).contiguous()
        # dx = scale * (dy @ B) @ A, keeping g = dy @ B for dA.
        dx, g = _launch(dy2, b.t().contiguous(), a.t().contiguous(), ctx.scale)
        da = ((g.t() @ x2.float()) * ctx.scale).to(a.dtype) if need_a else None
        db = ((dy2.float().t() @ xa) * ctx.scale).to(b.dtype) if need_b else None
        dx = dx.to(x2.dtype).reshape(ctx.shape) if need_x else None
        return dx, da, db, None


def fused_lora(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * (x @ a^T) @ b^T with a fused Triton forward and backward; x is [..., in]."""
    return _FusedLora.apply(x, a, b, scale)
