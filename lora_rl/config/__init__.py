"""The typed recipe schema and its loader. Importing this never imports torch."""

from lora_rl.config.diagnostics import Diagnostic, Location, RecipeError
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.validate import ValidationResult, load_config, validate_recipe

__all__ = [
    "Diagnostic",
    "Location",
    "RecipeConfig",
    "RecipeError",
    "ValidationResult",
    "load_config",
    "validate_recipe",
]
