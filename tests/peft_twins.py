"""lora-rl's LoRA layers next to PEFT's on the same base: the reference comparison that the
family and quantized-base parity tests share."""

from __future__ import annotations

import torch
from torch import nn

from lora_rl.lora import iter_lora_layers


def pair_with_peft(ours: nn.Module, theirs: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(our layer, PEFT's layer) for every adapted module, PEFT's given our A and a random
    non-zero B (so the adapter changes the output and both matrices get gradients)."""
    twins = dict(theirs.named_modules())
    torch.manual_seed(1)
    pairs = []
    for name, layer in iter_lora_layers(ours):
        layer.lora_B.weight.data.normal_()
        twin = twins[f"base_model.model.{name}"]
        twin.lora_A["default"].weight.data.copy_(layer.lora_A.weight)
        twin.lora_B["default"].weight.data.copy_(layer.lora_B.weight)
        pairs.append((layer, twin))
    return pairs


def assert_logits_and_lora_grads_equal(ours: nn.Module, theirs: nn.Module,
                                       pairs: list[tuple[nn.Module, nn.Module]],
                                       tokens: torch.Tensor, atol: float = 1e-5) -> None:
    ours_logits, peft_logits = ours(tokens).logits, theirs(tokens).logits
    assert torch.allclose(ours_logits, peft_logits, atol=atol, rtol=0)
    ours_logits.square().mean().backward()
    peft_logits.square().mean().backward()
    for layer, twin in pairs:
        for part in ("lora_A", "lora_B"):
            grad = getattr(layer, part).weight.grad
            assert grad is not None and grad.abs().sum() > 0
            assert torch.allclose(grad, getattr(twin, part)["default"].weight.grad,
                                  atol=atol, rtol=0)
