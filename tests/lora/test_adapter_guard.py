"""A NaN adapter is refused when loaded (init_adapter_path, merged export), before any weight
is copied."""

import pytest
import torch

from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.lora import apply_lora, load_lora_state_dict, lora_state_dict


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_loading_a_non_finite_adapter_is_refused_before_anything_is_copied(tiny_llama, bad):
    apply_lora(tiny_llama, DTensorLoraConfig(enabled=True, dim=4, alpha=8))
    before = {k: v.clone() for k, v in lora_state_dict(tiny_llama).items()}
    state = {k: v.clone() + 1 for k, v in before.items()}
    first = sorted(state)[0]
    state[first][0, 0] = bad
    with pytest.raises(ValueError, match=f"{first} holds NaN or inf"):
        load_lora_state_dict(tiny_llama, state)
    assert all(torch.equal(v, before[k]) for k, v in lora_state_dict(tiny_llama).items())
    state[first][0, 0] = 0.0
    load_lora_state_dict(tiny_llama, state)
    assert torch.equal(lora_state_dict(tiny_llama)[first], state[first])
