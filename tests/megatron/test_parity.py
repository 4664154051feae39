"""Real multi-process gloo runs of the Megatron backend against single-process Hugging Face.

Each layout runs `_worker.py` once per session (see conftest). The reference is HF Llama + the
LoRA core with the fused Megatron parametrisation (q/k/v share one A, gate/up share one A),
starting from the adapter the Megatron run started with, trained by torch AdamW with clipping.
"""

import pytest
import torch

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
from lora_rl.lora import (
    LoraLinear,
    apply_lora,
    load_lora_state_dict,
    lora_spec_from_config,
    lora_state_dict,
)
from tests.megatron._worker import fixed_batch
from tests.megatron.conftest import MEGATRON_MISSING, megatron_available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not megatron_available(), reason=MEGATRON_MISSING)]

# megatron_run's layout arguments: tp, pp, world (processes), recompute (activation
# checkpointing), sp (sequence parallelism), ep (expert parallelism), model.
LAYOUTS = {"tp1": dict(tp=1, pp=1, world=1), "tp2": dict(tp=2, pp=1, world=2),
           "pp2": dict(tp=1, pp=2, world=2), "tp2-dp2": dict(tp=2, pp=1, world=4),
           "tp2-pp2-sp-recompute": dict(tp=2, pp=2, world=4, recompute=True, sp=True)}
# The tiny Mixtral (MoE layers, SequentialMLP experts, LoRA on every expert); with tensor
# parallelism under sequence parallelism, as megatron-core requires.
MOE_LAYOUTS = {name: {**layout, "model": "moe"} for name, layout in {
    "moe-tp1": dict(tp=1, pp=1, world=1), "moe-dp2": dict(tp=1, pp=1, world=2),
    "moe-pp2": dict(tp=1, pp=2, world=2), "moe-ep2": dict(tp=1, pp=1, world=2, ep=2),
    "moe-tp2-sp": dict(tp=2, pp=1, world=2, sp=True),
    "moe-tp2-ep2-sp": dict(tp=2, pp=1, world=2, ep=2, sp=True)}.items()}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def _hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _logprobs(model, batch):
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]


def _fused_lora(model, **variant):
    """LoRA on every decoder linear, with one A module shared by q/k/v and by gate/up; on a
    MoE model, lora-rl's per-expert adapters on the fused expert parameters (PEFT's layout,
    whose gate_up_proj adapter has one A for gate and up, as Megatron's expert linear_fc1).
    `variant`: further MegatronPeftConfig fields (`use_dora=True`)."""
    spec = lora_spec_from_config(MegatronPeftConfig(enabled=True, dim=4, alpha=8, **variant))
    moe = hasattr(model.model.layers[0].mlp, "experts")
    model.requires_grad_(False)
    if moe:
        apply_lora(model, DTensorLoraConfig(enabled=True, match_all_linear=False, dim=4, alpha=8,
                                            target_modules=["*.mlp.experts.*"]))
    for layer in model.model.layers:
        blocks = ((layer.self_attn, ATTENTION),) if moe \
            else ((layer.self_attn, ATTENTION), (layer.mlp, MLP))
        for block, names in blocks:
            for name in names:
                setattr(block, name, LoraLinear(getattr(block, name), spec))
        attention = layer.self_attn
        attention.k_proj.lora_A = attention.v_proj.lora_A = attention.q_proj.lora_A
        if not moe:
            layer.mlp.up_proj.lora_A = layer.mlp.gate_proj.lora_A
    return model


def _train_five_steps(model, adapter0, b_lr_ratio: float = 1.0):
    """Five single-process SFT steps (AdamW, clipping) from `adapter0`; `b_lr_ratio`: B and
    DoRA magnitudes train at that multiple of the learning rate (LoRA+, PEFT's groups)."""
    load_lora_state_dict(model, adapter0)
    return {**five_sft_steps(model, b_lr_ratio), "adapter": lora_state_dict(model)}


def five_sft_steps(model, b_lr_ratio: float = 1.0) -> dict[str, list[float]]:
    """The five steps of `_train_five_steps` on `model` (lora-rl's layers or a PEFT model)
    from its current adapter: losses and gradient norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    fast = [p for n, p in model.named_parameters()
            if p.requires_grad and (".lora_B." in n or n.endswith("lora_magnitude_vector"))]
    groups = [{"params": [p for p in params if all(p is not f for f in fast)], "lr": 1e-2},
              {"params": fast, "lr": 1e-2 * b_lr_ratio}]
    optimizer = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.01)
    batch = fixed_batch(model.config.vocab_size)
    tokens = batch.target_mask.sum()
    losses, norms = [], []
    model.train()
    for _ in range(5):
        loss = -(_logprobs(model, batch) * batch.target_mask).sum() / tokens
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return {"losses": losses, "grad_norms": norms}


@pytest.fixture(scope="module")
def hf_reference(tiny_llama_dir, megatron_run):
    return _train_five_steps(_fused_lora(_hf_model(tiny_llama_dir)),
                             megatron_run(**LAYOUTS["tp1"])["adapter0"])


@pytest.fixture(scope="module")
def hf_moe_reference(tiny_moe_dir, megatron_run):
    return _train_five_steps(_fused_lora(_hf_model(tiny_moe_dir)),
                             megatron_run(**MOE_LAYOUTS["moe-tp1"])["adapter0"])


def _assert_same_training(run, reference):
    losses, expected = torch.tensor(run["losses"]), torch.tensor(reference["losses"])
    assert (losses - expected).abs().max() < 1e-4
    norms, expected = torch.tensor(run["grad_norms"]), torch.tensor(reference["grad_norms"])
    assert (norms - expected).abs().max() < 1e-3
    # Adam moves each weight by ~lr whatever its gradient's size, so float32 rounding in a
    # near-zero gradient entry can show as a few percent of lr (1e-2) in the weights.
    assert run["adapter5"].keys() == reference["adapter"].keys()
    for key, value in reference["adapter"].items():
        assert (run["adapter5"][key] - value).abs().max() < 1e-3, key


@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2", "tp2-pp2-sp-recompute", "moe-tp1",
                                    "moe-ep2", "moe-tp2-sp"])
def test_imported_gptmodel_gives_the_hf_logits(layout, megatron_run, tiny_llama_dir,
                                               tiny_moe_dir):
    """Dense Llama, and Mixtral's MoE layers (router + per-expert linears sliced from the
    fused 3-D expert parameters): the Megatron forward is HF's."""
    moe = layout.startswith("moe")
    model_dir = tiny_moe_dir if moe else tiny_llama_dir
    hf = _hf_model(model_dir)
    batch = fixed_batch(hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    got = megatron_run(**{**LAYOUTS, **MOE_LAYOUTS}[layout])["logits"]
    real = batch.attention_mask.bool()  # HF and Megatron may differ on padding positions
    assert got.shape == expected.shape
    assert (got - expected)[real].abs().max() < 1e-5


def test_initial_adapter_does_not_depend_on_the_layout(megatron_run):
    reference = megatron_run(**LAYOUTS["tp1"])["adapter0"]
    for layout in ("tp2", "pp2"):
        adapter = megatron_run(**LAYOUTS[layout])["adapter0"]
        assert adapter.keys() == reference.keys()
        assert all(torch.equal(adapter[k], reference[k]) for k in reference)
    assert torch.equal(reference["model.layers.1.self_attn.q_proj.lora_A.weight"],
                       reference["model.layers.1.self_attn.v_proj.lora_A.weight"])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_first_five_sft_losses_match_single_process_hf_lora(layout, megatron_run, hf_reference):
    _assert_same_training(megatron_run(**LAYOUTS[layout]), hf_reference)


@pytest.mark.parametrize("layout", list(MOE_LAYOUTS))
def test_moe_expert_lora_trains_like_hf_with_per_expert_adapters(layout, megatron_run,
                                                                 hf_moe_reference, tiny_moe_dir):
    """LoRA on every expert's linear_fc1/linear_fc2 (and attention): the five losses, gradient
    norms and adapters of single-process HF with lora-rl's expert adapters (PEFT's
    target_parameters layout); the adapter comes back in that layout; the router is frozen."""
    run = megatron_run(**MOE_LAYOUTS[layout])
    _assert_same_training(run, hf_moe_reference)
    one_rank = megatron_run(**MOE_LAYOUTS["moe-tp1"])["losses"]
    assert max(abs(a - b) for a, b in zip(run["losses"], one_rank, strict=True)) < 1e-4
    experts, rank, hidden, ffn = 4, 4, 64, 128
    a = run["adapter5"]["model.layers.1.mlp.experts.gate_up_proj.lora_A.weight"]
    b = run["adapter5"]["model.layers.1.mlp.experts.gate_up_proj.lora_B.weight"]
    assert a.shape == (experts * rank, hidden) and b.shape == (2 * ffn, rank * experts)
    assert not any(".mlp.gate." in k for k in run["adapter5"])  # the router has no adapter
    per_layer = (rank * hidden + (hidden + 2 * 32) * rank + rank * hidden + hidden * rank
                 + experts * (rank * hidden + 2 * ffn * rank + rank * ffn + hidden * rank))
    assert run["report"]["trainable_params"] == 2 * per_layer
    assert run["report"]["lora_modules"] == 2 * (2 + 2 * experts)
    real = fixed_batch(43).attention_mask[:, 1:].bool()
    assert (run["generation_logprobs"] - run["logprobs"])[real].abs().max() < 1e-5
    assert run["resumed_losses"] == run["losses"][3:]
    # `explain --model` (torch-free, from config.json) predicts the adapters the run built.
    from lora_rl.config.model_facts import read_model_facts
    from lora_rl.explain import adapted_group_rows
    from tests.megatron._worker import recipe

    rows = dict(adapted_group_rows(recipe(str(tiny_moe_dir), 1, 1, False, 1, []),
                                   read_model_facts(tiny_moe_dir)))
    assert rows["trainable (LoRA)"] == f"{run['report']['trainable_params']:,} parameters"
    assert rows["adapted: experts"].startswith(f"{2 * 2 * experts} expert linear(s)")
    assert rows["adapted: router"] == rows["adapted: mlp"] == "none"


# Canonical LoRA, with k and up left out: their slices of the fused outputs get no update.
CANONICAL = ("linear_q", "linear_v", "linear_proj", "linear_fc1_gate", "linear_fc2")
CANONICAL_HF = ("q_proj", "v_proj", "o_proj", "gate_proj", "down_proj")


@pytest.mark.parametrize("layout", ["tp1", "tp2", "tp2-pp2-sp-recompute"])
def test_canonical_lora_trains_like_hf_lora_with_one_adapter_per_projection(
        layout, megatron_run, tiny_llama_dir):
    """Canonical targets on the fused linear_qkv/linear_fc1 are PEFT's per-projection LoRA:
    same five losses, gradient norms and adapters as plain LoRA on the HF modules."""
    run = megatron_run(**LAYOUTS[layout], targets=CANONICAL)
    adapter0 = run["adapter0"]
    assert {k.split(".")[-3] for k in adapter0} == set(CANONICAL_HF)
    q, v = (adapter0[f"model.layers.1.self_attn.{m}.lora_A.weight"] for m in ("q_proj", "v_proj"))
    assert not torch.equal(q, v)  # one A each
    model = _hf_model(tiny_llama_dir)
    apply_lora(model, DTensorLoraConfig(enabled=True, match_all_linear=False, dim=4, alpha=8,
                                        target_modules=list(CANONICAL_HF)))
    _assert_same_training(run, _train_five_steps(model, adapter0))
    # The HF generation copy carries the same per-projection adapters.
    real = fixed_batch(128).attention_mask[:, 1:].bool()
    assert (run["generation_logprobs"] - run["logprobs"])[real].abs().max() < 1e-5
    rank, hidden, ffn, kv = 4, 64, 128, 32
    per_layer = (rank * hidden + hidden * rank) * 2 + (rank * hidden + kv * rank) \
        + (rank * hidden + ffn * rank) + (rank * ffn + hidden * rank)  # q, o; v; gate; down
    assert run["report"]["trainable_params"] == 4 * per_layer
    assert run["report"]["lora_modules"] == 4 * len(CANONICAL)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_restoring_a_checkpoint_replays_the_same_steps(layout, megatron_run):
    run = megatron_run(**LAYOUTS[layout])
    assert run["resumed_losses"] == run["losses"][3:]


@pytest.mark.parametrize("layout", ["tp2", "tp2-pp2-sp-recompute"])
def test_generation_copy_and_reference_policy(layout, megatron_run, tiny_llama_dir):
    run = megatron_run(**LAYOUTS[layout])
    batch = fixed_batch(128)
    real = batch.attention_mask[:, 1:].bool()
    assert (run["generation_logprobs"] - run["logprobs"])[real].abs().max() < 1e-5
    with torch.no_grad():
        base = _logprobs(_hf_model(tiny_llama_dir), batch)
    assert (run["reference_logprobs"] - base)[real].abs().max() < 1e-5
    assert (run["logprobs"] - base)[real].abs().max() > 1e-3  # the adapter did train


def test_trainable_report_counts_the_whole_model(megatron_run, tiny_llama_dir):
    total = sum(p.numel() for p in _hf_model(tiny_llama_dir).parameters())
    rank, hidden, ffn, kv = 4, 64, 128, 32
    per_layer = (rank * hidden + (hidden + 2 * kv) * rank      # linear_qkv
                 + rank * hidden + hidden * rank                 # linear_proj
                 + rank * hidden + 2 * ffn * rank                # linear_fc1
                 + rank * ffn + hidden * rank)                   # linear_fc2
    for layout in ("tp1", "tp2-pp2-sp-recompute"):
        report = megatron_run(**LAYOUTS[layout])["report"]
        assert report["trainable_params"] == 4 * per_layer
        assert report["total_params"] == total + 4 * per_layer
        assert report["lora_scale"] == 2.0 and report["lora_modules"] == 16


def test_hf_reference_uses_the_fused_parametrisation():
    """Guard for the reference itself: one A per fused module, so AdamW sees one parameter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, vocab_size=8)
    model = _fused_lora(LlamaForCausalLM(config))
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.lora_A is attention.k_proj.lora_A is attention.v_proj.lora_A
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 11  # q/k/v: 3 B + 1 A; gate/up: 2 B + 1 A; o, down: A + B each
