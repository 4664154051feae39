"""`lora-rl eval`: the run's held-out accuracy, recomputed from a checkpoint on plain
transformers — the same records, prompt format, greedy decoding and exact-match comparison as
the run's `val_accuracy`."""

from __future__ import annotations

from lora_rl.config.recipe import RecipeConfig
from lora_rl.errors import LoraRlError
from lora_rl.interop.trained_policy import TrainedPolicy
from lora_rl.rewards import normalise


class EvalError(LoraRlError, ValueError):
    pass


def held_out_accuracy(cfg: RecipeConfig, policy: TrainedPolicy) -> tuple[float, int]:
    """(accuracy, records evaluated) on the recipe's validation split."""
    from lora_rl.data.sources import limits, load_samples, prompts

    algo = cfg.algorithm_config
    if cfg.algorithm == "dpo":
        raise EvalError("eval measures generation accuracy (SFT and GRPO recipes); a DPO run's "
                        "validation is preference accuracy, logged as val_accuracy during the run")
    items = prompts(policy.renderer, load_samples(cfg.data, cfg.algorithm, "val"),
                    limits(cfg.policy, cfg.data))
    if cfg.algorithm == "sft" and algo.val_batches is not None:
        items = items[:algo.val_batches * algo.val_global_batch_size]
    elif cfg.algorithm == "grpo":
        items = items[:algo.max_val_samples]
    if not items:
        raise EvalError("the recipe has no validation records (data.validation or "
                        "data.val_data_path)")
    limit = max(policy.renderer.answer_length(s.answer) for s, _ in items) + 2
    answers = policy.answer_ids([ids for _, ids in items], limit, temperature=0.0)
    correct = sum(normalise(policy.tokenizer.decode(ids, skip_special_tokens=True))
                  == normalise(sample.answer) for (sample, _), ids in zip(items, answers,
                                                                          strict=True))
    return correct / len(items), len(items)
