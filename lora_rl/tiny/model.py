"""Build the embedded tiny Llama and its tokenizer, locally and deterministically.

The tokenizer is a character-level WordLevel model trained with `tokenizers` on the task corpus.
The model is a 2-layer Llama (hidden 128, 4 heads, 2 KV heads so tp=2 divides both) with
random weights from a fixed seed. Its output layer is initialised wider than Hugging Face's
default (std 0.25 instead of 0.02): LoRA never trains lm_head, and with the default scale the
frozen head caps every logit near 0.2, so no adapter could make a confident prediction.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from lora_rl.model_source import TINY_MODEL_DIRNAME
from lora_rl.tiny.tasks import corpus, write_task_data

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
LM_HEAD_STD = 0.25
TINY_STAMP = "lora_rl_tiny_model.json"
"""Written into every build; `init-model --out DIR --force` replaces only a DIR holding it."""


def build_tokenizer(seed: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tokenizer.train_from_iterator(corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def build_tiny_model(out_dir: Path, seed: int = 0, replace: bool = False) -> Path:
    """Write model, tokenizer and task data to `out_dir` (atomically: temp dir + rename). An
    existing `out_dir` is kept (another process's identical build) unless `replace`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = build_tokenizer(seed)
    tokenizer.save_pretrained(tmp)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        torch.nn.init.normal_(model.lm_head.weight, std=LM_HEAD_STD)
    model.save_pretrained(tmp, safe_serialization=True)
    write_task_data(tmp / "data", seed)
    (tmp / TINY_STAMP).write_text(json.dumps({"seed": seed}) + "\n")
    if replace and out_dir.exists():
        shutil.rmtree(out_dir)
    try:
        os.replace(tmp, out_dir) if not out_dir.exists() else shutil.rmtree(tmp)
    except OSError:
        # Another process finished the same deterministic build first: keep theirs.
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_tiny_model(cache_root: Path) -> Path:
    target = Path(cache_root) / TINY_MODEL_DIRNAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    return build_tiny_model(target)
