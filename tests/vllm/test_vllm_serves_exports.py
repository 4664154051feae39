"""vLLM serves what `lora-rl export` writes: the merged HF checkpoint, and the base model plus
the PEFT adapter as a LoRA request, each with greedy outputs equal to transformers' (merged model,
and base + peft.PeftModel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.training.conftest import QUIET, Runner

pytestmark = pytest.mark.vllm

PROMPTS = ["3+4=", "12+9=", "7+7=", "20+5=", "9+15="]
NEW_TOKENS = 6

# Each engine gets its own process: in-process vLLM keeps distributed state until exit.
SERVE = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    model, adapter, prompts, new_tokens = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), \\
        int(sys.argv[4])
    options = {"enable_lora": True, "max_lora_rank": 8, "max_loras": 1} if adapter else {}
    llm = LLM(model=model, dtype="float32", max_model_len=64, enforce_eager=True,
              distributed_executor_backend="uni", kv_cache_memory_bytes=64 << 20,
              generation_config="vllm", seed=0, **options)
    request = LoRARequest("exported", 1, adapter) if adapter else None
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True),
                        lora_request=request, use_tqdm=False)
    print("TOKENS " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
""")


def _served(model: str, adapter: str, prompts: list[list[int]], cwd) -> list[list[int]]:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    done = subprocess.run([sys.executable, "-c", SERVE, model, adapter, json.dumps(prompts),
                           str(NEW_TOKENS)], capture_output=True, text=True, timeout=900,
                          cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("TOKENS "))
    return json.loads(line.removeprefix("TOKENS "))


def _greedy(model, prompts: list[list[int]]) -> list[list[int]]:
    """Plain argmax decoding that keeps going past EOS, as vLLM's ignore_eos does (transformers'
    min_new_tokens would instead forbid EOS)."""
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = list(p)
            for _ in range(NEW_TOKENS):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            out.append(ids[len(p):])
    return out


def test_vllm_serves_the_merged_export_and_the_peft_adapter(tmp_path, vllm_cache):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runner = Runner(tmp_path, vllm_cache)
    runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", "sft.max_num_steps=30",
               "sft.val_period=0", "sft.val_at_start=false", *QUIET)
    for fmt in ("peft", "merged"):
        runner.run("export", "--checkpoint", "results/sft-tiny-dtensor-lora", "--format", fmt,
                   "--out", f"exported-{fmt}")
    adapter_dir, merged_dir = tmp_path / "exported-peft", tmp_path / "exported-merged"
    from lora_rl.model_source import require_local_model_dir

    # The adapter names its base by its local directory (peft and vLLM resolve it).
    base_dir = str(require_local_model_dir(json.loads(
        (adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]))
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    prompts = [tokenizer(text)["input_ids"] for text in PROMPTS]

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with_adapter = _greedy(PeftModel.from_pretrained(base, str(adapter_dir)).eval(), prompts)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert _greedy(merged, prompts) == with_adapter
    base_only = _greedy(AutoModelForCausalLM.from_pretrained(base_dir).eval(), prompts)
    assert base_only != with_adapter  # the adapter matters, so equality below means something

    assert _served(str(merged_dir), "", prompts, tmp_path) == with_adapter
    assert _served(base_dir, str(adapter_dir), prompts, tmp_path) == with_adapter
