"""`lora-rl run`: validate, then start one process per rank (torchrun-compatible env vars).

A single-process recipe runs in this process. Under an external `torchrun` (RANK/WORLD_SIZE
already set) this process *is* a rank. Otherwise the launcher starts `cluster` worth of ranks on
loopback and watches them (`lora_rl.rank_group`): stop signals reach every rank, which checkpoints
and exits; a rank that fails is named and the others are stopped; none outlives the launcher.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

from lora_rl.config.recipe import RecipeConfig
from lora_rl.output_paths import OutputPathError, check_output_dir
from lora_rl.rank_group import RankGroup


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_output_paths(cfg: RecipeConfig, force: bool, cwd: Path | None = None) -> None:
    """Before anything loads: the run's directories can be written (`check_output_dir`), and
    they stay under the working directory unless the user says --force: a recipe must not
    silently write (or replace) checkpoints and logs elsewhere on the machine."""
    root = (cwd or Path.cwd()).resolve()
    outputs = [("logger.log_dir", cfg.logger.log_dir)]
    if cfg.checkpointing.enabled:
        outputs.insert(0, ("checkpointing.checkpoint_dir", cfg.checkpointing.checkpoint_dir))
    for key, value in outputs:
        target = check_output_dir(value, key, root)
        if not force and target != root and root not in target.parents:
            raise OutputPathError(f"{key} = {value} resolves to {target}, outside the working "
                                  f"directory {root}; pass --force to write there")


def launch(cfg: RecipeConfig) -> int:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if int(os.environ["WORLD_SIZE"]) != cfg.cluster.world_size:
            print(f"error: torchrun started {os.environ['WORLD_SIZE']} ranks but the recipe's "
                  f"cluster is {cfg.cluster.num_nodes} x {cfg.cluster.gpus_per_node} = "
                  f"{cfg.cluster.world_size}; make them agree", file=sys.stderr)
            return 2
        from lora_rl.worker import run_rank

        return run_rank(cfg)
    world = cfg.cluster.world_size
    if cfg.cluster.num_nodes > 1:
        print("error: multi-node runs start under torchrun on every node, e.g. "
              "`torchrun --nnodes N --nproc-per-node G --rdzv-endpoint HOST:PORT -m lora_rl run "
              "recipe.yaml` (each rank validates the recipe, then joins the group)",
              file=sys.stderr)
        return 2
    if world == 1:
        from lora_rl.worker import run_rank

        return run_rank(cfg)
    return _spawn(cfg, world)


def launch_joint(cfgs: list[RecipeConfig], names: list[str]) -> int:
    """A multi-adapter run (`lora-rl run A.yaml B.yaml`): in this process, as this rank under
    torchrun, or on `cluster` worth of ranks started here (LR700: the recipes share it)."""
    from lora_rl.worker import run_joint_rank

    world = cfgs[0].cluster.world_size
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if int(os.environ["WORLD_SIZE"]) != world:
            print(f"error: torchrun started {os.environ['WORLD_SIZE']} ranks but the recipes' "
                  f"cluster is {world}; make them agree", file=sys.stderr)
            return 2
        return run_joint_rank(cfgs, names)
    if world == 1:
        return run_joint_rank(cfgs, names)
    payload = {"names": list(names), "recipes": [_resolved(cfg) for cfg in cfgs]}
    return _spawn(cfgs[0], world, payload, ["--joint"])


def _resolved(cfg: RecipeConfig) -> dict:
    return cfg.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _spawn(cfg: RecipeConfig, world: int, payload: dict | None = None,
           flags: list[str] | None = None) -> int:
    """`world` ranks of `cfg`'s run (its grace period and env vars), each given `payload` (by
    default `cfg` resolved) after `flags`."""
    with tempfile.TemporaryDirectory(prefix="lora-rl-") as tmp:
        resolved = Path(tmp) / "recipe.json"
        resolved.write_text(json.dumps(payload if payload is not None else _resolved(cfg)))
        port = _free_port()
        threads = max(1, (os.cpu_count() or 1) // world)
        group = RankGroup(cfg.checkpointing.preemption_grace_s, Path(tmp) / "stop-signal")
        with group.forwarding_signals():
            for rank in range(world):
                env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "LORA_RL_THREADS": os.environ.get("LORA_RL_THREADS", str(threads)),
                       "LORA_RL_LAUNCHER_PID": str(os.getpid()),
                       **_env_vars(cfg)}
                group.start([*worker_command(), *(flags or []), str(resolved)], env)
            return group.watch()


def worker_command() -> list[str]:
    """The rank's interpreter line, without the working directory on `sys.path`: `python -m`
    would put it first, and a `safetensors.py` planted next to the recipe would then run inside
    every rank. PYTHONPATH and site-packages still apply (unlike `-I`)."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", "lora_rl.worker"]
    return [sys.executable, "-c", "import sys; del sys.path[0]; from lora_rl.worker import main; "
            "sys.exit(main(sys.argv[1:]))"]


def _env_vars(cfg: RecipeConfig) -> dict[str, str]:
    backend = cfg.policy.megatron_cfg if cfg.policy.megatron_cfg.enabled else cfg.policy.dtensor_cfg
    return dict(backend.env_vars)
