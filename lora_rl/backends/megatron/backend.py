"""The Megatron Core backend: HF Llama -> GPTModel stage (tp/pp/dp) + LoRA -> train steps.

Optimizer, schedule and clipping come from `policy.megatron_cfg` (`optimizer`, `scheduler`,
`optimizer.clip_grad`), not from the DTensor-side `policy.optimizer` / `max_grad_norm`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.distributed as dist

from lora_rl.backends.base import (
    BackendInputs,
    FrozenReference,
    LossFn,
    StepStats,
    TokenBatch,
    adapter_off_reference,
    eval_mode,
)
from lora_rl.backends.megatron import checkpoint_state, cpu_shim, schedule
from lora_rl.backends.megatron.adapters import MegatronLora, apply_megatron_lora
from lora_rl.backends.megatron.generation_copy import GenerationCopy
from lora_rl.backends.megatron.model import (
    build_stage,
    load_hf_weights,
    load_shape,
    named_parameters,
)
from lora_rl.backends.megatron.optim import (
    MainParams,
    build_optimizer,
    build_scheduler,
    clip_gradients,
    partial_over_tensor_parallel,
    sum_gradients,
    whole_model_sum,
)
from lora_rl.backends.megatron.parallel import (
    all_reduce_sum,
    init_model_parallel,
)
from lora_rl.backends.megatron.sharding import Sharder, kind_of
from lora_rl.config.lora import MegatronPeftConfig
from lora_rl.errors import SetupError
from lora_rl.lora import lora_spec_from_config
from lora_rl.model_source import require_local_model_dir
from lora_rl.training.runtime import Runtime


class MegatronBackend:
    def __init__(self, inputs: BackendInputs, runtime: Runtime) -> None:
        cpu_shim.import_megatron()
        policy, mg = inputs.policy, inputs.policy.megatron_cfg
        seed = inputs.seed
        if mg.pipeline_dtype not in (None, policy.precision):
            raise SetupError(f"policy.megatron_cfg.pipeline_dtype is {mg.pipeline_dtype} but "
                             f"policy.precision is {policy.precision}: pipeline stages exchange "
                             "activations in the model's dtype; leave pipeline_dtype null")
        self.runtime = runtime
        self.layout = init_model_parallel(runtime, mg.tensor_model_parallel_size,
                                          mg.pipeline_model_parallel_size, seed,
                                          mg.expert_model_parallel_size, mg.sequence_parallel)
        self.dp_rank, self.dp_size = self.layout.dp_rank, self.layout.dp
        self.model_dir = require_local_model_dir(policy.model_name)
        self.shape = load_shape(self.model_dir, policy.trust_remote_code)
        self.sharder = Sharder(self.layout, self.shape.vocab_size)
        dtype = getattr(torch, policy.precision)
        self.model = build_stage(self.shape, self.layout, dtype, mg.activation_checkpointing)
        load_hf_weights(self.model, self.model_dir, self.shape, self.sharder, dtype,
                        policy.trust_remote_code)
        self.lora: MegatronLora | None = None
        if mg.peft.enabled:
            self.lora = apply_megatron_lora(self.model, mg.peft, self.shape.linear_module_names(),
                                            self.sharder, seed)
        named = [(n, p) for n, p in named_parameters(self.model) if p.requires_grad]
        self.weights = checkpoint_state.TrainableWeights(
            [n for n, _ in named],
            MainParams([p for _, p in named], getattr(torch, mg.optimizer.params_dtype)),
            self.sharder, self.shape, lora=self.lora is not None)
        if policy.init_adapter_path:
            self._load_adapter(Path(policy.init_adapter_path), mg.peft)
        self.optimizer = build_optimizer(
            self.weights.names, self.weights.main.params, mg.optimizer,
            mg.peft.lora_plus_lr_ratio if self.lora is not None else None)
        self.scheduler = build_scheduler(self.optimizer, mg.optimizer, mg.scheduler,
                                         inputs.max_num_steps)
        self.max_grad_norm = mg.optimizer.clip_grad or None  # 0: no clipping, as Megatron
        self._partial_over_tp = [partial_over_tensor_parallel(n, p, self.layout)
                                 for n, p in zip(self.weights.names, self.weights.main.model,
                                                 strict=True)]
        self.lora_dropout = mg.peft.dropout if self.lora is not None else 0.0
        self._report = self._count_parameters()
        self._generation_copy = GenerationCopy(
            lambda: checkpoint_state.whole_weights(self.weights), self.model_dir,
            policy.precision, policy.trust_remote_code,
            lora=lora_spec_from_config(mg.peft) if self.lora is not None else None)
        # Full fine-tuning's reference policy: the starting weights of this rank's shard and
        # stage, copied before any step or resume (with LoRA: the adapter turned off).
        self._reference = FrozenReference(self.model) \
            if self.lora is None and inputs.needs_reference else None

    def _load_adapter(self, directory: Path, peft: MegatronPeftConfig) -> None:
        from lora_rl.interop.adapter_fit import adapter_fit_problem, lora_scale, residual_init_of
        from lora_rl.interop.peft_format import AdapterFormatError, read_adapter

        if self.lora is None:
            raise SetupError("policy.init_adapter_path needs megatron_cfg.peft.enabled")
        if peft.init_lora_weights is not True:  # validate: LR156
            raise SetupError(f"policy.init_adapter_path cannot replace the "
                             f"{peft.init_lora_weights} init, which rewrote the base weights")
        config, tensors = read_adapter(directory)
        problem = adapter_fit_problem(config, peft.dim,
                                      lora_scale(peft.dim, peft.alpha, peft.use_rslora))
        init = residual_init_of(config)
        if init is not None:
            raise AdapterFormatError(f"{directory}: the adapter was saved with "
                                     f"init_lora_weights {init!r}, which rewrote its base "
                                     "weights; save it from peft with "
                                     "path_initial_model_for_weight_conversion (a plain LoRA)")
        if problem:
            raise AdapterFormatError(f"{directory}: {problem}; set megatron_cfg.peft's dim, "
                                     "alpha and use_rslora to the adapter's")
        dora = bool(config.get("use_dora", False))
        if dora != peft.use_dora:
            raise AdapterFormatError(f"{directory}: the adapter has use_dora {str(dora).lower()}, "
                                     "the recipe the opposite; set megatron_cfg.peft.use_dora: "
                                     f"{str(dora).lower()}")
        checkpoint_state.load_weights(self.weights, tensors)

    def _count_parameters(self) -> dict[str, int | float | str]:
        """Whole-model counts (collective): sharded parameters in full, replicated ones once."""
        padding = self.sharder.padded_vocab_size - self.shape.vocab_size
        last_tp_rank = self.layout.tp_rank == self.layout.tp - 1

        def real(name: str, param: torch.Tensor) -> int:
            # Vocabulary rows added to make the vocabulary divisible by tp sit on the last
            # tensor-parallel rank's shard; they are not part of the model.
            if padding and last_tp_rank and kind_of(name) == "vocab_rows":
                return param.numel() - padding * param.shape[1]
            return param.numel()

        counts = whole_model_sum(
            [(n, torch.tensor([real(n, p) if p.requires_grad else 0, real(n, p)]))
             for n, p in named_parameters(self.model)], self.layout)
        report: dict[str, int | float | str] = {"trainable_params": int(counts[0]),
                                                "total_params": int(counts[1])}
        if self.lora is not None:
            report["lora_scale"] = self.lora.scale
            report["lora_modules"] = len(self.lora.adapted)
        return report

    # ---- forward / backward ---------------------------------------------------------------

    def _same_dropout_across_tensor_parallel(self) -> None:
        """LoRA dropout on a replicated activation (a column-parallel input, a row-parallel
        output) must drop the same elements on every tensor-parallel rank, or the replicas drift
        apart: give the tp group one seed, drawn from the first rank's per-step stream."""
        if not (self.model.training and self.lora_dropout > 0 and self.layout.tp > 1):
            return
        from megatron.core import parallel_state

        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
        dist.broadcast(seed, src=parallel_state.get_tensor_model_parallel_src_rank(),
                       group=self.layout.tp_group)
        torch.manual_seed(int(seed))

    def token_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        self._same_dropout_across_tensor_parallel()
        return schedule.logprobs(self.model, self.layout, self.shape.vocab_size, batch)

    def forward_backward(self, micro_batches: list[TokenBatch],
                         loss_fn: LossFn) -> dict[str, float]:
        self.model.train()
        self._same_dropout_across_tensor_parallel()
        return schedule.forward_backward(self.model, self.layout, self.shape.vocab_size,
                                         micro_batches, loss_fn)

    def optimizer_step(self) -> StepStats:
        main = self.weights.main
        main.take_grads()
        sum_gradients(self.weights.names, main.params, self._partial_over_tp, self.layout)
        norm = clip_gradients(self.weights.names, main.params, self.max_grad_norm, self.layout)
        finite = math.isfinite(norm)
        if finite:
            self.optimizer.step()
            self.scheduler.step()
            main.publish()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)
        return StepStats(grad_norm=norm, lr=self.scheduler.get_last_lr()[0], skipped=not finite)

    def reference_policy(self) -> AbstractContextManager[None]:
        if self._reference is not None:
            return self._reference.swapped_in()
        return adapter_off_reference(self.model, self.lora is not None)

    def eval_mode(self) -> AbstractContextManager[None]:
        return eval_mode(self.model)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        return all_reduce_sum(values, self.layout.dp_group, self.layout.dp)

    # ---- checkpoints and export -----------------------------------------------------------

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return checkpoint_state.checkpoint_tensors(self.weights, self.optimizer)

    def optimizer_meta(self) -> dict:
        return checkpoint_state.optimizer_meta(self.optimizer, self.scheduler)

    def load_checkpoint_tensors(self, tensors: dict[str, dict[str, torch.Tensor]],
                                optimizer_meta: dict) -> None:
        checkpoint_state.load_checkpoint_tensors(self.weights, self.optimizer, self.scheduler,
                                                 tensors, optimizer_meta)

    def trainable_report(self) -> dict[str, int | float | str]:
        return dict(self._report)

    @contextlib.contextmanager
    def generation_model(self) -> Iterator[torch.nn.Module]:
        with self._generation_copy.synced() as module:
            yield module
