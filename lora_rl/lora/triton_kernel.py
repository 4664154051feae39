"""Fused LoRA forward/backward in Triton: y = scale * (x @ A^T) @ B^T without materialising the
[tokens, rank] intermediate in global memory between the two matmuls, and dx = scale *
(dy @ B) @ A likewise.

Runs on CUDA. On CPU it runs only under TRITON_INTERPRET=1 (tests compare it with the torch
path there); lora-rl never selects it without CUDA. Import is lazy: `import triton` costs time
and must not happen on the validate path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 16
BLOCK_K = 16
BLOCK_N = 16


def _rank_block(rank: int) -> int:
    # tl.arange needs a power of two, tl.dot at least 16.
    return max(16, triton.next_power_of_2(rank))


@triton.jit
def _two_matmuls(X, P, Q, OUT, MID, M, K, N, R, scale,
                 sxm, sxk, spr, spk, sqn, sqr, som, son, smm, smr,
                 BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr):
    """MID = X @ P^T ([M, R]) then OUT = scale * MID @ Q^T ([M, N]), one row block per program.
    Forward: P = A, Q = B. Backward: X = dy, P = B^T, Q = A^T."""
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
        mid += tl.dot(x.to(tl.float32), p.to(tl.float32))
    tl.store(MID + rm[:, None] * smm + rr[None, :] * smr, mid,
             mask=(rm[:, None] < M) & (rr[None, :] < R))
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        q = tl.load(Q + rn[None, :] * sqn + rr[:, None] * sqr,
                    mask=(rn[None, :] < N) & (rr[:, None] < R), other=0.0)
        out = tl.dot(mid, q.to(tl.float32)) * scale
        tl.store(OUT + rm[:, None] * som + rn[None, :] * son, out,
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def _launch(x: torch.Tensor, p: torch.Tensor, q: torch.Tensor, scale: float):
    """(scale * (x @ p^T) @ q^T, x @ p^T) for 2-D x [M, K], p [R, K], q [N, R]."""
    m, k = x.shape
    r, n = p.shape[0], q.shape[0]
    out = torch.empty((m, n), device=x.device, dtype=torch.float32)
    mid = torch.empty((m, r), device=x.device, dtype=torch.float32)
    _two_matmuls[(triton.cdiv(m, BLOCK_M),)](
        x, p, q, out, mid, m, k, n, r, scale,
        x.stride(0), x.stride(1), p.stride(0), p.stride(1), q.stride(0), q.stride(1),
        out.stride(0), out.stride(1), mid.stride(0), mid.stride(1),
        BM=BLOCK_M, BK=BLOCK_K, BN=BLOCK_N, BR=_rank_block(r))
    return out, mid


class _FusedLora(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        y, xa = _launch(x2, a.contiguous(), b.contiguous(), scale)
        ctx.save_for_backward(x2, a, b, xa)
        ctx.scale = scale
        ctx.shape = shape
        return y.to(x.dtype).reshape(*shape[:-1], b.shape[0])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, a, b, xa = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1]).contiguous()
        # dx = scale * (dy @ B) @ A, with g = dy @ B kept for dA.
        dx, g = _launch(dy2, b.t().contiguous(), a.t().contiguous(), ctx.scale)
        da = (g.t() @ x2.float()) * ctx.scale
        db = (dy2.float().t() @ xa) * ctx.scale
        return (dx.to(x2.dtype).reshape(ctx.shape), da.to(a.dtype), db.to(b.dtype), None)


def fused_lora(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * (x @ a^T) @ b^T with a fused Triton forward and backward."""
    return _FusedLora.apply(x, a, b, scale)
