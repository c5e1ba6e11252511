"""Where a run's files go, so that nothing is kept where it will be deleted.

`ray job submit --working-dir .` starts the job inside Ray's unpacked copy of the code, under Ray's temp
folder, which Ray deletes and replaces when the code changes. A job started that way keeps a relative
`--runs-dir` and the default MLflow store (`mlflow.db` and its artifacts) under RLFT_HOME (default
`~/rlft`) instead of in that copy. RLFT_RUNS_DIR sets the default `--runs-dir` everywhere.
"""

import json
import os
from pathlib import Path

RUNS_ENV = "RLFT_RUNS_DIR"
HOME_ENV = "RLFT_HOME"
# What Ray's job supervisor gives a submitted job's driver: its runtime env, with the working_dir it unpacked.
RAY_JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_working_copy() -> bool:
    """Was this job submitted with a working_dir, so that its working folder is Ray's temporary copy?"""
    try:
        runtime_env = json.loads(os.environ.get(RAY_JOB_CONFIG, "{}")).get("runtime_env") or {}
    except (json.JSONDecodeError, AttributeError):
        return False
    return bool(runtime_env.get("working_dir"))


def durable_home() -> Path:
    """RLFT_HOME, or ~/rlft: where a submitted job keeps what would otherwise land in Ray's copy."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / "rlft").absolute()


def default_runs_dir() -> str:
    """RLFT_RUNS_DIR, else `runs` in the working folder."""
    return os.environ.get(RUNS_ENV) or "runs"


def durable_runs_dir(runs_dir: str) -> Path:
    """`runs_dir` as an absolute folder; a relative one of a submitted job goes under durable_home()."""
    if Path(runs_dir).is_absolute() or not in_ray_working_copy():
        return Path(runs_dir).absolute()
    return durable_home() / runs_dir


def default_tracking_db() -> Path:
    """The sqlite MLflow store used when MLFLOW_TRACKING_URI is unset: `mlflow.db` in the working folder,
    or under durable_home() for a submitted job (made when first needed)."""
    if not in_ray_working_copy():
        return Path.cwd() / "mlflow.db"
    durable_home().mkdir(parents=True, exist_ok=True)
    return durable_home() / "mlflow.db"
