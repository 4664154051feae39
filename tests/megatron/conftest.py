"""Fixtures for the Megatron backend: a tiny HF Llama on disk, real multi-process gloo runs of
`_worker.py`, and the single-process HF + LoRA reference they are compared with."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("_worker.py")
REPO = Path(__file__).resolve().parents[2]
MEGATRON_MISSING = "megatron-core is not installed: pip install -e '.[megatron]'"


def megatron_available() -> bool:
    """Without importing it: megatron-core's import is slow and noisy (cpu_shim silences it)."""
    try:
        return importlib.util.find_spec("megatron.core") is not None
    except ModuleNotFoundError:  # no `megatron` package at all
        return False


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Hidden 64, 4 layers (2 per stage at pp=2), 4 heads, 2 KV heads, vocab 128, fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                         max_position_embeddings=64, tie_word_embeddings=False)
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_moe_dir(tmp_path_factory) -> Path:
    """A tiny random Mixtral (2 MoE layers of 4 experts, top-2; lora_rl.tiny.families)."""
    from lora_rl.tiny.families import build_family_model

    return build_family_model("mixtral", tmp_path_factory.mktemp("tiny-moe") / "mixtral")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(world: int, args: list[str], timeout: float = 300, worker: Path = WORKER) -> None:
    """Start `world` ranks of `worker` (default `_worker.py`) on loopback gloo and wait; fail
    with their stderr."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "LORA_RL_THREADS": "1", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(worker), *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    failures = []
    for rank, proc in enumerate(procs):
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            _, stderr = proc.communicate()
            raise AssertionError(f"rank {rank} still running after {timeout} s; its stderr:\n"
                                 f"{stderr[-3000:]}") from None
        if proc.returncode != 0:
            failures.append(f"rank {rank} exited {proc.returncode}:\n{stderr[-3000:]}")
    if failures:
        raise AssertionError("\n".join(failures))


@pytest.fixture(scope="session")
def megatron_run(request, tmp_path_factory):
    """(tp, pp, world, recompute, targets, model, ep, peft, sp) -> the worker's result.pt, each
    run once per session; `targets` are `peft.target_modules` (default: the four fused modules);
    `model` is "llama" (tiny_llama_dir) or "moe" (tiny_moe_dir); `ep` expert parallelism;
    `peft` further `peft` fields as (key, value) pairs (`(("use_dora", True),)`); `sp`
    sequence parallelism."""
    cache: dict[tuple, dict] = {}
    # Built on first use only: a dense-only session does not pay for the MoE model.
    models = {"llama": "tiny_llama_dir", "moe": "tiny_moe_dir"}

    def run(tp: int, pp: int, world: int, recompute: bool = False,
            targets: tuple[str, ...] = (), model: str = "llama", ep: int = 1,
            peft: tuple[tuple[str, object], ...] = (), sp: bool = False) -> dict:
        key = (tp, pp, world, recompute, targets, model, ep, peft, sp)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"megatron-{model}-tp{tp}-pp{pp}-ep{ep}-w{world}"
                                          f"{'-sp' if sp else ''}")
            model_dir = request.getfixturevalue(models[model])
            run_ranks(world, [str(model_dir), str(tp), str(pp), str(int(recompute)),
                              str(out), ",".join(targets), str(ep), json.dumps(dict(peft)),
                              str(int(sp))])
            cache[key] = torch.load(out / "result.pt")
        return cache[key]

    return run
