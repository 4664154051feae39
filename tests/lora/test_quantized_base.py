"""LoRA on a frozen quantized base (bitsandbytes 8-bit / NF4, torchao int8 weight-only) on
CPU: forward and backward run, the adapter's gradient flows, and the layer equals the quantized
base plus the low-rank update. DoRA refuses quantized bases. bitsandbytes cases need the
`quant` extra, torchao cases the `torchao` extra; each is skipped where it is not installed."""

import pytest
import torch
from torch import nn

from lora_rl.lora import LoraLinear, LoraSpec

torch.manual_seed(0)
X = torch.randn(3, 64)
SPEC = LoraSpec(rank=4, alpha=8, dtype="float32")


def _reference() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(64, 32, bias=False)


def _bnb(kind: str) -> nn.Module:
    bnb = pytest.importorskip("bitsandbytes")
    weight = _reference().weight.data.clone()
    if kind == "nf4":
        layer = bnb.nn.Linear4bit(64, 32, bias=False, quant_type="nf4",
                                  compute_dtype=torch.float32)
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    else:
        layer = bnb.nn.Linear8bitLt(64, 32, bias=False, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    return layer.to("cpu")


def _torchao_int8() -> nn.Module:
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    holder = nn.Sequential(_reference())
    quantize_(holder, Int8WeightOnlyConfig())
    return holder[0]


BASES = {"bnb-nf4": lambda: _bnb("nf4"), "bnb-int8": lambda: _bnb("int8"),
         "torchao-int8": _torchao_int8}


@pytest.mark.parametrize("kind", list(BASES))
def test_lora_trains_on_a_quantized_base(kind):
    base = BASES[kind]()
    with torch.no_grad():
        quantized = base(X)
        # The quantized base is close to, not equal to, the fp32 layer it came from.
        assert 0 < (quantized - _reference()(X)).abs().max() < 0.5
    layer = LoraLinear(base, SPEC)
    layer.lora_B.weight.data.normal_(std=0.1)
    out = layer(X)
    with torch.no_grad():
        update = (X @ layer.lora_A.weight.t()) @ layer.lora_B.weight.t() * layer.scale
    assert torch.allclose(out, quantized + update, atol=1e-5, rtol=0)
    out.square().mean().backward()
    assert layer.lora_A.weight.grad.abs().sum() > 0 and layer.lora_B.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in layer.base.parameters())


@pytest.mark.parametrize("kind", list(BASES))
def test_dora_refuses_a_quantized_base(kind):
    with pytest.raises(ValueError, match="quantized bases are not supported"):
        LoraLinear(BASES[kind](), LoraSpec(rank=4, alpha=8, dtype="float32", use_dora=True))


@pytest.mark.parametrize("kind", ["bnb-nf4", "bnb-int8"])
def test_merge_into_a_quantized_base_is_refused(kind):
    layer = LoraLinear(BASES[kind](), SPEC)
    with pytest.raises(RuntimeError, match="cannot merge LoRA into a quantized"):
        layer.merge()
    assert not layer.merged
