"""MLflow tracking: one run per job, found again by its name when a job resumes.

Only the driver logs (workers return metrics). The store is MLflow's own `MLFLOW_TRACKING_URI` (and
experiment `MLFLOW_EXPERIMENT_NAME`); with neither set, a local sqlite file that `mlflow ui` opens with
`mlflow ui --backend-store-uri sqlite:///mlflow.db`. MLflow 3.17 refuses plain `file://` stores by default.
A run's final adapter can go in the store's Model Registry (`Tracker.register_adapter`), to be loaded back
by name and version: `mlflow.artifacts.download_artifacts("models:/<name>/<version>")` gives its folder.
"""

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, is_dataclass
from pathlib import Path
from types import TracebackType

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from torch import Tensor

from rlft.runs.places import default_tracking_db
from rlft.runs.secrets import redact

DEFAULT_EXPERIMENT = "rlft"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or a sqlite store `mlflow.db` in the working folder (a submitted job's: under
    RLFT_HOME, rlft/runs/places.py)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_tracking_db()}"


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of a sqlite store keeps its artifacts: beside the database, by absolute path
    (MLflow's default follows the working folder, which for a submitted job is Ray's temporary copy)."""
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment).as_uri()


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Raise ValueError naming the URI when the store cannot be reached; touches nothing."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ValueError(
                f"MLFLOW_TRACKING_URI {uri!r}: folder {str(folder)!r} is missing or not writable"
            )
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(health_request(uri), timeout=timeout_s).close()
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise ValueError(redact(f"MLFLOW_TRACKING_URI {uri!r} is unreachable: {error}")) from None
    elif uri.startswith("file:") or ("://" not in uri and uri != "databricks"):
        raise ValueError(
            f"MLFLOW_TRACKING_URI {uri!r}: file stores are refused by MLflow 3.17+; "
            "use sqlite:///path/mlflow.db or an http(s) server"
        )


def health_request(uri: str) -> urllib.request.Request:
    """GET <uri>/health; a user and password in the URI (which MLflow accepts) go in a basic-auth header."""
    parts = urllib.parse.urlsplit(uri.rstrip("/") + "/health")
    request = urllib.request.Request(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
    if parts.username is not None:
        login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    return request


def _flatten(config: object) -> dict[str, str]:
    values = asdict(config) if is_dataclass(config) else dict(config)
    text = {k: json.dumps(v) if isinstance(v, list | tuple | dict) else str(v) for k, v in values.items()}
    return {k: redact(v) for k, v in text.items()}  # a storage URL may carry credentials


class Tracker:
    """An MLflow run: created on first use of `run_name`, resumed (same run id) when the name exists.

    Use as a context manager: the run ends FINISHED, or FAILED with the error as a tag.
    """

    def __init__(self, run_name: str, config: object, tags: dict[str, str], uri: str | None = None):
        self.uri, self.run_name = uri or tracking_uri(), run_name
        check_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, artifact_location(self.uri, experiment))
        )
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'", max_results=1
        )
        self.resumed = bool(runs)
        if runs:
            self.run_id = runs[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            params = [Param(k, v[:6000]) for k, v in _flatten(config).items()]
            self.client.log_batch(self.run_id, params=params)

    def logged_epochs(self, key: str = "epoch_time_s") -> list[int]:
        """The epochs (steps) that already have `key` logged (by default a metric every epoch has)."""
        return [m.step for m in self.client.get_metric_history(self.run_id, key)]

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_images(self, epoch: int, images: Tensor, prompts: list[str]) -> None:
        """A grid of images (B, 3, H, W) in [0, 1] with its prompts, under images/epoch_NNNN."""
        from torchvision.utils import make_grid

        grid = make_grid(images.detach().float().cpu(), nrow=min(8, len(images)), padding=1)
        array = (grid.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8")
        self.client.log_image(self.run_id, array, f"images/epoch_{epoch:04d}.png")
        self.client.log_text(self.run_id, "\n".join(prompts), f"images/epoch_{epoch:04d}_prompts.txt")

    def log_file(self, path: str | Path, artifact_path: str = "") -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path or None)

    def log_folder(self, folder: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def register_adapter(self, name: str, tags: dict[str, str], artifact_path: str = "adapter") -> str:
        """Register the run's logged `artifact_path` folder as a new version of model `name` in the MLflow
        Model Registry (created on first use), tagged with `tags`; its version. A finished run started again
        registers nothing twice: a version of this run with the same tags is returned instead."""
        try:
            self.client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            self.client.create_registered_model(name)
        for found in self.client.search_model_versions(f"name = '{name}' and run_id = '{self.run_id}'"):
            if tags.items() <= found.tags.items():
                return str(found.version)
        source = f"runs:/{self.run_id}/{artifact_path}"
        return str(self.client.create_model_version(name, source, run_id=self.run_id, tags=tags).version)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if error is not None:
            self.client.set_tag(self.run_id, "error", redact(f"{kind.__name__}: {error}")[:5000])
        self.client.set_terminated(self.run_id, status="FAILED" if error is not None else "FINISHED")
