"""Make docs/mlflow_compare.png: MLflow's compare page for three short D3PO runs, in headless Chromium.

    .venv/bin/python docs/make_mlflow_screenshot.py

Trains three real runs of the default D3PO job in one process (2 epochs, 8 evaluation images: seeds 0 and 1,
and seed 0 with its preferences reversed, the control) into a temporary sqlite MLflow store, serves that
store with `mlflow ui` on a free port, opens the compare page of the three runs and photographs it. About
five minutes on 2 CPU cores. Needs Debian's chromium and the playwright package (docs/mlflow.md).
"""

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient
from playwright.sync_api import sync_playwright

from rlft.runs.tracking import artifact_location

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "mlflow_compare.png"
ARGS = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
ARGS += " --disable-component-update --disable-sync"
RUNS = {"seed-0": ["--seed", "0"], "seed-1": ["--seed", "1"], "seed-0-reversed": ["--reverse-preferences"]}
JOB = ["--no-ray", "--eval-images", "8", "--threads", "1"]  # the default 12 epochs


def train(folder: Path, uri: str) -> None:
    """The three runs, two at a time (one thread each), into one experiment made first: two jobs opening a
    new store at once would both create its tables."""
    MlflowClient(uri).create_experiment("rlft", artifact_location(uri, "rlft"))
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "rlft"}
    pending = list(RUNS.items())
    running: list[subprocess.Popen] = []
    try:
        while pending or running:
            while pending and len(running) < 2:
                name, flags = pending.pop(0)
                command = [sys.executable, str(ROOT / "jobs" / "d3po.py"), *JOB, *flags]
                command += ["--runs-dir", str(folder / "runs"), "--run-name", name]
                running.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
            for job in list(running):
                if job.poll() is not None:
                    if job.returncode != 0:
                        raise subprocess.CalledProcessError(job.returncode, job.args)
                    running.remove(job)
            time.sleep(1)
    finally:  # a failed run ends the others: none outlives the temporary store
        for job in running:
            job.terminate()
            job.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(uri: str, port: int) -> subprocess.Popen:
    """`mlflow ui` on the store, once it answers."""
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise RuntimeError(f"mlflow ui did not answer on port {port} within 120 s")


def photograph(url: str) -> None:
    """The compare page with what tells the runs apart: the parameters that differ, then every metric's last
    value per run (eval_gain_mean among them). The selectors are MLflow 3.17's."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS.split())
        page = browser.new_page(viewport={"width": 900, "height": 900})
        page.goto(url)
        page.wait_for_selector("text=eval_gain_mean", timeout=120_000)
        page.get_by_role("button", name="Close").click()  # the assistant's panel
        page.get_by_label("Toggle sidebar").click()
        for section in ("Visualizations", "Run details", "Artifacts"):  # collapsed
            page.get_by_text(section, exact=True).click()
        page.get_by_label("Parameters - Show diff only").click()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(OUT))
        browser.close()


if __name__ == "__main__":
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its lines about creating the store's tables
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        train(Path(tmp), uri)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("rlft")
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.run_name"])
        port = free_port()
        server = serve(uri, port)
        try:
            ids = json.dumps([run.info.run_id for run in runs])
            experiments = json.dumps([experiment.experiment_id])
            photograph(f"http://127.0.0.1:{port}/#/compare-runs?runs={ids}&experiments={experiments}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {OUT}")
