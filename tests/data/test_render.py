"""Rendering: loss on assistant turns only (every one, multi-turn), the same masks from the
`{% generation %}` assistant mask and from prefix rendering, the plain format unchanged, DPO
pairs trained on the completion only, GRPO prompts ending in the generation prompt."""

from __future__ import annotations

import pytest

from lora_rl.data.examples import Limits
from lora_rl.data.jsonl import DataError
from lora_rl.data.render import ChatRenderer, PlainRenderer, example
from lora_rl.data.samples import Conversation
from tests.data.conftest import TAGGED, UNTAGGED

LIMITS = Limits(max_total=128, max_prompt=128, on_overlong="error")
MULTI = ({"role": "system", "content": "add"}, {"role": "user", "content": "1+2="},
         {"role": "assistant", "content": "3"}, {"role": "user", "content": "12+2="},
         {"role": "assistant", "content": "14"})


def _trained_text(tokenizer, ex) -> str:
    return tokenizer.decode([t for t, m in zip(ex.input_ids, ex.loss_mask, strict=True) if m])


@pytest.mark.parametrize("template", [TAGGED, UNTAGGED], ids=["generation-tags", "prefix"])
def test_every_assistant_turn_and_nothing_else_is_trained(tiny_tokenizer, template):
    ex = example(ChatRenderer(tiny_tokenizer, template), Conversation(MULTI), LIMITS, "x:1")
    assert _trained_text(tiny_tokenizer, ex) == "3</s>14</s>"
    assert tiny_tokenizer.decode(ex.input_ids) == \
        "<s>system add user 1+2= bot 3</s>user 12+2= bot 14</s>"


def test_both_mask_methods_agree_token_for_token(tiny_tokenizer):
    tagged = ChatRenderer(tiny_tokenizer, TAGGED).render(Conversation(MULTI))
    prefix = ChatRenderer(tiny_tokenizer, UNTAGGED).render(Conversation(MULTI))
    assert tagged == prefix


def test_generation_prompt_ends_rollout_prompts(tiny_tokenizer):
    ids = ChatRenderer(tiny_tokenizer, TAGGED).prompt_ids(Conversation(MULTI[:2]))
    assert tiny_tokenizer.decode(ids) == "<s>system add user 1+2= bot "


def test_plain_format_is_bos_prompt_response_eos(tiny_tokenizer):
    conv = Conversation(({"role": "user", "content": "3+4="},
                         {"role": "assistant", "content": "7"}))
    ex = example(PlainRenderer(tiny_tokenizer, True, True), conv, LIMITS, "x:1")
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    body = tiny_tokenizer("3+4=", add_special_tokens=False)["input_ids"]
    seven = tiny_tokenizer("7", add_special_tokens=False)["input_ids"]
    assert ex.input_ids == tuple([bos, *body, *seven, eos])
    assert ex.loss_mask == tuple([0] * (1 + len(body)) + [1] * (len(seven) + 1))


@pytest.mark.parametrize("template", [TAGGED, UNTAGGED], ids=["generation-tags", "prefix"])
def test_dpo_completion_alone_carries_the_loss(tiny_tokenizer, template):
    # A conversational pair: the prompt's own assistant turn is context, not trained.
    conv = Conversation(MULTI, train_from=4)
    ex = example(ChatRenderer(tiny_tokenizer, template), conv, LIMITS, "x:1")
    assert _trained_text(tiny_tokenizer, ex) == "14</s>"


def test_template_that_rewrites_history_is_refused(tiny_tokenizer):
    # Drops earlier assistant turns once a later user turn follows (as thinking templates do).
    rewriting = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                 "{{ m['content'] }} {% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}bot {% endif %}")
    with pytest.raises(DataError, match="generation"):
        ChatRenderer(tiny_tokenizer, rewriting).render(Conversation(MULTI))


def test_overlong_conversation_names_its_record(tiny_tokenizer):
    with pytest.raises(DataError, match=r"^d.jsonl:7: .* exceed the limits"):
        example(ChatRenderer(tiny_tokenizer, TAGGED), Conversation(MULTI),
                Limits(10, 10, "error"), "d.jsonl:7")


def test_tools_and_template_kwargs_reach_the_template(tiny_tokenizer):
    template = ("{% if tools %}{% for t in tools %}{{ t['name'] }} {% endfor %}{% endif %}"
                "{% if brief %}be brief {% endif %}" + UNTAGGED)
    conv = Conversation(MULTI[1:3], tools=({"name": "add"},))
    ex = example(ChatRenderer(tiny_tokenizer, template, {"brief": True}), conv, LIMITS, "x:1")
    assert tiny_tokenizer.decode(ex.input_ids).startswith("add be brief <s>user 1+2= bot 3")
    assert _trained_text(tiny_tokenizer, ex) == "3</s>"
