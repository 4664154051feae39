"""The native generator: its log-probs are the model's teacher-forced log-probs of the sampled
tokens (what GRPO's gen_kl_error compares), with left padding for prompts of unequal length,
and the prompt pass computes logits for the last position only."""


import torch

from lora_rl.generation.torch_generator import SamplingParams, generate

PROMPTS = [[1, 9, 4, 10, 5], [1, 7, 5], [1, 6, 4, 12]]


def _tiny_model(model_cache):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_cache / "tiny-llama-v1").eval()


def test_generated_logprobs_are_the_teacher_forced_logprobs(model_cache):
    model = _tiny_model(model_cache)
    out = generate(model, PROMPTS, SamplingParams(max_new_tokens=5, temperature=0.7),
                   pad_id=0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for prompt, tokens, logprobs in zip(PROMPTS, out.tokens, out.logprobs, strict=True):
            ids = torch.tensor([prompt + tokens])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            expected = [logp[len(prompt) - 1 + i, token].item() for i, token in enumerate(tokens)]
            assert max(abs(a - b) for a, b in zip(logprobs, expected, strict=True)) < 1e-4


def test_prompt_pass_computes_only_the_last_positions_logits(model_cache):
    model = _tiny_model(model_cache)
    rows_seen: list[tuple[int, ...]] = []
    model.lm_head.register_forward_hook(
        lambda module, args, output: rows_seen.append(tuple(output.shape[:2])))
    generate(model, PROMPTS, SamplingParams(max_new_tokens=3), pad_id=0,
             generator=torch.Generator().manual_seed(0))
    assert rows_seen == [(len(PROMPTS), 1)] * 3


def test_sampling_follows_the_distribution_and_skips_zero_mass_tokens():
    from lora_rl.generation.torch_generator import sample_rows

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(20000, 1)
    drawn = sample_rows(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=6).float() / len(drawn)
    assert counts[[0, 2, 5]].sum() == 0
    # 20000 draws: the standard error of each frequency is below 0.004.
    assert torch.allclose(counts, probs[0], atol=0.015)
    again = sample_rows(probs, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)
