"""The fused Triton LoRA kernel equals the torch path (forward and backward), run by Triton's
interpreter on the CPU. TRITON_INTERPRET must be set before triton is imported, so the check
runs in a subprocess."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

CHECK = textwrap.dedent("""
    import torch
    from lora_rl.lora.triton_kernel import fused_lora
    torch.manual_seed(0)
    for tokens, fan_in, fan_out, rank in [(16, 32, 24, 4), (20, 40, 17, 8), (3, 16, 16, 16)]:
        x = torch.randn(tokens, fan_in, requires_grad=True)
        a = torch.randn(rank, fan_in, requires_grad=True)
        b = torch.randn(fan_out, rank, requires_grad=True)
        dy = torch.randn(tokens, fan_out)
        y = fused_lora(x, a, b, 2.0)
        y.backward(dy)
        grads = [t.grad.clone() for t in (x, a, b)]
        for t in (x, a, b):
            t.grad = None
        ref = (x @ a.t()) @ b.t() * 2.0
        ref.backward(dy)
        assert (y - ref).abs().max() < 1e-4, (y - ref).abs().max()
        for got, t in zip(grads, (x, a, b)):
            assert (got - t.grad).abs().max() < 1e-4, (got - t.grad).abs().max()
    print("ok")
""")


def test_fused_kernel_matches_torch_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
