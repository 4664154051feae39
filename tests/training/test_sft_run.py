"""`lora-rl run` on the tiny SFT recipe: it learns, trains only LoRA, checkpoints adapters."""

import json

from safetensors.torch import load_file

from tests.training.conftest import QUIET


def test_sft_recipe_learns_and_writes_adapter_only_checkpoints(runner, model_cache):
    done = runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", *QUIET)
    rows = runner.metrics("logs/sft-tiny-dtensor-lora")
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_accuracy" in r]
    first = train[0]["loss"]
    last = sum(r["loss"] for r in train[-10:]) / 10
    assert last <= first / 2, (first, last)
    assert val[0]["step"] == 0 and val[-1]["val_accuracy"] > val[0]["val_accuracy"]
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s"):
        assert key in train[-1]
    step_dir = runner.workdir / "results/sft-tiny-dtensor-lora/step_400"
    adapter = load_file(str(step_dir / "adapter.safetensors"))
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    base_bytes = (model_cache / "tiny-llama-v1" / "model.safetensors").stat().st_size
    assert (step_dir / "adapter.safetensors").stat().st_size < base_bytes / 5
    manifest = json.loads((step_dir / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"adapter.safetensors", "optimizer.safetensors",
                                      "state.json"}
    assert "valid" not in done.stderr.lower() or "error" not in done.stderr.lower()


def test_run_reports_invalid_recipe_without_traceback(runner):
    done = runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml",
                      "policy.dtensor_cfg.lora_cfg.use_trition=true", check=False)
    assert done.returncode == 1
    assert "LR001" in done.stderr and "did you mean 'use_triton'" in done.stderr
    assert "Traceback" not in done.stderr


def test_outputs_outside_the_working_directory_need_force(runner, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    done = runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml",
                      f"checkpointing.checkpoint_dir={elsewhere}/ckpt", check=False)
    assert done.returncode == 2 and "--force" in done.stderr
