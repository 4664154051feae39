"""`lora-rl convert`: round trips between the DTensor and Megatron LoRA blocks, the lossy cases
named, comments kept, and the CLI's exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lora_rl.cli import app
from lora_rl.config.validate import validate_recipe
from lora_rl.convert import ConvertError, convert_file
from lora_rl.convert.rewrite import effective_block, round_trip_yaml, source_schema

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY = sorted(RECIPES.glob("*tiny*.yaml"))
ALL = sorted(RECIPES.glob("*.yaml"))
FULL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OTHER = {"dtensor": "megatron", "megatron": "dtensor"}


def validated(path: Path) -> Any:
    result = validate_recipe(path)
    assert result.config is not None and not result.errors, result.errors
    return result.config


def edited(tmp_path: Path, name: str, lora: dict[str, Any], source: str =
           "sft-tiny-dtensor-lora.yaml") -> Path:
    """A copy of a shipped recipe with LoRA keys changed (comments kept)."""
    yaml = round_trip_yaml()
    doc = yaml.load((RECIPES / source).read_text())
    backend, block = (("megatron_cfg", "peft") if "megatron" in source
                      else ("dtensor_cfg", "lora_cfg"))
    doc["policy"][backend][block].update(lora)
    path = tmp_path / name
    with path.open("w") as handle:
        yaml.dump(doc, handle)
    return path


def round_trip(path: Path, tmp_path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(source schema, LoRA block before, after converting to the other backend and back)."""
    cfg = validated(path)
    source = source_schema(cfg)
    there = tmp_path / f"there-{path.name}"
    back = tmp_path / f"back-{path.name}"
    first = convert_file(path, OTHER[source], there)
    assert first.output_errors == []
    second = convert_file(there, source, back)
    assert second.output_errors == []
    return source, effective_block(cfg, source), effective_block(validated(back), source)


@pytest.mark.parametrize("recipe", TINY, ids=lambda p: p.stem)
def test_tiny_recipes_round_trip(recipe: Path, tmp_path: Path) -> None:
    _, before, after = round_trip(recipe, tmp_path)
    assert after == before


def test_full_target_set_round_trips_through_megatron_names(tmp_path: Path) -> None:
    path = edited(tmp_path, "full.yaml", {"match_all_linear": False, "target_modules": FULL,
                                          "dropout": 0.1, "lora_A_init": "uniform"})
    megatron = tmp_path / "full-megatron.yaml"
    result = convert_file(path, "megatron", megatron)
    peft = validated(megatron).policy.megatron_cfg.peft
    assert peft.target_modules == ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    assert (peft.dropout, peft.dropout_position, peft.lora_A_init_method) == (0.1, "post",
                                                                             "uniform")
    assert result.losses == []
    _, before, after = round_trip(path, tmp_path)
    assert after == before


@pytest.mark.parametrize("recipe", [p for p in ALL if "tiny" not in p.name], ids=lambda p: p.stem)
def test_every_recipe_converts_to_a_valid_recipe(recipe: Path, tmp_path: Path) -> None:
    source = source_schema(validated(recipe))
    # Written elsewhere on purpose: `defaults:` must still find the parents.
    result = convert_file(recipe, OTHER[source], tmp_path / "sub" / recipe.name)
    assert result.output_errors == []
    assert source_schema(validated(tmp_path / "sub" / recipe.name)) == OTHER[source]


def test_partial_qkv_set_maps_exactly_to_canonical_names(tmp_path: Path) -> None:
    """q_proj + v_proj cannot be said with the fused linear_qkv (it would adapt k too, with one
    shared A); canonical names say it exactly, for every fused module of the recipe."""
    path = edited(tmp_path, "qv.yaml", {"match_all_linear": False,
                                        "target_modules": ["q_proj", "v_proj", "gate_proj",
                                                           "up_proj"]})
    result = convert_file(path, "megatron", tmp_path / "out.yaml")
    assert validated(tmp_path / "out.yaml").policy.megatron_cfg.peft.target_modules == [
        "linear_q", "linear_v", "linear_fc1_gate", "linear_fc1_up"]
    assert result.losses == []
    _, before, after = round_trip(path, tmp_path)
    assert after == before


def test_partial_exclude_maps_to_canonical_excludes(tmp_path: Path) -> None:
    path = edited(tmp_path, "no-k.yaml", {"match_all_linear": False,
                                          "exclude_modules": ["k_proj"]})
    result = convert_file(path, "megatron", tmp_path / "out.yaml")
    peft = validated(tmp_path / "out.yaml").policy.megatron_cfg.peft
    assert (peft.target_modules, peft.exclude_modules) == ([], ["linear_k"])
    assert result.losses == []


@pytest.mark.parametrize(("source", "lora", "target", "lost"), [
    ("sft-tiny-dtensor-lora.yaml", {"use_triton": True}, "megatron", {"use_triton"}),
    ("sft-tiny-megatron-lora.yaml", {"lora_dtype": "bfloat16"}, "dtensor", {"lora_dtype"}),
    ("sft-tiny-dtensor-lora.yaml", {"dropout": 0.1, "dropout_position": "pre"}, "areal",
     {"dropout", "dropout_position", "a_init"}),
    ("sft-tiny-dtensor-lora.yaml", {"match_all_linear": False, "exclude_modules": [
        "model.layers.*.mlp.down_proj"]}, "megatron", {"exclude_modules"}),
    ("sft-tiny-megatron-lora.yaml", {"target_modules": ["*.layers.0.*.linear_qkv"]},
     "dtensor", {"target_modules"}),
], ids=["use_triton", "lora_dtype", "dropout-to-areal", "exclude-wildcard", "target-wildcard"])
def test_lossy_keys_are_reported_by_name(tmp_path: Path, source: str, lora: dict[str, Any],
                                         target: str, lost: set[str]) -> None:
    path = edited(tmp_path, "in.yaml", lora, source)
    validated(path)
    result = convert_file(path, target, tmp_path / "out.yaml")
    assert {loss.key for loss in result.losses} == lost
    assert result.output_errors == []


def test_wildcard_patterns_keep_their_layer(tmp_path: Path) -> None:
    path = edited(tmp_path, "in.yaml", {"target_modules": ["*.layers.1.*.linear_qkv"]},
                  "sft-tiny-megatron-lora.yaml")
    convert_file(path, "dtensor", tmp_path / "out.yaml")
    lora = validated(tmp_path / "out.yaml").policy.dtensor_cfg.lora_cfg
    assert lora.target_modules == [f"model.layers.1.*.{n}" for n in FULL[:3]]
    assert not lora.match_all_linear


def test_comments_survive(tmp_path: Path) -> None:
    recipe = RECIPES / "sft-tiny-dtensor-lora.yaml"
    out = tmp_path / "out.yaml"
    convert_file(recipe, "megatron", out)
    text = out.read_text()
    for line in recipe.read_text().splitlines():
        if "#" in line:
            assert line.split("#", 1)[1] in text
    assert "val_batches: null" in text  # untouched keys keep their spelling


def test_defaults_are_repointed_when_written_elsewhere(tmp_path: Path) -> None:
    recipe = RECIPES / "sft-llama3.1-8b-1n8g-megatron-lora.yaml"
    out = tmp_path / "deep" / "x.yaml"
    result = convert_file(recipe, "dtensor", out)
    assert result.output_errors == []
    assert "defaults: base/sft.yaml" not in out.read_text()


def test_areal_fragment_and_back(tmp_path: Path) -> None:
    path = edited(tmp_path, "qv.yaml", {"match_all_linear": False, "dim": 16, "alpha": 32,
                                        "target_modules": ["q_proj", "v_proj"]})
    areal = tmp_path / "areal.yaml"
    convert_file(path, "areal", areal)
    actor = round_trip_yaml().load(areal.read_text())["actor"]
    assert dict(actor) == {"path": "lora-rl/tiny-llama", "use_lora": True, "lora_rank": 16,
                           "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"],
                           "peft_type": "lora"}
    back = convert_file(areal, "dtensor")
    lora = round_trip_yaml().load(back.text)["policy"]["dtensor_cfg"]["lora_cfg"]
    assert (lora["dim"], lora["alpha"], list(lora["target_modules"])) == (16, 32,
                                                                          ["q_proj", "v_proj"])


@pytest.mark.parametrize(("text", "message"), [
    (None, "no such file"),
    ("policy: [\n", "not valid YAML"),
    ("- a\n- b\n", "not a recipe"),
    ("sft: {}\npolicy:\n  model_name: x\n", "no LoRA block"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, text: str | None,
                                          message: str) -> None:
    path = tmp_path / "in.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConvertError, match=message):
        convert_file(path, "megatron")
    run = CliRunner().invoke(app, ["convert", str(path), "--to", "megatron"])
    assert run.exit_code == 2
    assert "Traceback" not in run.output
    assert [line for line in run.output.splitlines() if line] == [
        line for line in run.output.splitlines() if line.startswith("error:")]


def test_cli_writes_yaml_to_stdout_and_reports_on_stderr(tmp_path: Path) -> None:
    run = CliRunner().invoke(app, ["convert", str(RECIPES / "sft-tiny-dtensor-lora.yaml"),
                                   "--to", "megatron"])
    assert run.exit_code == 0, run.output
    doc = round_trip_yaml().load(run.stdout)
    assert doc["policy"]["megatron_cfg"]["peft"]["enabled"] is True
    assert "optimizer" in run.stderr  # the lr note goes to stderr, not into the YAML
    out = tmp_path / "o.yaml"
    run = CliRunner().invoke(app, ["convert", str(RECIPES / "sft-tiny-dtensor-lora.yaml"),
                                   "--to", "megatron", "--out", str(out)])
    assert run.exit_code == 0 and out.is_file() and run.stdout == ""


def test_out_never_overwrites_without_force(tmp_path: Path) -> None:
    recipe = str(RECIPES / "sft-tiny-dtensor-lora.yaml")
    out = tmp_path / "mine.yaml"
    out.write_text("# my notes\n")
    run = CliRunner().invoke(app, ["convert", recipe, "--to", "megatron", "--out", str(out)])
    assert run.exit_code == 2
    assert run.stderr == f"error: --out = {out} exists; pass --force to overwrite it, or choose " \
                         "another file\n"
    assert out.read_text() == "# my notes\n"
    run = CliRunner().invoke(app, ["convert", recipe, "--to", "megatron", "--out", str(tmp_path),
                                   "--force"])
    assert run.exit_code == 2 and "it is a directory; name a file" in run.stderr
    run = CliRunner().invoke(app, ["convert", recipe, "--to", "megatron", "--out", str(out),
                                   "--force"])
    assert run.exit_code == 0 and "megatron_cfg" in out.read_text()
