"""`lora-rl convert` carries the training settings each backend spells its own way (optimizer
with its learning rate, LR schedule, clipping, recompute), and refuses what it cannot carry.

Schedules are checked as what they are: the learning rate at every optimizer step, computed by
each backend's own scheduler code, before and after conversion.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_rl.cli import app
from lora_rl.config.megatron import MegatronOptimizerConfig, MegatronSchedulerConfig
from lora_rl.config.policy import PolicyConfig
from lora_rl.config.validate import validate_recipe
from lora_rl.convert import convert_file
from lora_rl.convert.training import (
    CannotCarry,
    Schedule,
    read_torch_schedule,
    write_torch_schedule,
)

torch = pytest.importorskip("torch")

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
LR = 5e-3
STEPS = 60
LINEAR = "torch.optim.lr_scheduler.LinearLR"
CONSTANT = "torch.optim.lr_scheduler.ConstantLR"
COSINE = "torch.optim.lr_scheduler.CosineAnnealingLR"


def _torch_lrs(steps: list[dict] | None) -> list[float]:
    from lora_rl.training.optim import build_scheduler

    policy = PolicyConfig.model_validate({"model_name": "x", "scheduler": steps})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = build_scheduler(optimizer, policy.scheduler)
    out = []
    for _ in range(STEPS):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _megatron_lrs(s: Schedule) -> list[float]:
    from lora_rl.backends.megatron.optim import MegatronLR

    optim = MegatronOptimizerConfig(lr=LR, min_lr=s.floor)
    sched = MegatronSchedulerConfig(lr_warmup_iters=s.warmup, lr_warmup_init=s.init,
                                    lr_decay_style=s.style, lr_decay_iters=s.decay_end)
    rule = MegatronLR(optim, sched, STEPS)
    return [rule.lr(step) for step in range(STEPS)]


def _close(a: list[float], b: list[float]) -> bool:
    return all(abs(x - y) <= 1e-9 + 1e-6 * LR for x, y in zip(a, b, strict=True))


MEGATRON_SCHEDULES = [
    Schedule(),
    Schedule(warmup=10, init=0.1 * LR),
    Schedule(warmup=10, init=0.0),                      # NeMo RL's default warm-up from 0
    Schedule(warmup=5, init=0.0, style="linear", decay_end=40, floor=1e-4),
    Schedule(warmup=5, init=0.0, style="cosine", decay_end=40, floor=1e-4),
    Schedule(style="cosine", decay_end=None, floor=0.0),  # decays over the whole run
    Schedule(warmup=8, init=LR / 4, style="linear", decay_end=None, floor=0.0),
]


@pytest.mark.parametrize("schedule", MEGATRON_SCHEDULES, ids=str)
def test_megatron_schedules_become_the_same_torch_schedule(schedule: Schedule) -> None:
    written = write_torch_schedule(schedule, LR, STEPS)
    assert _close(_torch_lrs(written), _megatron_lrs(schedule)), written


TORCH_SCHEDULES = [
    None,
    [{"name": LINEAR, "kwargs": {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 10}}],
    [{"name": LINEAR, "kwargs": {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 10}},
     {"name": CONSTANT, "kwargs": {"factor": 1.0, "total_iters": 10**9}},
     {"milestones": [10]}],                              # NeMo RL's sft.yaml shape
    [{"name": LINEAR, "kwargs": {"start_factor": 0.5, "end_factor": 1.0, "total_iters": 4}},
     {"name": COSINE, "kwargs": {"T_max": 56, "eta_min": 1e-5}},
     {"milestones": [4]}],
    [{"name": LINEAR, "kwargs": {"start_factor": 1.0, "end_factor": 0.1, "total_iters": 30}}],
    [{"name": COSINE, "kwargs": {"T_max": 60}}],
]


@pytest.mark.parametrize("steps", TORCH_SCHEDULES, ids=lambda s: str(len(s or [])))
def test_torch_schedules_become_the_same_megatron_schedule(steps: list[dict] | None) -> None:
    policy = PolicyConfig.model_validate({"model_name": "x", "scheduler": steps})
    schedule = read_torch_schedule(policy.scheduler, LR, STEPS)
    assert _close(_megatron_lrs(schedule), _torch_lrs(steps)), schedule


@pytest.mark.parametrize("steps", [
    [{"name": COSINE, "kwargs": {"T_max": 10}}],         # rises again after T_max
    [{"name": CONSTANT, "kwargs": {"factor": 0.5, "total_iters": 5}}],
    [{"name": LINEAR, "kwargs": {"start_factor": 0.1, "total_iters": 10}},
     {"name": CONSTANT, "kwargs": {"factor": 1.0}}, {"milestones": [20]}],
], ids=["cosine-restarts", "constant-then-jump", "late-milestone"])
def test_schedules_megatron_cannot_express_are_refused(steps: list[dict]) -> None:
    policy = PolicyConfig.model_validate({"model_name": "x", "scheduler": steps})
    with pytest.raises(CannotCarry, match="policy.scheduler"):
        read_torch_schedule(policy.scheduler, LR, STEPS)


def test_the_learning_rate_and_clipping_are_carried(tmp_path: Path) -> None:
    """The tiny recipe's 5e-3 stays 5e-3 on Megatron (it used to become Megatron's 5e-6)."""
    out = tmp_path / "megatron.yaml"
    result = convert_file(RECIPES / "sft-tiny-dtensor-lora.yaml", "megatron", out)
    assert result.output_errors == []
    cfg = validate_recipe(out).config
    assert cfg is not None
    opt = cfg.policy.megatron_cfg.optimizer
    assert (opt.optimizer, opt.lr, opt.weight_decay, opt.clip_grad) == ("adam", 5e-3, 0.0, 1.0)
    assert (opt.adam_beta1, opt.adam_beta2, opt.adam_eps) == (0.9, 0.999, 1e-8)
    assert cfg.policy.megatron_cfg.scheduler.lr_decay_style == "constant"
    back = tmp_path / "back.yaml"
    assert convert_file(out, "dtensor", back).output_errors == []
    again = validate_recipe(back).config
    assert again is not None and again.policy.optimizer.kwargs.lr == 5e-3


def test_a_setting_that_cannot_be_carried_is_an_error(tmp_path: Path) -> None:
    source = (RECIPES / "sft-tiny-dtensor-lora.yaml").read_text()
    path = tmp_path / "adam-l2.yaml"
    path.write_text(source.replace("name: torch.optim.AdamW", "name: torch.optim.Adam")
                    .replace("weight_decay: 0.0", "weight_decay: 0.01"))
    done = CliRunner().invoke(app, ["convert", str(path), "--to", "megatron"])
    assert done.exit_code == 1
    assert "error: policy.optimizer: torch.optim.Adam applies weight_decay 0.01 as an L2 " \
           "penalty" in done.output


@pytest.mark.slow
def test_a_converted_recipe_trains_like_the_original(tmp_path: Path) -> None:
    """10 steps of the tiny SFT recipe and of its Megatron conversion give the same losses.

    Both start from one PEFT adapter, and the converted recipe names the canonical targets (one
    adapter per projection, as DTensor has): the LoRA block's fused-vs-per-projection choice is
    the mapping's business; this test isolates what `convert` must carry for training to match
    (learning rate, optimizer, schedule, clipping). Before, the learning rate fell to Megatron's
    default 5e-6 and the converted recipe did not learn (7.2 -> 7.3 vs 7.2 -> 2.0)."""
    pytest.importorskip("megatron.core")
    from lora_rl.tiny import ensure_tiny_model
    from tests.megatron.test_recipes import _initial_adapter
    from tests.training.conftest import QUIET, Runner

    cache = tmp_path / "cache"
    ensure_tiny_model(cache)
    runner = Runner(tmp_path / "work", cache)
    _initial_adapter(tmp_path / "work" / "init", cache / "tiny-llama-v1")
    runner.run("convert", "recipes/sft-tiny-dtensor-lora.yaml", "--to", "megatron", "--out",
               "recipes/converted.yaml")
    common = ["sft.max_num_steps=10", "sft.val_period=0", "sft.val_at_start=false",
              "checkpointing.enabled=false", "policy.init_adapter_path=init", *QUIET]
    runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", *common, "logger.log_dir=logs/a")
    runner.run("run", "recipes/converted.yaml", *common, "logger.log_dir=logs/b",
               "policy.megatron_cfg.peft.target_modules=[linear_q,linear_k,linear_v,linear_proj,"
               "linear_fc1_gate,linear_fc1_up,linear_fc2]")
    original, converted = ([r["loss"] for r in runner.metrics(f"logs/{d}")] for d in "ab")
    assert len(original) == len(converted) == 10
    assert max(abs(a - b) for a, b in zip(original, converted, strict=True)) < 1e-3, \
        (original, converted)
    assert converted[-1] < converted[0] / 2, converted            # and it learns
