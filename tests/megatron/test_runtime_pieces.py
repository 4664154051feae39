"""The CPU shim, the install hint and the learning-rate schedule (single process, fast)."""

import importlib

import pytest
import torch

from lora_rl.backends.megatron import cpu_shim
from lora_rl.backends.megatron.optim import MegatronLR, build_optimizer, build_scheduler
from lora_rl.config.megatron import MegatronOptimizerConfig, MegatronSchedulerConfig
from tests.megatron.conftest import MEGATRON_MISSING, megatron_available

needs_megatron = pytest.mark.skipif(not megatron_available(), reason=MEGATRON_MISSING)


def test_missing_megatron_names_the_install_command(monkeypatch):
    real = importlib.import_module

    def without_megatron(name, *args):
        if name.startswith("megatron"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_megatron)
    with pytest.raises(ImportError, match=r"pip install 'lora-rl\[megatron\]'"):
        cpu_shim.import_megatron()


@needs_megatron
@pytest.mark.skipif(torch.cuda.is_available(), reason="the shim only applies without CUDA")
def test_shim_sends_megatrons_cuda_requests_to_the_cpu():
    cpu_shim.import_megatron()
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    assert torch.cuda.current_device() == torch.device("cpu")
    torch.cuda.synchronize()  # a no-op instead of "Torch not compiled with CUDA enabled"
    assert schedules.torch.zeros([], dtype=torch.int, device="cuda").device.type == "cpu"
    assert schedules.torch.matmul is torch.matmul  # everything else is torch itself
    with get_cuda_rng_tracker().fork():  # the inference tracker: no CUDA generator state
        torch.rand(1)


def _schedule(style: str, warmup: int, decay: int | None) -> tuple[MegatronOptimizerConfig,
                                                                    MegatronSchedulerConfig]:
    return (MegatronOptimizerConfig(lr=1e-3, min_lr=1e-5),
            MegatronSchedulerConfig(lr_decay_style=style, lr_warmup_iters=warmup,
                                    lr_warmup_init=1e-4, lr_decay_iters=decay))


@needs_megatron
@pytest.mark.parametrize("style", ["constant", "linear", "cosine"])
def test_lr_schedule_equals_megatrons_scheduler(style):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    optim, sched = _schedule(style, warmup=3, decay=10)
    ours = MegatronLR(optim, sched, total_steps=50)
    holder = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    theirs = OptimizerParamScheduler(holder, init_lr=1e-4, max_lr=1e-3, min_lr=1e-5,
                                     lr_warmup_steps=3, lr_decay_steps=10, lr_decay_style=style,
                                     start_wd=0.0, end_wd=0.0, wd_incr_steps=10,
                                     wd_incr_style="constant")
    for step in range(14):
        assert ours.lr(step) == pytest.approx(holder.param_groups[0]["lr"], rel=1e-12), step
        theirs.step(1)


def test_lr_decays_over_the_whole_run_when_no_decay_iters_are_given():
    optim, sched = _schedule("linear", warmup=0, decay=None)
    holder = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    scheduler = build_scheduler(holder, optim, sched, total_steps=4)
    seen = []
    for _ in range(4):
        holder.step()
        scheduler.step()
        seen.append(scheduler.get_last_lr()[0])
    assert seen == pytest.approx([7.525e-4, 5.05e-4, 2.575e-4, 1e-5])
    assert "lr_lambdas" in scheduler.state_dict()  # resumable: the schedule is plain data


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_lora_plus_puts_b_and_dora_magnitudes_in_a_group_at_ratio_times_lr(kind):
    """Megatron names (fused and canonical adapters): B and the magnitude go to the second
    group, at lr * lora_plus_lr_ratio; the schedule scales both groups alike."""
    names = ["decoder.layers.0.self_attention.linear_qkv.lora_A.weight",
             "decoder.layers.0.self_attention.linear_qkv.lora_B.weight",
             "decoder.layers.0.self_attention.linear_qkv.lora_magnitude_vector",
             "decoder.layers.0.mlp.linear_fc1.adapter_up.lora_A.weight",
             "decoder.layers.0.mlp.linear_fc1.adapter_up.lora_B.weight"]
    params = [torch.nn.Parameter(torch.zeros(2, 2)) for _ in names]
    cfg = MegatronOptimizerConfig(optimizer=kind, lr=1e-3)
    slow, fast = build_optimizer(names, params, cfg, lora_plus_lr_ratio=16).param_groups
    assert [id(p) for p in slow["params"]] == [id(params[0]), id(params[3])]
    assert [id(p) for p in fast["params"]] == [id(params[1]), id(params[2]), id(params[4])]
    assert slow["lr"] == 1e-3 and fast["lr"] == pytest.approx(16e-3)
    optimizer = build_optimizer(names, params, cfg, lora_plus_lr_ratio=16)
    scheduler = build_scheduler(optimizer, cfg, MegatronSchedulerConfig(
        lr_warmup_iters=2, lr_decay_style="constant"), 10)
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4, 8e-3])
    assert len(build_optimizer(names, params, cfg).param_groups) == 1
