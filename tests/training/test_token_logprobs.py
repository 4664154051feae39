"""The log-prob kernel equals log_softmax + gather, values and gradients."""

import pytest
import torch

from lora_rl.backends.token_logprobs import token_logprobs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_log_softmax_gather_and_its_gradient(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 50, generator=generator) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (3, 7), generator=generator)
    weights = torch.randn(3, 7, generator=generator).to(dtype)

    ours = token_logprobs(logits, targets)
    (ours * weights).sum().backward()
    ours_grad, logits.grad = logits.grad, None

    reference = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    (reference * weights).sum().backward()

    # fp32: the two orders of summation differ by rounding (~1 ulp of log-probs near -20).
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, reference, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(ours_grad, logits.grad, rtol=tolerance, atol=tolerance)


def test_gradcheck_in_float64():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randint(0, 9, (4,), generator=generator)
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, targets), (logits,))
