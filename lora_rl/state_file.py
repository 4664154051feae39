"""`state.json`: the JSON half of a checkpoint, as a typed model checked on load.

Every checkpoint's `state.json` carries a `schema_version`. `read_state` refuses one written
by a newer lora-rl (`CheckpointVersionError`: resume and export stop with one line instead of
misreading it, and resume does not fall back to an older checkpoint that a newer run already
moved past) and one whose fields have the wrong types (`CheckpointError`: resume skips it for
the previous checkpoint, export refuses it). A `state.json` without `schema_version` was
written before the field existed and is version 1.

Fields a checkpoint may lack (an older writer, or a test's hand-made checkpoint) are optional
here; resume requires what it restores (`tensor_guard.check_resumable`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from lora_rl.checkpoint import Checkpoint, CheckpointError, CheckpointVersionError

STATE_SCHEMA_VERSION = 1
"""Bump when a field changes meaning or type; a reader refuses versions above its own."""


class _Part(BaseModel):
    # Unknown keys are kept: a field added without a version bump survives a round trip.
    model_config = ConfigDict(extra="allow")


class DataPosition(_Part):
    epoch: StrictInt = Field(ge=0, description="Epochs over the training data completed.")
    offset: StrictInt = Field(ge=0, description="Samples of the current epoch consumed.")


class AlgorithmState(_Part):
    data: DataPosition | None = Field(None, description="Where the data order stands.")


class OptimizerMeta(_Part):
    optimizer: dict[str, Any] | None = Field(
        None, description="Optimizer state that is not tensors (param_groups, hyperparameters).")
    scheduler: dict[str, Any] | None = Field(None, description="The LR scheduler's state_dict.")


class RunIdentity(_Part):
    algorithm: str | None = Field(None, description="sft, dpo or grpo.")
    backend: str | None = Field(None, description="dtensor or megatron.")
    model_name: str | None = Field(None, description="The base model the run trained.")
    lora: dict[str, Any] | None = Field(
        None, description="The active LoRA section as validated; None for full fine-tuning.")


class CheckpointState(_Part):
    schema_version: StrictInt = Field(
        STATE_SCHEMA_VERSION, ge=1, description="Layout of this file; see STATE_SCHEMA_VERSION.")
    run: RunIdentity = Field(default_factory=RunIdentity,
                             description="What must match for a resume (session.run_identity).")
    recipe: dict[str, dict[str, Any]] | None = Field(
        None, description="resume_diff.recipe_record: fixed and adjustable recipe settings.")
    algorithm: AlgorithmState = Field(default_factory=AlgorithmState)
    optimizer_meta: OptimizerMeta = Field(default_factory=OptimizerMeta)
    metrics: dict[str, float] = Field(default_factory=dict,
                                      description="Numeric metrics at the checkpointed step.")
    lora_rl_version: str | None = Field(None, description="The lora-rl that wrote it.")
    tokenizer: dict[str, Any] | None = Field(
        None, description="How the run encoded text (data/tokenizer_export).")

    def to_json(self) -> dict[str, Any]:
        """For `state.json`; top-level fields that are None are left out."""
        return {k: v for k, v in self.model_dump(mode="json").items() if v is not None}


def read_state(ckpt: Checkpoint) -> CheckpointState:
    """`ckpt.state` as a `CheckpointState`; raises CheckpointVersionError for a newer schema,
    CheckpointError (one line) for anything else that is not the state lora-rl writes."""
    raw = ckpt.state
    where = f"{ckpt.path}/state.json"
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: not a JSON object")
    version = raw.get("schema_version", 1)
    if isinstance(version, int) and not isinstance(version, bool) \
            and version > STATE_SCHEMA_VERSION:
        writer = raw.get("lora_rl_version")
        by = f"lora-rl {writer}" if isinstance(writer, str) else "a newer lora-rl"
        raise CheckpointVersionError(
            f"{where} has schema_version {version}, written by {by}; this lora-rl reads "
            f"version {STATE_SCHEMA_VERSION} and older. Use that lora-rl version, or a new "
            "checkpointing.checkpoint_dir")
    try:
        return CheckpointState.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise CheckpointError(f"{where}: {field}: {first['msg']}{more}; not the state "
                              "lora-rl writes") from None
