"""MLflow: metrics per step, the resolved recipe as the run's `recipe.json` artifact."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lora_rl.config.logger import MlflowConfig
from lora_rl.trackers import remember_run_id, remembered_run_id, tag


class MlflowTracker:
    def __init__(self, cfg: MlflowConfig, log_dir: Path, resume_step: int | None,
                 recipe: dict[str, Any]) -> None:
        uri = cfg.tracking_uri or (log_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked: a local directory is what a run
            # without a tracking server needs, and what the default above promises.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(uri)
        run_id = remembered_run_id(log_dir, "mlflow", resume_step)
        if run_id is None:
            experiment = self._client.get_experiment_by_name(cfg.experiment_name)
            experiment_id = experiment.experiment_id if experiment else \
                self._client.create_experiment(cfg.experiment_name)
            run = self._client.create_run(experiment_id, run_name=cfg.run_name)
            run_id = run.info.run_id
            self._client.log_dict(run_id, recipe, "recipe.json")
            remember_run_id(log_dir, "mlflow", run_id)
        self._run_id = run_id
        self.tracking_uri = uri

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        # MLflow metric names allow '/', so the namespaced tags group in its UI too.
        now = _millis()
        self._client.log_batch(self._run_id, metrics=[
            Metric(tag(k), float(v), now, step) for k, v in scalars.items()])

    def close(self) -> None:
        self._client.set_terminated(self._run_id)


def _millis() -> int:
    import time

    return int(time.time() * 1000)
