"""The HF <-> Megatron mapping and the tensor-parallel sharding rules (no processes, fast)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lora_rl.backends.megatron.bridge import (
    LlamaShape,
    UnsupportedModelError,
    hf_to_megatron,
    megatron_to_hf,
)
from lora_rl.backends.megatron.parallel import Layout
from lora_rl.backends.megatron.sharding import Sharder, kind_of
from lora_rl.config.lora import MegatronPeftConfig
from lora_rl.lora import from_megatron_bridge, match_names, to_megatron_bridge


def _config(**changes) -> LlamaConfig:
    fields = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=40,
                  tie_word_embeddings=False)
    return LlamaConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def hf_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in LlamaForCausalLM(_config()).state_dict().items()}


def _megatron_names(shape: LlamaShape) -> list[str]:
    names = ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight",
             "output_layer.weight"]
    for i in range(shape.num_layers):
        names += [f"decoder.layers.{i}.{m}.weight" for m in (
            "input_layernorm", "self_attention.linear_qkv", "self_attention.linear_proj",
            "pre_mlp_layernorm", "mlp.linear_fc1", "mlp.linear_fc2")]
    return names


def test_weights_round_trip_exactly(hf_state):
    shape = LlamaShape.from_hf(_config())
    megatron = hf_to_megatron(hf_state, _megatron_names(shape), shape)
    assert megatron["decoder.layers.1.self_attention.linear_qkv.weight"].shape == (64, 32)
    assert megatron["decoder.layers.1.mlp.linear_fc1.weight"].shape == (96, 32)
    back = megatron_to_hf(megatron, shape)
    assert back.keys() == hf_state.keys()
    assert all(torch.equal(back[k], hf_state[k]) for k in hf_state)


def test_qkv_is_interleaved_per_query_group(hf_state):
    """Rows of group g: its 2 query heads, then its key head, then its value head."""
    shape = LlamaShape.from_hf(_config())
    qkv = hf_to_megatron(hf_state, ["decoder.layers.0.self_attention.linear_qkv.weight"],
                         shape)["decoder.layers.0.self_attention.linear_qkv.weight"]
    q, k, v = (hf_state[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv")
    d = shape.head_dim
    group1 = qkv[4 * d:]
    assert torch.equal(group1[: 2 * d], q[2 * d:])
    assert torch.equal(group1[2 * d: 3 * d], k[d:])
    assert torch.equal(group1[3 * d:], v[d:])


def test_fused_adapter_shares_a_and_splits_b():
    shape = LlamaShape.from_hf(_config())
    a, b = torch.randn(4, 32), torch.randn(64, 4)
    base = "decoder.layers.1.self_attention.linear_qkv"
    hf = megatron_to_hf({f"{base}.lora_A.weight": a, f"{base}.lora_B.weight": b}, shape)
    names = [f"model.layers.1.self_attn.{p}_proj.lora_A.weight" for p in "qkv"]
    assert all(torch.equal(hf[n], a) for n in names)
    # separate storage: safetensors refuses tensors that share memory
    assert len({hf[n].data_ptr() for n in names}) == 3
    assert hf["model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (16, 4)
    keys = [f"{base}.lora_A.weight", f"{base}.lora_B.weight"]
    again = hf_to_megatron(hf, keys, shape)
    assert torch.equal(again[keys[0]], a) and torch.equal(again[keys[1]], b)


@pytest.mark.parametrize("module,parts", [("self_attention.linear_qkv", "qkv"),
                                          ("mlp.linear_fc1", ("gate", "up"))])
def test_dora_magnitude_splits_and_fuses_like_the_weight_rows(module, parts):
    """A fused module's magnitude is one entry per fused output row: HF's q/k/v (gate/up)
    magnitudes are those rows, as the weight's rows are split."""
    shape = LlamaShape.from_hf(_config())
    base = f"decoder.layers.1.{module}"
    weight = torch.randn(64 if parts == "qkv" else 2 * 48, 32)
    magnitude = torch.linalg.norm(weight, dim=1)
    hf = megatron_to_hf({f"{base}.weight": weight, f"{base}.lora_magnitude_vector": magnitude},
                        shape)
    block = "self_attn" if parts == "qkv" else "mlp"
    for part in parts:
        prefix = f"model.layers.1.{block}.{part}_proj"
        assert torch.equal(hf[f"{prefix}.lora_magnitude_vector"],
                           torch.linalg.norm(hf[f"{prefix}.weight"], dim=1))
    key = f"{base}.lora_magnitude_vector"
    assert torch.equal(hf_to_megatron(hf, [key], shape)[key], magnitude)
    # Megatron-Bridge's DoRALinear keeps it as `adapter.weight_magnitude`
    assert to_megatron_bridge({key: magnitude}).keys() == {f"{base}.adapter.weight_magnitude"}
    assert from_megatron_bridge(to_megatron_bridge({key: magnitude})).keys() == {key}


def test_adapter_with_separate_q_k_v_a_is_rejected_by_name():
    shape = LlamaShape.from_hf(_config())
    hf = {f"model.layers.0.self_attn.{p}_proj.lora_A.weight": torch.randn(4, 32) for p in "qkv"}
    from lora_rl.errors import LoraRlError

    # An expected failure (init_adapter_path with a DTensor/PEFT adapter): one line, no traceback
    with pytest.raises(LoraRlError, match="one LoRA A for all of them.*linear_q, linear_k"):
        hf_to_megatron(hf, ["decoder.layers.0.self_attention.linear_qkv.lora_A.weight"], shape)


def test_canonical_adapters_map_one_to_one_in_both_namings():
    shape = LlamaShape.from_hf(_config())
    ours = {"decoder.layers.0.self_attention.linear_qkv.adapter_k.lora_B.weight":
                torch.randn(16, 4),
            "decoder.layers.0.mlp.linear_fc1.adapter_gate.lora_A.weight": torch.randn(4, 32)}
    hf = megatron_to_hf(ours, shape)
    assert set(hf) == {"model.layers.0.self_attn.k_proj.lora_B.weight",
                       "model.layers.0.mlp.gate_proj.lora_A.weight"}
    assert all(torch.equal(hf_to_megatron(hf, list(ours), shape)[k], v) for k, v in ours.items())
    bridge = to_megatron_bridge(ours)
    # Megatron-Bridge's CanonicalLoRA keeps the per-projection adapters under `.adapter.`
    assert "decoder.layers.0.self_attention.linear_qkv.adapter.adapter_k.linear_out.weight" \
        in bridge
    assert "decoder.layers.0.mlp.linear_fc1.adapter.adapter_gate.linear_in.weight" in bridge
    assert from_megatron_bridge(bridge).keys() == ours.keys()


def test_unsupported_llama_variants_are_named_together():
    config = _config(tie_word_embeddings=True, attention_bias=True,
                     rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(UnsupportedModelError) as caught:
        LlamaShape.from_hf(config)
    message = str(caught.value)
    assert "tied" in message and "biases" in message and "'linear'" in message


def test_layer_wildcards_use_global_indices_and_literal_dots():
    shape = LlamaShape.from_hf(_config(num_hidden_layers=12))
    cfg = MegatronPeftConfig(enabled=True, target_modules=["*.layers.1.*"])
    chosen = match_names(shape.linear_module_names(), cfg)
    assert len(chosen) == 4 and all(".layers.1." in n for n in chosen)


@pytest.mark.parametrize(("name", "kind"), [
    ("embedding.word_embeddings.weight", "vocab_rows"),
    ("output_layer.weight", "vocab_rows"),
    ("output_layer.lora_B.weight", "vocab_rows"),
    ("output_layer.lora_A.weight", "replicated"),
    ("decoder.layers.3.self_attention.linear_qkv.base.weight", "rows"),
    ("decoder.layers.3.self_attention.linear_qkv.lora_A.weight", "replicated"),
    ("decoder.layers.3.self_attention.linear_qkv.lora_B.weight", "rows"),
    ("decoder.layers.3.mlp.linear_fc1.weight", "gated_rows"),
    ("decoder.layers.3.mlp.linear_fc1.lora_B.weight", "gated_rows"),
    ("decoder.layers.3.self_attention.linear_proj.weight", "cols"),
    ("decoder.layers.3.mlp.linear_fc2.lora_A.weight", "cols"),
    ("decoder.layers.3.mlp.linear_fc2.lora_B.weight", "replicated"),
    ("decoder.layers.3.input_layernorm.weight", "replicated"),
    ("decoder.layers.3.self_attention.linear_qkv.adapter_q.lora_A.weight", "replicated"),
    ("decoder.layers.3.self_attention.linear_qkv.adapter_q.lora_B.weight", "rows"),
    ("decoder.layers.3.mlp.linear_fc1.adapter_up.lora_B.weight", "rows"),
    # DoRA's magnitude (one per output row) goes with B
    ("decoder.layers.3.self_attention.linear_qkv.lora_magnitude_vector", "rows"),
    ("decoder.layers.3.mlp.linear_fc1.lora_magnitude_vector", "gated_rows"),
    ("decoder.layers.3.mlp.linear_fc2.lora_magnitude_vector", "replicated"),
])
def test_sharding_kind_follows_the_base_layer(name, kind):
    assert kind_of(name) == kind


def _sharder(tp_rank: int, tp: int, vocab: int = 43) -> Sharder:
    return Sharder(Layout(tp=tp, pp=1, dp=1, tp_rank=tp_rank, pp_rank=0, dp_rank=0), vocab)


def test_gated_rows_give_each_rank_its_gate_and_up_slices():
    whole = torch.arange(8.0)[:, None]  # gate rows 0-3, up rows 4-7
    shard = _sharder(1, 2).shard("decoder.layers.0.mlp.linear_fc1.weight", whole)
    assert shard.flatten().tolist() == [2.0, 3.0, 6.0, 7.0]


def test_vocab_rows_are_padded_to_a_multiple_of_tp_and_trimmed_back():
    whole = torch.randn(43, 8)
    last = _sharder(1, 2).shard("output_layer.weight", whole)
    assert last.shape == (22, 8) and torch.equal(last[-1], torch.zeros(8))
    single = _sharder(0, 1)
    padded = single.shard("output_layer.weight", whole)
    assert torch.equal(single.gather("output_layer.weight", padded), whole)


def test_gather_returns_copies_not_live_views():
    param = torch.ones(3)
    copy = _sharder(0, 1).gather("decoder.final_layernorm.weight", param)
    param.add_(1)
    assert torch.equal(copy, torch.ones(3))


def _moe_config(family: str, **changes):
    from lora_rl.tiny.families import family_config

    return family_config(family, 40, {}, hidden_size=32, intermediate_size=48, **changes)


def _moe_megatron_names(shape: LlamaShape) -> list[str]:
    names = ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight",
             "output_layer.weight"]
    for i in range(shape.num_layers):
        layer = f"decoder.layers.{i}"
        names += [f"{layer}.{m}.weight" for m in (
            "input_layernorm", "self_attention.linear_qkv", "self_attention.linear_proj",
            "pre_mlp_layernorm", "mlp.router")]
        if shape.qk_norm:
            names += [f"{layer}.self_attention.{n}_layernorm.weight" for n in "qk"]
        names += [f"{layer}.mlp.experts.local_experts.{e}.{m}.weight"
                  for e in range(shape.num_experts) for m in ("linear_fc1", "linear_fc2")]
    return names


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_moe_weights_round_trip_exactly_through_per_expert_linears(family):
    from transformers import AutoModelForCausalLM

    config = _moe_config(family)
    torch.manual_seed(0)
    hf_state = AutoModelForCausalLM.from_config(config).state_dict()
    shape = LlamaShape.from_hf(config)
    assert shape.num_experts == 4 and shape.moe_topk == 2
    # Qwen3-MoE's norm_topk_prob false: softmax over all experts, then top-k
    assert shape.moe_pre_softmax == (family == "qwen3_moe")
    megatron = hf_to_megatron(hf_state, _moe_megatron_names(shape), shape)
    fc1 = megatron["decoder.layers.1.mlp.experts.local_experts.2.linear_fc1.weight"]
    assert torch.equal(fc1, hf_state["model.layers.1.mlp.experts.gate_up_proj"][2])
    assert torch.equal(megatron["decoder.layers.0.mlp.router.weight"],
                       hf_state["model.layers.0.mlp.gate.weight"])
    back = megatron_to_hf(megatron, shape)
    assert back.keys() == hf_state.keys()
    assert all(torch.equal(back[k], hf_state[k]) for k in hf_state)


def test_expert_adapters_map_to_peft_target_parameters_layout():
    """Expert e's A is rows e*r.. of the fused A, its B columns e, E+e, ... of the fused B (PEFT
    reshapes B to [out, r, E]): the fused delta's slice e is scale * B_e @ A_e."""
    from lora_rl.lora.experts import ExpertAdapter
    from lora_rl.lora.spec import LoraSpec

    shape = LlamaShape.from_hf(_moe_config("mixtral"))
    rank, experts = 3, shape.num_experts
    base = "decoder.layers.0.mlp.experts.local_experts"
    ours = {}
    for e in range(experts):
        ours[f"{base}.{e}.linear_fc2.lora_A.weight"] = torch.randn(rank, 48)
        ours[f"{base}.{e}.linear_fc2.lora_B.weight"] = torch.randn(32, rank)
    hf = megatron_to_hf(ours, shape)
    assert set(hf) == {"model.layers.0.mlp.experts.down_proj.lora_A.weight",
                       "model.layers.0.mlp.experts.down_proj.lora_B.weight"}
    adapter = ExpertAdapter(torch.zeros(experts, 32, 48), LoraSpec(rank=rank, alpha=2 * rank))
    adapter.lora_A.weight.data.copy_(hf["model.layers.0.mlp.experts.down_proj.lora_A.weight"])
    adapter.lora_B.weight.data.copy_(hf["model.layers.0.mlp.experts.down_proj.lora_B.weight"])
    delta = adapter.delta_weight()
    for e in range(experts):
        expected = 2 * ours[f"{base}.{e}.linear_fc2.lora_B.weight"] \
            @ ours[f"{base}.{e}.linear_fc2.lora_A.weight"]
        assert torch.allclose(delta[e], expected, atol=1e-5)
    again = hf_to_megatron(hf, list(ours), shape)
    assert all(torch.equal(again[k], v) for k, v in ours.items())


def test_moe_linear_names_list_every_expert_with_global_indices():
    shape = LlamaShape.from_hf(_moe_config("mixtral"))
    names = shape.linear_module_names()
    experts = [n for n in names if ".local_experts." in n]
    assert len(experts) == 2 * 4 * 2
    assert "decoder.layers.1.mlp.experts.local_experts.3.linear_fc2" in names
    assert not any("router" in n for n in names)  # the router is not a LoRA target
    chosen = match_names(names, MegatronPeftConfig(enabled=True))  # the default four names
    assert set(experts) <= set(chosen) and "output_layer" not in chosen


@pytest.mark.parametrize(("changes", "expected"), [
    ({"mlp_only_layers": [0]}, "every layer must be a MoE layer"),
    ({"output_router_logits": True}, "load-balancing loss"),
])
def test_unmapped_moe_variants_are_refused_by_name(changes, expected):
    with pytest.raises(UnsupportedModelError, match=expected):
        LlamaShape.from_hf(_moe_config("qwen3_moe", **changes))


def test_canonical_lora_leaves_expert_fc1_whole():
    """An expert's linear_fc1 is one PEFT parameter (experts.gate_up_proj): canonical targets
    never split it; linear_fc2 still reaches every expert."""
    names = LlamaShape.from_hf(_moe_config("mixtral")).linear_module_names()
    cfg = MegatronPeftConfig(enabled=True, target_modules=["linear_q", "linear_fc1_gate",
                                                           "linear_fc2"])
    chosen = match_names(names, cfg)
    assert not [n for n in chosen if ".experts." in n and "linear_fc1" in n]
    assert len([n for n in chosen if n.endswith("local_experts.0.linear_fc2")]) == 2
    assert "decoder.layers.0.self_attention.linear_q" in chosen
