"""Tied input/output embeddings (SmolLM2, Gemma, small Qwen2): the checkpointed adapter holds
only the LoRA tensors (torch's ignore_frozen_params misses a tied weight's second name), and
the merged export keeps the tie."""

from __future__ import annotations

from safetensors.torch import load_file

from lora_rl.tiny.families import build_family_model
from tests.training.conftest import QUIET, Runner


def test_tied_model_checkpoint_and_merged_export(tiny_cache, tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir = build_family_model("llama", tmp_path / "tied", tie_word_embeddings=True)
    runner = Runner(tmp_path / "run", tiny_cache)
    runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", f"policy.model_name={model_dir}",
               "sft.max_num_steps=2", "sft.val_period=0", "sft.val_at_start=false",
               "checkpointing.save_period=2", *QUIET)
    ckpt = runner.workdir / "results/sft-tiny-dtensor-lora/step_2"
    adapter = load_file(str(ckpt / "adapter.safetensors"))
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter), sorted(adapter)
    runner.run("export", "--checkpoint", str(ckpt), "--format", "merged", "--out", "merged")
    merged = AutoModelForCausalLM.from_pretrained(runner.workdir / "merged")
    assert merged.config.tie_word_embeddings
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
