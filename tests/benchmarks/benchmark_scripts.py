"""The scripts in benchmarks/ (not a package; speed/, science/ and tools/ by purpose) as modules, for the
tests of their pure parts."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def folder_of(name: str) -> Path:
    """The folder of benchmarks/<purpose>/<name>.py (a script imports its neighbours from there)."""
    (path,) = BENCHMARKS.glob(f"*/{name}.py")
    return path.parent


def load(name: str):
    """benchmarks/<purpose>/<name>.py, imported afresh."""
    spec = importlib.util.spec_from_file_location(name, folder_of(name) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
