"""Several LoRA adapters on one loaded base model, installed one at a time.

Each adapter is its own set of `LoraLinear` (or `ExpertsLora`) wrappers around the *same* base
modules: a wrapper holds a reference to its base, not a copy, so N adapters cost one base plus N
small adapters. Between turns an adapter's wrappers are taken out of the module tree and the
plain base modules put back, so exactly one adapter is ever in the model. Everything a solo run
does then sees that adapter alone, unchanged: `model.parameters()` (its optimizer),
`get_state_dict` (its checkpoints), `disable_lora` (its reference policy), the forward pass.
Installing or removing an adapter is one `setattr` per adapted module, no tensor is copied.

Adapters may differ in rank, alpha, targets, dropout and init: each is matched and built by
`add_adapter` exactly as a solo run builds it, under its own seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from lora_rl.backends.dtensor.model import add_adapter
from lora_rl.config.policy import PolicyConfig
from lora_rl.errors import SetupError
from lora_rl.lora.api import LoraReport
from lora_rl.lora.experts import ExpertsLora
from lora_rl.lora.layer import LoraLinear

_WRAPPERS = (LoraLinear, ExpertsLora)


class AdapterSlots:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._wrappers: dict[str, dict[str, nn.Module]] = {}
        self.active: str | None = None
        """The adapter in the model now (None: the bare base)."""

    @property
    def names(self) -> list[str]:
        return list(self._wrappers)

    def add(self, name: str, policy: PolicyConfig, seed: int) -> LoraReport:
        """Build adapter `name` from `policy`'s LoRA block (seeded as a solo run seeds it) and
        keep it out of the model until `installed(name)`."""
        if self.active is not None:
            raise RuntimeError(f"adapter {self.active} is installed; add adapters between turns")
        if name in self._wrappers:
            raise ValueError(f"adapter {name} already exists")
        report = add_adapter(self.model, policy, seed)
        if report is None:
            raise SetupError(f"adapter {name}: a multi-adapter run needs LoRA enabled "
                             "(full fine-tuning would change the shared base)")
        self._wrappers[name] = {path: module for path, module in self.model.named_modules()
                                if isinstance(module, _WRAPPERS)}
        self._put_back_bases(name)
        return report

    @contextlib.contextmanager
    def installed(self, name: str) -> Iterator[None]:
        """Adapter `name` in the model for the block; the bare base again after it."""
        if self.active is not None:
            raise RuntimeError(f"adapter {self.active} is installed; one adapter at a time")
        for path, wrapper in self._wrappers[name].items():
            self._set(path, wrapper)
        self.active = name
        try:
            yield
        finally:
            self._put_back_bases(name)
            self.active = None

    def _put_back_bases(self, name: str) -> None:
        for path, wrapper in self._wrappers[name].items():
            self._set(path, wrapper.base)

    def _set(self, path: str, module: nn.Module) -> None:
        parent_path, _, child = path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        setattr(parent, child, module)


def shard_installed(model: nn.Module, tp_mesh) -> None:
    """Tensor-parallel sharding for a multi-adapter run, called once per adapter with that
    adapter installed: the layout a solo run's `apply_tensor_parallel` gives, for the modules
    not yet sharded. The first call shards the shared base (a linear an adapter wraps sits at
    `<path>.base`, one it does not wrap at `<path>`: the same module, the same style); each call
    shards its adapter's A and B as a solo run shards them. Parallel hooks live on the base and
    LoRA modules, not on the wrappers, so swapping wrappers between turns keeps them. No FSDP:
    a joint run is tensor-parallel only (dp = 1, where FSDP would only wrap)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import parallelize_module

    from lora_rl.backends.dtensor.sharding import decoder_layers
    from lora_rl.backends.dtensor.tensor_parallel import _replicate_rest, layer_plans

    def sharded(module: nn.Module) -> bool:
        return any(isinstance(p, DTensor) for p in module.parameters(recurse=False))

    for layer, plan in zip(decoder_layers(model), layer_plans(model), strict=True):
        todo = {path: style for path, style in plan.items()
                if not sharded(layer.get_submodule(path))}
        if todo:
            parallelize_module(layer, tp_mesh, todo)
    _replicate_rest(model, tp_mesh)
