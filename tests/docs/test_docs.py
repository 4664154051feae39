"""docs/: generated pages match the code, the rule list is complete, and every recipe path and
`lora-rl` command the pages mention exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_rl.cli import app
from lora_rl.config.catalogue import all_rules
from lora_rl.docsgen import REGENERATE, pages

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("name", sorted(pages()))
def test_generated_page_is_current(name: str) -> None:
    on_disk = (DOCS / name).read_text(encoding="utf-8") if (DOCS / name).is_file() else ""
    assert on_disk == pages()[name](), f"docs/{name} is stale; regenerate with: {REGENERATE}"


def test_troubleshooting_lists_exactly_the_rule_ids_in_code() -> None:
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    headed = re.findall(r"^### (LR\d{3}):", text, flags=re.M)
    assert sorted(headed) == sorted(all_rules())
    assert len(headed) == len(set(headed))


def test_reference_documents_every_lora_key() -> None:
    from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig

    text = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    for section, model in (("policy.dtensor_cfg.lora_cfg", DTensorLoraConfig),
                           ("policy.megatron_cfg.peft", MegatronPeftConfig)):
        body = text.split(f"## `{section}`", 1)[1].split("\n## ", 1)[0]
        for name in model.model_fields:
            assert f"| `{name}` |" in body, (section, name)


def mentioned_recipes() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for match in re.finditer(r"recipes/[\w./-]+?\.yaml", page.read_text(encoding="utf-8")):
            found.append((page.name, match.group(0)))
    return found


@pytest.mark.parametrize(("page", "recipe"), mentioned_recipes())
def test_recipe_paths_in_docs_exist(page: str, recipe: str) -> None:
    assert (ROOT / recipe).is_file(), f"{page} mentions {recipe}, which does not exist"


def commands() -> list[tuple[str, list[str]]]:
    """`lora-rl SUB [--options]` lines inside fenced code blocks."""
    found = []
    for page in PAGES:
        fenced = re.findall(r"```(\w*)\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
        for block in (body for lang, body in fenced if lang in ("", "bash", "sh", "yaml")):
            for line in block.replace("\\\n", " ").splitlines():
                start = line.find("lora-rl ")
                if start < 0 or "pip " in line:
                    continue
                words = shlex.split(line[start:].split("#")[0].split(">")[0].split("&&")[0],
                                    posix=True)
                if len(words) >= 2 and not words[1].startswith("-"):
                    found.append((page.name, words[1:]))
    return found


@pytest.mark.parametrize(("page", "words"), commands(), ids=lambda v: " ".join(v)
                         if isinstance(v, list) else v)
def test_commands_in_docs_exist_with_their_options(page: str, words: list[str]) -> None:
    """The sub-command (and sub-sub-command) exists, and every --option it uses is in its
    --help."""
    path = [words[0]]
    if words[0] == "recipes" and len(words) > 1:
        path.append(words[1])
    run = CliRunner().invoke(app, [*path, "--help"])
    assert run.exit_code == 0, f"{page}: `lora-rl {' '.join(path)}` does not exist"
    for option in (w.split("=")[0] for w in words if w.startswith("--")):
        assert option in run.output, f"{page}: `lora-rl {' '.join(path)}` has no {option}"


def test_docsgen_check_reports_stale_pages(tmp_path: Path) -> None:
    from lora_rl.docsgen.__main__ import main

    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 0
