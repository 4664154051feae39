"""SIGKILL during a checkpoint write, at every file-system step of it: the newest checkpoint
that loads is always a complete one (the new step when its rename landed, else the previous)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from lora_rl.checkpoint import latest_checkpoint, save_checkpoint

# Each write step of save_checkpoint goes through one of these; the child process dies on the
# N-th call of any of them.
WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    import lora_rl.checkpoint as ckpt

    kill_at = int(sys.argv[2])
    calls = 0

    def dying(original):
        def wrapper(*args, **kwargs):
            global calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return wrapper

    ckpt.save_file = dying(ckpt.save_file)
    ckpt._write_json = dying(ckpt._write_json)
    ckpt._fsync_dir = dying(ckpt._fsync_dir)
    os.rename = dying(os.rename)
    tensors = {"adapter": {"w": torch.full((64, 64), 2.0)}, "optimizer": {"m": torch.ones(8)}}
    ckpt.save_checkpoint(Path(sys.argv[1]), int(sys.argv[3]), tensors, {"step": int(sys.argv[3])})
    print("calls", calls)
""")


def _write(root, kill_at: int, step: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRITER, str(root), str(kill_at), str(step)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("replace", [False, True], ids=["new-step", "same-step"])
def test_kill_at_every_write_step_leaves_a_loadable_checkpoint(tmp_path, replace):
    root = tmp_path / "ck"
    save_checkpoint(root, 1, {"adapter": {"w": torch.ones(64, 64)}}, {"step": 1})
    if replace:
        save_checkpoint(root, 2, {"adapter": {"w": torch.ones(64, 64)}}, {"step": 2})
    # A dry run (never killed) counts the write steps.
    done = _write(tmp_path / "count", 10_000, 2)
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout.split()[-1])
    assert steps >= 6
    for kill_at in range(1, steps + 1):
        killed = _write(root, kill_at, 2)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        warnings: list[str] = []
        latest = latest_checkpoint(root, warn=warnings.append)
        assert latest is not None, f"killed at write step {kill_at}: nothing loads ({warnings})"
        # Replacing step 2 must never lose it: the old step 2 or the new one loads.
        assert latest.step in ((2,) if replace else (1, 2))
        expected = 2.0 if latest.step == 2 and latest.tensors["adapter"]["w"][0, 0] == 2 else 1.0
        assert torch.equal(latest.tensors["adapter"]["w"], torch.full((64, 64), expected))


def test_stale_temp_dirs_of_interrupted_writes_are_removed_and_nothing_else(tmp_path):
    from lora_rl.checkpoint import remove_stale_temp_dirs, restore_interrupted_replacements

    root = tmp_path / "ck"
    save_checkpoint(root, 1, {"adapter": {"w": torch.ones(4)}}, {"step": 1})
    save_checkpoint(root, 2, {"adapter": {"w": torch.ones(4)}}, {"step": 2})
    dead = 2**22 + 12345  # above any pid this machine hands out
    keep = [".tmp-step_3", ".tmp-step_x-1", "tmp-step_3-1", ".tmp-step_3-1-2", "notes",
            ".old-step_5-1"]  # not ours, or an old copy whose step_5 is missing: resumable
    for name in [*keep, f".tmp-step_3-{dead}", f".old-step_2-{dead}"]:
        (root / name).mkdir()
    (root / f".tmp-step_4-{dead}").symlink_to(tmp_path)  # never follow a link out
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "lora_rl"])
    try:
        (root / f".tmp-step_6-{live.pid}").mkdir()  # a lora-rl writer still running
        removed = remove_stale_temp_dirs(root)
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in removed) == [f".old-step_2-{dead}", f".tmp-step_3-{dead}"]
    left = {p.name for p in root.iterdir()}
    assert set(keep) | {"step_1", "step_2", f".tmp-step_6-{live.pid}",
                        f".tmp-step_4-{dead}"} == left
    restore_interrupted_replacements(root)  # .old-step_5 becomes step_5 and is kept
    assert (root / "step_5").is_dir()
