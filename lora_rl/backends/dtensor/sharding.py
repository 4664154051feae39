"""Device mesh, tensor parallelism and FSDP2 for the DTensor backend.

Mesh layout is (dp, tp): tensor-parallel ranks are adjacent, data-parallel groups stride over
them. FSDP2 shards every decoder layer and the root over `dp`, also when dp is 1, so that all
trainable parameters are DTensors on one mesh (optimizers and norm computations reject mixed
plain/DTensor lists).
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

from lora_rl.errors import SetupError
from lora_rl.training.runtime import Runtime


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise SetupError(f"{type(model).__name__} has no model.layers: lora-rl's DTensor backend "
                         "supports decoder models with model.layers")
    return list(layers)


def shard_model(model: torch.nn.Module, runtime: Runtime, *, tp: int, dp: int,
                lora: bool) -> DeviceMesh | None:
    if runtime.world_size == 1:
        return None
    mesh = init_device_mesh(runtime.device.type, (dp, tp), mesh_dim_names=("dp", "tp"))
    if tp > 1:
        from lora_rl.backends.dtensor.tensor_parallel import apply_tensor_parallel

        apply_tensor_parallel(model, mesh["tp"])
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return mesh
