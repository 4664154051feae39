"""Generated documentation pages, each `render()`ed from the code it documents.

`python -m lora_rl.docsgen [--out docs] [--check]` (or `lora-rl docs`) writes them; `--check`
exits 1 when a page on disk differs from what the code produces now (CI and tests/docs use it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def pages() -> dict[str, Callable[[], str]]:
    from lora_rl.docsgen import reference, troubleshooting

    return {"config-reference.md": reference.render,
            "troubleshooting.md": troubleshooting.render}


REGENERATE = "python -m lora_rl.docsgen --out docs"


def stale_pages(out: Path) -> list[str]:
    """Names of generated pages in `out` that are missing or differ from the code."""
    stale = []
    for name, render in pages().items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render():
            stale.append(name)
    return stale


def write_pages(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, render in pages().items():
        path = out / name
        path.write_text(render(), encoding="utf-8")
        written.append(path)
    return written
