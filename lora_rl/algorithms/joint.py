"""A multi-adapter run: several recipes train their LoRA adapters on one loaded base model.

Each recipe keeps everything of its own: its `Algorithm` (data, data order, seed, loss), its
optimizer and schedule (a `DTensorBackend` over the shared model), its `TrainingSession`
(checkpoint_dir, metrics log, resume, export state). Only the frozen base weights are shared,
loaded once (`AdapterSlots`). A joint step runs one `Algorithm.advance` of every adapter still
training, in recipe order, each with its own adapter installed ("turns").

Why turns and not one base matmul over the rows of all adapters with per-row adapter selection
(the multi-LoRA serving kernels, S-LoRA / Punica): the loop is written once and an adapter's
step is exactly its solo step, so its losses equal its solo run's (to 1e-5 in fp32, tested)
whatever the other adapters do; batching rows of different adapters would change each step's
batch shapes and reduction order, and DPO's reference pass and GRPO's rollouts would need one
schedule for all. Memory, the point of sharing, is won either way: the base is loaded once.
On a CPU the matmuls are compute-bound, so a batched base matmul would save no time here either
(see benchmarks/README.md, "multi-adapter").

Each adapter's run ends on its own: its last step or epoch, a stop request (every adapter
checkpoints), or a failure (a non-finite loss, bad data: any expected `LoraRlError`), which is
reported with the adapter's name while the others go on. DTensor backend: SFT, DPO and GRPO
in one process; SFT and DPO also tensor-parallel, every rank running the same adapters in the
same order on a base sharded once (`adapter_slots.shard_installed`). Rule LR702 refuses the
rest at validate time.

GRPO: the torch generator samples from the model the backend trains, so the shared base is the
one generation engine and the adapters are its LoRA slots. A GRPO adapter samples in its own
turn, with its adapter installed (merged in fp32 and restored bit for bit, or split) and its
own seed (`seed_step(seed, step, 0)`): its rollouts are its solo run's, whatever the others did.
GRPO adapters that sample with vLLM share one vLLM engine, the base loaded into it once, each
adapter in a LoRA slot of its own, synced split-weight in its turn
(`generation.shared_vllm`); their rollouts are their solo runs' too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from lora_rl.algorithms import algorithm_class, backend_inputs
from lora_rl.algorithms.base import Algorithm
from lora_rl.backends.dtensor.adapter_slots import AdapterSlots, shard_installed
from lora_rl.config.recipe import RecipeConfig
from lora_rl.errors import LoraRlError, SetupError
from lora_rl.training.runtime import Runtime


@dataclass
class Member:
    """One adapter of the run."""

    name: str
    algorithm: Algorithm | None = None
    failure: str | None = None
    training: bool = False


class JointRun:
    def __init__(self, cfgs: Sequence[RecipeConfig], names: Sequence[str],
                 runtime: Runtime) -> None:
        if len(cfgs) != len(names) or len(set(names)) != len(names):
            raise ValueError("one distinct name per recipe")
        self.cfgs = list(cfgs)
        self.runtime = runtime
        self.members = [Member(name) for name in names]
        self.slots: AdapterSlots | None = None
        self.vllm = None
        """The vLLM engine the GRPO adapters that sample with vLLM share (None: none do)."""

    # ---- build ----------------------------------------------------------------------------

    def build(self) -> None:
        """Load the base once, then every adapter with its own backend and algorithm."""
        from lora_rl.backends.dtensor import DTensorBackend
        from lora_rl.backends.dtensor.model import BuiltPolicy, load_hf_model
        from lora_rl.model_source import require_local_model_dir
        from lora_rl.preflight import preflight

        for cfg in self.cfgs:
            preflight(cfg)
        policy = self.cfgs[0].policy  # LR700: every recipe loads the same base the same way
        model_dir = require_local_model_dir(policy.model_name)
        model = load_hf_model(model_dir, policy.precision, policy.trust_remote_code,
                              policy.quantization)
        self.slots = AdapterSlots(model)
        reports = {member.name: self.slots.add(member.name, cfg.policy, cfg.algorithm_config.seed)
                   for member, cfg in zip(self.members, self.cfgs, strict=True)}
        mesh = self._mesh()
        for member, cfg in zip(self.members, self.cfgs, strict=True):
            with self.slots.installed(member.name):
                if mesh is not None:
                    shard_installed(model, mesh["tp"])
                built = BuiltPolicy(model, model_dir, reports[member.name], mesh)
                backend = DTensorBackend(backend_inputs(cfg), self.runtime, built)
                member.algorithm = algorithm_class(cfg)(cfg, backend, self.runtime)
                member.algorithm.session.label = member.name
        if policy.dtensor_cfg.activation_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self._share_vllm()

    def _share_vllm(self) -> None:
        """One vLLM engine for the GRPO adapters that sample with vLLM, a LoRA slot each."""
        from lora_rl.config.joint import uses_vllm
        from lora_rl.generation.shared_vllm import ServedAdapter, SharedVllmEngine

        adapters = [ServedAdapter(member.name, cfg.policy, member.algorithm.backend,
                                  cfg.grpo.num_prompts_per_step
                                  * cfg.grpo.num_generations_per_prompt)
                    for member, cfg in zip(self.members, self.cfgs, strict=True)
                    if uses_vllm(cfg)]
        if not adapters:
            return
        self.vllm = SharedVllmEngine(adapters)
        for member in self.members:
            if member.name in self.vllm.slots:
                member.algorithm.engine = self.vllm.slots[member.name]

    def _mesh(self):
        """The (dp, tp) mesh of a tensor-parallel joint run (dp = 1: rule LR702); None in one
        process."""
        if self.runtime.world_size == 1:
            return None
        from torch.distributed.device_mesh import init_device_mesh

        tp = self.cfgs[0].policy.dtensor_cfg.tensor_parallel_size
        if tp != self.runtime.world_size:
            raise SetupError("a multi-adapter run is tensor-parallel only: "
                             f"{self.runtime.world_size} ranks for tensor_parallel_size {tp}")
        return init_device_mesh(self.runtime.device.type, (1, tp), mesh_dim_names=("dp", "tp"))

    # ---- train ----------------------------------------------------------------------------

    def train(self) -> None:
        for member in self.members:
            with self._turn(member) as algorithm:
                algorithm.setup()
                algorithm.begin_training()
                member.training = True
        while any(m.training for m in self.members):
            for member in self.members:
                if member.training:
                    with self._turn(member) as algorithm:
                        if not algorithm.advance():
                            member.training = False
                            algorithm.end_training()
                            algorithm.session.finish()

    @contextmanager
    def _turn(self, member: Member) -> Iterator[Algorithm]:
        """`member`'s adapter installed for the block; an expected failure ends that adapter's
        run (reported with its name), not the others'."""
        if self.slots is None or member.algorithm is None:
            raise RuntimeError("JointRun.build() first")
        try:
            with self.slots.installed(member.name):
                yield member.algorithm
        except LoraRlError as exc:
            member.failure = str(exc)
            member.training = False
            if self.runtime.is_main:
                print(f"[{member.name}] error: {exc} (the other adapters go on)",
                      file=sys.stderr, flush=True)

    def cleanup(self) -> None:
        # The shared engine first (as a solo GRPO run closes its own first): vLLM's shutdown
        # needs the process groups the run tears down afterwards.
        if self.vllm is not None:
            self.vllm.close()
        for member in self.members:
            if member.algorithm is not None:
                member.algorithm.cleanup()

    @property
    def failed(self) -> list[Member]:
        return [m for m in self.members if m.failure is not None]


def run_joint(cfgs: Sequence[RecipeConfig], names: Sequence[str], runtime: Runtime) -> int:
    """Train every recipe's adapter; 0 when all finished, 1 when any failed (each failure was
    reported, with the adapter's name, when it happened)."""
    run = JointRun(cfgs, names, runtime)
    try:
        run.build()
        run.train()
    finally:
        run.cleanup()
    if run.failed and runtime.is_main:
        print("failed adapters: " + ", ".join(m.name for m in run.failed), file=sys.stderr,
              flush=True)
    return 1 if run.failed else 0
