"""Where lora-rl's documentation is, for links in machine-readable output (SARIF's helpUri).

`LORA_RL_DOCS_URL` names a published copy of the `docs/` folder (e.g. your repository's web
view of it); without it the links point at the docs installed with lora-rl (`file:` URIs,
resolvable on the machine that ran `validate`), never at a made-up address.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

ENV_VAR = "LORA_RL_DOCS_URL"


def docs_base() -> str:
    """The docs folder's URL, ending in '/'."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return configured.rstrip("/") + "/"
    for candidate in (Path(__file__).resolve().parent.parent / "docs",
                      Path(sysconfig.get_path("data")) / "share" / "lora-rl" / "docs"):
        if (candidate / "troubleshooting.md").is_file():
            return candidate.as_uri() + "/"
    return "https://pypi.org/project/lora-rl/"


def rule_help_uri(rule_id: str) -> str:
    """The troubleshooting entry of a rule (its `<a id="lr001">` anchor)."""
    return f"{docs_base()}troubleshooting.md#{rule_id.lower()}"
