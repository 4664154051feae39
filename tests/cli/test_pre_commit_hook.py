"""The `lora-rl-validate` pre-commit hook works from a `repo:` entry (`pre-commit try-repo`
builds it from this checkout exactly as `repo: <url>` would)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
                        "PATH": "/usr/bin:/bin"})


def test_hook_manifest_names_the_console_script() -> None:
    import yaml

    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "lora-rl-validate" and hook["entry"] == "lora-rl validate"
    assert hook["language"] == "python"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pre-commit") is None, reason="pre-commit is in the dev extra")
def test_try_repo_reports_a_bad_recipe(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    good = (REPO / "recipes" / "sft-tiny-dtensor-lora.yaml").read_text()
    (project / "recipes" / "good.yaml").write_text(good)
    (project / "recipes" / "bad.yaml").write_text(good.replace("dim: 8", "dimm: 8"))
    _git(project, "init", "-q")
    _git(project, "add", ".")
    env_home = {"PRE_COMMIT_HOME": str(tmp_path / "cache")}

    def try_repo(*files: str) -> subprocess.CompletedProcess:
        return subprocess.run(["pre-commit", "try-repo", str(REPO), "lora-rl-validate",
                               "--files", *files], cwd=project, capture_output=True, text=True,
                              env={**os.environ, **env_home}, timeout=900)

    ok = try_repo("recipes/good.yaml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = try_repo("recipes/good.yaml", "recipes/bad.yaml")
    assert bad.returncode == 1
    assert "recipes/bad.yaml" in bad.stdout and "LR001" in bad.stdout
    assert "did you mean 'dim'" in bad.stdout
