"""`lora-rl validate | explain | schema` as a user and a CI system see them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from lora_rl.cli import app
from lora_rl.config.catalogue import all_rules
from lora_rl.config.schema_export import recipe_json_schema

LORA = "policy.dtensor_cfg.lora_cfg"
SARIF_PACKAGE = "@microsoft/jest-sarif@1.0.0-beta.0"
SARIF_MEMBER = "package/lib/schemas/sarif-2.1.0-rtm.5.json"
HEADER = re.compile(r"^(?P<file>[^\s:]+)(?::(?P<line>\d+):(?P<col>\d+))?: "
                    r"(?P<severity>error|warning) (?P<rule>LR\d{3}): (?P<message>.*)$")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def blocks(output: str) -> list[dict[str, Any]]:
    """Text output as diagnostics: a header line, then its indented note/fix lines."""
    found: list[dict[str, Any]] = []
    for line in output.splitlines():
        match = HEADER.match(line)
        if match:
            found.append({**match.groupdict(), "extra": []})
        elif line.startswith("  ") and found:
            found[-1]["extra"].append(line.strip())
    return found


@pytest.fixture
def must_show(recipe_dir: Any) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A recipe with a typo, a wrong type and a rule violation, and where each is written."""
    path = recipe_dir.write({"policy.precison": "float32",
                             "policy.train_micro_batch_size": "two",
                             "policy.dtensor_cfg._v2": False})
    typo = recipe_dir.position("policy.precison")
    wrong = recipe_dir.position("policy.train_micro_batch_size")
    rule = recipe_dir.position("policy.dtensor_cfg._v2")
    return path, {"LR001": (typo.line, typo.key_column),
                  "LR002": (wrong.line, wrong.value_column),
                  "LR102": (rule.line, rule.value_column)}


def test_must_show(must_show: tuple[Path, dict[str, tuple[int, int]]]) -> None:
    path, where = must_show
    result = invoke("validate", path.name)
    assert result.exit_code == 1, result.output
    shown = {b["rule"]: b for b in blocks(result.output)}
    assert set(shown) == set(where), result.output
    for rule, (line, col) in where.items():
        block = shown[rule]
        assert (block["file"], int(block["line"]), int(block["col"])) == (path.name, line, col)
        assert block["severity"] == "error"
        assert any(extra.startswith("fix: ") for extra in block["extra"]), block
    assert "did you mean 'precision'?" in result.output
    assert f"{path.name}: invalid (3 error(s), 0 warning(s))" in result.output


def test_valid_recipe_exits_0(recipe_dir: Any) -> None:
    result = invoke("validate", recipe_dir.write().name)
    assert result.exit_code == 0 and result.output.strip() == "recipe.yaml: valid"


def test_strict_makes_warnings_fail(recipe_dir: Any) -> None:
    path = recipe_dir.write({"policy.trust_remote_code": True}).name
    relaxed = invoke("validate", path)
    assert relaxed.exit_code == 0 and "valid (1 warning(s))" in relaxed.output
    assert blocks(relaxed.output)[0]["severity"] == "warning"
    strict = invoke("validate", path, "--strict")
    assert strict.exit_code == 1 and "invalid (0 error(s), 1 warning(s))" in strict.output
    as_json = json.loads(invoke("validate", path, "--strict", "--format", "json").output)
    assert as_json["results"][0]["valid"] is False


def test_overrides_and_several_files(recipe_dir: Any) -> None:
    good, bad = recipe_dir.write(name="good.yaml").name, \
        recipe_dir.write({f"{LORA}.dim": 0}, name="bad.yaml").name
    assert invoke("validate", good, "--set", f"{LORA}.dim=16").exit_code == 0
    assert invoke("validate", good, "-s", f"{LORA}.dim=0").exit_code == 1
    both = invoke("validate", good, bad)
    assert both.exit_code == 1 and "good.yaml: valid" in both.output
    with_missing = invoke("validate", good, "missing.yaml")
    assert with_missing.exit_code == 2 and "LR010" in with_missing.output


def test_usage_errors_exit_2() -> None:
    assert invoke("validate").exit_code == 2
    assert invoke("validate", "x.yaml", "--format", "xml").exit_code == 2


def test_json_format(must_show: tuple[Path, dict[str, tuple[int, int]]]) -> None:
    path, where = must_show
    result = invoke("validate", path.name, "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    (entry,) = report["results"]
    assert entry["file"] == path.name and entry["valid"] is False
    got = {d["rule"]: (d["line"], d["column"]) for d in entry["diagnostics"]}
    assert got == where
    for diag in entry["diagnostics"]:
        assert set(diag) >= {"rule", "severity", "message", "path", "file", "line", "column",
                             "via", "fix"}
        assert diag["file"] == path.name and diag["fix"]
    paths = {d["rule"]: d["path"] for d in entry["diagnostics"]}
    assert paths == {"LR001": "policy.precison", "LR002": "policy.train_micro_batch_size",
                     "LR102": "policy.dtensor_cfg._v2"}


def test_github_format(must_show: tuple[Path, dict[str, tuple[int, int]]], recipe_dir: Any) -> None:
    path, where = must_show
    result = invoke("validate", path.name, "--format", "github", "--set", "cluster.bogus=1")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    pattern = re.compile(r"^::(error|warning) file=([^,:]+)(?:,line=(\d+),col=(\d+))?"
                         r",title=(LR\d{3})::(.+)$")
    parsed = [pattern.match(line) for line in lines]
    assert all(parsed), lines
    located = {m.group(5): (int(m.group(3)), int(m.group(4))) for m in parsed if m.group(3)}
    assert located == where
    # the override has no line in the file: the annotation is on the file as a whole
    override = [m for m in parsed if m.group(3) is None]
    assert [m.group(5) for m in override] == ["LR001"]
    assert override[0].group(2) == path.name
    assert all("%0A" not in m.group(6) or "\n" not in m.group(6) for m in parsed)


@pytest.fixture(scope="session")
def sarif_schema(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The official SARIF 2.1.0 schema, from the npm registry (cached)."""
    configured = os.environ.get("LORA_RL_CACHE")
    cache = Path(configured) / "test-assets" if configured else \
        Path(request.config.cache.mkdir("lora-rl-sarif"))
    target = cache / "sarif-2.1.0-rtm.5.json"
    if not target.is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot fetch the SARIF 2.1.0 schema")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                proc = subprocess.run([npm, "pack", SARIF_PACKAGE, "--silent"], cwd=tmp,
                                      capture_output=True, text=True, timeout=180)
            except subprocess.TimeoutExpired:
                pytest.skip(f"npm pack {SARIF_PACKAGE} timed out (offline?)")
            tarballs = list(Path(tmp).glob("*.tgz"))
            if proc.returncode != 0 or not tarballs:
                pytest.skip(f"npm pack {SARIF_PACKAGE} failed (offline?): "
                            f"{proc.stderr.strip()[-300:]}")
            with tarfile.open(tarballs[0]) as archive:
                member = archive.extractfile(SARIF_MEMBER)
                assert member is not None, f"{SARIF_MEMBER} not in {SARIF_PACKAGE}"
                data = member.read()
            cache.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part")
            partial.write_bytes(data)
            partial.replace(target)
    return json.loads(target.read_text(encoding="utf-8-sig"))


def test_sarif_format_validates_against_the_official_schema(
        must_show: tuple[Path, dict[str, tuple[int, int]]], recipe_dir: Any,
        sarif_schema: dict[str, Any]) -> None:
    path, where = must_show
    warned = recipe_dir.write({"policy.trust_remote_code": True}, name="warned.yaml").name
    result = invoke("validate", path.name, warned, "missing.yaml", "--set", "cluster.bogus=1",
                    "--format", "sarif")
    assert result.exit_code == 2  # the missing file
    log = json.loads(result.output)
    validator_class = jsonschema.validators.validator_for(sarif_schema)
    validator_class.check_schema(sarif_schema)
    validator = validator_class(sarif_schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(log)]
    assert errors == []
    assert log["version"] == "2.1.0"
    (run,) = log["runs"]
    rule_ids = {r["id"] for r in run["tool"]["driver"]["rules"]}
    assert rule_ids == set(all_rules())
    _check_help_links(run["tool"]["driver"])
    results = run["results"]
    assert {r["ruleId"] for r in results} >= {"LR001", "LR002", "LR102", "LR902", "LR010"}
    assert all(r["ruleId"] in rule_ids for r in results)
    regions = {(r["ruleId"], (r["locations"][0]["physicalLocation"]["region"]["startLine"],
                              r["locations"][0]["physicalLocation"]["region"]["startColumn"]))
               for r in results
               if r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == path.name}
    assert set(where.items()) <= regions
    override = [r for r in results if "cluster.bogus" in r["message"]["text"]
                or "'bogus'" in r["message"]["text"]]
    assert override and "override" in override[0]["message"]["text"]
    assert {r["level"] for r in results} == {"error", "warning"}


def _imported_modules(stderr: str) -> set[str]:
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


@pytest.mark.parametrize("with_model", [False, True])
def test_validate_does_not_import_torch(recipe_dir: Any, with_model: bool) -> None:
    recipe = recipe_dir.write({f"{LORA}.match_all_linear": False,
                               f"{LORA}.target_modules": ["q_proj"]})
    extra = ["--model", str(recipe_dir.model())] if with_model else []
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lora_rl", "validate",
                           str(recipe), *extra], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    modules = _imported_modules(proc.stderr)
    assert "lora_rl.config.validate" in modules, "not an importtime log?"
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "transformers", "triton"))
    assert heavy == []


def test_explain_shows_scale_and_layout(recipe_dir: Any) -> None:
    path = recipe_dir.write({f"{LORA}.dim": 8, f"{LORA}.alpha": 32,
                             "policy.dtensor_cfg.tensor_parallel_size": 2,
                             "cluster.gpus_per_node": 4, "policy.train_global_batch_size": 8,
                             "policy.train_micro_batch_size": 2}).name
    result = invoke("explain", path)
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"rank / alpha\W+8 / 32\b", out), out
    assert re.search(r"scale alpha/dim\W+4\b", out), out
    assert re.search(r"processes\W+4 = dp 2 x tp 2 x pp 1 x cp 1", out), out
    assert re.search(r"global 8 = micro 2 x dp 2 x 2 accumulation step", out), out
    assert "resolved recipe" in out


def test_explain_megatron_and_invalid(recipe_dir: Any) -> None:
    path = recipe_dir.write({"policy.megatron_cfg.peft.dim": 16,
                             "policy.megatron_cfg.peft.alpha": 8}, kind="megatron").name
    out = invoke("explain", path).output
    assert re.search(r"scale alpha/dim\W+0\.5\b", out) and "policy.megatron_cfg.peft" in out
    bad = invoke("explain", recipe_dir.write({f"{LORA}.dim": 0}, name="bad.yaml").name)
    assert bad.exit_code == 1 and "LR002" in bad.output


def test_schema_out_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "schema" / "lora-rl.schema.json"
    result = invoke("schema", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text(encoding="utf-8")) == recipe_json_schema("07")
    printed = invoke("schema")
    assert json.loads(printed.output) == recipe_json_schema("07")
    blocked = tmp_path / "file"
    blocked.write_text("x")
    failed = invoke("schema", "--out", str(blocked / "s.json"))
    assert failed.exit_code == 2 and "cannot write" in failed.output


def _check_help_links(driver: dict[str, Any]) -> None:
    """Every rule's helpUri opens its own troubleshooting entry (here: the checkout's docs)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    assert driver["informationUri"].startswith("file://")
    for rule in driver["rules"]:
        url = urlparse(rule["helpUri"])
        page = Path(url2pathname(url.path))
        assert page.name == "troubleshooting.md", rule
        assert f'<a id="{url.fragment}"></a>' in page.read_text(), rule["id"]
        assert url.fragment == rule["id"].lower()


def test_docs_url_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    from lora_rl.docs_links import rule_help_uri

    monkeypatch.setenv("LORA_RL_DOCS_URL", "https://git.example.org/team/lora-rl/blob/main/docs")
    assert rule_help_uri("LR102") == \
        "https://git.example.org/team/lora-rl/blob/main/docs/troubleshooting.md#lr102"
