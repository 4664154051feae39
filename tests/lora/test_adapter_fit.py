"""One check, one tolerance, for whether a PEFT adapter fits the recipe's LoRA: validate's LR613
and both backends' init_adapter_path loading use `adapter_fit_problem`."""

from __future__ import annotations

import math

import pytest

from lora_rl.interop.adapter_fit import adapter_fit_problem, lora_scale


def test_lora_scale_by_hand():
    assert lora_scale(8, 16.0, False) == 2.0
    assert lora_scale(16, 16.0, True) == 4.0
    assert lora_scale(2, 1.0, True) == pytest.approx(1 / math.sqrt(2))


@pytest.mark.parametrize(("config", "rank", "scale", "says"), [
    ({"r": 8, "lora_alpha": 16}, 8, 2.0, None),
    ({"r": 8, "lora_alpha": 16.0, "use_rslora": False}, 8, 2.0, None),
    # rsLoRA alpha 16 on r=16 scales by 4, as plain LoRA with alpha 64 does: the same adapter
    ({"r": 16, "lora_alpha": 16, "use_rslora": True}, 16, lora_scale(16, 64.0, False), None),
    # a JSON round trip of alpha / sqrt(r) is within the tolerance
    ({"r": 3, "lora_alpha": 5.000000000001, "use_rslora": True}, 3, lora_scale(3, 5.0, True),
     None),
    ({"r": 4, "lora_alpha": 16}, 8, 2.0, "adapter rank r=4, the recipe's dim=8"),
    ({"r": True, "lora_alpha": 16}, 1, 16.0, "adapter rank r=True"),
    ({"lora_alpha": 16}, 8, 2.0, "adapter rank r=None"),
    ({"r": 8, "lora_alpha": "16"}, 8, 2.0, "lora_alpha='16' is not a positive number"),
    ({"r": 8, "lora_alpha": 0}, 8, 2.0, "lora_alpha=0 is not a positive number"),
    ({"r": 8, "lora_alpha": 16, "use_rslora": True}, 8, 2.0,
     "lora_alpha=16 with use_rslora true scales by 5.65685, the recipe's LoRA by 2"),
    ({"r": 8, "lora_alpha": 16.001}, 8, 2.0, "scales by 2.0001"),
])
def test_adapter_fit_problem(config, rank, scale, says):
    problem = adapter_fit_problem(config, rank, scale)
    if says is None:
        assert problem is None
    else:
        assert problem is not None and says in problem
