"""Startup cost of `lora-rl validate`: one recipe and 100 recipes in one process, against the
bare interpreter (`python -c pass`). Target: at most +0.3 s for one recipe.

Also timed: the library floor, a script that imports what the CLI is built on (typer, rich,
PyYAML, pydantic) and validates one one-field pydantic model. What `validate` takes above
the floor is lora-rl's own: its config models, rules, YAML positions and report.

    python benchmarks/validate_startup.py            # 11 runs each, median
    python benchmarks/validate_startup.py --quick    # 3 runs each
    python benchmarks/validate_startup.py --json     # the numbers, for CI

Wall times are medians of N runs after one warm-up run (which fills the OS file cache,
Python's bytecode cache and lora-rl's validator cache, see lora_rl/config/validator_cache.py).
The commands take turns, so a noisy neighbour slows all of them alike; compare medians, not
single runs. With PYTHONDONTWRITEBYTECODE set (some CI images and containers set it) no
bytecode cache is written and every run compiles lora-rl's modules again (+0.05-0.07 s); the
result says so (`bytecode_cache`). `LORA_RL_VALIDATOR_CACHE=0` measures a first run's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.3
COPIES = 100
FALLBACK_RECIPE = """\
sft:
  max_num_steps: 10
  val_global_batch_size: 4
policy:
  model_name: lora-rl/tiny-llama
  precision: float32
  train_global_batch_size: 4
  train_micro_batch_size: 1
  dtensor_cfg:
    _v2: true
    lora_cfg:
      enabled: true
      dim: 8
      alpha: 16
      use_triton: false
data:
  dataset_name: tiny-arithmetic
"""


def _recipe_text() -> str:
    """The main recipe of the repository when it is there (it has no `defaults:`), else a
    minimal equivalent."""
    main = ROOT / "recipes" / "sft-tiny-dtensor-lora.yaml"
    if main.is_file() and "defaults:" not in main.read_text(encoding="utf-8"):
        return main.read_text(encoding="utf-8")
    return FALLBACK_RECIPE


def _validate_command() -> list[str]:
    """The console script installed with this interpreter. Not the first `lora-rl` on PATH:
    a version manager's shim there (pyenv's is a bash script that runs `pyenv exec`) adds
    ~0.1 s that the baseline, `sys.executable -c pass`, does not pay."""
    script = Path(sys.executable).parent / "lora-rl"
    if script.is_file():
        return [str(script)]
    found = shutil.which("lora-rl")
    return [found] if found else [sys.executable, "-m", "lora_rl"]


LIBRARY_FLOOR = """\
import typer, rich.console, yaml, pydantic
class Recipe(pydantic.BaseModel):
    steps: int = 0
Recipe(steps=1)
"""


def _time_once(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed


def _time(commands: dict[str, list[str]], runs: int, cwd: Path) -> dict[str, list[float]]:
    """Wall times of each command, the commands taking turns; the first round warms caches."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for index in range(runs + 1):
        for name, command in commands.items():
            elapsed = _time_once(command, cwd)
            if index:
                times[name].append(elapsed)
    return times


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and return the numbers (seconds); see the module docstring."""
    runs = 3 if quick else 11
    validate = _validate_command()
    with tempfile.TemporaryDirectory(prefix="lora-rl-startup-") as tmp:
        work = Path(tmp)
        text = _recipe_text()
        recipes = []
        for index in range(COPIES):
            path = work / f"recipe_{index:03d}.yaml"
            path.write_text(text, encoding="utf-8")
            recipes.append(path.name)
        samples = _time({
            "python": [sys.executable, "-c", "pass"],
            "floor": [sys.executable, "-c", LIBRARY_FLOOR],
            "one": [*validate, "validate", recipes[0]],
            "hundred": [*validate, "validate", *recipes],
        }, runs, work)
    median = {name: statistics.median(values) for name, values in samples.items()}
    overhead = median["one"] - median["python"]
    return {
        "runs": runs,
        "command": " ".join(Path(validate[0]).name if i == 0 else part
                            for i, part in enumerate(validate)) + " validate",
        "python_s": median["python"],
        "library_floor_s": median["floor"],
        "one_recipe_s": median["one"],
        "hundred_recipes_s": median["hundred"],
        "one_recipe_overhead_s": overhead,
        "library_floor_overhead_s": median["floor"] - median["python"],
        "one_recipe_over_floor_s": median["one"] - median["floor"],
        "hundred_recipes_overhead_s": median["hundred"] - median["python"],
        "per_extra_recipe_s": (median["hundred"] - median["one"]) / (COPIES - 1),
        "target_overhead_s": TARGET_S,
        "within_target": overhead <= TARGET_S,
        "bytecode_cache": not os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "validator_cache": os.environ.get("LORA_RL_VALIDATOR_CACHE", "1") != "0",
        "samples_s": samples,
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lora-rl validate startup (median of {result['runs']} runs)")
    table.add_column("command")
    table.add_column("wall time", justify="right")
    table.add_column("vs python -c pass", justify="right")
    base = result["python_s"]
    table.add_row("python -c pass", f"{base:.3f} s", "")
    floor = result["library_floor_s"]
    table.add_row("library floor (typer, rich, PyYAML, pydantic)", f"{floor:.3f} s",
                  f"{floor - base:+.3f} s")
    table.add_row(f"{result['command']} (1 recipe)", f"{result['one_recipe_s']:.3f} s",
                  f"{result['one_recipe_s'] - base:+.3f} s")
    table.add_row(f"{result['command']} ({COPIES} recipes)",
                  f"{result['hundred_recipes_s']:.3f} s",
                  f"{result['hundred_recipes_s'] - base:+.3f} s")
    console = Console()
    console.print(table)
    verdict = "[green]within[/green]" if result["within_target"] else "[red]over[/red]"
    if not result["bytecode_cache"]:
        console.print("note: PYTHONDONTWRITEBYTECODE is set: lora-rl's modules are compiled "
                      "on every run")
    console.print(f"one recipe: {result['one_recipe_overhead_s']:+.3f} s over the interpreter, "
                  f"{verdict} the +{TARGET_S} s target; each further recipe "
                  f"{result['per_extra_recipe_s'] * 1000:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs instead of 11")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
