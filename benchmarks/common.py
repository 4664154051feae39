"""Shared benchmark plumbing: a locally built model, isolated worker processes, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
THREADS = int(os.environ.get("LORA_RL_BENCH_THREADS", "2"))

# Quick: minutes in CI. Full: a 68M-parameter Llama, in the 50-100M range the benchmark issue
# asks for; a step of full fine-tuning takes ~8-11 s here.
SHAPES = {
    True: {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2, "vocab": 4096, "batch": 4,
           "seq": 128, "steps": 6},
    False: {"hidden": 768, "layers": 8, "heads": 12, "kv_heads": 4, "vocab": 8192, "batch": 8,
            "seq": 256, "steps": 10},
}


def bench_model(quick: bool) -> Path:
    """A random Llama of the benchmark shape, built once into the benchmark cache."""
    shape = SHAPES[quick]
    root = Path(os.environ.get("LORA_RL_CACHE", Path.home() / ".cache" / "lora-rl"))
    target = root / f"bench-llama-{shape['hidden']}x{shape['layers']}"
    if (target / "tokenizer.json").is_file():
        return target
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=shape["hidden"], intermediate_size=shape["hidden"] * 3,
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], vocab_size=shape["vocab"],
                         max_position_embeddings=1024, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(target)
    _vocab_tokenizer(shape["vocab"]).save_pretrained(target)  # TRL insists on a tokenizer
    return target


def _vocab_tokenizer(size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def run_worker(module: str, spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run `python -m module --worker SPEC` in a fresh process (own peak RSS, same threads)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    done = subprocess.run([sys.executable, "-m", module, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{module} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class RssPeak:
    """The highest RSS seen while the block runs, sampled every millisecond from a thread.

    `ru_maxrss` covers the whole process life, so transient peaks of model loading would hide
    what the training steps themselves hold (weights, gradients, optimizer state, activations)."""

    def __init__(self) -> None:
        import threading

        self.peak_mib = current_rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak_mib = max(self.peak_mib, current_rss_mib())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, current_rss_mib())


def allocator_peak_mib(run: Callable[[], object]) -> float:
    """The peak of live torch tensor bytes allocated while `run()` runs, above what was live
    before it, from the profiler's allocation/free events. Unlike RSS it does not count memory
    the C allocator keeps after tensors are freed (glibc holds on to freed heap), so it is what
    the tensors themselves need."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak / 2**20


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of per-pair ratios, each pair measured seconds apart: the machine's speed
    drifts by 15-30 % within minutes, so only neighbouring runs compare fairly."""
    return median([a / b for a, b in zip(numerators, denominators, strict=True)])


def machine() -> dict[str, Any]:
    import torch

    return {"cpu_count": os.cpu_count(), "threads": THREADS, "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}


def save(name: str, payload: dict[str, Any], quick: bool) -> Path:
    """results/NAME.json, or NAME-quick.json: a quick run (CI) must not overwrite the full run's
    numbers that the README quotes."""
    RESULTS.mkdir(exist_ok=True)
    path = result_path(name, quick)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def result_path(name: str, quick: bool) -> Path:
    return RESULTS / f"{name}{'-quick' if quick else ''}.json"


def utc_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
