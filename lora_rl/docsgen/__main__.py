"""`python -m lora_rl.docsgen [--out docs] [--check]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_rl.docsgen import REGENERATE, stale_pages, write_pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_rl.docsgen",
                                     description="Write the generated documentation pages.")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="target directory")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a page is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages(args.out)
        for name in stale:
            print(f"{args.out / name} is stale; regenerate with: {REGENERATE}", file=sys.stderr)
        return 1 if stale else 0
    for path in write_pages(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
