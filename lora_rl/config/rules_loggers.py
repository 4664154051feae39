"""Rules on the `logger:` section's experiment trackers."""

from __future__ import annotations

from collections.abc import Iterator

from lora_rl.config.logger import INSTALL_HINTS
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import Finding, RuleContext, rule


@rule("LR960", "warning", "A tracker is switched on but its package is not installed here",
      environment=True)
def _tracker_installed(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    # A fact about this machine, not the recipe: a warning in `validate`, an error under
    # --check-env and at `run`, before the model loads.
    from lora_rl.trackers import missing_trackers

    for name in missing_trackers(cfg.logger):
        yield Finding(f"logger.{name}_enabled", f"logger.{name}_enabled is true but the "
                      f"{name} package is not installed on this machine; `run` will stop",
                      f"{INSTALL_HINTS[name]} where the run trains, or set {name}_enabled: false")
