"""`python -m benchmarks [--quick]`: every benchmark, a table of ratios, JSON in results/."""

from __future__ import annotations

import argparse
import importlib
import json
import time

from rich.console import Console
from rich.table import Table

from benchmarks.common import result_path, save, utc_now

MODES = (("stored_activations", ""), ("activation_checkpointing", ", act. ckpt"))
BENCHMARKS = ["lora_layer", "train_step", "trl_compare", "generation", "validate_startup",
              "packing", "multi_adapter", "adapter_batching"]


def _rows(name: str, result: dict) -> list[tuple[str, str, str, str]]:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    if name == "train_step":
        rows = []
        for mode, label in MODES:
            part = result[mode]
            rows += [(f"train step: LoRA / full, time{label}",
                      fmt(part["ratios"]["step_time_ratio"]), "<= 0.75",
                      fmt(part["met"]["step_time_ratio"])),
                     (f"train step: LoRA / full, memory (RSS){label}",
                      fmt(part["ratios"]["memory_ratio"]), "<= 0.6",
                      fmt(part["met"]["memory_ratio"])),
                     (f"train step: LoRA / full, memory (tensor bytes){label}",
                      fmt(part["ratios"]["tensor_memory_ratio"]), "<= 0.6",
                      fmt(part["met"]["tensor_memory_ratio"]))]
        for micro, part in result.get("memory_by_micro_batch", {}).items():
            rows += [(f"  memory (RSS / tensor bytes), micro-batch {micro}",
                      f"{part['memory_ratio']:.3f} / {part['tensor_memory_ratio']:.3f}",
                      "<= 0.6", f"{part['met']['memory_ratio']} / "
                      f"{part['met']['tensor_memory_ratio']}")]
        return rows
    if name == "trl_compare":
        return [(f"tokens/s: lora-rl / TRL+PEFT{label}", fmt(result[mode]["ratio"]), ">= 1.3",
                 fmt(result[mode]["met"])) for mode, label in MODES]
    if name == "generation":
        return [("generation: merged / base tok/s", fmt(result["merged_over_base"]), ">= 0.95",
                 fmt(result["met"]))]
    if name == "lora_layer":
        return [(f"layer fwd+bwd / full: {k}", fmt(v), "", "")
                for k, v in result["ratio_vs_full"].items()]
    if name == "multi_adapter":
        return [("multi-adapter: joint peak RSS / solo peaks added", fmt(result["memory_ratio"]),
                 f"<= {result['memory_target']}", fmt(result["met"])),
                ("  joint wall / solo walls added", fmt(result["wall_ratio"]), "", "")]
    if name == "adapter_batching":
        rows = []
        for part in result["by_adapters"]:
            k = part["adapters"]
            rows += [(f"{k} adapters, batched / in turns: layer fwd+bwd time",
                      fmt(part["time_ratio_batched_over_turns"]), "", ""),
                     ("  activations held at once, batched / in turns",
                      fmt(part["activation_ratio_batched_over_turns"]), "", "")]
        return rows
    if name == "validate_startup":
        return [("validate 1 recipe: s over python -c pass", fmt(result["one_recipe_overhead_s"]),
                 f"<= {result['target_overhead_s']}", fmt(result["within_target"])),
                ("  of which the library floor (typer, rich, PyYAML, pydantic)",
                 fmt(result["library_floor_overhead_s"]), "", ""),
                ("validate 100 recipes: s over python -c pass",
                 fmt(result["hundred_recipes_overhead_s"]), "", "")]
    if name == "packing":
        cells = result["token_cells"]
        return [("packing: packed / padded tokens/s (long-tailed SFT)",
                 fmt(result["speedup"]), "", ""),
                ("  token cells computed: packed / padded",
                 f"{cells['packed']} / {cells['padded']}", "", "")]
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes, a few minutes")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS)
    args = parser.parse_args()
    console = Console()
    summary: dict = {}
    if args.only and result_path("summary", args.quick).is_file():
        # A partial run updates its rows of the last summary; each row says when it was measured.
        summary = json.loads(result_path("summary", args.quick).read_text())["results"]
    table = Table(title="lora-rl benchmarks" + (" (quick)" if args.quick else ""))
    for column in ("measure", "value", "target", "met"):
        table.add_column(column)
    for name in args.only or BENCHMARKS:
        started = time.perf_counter()
        try:
            result = importlib.import_module(f"benchmarks.{name}").run(args.quick)
        except Exception as exc:  # a missing optional dependency must not hide the others
            console.print(f"[red]{name} failed:[/red] {exc}")
            summary[name] = {"error": str(exc)}
            continue
        summary[name] = {**result, "measured_at": utc_now()}
        console.print(f"{name}: {time.perf_counter() - started:.0f} s")
        for row in _rows(name, result):
            table.add_row(*row)
    console.print(table)
    path = save("summary", {"results": summary}, args.quick)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
