"""CLI conventions: --version, -h, clean metavars, whole command summaries, catalogue names."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from lora_rl import __version__
from lora_rl.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"lora-rl {__version__}"


@pytest.mark.parametrize("command", [[], ["validate"], ["run"], ["explain"], ["generate"],
                                     ["plot"], ["convert"], ["recipes", "cp"]])
def test_dash_h_and_clean_metavars(command: list[str]) -> None:
    result = invoke(*command, "-h")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    usage = result.output.splitlines()[0]
    assert not re.search(r"[{}<>]", usage), usage
    assert not re.search(r"<list\[|<path>|<str>", result.output), result.output


def test_command_summaries_are_whole() -> None:
    out = invoke("--help").output
    commands = out.split("Commands:")[1]
    assert "..." not in commands
    assert "Answer prompts with a trained adapter, formatted exactly as in" in commands
    assert "completion" in out


def test_catalogue_name_where_a_recipe_path_goes() -> None:
    result = invoke("validate", "sft-tiny-dtensor-lora")
    assert result.exit_code == 0, result.output
    missing = invoke("validate", "sft-tiny-dtensor-lorra")
    assert missing.exit_code == 2
    assert "sft-tiny-dtensor-lorra" in missing.output
