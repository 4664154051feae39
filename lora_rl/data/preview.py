"""`lora-rl preview`: the first training examples exactly as the model sees them (after the
chat template, BOS/EOS and the length limits), split into the runs of tokens that carry the
loss and those that do not."""

from __future__ import annotations

from dataclasses import dataclass

from lora_rl.config.policy import PolicyConfig
from lora_rl.config.sections import DataConfig


@dataclass(frozen=True)
class Shown:
    source: str
    """file:line, with `chosen` / `rejected` for preference pairs."""
    segments: tuple[tuple[str, bool], ...]
    """(decoded text, carries loss) runs, in order."""
    text: str
    trained_text: str


def _segments(tokenizer, ids, mask) -> tuple[tuple[str, bool], ...]:
    runs: list[tuple[list[int], bool]] = []
    for token, trained in zip(ids, mask, strict=True):
        if runs and runs[-1][1] == bool(trained):
            runs[-1][0].append(token)
        else:
            runs.append(([token], bool(trained)))
    return tuple((tokenizer.decode(part), trained) for part, trained in runs)


def preview(policy: PolicyConfig, data: DataConfig, algorithm: str, n: int) -> list[Shown]:
    """The first `n` training samples (both sides of a DPO pair; a GRPO prompt with its
    generation prompt and nothing trained). Raises DataError / ModelSourceError."""
    from lora_rl.data.render import example, prompt_ids
    from lora_rl.data.sources import limits, load_samples, load_tokenizer, renderer

    tokenizer = load_tokenizer(policy, data)
    rend = renderer(policy, data, algorithm, tokenizer)
    lim = limits(policy, data)
    shown = []
    for sample in load_samples(data, algorithm, "train")[:n]:
        parts = []
        if sample.train:
            names = ("",) if len(sample.train) == 1 else ("chosen", "rejected")
            for name, conv in zip(names, sample.train, strict=True):
                made = example(rend, conv, lim, sample.where)
                if made is not None:
                    parts.append((name, list(made.input_ids), list(made.loss_mask)))
        elif (ids := prompt_ids(rend, sample.prompt, lim, sample.where)) is not None:
            parts.append(("prompt", ids, [0] * len(ids)))
        for name, ids, mask in parts:
            trained = [t for t, m in zip(ids, mask, strict=True) if m]
            shown.append(Shown(f"{sample.where} {name}".strip(), _segments(tokenizer, ids, mask),
                               tokenizer.decode(ids), tokenizer.decode(trained)))
    return shown
