"""`lora-rl eval`: the run's held-out accuracy, recomputed from a checkpoint on plain
transformers — the same records, prompt format, greedy decoding and exact-match comparison as
the run's `val_accuracy`."""

from __future__ import annotations

from lora_rl.config.recipe import RecipeConfig
from lora_rl.interop.trained_policy import TrainedPolicy
from lora_rl.rewards import normalise


class EvalError(ValueError):
    pass


def held_out_accuracy(cfg: RecipeConfig, policy: TrainedPolicy) -> tuple[float, int]:
    """(accuracy, records evaluated) on the recipe's validation split."""
    from lora_rl.data.sources import load_records

    data, algo = cfg.data, cfg.algorithm_config
    if cfg.algorithm == "dpo":
        raise EvalError("eval measures generation accuracy (SFT and GRPO recipes); a DPO run's "
                        "validation is preference accuracy, logged as val_accuracy during the run")
    answer_key = data.response_key if cfg.algorithm == "sft" else data.answer_key
    records = load_records(cfg, "val", (data.prompt_key, answer_key))
    if cfg.algorithm == "sft" and algo.val_batches is not None:
        records = records[:algo.val_batches * algo.val_global_batch_size]
    elif cfg.algorithm == "grpo":
        records = records[:algo.max_val_samples]
    if not records:
        raise EvalError("the recipe has no validation records (data.val_data_path)")
    answers = [r.text(answer_key) for r in records]
    limit = max(len(policy.format.response_ids(a)) for a in answers) + 2
    prompts = [r.text(data.prompt_key) for r in records]
    correct = 0
    for ids, answer in zip(policy.answer_ids(prompts, limit, temperature=0.0), answers,
                           strict=True):
        text = policy.tokenizer.decode(ids, skip_special_tokens=True)
        correct += normalise(text) == normalise(answer)
    return correct / len(records), len(records)
