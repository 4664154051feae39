"""Build the embedded tiny model into a directory (same as `lora-rl init-model --out DIR`)."""

import argparse
from pathlib import Path

from lora_rl.tiny import build_tiny_model

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_model(args.out, args.seed))
