"""One rank of the MoE tensor-parallel check: each family's LoRA'd MoE model, sharded tp=2
(experts split on their intermediate size, expert adapters split to match), against the same
model in one process: logits, adapter gradients and the disabled-adapter logits.

usage: python -m tests.families._experts_tp_worker FAMILY=MODEL_DIR ...
Exits non-zero (a failed check) when a rank disagrees.
"""

from __future__ import annotations

import copy
import sys

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from lora_rl.backends.dtensor.tensor_parallel import apply_tensor_parallel
from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.lora import apply_lora, disable_lora, iter_lora_layers


def _check(model_dir: str, mesh) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)  # the same adapter on both ranks (sharding keeps rank 0's)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    apply_lora(model, DTensorLoraConfig(enabled=True, dim=4, alpha=8))
    experts = 0
    for name, layer in iter_lora_layers(model):
        layer.lora_B.weight.data.normal_(std=0.1)  # non-zero B: every adapter matters
        experts += ".experts." in name
    if experts != 4:
        raise SystemExit(f"expected 4 expert adapters, got {experts}")
    single = copy.deepcopy(model)
    apply_tensor_parallel(model, mesh)
    if not isinstance(model.model.layers[0].mlp.experts.base.gate_up_proj, DTensor):
        raise SystemExit("the experts were not sharded")
    tokens = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(2))
    sharded_logits, single_logits = model(tokens).logits, single(tokens).logits
    gap = (sharded_logits - single_logits).abs().max().item()
    print(f"logit gap {gap:.2e} (largest {single_logits.abs().max().item():.1f})")
    if gap > 1e-5 * single_logits.abs().max().item():
        raise SystemExit(f"logits differ by {gap}")
    sharded_logits.square().mean().backward()
    single_logits.square().mean().backward()
    reference = dict(single.named_parameters())
    for name, param in model.named_parameters():
        if param.requires_grad:
            grad, expected = param.grad.full_tensor(), reference[name].grad
            scale = expected.abs().max().item()
            gap = (grad - expected).abs().max().item()
            if scale == 0 or gap > 1e-4 * scale:
                raise SystemExit(f"{name}: gradient differs by {gap} (largest {scale})")
    with torch.no_grad(), disable_lora(model), disable_lora(single):
        gap = (model(tokens).logits - single(tokens).logits).abs().max().item()
    if gap > 1e-5:
        raise SystemExit(f"disabled-adapter logits differ by {gap}")
    # The experts module alone (a multi-adapter run puts it back between adapters).
    hidden = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    index = torch.tensor([[0, 1], [2, 3], [1, 3], [0, 2], [3, 1]])
    weights = torch.full((5, 2), 0.5)
    with torch.no_grad():
        gap = (model.model.layers[0].mlp.experts.base(hidden, index, weights)
               - single.model.layers[0].mlp.experts.base(hidden, index, weights)).abs().max()
    if gap > 1e-5:
        raise SystemExit(f"unwrapped experts differ by {gap}")


def main(families: dict[str, str]) -> None:
    torch.distributed.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,))
    for family, model_dir in families.items():
        _check(model_dir, mesh)
        print(f"{family}: tp=2 equals one process")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(dict(arg.split("=", 1) for arg in sys.argv[1:]))
