"""Run megatron-core on a CPU-only torch build (docs/architecture.md, measured facts). Applied
only when CUDA is absent.

megatron-core assumes a GPU in a handful of places that the dense, local-spec (no Transformer
Engine) GPTModel path reaches. Each patch below replaces a call that can only fail on a CPU-only
build, so none of them changes behaviour that worked before:

1. `torch.cuda.current_device()` returns `torch.device("cpu")`. Megatron passes it as `device=`
   for RoPE frequencies, tensor-parallel gather buffers and pipeline shape messages.
2. `torch.cuda.synchronize()` is a no-op. Pipeline send/recv and parallel-state setup call it to
   wait for GPU streams; CPU collectives are already synchronous.
3. Literal `device="cuda"` allocations in `megatron.core.pipeline_parallel.schedules` (the token
   counter of every schedule) go to the CPU: that module sees a `torch` whose tensor factories
   map a CUDA device to the CPU. Only that module is touched, not torch itself.
4. The RNG tracker is Megatron's inference tracker, whose `fork()` is a no-op. The training
   tracker snapshots and restores CUDA generator states, which do not exist here; dropout inside
   Megatron layers then draws from the CPU default generator (Llama's dropouts are zero).
5. MoE: the alltoall token dispatcher (`megatron.core.transformer.moe.token_dispatcher`) creates
   a side `torch.cuda.Stream` at construction and copies its split sizes to the host on it. That
   module sees a `torch.cuda` whose streams are host no-ops (`Stream`, `current_stream`,
   `stream(...)`, `record_event().synchronize()`): on the CPU the sizes already are host
   tensors, so there is nothing to copy or wait for.
6. MoE under expert parallelism: the dispatcher passes its token split sizes to
   `all_to_all_single` after `maybe_move_tensor_to_cpu(..., as_numpy=True)`, which converts only
   CUDA tensors; CPU tensors stay tensors, which the binding rejects ("all_to_all_single():
   incompatible function arguments"). The dispatcher's copy of that function also converts host
   tensors to numpy when asked, as it would have after a device-to-host copy.
7. MoE: `moe_utils.router_gating_linear` tests `te_general_gemm is not None`, a name that module
   binds only when Transformer Engine imports; without it the router raises NameError. It is
   bound to None, the value Megatron means for "no Transformer Engine" (plain torch matmul).

Two more CPU rules are not patches but conventions of this backend:

8. An explicit attention mask is always passed: without one, Megatron builds its default causal
   mask with `device="cuda"`.
9. No fused kernels: `CPU_CONFIG` switches off the fusions that need CUDA, Apex or Transformer
   Engine (softmax, bias+activation, bias+dropout, RoPE, gradient-accumulation, persistent norm;
   for MoE, `model.py` also turns off grouped GEMM and the permute/router fusions).
"""

from __future__ import annotations

import contextlib
import importlib
import types
import warnings
from collections.abc import Callable
from typing import Any

import torch

CPU_CONFIG: dict[str, Any] = {
    "masked_softmax_fusion": False,
    "bias_activation_fusion": False,
    "bias_dropout_fusion": False,
    "apply_rope_fusion": False,
    "gradient_accumulation_fusion": False,
    "persist_layer_norm": False,
}
"""TransformerConfig fields that must be off without CUDA kernels."""

_CUDA_LITERAL_MODULES = ("megatron.core.pipeline_parallel.schedules",)
_CUDA_STREAM_MODULES = ("megatron.core.transformer.moe.token_dispatcher",)
_FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange")
_applied = False


def needed() -> bool:
    return not torch.cuda.is_available()


def apply() -> None:
    """Install every patch once per process (idempotent); a no-op when CUDA is available."""
    global _applied
    if _applied or not needed():
        return
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *args, **kwargs: None
    proxy = _cpu_torch()
    for name in _CUDA_LITERAL_MODULES:
        importlib.import_module(name).torch = proxy
    streams = _host_stream_torch()
    for name in _CUDA_STREAM_MODULES:
        importlib.import_module(name).torch = streams
    dispatcher = importlib.import_module("megatron.core.transformer.moe.token_dispatcher")
    dispatcher.maybe_move_tensor_to_cpu = _host_numpy(dispatcher.maybe_move_tensor_to_cpu)
    moe_utils = importlib.import_module("megatron.core.transformer.moe.moe_utils")
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    from megatron.core.tensor_parallel import random as megatron_random

    megatron_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    _applied = True


def _on_cpu(factory: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def make(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        if device is not None and torch.device(device).type == "cuda":
            device = "cpu"
        return factory(*args, device=device, **kwargs)

    return make


class _CpuTorch(types.ModuleType):
    """`torch`, except that the tensor factories above allocate CUDA requests on the CPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _cpu_torch() -> types.ModuleType:
    proxy = _CpuTorch("torch")
    for name in _FACTORIES:
        setattr(proxy, name, _on_cpu(getattr(torch, name)))
    return proxy


def _host_numpy(move: Callable[..., Any]) -> Callable[..., Any]:
    def moved(tensor: Any, as_numpy: bool = False, record_stream: bool = False) -> Any:
        if as_numpy and torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.numpy()
        return move(tensor, as_numpy=as_numpy, record_stream=record_stream)

    return moved


class _HostStream:
    """A CUDA stream stand-in on which every operation is already complete."""

    def wait_stream(self, other: Any) -> None:
        return None

    def record_event(self, event: Any = None) -> Any:
        return types.SimpleNamespace(synchronize=lambda: None)


_CURRENT_STREAM = _HostStream()


class _HostStreamCuda(types.ModuleType):
    """`torch.cuda`, except that streams are `_HostStream`s."""

    Stream = _HostStream

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)

    @staticmethod
    def current_stream(*args: Any, **kwargs: Any) -> _HostStream:
        return _CURRENT_STREAM

    @staticmethod
    def stream(stream: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _host_stream_torch() -> types.ModuleType:
    proxy = _CpuTorch("torch")
    proxy.cuda = _HostStreamCuda("torch.cuda")  # type: ignore[attr-defined]
    return proxy


def import_megatron() -> types.ModuleType:
    """`megatron.core`, with a clear install hint when it is missing. Its import warns that Apex
    and Transformer Engine are absent (expected: the local spec uses torch modules), about its
    own deprecated modules and, through torch, about its `torch.jit.script` kernels; those
    import-time warnings are silenced."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"megatron\.")
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script",
                                    category=DeprecationWarning)
            module = importlib.import_module("megatron.core")
            importlib.import_module("megatron.core.models.gpt.gpt_layer_specs")
    except ImportError as exc:
        raise ImportError(
            "the Megatron backend needs megatron-core: pip install 'lora-rl[megatron]' "
            f"(megatron-core 0.16 and psutil; keep torch pinned) — {exc}") from exc
    apply()
    return module
