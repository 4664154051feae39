"""Property: whatever the recipe text, overrides or model config, `validate_recipe` returns
diagnostics — no exception escapes, every error has a rule id and a location or key path, and
each case takes under a second.

Fast tier: LORA_RL_FUZZ_EXAMPLES examples per property (300 by default); the `slow` variants
run at least 2000.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_rl.config.catalogue import all_rules
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.validate import ValidationResult, validate_recipe

FAST = int(os.environ.get("LORA_RL_FUZZ_EXAMPLES", 300))
SLOW = max(2000, FAST)
RULE_ID = re.compile(r"^LR\d{3}$")
CATALOGUE = set(all_rules())
fast = settings(max_examples=FAST, deadline=1000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
slow = settings(max_examples=SLOW, deadline=1000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- the environment every example runs in ---------------------------------------------------


class Workspace:
    """One directory for the whole module (hypothesis reruns a test body many times)."""

    def __init__(self, root: Path, kit: Any) -> None:
        self.root = root
        self.kit = kit
        self.recipe = root / "recipe.yaml"
        self.model = root / "model"
        self.model.mkdir()
        self.bases = {kind: kit.base(kind) for kind in kit.KINDS}
        # and one with lists, for list-index overrides (`...target_modules.-1=x`)
        self.bases["lists"] = kit.changed(kit.base("sft"), {
            "policy.dtensor_cfg.lora_cfg.match_all_linear": False,
            "policy.dtensor_cfg.lora_cfg.target_modules": ["q_proj", "v_proj"],
            "policy.scheduler": [
                {"name": "torch.optim.lr_scheduler.LinearLR",
                 "kwargs": {"start_factor": 0.1, "total_iters": 2}},
                {"name": "torch.optim.lr_scheduler.ConstantLR", "kwargs": {"factor": 1.0}},
                {"milestones": [2]}],
        })

    def write(self, data: str | bytes) -> Path:
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        self.recipe.write_bytes(data)
        return self.recipe


@pytest.fixture(scope="module")
def ws(recipe_kit: Any) -> Iterator[Workspace]:
    with tempfile.TemporaryDirectory(prefix="lora-rl-fuzz-") as tmp, \
            pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        mp.chdir(root)
        mp.setenv("LORA_RL_CACHE", str(root / "cache"))
        assert set(recipe_kit.KINDS) == set(KINDS)
        yield Workspace(root, recipe_kit)


def check(run: Callable[[], ValidationResult]) -> ValidationResult:
    # This thread's CPU time, so that other processes (and pytest's own threads) on a busy
    # machine do not fail the budget; the wall clock is bounded by hypothesis' deadline. The
    # collector is paused: a full collection late in a long test session walks every object
    # the session has made (seen: 1.4 s), which says nothing about validation.
    gc.disable()
    try:
        start = time.thread_time()
        result = run()  # an exception here fails the property
        elapsed = time.thread_time() - start
    finally:
        gc.enable()
    assert elapsed < 1.0, f"validation took {elapsed:.2f} s of CPU time"
    assert isinstance(result, ValidationResult)
    for diag in result.diagnostics:
        assert RULE_ID.match(diag.rule) and diag.rule in CATALOGUE, diag
        assert diag.severity in ("error", "warning"), diag
        assert isinstance(diag.message, str) and diag.message, diag
        if diag.severity == "error":
            assert diag.location is not None or diag.path, diag
        if diag.location is not None:
            assert diag.location.line >= 1 and diag.location.column >= 1, diag
    if result.config is None:
        assert result.errors, "no config and no error"
    if result.ok:
        assert result.config is not None
    return result


# ---- strategies ------------------------------------------------------------------------------


def _model_paths(model: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path the recipe schema knows (sections reached through their fields)."""
    from lora_rl.config.schema_walk import models_in

    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name,)
        yield path
        for sub in models_in(info.annotation):
            if len(path) < 6:
                yield from _model_paths(sub, path)


PATHS = sorted(set(_model_paths(RecipeConfig)) | {("defaults",), ("policy", "scheduler", "0")})
LIST_PATHS = [("policy", "dtensor_cfg", "lora_cfg", "target_modules"), ("policy", "scheduler"),
              ("policy", "scheduler", "0", "kwargs"), ("policy", "scheduler", "2", "milestones")]
KINDS = ("sft", "grpo", "megatron")  # the bases of tests/conftest.py
SPECIAL_TEXT = ["None", "none", "~", "null", "${policy.model_name}", "${nope}", "${.dim}",
                "${..x.y}", "${mul:${policy.train_micro_batch_size},2}", "${div:1,0}",
                "${oc.env:HOME}", "${", "}", "1e-5", "torch.bfloat16", "q_proj", "lm_head",
                "lora-rl/tiny-llama", ".", "/", "~root", "a" * 300, "\u00e9\u4e2d\U0001f600",
                "my_pkg.rewards:score", "float32", "megatron-bridge", "split", "vllm",
                "_override_", "defaults", "\x00", "\ufeff", "*", "&a", "[", "{"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.sampled_from([0, 1, 2, 3, 4, 8, 16, 64, -1, 10 ** 30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(SPECIAL_TEXT),
)
keys = st.one_of(st.text(min_size=1, max_size=12),
                 st.sampled_from(["enabled", "dim", "alpha", "_v2", "_override_", "defaults",
                                  "sft", "dpo", "grpo", "policy", "x" * 100, "\u00fc"]))
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(keys, children, max_size=4)),
    max_leaves=12,
)
mutations = st.lists(st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(PATHS)),
    st.tuples(st.just("set"), st.sampled_from(PATHS), values),
    st.tuples(st.just("add"), st.sampled_from([(), *PATHS]), keys, values),
    st.tuples(st.just("nest"), st.sampled_from(PATHS), st.integers(1, 120)),
), min_size=0, max_size=6)


def mutate(tree: dict[str, Any], changes: list[tuple]) -> dict[str, Any]:
    import copy

    tree = copy.deepcopy(tree)
    for change in changes:
        op, path = change[0], change[1]
        parent: Any = tree
        for part in path[:-1] if op != "add" else path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if op == "delete":
            parent.pop(path[-1], None)
        elif op == "set":
            parent[path[-1]] = change[2]
        elif op == "add":
            parent[change[2]] = change[3]
        else:
            value: Any = "leaf"
            for i in range(change[2]):
                value = {f"k{i}": value} if i % 2 else [value]
            parent[path[-1]] = value
    return tree


def text_edit(text: str, edit: tuple) -> str:
    lines = text.splitlines(keepends=True) or [""]
    op = edit[0]
    i = edit[1] % len(lines)
    if op == "tab":
        lines[i] = "\t" + lines[i].lstrip(" ")
    elif op == "dup":
        lines.insert(i, lines[i])  # often a duplicate key
    elif op == "drop":
        del lines[i]
    elif op == "indent":
        lines[i] = " " * edit[2] + lines[i]
    elif op == "truncate":
        return text[: edit[1] % (len(text) + 1)]
    elif op == "insert":
        pos = edit[1] % (len(text) + 1)
        return text[:pos] + edit[2] + text[pos:]
    elif op == "anchor":
        # anchor a top-level section, alias it as another key, and merge it into a third
        top = [n for n, line in enumerate(lines)
               if line[:1].isalpha() and line.rstrip().endswith(":")]
        if top:
            j = top[i % len(top)]
            lines[j] = lines[j].rstrip("\n") + " &anc\n"
            lines.append(f"{edit[2]}: *anc\n")
            lines.append("merged:\n  <<: *anc\n  extra: 1\n")
    elif op == "bomb":
        lines.append("bomb:\n  a0: &a0 [x, x, x, x, x, x, x, x]\n")
        for level in range(1, edit[2]):
            lines.append(f"  a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 8)}]\n")
    return "".join(lines)


text_edits = st.lists(st.one_of(
    st.tuples(st.sampled_from(["tab", "dup", "drop", "truncate"]), st.integers(0, 10_000)),
    st.tuples(st.just("indent"), st.integers(0, 10_000), st.integers(1, 7)),
    st.tuples(st.just("insert"), st.integers(0, 10_000),
              st.one_of(st.text(max_size=10), st.sampled_from(
                  [":", "- ", "&x ", "*x", "!!python/object:os.system ", "!!float ", "<<: ",
                   "? ", "---\n", "...\n", "%YAML 1.1\n", "{", "[", '"', "'", "#", "\\",
                   "${", "\ufeff", "\r\n", "\x85", "\u2028"]))),
    st.tuples(st.just("anchor"), st.integers(0, 100), st.sampled_from(["copy", "policy", "sft"])),
    st.tuples(st.just("bomb"), st.integers(0, 100), st.integers(2, 9)),
), max_size=4)

override_ops = st.sampled_from(["", "++", "+", "~"])
override_values = st.one_of(values.map(lambda v: yaml.safe_dump(v, default_flow_style=True,
                                                                   width=10_000).strip()),
                            st.text(max_size=20), st.sampled_from(SPECIAL_TEXT))
structured_overrides = st.one_of(
    st.builds(lambda op, path, value: f"{op}{'.'.join(path)}={value}" if op != "~"
              else f"~{'.'.join(path)}", override_ops, st.sampled_from(PATHS), override_values),
    st.builds(lambda op, path, index, value: f"{op}{'.'.join(path)}.{index}={value}"
              if op != "~" else f"~{'.'.join(path)}.{index}", override_ops,
              st.sampled_from(LIST_PATHS), st.integers(-5, 5), override_values),
)
# Overrides apply in order and the first malformed one stops loading: random text is mixed in
# rarely, so that the structured ones get applied.
overrides = st.one_of(st.lists(structured_overrides, max_size=4),
                      st.lists(st.one_of(structured_overrides, st.text(max_size=30)), max_size=3))


# ---- properties ----------------------------------------------------------------------------


def tree_property(ws: Workspace, kind: str, changes: list[tuple], extra: list[str]) -> None:
    tree = mutate(ws.bases[kind], changes)
    text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
    check(lambda: validate_recipe(ws.write(text), extra))


def text_property(ws: Workspace, kind: str, edits: list[tuple]) -> None:
    text = yaml.safe_dump(ws.bases[kind], sort_keys=False)
    for edit in edits:
        text = text_edit(text, edit)
    check(lambda: validate_recipe(ws.write(text)))


def raw_property(ws: Workspace, data: str | bytes) -> None:
    check(lambda: validate_recipe(ws.write(data)))


def override_property(ws: Workspace, kind: str, extra: list[str]) -> None:
    ws.write(yaml.safe_dump(ws.bases[kind], sort_keys=False))
    check(lambda: validate_recipe(ws.recipe, extra))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 40), 2 ** 40),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=8,
)
model_fields = st.fixed_dictionaries({}, optional={
    "model_type": st.one_of(st.sampled_from(["llama", "qwen2", "mistral", "gpt2"]), json_values),
    "num_hidden_layers": st.one_of(st.integers(-3, 40), json_values),
    "num_attention_heads": st.one_of(st.integers(-3, 64), json_values),
    "num_key_value_heads": st.one_of(st.integers(0, 64), json_values),
    "hidden_size": st.one_of(st.integers(0, 4096), json_values),
    "intermediate_size": st.one_of(st.integers(0, 4096), json_values),
    "quantization_config": st.one_of(st.fixed_dictionaries({"quant_method": st.text(max_size=8)}),
                                     json_values),
})


def model_property(ws: Workspace, kind: str, config: Any, raw: str | None,
                   extra: list[str]) -> None:
    ws.write(yaml.safe_dump(ws.bases[kind], sort_keys=False))
    text = raw if raw is not None else json.dumps(config)
    (ws.model / "config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    check(lambda: validate_recipe(ws.recipe, extra, model_dir=ws.model))


kinds = st.sampled_from([*KINDS, "lists"])


def _two_tiers(name: str, prop: Callable[..., None], **strategies: Any) -> tuple[Any, Any]:
    def body(ws: Workspace, **kwargs: Any) -> None:
        prop(ws, **kwargs)

    fast_test = fast(given(**strategies)(body))
    slow_test = pytest.mark.slow(slow(given(**strategies)(body)))
    fast_test.__name__, slow_test.__name__ = f"test_{name}", f"test_{name}_slow"
    return fast_test, slow_test


test_tree_mutations, test_tree_mutations_slow = _two_tiers(
    "tree_mutations", tree_property, kind=kinds, changes=mutations, extra=overrides)
test_text_mutations, test_text_mutations_slow = _two_tiers(
    "text_mutations", text_property, kind=kinds, edits=text_edits)
test_random_bytes_and_text, test_random_bytes_and_text_slow = _two_tiers(
    "random_bytes_and_text", raw_property,
    data=st.one_of(st.binary(max_size=200), st.text(max_size=200), st.just(""),
                   st.just(b"\xef\xbb\xbf"), st.text(alphabet=" \t\n:-[]{}&*!|>'\"#%@`,?",
                                                      max_size=60)))
test_random_overrides, test_random_overrides_slow = _two_tiers(
    "random_overrides", override_property, kind=kinds, extra=overrides)
test_model_configs, test_model_configs_slow = _two_tiers(
    "model_configs", model_property, kind=kinds, config=st.one_of(model_fields, json_values),
    raw=st.one_of(st.none(), st.text(max_size=40)), extra=overrides)


# ---- the command line ------------------------------------------------------------------------


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=kinds, changes=mutations, edits=text_edits, extra=overrides,
       fmt=st.sampled_from(["text", "json", "sarif", "github"]))
def test_cli_never_crashes(ws: Workspace, kind: str, changes: list[tuple], edits: list[tuple],
                           extra: list[str], fmt: str) -> None:
    text = yaml.safe_dump(mutate(ws.bases[kind], changes), sort_keys=False, allow_unicode=True)
    for edit in edits:
        text = text_edit(text, edit)
    ws.write(text)
    args = [sys.executable, "-m", "lora_rl", "validate", str(ws.recipe), "--format", fmt]
    for item in extra:
        if "\x00" not in item:  # argv cannot carry NUL
            args += ["--set", item]
    proc = subprocess.run(args, capture_output=True, timeout=60, env=os.environ.copy())
    stderr = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    assert proc.returncode in (0, 1, 2), (proc.returncode, stderr)
    if fmt in ("json", "sarif"):
        json.loads(proc.stdout)
